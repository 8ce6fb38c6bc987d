"""The simulated resource managers over real WebSockets, against a tiny test-only CEM.

The devices present an access token as paired devices do (the test CEM records it; the real
CEM's checks are in test_s2_pairing.py)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from s2python.common import (
    ControlType,
    EnergyManagementRole,
    Handshake,
    HandshakeResponse,
    InstructionStatus,
    InstructionStatusUpdate,
    PowerMeasurement,
    PowerValue,
    ReceptionStatus,
    ReceptionStatusValues,
    ResourceManagerDetails,
    RevokableObjects,
    RevokeObject,
    SelectControlType,
)
from s2python.frbc import FRBCActuatorStatus, FRBCInstruction, FRBCStorageStatus, FRBCSystemDescription
from s2python.s2_parser import S2Parser
from s2python.version import S2_VERSION
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from cariflex import settings
from cariflex.fleet import load_fleet
from cariflex.s2.credentials import write_tokens
from cariflex.s2.devices import POWER
from cariflex.s2.validation import check_system_description
from simulator import build_devices
from simulator import start_fleet as _start_fleet

ROOT = Path(__file__).resolve().parent.parent.parent
WAIT = 10.0  # generous upper bound for conditions that normally hold within milliseconds


class Session:
    def __init__(self, ws: ServerConnection):
        self.ws = ws
        self.name: str | None = None
        self.received: list[tuple[object, str]] = []  # (message, raw json)
        self.sent: list[object] = []
        self.closed = False
        self.authorization = ws.request.headers.get("Authorization")


class MiniCem:
    """Handshake, SelectControlType(FRBC), one ReceptionStatus OK per message; tests send the rest."""

    def __init__(self):
        self.sessions: list[Session] = []
        self.statuses: dict[uuid.UUID, list[ReceptionStatus]] = {}
        self._change = asyncio.Event()
        self.server = None
        self.port = 0

    async def start(self, port: int = 0) -> MiniCem:
        self.server = await serve(self._accept, "127.0.0.1", port)
        self.port = next(iter(self.server.sockets)).getsockname()[1]
        return self

    async def stop(self) -> None:
        self.server.close()
        await self.server.wait_closed()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/s2"

    def _changed(self) -> None:
        event, self._change = self._change, asyncio.Event()
        event.set()

    async def wait(self, predicate: Callable[[], object], timeout: float = WAIT):
        async with asyncio.timeout(timeout):
            while not (result := predicate()):
                await self._change.wait()
        return result

    async def _send(self, session: Session, message) -> None:
        session.sent.append(message)
        await session.ws.send(message.to_json())

    async def _accept(self, ws: ServerConnection) -> None:
        session = Session(ws)
        self.sessions.append(session)
        try:
            async for raw in ws:
                message = S2Parser.parse_as_any_message(raw)
                session.received.append((message, raw))
                if isinstance(message, ReceptionStatus):
                    self.statuses.setdefault(message.subject_message_id, []).append(message)
                    self._changed()
                    continue
                ok = ReceptionStatus(subject_message_id=message.message_id, status=ReceptionStatusValues.OK)
                await ws.send(ok.to_json())
                if isinstance(message, Handshake):
                    await self._send(
                        session,
                        Handshake(
                            message_id=uuid.uuid4(),
                            role=EnergyManagementRole.CEM,
                            supported_protocol_versions=[S2_VERSION],
                        ),
                    )
                    await self._send(
                        session,
                        HandshakeResponse(message_id=uuid.uuid4(), selected_protocol_version=S2_VERSION),
                    )
                elif isinstance(message, ResourceManagerDetails):
                    session.name = message.name
                    await self._send(
                        session,
                        SelectControlType(
                            message_id=uuid.uuid4(), control_type=ControlType.FILL_RATE_BASED_CONTROL
                        ),
                    )
                self._changed()
        except ConnectionClosed:
            pass
        finally:
            session.closed = True
            self._changed()

    # --- helpers for tests ------------------------------------------------------------------

    def session(self, name: str) -> Session | None:
        live = [s for s in self.sessions if s.name == name and not s.closed]
        return live[-1] if live else None

    def of(self, name: str, kind: type, session: Session | None = None) -> list:
        sessions = [session] if session else [s for s in self.sessions if s.name == name]
        return [m for s in sessions for m, _ in s.received if isinstance(m, kind)]

    async def send(self, name: str, message) -> None:
        await self._send(self.session(name), message)

    async def send_raw(self, name: str, raw: str) -> None:
        await self.session(name).ws.send(raw)

    def status_of(self, message_id: uuid.UUID) -> ReceptionStatus | None:
        found = self.statuses.get(message_id)
        return found[0] if found else None

    def updates(self, name: str, instruction_id: uuid.UUID) -> list[InstructionStatus]:
        return [
            u.status_type
            for u in self.of(name, InstructionStatusUpdate)
            if u.instruction_id == instruction_id
        ]

    async def frbc_ready(self, name: str) -> Session:
        def ready():
            session = self.session(name)
            return session if session and self.of(name, PowerMeasurement, session) else None

        return await self.wait(ready)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


class AnyToken:
    """Each simulated device's access token (the test CEM records it, it does not check it)."""

    def get(self, name: str) -> str:
        return f"token-of-{name}"


