"""The site's metered net import: each PV site and the base load as an S2 resource manager of
control type NOT_CONTROLABLE (cariflex.s2.meters, simulator.site), paired like the batteries, and
a load-control cap held on base load + fleet − PV as the meters read it.

Real WebSockets over loopback on ephemeral ports: our CEM (``cem.server.Cem``) with the fleet
controller in this process, the simulator as a process (``python -m simulator.cli run``) or, where a
test needs to stop one meter, in this process (``simulator.start_fleet``).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import sys
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import strategies as st
from s2python.common import (
    ControlType,
    EnergyManagementRole,
    Handshake,
    PowerMeasurement,
    PowerValue,
    RoleType,
)
from s2python.version import S2_VERSION
from websockets.asyncio.client import connect

from cariflex.s2.credentials import write_tokens
from cariflex.s2.devices import POWER
from cariflex.s2.meters import MEASURED_MAX_AGE_S, s2_resources, site_meters
from cem import fleet_control
from cem.fleet_control import SITE_DEADBAND_KW, SITE_STEP_KW, FleetController
from cem.pairing import PairingStore
from cem.schedule_follower import ScheduleFollower, period_start
from cem.server import Cem
from simulator import build_meters, start_fleet
from simulator.site import SiteClock
from tests.helpers.fuzzing import campaign, tally
from tests.helpers.s2 import FLEET, METERED, details, follower_answering, site_schedule
from ven_bridge.outbox import Outbox

ROOT = Path(__file__).resolve().parent.parent.parent
METERS = site_meters(FLEET)
NOON = "2030-03-01T12:00:00-04:00"  # a Friday, site time
NIGHT = "2030-03-01T02:00:00-04:00"
CAP_LEVEL = 0.3  # x 600 kW = 180 kW on the net import


def run(coro, timeout: float = 120):
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def wait_for(predicate, timeout: float = 60, what: str = "a condition"):
    async with asyncio.timeout(timeout):
        while not (result := predicate()):
            await asyncio.sleep(0.1)
    return result


def lc_event(level: float) -> dict:
    start = datetime.now(UTC) - timedelta(hours=1)
    return {"status": "far", "intervals": [{"start": start.isoformat(), "duration": "PT4H", "value": level}]}


async def paired_cem(folder: Path) -> tuple[Cem, dict[str, str]]:
    """Our CEM on an ephemeral port, every S2 resource of the fleet paired, as the VEN runs it."""
    store = PairingStore(folder)
    tokens = {name: store.pair(name) for name in s2_resources(FLEET)}
    cem = Cem(port=0, pairings=store, fleet=set(s2_resources(FLEET)), meters=METERS)
    await cem.start()
    return cem, tokens


def net_import(status: dict) -> float | None:
    return status.get("net_import_kw")


# --- the cap on the measured net import, with the simulator as a process ------------------------------


@pytest.mark.parametrize(
    ("site_time", "level", "case"),
    [
        (NOON, CAP_LEVEL, "noon: PV covers part of the fleet, which imports more than the cap"),
        (NIGHT, CAP_LEVEL, "night: the base load takes its share, the fleet imports less"),
        (NIGHT, 0.05, "night, base load over the cap: the batteries discharge"),
    ],
)
def test_the_cap_holds_on_the_measured_net_import(tmp_path, site_time, level, case):
    """The ten batteries are asked for 50 kW each (500 kW); a load-control event caps the net
    import. The simulator process runs the 20 devices and the 11 meters at the given site time;
    the fleet controller gives the fleet cap − (base load − PV) as the meters read it, and no meter
    ever gets an instruction."""
    cap = level * FLEET.site.capacity_kw
    log_file = tmp_path / "sim.log"

    async def scenario():
        cem, tokens = await paired_cem(tmp_path / "ven")
        write_tokens(tmp_path / "tokens.json", tokens)
        box = Outbox(tmp_path / "ven")
        box.set_state("setpoints", {b.name: 50.0 for b in FLEET.batteries})
        box.set_state("load_control_events", {"lc": lc_event(level)})
        controller = FleetController(FLEET, cem, box, period_s=0.2)  # no schedule: nothing planned
        stopping = asyncio.Event()
        control = asyncio.create_task(controller.run(stopping))
        with log_file.open("w") as log:
            process = await asyncio.create_subprocess_exec(
                *(sys.executable, "-m", "simulator.cli", "run", "--s2-url", cem.url),
                *("--token-file", str(tmp_path / "tokens.json"), "--site-time", site_time),
                *("--measure-seconds", "0.5"),
                cwd=ROOT,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
                stderr=log,
            )
        try:

            def settled():
                status = controller.status()
                net = net_import(status)
                ok = (
                    status["under_frbc"] == 20
                    and status.get("site_source") == "measured"
                    and net is not None
                    and cap - SITE_DEADBAND_KW - SITE_STEP_KW - 1.0 <= net <= cap + 0.5
                )
                return status if ok else None

            status = await wait_for(settled, 90, f"the net import at {cap} kW ({case})")
        finally:
            process.send_signal(signal.SIGTERM)
            await asyncio.wait_for(process.wait(), 30)
            stopping.set()
            await control
            await cem.stop()
            box.close()
        return status, cem

    status, cem = run(scenario(), 180)
    assert status["cap_kw"] == pytest.approx(cap) and status["shortfall_kw"] == 0
    assert status["site_kw"] == pytest.approx(status["base_load_kw"] - status["pv_kw"], abs=0.01)
    assert set(status["meters"]) == METERED and all(m["connected"] for m in status["meters"].values())
    assert len(status["devices"]) == 20 and not set(status["devices"]) & METERED
    if site_time == NOON:
        assert status["pv_kw"] > status["base_load_kw"] > 0  # PV exceeds the base load
        assert status["fleet_kw"] > cap  # the fleet may import more than the cap: PV covers it
    else:
        assert status["pv_kw"] == 0 and status["base_load_kw"] > 0
        assert status["fleet_kw"] < cap  # the base load takes its share
        if status["base_load_kw"] > cap:
            assert status["fleet_kw"] < 0  # the batteries discharge
    # No meter ever got an instruction, and none was refused by the simulator.
    assert all(
        not cem.devices[name].instructions and cem.devices[name].setpoint_kw is None for name in METERED
    )
    lines = [json.loads(line) for line in log_file.read_text().splitlines() if line.startswith("{")]
    assert not [line for line in lines if line["msg"] == "instruction to a metered resource refused"]
    assert sum(line["msg"] == "metered (NOT_CONTROLABLE)" for line in lines) == len(METERED)


# --- stale or missing meters fall back to the plan; meters take no setpoint ----------------------------


def _planned_follower(outbox: Outbox, site_kw: float) -> ScheduleFollower:
    """A follower holding a served schedule whose base load − PV is ``site_kw`` all along."""
    follower = follower_answering(outbox, [site_schedule(period_start(datetime.now(UTC)), [site_kw] * 16)])
    assert follower.fetch()
    return follower


def test_stale_or_missing_meters_fall_back_to_the_planned_figure(tmp_path, monkeypatch):
    """All 11 meters fresh: measured. One stopped (its last reading ages past the limit) or one that
    never connected: the plan's figure. No plan either: the cap on the fleet alone."""
    monkeypatch.setattr(fleet_control, "MEASURED_MAX_AGE_S", 2.5)  # (60 s in production)
    assert MEASURED_MAX_AGE_S == 60.0

    async def scenario():
        cem, tokens = await paired_cem(tmp_path / "ven")
        box = Outbox(tmp_path / "ven")
        controller = FleetController(FLEET, cem, box, follower=_planned_follower(box, 100.0))
        now = datetime.now(UTC)
        meters = build_meters(FLEET, clock=SiteClock(datetime.fromisoformat(NIGHT)))
        fleet = await start_fleet(cem.url, meters, tokens=tokens, measure_seconds=0.2)
        try:
            await wait_for(lambda: controller.site(now)[1] == "measured", 30, "all meters measured")
            site_kw, _ = controller.site(now)
            base_load = controller.measured()[1]
            assert controller.measured()[0] == 0  # no PV at night
            assert base_load - 0.01 <= site_kw < base_load + SITE_DEADBAND_KW + SITE_STEP_KW
            await controller.step()
            assert controller.status()["site_source"] == "measured"

            await fleet["pv_03"].stop()  # a PV meter goes silent
            assert await wait_for(lambda: controller.site(now) == (100.0, "planned"), 10, "the plan")

            async def planned_status():
                while True:
                    await controller.step()
                    status = controller.status()
                    if status.get("base_load_kw") is not None:  # (a loaded machine may delay a reading)
                        return status
                    await asyncio.sleep(0.1)

            status = await asyncio.wait_for(planned_status(), 10)
            assert status["site_source"] == "planned" and status["site_kw"] == 100.0
            assert "pv_kw" not in status and status["base_load_kw"] > 0  # the PV total is not known
            assert not status["meters"]["pv_03"]["connected"] and status["meters"]["pv_03"]["age_s"] > 2.5
            controller.follower = None  # and without a plan: the cap holds on the fleet alone
            assert controller.site(now) == (None, None)
            assert controller.allowance(180.0, controller.site(now)[0]) == 180.0
        finally:
            await fleet.stop()
            await cem.stop()

        # A fleet whose base-load meter never connected: the PV alone is not the site's figure.
        cem, tokens = await paired_cem(tmp_path / "ven2")
        controller = FleetController(FLEET, cem, box, follower=_planned_follower(box, -50.0))
        pv_only = [m for m in meters if m.kind == "pv"]
        fleet = await start_fleet(cem.url, pv_only, tokens=tokens, measure_seconds=0.2)
        try:
            await wait_for(lambda: controller.measured()[0] is not None, 30, "the PV meters")
            assert controller.site(now) == (-50.0, "planned")
        finally:
            await fleet.stop()
            await cem.stop()
            box.close()

    run(scenario())


