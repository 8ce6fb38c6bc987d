"""The S2 CEM: a WebSocket server for the fleet's resource managers, FRBC control for each.

s2-python brings the message models and the RM side only (no CEM, no server: reference/s2.md
trap 9), so the CEM role is ours. One ``RmSession`` per connection:

- handshake (version "0.0.2-beta"), ResourceManagerDetails, then FILL_RATE_BASED_CONTROL;
- every received message gets exactly one ReceptionStatus: OK, INVALID_DATA when s2-python cannot
  parse it (malformed JSON, unknown type, non-UUID ids, naive timestamps), INVALID_CONTENT when it
  parses but makes no sense here (semantic checks in cariflex.s2.validation); a bad message changes
  nothing and the connection stays open;
- state per device: system description, fill level, actuator status, timers, last power, the
  instructions sent and their status updates — kept by device name across reconnections.

Setpoints in kW become FRBC instructions through cariflex.s2.translator; an instruction is checked
before it is sent, and a new one revokes the previous one if that has not finished.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from s2python.common import (
    ControlType,
    EnergyManagementRole,
    Handshake,
    HandshakeResponse,
    InstructionStatus,
    InstructionStatusUpdate,
    PowerMeasurement,
    ReceptionStatus,
    ReceptionStatusValues,
    ResourceManagerDetails,
    RevokableObjects,
    RevokeObject,
    SelectControlType,
)
from s2python.frbc import (
    FRBCActuatorStatus,
    FRBCInstruction,
    FRBCStorageStatus,
    FRBCSystemDescription,
    FRBCTimerStatus,
)
from s2python.s2_parser import S2Parser
from s2python.s2_validation_error import S2ValidationError
from s2python.version import S2_VERSION
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from cariflex.s2.devices import POWER
from cariflex.s2.translator import NoUsableMode, Translation, translate
from cariflex.s2.validation import check_instruction, check_system_description

log = logging.getLogger("cariflex.ven.s2")

S2_PATH = "/s2"
NIL = uuid.UUID(int=0)
SUPPORTED_VERSIONS = (S2_VERSION,)
# Messages an RM may send a CEM; anything else is answered INVALID_CONTENT.
RM_MESSAGES = {
    "Handshake",
    "ResourceManagerDetails",
    "PowerMeasurement",
    "PowerForecast",
    "InstructionStatusUpdate",
    "RevokeObject",
    "SessionRequest",
    "FRBC.SystemDescription",
    "FRBC.StorageStatus",
    "FRBC.ActuatorStatus",
    "FRBC.TimerStatus",
    "FRBC.LeakageBehaviour",
    "FRBC.UsageForecast",
    "FRBC.FillLevelTargetProfile",
}


@dataclass
class DeviceState:
    """What the CEM knows of one device; survives the RM reconnecting."""

    name: str
    resource_id: uuid.UUID | None = None
    connected: bool = False
    frbc: bool = False
    description: FRBCSystemDescription | None = None
    fill_level: float | None = None
    active_mode: uuid.UUID | None = None
    factor: float | None = None
    timers_finish: dict[uuid.UUID, datetime] = field(default_factory=dict)
    power_w: float | None = None
    power_at: float | None = None
    power_samples: list[tuple[float, float]] = field(default_factory=list)  # (monotonic, W)
    instructions: dict[uuid.UUID, dict[str, Any]] = field(default_factory=dict)
    last_instruction: uuid.UUID | None = None
    last_translation: Translation | None = None
    setpoint_kw: float | None = None

    @property
    def controllable(self) -> bool:
        return self.connected and self.frbc and self.description is not None and self.fill_level is not None


class Cem:
    """The server and every device's state; ``apply_setpoint`` is the control entry point."""

    def __init__(self, host: str = "127.0.0.1", port: int = 8765):
        self.host, self.port = host, port
        self.devices: dict[str, DeviceState] = {}
        self.sessions: dict[str, RmSession] = {}
        self._server = None
        self.on_change: asyncio.Event = asyncio.Event()  # wakes the fleet controller

    async def start(self) -> int:
        self._server = await serve(self._accept, self.host, self.port, max_size=2**20, ping_interval=20)
        self.port = next(iter(self._server.sockets)).getsockname()[1]
        log.info("s2 cem listening", extra={"fields": {"url": f"ws://{self.host}:{self.port}{S2_PATH}"}})
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _accept(self, connection: ServerConnection) -> None:
        if connection.request.path != S2_PATH:
            await connection.close(code=1008, reason=f"S2 lives at {S2_PATH}")
            return
        session = RmSession(self, connection)
        try:
            await session.run()
        finally:
            session.closed()

    def device(self, name: str) -> DeviceState:
        return self.devices.setdefault(name, DeviceState(name))

    async def apply_setpoint(self, name: str, target_kw: float) -> Translation | None:
        """Send the instruction that brings device ``name`` closest to ``target_kw`` (if it changed)."""
        state = self.devices.get(name)
        session = self.sessions.get(name)
        if state is None or session is None or not state.controllable:
            return None
        state.setpoint_kw = target_kw
        try:
            result = translate(
                state.description,
                state.fill_level,
                target_kw,
                active_mode=state.active_mode,
                timers_finish=state.timers_finish,
            )
        except NoUsableMode as exc:
            log.warning("no usable mode", extra={"fields": {"device": name, "reason": str(exc)}})
            return None
        previous = state.last_translation
        if previous and previous.mode_id == result.mode_id and abs(previous.factor - result.factor) < 1e-4:
            return result  # nothing new to say
        await session.send_instruction(result)
        if not result.reachable:
            log.info(
                "setpoint out of reach",
                extra={
                    "fields": {
                        "device": name,
                        "target_kw": target_kw,
                        "reachable_kw": result.expected_w / 1000,
                    }
                },
            )
        return result