async def start_fleet(url, devices, **options):
    return await _start_fleet(url, devices, **{"tokens": AnyToken(), **options})


def devices(*names: str, **kwargs):
    return build_devices(load_fleet(), list(names), **kwargs)


def frbc_instruction(description: FRBCSystemDescription, mode: str | uuid.UUID, factor: float, **extra):
    actuator = description.actuators[0]
    if isinstance(mode, str):
        mode = next(m.id for m in actuator.operation_modes if m.diagnostic_label == mode)
    return FRBCInstruction(
        message_id=uuid.uuid4(),
        id=uuid.uuid4(),
        actuator_id=actuator.id,
        operation_mode=mode,
        operation_mode_factor=factor,
        execution_time=extra.pop("execution_time", datetime.now(UTC)),
        abnormal_condition=False,
    )


def measured(message: PowerMeasurement) -> float:
    return next(v.value for v in message.values if v.commodity_quantity == POWER)


def test_handshake_details_and_system_description():
    async def scenario():
        cem = await MiniCem().start()
        async with await start_fleet(cem.url, devices("bat_01", "ev_03"), measure_seconds=0.1) as fleet:
            for name in ("bat_01", "ev_03"):
                session = await cem.frbc_ready(name)
                await cem.wait(lambda s=session: len(cem.of(None, FRBCStorageStatus, s)) >= 2)
            await fleet.wait_until(lambda rm: rm.frbc_active, WAIT)
            result = {n: cem.session(n) for n in ("bat_01", "ev_03")}
        await cem.stop()
        return cem, result

    cem, sessions = run(scenario())
    for name, session in sessions.items():
        kinds = [m.message_type for m, _ in session.received if not isinstance(m, ReceptionStatus)]
        assert kinds[:6] == [
            "Handshake",
            "ResourceManagerDetails",
            "FRBC.SystemDescription",
            "FRBC.StorageStatus",
            "FRBC.ActuatorStatus",
            "PowerMeasurement",
        ]
        assert set(kinds[6:]) == {"PowerMeasurement", "FRBC.StorageStatus"}
        handshake = cem.of(name, Handshake, session)[0]
        assert handshake.role == EnergyManagementRole.RM and handshake.supported_protocol_versions == [
            S2_VERSION
        ]
        details = cem.of(name, ResourceManagerDetails, session)[0]
        assert details.name == name
        assert session.authorization == f"Bearer token-of-{name}"
        assert details.resource_id == uuid.uuid5(uuid.NAMESPACE_URL, "cariflex:" + name)
        assert details.available_control_types == [
            ControlType.FILL_RATE_BASED_CONTROL,
            ControlType.NO_SELECTION,
        ]
        assert [(r.role.value, r.commodity.value) for r in details.roles] == [
            ("ENERGY_STORAGE", "ELECTRICITY")
        ]
        assert details.instruction_processing_delay.root == 100
        assert details.provides_forecast is False and details.provides_power_measurement_types == [POWER]
        raw = next(r for m, r in session.received if isinstance(m, FRBCSystemDescription))
        description = S2Parser.parse_as_message(raw, FRBCSystemDescription)
        assert check_system_description(description) is None
        assert json.loads(raw)["message_type"] == "FRBC.SystemDescription" and "null" not in raw
        labels = [m.diagnostic_label for m in description.actuators[0].operation_modes]
        storage = cem.of(name, FRBCStorageStatus, session)[0]
        status = cem.of(name, FRBCActuatorStatus, session)[0]
        idle = next(m.id for m in description.actuators[0].operation_modes if m.diagnostic_label == labels[0])
        assert status.active_operation_mode_id == idle and status.operation_mode_factor == 0.0
        assert measured(cem.of(name, PowerMeasurement, session)[0]) == 0.0
        if name == "bat_01":
            assert labels == ["idle", "charge", "discharge"]
            assert storage.present_fill_level == pytest.approx(50.0, abs=0.01)
        else:
            assert labels == ["off", "charge", "discharge"]
            assert storage.present_fill_level == pytest.approx(0.4 * 75, abs=0.01)
        # every message the CEM sent got exactly one ReceptionStatus, OK
        for message in session.sent:
            assert [s.status for s in cem.statuses[message.message_id]] == [ReceptionStatusValues.OK]


