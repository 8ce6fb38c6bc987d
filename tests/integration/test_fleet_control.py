"""Load-control allocation: the cap is met by sharing the effort by each device's room, SoC-aware."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from cem.fleet_control import Flex, allocate, load_control_level


def test_no_cap_keeps_the_setpoints():
    targets, shortfall = allocate([Flex("bat_01", 40, -50), Flex("ev_01", 22, -22)], None)
    assert targets == {"bat_01": 40, "ev_01": 22} and shortfall == 0


def test_cap_is_met_in_proportion_to_room():
    devices = [Flex("bat_01", 50, -50), Flex("bat_02", 50, 0), Flex("ev_01", 20, -22)]
    # Σ = 120 kW, cap 60 kW: 60 kW to shed; rooms 100, 50, 42 → share 60/192 of each room.
    targets, shortfall = allocate(devices, 60)
    assert sum(targets.values()) == pytest.approx(60)
    assert targets["bat_01"] == pytest.approx(50 - 100 * 60 / 192)
    assert targets["bat_02"] == pytest.approx(
        50 - 50 * 60 / 192
    )  # at its minimum fill: may only stop charging
    assert shortfall == 0


def test_what_cannot_be_shed_is_reported():
    devices = [Flex("bat_01", 30, 0), Flex("ev_01", 20, 0)]  # both empty: they can only stop charging
    targets, shortfall = allocate(devices, -10)
    assert targets == {"bat_01": 0, "ev_01": 0}
    assert shortfall == pytest.approx(10)


def test_the_lowest_active_level_applies_and_cancelled_events_do_not():
    now = datetime(2030, 3, 1, 18, 30, tzinfo=UTC)
    start = now - timedelta(minutes=30)

    def event(value, status="far"):
        return {
            "status": status,
            "intervals": [{"start": start.isoformat(), "duration": "PT1H", "value": value}],
        }

    assert load_control_level({}, now) is None
    assert load_control_level({"a": event(0.6), "b": event(0.8)}, now) == 0.6
    assert load_control_level({"a": event(0.6, "cancelled"), "b": event(0.8)}, now) == 0.8
    assert load_control_level({"a": event(0.6)}, now + timedelta(hours=1)) is None


def test_measurements_leave_as_one_minute_averages(tmp_path):
    import time

    from cariflex.fleet import load_fleet
    from cem.fleet_control import FleetController
    from cem.server import Cem
    from ven_bridge.outbox import Outbox

    cem, box = Cem(), Outbox(tmp_path)
    state = cem.device("bat_01")
    now = time.monotonic()
    state.power_samples = [(now - 50, 10_000.0), (now - 30, 20_000.0), (now - 5, 30_000.0)]
    state.fill_level = 55.5
    controller = FleetController(load_fleet(), cem, box)
    minute = datetime(2030, 3, 1, 18, 0, tzinfo=UTC)
    controller._measurements(minute + timedelta(seconds=30))  # the first call only starts the clock
    assert box.head()[0] is None
    controller._measurements(minute + timedelta(minutes=1))
    entries = []
    while (entry := box.head()[0]) is not None:
        entries.append(entry.payload)
        box.mark_done(entry)
    assert entries == [
        {
            "sensor": "bat_01_power",
            "start": minute.isoformat(),
            "duration": "PT1M",
            "values": [20.0],
            "unit": "kW",
        },
        {
            "sensor": "bat_01_soc",
            "start": minute.isoformat(),
            "duration": "PT1M",
            "values": [55.5],
            "unit": "kWh",
        },
    ]