def test_meters_never_get_a_setpoint_or_an_instruction(tmp_path):
    """Setpoints naming meters (outbox state written by hand) and a cap: the meters take no part;
    ``apply_setpoint`` to a meter sends nothing; the simulated meter received no instruction."""

    async def scenario():
        cem, tokens = await paired_cem(tmp_path / "ven")
        box = Outbox(tmp_path / "ven")
        box.set_state("setpoints", {"pv_01": 10.0, "site_load": -5.0})
        box.set_state("load_control_events", {"lc": lc_event(CAP_LEVEL)})
        controller = FleetController(FLEET, cem, box)
        meters = build_meters(FLEET, ["pv_01", "site_load"], clock=SiteClock(datetime.fromisoformat(NOON)))
        fleet = await start_fleet(cem.url, meters, tokens=tokens, measure_seconds=0.2)
        try:
            await fleet.wait_until(lambda rm: rm.metering, 30)
            await wait_for(lambda: all(cem.devices[n].power_w is not None for n in ("pv_01", "site_load")))
            targets, _, cap = controller.targets(datetime.now(UTC))
            assert targets == {} and cap == pytest.approx(180)
            for _ in range(3):
                await controller.step()
            assert await cem.apply_setpoint("pv_01", 10.0) is None
            await asyncio.sleep(0.5)
            for name in ("pv_01", "site_load"):
                state = cem.devices[name]
                assert state.metered and not state.controllable and not state.frbc
                assert not state.instructions and state.setpoint_kw is None
                assert fleet[name].instructions_refused == 0
                assert [m.message_type for m in fleet[name].sent] == ["PowerMeasurement"] * len(
                    fleet[name].sent
                )
            status = controller.status()
            assert status["under_frbc"] == 0 and status["connected"] == 0 and status["devices"] == {}
            assert set(status["meters"]) == {"pv_01", "site_load"}
            assert status["meters"]["pv_01"]["power_kw"] < 0 < status["meters"]["site_load"]["power_kw"]
        finally:
            await fleet.stop()
            await cem.stop()
            box.close()

    run(scenario())