def test_instruction_changes_reported_power():
    async def scenario():
        cem = await MiniCem().start()
        async with await start_fleet(cem.url, devices("bat_01", "ev_03"), measure_seconds=30) as fleet:
            results = {}
            for name, mode, factor, expected in (
                ("bat_01", "charge", 0.6, 30_000),
                ("ev_03", "charge", 0.0, 4_140),
            ):
                session = await cem.frbc_ready(name)
                description = cem.of(name, FRBCSystemDescription, session)[0]
                instruction = frbc_instruction(description, mode, factor)
                await cem.send(name, instruction)
                done = await cem.wait(
                    lambda n=name, i=instruction: (
                        InstructionStatus.SUCCEEDED in cem.updates(n, i.id)
                        and len(cem.of(n, PowerMeasurement)) >= 2
                    )
                )
                assert done
                results[name] = (
                    cem.status_of(instruction.message_id).status,
                    cem.updates(name, instruction.id),
                    measured(cem.of(name, PowerMeasurement)[-1]),
                    cem.of(name, FRBCActuatorStatus)[-1],
                    fleet[name].power_w,
                    expected,
                    instruction,
                )
        await cem.stop()
        return results

    for status, updates, power, actuator, rm_power, expected, instruction in run(scenario()).values():
        assert status == ReceptionStatusValues.OK
        assert updates == [InstructionStatus.ACCEPTED, InstructionStatus.STARTED, InstructionStatus.SUCCEEDED]
        assert power == pytest.approx(expected, rel=0.01)
        assert rm_power == pytest.approx(expected, rel=0.01)
        assert actuator.active_operation_mode_id == instruction.operation_mode
        assert actuator.operation_mode_factor == pytest.approx(instruction.operation_mode_factor)


@pytest.mark.parametrize(
    ("factor", "unknown_mode", "reason"), [(1.5, False, "outside [0, 1]"), (0.5, True, "unknown")]
)
def test_invalid_instruction_is_rejected_over_the_wire(factor, unknown_mode, reason):
    async def scenario():
        cem = await MiniCem().start()
        async with await start_fleet(cem.url, devices("bat_02"), measure_seconds=30) as fleet:
            session = await cem.frbc_ready("bat_02")
            description = cem.of("bat_02", FRBCSystemDescription, session)[0]
            bad = frbc_instruction(description, uuid.uuid4() if unknown_mode else "charge", factor)
            await cem.send("bat_02", bad)
            await cem.wait(lambda: cem.updates("bat_02", bad.id))
            state = (fleet["bat_02"].mode_label, fleet["bat_02"].factor, fleet["bat_02"].power_w)
            # the session survives: a valid instruction afterwards still runs
            good = frbc_instruction(description, "discharge", 0.5)
            await cem.send("bat_02", good)
            await cem.wait(lambda: InstructionStatus.SUCCEEDED in cem.updates("bat_02", good.id))
            after = fleet["bat_02"].power_w
        await cem.stop()
        return cem, bad, state, after

    cem, bad, state, after = run(scenario())
    status = cem.statuses[bad.message_id]
    assert len(status) == 1 and status[0].status == ReceptionStatusValues.INVALID_CONTENT
    assert reason in status[0].diagnostic_label
    assert cem.updates("bat_02", bad.id) == [InstructionStatus.REJECTED]
    assert state == ("idle", 0.0, 0.0)
    assert after == pytest.approx(-25_000)


