"""Insights on the real database with a hand-computable day (2026-06-10, Martinique = UTC-4).

Power, 1-minute readings held for whole hours (PV production-positive, the others charging-positive):

| local hour (UTC)         | pv_01 | bat_01 | ev_01 | net | price buy/sell | gCO2/kWh |
|--------------------------|-------|--------|-------|-----|----------------|----------|
| 06-09 22:00 (06-10 02Z)  |       |        |   9   | +9  |                | 525      |
| 10:00 (14Z)              |  30   |   +5   |  10   | -15 | 100 / 70       | 525      |
| 19:00 (23Z)              |       |   -8   |  20   | +12 | 200 / -        | 600      |
| 23:00 (06-11 03Z)        |       |        |   6   | +6  | 150 / -        | 525      |
| 06-11 00:00 (04Z)        |       |        |   7   | +7  |                | 525      |

Site on 06-10: imported 12 + 6 = 18 kWh, exported 15 kWh; cost 12 x 0.200 + 6 x 0.150 = 3.30 EUR;
revenue 15 x 0.070 = 1.05 EUR; CO2 12 x 600 + 6 x 525 = 10 350 g; PV 30 kWh of which 15 exported:
self-consumption 50 %; load (EV) 36 kWh, of which the battery covered 8 (22.22 %) and the grid 18
(50 %).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest
from sqlalchemy import text

from tests.helpers.common import call
from tests.helpers.insights import hour, store

DAY = "2026-06-10"


@pytest.fixture
def day(fleet, fm_db):
    """The day of the table above, with a revised reading: ev_01 was first believed at 21 kW at
    19:00 (a forecast), then measured at 20 kW; only the measurement may count."""
    store(
        fleet,
        {"ev_01_power": hour("2026-06-10T23:00Z", 21.0)},
        belief_time=datetime(2026, 6, 10, 12, tzinfo=UTC),
    )
    store(
        fleet,
        {
            "pv_01_power": hour("2026-06-10T14:00Z", 30.0),
            "bat_01_power": pd.concat([hour("2026-06-10T14:00Z", 5.0), hour("2026-06-10T23:00Z", -8.0)]),
            "ev_01_power": pd.concat(
                [
                    hour("2026-06-10T02:00Z", 9.0),
                    hour("2026-06-10T14:00Z", 10.0),
                    hour("2026-06-10T23:00Z", 20.0),
                    hour("2026-06-11T03:00Z", 6.0),
                    hour("2026-06-11T04:00Z", 7.0),
                ]
            ),
        },
    )
    hourly = {
        "consumption_price": pd.Series(
            {
                pd.Timestamp("2026-06-10T14:00Z"): 100.0,
                pd.Timestamp("2026-06-10T23:00Z"): 200.0,
                pd.Timestamp("2026-06-11T03:00Z"): 150.0,
            }
        ),
        "production_price": pd.Series({pd.Timestamp("2026-06-10T14:00Z"): 70.0}),
        "grid_carbon_intensity": pd.Series({pd.Timestamp("2026-06-10T23:00Z"): 600.0}),
    }
    store(fleet, hourly, belief_time=datetime(2026, 6, 9, 12, tzinfo=UTC), source=("OpenADR VTN", "gateway"))
    return fleet


def statistics(cli, *args: str) -> dict:
    result = cli("cariflex", "statistics", *args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_site_statistics_of_a_day_to_the_cent_and_the_gram(cli, day):
    result = statistics(cli, "--day", DAY)
    total = result["total"]
    assert result["scope"] == "site" and result["timezone"] == "America/Martinique"
    assert result["start"] == "2026-06-10T04:00:00+00:00" and result["end"] == "2026-06-11T04:00:00+00:00"
    assert total["consumed_kwh"] == 18.0
    assert total["injected_kwh"] == 15.0
    assert total["cost_eur"] == 3.30
    assert total["revenue_eur"] == 1.05
    assert total["co2_kg"] == 10.350
    assert total["pv_production_kwh"] == 30.0
    assert total["self_consumption_pct"] == 50.0
    assert total["load_kwh"] == 36.0
    assert total["battery_share_pct"] == 22.22
    assert total["grid_share_pct"] == 50.0
    assert [d["date"] for d in result["days"]] == [DAY]


def test_device_and_group_statistics(cli, day):
    bat = statistics(cli, "--day", DAY, "--device", "bat_01")["total"]
    assert (bat["consumed_kwh"], bat["injected_kwh"]) == (5.0, 8.0)
    assert bat["cost_eur"] == 0.50  # 5 kWh at 100 EUR/MWh
    assert bat["revenue_eur"] == 0.0 and bat["periods_without_price"] == 4  # 19:00 has no production price
    assert bat["co2_kg"] == 2.625
    assert "self_consumption_pct" not in bat
    evs = statistics(cli, "--day", DAY, "--group", "evs")["total"]
    assert evs["consumed_kwh"] == 36.0
    assert evs["cost_eur"] == 5.90  # 10 x 0.1 + 20 x 0.2 + 6 x 0.15
    assert evs["co2_kg"] == 20.400  # 10 x 525 + 20 x 600 + 6 x 525


def test_a_month_holds_each_local_day_once(cli, day):
    result = statistics(cli, "--month", "2026-06")
    assert [d["date"] for d in result["days"]] == ["2026-06-09", DAY, "2026-06-11"]
    assert [d["consumed_kwh"] for d in result["days"]] == [9.0, 18.0, 7.0]
    assert result["total"]["consumed_kwh"] == 34.0


def test_daily_site_figures_are_stored_as_sensors(cli, day, fm_db):
    statistics(cli, "--day", DAY)
    rows = dict(
        fm_db.session.execute(
            text(
                "SELECT s.name, tb.event_value FROM timed_belief tb JOIN sensor s ON s.id = tb.sensor_id "
                "WHERE s.name LIKE 'site_%' AND tb.event_start = '2026-06-10T04:00Z'"
            )
        ).all()
    )
    assert rows["site_energy_cost"] == 3.30
    assert rows["site_energy_imported"] == 18.0
    assert rows["site_co2"] == 10.350
    assert rows["site_self_consumption"] == 50.0


def test_statistics_over_the_api(app, day, token):
    response = call(
        app, "GET", f"/api/cariflex/v1/statistics?day={DAY}&group=evs", headers={"Authorization": token}
    )
    assert response.status_code == 200, response.json
    assert response.json["total"]["cost_eur"] == 5.90
    bad = call(app, "GET", "/api/cariflex/v1/statistics?day=2026-13-01", headers={"Authorization": token})
    assert bad.status_code == 400 and "day '2026-13-01' is not a day" in bad.json["message"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--day", "10/06/2026"), "day '10/06/2026' is not a day like 2026-11-24"),
        (("--day", "20260610"), "day '20260610' is not a day like 2026-11-24"),  # date.fromisoformat took it
        (("--year", "+2026"), "year '+2026' is not a year like 2026"),  # int() took it
        (("--day", DAY, "--month", "2026-06"), "give exactly one of day"),
        (("--day", DAY, "--device", "bat_99"), "device 'bat_99' is not in the fleet"),
    ],
)
def test_bad_statistics_requests_name_the_problem_and_store_nothing(cli, day, fm_db, args, message):
    before = fm_db.session.execute(text("SELECT count(*) FROM timed_belief")).scalar_one()
    result = cli("cariflex", "statistics", *args)
    assert result.exit_code == 1
    assert message in result.output
    assert "Nothing was written" in result.output
    assert fm_db.session.execute(text("SELECT count(*) FROM timed_belief")).scalar_one() == before


# --- alerts ---------------------------------------------------------------------------------


def alerts(cli, *args: str) -> list[dict]:
    result = cli("cariflex", "alerts", "--since", "P3650D", *args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_out_of_bounds_readings_raise_alerts_and_stay_out_of_the_statistics(cli, day):
    store(
        day,
        {
            "bat_01_power": hour("2026-06-10T15:00Z", 80.0),  # a 50 kW battery
            "irradiance": pd.Series({pd.Timestamp("2026-06-10T15:00Z"): 1500.0}),
            "bat_01_soc": pd.Series({pd.Timestamp("2026-06-10T15:00Z"): 120.0}),  # of 100 kWh
            "ev_01_soc": pd.Series({pd.Timestamp("2026-06-10T15:00Z"): -1.0}),
        },
    )
    found = alerts(cli, "--rule", "out_of_bounds")
    by_sensor = {}
    for a in found:
        by_sensor.setdefault(a["sensor"], []).append(a)
    assert len(by_sensor["bat_01_power"]) == 60 and by_sensor["bat_01_power"][0]["value"] == 80.0
    assert "bat_01_power 80 is outside -50..50" in by_sensor["bat_01_power"][0]["detail"]
    assert by_sensor["irradiance"][0]["value"] == 1500.0
    assert by_sensor["bat_01_soc"][0]["value"] == 120.0
    assert by_sensor["ev_01_soc"][0]["value"] == -1.0
    # the 80 kW hour is not in the battery's energy, nor in the site's
    assert statistics(cli, "--day", DAY, "--device", "bat_01")["total"]["consumed_kwh"] == 5.0
    assert statistics(cli, "--day", DAY)["total"]["consumed_kwh"] == 18.0


def test_a_reading_at_the_limit_is_no_alert(cli, day):
    store(
        day,
        {
            "bat_01_power": hour("2026-06-10T16:00Z", 50.0),
            "irradiance": pd.Series({pd.Timestamp("2026-06-10T16:00Z"): 0.0}),
        },
    )
    assert alerts(cli) == []
    assert statistics(cli, "--day", DAY, "--device", "bat_01")["total"]["consumed_kwh"] == 55.0


def test_silent_sensors_are_reported(cli, fleet, fm_db):
    from flexmeasures_cariflex.data.services.alerts import check

    now = datetime.now(UTC).replace(second=0, microsecond=0)
    store(
        fleet,
        {
            "bat_01_soc": pd.Series({now - timedelta(minutes=40): 50.0}),
            "bat_02_soc": pd.Series({now - timedelta(minutes=5): 50.0}),
        },
    )
    found = check(fleet, now=now)
    fm_db.session.commit()
    assert found["silent"] == 1
    silent = alerts(cli, "--rule", "silent")
    assert [a["sensor"] for a in silent] == ["bat_01_soc"]
    assert silent[0]["value"] == pytest.approx(39.0)  # minutes since the reading's period ended
    assert "bat_01_soc: no reading since" in silent[0]["detail"]


def test_a_device_away_from_its_schedule_is_reported_unless_capped(cli, fleet, fm_db):
    from flexmeasures_cariflex.data.services.alerts import check

    quarter = pd.Timestamp(datetime.now(UTC)).floor("15min") - pd.Timedelta(minutes=30)
    minutes = pd.date_range(quarter, periods=15, freq="min")
    store(
        fleet,
        {"bat_01_power": pd.Series(20.0, index=minutes), "bat_02_power": pd.Series(9.5, index=minutes)},
        belief_time=quarter - pd.Timedelta(hours=1),
        source=("Cariflex scheduler", "scheduler"),
    )
    store(
        fleet, {"bat_01_power": pd.Series(0.0, index=minutes), "bat_02_power": pd.Series(10.0, index=minutes)}
    )
    check(fleet)
    fm_db.session.commit()
    found = alerts(cli, "--rule", "not_following")
    assert [a["sensor"] for a in found] == ["bat_01_power"]  # bat_02 is within max(1 kW, 10 % of 50 kW)
    assert "bat_01_power: measured 0.00 kW, scheduled 20.00 kW" in found[0]["detail"]
    # under a load-control cap the schedule does not bind: no alert
    fm_db.session.execute(text("DELETE FROM cariflex_alert"))
    store(fleet, {"load_control_signal": pd.Series({quarter: 50.0})}, source=("OpenADR VTN", "gateway"))
    check(fleet)
    fm_db.session.commit()
    assert alerts(cli, "--rule", "not_following") == []


def test_not_following_compares_with_the_cariflex_schedule_only(cli, fleet, fm_db):
    """Issue 21: another source of type scheduler (a schedule triggered through FlexMeasures' own
    API, say), even with a newer belief, is not what the CEM follows."""
    from flexmeasures_cariflex.data.services.alerts import check

    quarter = pd.Timestamp(datetime.now(UTC)).floor("15min") - pd.Timedelta(minutes=30)
    minutes = pd.date_range(quarter, periods=15, freq="min")
    other = ("StorageScheduler", "scheduler")
    assert check(fleet)["not_following"] == 0  # no Cariflex schedule at all yet
    store(
        fleet,
        {"bat_01_power": pd.Series(0.0, index=minutes), "bat_02_power": pd.Series(20.0, index=minutes)},
        belief_time=quarter - pd.Timedelta(hours=2),
        source=("Cariflex scheduler", "scheduler"),
    )
    store(
        fleet,
        {"bat_01_power": pd.Series(20.0, index=minutes), "bat_02_power": pd.Series(0.0, index=minutes)},
        belief_time=quarter - pd.Timedelta(hours=1),
        source=other,
    )
    idle = pd.Series(0.0, index=minutes)
    store(fleet, {"bat_01_power": idle, "bat_02_power": idle})
    assert check(fleet)["not_following"] == 1
    fm_db.session.commit()
    found = alerts(cli, "--rule", "not_following")
    assert [a["sensor"] for a in found] == ["bat_02_power"]
    assert "bat_02_power: measured 0.00 kW, scheduled 20.00 kW" in found[0]["detail"]


def test_alerts_over_the_api_and_bad_since(app, cli, day, token):
    store(day, {"irradiance": pd.Series({pd.Timestamp("2026-06-10T15:00Z"): -5.0})})
    response = call(app, "GET", "/api/cariflex/v1/alerts?since=PT1H", headers={"Authorization": token})
    assert response.status_code == 200
    assert [a["sensor"] for a in response.json["alerts"]] == ["irradiance"]
    bad = call(app, "GET", "/api/cariflex/v1/alerts?since=yesterday", headers={"Authorization": token})
    assert bad.status_code == 400 and "since: 'yesterday'" in bad.json["message"]
    result = cli("cariflex", "alerts", "--since", "yesterday")
    assert result.exit_code == 1 and "--since: 'yesterday' is not an ISO time" in result.output


# --- carbon intensity and the hourly refresh --------------------------------------------------


def test_carbon_intensity_from_a_csv_and_refusals(cli, fleet, fm_db, tmp_path):
    good = tmp_path / "carbon.csv"
    good.write_text("hour,intensity\n" + "".join(f"{h},{500 + h}\n" for h in range(24)))
    result = cli("cariflex", "carbon-intensity", "--day", DAY, "--csv", str(good))
    assert result.exit_code == 0, result.output
    assert f"carbon intensity {DAY}: 24 hourly value(s) written (file {good})" in result.output
    value = fm_db.session.execute(
        text(
            "SELECT tb.event_value FROM timed_belief tb JOIN sensor s ON s.id = tb.sensor_id "
            "WHERE s.name = 'grid_carbon_intensity' AND tb.event_start = '2026-06-10T05:00Z'"
        )
    ).scalar_one()
    assert value == 501.0  # 01:00 local
    again = cli("cariflex", "carbon-intensity", "--day", DAY, "--csv", str(good))
    assert "0 hourly value(s) written" in again.output
    bad = tmp_path / "bad.csv"
    bad.write_text("hour,intensity\n" + "".join(f"{h},{'-3' if h == 5 else 500}\n" for h in range(24)))
    refused = cli("cariflex", "carbon-intensity", "--day", "2026-06-11", "--csv", str(bad))
    assert refused.exit_code == 1
    assert f"carbon-intensity file {bad}: hour 5: -3 gCO2/kWh is outside 0..2000" in refused.output


def test_the_hourly_insights_commands_run_on_a_new_site(cli, fleet):
    """What the demo and the worker run every hour (operations/launch.py)."""
    for command in (
        ("carbon-intensity",),
        ("statistics",),
        ("flexibility", "--store"),
        ("dr-verification", "--since", "P2D", "--store"),
        ("alerts", "check"),
        ("alerts",),
    ):
        result = cli("cariflex", *command)
        assert result.exit_code == 0, (command, result.output)


def test_only_periods_that_have_begun_count(day):
    """PV is stored as a forecast ahead of time; a forecast is not energy anybody used or sold."""
    from flexmeasures_cariflex.data.services.statistics import parse_period, statistics

    at_four_pm = datetime(2026, 6, 10, 20, 0, tzinfo=UTC)  # 16:00 local: before the evening hours
    total = statistics(day, parse_period(DAY), now=at_four_pm)["total"]
    assert (total["consumed_kwh"], total["injected_kwh"]) == (0.0, 15.0)


def two_minutes_injecting() -> pd.Series:
    """bat_01 of issue 21: two 1-minute readings of -5.97 kW (discharging) in 14:00-14:15Z."""
    return pd.Series(-5.97, index=pd.date_range("2026-06-10T14:03Z", periods=2, freq="min"))


def test_a_partly_measured_quarter_hour_counts_its_measured_minutes(fleet):
    """Issue 21: two 1-minute readings of -5.97 kW in a quarter-hour are 2 x 5.97 / 60 = 0.199 kWh
    injected, not the 1.49 kWh of their mean scaled to 15 minutes."""
    from flexmeasures_cariflex.data.services.statistics import parse_period, statistics

    store(fleet, {"bat_01_power": two_minutes_injecting()})
    later = datetime(2026, 6, 11, 12, tzinfo=UTC)
    bat = statistics(fleet, parse_period(DAY), device="bat_01", now=later)["total"]
    assert (bat["injected_kwh"], bat["consumed_kwh"], bat["periods"]) == (0.199, 0.0, 1)
    site = statistics(fleet, parse_period(DAY), now=later)["total"]
    assert site["injected_kwh"] == 0.199


def test_the_quarter_hour_in_progress_counts_what_was_measured_up_to_now(fleet):
    """At 14:07:30Z the quarter-hour 14:00-14:15 has seven ended minutes; the reading of 14:07 (its
    minute still running) and a PV forecast for 14:10 on do not count yet."""
    from flexmeasures_cariflex.data.services.statistics import parse_period, statistics

    minutes = pd.date_range("2026-06-10T14:00Z", periods=8, freq="min")  # 14:00 .. 14:07
    store(fleet, {"ev_01_power": pd.Series(6.0, index=minutes)})
    forecast = pd.Series(30.0, index=pd.date_range("2026-06-10T14:00Z", periods=15, freq="min"))
    store(fleet, {"pv_01_power": forecast}, belief_time=datetime(2026, 6, 10, 12, tzinfo=UTC))
    now = datetime(2026, 6, 10, 14, 7, 30, tzinfo=UTC)
    ev = statistics(fleet, parse_period(DAY), device="ev_01", now=now)["total"]
    assert (ev["consumed_kwh"], ev["periods"]) == (0.7, 1)  # 7 minutes x 6 kW / 60
    site = statistics(fleet, parse_period(DAY), now=now)["total"]
    assert site["pv_production_kwh"] == 3.5  # 7 minutes x 30 kW / 60
    assert (site["consumed_kwh"], site["injected_kwh"]) == (0.0, 2.8)  # net -24 kW x 7 minutes
    # a minute later the 14:07 reading has ended; once the quarter-hour is over, the rollup holds it
    assert (
        statistics(fleet, parse_period(DAY), device="ev_01", now=now.replace(minute=8))["total"][
            "consumed_kwh"
        ]
        == 0.8
    )
    after = statistics(fleet, parse_period(DAY), device="ev_01", now=datetime(2026, 6, 10, 15, tzinfo=UTC))
    assert after["total"]["consumed_kwh"] == 0.8


def test_an_older_rollup_table_gains_its_energy_column(fleet, fm_db):
    """A database set up before the rollups had ``energy``: setup adds the column and refills it."""
    from flexmeasures_cariflex.data.services.rollups import TABLE, ensure_rollups

    store(fleet, {"bat_01_power": two_minutes_injecting()})
    fm_db.session.execute(text(f"ALTER TABLE {TABLE} DROP COLUMN energy"))
    assert ensure_rollups() is True
    assert ensure_rollups() is False
    energy = fm_db.session.execute(
        text(
            f"SELECT r.energy FROM {TABLE} r JOIN sensor s ON s.id = r.sensor_id "
            "WHERE s.name = 'bat_01_power'"
        )
    ).scalar_one()
    fm_db.session.commit()
    assert energy == pytest.approx(-0.199)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("statistics", "--year", "9999"), "year '9999' is outside the years 2000..2100"),
        (("statistics", "--device", "bat_01", "--store"), "--store writes the site's daily figures"),
        (("carbon-intensity", "--day", "soon"), "--day 'soon' is not a day like 2026-11-24"),
        (("alerts", "--since", ""), "--since: '' is not an ISO time"),
        (("alerts", "--since", "P10000Y"), "--since: 'P10000Y' is not an ISO time"),
        (("dr-verification", "--since", "last week"), "--since: 'last week' is not an ISO time"),
        # cariflex.inputs.since: no longer pandas' reading of any date-like text, nor the future
        (("alerts", "--since", "2026/06/10"), "--since: '2026/06/10' is not an ISO time"),
        (("alerts", "--since", "2099-01-01"), "--since: '2099-01-01' lies in the future"),
        (("dr-verification", "--since", "2001-01-01"), "--since: '2001-01-01' is more than 10 years ago"),
    ],
)
def test_more_bad_inputs_are_refused_by_name(cli, fleet, args, message):
    result = cli("cariflex", *args)
    assert result.exit_code == 1, result.output
    assert message in result.output


def test_the_api_refuses_an_empty_since(app, fleet, token):
    response = call(app, "GET", "/api/cariflex/v1/alerts?since=", headers={"Authorization": token})
    assert response.status_code == 400 and "since: '' is not an ISO time" in response.json["message"]
    future = call(
        app, "GET", "/api/cariflex/v1/dr-verification?since=2099-01-01", headers={"Authorization": token}
    )
    assert future.status_code == 400 and "since: '2099-01-01' lies in the future" in future.json["message"]