def test_meter_averages_go_to_their_sensors_in_the_sensors_sign(tmp_path):
    """PV: S2's consumption-positive −40 kW becomes +40 kW on pv_01_power (production positive);
    the base load's +90 kW stays +90 kW on site_load (consumption positive)."""
    cem, box = Cem(meters=METERS), Outbox(tmp_path)
    clock = time.monotonic()
    for name, watts in (("pv_01", [-30_000.0, -50_000.0]), ("site_load", [80_000.0, 100_000.0])):
        state = cem.device(name)
        state.metered, state.power_samples = True, [(clock - 40, watts[0]), (clock - 10, watts[1])]
    controller = FleetController(FLEET, cem, box)
    minute = datetime(2030, 3, 1, 16, 0, tzinfo=UTC)
    controller._measurements(minute + timedelta(seconds=30))
    controller._measurements(minute + timedelta(minutes=1))
    sent = {}
    while (entry := box.head()[0]) is not None:
        sent[entry.payload["sensor"]] = entry.payload["values"]
        box.mark_done(entry)
    assert sent == {"pv_01_power": [40.0], "site_load": [90.0]}
    box.close()


# --- the deadband on the measured figure ---------------------------------------------------------------


@given(readings=st.lists(st.floats(-600, 300, allow_nan=False), min_size=1, max_size=40))
@campaign(1.0)
def test_the_held_figure_is_never_below_the_meters_and_lags_them_by_less_than_the_deadband(readings):
    """Whatever the meters read in a row, the figure the cap holds on is never below the measured
    base load − PV (the net import never above the cap) and above it by less than one deadband
    and one step (the fleet loses at most that much of its allowance)."""
    controller = FleetController(FLEET, Cem(meters=METERS), SimpleNamespace(get_state=lambda *a: {}))
    controller.meters = {"site_load": METERS["site_load"]}  # one meter: its reading is the site
    state = controller.cem.device("site_load")
    state.metered = True
    for reading in readings:
        state.power_w, state.power_at = reading * 1000, time.monotonic()
        held, source = controller.site(datetime.now(UTC))
        assert source == "measured"
        assert reading - 1e-6 <= held < reading + SITE_DEADBAND_KW + SITE_STEP_KW