def test_pending_instruction_can_be_revoked():
    async def scenario():
        cem = await MiniCem().start()
        async with await start_fleet(cem.url, devices("bat_03"), measure_seconds=30) as fleet:
            session = await cem.frbc_ready("bat_03")
            description = cem.of("bat_03", FRBCSystemDescription, session)[0]
            later = frbc_instruction(
                description, "charge", 1.0, execution_time=datetime.now(UTC) + timedelta(minutes=5)
            )
            await cem.send("bat_03", later)
            await cem.wait(lambda: cem.updates("bat_03", later.id))
            revoke = RevokeObject(
                message_id=uuid.uuid4(), object_type=RevokableObjects.FRBC_Instruction, object_id=later.id
            )
            await cem.send("bat_03", revoke)
            await cem.wait(lambda: InstructionStatus.REVOKED in cem.updates("bat_03", later.id))
            again = RevokeObject(
                message_id=uuid.uuid4(), object_type=RevokableObjects.FRBC_Instruction, object_id=later.id
            )
            await cem.send("bat_03", again)
            await cem.wait(lambda: cem.status_of(again.message_id))
            mode = fleet["bat_03"].mode_label
        await cem.stop()
        return cem, later, revoke, again, mode

    cem, later, revoke, again, mode = run(scenario())
    assert cem.updates("bat_03", later.id) == [InstructionStatus.ACCEPTED, InstructionStatus.REVOKED]
    assert cem.status_of(revoke.message_id).status == ReceptionStatusValues.OK
    assert cem.status_of(again.message_id).status == ReceptionStatusValues.INVALID_CONTENT
    assert "REVOKED" in cem.status_of(again.message_id).diagnostic_label
    assert mode == "idle"


def test_unexpected_and_malformed_messages_get_exactly_one_status():
    async def scenario():
        cem = await MiniCem().start()
        async with await start_fleet(cem.url, devices("bat_04"), measure_seconds=30) as fleet:
            session = await cem.frbc_ready("bat_04")
            description = cem.of("bat_04", FRBCSystemDescription, session)[0]
            stray = PowerMeasurement(
                message_id=uuid.uuid4(),
                measurement_timestamp=datetime.now(UTC),
                values=[PowerValue(commodity_quantity=POWER, value=1.0)],
            )
            await cem.send("bat_04", stray)
            bad_id = uuid.uuid4()
            broken = json.loads(frbc_instruction(description, "charge", 0.5).to_json())
            broken.update(message_id=str(bad_id), actuator_id="actuator1")  # not a UUID: s2-python refuses
            await cem.send_raw("bat_04", json.dumps(broken))
            await cem.wait(lambda: cem.status_of(stray.message_id) and cem.status_of(bad_id))
            good = frbc_instruction(description, "charge", 0.2)
            await cem.send("bat_04", good)
            await cem.wait(lambda: InstructionStatus.SUCCEEDED in cem.updates("bat_04", good.id))
            alive = fleet["bat_04"].connected and fleet["bat_04"].sessions == 1
        await cem.stop()
        return cem, stray, bad_id, alive

    cem, stray, bad_id, alive = run(scenario())
    assert [s.status for s in cem.statuses[stray.message_id]] == [ReceptionStatusValues.INVALID_CONTENT]
    assert [s.status for s in cem.statuses[bad_id]] == [ReceptionStatusValues.INVALID_MESSAGE]
    assert alive


def test_cem_gone_goes_idle_then_reconnects_with_a_new_handshake():
    async def scenario():
        cem = await MiniCem().start()
        options = dict(measure_seconds=30, cem_timeout_seconds=0.3, backoff_min_seconds=0.05)
        async with await start_fleet(cem.url, devices("bat_05"), **options) as fleet:
            rm = fleet["bat_05"]
            session = await cem.frbc_ready("bat_05")
            description = cem.of("bat_05", FRBCSystemDescription, session)[0]
            instruction = frbc_instruction(description, "charge", 1.0)
            await cem.send("bat_05", instruction)
            await rm.wait_until(lambda: rm.mode_label == "charge", WAIT)
            port = cem.port
            await cem.stop()
            gone = asyncio.get_running_loop().time()
            await rm.wait_until(lambda: not rm.connected, WAIT)
            still_charging = rm.mode_label == "charge"  # the timeout has not run out yet
            await rm.wait_until(lambda: rm.mode_label == "idle", WAIT)
            idle_after = asyncio.get_running_loop().time() - gone
            second = await MiniCem().start(port)
            await second.frbc_ready("bat_05")
            await rm.wait_until(lambda: rm.frbc_active, WAIT)
            sessions = rm.sessions
        await second.stop()
        return still_charging, idle_after, second, sessions

    still_charging, idle_after, second, sessions = run(scenario())
    assert still_charging and idle_after >= 0.25
    assert sessions >= 2
    kinds = [m.message_type for m, _ in second.sessions[0].received if not isinstance(m, ReceptionStatus)]
    assert kinds[:3] == ["Handshake", "ResourceManagerDetails", "FRBC.SystemDescription"]
    status = second.of("bat_05", FRBCActuatorStatus)[0]
    assert status.operation_mode_factor == 0.0


