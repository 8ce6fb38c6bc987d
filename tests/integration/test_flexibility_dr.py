"""Flexibility (known fleet states), the VEN's opt-out of a cap the fleet cannot hold, and DR
verification of a known load-control event against its baseline."""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest

from cariflex.fleet import load_fleet
from cariflex.flexibility import can_meet_cap, fleet_flexibility
from tests.helpers.insights import hour, store

FLEET = load_fleet()
# 15:00 in Martinique: ev_01 (08:00-17:00, 60 kWh, 22 kW, leaves with 80 % = 48 kWh) is plugged in.
AFTERNOON = datetime(2026, 6, 10, 19, 0, tzinfo=UTC)


def device(flex, name):
    return next(d for d in flex.devices if d.name == name)


def test_a_battery_can_add_up_to_its_headroom_and_shed_down_to_its_minimum():
    flex = fleet_flexibility(FLEET, {"bat_01": 50.0}, {"bat_01": 0.0}, AFTERNOON, 1.0)
    bat = device(flex, "bat_01")  # 100 kWh, 50 kW, 10..95 %
    assert (bat.max_kw, bat.min_kw) == (45.0, -40.0)  # 45 kWh of room, 40 kWh above the minimum
    assert (bat.up_kw, bat.down_kw, bat.up_kwh, bat.down_kwh) == (45.0, 40.0, 45.0, 40.0)
    short = device(fleet_flexibility(FLEET, {"bat_01": 50.0}, {}, AFTERNOON, 0.25), "bat_01")
    assert (short.up_kw, short.down_kw) == (50.0, 50.0)  # over a quarter-hour the power limit binds
    assert (short.up_kwh, short.down_kwh) == (12.5, 12.5)


def test_an_ev_must_keep_charging_for_its_departure():
    flex = fleet_flexibility(FLEET, {"ev_01": 20.0}, {"ev_01": 10.0}, AFTERNOON, 1.0)
    ev = device(flex, "ev_01")
    # 2 h to departure; 28 kWh missing; 22 kWh can come in the hour after the window: 6 kW now
    assert ev.min_kw == pytest.approx(6.0) and ev.max_kw == 22.0
    assert ev.down_kw == pytest.approx(4.0) and ev.up_kw == pytest.approx(12.0)
    assert ev.note == "needs 28.0 kWh more by 17:00"
    away = device(fleet_flexibility(FLEET, {"ev_01": 20.0}, {}, AFTERNOON + timedelta(hours=4), 1.0), "ev_01")
    assert (away.min_kw, away.max_kw, away.note) == (0.0, 0.0, "car away")
    full = device(fleet_flexibility(FLEET, {"ev_01": 58.0}, {}, AFTERNOON, 1.0), "ev_01")
    assert full.min_kw == pytest.approx(-10.0)  # bidirectional, keeps its 48 kWh: 10 kWh to give
    unknown = device(fleet_flexibility(FLEET, {}, {}, AFTERNOON, 1.0), "ev_01")
    assert (unknown.min_kw, unknown.max_kw, unknown.note) == (0.0, 0.0, "fill level unknown")


def test_fleet_figures_are_the_sums_and_say_why_a_cap_cannot_be_met():
    flex = fleet_flexibility(FLEET, {"bat_01": 50.0, "ev_01": 20.0}, {"ev_01": 10.0}, AFTERNOON, 1.0)
    assert flex.up_kw == pytest.approx(45.0 + 12.0)
    assert flex.min_import_kw == pytest.approx(-40.0 + 6.0)
    assert can_meet_cap(flex, 0.0)[0]
    lone_ev = fleet_flexibility(FLEET, {"ev_01": 20.0}, {}, AFTERNOON, 1.0)
    ok, why = can_meet_cap(lone_ev, 3.0)
    assert not ok
    assert why == (
        "the fleet cannot stay under 3.0 kW for 1 h: its lowest possible import is 6.0 kW; "
        "ev_01 must take 6.0 kW (needs 28.0 kWh more by 17:00)"
    )
    with pytest.raises(ValueError, match="hours must be positive"):
        fleet_flexibility(FLEET, {}, {}, AFTERNOON, 0)


