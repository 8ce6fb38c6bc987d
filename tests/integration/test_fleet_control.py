"""Load-control allocation: the cap is met by sharing the effort by each device's room, SoC-aware."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cem.fleet_control import Flex, allocate, load_control_level
from tests.helpers.s2 import follower_answering, site_schedule


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


def test_an_unusable_stored_entry_is_skipped_and_never_stops_the_round(tmp_path, caplog, monkeypatch):
    """load_control_events and setpoints are read through their contracts: a bad entry (which raised
    and failed the whole control round before) is logged and left out, the rest still applies."""
    import logging

    from cariflex.fleet import load_fleet
    from cem import fleet_control
    from cem.fleet_control import FleetController
    from cem.server import Cem
    from ven_bridge.outbox import Outbox

    monkeypatch.setattr(fleet_control, "_logged_problems", set())  # each problem is logged once
    now = datetime(2030, 3, 1, 18, 30, tzinfo=UTC)
    start = (now - timedelta(minutes=30)).isoformat()

    def interval(value, begin=start, duration="PT1H"):
        return {"start": begin, "duration": duration, "value": value}

    events = {
        "good": {"status": "far", "intervals": [interval(0.6)]},
        "text": "not an event",
        "no intervals": {"status": "far"},
        "bad start": {"status": "far", "intervals": [interval(0.1, begin="soon"), interval(0.7)]},
        "above 1": {"status": "far", "intervals": [interval(2.0)]},
        "months": {"status": "far", "intervals": [interval(0.2, duration="P1M")]},
    }
    with caplog.at_level(logging.ERROR, logger="cariflex.ven.fleet"):
        assert load_control_level(events, now) == 0.6
    logged = {r.fields["what"]: r.fields["error"] for r in caplog.records}
    assert logged["load-control event bad start"] == "intervals[0].start: 'soon' is not an ISO 8601 date-time"
    assert logged["load-control event above 1"].startswith("intervals[0].value: 2.0 is outside 0..1")
    assert logged["load-control event months"].startswith("intervals[0].duration: 'P1M' has no fixed length")
    assert "has no list of intervals" in logged["load-control event text"]

    box = Outbox(tmp_path)
    controller = FleetController(load_fleet(), Cem(), box)
    box.set_state("setpoints", {"bat_01": 20, "ev_01": -7.5})
    assert controller.operator_setpoints() == {"bat_01": 20, "ev_01": -7.5}
    box.set_state("setpoints", {"bat_01": "20"})
    box.set_state("load_control_events", events)
    assert controller.operator_setpoints() == {}
    assert controller.targets(now) == ({}, 0.0, 0.6 * controller.capacity_kw)  # the round goes on


def test_the_follower_reads_the_schedule_through_its_contract_and_keeps_its_copy(tmp_path, caplog):
    """An answer that does not meet cariflex.contracts.fleet_schedule (text for kW: float() took
    it before, and any other text failed every control round) is logged and the copy kept; the
    copy (as served, plus its etag) is read through the contract after a restart too."""
    import json
    import logging
    from types import SimpleNamespace

    from cem.schedule_follower import ScheduleFollower, period_start
    from ven_bridge.outbox import Outbox

    start = period_start(datetime.now(UTC))
    served = {
        "version": "v1",
        "ok": True,
        "breaches": [],
        "start": start.isoformat(),
        "resolution": "PT15M",
        "unit": "kW",
        "devices": {"bat_01": [12.5] * 16, "ev_01": [None] * 16},
    }
    unusable = {**served, "version": "v2", "devices": {"bat_01": ["12.5"] * 16}}
    answers = [(served, '"v1"'), (unusable, '"v2"'), ({**served, "resolution": "PT1H"}, '"v3"')]
    asked = []

    def get_schedule(hours, etag=None):
        asked.append(etag)
        body, tag = answers.pop(0)
        return SimpleNamespace(status=200, text=json.dumps(body), etag=tag, accepted=True)

    client = SimpleNamespace(get_schedule=get_schedule)
    box = Outbox(tmp_path)
    follower = ScheduleFollower(client, box)
    assert follower.fetch() and follower.setpoints(start) == {"bat_01": 12.5}
    assert box.get_state("schedule") == {**served, "etag": '"v1"'}
    with caplog.at_level(logging.ERROR, logger="cariflex.ven.schedule"):
        assert not follower.fetch() and not follower.fetch()
    errors = [r.fields["error"] for r in caplog.records if r.getMessage() == "schedule answer unusable"]
    assert errors == [
        "devices.bat_01[0]: '12.5' is not a number",
        "resolution: 'PT1H' is not 'PT15M', the follower's step",
    ]
    assert follower.setpoints(start) == {"bat_01": 12.5} and asked == [None, '"v1"', '"v1"']
    assert ScheduleFollower(client, box).setpoints(start + timedelta(minutes=20)) == {"bat_01": 12.5}
    box.set_state("schedule", {**served, "unit": "W", "etag": '"v0"'})  # a copy gone bad
    broken = ScheduleFollower(client, box)
    assert broken.setpoints(start) == {} and broken._etag is None  # the next fetch asks afresh


def test_a_negative_allowance_discharges_the_batteries_to_their_floors():
    """cap − site_kw below zero (the base load alone over the cap): the fleet must export; each
    device goes at most to its min_kw, and what even that cannot give is the shortfall."""
    devices = [Flex("bat_01", 10, -50), Flex("bat_02", 0, -50), Flex("ev_01", 0, 0)]
    targets, shortfall = allocate(devices, -40)  # 50 kW to shed; rooms 60, 50, 0
    assert sum(targets.values()) == pytest.approx(-40) and shortfall == 0
    assert targets["bat_01"] == pytest.approx(10 - 60 * 50 / 110) and targets["ev_01"] == 0
    targets, shortfall = allocate(devices, -150)  # more than the batteries can discharge
    assert targets == {"bat_01": -50, "bat_02": -50, "ev_01": 0}
    assert shortfall == pytest.approx(50)


def _batteries_under_frbc(cem, fill_kwh: float, power_kw: float) -> None:
    from cariflex.s2.devices import battery_model
    from tests.helpers.s2 import FLEET

    for battery in FLEET.batteries:
        state = cem.device(battery.name)
        state.connected = state.frbc = True
        state.description = battery_model(battery).description
        state.fill_level, state.power_w = fill_kwh, power_kw * 1000


def test_the_cap_holds_on_the_net_import_with_the_planned_base_load_minus_pv(tmp_path):
    """Cap 180 kW (30 % of 600), the 10 batteries asked for 500 kW: with the base load taking
    100 kW (night) the fleet gets 80 kW; with a 300 kW PV surplus (noon) 480 kW; not known: the
    cap on the fleet alone, 180 kW, as before; base load over the cap: the batteries discharge."""
    from cariflex.fleet import load_fleet
    from cem.fleet_control import FleetController
    from cem.schedule_follower import period_start
    from cem.server import Cem
    from ven_bridge.outbox import Outbox

    start = period_start(datetime.now(UTC))
    box, cem = Outbox(tmp_path), Cem()
    follower = follower_answering(box, [site_schedule(start, [100.0, -300.0, None, 300.0] * 4)])
    assert follower.fetch()
    period = [start + timedelta(minutes=15 * i + 7) for i in range(4)]
    assert [follower.site_kw(t) for t in period] == [100.0, -300.0, None, 300.0]
    assert follower.site_kw(start - timedelta(minutes=1)) is None
    assert follower.site_kw(start + timedelta(hours=4)) is None
    _batteries_under_frbc(cem, fill_kwh=50.0, power_kw=0.0)
    controller = FleetController(load_fleet(), cem, box, follower=follower)

    def fleet_import(now: datetime) -> tuple[float, float, float | None]:
        targets, shortfall, cap = controller.targets(now)
        return round(sum(targets.values()), 6), round(shortfall, 6), cap

    # No event: the schedule as it is, whatever the site does.
    assert [fleet_import(t) for t in period] == [(500.0, 0.0, None)] * 4
    event = {"status": "far", "intervals": [{"start": start.isoformat(), "duration": "PT4H", "value": 0.3}]}
    box.set_state("load_control_events", {"lc": event})
    assert controller.capacity_kw * 0.3 == pytest.approx(180)
    assert fleet_import(period[0]) == (80.0, 0.0, 180.0)  # night: 180 − 100
    assert fleet_import(period[1]) == (480.0, 0.0, 180.0)  # noon: 180 + 300
    assert fleet_import(period[2]) == (180.0, 0.0, 180.0)  # unknown: the fleet alone
    assert fleet_import(period[3]) == (-120.0, 0.0, 180.0)  # 180 − 300: the batteries discharge
    _batteries_under_frbc(cem, fill_kwh=10.0, power_kw=0.0)  # at their floors: nothing to give
    assert fleet_import(period[3]) == (0.0, 120.0, 180.0)

    # Without site_kw in the schedule (an older plugin, a fleet without PV and base load): as before.
    controller.follower = follower_answering(box, [site_schedule(start, None)])
    assert controller.follower.fetch()
    _batteries_under_frbc(cem, fill_kwh=50.0, power_kw=0.0)
    assert [fleet_import(t) for t in period] == [(180.0, 0.0, 180.0)] * 4


def test_status_shows_the_fleet_the_planned_site_and_the_net_import(tmp_path):
    """After a control round the report (outbox state "s2", what cariflex-ven status prints) has
    the fleet's measured power, the planned base load − PV and their sum, the net import."""
    import asyncio
    import json

    from click.testing import CliRunner

    from cariflex.contracts.s2_device import FleetStatus
    from cariflex.fleet import load_fleet
    from cem.fleet_control import FleetController
    from cem.schedule_follower import period_start
    from cem.server import Cem
    from ven_bridge.cli import cli
    from ven_bridge.outbox import Outbox

    start = period_start(datetime.now(UTC))
    box, cem = Outbox(tmp_path), Cem()
    follower = follower_answering(box, [site_schedule(start, [100.0] * 16, kw=8.0)])
    assert follower.fetch()
    _batteries_under_frbc(cem, fill_kwh=50.0, power_kw=8.0)  # 10 x 8 kW measured
    controller = FleetController(load_fleet(), cem, box, follower=follower)
    asyncio.run(controller.step())
    status = controller.status()
    assert (status["fleet_kw"], status["site_kw"], status["net_import_kw"]) == (80.0, 100.0, 180.0)
    assert FleetStatus.from_dict(status).to_dict() == status
    box.set_state("s2", status)
    box.close()

    runner = CliRunner()
    shown = runner.invoke(cli, ["status", "--state-dir", str(tmp_path)])
    assert shown.exit_code == 0, shown.output
    assert (
        "site: net import 180.0 kW = fleet 80.0 kW (measured) + base load − PV 100.0 kW "
        "(planned for this quarter-hour, a forecast)"
    ) in shown.output
    as_json = runner.invoke(cli, ["status", "--json", "--state-dir", str(tmp_path)])
    s2 = json.loads(as_json.output)["s2"]
    assert (s2["fleet_kw"], s2["site_kw"], s2["net_import_kw"]) == (80.0, 100.0, 180.0)

    # A schedule without the site's figure: the fleet still shows, the site is unknown.
    box = Outbox(tmp_path)
    controller.follower = follower_answering(box, [site_schedule(start, None, kw=8.0)])
    assert controller.follower.fetch()
    asyncio.run(controller.step())
    box.set_state("s2", controller.status())
    box.close()
    shown = runner.invoke(cli, ["status", "--state-dir", str(tmp_path)]).output
    assert "net import unknown = fleet 80.0 kW (measured) + base load − PV unknown (not measured" in shown