# --- a hostile or foreign metered RM --------------------------------------------------------------------


class MeterLink:
    """Our CEM and one raw, paired connection speaking for pv_02 (NOT_CONTROLABLE), on an asyncio
    loop in a background thread, kept open across every case."""

    DEVICE = "pv_02"

    def __init__(self, folder: Path):
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        self.folder = folder
        self.run(self._open())

    def run(self, coro, timeout: float = 30):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _open(self) -> None:
        self.cem, tokens = await paired_cem(self.folder)
        self.ws = await self.hello(tokens[self.DEVICE])
        named = details(self.DEVICE, (ControlType.NOT_CONTROLABLE,), RoleType.ENERGY_PRODUCER)
        await self.ws.send(named.to_json())
        assert (await self.status_for(str(named.message_id)))["status"] == "OK"
        selected = await self.next_of("SelectControlType")
        assert selected["control_type"] == "NOT_CONTROLABLE"

    async def hello(self, token: str):
        ws = await connect(self.cem.url, additional_headers={"Authorization": f"Bearer {token}"})
        hello = Handshake(
            message_id=uuid.uuid4(), role=EnergyManagementRole.RM, supported_protocol_versions=[S2_VERSION]
        )
        await ws.send(hello.to_json())
        return ws

    async def next_of(self, kind: str, ws=None, timeout: float = 10) -> dict:
        async with asyncio.timeout(timeout):
            while True:
                message = json.loads(await (ws or self.ws).recv())
                if message.get("message_type") == kind:
                    return message

    async def status_for(self, subject: str, ws=None) -> dict:
        while True:
            status = await self.next_of("ReceptionStatus", ws)
            if status.get("subject_message_id") == subject:
                return status

    async def measure(self, raw_value: str) -> dict:
        """Send a PowerMeasurement whose value is the JSON text ``raw_value``; its status."""
        message_id = str(uuid.uuid4())
        frame = (
            f'{{"message_type": "PowerMeasurement", "message_id": "{message_id}", '
            f'"measurement_timestamp": "{datetime.now(UTC).isoformat()}", '
            f'"values": [{{"commodity_quantity": "{POWER.value}", "value": {raw_value}}}]}}'
        )
        await self.ws.send(frame)
        return await self.status_for(message_id)

    def close(self) -> None:
        async def close() -> None:
            await self.ws.close()
            await self.cem.stop()

        self.run(close())
        self.loop.call_soon_threadsafe(self.loop.stop)