def test_cli_help():
    import subprocess

    done = subprocess.run(
        [sys.executable, "-m", "simulator.cli", "run", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0
    for flag in ("--s2-url", "--fleet", "--devices", "--measure-seconds", "--cem-timeout-seconds"):
        assert flag in done.stdout


def test_cli_unknown_device_exits_2():
    import subprocess

    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "simulator.cli",
            "run",
            "--devices",
            "bat_99",
            "--s2-url",
            "ws://127.0.0.1:9/s2",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "bat_99" in done.stderr


def test_cli_runs_until_sigterm_and_closes_connections(tmp_path):
    token_file = tmp_path / "s2_tokens.json"
    write_tokens(token_file, {"bat_01": "secret-1", "ev_03": "secret-3"})

    async def scenario():
        cem = await MiniCem().start()
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "simulator.cli",
            "run",
            "--s2-url",
            cem.url,
            "--devices",
            "bat_01,ev_03",
            "--measure-seconds",
            "0.2",
            "--token-file",
            str(token_file),
            cwd=ROOT,
            env=env,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            for name in ("bat_01", "ev_03"):
                session = await cem.frbc_ready(name)
                await cem.wait(lambda s=session: len(cem.of(None, PowerMeasurement, s)) >= 2, 30)
            process.send_signal(signal.SIGTERM)
            _, stderr = await asyncio.wait_for(process.communicate(), 20)
            await cem.wait(lambda: all(s.closed for s in cem.sessions))
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
        await cem.stop()
        return process.returncode, stderr.decode(), cem

    code, stderr, cem = run(scenario())
    assert code == 0, stderr
    lines = [json.loads(line) for line in stderr.splitlines() if line.strip()]
    assert any(line["msg"] == "simulator stopped" for line in lines)
    assert {s.name for s in cem.sessions} == {"bat_01", "ev_03"}
    assert {s.authorization for s in cem.sessions} == {"Bearer secret-1", "Bearer secret-3"}
    assert all(s.ws.protocol.close_rcvd.code == 1000 for s in cem.sessions)  # clean close by the RM


def test_default_url_follows_the_s2_port(monkeypatch):
    from simulator.cli import default_url

    monkeypatch.setenv("CARIFLEX_S2_PORT", "9911")
    assert default_url() == "ws://127.0.0.1:9911/s2"
    monkeypatch.delenv("CARIFLEX_S2_PORT")
    monkeypatch.setenv("CARIFLEX_ENV_FILE", "/nonexistent/.env")
    default_port = next(v.default for v in settings.VARIABLES if v.name == "CARIFLEX_S2_PORT")
    assert default_url() == f"ws://127.0.0.1:{default_port}/s2"


def test_session_request_reconnect_starts_a_new_session():
    from s2python.common import SessionRequest, SessionRequestType

    async def scenario():
        cem = await MiniCem().start()
        async with await start_fleet(cem.url, devices("ev_05"), measure_seconds=30) as fleet:
            rm = fleet["ev_05"]
            await cem.frbc_ready("ev_05")
            request = SessionRequest(message_id=uuid.uuid4(), request=SessionRequestType.RECONNECT)
            await cem.send("ev_05", request)
            await rm.wait_until(lambda: rm.sessions == 2 and rm.frbc_active, WAIT)
            await cem.wait(lambda: len([s for s in cem.sessions if s.name == "ev_05"]) == 2)
        await cem.stop()
        return cem, request

    cem, request = run(scenario())
    assert [s.status for s in cem.statuses[request.message_id]] == [ReceptionStatusValues.OK]
    assert len(cem.of("ev_05", FRBCSystemDescription)) == 2


def test_full_battery_reports_that_it_stopped_charging():
    async def scenario():
        cem = await MiniCem().start()
        (device,) = devices("bat_06")
        device.fill_level = device.capacity - 1e-4  # a few milliseconds of charging left
        async with await start_fleet(cem.url, [device], measure_seconds=0.1) as fleet:
            rm = fleet["bat_06"]
            session = await cem.frbc_ready("bat_06")
            description = cem.of("bat_06", FRBCSystemDescription, session)[0]
            charge = frbc_instruction(description, "charge", 1.0)
            await cem.send("bat_06", charge)
            idle = device.idle_mode_id
            await cem.wait(
                lambda: (
                    [a.active_operation_mode_id for a in cem.of("bat_06", FRBCActuatorStatus)][-2:]
                    == [charge.operation_mode, idle]
                )
            )
            await cem.wait(lambda: measured(cem.of("bat_06", PowerMeasurement)[-1]) == 0.0)
            state = rm.mode_label, rm.power_w, rm.fill_level
        await cem.stop()
        return state

    mode, power, level = run(scenario())
    assert (mode, power) == ("idle", 0.0) and level <= 100.0


def test_a_device_without_a_token_does_not_connect(caplog):
    caplog.set_level(logging.INFO, logger="cariflex.sim")

    async def scenario():
        cem = await MiniCem().start()
        async with await start_fleet(cem.url, devices("bat_07"), tokens={}, measure_seconds=30) as fleet:
            async with asyncio.timeout(WAIT):
                while not [r for r in caplog.records if r.getMessage().startswith("not paired")]:
                    await asyncio.sleep(0.01)
            state = fleet["bat_07"].connected, fleet["bat_07"].sessions
        await cem.stop()
        return cem, state

    cem, state = run(scenario())
    assert cem.sessions == [] and state == (False, 0)
    (line,) = [r for r in caplog.records if r.getMessage().startswith("not paired")]
    assert "no S2 access token for bat_07" in line.fields["error"]


def test_a_meter_offers_only_not_controlable_reports_power_and_refuses_instructions():
    """A PV meter's ResourceManagerDetails: a producer, NOT_CONTROLABLE only. The test CEM first
    selects FRBC (refused: not offered), then NOT_CONTROLABLE: PowerMeasurements follow, production
    negative (S2: consumption positive). An instruction (a CEM that should not send one) is refused
    with INVALID_CONTENT and changes nothing; so is a revocation."""
    from s2python.common import RoleType

    from cariflex.fleet import load_fleet
    from simulator import build_meters
    from simulator.site import SiteClock

    meters = build_meters(
        load_fleet(), ["pv_02"], clock=SiteClock(datetime.fromisoformat("2030-03-01T12:00-04:00"))
    )

    async def scenario():
        cem = await MiniCem().start()
        async with await start_fleet(cem.url, meters, measure_seconds=0.2) as fleet:
            rm = fleet["pv_02"]
            session = await cem.wait(lambda: cem.session("pv_02"))
            details = (await cem.wait(lambda: cem.of("pv_02", ResourceManagerDetails)))[0]
            assert details.available_control_types == [ControlType.NOT_CONTROLABLE]
            assert [r.role for r in details.roles] == [RoleType.ENERGY_PRODUCER]
            frbc = next(m for m in session.sent if isinstance(m, SelectControlType))
            refused = await cem.wait(lambda: cem.status_of(frbc.message_id))
            assert refused.status == ReceptionStatusValues.INVALID_CONTENT and not rm.metering
            select = SelectControlType(message_id=uuid.uuid4(), control_type=ControlType.NOT_CONTROLABLE)
            await cem.send("pv_02", select)
            await cem.wait(lambda: len(cem.of("pv_02", PowerMeasurement)) >= 3)
            assert rm.metering and all(measured(m) < -10_000 for m in cem.of("pv_02", PowerMeasurement))
            instruction = FRBCInstruction(
                message_id=uuid.uuid4(),
                id=uuid.uuid4(),
                actuator_id=uuid.uuid4(),
                operation_mode=uuid.uuid4(),
                operation_mode_factor=0.5,
                execution_time=datetime.now(UTC),
                abnormal_condition=False,
            )
            await cem.send("pv_02", instruction)
            status = await cem.wait(lambda: cem.status_of(instruction.message_id))
            assert status.status == ReceptionStatusValues.INVALID_CONTENT
            assert "NOT_CONTROLABLE" in status.diagnostic_label and rm.instructions_refused == 1
            revoke = RevokeObject(
                message_id=uuid.uuid4(),
                object_type=RevokableObjects.FRBC_Instruction,
                object_id=instruction.id,
            )
            await cem.send("pv_02", revoke)
            status = await cem.wait(lambda: cem.status_of(revoke.message_id))
            assert status.status == ReceptionStatusValues.INVALID_CONTENT
            assert {type(m).__name__ for m in rm.sent} == {"PowerMeasurement"}
            assert not cem.of("pv_02", InstructionStatusUpdate)
        await cem.stop()

    run(scenario())