def test_flexibility_from_the_database(cli, fleet, fm_db):
    from flexmeasures_cariflex.data.services.flexibility import current

    minute = pd.Timestamp(AFTERNOON) - pd.Timedelta(minutes=5)
    store(
        fleet,
        {
            "bat_01_soc": pd.Series({minute: 50.0}),
            "ev_01_soc": pd.Series({minute: 20.0}),
            "ev_01_power": pd.Series({minute: 10.0}),
            "bat_02_soc": pd.Series({minute - pd.Timedelta(hours=1): 50.0}),
        },
    )
    flex = current(fleet, hours=1.0, now=AFTERNOON)
    assert device(flex, "bat_01").down_kw == 40.0
    assert device(flex, "ev_01").min_kw == pytest.approx(6.0)
    assert device(flex, "bat_02").note == "fill level unknown"  # its reading is an hour old
    result = cli("cariflex", "flexibility", "--hours", "2", "--store", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["hours"] == 2.0
    bad = cli("cariflex", "flexibility", "--hours", "0")
    assert bad.exit_code == 2 and "Error: --hours: '0' must be at least 0.25" in bad.output
    from flexmeasures_cariflex.data.services.flexibility import FlexibilityError

    with pytest.raises(FlexibilityError, match=r"hours: 0.1 must be at least 0.25 \(one 15-minute period\)"):
        current(fleet, hours=0.1, now=AFTERNOON)  # (0 < hours <= 48 before)


def test_the_ven_opts_out_of_a_cap_the_fleet_cannot_hold_and_logs_why(tmp_path, caplog):
    from cem.fleet_control import FleetController
    from cem.server import Cem, DeviceState
    from ven_bridge.outbox import Outbox
    from ven_bridge.ven import CariflexVen, VenOptions

    box = Outbox(tmp_path)
    cem = Cem("127.0.0.1", 0)
    cem.devices["ev_01"] = DeviceState("ev_01", connected=True, frbc=True, fill_level=20.0)
    ven = CariflexVen(
        VenOptions("v", "http://vtn", frozenset({"ev_01", "Cariflex site"}), "Cariflex site"),
        box,
        None,
        FLEET,
    )
    ven.controller = FleetController(FLEET, cem, box)
    tomorrow_4pm = (datetime.now(UTC) + timedelta(days=1)).astimezone(
        pd.Timestamp.now(tz="America/Martinique").tzinfo
    )
    start = tomorrow_4pm.replace(hour=16, minute=0, second=0, microsecond=0)

    def lc(level: float, number: int) -> dict:
        return {
            "event_descriptor": {
                "event_id": "lc-1",
                "modification_number": number,
                "event_status": "far",
                "modification_date_time": datetime.now(UTC),
            },
            "active_period": {"dtstart": start, "duration": timedelta(hours=1)},
            "event_signals": [
                {
                    "signal_name": "LOAD_CONTROL",
                    "signal_type": "x-loadControlCapacity",
                    "measurement": {},
                    "intervals": [
                        {"dtstart": start, "duration": timedelta(hours=1), "uid": 0, "signal_payload": level}
                    ],
                }
            ],
            "targets": [{"ven_id": "v"}],
        }

    with caplog.at_level(logging.INFO, logger="cariflex.ven"):
        assert asyncio.run(ven.handle_event(lc(0.0, 0))) == "optOut"
    reasons = [r.fields["reason"] for r in caplog.records if getattr(r, "fields", {}).get("opt") == "optOut"]
    assert len(reasons) == 1 and reasons[0].endswith(
        "UTC the fleet cannot stay under 0.0 kW for 1 h: its lowest possible import is 22.0 kW; "
        "ev_01 must take 22.0 kW (needs 28.0 kWh more by 17:00)"
    )
    assert box.head()[0] is None  # nothing goes to FlexMeasures
    assert asyncio.run(ven.handle_event(lc(0.5, 1))) == "optIn"  # a 300 kW cap it can hold


# --- DR verification ------------------------------------------------------------------------

EVENT_DAY = "2026-06-10"  # a Wednesday; the event 18:00-19:00 local = 22:00-23:00 UTC


def test_dr_verification_of_a_known_event(cli, fleet, fm_db, app, token):
    from tests.helpers.common import call

    def evening(day: str, kw: float) -> pd.Series:
        return hour(f"{day}T22:00Z", kw)

    # comparable days (weekdays without load control): 20 kW at that hour; the weekend draws 50 kW,
    # and Tuesday 06-09 had its own event (30 kW): neither may enter the baseline
    usual = ["2026-06-08", "2026-06-05", "2026-06-04", "2026-06-03", "2026-06-02"]
    ev = pd.concat(
        [evening(d, 20.0) for d in usual]
        + [
            evening("2026-06-06", 50.0),
            evening("2026-06-07", 50.0),
            evening("2026-06-09", 30.0),
            evening(EVENT_DAY, 8.0),
        ]
    )
    store(fleet, {"ev_01_power": ev})
    quarters = lambda day: pd.date_range(f"{day}T22:00Z", periods=4, freq="15min")  # noqa: E731
    store(
        fleet,
        {
            "load_control_signal": pd.Series(1.0, index=quarters(EVENT_DAY)).combine_first(
                pd.Series(40.0, index=quarters("2026-06-09"))
            )
        },
        source=("OpenADR VTN", "gateway"),
    )
    result = cli("cariflex", "dr-verification", "--since", "2026-06-10T00:00Z", "--json")
    assert result.exit_code == 0, result.output
    (event,) = json.loads(result.output)
    # cap 1 % of 600 kW = 6 kW; baseline 20 kW: 14 kWh asked, 12 kWh delivered
    assert event["start"] == "2026-06-10T22:00:00+00:00" and event["end"] == "2026-06-10T23:00:00+00:00"
    assert event["cap_kw"] == 6.0
    assert event["baseline_days"] == usual[::-1]
    assert (event["baseline_kwh"], event["measured_kwh"]) == (20.0, 8.0)
    assert (event["requested_kwh"], event["delivered_kwh"], event["delivered_pct"]) == (14.0, 12.0, 85.7)
    response = call(
        app,
        "GET",
        "/api/cariflex/v1/dr-verification?since=2026-06-01T00:00Z",
        headers={"Authorization": token},
    )
    assert [e["start"] for e in response.json["events"]] == [
        "2026-06-09T22:00:00+00:00",
        "2026-06-10T22:00:00+00:00",
    ]


def test_what_a_device_can_shed_is_measured_from_what_it_would_do():
    """An EV leaving in 15 minutes, charging at 7 kW, 1 kWh short: over the hour it would draw
    1.75 kWh and must draw 1 kWh, so it can shed 0.75 kWh, not 7 kWh."""
    quarter_to_five = datetime(2026, 6, 10, 20, 45, tzinfo=UTC)
    ev = device(fleet_flexibility(FLEET, {"ev_01": 47.0}, {"ev_01": 7.0}, quarter_to_five, 1.0), "ev_01")
    assert (ev.min_kw, ev.max_kw) == (pytest.approx(1.0), pytest.approx(5.5))
    assert ev.down_kwh == pytest.approx(0.75) and ev.up_kwh == pytest.approx(3.75)
    nearly_full = device(
        fleet_flexibility(FLEET, {"bat_01": 94.5}, {"bat_01": 5.0}, AFTERNOON, 1.0), "bat_01"
    )
    assert nearly_full.up_kwh == pytest.approx(0.0) and nearly_full.down_kwh == pytest.approx(0.5 + 50.0)


def test_a_past_interval_of_a_running_event_does_not_decide_and_batteries_may_charge_first():
    from cem.fleet_control import FleetController
    from cem.server import Cem, DeviceState

    cem = Cem("127.0.0.1", 0)
    cem.devices["bat_01"] = DeviceState(
        "bat_01", connected=True, frbc=True, fill_level=10.0
    )  # at its minimum
    controller = FleetController(FLEET, cem, outbox=None)
    now = datetime(2026, 6, 10, 12, 0, tzinfo=UTC)
    past = {"start": (now - timedelta(hours=1)).isoformat(), "duration": "PT1H", "value": 0.0}
    later = {"start": (now + timedelta(hours=2)).isoformat(), "duration": "PT1H", "value": 0.0}
    # the battery cannot discharge now, but it can charge for 2 h first and then hold a 0 kW cap
    assert controller.can_meet({"intervals": [past, later]}, now=now)[0]
    alone = Cem("127.0.0.1", 0)
    alone.devices["ev_01"] = DeviceState("ev_01", connected=True, frbc=True, fill_level=20.0)
    last_hour = {
        "start": (now + timedelta(hours=8)).isoformat(),
        "duration": "PT1H",
        "value": 0.0,
    }  # 16:00 local
    ok, why = FleetController(FLEET, alone, outbox=None).can_meet({"intervals": [past, last_hour]}, now=now)
    assert not ok and why.startswith("from 2026-06-10 20:00 UTC the fleet cannot stay under 0.0 kW")
    assert "ev_01 must take 22.0 kW" in why