@pytest.fixture(scope="module")
def meter_link(tmp_path_factory):
    link = MeterLink(tmp_path_factory.mktemp("s2-meter"))
    yield link
    link.close()


VALUES = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(10**45), max_value=10**45),
    st.floats(-120_000, 10_000),  # around PV-02's range (−108 kW … +5 kW)
    st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999", "12", "", None, True, False, [1.0], {"W": 1}]),
)


@pytest.mark.fuzz("s2_meter")
@campaign(1.0)
@given(value=VALUES)
def test_a_hostile_meter_reading_is_refused_and_changes_nothing(meter_link, value):
    """Every reading gets one ReceptionStatus and the connection stays open; only a finite JSON
    number of watts within the PV site's plausible range is taken (never clipped), the rest is
    refused with a reason (INVALID_DATA: not JSON we accept, or not a number; INVALID_CONTENT:
    implausible) and leaves the CEM's figure alone."""
    raw = json.dumps(value) if not isinstance(value, float) or math.isfinite(value) else repr(value)
    meter = METERS[MeterLink.DEVICE]
    before = meter_link.cem.devices[MeterLink.DEVICE].power_w
    status = meter_link.run(meter_link.measure(raw))
    after = meter_link.cem.devices[MeterLink.DEVICE].power_w
    number = isinstance(value, int | float) and not isinstance(value, bool)
    usable = number and math.isfinite(float(value)) and meter.low_w <= float(value) <= meter.high_w
    digits = len(str(abs(int(value)))) if isinstance(value, int) and not isinstance(value, bool) else 0
    usable = usable and digits <= 40  # (longer integers are refused as JSON we do not accept)
    tally("s2_meter", not usable)
    if usable:
        assert status["status"] == "OK", (raw, status)
        assert after == float(value)
    else:
        assert status["status"] in ("INVALID_DATA", "INVALID_CONTENT") and status.get("diagnostic_label"), (
            raw,
            status,
        )
        assert after == before
    assert meter_link.run(meter_link.measure("-1000.0"))["status"] == "OK"  # still open and working


def test_foreign_and_mistaken_metered_rms_are_refused(meter_link):
    """A meter's token naming a battery is refused (4403); a PV meter offering only FRBC gets no
    control type; an FRBC message from a metered resource is refused; the CEM keeps serving."""

    async def scenario():
        store = PairingStore(meter_link.folder)
        token = store.pair("pv_05")
        ws = await meter_link.hello(token)
        impostor = details("bat_01", (ControlType.NOT_CONTROLABLE,), RoleType.ENERGY_PRODUCER)
        await ws.send(impostor.to_json())
        status = await meter_link.status_for(str(impostor.message_id), ws)
        assert status["status"] == "INVALID_CONTENT" and "wrong device" in status["diagnostic_label"]
        await ws.wait_closed()
        assert ws.protocol.close_code == 4403

        ws = await meter_link.hello(store.pair("pv_06"))
        frbc_only = details("pv_06")
        await ws.send(frbc_only.to_json())
        status = await meter_link.status_for(str(frbc_only.message_id), ws)
        assert status["status"] == "INVALID_CONTENT" and "NOT_CONTROLABLE" in status["diagnostic_label"]
        await ws.close()

        from s2python.frbc import FRBCStorageStatus

        storage = FRBCStorageStatus(message_id=uuid.uuid4(), present_fill_level=10.0)
        await meter_link.ws.send(storage.to_json())
        status = await meter_link.status_for(str(storage.message_id))
        assert status["status"] == "INVALID_CONTENT" and "metered resource" in status["diagnostic_label"]
        assert meter_link.cem.devices[MeterLink.DEVICE].fill_level is None
        good = PowerMeasurement(
            message_id=uuid.uuid4(),
            measurement_timestamp=datetime.now(UTC),
            values=[PowerValue(commodity_quantity=POWER, value=-2000.0)],
        )
        await meter_link.ws.send(good.to_json())
        assert (await meter_link.status_for(str(good.message_id)))["status"] == "OK"

    meter_link.run(scenario())
