"""The fleet plans with the site's real energy: PV and base load in the schedule, the cap on the
net import at the connection, and batteries that do not empty themselves at the horizon's end.

On the real database, with the packaged fleet (10 PV sites, 10 batteries of 100 kWh / 50 kW,
10 EV chargers, a 150 kW base load): forecasts are written as the weather and load forecasts
store them, then the real scheduler runs.
"""

from __future__ import annotations

import pandas as pd
import pytest
from flexmeasures.data import db

from cariflex.fleet import load_fleet
from cariflex.site_model import SITE_LOAD, SOURCE_FORECASTER
from flexmeasures_cariflex.config import LP_SOLVER_OPTIONS
from flexmeasures_cariflex.data.queries.site import ensure_source, site_sensors
from flexmeasures_cariflex.data.services.beliefs import insert_beliefs
from flexmeasures_cariflex.data.services.fleet_schedule import compute_fleet_schedule
from flexmeasures_cariflex.data.services.load_forecast import forecast_base_load
from tests.helpers.scheduling import midnight, write

IMPORT_EUR_MWH, EXPORT_EUR_MWH = 135.0, 70.0
BASE_KW = 50.0
PV_SHARE = 0.8  # of each site's peak power, in the PV window


@pytest.fixture
def site(app, cli):
    app.config["FLEXMEASURES_LP_SOLVER_OPTIONS"] = LP_SOLVER_OPTIONS
    result = cli("cariflex", "setup")
    assert result.exit_code == 0, result.output
    return load_fleet()


def forecasts(fleet, start: pd.Timestamp, pv_hours: tuple[int, int], base_kw: float = BASE_KW) -> pd.Series:
    """PV (per site, PV_SHARE of its peak in the local hours ``pv_hours``) and a flat base load,
    as 1-minute forecasts made an hour ago; returns the site's total PV per minute."""
    sensors = site_sensors(fleet)
    minutes = pd.date_range(start, start + pd.Timedelta(hours=24), freq="1min", inclusive="left")
    sunny = (minutes.hour >= pv_hours[0]) & (minutes.hour < pv_hours[1])
    made = pd.Timestamp.now(tz="UTC") - pd.Timedelta(hours=1)
    values, total = {}, pd.Series(0.0, index=minutes)
    for pv in fleet.pv:
        series = pd.Series(sunny * pv.peak_power_kw * PV_SHARE, index=minutes, dtype=float)
        values[sensors[f"{pv.name}_power"]] = series
        total += series
    values[sensors[SITE_LOAD]] = pd.Series(base_kw, index=minutes, dtype=float)
    insert_beliefs(values, ensure_source(*SOURCE_FORECASTER), made.to_pydatetime())
    db.session.commit()
    return total


def tariffs(fleet, start: pd.Timestamp, import_eur_mwh=IMPORT_EUR_MWH, export_eur_mwh=EXPORT_EUR_MWH) -> None:
    hours = [start + pd.Timedelta(hours=h) for h in range(24)]
    write(fleet, "consumption_price", dict.fromkeys(hours, import_eur_mwh))
    write(fleet, "production_price", dict.fromkeys(hours, export_eur_mwh))


def net_import_kw(result, pv_kw: pd.Series, base_kw: float = BASE_KW) -> pd.Series:
    """Per 15-minute period: base load + batteries + EV chargers - PV, at the connection."""
    fleet_kw = sum(schedule.power_kw for schedule in result.devices.values())
    pv_15 = pv_kw.tz_convert("UTC").resample("15min").mean().reindex(fleet_kw.index)
    return fleet_kw + base_kw - pv_15


def battery_kw(result) -> pd.Series:
    return sum(s.power_kw for s in result.devices.values() if s.kind == "battery")


def local_hours(series: pd.Series, a: int, b: int) -> pd.Series:
    hours = series.index.tz_convert("America/Martinique").hour
    return series[(hours >= a) & (hours < b)]


def test_midday_pv_surplus_charges_the_batteries_instead_of_being_exported(site, fm_db):
    fleet, start = site, midnight()
    tariffs(fleet, start)  # exporting pays 70, importing costs 135: PV is worth more kept
    pv_kw = forecasts(fleet, start, (10, 14))

    result = compute_fleet_schedule(fleet, start.to_pydatetime(), dry_run=True)

    assert result.ok, result.infeasible
    assert [e["sensor"] for e in result.flex_context["inflexible-production"]] == [
        site_sensors(fleet)[f"{pv.name}_power"].id for pv in fleet.pv
    ]
    batteries = battery_kw(result)
    charged_at_noon = local_hours(batteries.clip(lower=0), 10, 14).sum() / 4
    charged_at_night = local_hours(batteries.clip(lower=0), 0, 6).sum() / 4
    assert charged_at_noon > 300, batteries  # kWh of PV stored (10 batteries, 50 % full at the start)
    assert charged_at_night < 1, batteries  # the grid at 135 is never the cheaper source
    # and the stored PV replaces imports later: the batteries discharge outside the PV window
    assert local_hours(batteries.clip(upper=0), 14, 24).sum() / 4 < -200
    exported = (-net_import_kw(result, pv_kw)).clip(lower=0).sum() / 4
    surplus = (pv_kw.resample("15min").mean() - BASE_KW).clip(lower=0).sum() / 4
    assert exported < surplus - 300  # kWh: what the batteries took is no longer sold at 70