class RmSession:
    """One resource manager's WebSocket connection."""

    def __init__(self, cem: Cem, connection: ServerConnection):
        self.cem = cem
        self.ws = connection
        self.state: DeviceState | None = None
        self.received = 0  # messages from the RM (for the benchmark's CPU time per message)
        self.pending: dict[uuid.UUID, float] = {}  # our message id -> sent at (monotonic)
        self.acks: dict[uuid.UUID, float] = {}  # our message id -> ReceptionStatus received at

    async def send(self, message: Any) -> None:
        if getattr(message, "message_id", None) is not None and not isinstance(message, ReceptionStatus):
            self.pending[message.message_id] = time.monotonic()
        await self.ws.send(message.to_json())

    async def reply(
        self, subject: uuid.UUID, status: ReceptionStatusValues, label: str | None = None
    ) -> None:
        await self.ws.send(
            ReceptionStatus(subject_message_id=subject, status=status, diagnostic_label=label).to_json()
        )

    async def run(self) -> None:
        try:
            async for raw in self.ws:
                await self.receive(raw)
        except ConnectionClosed:
            pass

    def closed(self) -> None:
        if self.state is not None:
            self.state.connected = False
            if self.cem.sessions.get(self.state.name) is self:
                del self.cem.sessions[self.state.name]
            log.info("rm disconnected", extra={"fields": {"device": self.state.name}})
            self.cem.on_change.set()

    async def receive(self, raw: str | bytes) -> None:
        self.received += 1
        subject = _message_id(raw)
        try:
            message = S2Parser.parse_as_any_message(raw)
        except (S2ValidationError, ValueError, TypeError) as exc:
            detail = exc.__cause__ or exc
            await self.reply(
                subject, ReceptionStatusValues.INVALID_DATA, f"cannot parse: {str(detail)[:300]}"
            )
            log.warning(
                "invalid S2 message", extra={"fields": {"device": self._name(), "error": str(detail)[:300]}}
            )
            return
        kind = message.message_type
        if kind == "ReceptionStatus":
            self.acks[message.subject_message_id] = time.monotonic()
            return
        if kind not in RM_MESSAGES:
            await self.reply(subject, ReceptionStatusValues.INVALID_CONTENT, f"a CEM does not accept {kind}")
            return
        try:
            problem = await self.handle(message)
        except Exception as exc:  # answer, never drop the connection over one message (trap 6)
            log.exception("S2 handler failed", extra={"fields": {"device": self._name(), "type": kind}})
            problem = f"internal error handling {kind}: {exc}"
        if problem:
            log.warning(
                "S2 message refused",
                extra={"fields": {"device": self._name(), "type": kind, "reason": problem}},
            )
            await self.reply(subject, ReceptionStatusValues.INVALID_CONTENT, problem[:500])
        else:
            await self.reply(subject, ReceptionStatusValues.OK)
        await self.after(message)

    def _name(self) -> str | None:
        return self.state.name if self.state else None

    async def handle(self, message: Any) -> str | None:
        """Update the state; a sentence when the message is refused (state then unchanged)."""
        if isinstance(message, Handshake):
            if message.role != EnergyManagementRole.RM:
                return f"role {message.role.value} cannot connect to a CEM"
            if not set(message.supported_protocol_versions or []) & set(SUPPORTED_VERSIONS):
                return f"no common protocol version (CEM supports {', '.join(SUPPORTED_VERSIONS)})"
            return None
        if isinstance(message, ResourceManagerDetails):
            name = message.name or str(message.resource_id)
            if ControlType.FILL_RATE_BASED_CONTROL not in message.available_control_types:
                return "the Cariflex CEM controls devices through FILL_RATE_BASED_CONTROL only"
            self.state = self.cem.device(name)
            old = self.cem.sessions.get(name)
            if old is not None and old is not self:
                await old.ws.close(code=1000, reason="replaced by a new connection")
            self.cem.sessions[name] = self
            self.state.resource_id, self.state.connected, self.state.frbc = message.resource_id, True, False
            return None
        if self.state is None:
            return f"{message.message_type} before ResourceManagerDetails"
        state = self.state
        if isinstance(message, FRBCSystemDescription):
            problem = check_system_description(message)
            if problem:
                return problem
            state.description = message
            state.last_translation = None  # new modes: the next setpoint is translated afresh
        elif isinstance(message, FRBCStorageStatus):
            state.fill_level = message.present_fill_level
        elif isinstance(message, FRBCActuatorStatus):
            if state.description is not None and not any(
                a.id == message.actuator_id for a in state.description.actuators
            ):
                return f"unknown actuator {message.actuator_id}"
            state.active_mode, state.factor = message.active_operation_mode_id, message.operation_mode_factor
        elif isinstance(message, FRBCTimerStatus):
            state.timers_finish[message.timer_id] = message.finished_at
        elif isinstance(message, PowerMeasurement):
            values = [v.value for v in message.values if v.commodity_quantity == POWER]
            if not values:
                return "no 3-phase-symmetric power value"
            state.power_w, state.power_at = values[0], time.monotonic()
            state.power_samples.append((state.power_at, values[0]))
        elif isinstance(message, InstructionStatusUpdate):
            record = state.instructions.get(message.instruction_id)
            if record is None:
                return f"unknown instruction {message.instruction_id}"
            record["status"] = message.status_type.value
            record.setdefault("statuses", []).append((message.status_type.value, time.monotonic()))
            if message.status_type in (InstructionStatus.REJECTED, InstructionStatus.ABORTED):
                state.last_translation = None  # try again on the next control round
                log.warning(
                    "instruction not executed",
                    extra={"fields": {"device": state.name, "status": message.status_type.value}},
                )
        return None

    async def after(self, message: Any) -> None:
        """Replies that follow the ReceptionStatus."""
        if isinstance(message, Handshake) and message.role == EnergyManagementRole.RM:
            await self.send(
                Handshake(
                    message_id=uuid.uuid4(),
                    role=EnergyManagementRole.CEM,
                    supported_protocol_versions=list(SUPPORTED_VERSIONS),
                )
            )
            await self.send(HandshakeResponse(message_id=uuid.uuid4(), selected_protocol_version=S2_VERSION))
        elif isinstance(message, ResourceManagerDetails) and self.state is not None and not self.state.frbc:
            await self.send(
                SelectControlType(message_id=uuid.uuid4(), control_type=ControlType.FILL_RATE_BASED_CONTROL)
            )
            self.state.frbc = True
            log.info("rm under FRBC control", extra={"fields": {"device": self.state.name}})
        if self.state is not None and isinstance(message, FRBCSystemDescription | FRBCStorageStatus):
            self.cem.on_change.set()

    async def send_instruction(self, translation: Translation) -> None:
        state = self.state
        assert state is not None and state.description is not None
        instruction = FRBCInstruction(
            message_id=uuid.uuid4(),
            id=uuid.uuid4(),
            actuator_id=translation.actuator_id,
            operation_mode=translation.mode_id,
            operation_mode_factor=translation.factor,
            execution_time=datetime.now(UTC),
            abnormal_condition=False,
        )
        problem = check_instruction(
            instruction,
            state.description,
            active_modes={translation.actuator_id: state.active_mode} if state.active_mode else {},
            timers_finish=state.timers_finish,
            now=datetime.now(UTC),
        )
        if problem:
            log.error("instruction not sent", extra={"fields": {"device": state.name, "reason": problem}})
            return
        superseded = state.instructions.get(state.last_instruction) if state.last_instruction else None
        if superseded is not None and superseded.get("status") not in (
            "SUCCEEDED",
            "REJECTED",
            "ABORTED",
            "REVOKED",
        ):
            await self.send(
                RevokeObject(
                    message_id=uuid.uuid4(),
                    object_type=RevokableObjects.FRBC_Instruction,
                    object_id=state.last_instruction,
                )
            )
        state.instructions[instruction.id] = {
            "mode": translation.mode_label,
            "factor": translation.factor,
            "sent": time.monotonic(),
            "message_id": instruction.message_id,
            "status": "SENT",
        }
        state.last_instruction, state.last_translation = instruction.id, translation
        await self.send(instruction)
        log.info(
            "instruction sent",
            extra={
                "fields": {
                    "device": state.name,
                    "mode": translation.mode_label,
                    "factor": round(translation.factor, 4),
                    "target_kw": translation.target_w / 1000,
                    "expected_kw": translation.expected_w / 1000,
                }
            },
        )


def _message_id(raw: str | bytes) -> uuid.UUID:
    """The message_id of even an unparsable message, for its ReceptionStatus (else the nil UUID)."""
    try:
        return uuid.UUID(str(json.loads(raw).get("message_id")))
    except (ValueError, TypeError, AttributeError):
        return NIL
