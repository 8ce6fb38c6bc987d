"""One multi-device schedule for the whole fleet (compute_fleet_schedule, `cariflex schedule`)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pandas as pd
import pytest
from flexmeasures.data.models.time_series import TimedBelief
from sqlalchemy import func, select

from cariflex.fleet import load_fleet
from flexmeasures_cariflex.config import LP_SOLVER_OPTIONS
from flexmeasures_cariflex.data.queries.site import site_sensors
from flexmeasures_cariflex.data.services.fleet_schedule import ScheduleRefused, compute_fleet_schedule
from tests.helpers.scheduling import between, midnight, prices, stored, write

SMALL = Path(__file__).parent.parent / "fleets" / "small.yaml"


@pytest.fixture
def site(app, cli):
    app.config["FLEXMEASURES_LP_SOLVER_OPTIONS"] = LP_SOLVER_OPTIONS
    result = cli("cariflex", "setup")
    assert result.exit_code == 0, result.output
    return load_fleet()


def count_beliefs(db) -> int:
    return db.session.execute(select(func.count()).select_from(TimedBelief)).scalar_one()


def test_batteries_charge_cheap_night_discharge_dear_evening_and_evs_leave_full(site, fm_db):
    fleet = site
    start = midnight()
    prices(fleet, start, lambda h: 80 if h < 6 else (300 if 18 <= h < 21 else 150))

    result = compute_fleet_schedule(fleet, start.to_pydatetime())
    fm_db.session.commit()
    print(f"20 devices: compute {result.compute_seconds:.2f} s, save {result.save_seconds:.2f} s")
    assert result.ok, result.infeasible
    assert len(result.devices) == 20
    assert result.beliefs_saved == 20 * 24 * 60  # 15-min schedule stored at the sensors' 1-min resolution
    assert any("production_price does not cover" in n for n in result.notes)
    assert any("bat_01: no SoC belief" in n for n in result.notes)
    # FlexMeasures itself reads the rows back (belief horizons are right: known before now).
    bat_01 = site_sensors(fleet)["bat_01_power"]
    searched = bat_01.search_beliefs(
        event_starts_after=start,
        event_ends_before=start + pd.Timedelta(hours=24),
        source="Cariflex scheduler",
    )
    assert len(searched) == 24 * 60

    for bat in fleet.batteries:
        power = stored(fm_db, fleet, bat.name)
        assert len(power) == 24 * 60
        night, evening = between(power, start, 0, 6), between(power, start, 18, 21)
        # Consumption-positive sensors: charging at night reads back POSITIVE.
        assert night.sum() / 60 > 30, bat.name  # kWh charged 00-06
        assert night.min() >= -1e-6, bat.name
        assert evening.sum() / 60 < -50, bat.name  # kWh discharged 18-21
        assert evening.max() <= 1e-6, bat.name

    # (c) Every EV leaves with what it needs.
    assert result.breaches == []
    for ev in fleet.ev_chargers:
        schedule = result.devices[ev.name]
        need = ev.battery_capacity_kwh * ev.departure_soc_pct / 100
        dep = start + pd.Timedelta(hours=ev.departure.hour)
        reached = schedule.soc_kwh[schedule.soc_kwh.index < dep.tz_convert("UTC")].iloc[-1]
        assert reached >= need - 0.05, (ev.name, reached, need)
        # no charging while the car is away
        power = stored(fm_db, fleet, ev.name)
        arrive = start + pd.Timedelta(hours=ev.arrival.hour)
        if ev.arrival < ev.departure:
            away = power[(power.index < arrive) | (power.index >= dep)]
        else:
            away = power[(power.index >= dep) & (power.index < arrive)]
        assert away.abs().max() < 1e-6, ev.name


def test_load_control_caps_the_fleet_import(site, fm_db):
    fleet = site
    start = midnight()
    # Cheap exactly when the grid operator asks for 60 %: everybody would like to charge then.
    prices(fleet, start, lambda h: 20 if 18 <= h < 22 else 300)
    slots = pd.date_range(
        start + pd.Timedelta(hours=18), start + pd.Timedelta(hours=22), freq="15min", inclusive="left"
    )
    write(fleet, "load_control_signal", {slot: 60.0 for slot in slots})

    result = compute_fleet_schedule(fleet, start.to_pydatetime())
    fm_db.session.commit()
    assert result.ok, result.infeasible
    total = sum(stored(fm_db, fleet, name) for name in result.devices)
    window = between(total, start, 18, 22)
    cap = 0.6 * fleet.site.capacity_kw
    assert len(window) == 4 * 60
    assert window.max() <= cap + 1e-3
    assert window.max() >= cap - 1  # the cap binds: without it the fleet would import ~610 kW


def test_missing_prices_are_refused_and_nothing_is_written(site, fm_db):
    fleet = site
    start = midnight()
    prices(fleet, start, lambda h: 100, hours=20)  # 20:00-24:00 missing
    before = count_beliefs(fm_db)
    with pytest.raises(ScheduleRefused, match="consumption_price has no value for .* 20:00-00:00"):
        compute_fleet_schedule(fleet, start.to_pydatetime())
    fm_db.session.commit()
    assert count_beliefs(fm_db) == before


@pytest.mark.parametrize("horizon", [timedelta(0), timedelta(hours=-1)])
def test_horizon_must_be_positive(site, fm_db, horizon):
    with pytest.raises(ValueError, match="horizon must be positive"):
        compute_fleet_schedule(site, midnight().to_pydatetime(), horizon=horizon)


def test_dry_run_writes_nothing_and_cli_prints_summary(site, fm_db, cli):
    fleet = site
    start = midnight()
    prices(fleet, start, lambda h: 80 if h < 6 else 200)
    before = count_beliefs(fm_db)
    result = compute_fleet_schedule(fleet, start.to_pydatetime(), dry_run=True)
    assert result.ok and result.beliefs_saved == 0 and len(result.devices) == 20
    fm_db.session.commit()
    assert count_beliefs(fm_db) == before

    out = cli("cariflex", "schedule", "--start", start.isoformat(), "--horizon", "PT24H", "--dry-run")
    assert out.exit_code == 0, out.output
    assert "bat_01" in out.output and "ev_10" in out.output and "dry run" in out.output
    assert count_beliefs(fm_db) == before

    refused = cli("cariflex", "schedule", "--start", start.isoformat(), "--horizon", "PT0H")
    assert refused.exit_code == 1
    assert "Error: " in refused.output


def test_cap_below_what_departures_need_gives_a_schedule_with_named_breaches(site, fm_db):
    """A 0 % load-control limit all day with empty batteries: no EV can charge. The schedule is still
    made and saved (site import 0), and every EV short of its need is reported with the amount."""
    fleet = site
    start = midnight()
    prices(fleet, start, lambda h: 100)
    write(fleet, "load_control_signal", {start + pd.Timedelta(minutes=15 * q): 0.0 for q in range(96)})
    for bat in fleet.batteries:
        empty = {start - pd.Timedelta(minutes=1): bat.capacity_kwh * 0.1}
        write(fleet, f"{bat.name}_soc", empty, "Simulator")

    result = compute_fleet_schedule(fleet, start.to_pydatetime())
    fm_db.session.commit()
    assert result.ok, result.infeasible
    assert any("solved again with soft minima" in n for n in result.notes)
    assert result.beliefs_saved == 20 * 24 * 60
    total = sum(stored(fm_db, fleet, name) for name in result.devices)
    assert total.max() <= 1e-3  # the cap holds in every period
    short = {line.split(":")[0] for line in result.breaches}
    workplace = {ev.name for ev in fleet.ev_chargers if ev.arrival < ev.departure}
    assert workplace <= short
    for line in result.breaches:
        assert "needs" in line and "kWh short" in line, line


def test_infeasible_problem_is_reported_not_raised(site, fm_db, monkeypatch):
    from flexmeasures.data.models.planning.exceptions import InfeasibleProblemException
    from flexmeasures.data.models.planning.storage import StorageScheduler

    def infeasible(self, *args, **kwargs):
        raise InfeasibleProblemException("infeasible")

    monkeypatch.setattr(StorageScheduler, "compute", infeasible)
    start = midnight()
    prices(site, start, lambda h: 100)
    before = count_beliefs(fm_db)
    result = compute_fleet_schedule(site, start.to_pydatetime())
    assert not result.ok and "infeasible" in result.infeasible
    assert result.devices == {} and result.beliefs_saved == 0
    fm_db.session.commit()
    assert count_beliefs(fm_db) == before