def test_no_plan_empties_a_battery_at_the_horizon_end_without_a_price_reason(site, fm_db):
    fleet, start = site, midnight()
    tariffs(fleet, start, 135.0, 135.0)  # selling pays what buying costs: no reason to move energy
    forecasts(fleet, start, (10, 14), base_kw=0.0)

    result = compute_fleet_schedule(fleet, start.to_pydatetime(), dry_run=True)

    assert result.ok, result.infeasible
    for name, schedule in result.devices.items():
        if schedule.kind == "battery":
            # the target (soc-minima at the end, in the flex-model) holds: at least the start SoC
            assert schedule.soc_kwh.iloc[-1] >= schedule.soc_at_start_kwh - 0.01, name


def test_a_load_control_cap_holds_on_the_net_import_with_pv_and_base_load(site, fm_db):
    fleet, start = site, midnight()
    tariffs(fleet, start)
    pv_kw = forecasts(fleet, start, (11, 13))
    cap_pct = 30  # of the 600 kW connection: 180 kW
    capped = [start + pd.Timedelta(minutes=15 * q) for q in range(96)]
    capped = [t for t in capped if t.hour in (11, 12, 18, 19, 20)]
    write(fleet, "load_control_signal", dict.fromkeys(capped, cap_pct))

    result = compute_fleet_schedule(fleet, start.to_pydatetime(), dry_run=True)

    assert result.ok, result.infeasible
    net = net_import_kw(result, pv_kw)
    limit = fleet.site.capacity_kw * cap_pct / 100
    in_cap = net[net.index.isin(pd.DatetimeIndex(capped).tz_convert("UTC"))]
    assert len(in_cap) == 20 and (in_cap <= limit + 1e-3).all(), in_cap[in_cap > limit]
    # ... on the NET import: at noon the PV makes room, so the batteries charge above the cap
    assert local_hours(battery_kw(result), 11, 13).max() > limit


def test_the_base_load_forecast_is_stored_with_its_time_and_follows_history(site, fm_db):
    fleet = site
    sensor = site_sensors(fleet)[SITE_LOAD]
    now = pd.Timestamp.now(tz="UTC").floor("15min") - pd.Timedelta(hours=1)  # both forecasts in the past
    first = forecast_base_load(fleet, hours=6, now=now.to_pydatetime())
    assert first.method == "profile" and first.beliefs_saved == 6 * 60
    # two weeks of measurements at a steady 80 kW (weekdays and weekends): the forecast follows them
    minutes = pd.date_range(now - pd.Timedelta(days=14), now, freq="1min", inclusive="left")
    insert_beliefs({sensor: pd.Series(80.0, index=minutes)}, ensure_source("Simulator", "demo script"), None)
    second = forecast_base_load(fleet, hours=6, now=(now + pd.Timedelta(minutes=1)).to_pydatetime())
    fm_db.session.commit()
    assert second.method == "history"
    beliefs = sensor.search_beliefs(
        event_starts_after=now + pd.Timedelta(hours=1),
        event_ends_before=now + pd.Timedelta(hours=2),
        source="Cariflex forecaster",
        most_recent_beliefs_only=True,
    )
    assert len(beliefs) == 60 and (beliefs["event_value"] == 80.0).all()


def test_a_15_minute_replan_starts_from_the_measured_soc(site, fm_db, cli):
    fleet = site
    sensors = site_sensors(fleet)
    now = pd.Timestamp.now(tz="UTC")
    quarter = now.floor("15min")
    hour = now.floor("h")
    write(fleet, "consumption_price", {hour + pd.Timedelta(hours=h): 135.0 for h in range(26)})
    simulator = ensure_source("Simulator", "demo script")
    before, latest = quarter - pd.Timedelta(minutes=5), now - pd.Timedelta(seconds=1)
    insert_beliefs({sensors["bat_01_soc"]: {before: 20.0, latest: 80.0}}, simulator, None)
    fm_db.session.commit()

    # a plan for the current quarter-hour read at its start knows only the reading before it ...
    stale = compute_fleet_schedule(fleet, quarter.to_pydatetime(), pd.Timedelta(hours=12), dry_run=True)
    assert stale.devices["bat_01"].soc_at_start_kwh == 20.0
    # ... the MPC re-plan reads the state of charge as measured now
    fresh = compute_fleet_schedule(
        fleet, quarter.to_pydatetime(), pd.Timedelta(hours=12), dry_run=True, soc_at=now.to_pydatetime()
    )
    assert fresh.devices["bat_01"].soc_at_start_kwh == 80.0
    assert not any(n.startswith("bat_01: latest SoC is") for n in fresh.notes)  # a second old

    # `cariflex replan` (what the worker and the demo run every 15 minutes) does exactly that
    result = cli("cariflex", "replan")
    assert result.exit_code == 0, result.output
    assert "Re-planned" in result.output