def test_an_event_is_judged_on_the_net_import_where_the_plan_knows_the_site(tmp_path):
    """Cap 180 kW, every battery at its floor (the fleet can go down to 0 kW, not below): an hour
    whose plan has the base load at 100 kW over PV can be held (the fleet may take 80 kW); one
    whose last quarter has the base load 300 kW over PV cannot (the fleet would have to export
    120 kW), and the answer says so; without the site's figure the cap is judged on the fleet."""
    from cariflex.fleet import load_fleet
    from cem.fleet_control import FleetController
    from cem.schedule_follower import period_start
    from cem.server import Cem
    from ven_bridge.outbox import Outbox

    start = period_start(datetime.now(UTC)) + timedelta(minutes=15)
    box, cem = Outbox(tmp_path), Cem()
    follower = follower_answering(box, [site_schedule(start, [100.0, -300.0, None, 300.0] * 4)])
    assert follower.fetch()
    _batteries_under_frbc(cem, fill_kwh=10.0, power_kw=0.0)
    controller = FleetController(load_fleet(), cem, box, follower=follower)

    def event(offset_min: int, minutes: int) -> dict:
        begin = start + timedelta(minutes=offset_min)
        return {"intervals": [{"start": begin.isoformat(), "duration": f"PT{minutes}M", "value": 0.3}]}

    assert controller.can_meet(event(0, 45))[0]  # 100, -300, unknown: at most 100 kW of site
    ok, why = controller.can_meet(event(0, 60))
    assert not ok and "cannot stay under -120.0 kW" in why and "site's planned 300.0 kW" in why
    assert FleetController(load_fleet(), cem, box).can_meet(event(0, 60))[0]  # no plan: fleet alone


def test_pv_the_plan_did_not_expect_goes_into_the_batteries_not_the_grid(tmp_path):
    """Planned: every battery at 10 kW, base load − PV −150 kW (50 kW exported). The meters read
    −350 kW (200 kW more sun): instead of exporting 250 kW, the batteries take the 200 kW the plan
    did not expect, in proportion to their room; the export stays what was planned. Not a battery at
    its ceiling, not one the operator set by hand; and not without fresh meters."""
    import time

    from cariflex.fleet import load_fleet
    from cariflex.s2.meters import site_meters
    from cem.fleet_control import FleetController
    from cem.schedule_follower import period_start
    from cem.server import Cem
    from ven_bridge.outbox import Outbox

    fleet = load_fleet()
    start = period_start(datetime.now(UTC))
    meters = site_meters(fleet)
    box, cem = Outbox(tmp_path), Cem(meters=meters)
    controller = FleetController(
        fleet, cem, box, follower=follower_answering(box, [site_schedule(start, [-150.0] * 16, kw=10.0)])
    )
    assert controller.follower.fetch()
    _batteries_under_frbc(cem, fill_kwh=50.0, power_kw=10.0)
    controller.meters = {name: meters[name] for name in ("site_load", "pv_01")}  # these two read the site
    for name, watts in (("site_load", 100_000.0), ("pv_01", -450_000.0)):
        state = cem.device(name)
        state.metered, state.power_w, state.power_at = True, watts, time.monotonic()
    now = start + timedelta(minutes=5)
    assert controller.site(now) == (-350.0, "measured")

    targets, _, _ = controller.targets(now)
    assert sum(targets.values()) == pytest.approx(100.0 + 200.0)  # net import −50 kW, as planned
    assert list(targets.values()) == [pytest.approx(30.0)] * 10  # each battery's room is 40 kW: half of it

    cem.devices["bat_02"].fill_level = 95.0  # at its ceiling: no room
    box.set_state("setpoints", {"bat_01": 5.0})  # the operator's value stands
    targets, _, _ = controller.targets(now)
    assert targets["bat_01"] == 5.0 and targets["bat_02"] == 10.0
    others = [kw for name, kw in targets.items() if name not in ("bat_01", "bat_02")]
    assert sum(others) == pytest.approx(8 * 10.0 + 200.0)  # the 200 kW among the other eight
    assert sum(targets.values()) - 350.0 == pytest.approx(-55.0)  # (the operator's 5 kW less)

    cem.device("pv_01").power_at = time.monotonic() - 3600  # a stale meter: the plan's figure, no absorbing
    box.set_state("setpoints", {})
    targets, _, _ = controller.targets(now)
    assert controller.site(now) == (-150.0, "planned") and targets["bat_03"] == 10.0


@settings(max_examples=200, deadline=None)
@given(
    fleet_kw=st.floats(-500, 500),
    site_kw=st.floats(-600, 300),
    planned=st.floats(-600, 300),
    rooms=st.lists(st.floats(0, 50), min_size=1, max_size=10),
)
def test_absorbing_never_turns_an_export_into_an_import_nor_exceeds_a_room(fleet_kw, site_kw, planned, rooms):
    from cem.fleet_control import absorb, unplanned_surplus_kw

    surplus = unplanned_surplus_kw(fleet_kw, site_kw, planned)
    assert surplus >= 0 and surplus <= max(0.0, planned - site_kw) + 1e-9
    targets = {f"bat_{i:02d}": fleet_kw / len(rooms) for i in range(len(rooms))}
    room = dict(zip(targets, rooms, strict=True))
    after = absorb(targets, room, surplus)
    extra = {name: after[name] - targets[name] for name in targets}
    assert all(-1e-9 <= extra[name] <= room[name] + 1e-9 for name in targets)
    if surplus > 0:
        assert sum(after.values()) + site_kw <= 1e-6  # still exporting (or balanced), never importing
