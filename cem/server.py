"""The S2 CEM: a WebSocket server for the fleet's resource managers, FRBC control for each.

s2-python brings the message models and the RM side only (no CEM, no server: reference/s2.md
trap 9), so the CEM role is ours. One ``RmSession`` per connection:

- authentication first (cem.pairing): the RM presents its access token on the WebSocket
  upgrade (``Authorization: Bearer``); without a paired token, with a token whose device is not in
  the fleet, or naming another device than its token's in ResourceManagerDetails, the connection is
  closed (4401 / 4404 / 4403, see ``CLOSE_CODES``) and logged, and nothing of it reaches any device's
  state or session. Only an authenticated connection of the same device replaces a live session
  (4409 to the old one): that is a real device coming back after a network drop;
- handshake (version "0.0.2-beta"), ResourceManagerDetails, then FILL_RATE_BASED_CONTROL for a
  battery or EV charger, NOT_CONTROLABLE for a metered resource (a PV site, the base load:
  cariflex.s2.meters), which then only reports PowerMeasurement: no instruction ever goes to it, an
  FRBC message from it is refused, and a reading outside its plausible range is refused (never
  clipped). A power value that is not finite (s2-python reads the JSON string "NaN" as nan) is
  refused from any device;
- every frame the CEM can read gets exactly one ReceptionStatus: OK, INVALID_DATA when it is not
  JSON we accept (cariflex.json_input: nesting over ``MAX_FRAME_DEPTH``, NaN/Infinity, NUL, …), not
  a JSON object, or when s2-python cannot parse it (unknown type, non-UUID ids, naive timestamps),
  INVALID_CONTENT when it parses but makes no sense here (semantic checks in
  cariflex.s2.validation); a bad message changes nothing and the connection stays open. A frame
  over ``MAX_FRAME_BYTES`` cannot be read: the connection is closed with 1009 (message too big);
- state per device: system description, fill level, actuator status, timers, last power, the
  instructions sent and their status updates — kept by device name across reconnections.

Setpoints in kW become FRBC instructions through cariflex.s2.translator; an instruction is checked
before it is sent, and a new one revokes the previous one if that has not finished.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import ssl
import time
import uuid
from collections.abc import Collection, Mapping
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
    SessionRequest,
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

from cariflex.json_input import MAX_DEPTH, JsonInputError, load_json, quote
from cariflex.s2.credentials import CLOSE_NOT_PAIRED, CLOSE_REPLACED, CLOSE_UNKNOWN_DEVICE, CLOSE_WRONG_DEVICE
from cariflex.s2.devices import POWER
from cariflex.s2.meters import Meter
from cariflex.s2.translator import NoUsableMode, Translation, translate
from cariflex.s2.validation import check_instruction, check_system_description
from cem.pairing import Pairing, PairingStore, Refusal

log = logging.getLogger("cariflex.ven.s2")

S2_PATH = "/s2"
NIL = uuid.UUID(int=0)
SUPPORTED_VERSIONS = (S2_VERSION,)
MAX_FRAME_BYTES = 2**20  # larger frames close the connection with 1009; our largest message is ~10 kB
MAX_FRAME_DEPTH = MAX_DEPTH  # 32; the deepest S2 message (FRBC.SystemDescription) nests 9 levels
CLOSE_TOO_BIG = 1009  # RFC 6455 "message too big", sent by websockets itself
PAIRING_POLL_S = 1.0  # how often the CEM looks for pairing changes (revocations close sessions)
CLOSE_CODES = {
    CLOSE_NOT_PAIRED: "not paired: no access token, an unknown one, or a revoked one",
    CLOSE_WRONG_DEVICE: "wrong device: the token is paired to another device than the one named",
    CLOSE_UNKNOWN_DEVICE: "unknown device: not a battery, EV charger, PV site or base load of the fleet",
    CLOSE_REPLACED: "replaced by a newer authenticated connection of the same device",
    CLOSE_TOO_BIG: f"message too big: a frame over {MAX_FRAME_BYTES} bytes",
    1008: f"wrong path: S2 lives at {S2_PATH}",
}
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
    metered: bool = False  # a metered resource (NOT_CONTROLABLE): measured, never instructed

    @property
    def controllable(self) -> bool:
        return self.connected and self.frbc and self.description is not None and self.fill_level is not None


def server_ssl_context(cert: str, key: str | None = None) -> ssl.SSLContext:
    """TLS for ``wss://``: the CEM's certificate (chain) and key, TLS 1.2 at least (S2 Connect asks
    for encrypted WebSockets and forward secrecy; Python's defaults offer only ECDHE suites)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    return context


def _bearer(header: str | None) -> str | None:
    scheme, _, token = (header or "").strip().partition(" ")
    return (token.strip() or None) if scheme.lower() == "bearer" else None


class Cem:
    """The server and every device's state; ``apply_setpoint`` is the control entry point.

    ``pairings``: who may connect (cem.pairing); without it every RM is refused.
    ``fleet``: the device names a pairing may be for (None: any paired device).
    ``meters``: the metered resources among them (cariflex.s2.meters), by name: NOT_CONTROLABLE.
    ``ssl_context``: serve ``wss://`` (see ``server_ssl_context``)."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 8765,
        *,
        pairings: PairingStore | None = None,
        fleet: Collection[str] | None = None,
        meters: Mapping[str, Meter] | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ):
        self.host, self.port = host, port
        self.pairings = pairings
        self.fleet = frozenset(fleet) if fleet is not None else None
        self.meters: dict[str, Meter] = dict(meters or {})
        self.ssl_context = ssl_context
        self.devices: dict[str, DeviceState] = {}
        self.sessions: dict[str, RmSession] = {}
        self.live: set[RmSession] = set()  # every authenticated connection, named or not yet
        self.refused = 0  # connections refused (not paired, wrong or unknown device)
        self._server = None
        self._watcher: asyncio.Task | None = None
        self._closing: set[asyncio.Task] = set()
        self.on_change: asyncio.Event = asyncio.Event()  # wakes the fleet controller

    @property
    def url(self) -> str:
        return f"{'wss' if self.ssl_context else 'ws'}://{self.host}:{self.port}{S2_PATH}"

    async def start(self) -> int:
        self._server = await serve(
            self._accept,
            self.host,
            self.port,
            ssl=self.ssl_context,
            max_size=MAX_FRAME_BYTES,
            ping_interval=20,
        )
        self.port = next(iter(self._server.sockets)).getsockname()[1]
        if self.pairings is not None:
            self._watcher = asyncio.create_task(self._watch_pairings())
        paired = len(self.pairings.pairings()) if self.pairings else 0
        log.info("s2 cem listening", extra={"fields": {"url": self.url, "paired_devices": paired}})
        if not paired:
            log.warning("s2: no device is paired, every resource manager will be refused (cariflex-ven pair)")
        return self.port

    async def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            await asyncio.gather(self._watcher, return_exceptions=True)
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _accept(self, connection: ServerConnection) -> None:
        if connection.request.path != S2_PATH:
            await connection.close(code=1008, reason=f"S2 lives at {S2_PATH}")
            return
        pairing = self._authenticate(connection)
        if isinstance(pairing, Refusal):
            await self.refuse(connection, pairing)
            return
        session = RmSession(self, connection, pairing)
        self.live.add(session)
        try:
            await session.run()
        finally:
            self.live.discard(session)
            session.closed()

    def _authenticate(self, connection: ServerConnection) -> Pairing | Refusal:
        if self.pairings is None:
            return Refusal(CLOSE_NOT_PAIRED, "not paired: this CEM has no pairings")
        pairing = self.pairings.authenticate(_bearer(connection.request.headers.get("Authorization")))
        if isinstance(pairing, Pairing) and self.fleet is not None and pairing.device not in self.fleet:
            return Refusal(CLOSE_UNKNOWN_DEVICE, f"unknown device: {pairing.device} is not in the fleet")
        return pairing

    async def refuse(
        self,
        connection: ServerConnection,
        refusal: Refusal,
        device: str | None = None,
        named: str | None = None,
    ) -> None:
        """Close a connection that may not speak for a device, and log it (the peer gets the reason)."""
        self.refused += 1
        fields = {"code": refusal.code, "reason": refusal.reason, "peer": _peer(connection)}
        if device:
            fields["token_device"] = device
        if named:
            fields["named_device"] = named
        log.warning("s2 connection refused", extra={"fields": fields})
        await connection.close(code=refusal.code, reason=refusal.reason[:120])

    def close_later(self, connection: ServerConnection, code: int, reason: str) -> None:
        """Close another session without waiting: a dead peer (the usual reason a device reconnects)
        would hold the caller for the whole close timeout."""
        task = asyncio.create_task(connection.close(code=code, reason=reason))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _watch_pairings(self) -> None:
        """Close live sessions whose pairing was revoked or replaced (``cariflex-ven unpair / pair``)."""
        while True:
            await asyncio.sleep(PAIRING_POLL_S)
            try:
                self.pairings.refresh()  # (a connection attempt may have re-read the file already)
                for session in list(self.live):
                    current = self.pairings.current(session.pairing.device)
                    if session.refusal is None and (
                        current is None or current.sha256 != session.pairing.sha256
                    ):
                        session.refusal = Refusal(
                            CLOSE_NOT_PAIRED,
                            f"not paired: pairing revoked ({'unpaired' if current is None else 're-paired'})",
                        )
                        self.refused += 1
                        log.warning(
                            "s2 session closed: pairing revoked",
                            extra={"fields": {"device": session.pairing.device, "peer": _peer(session.ws)}},
                        )
                        self.close_later(session.ws, session.refusal.code, session.refusal.reason)
            except Exception:  # the watcher must outlive any one bad moment
                log.exception("s2 pairing watcher failed")

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

    def __init__(self, cem: Cem, connection: ServerConnection, pairing: Pairing):
        self.cem = cem
        self.ws = connection
        self.pairing = pairing  # who the access token says this is
        self.state: DeviceState | None = None
        self.refusal: Refusal | None = None  # set by a handler: close after the ReceptionStatus
        self.named: str | None = None  # the device a refused ResourceManagerDetails named
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
        if self.state is not None and self.cem.sessions.get(self.state.name) is self:
            # (a session replaced by a newer one of the same device leaves the device connected)
            self.state.connected = False
            del self.cem.sessions[self.state.name]
            log.info("rm disconnected", extra={"fields": {"device": self.state.name}})
            self.cem.on_change.set()

    async def invalid_data(self, subject: uuid.UUID, problem: str) -> None:
        await self.reply(subject, ReceptionStatusValues.INVALID_DATA, problem[:500])
        log.warning("invalid S2 message", extra={"fields": {"device": self._name(), "error": problem[:300]}})

    async def receive(self, raw: str | bytes) -> None:
        if self.refusal is not None:
            return  # being closed: nothing more from this peer counts
        self.received += 1
        # s2-python gap: S2Parser.parse_as_any_message raises AttributeError for a frame that is JSON
        # but not an object ("[]", "null", "1": it calls .get on it) and RecursionError for deep
        # nesting, neither of them an S2ValidationError; the bounded parser and the object check here
        # come first (tests/integration/test_s2_pairing.py::test_s2_python_parser_gaps shows both).
        try:
            document = load_json(raw, max_bytes=MAX_FRAME_BYTES, max_depth=MAX_FRAME_DEPTH)
        except JsonInputError as exc:
            await self.invalid_data(_message_id_in(raw), f"not JSON we accept: {exc}")
            return
        if not isinstance(document, dict):
            kind = "an array" if isinstance(document, list) else quote(document, 20)
            await self.invalid_data(NIL, f"an S2 message is a JSON object, not {kind}")
            return
        subject = _message_id(document)
        loose = _loose_power(document)
        if loose:
            await self.invalid_data(subject, loose)
            return
        try:
            message = S2Parser.parse_as_any_message(document)
        except (S2ValidationError, ValueError, TypeError, AttributeError) as exc:
            detail = exc.__cause__ or exc
            await self.invalid_data(subject, f"cannot parse: {str(detail)[:300]}")
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
        if self.refusal is not None:
            await self.cem.refuse(self.ws, self.refusal, device=self.pairing.device, named=self.named)
            return
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
            if name != self.pairing.device:  # identity comes from the token, never from the name
                self.named = name
                self.refusal = Refusal(
                    CLOSE_WRONG_DEVICE, f"wrong device: the token is {self.pairing.device}'s, not {name}'s"
                )
                return self.refusal.reason
            meter = self.cem.meters.get(name)
            if meter is not None:
                if ControlType.NOT_CONTROLABLE not in message.available_control_types:
                    return f"{name} is a metered resource: it must offer NOT_CONTROLABLE"
            elif ControlType.FILL_RATE_BASED_CONTROL not in message.available_control_types:
                return "the Cariflex CEM controls devices through FILL_RATE_BASED_CONTROL only"
            self.state = self.cem.device(name)
            self.state.metered = meter is not None
            old = self.cem.sessions.get(name)
            if old is not None and old is not self:
                # Authenticated with this device's token: the device itself, reconnected (the old
                # connection is dead or half-open), or a clone of its credential; both end here.
                log.warning(
                    "s2 session replaced",
                    extra={"fields": {"device": name, "old_peer": _peer(old.ws), "new_peer": _peer(self.ws)}},
                )
                old.refusal = Refusal(CLOSE_REPLACED, "replaced by a newer connection of this device")
                self.cem.close_later(old.ws, old.refusal.code, old.refusal.reason)
            self.cem.sessions[name] = self
            self.state.resource_id, self.state.connected, self.state.frbc = message.resource_id, True, False
            return None
        if self.state is None:
            return f"{message.message_type} before ResourceManagerDetails"
        state = self.state
        if state.metered and not isinstance(message, PowerMeasurement | RevokeObject | SessionRequest):
            return f"{message.message_type} from a metered resource (NOT_CONTROLABLE): only PowerMeasurement"
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
            meter = self.cem.meters.get(state.name) if state.metered else None
            problem = (
                meter.plausible(values[0])
                if meter is not None
                else None
                if math.isfinite(values[0])
                else f"power {values[0]!r} W is not a finite number"
            )
            if problem:
                return problem
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
        elif isinstance(message, ResourceManagerDetails) and self.state is not None and self.state.metered:
            await self.send(
                SelectControlType(message_id=uuid.uuid4(), control_type=ControlType.NOT_CONTROLABLE)
            )
            log.info("rm metered (NOT_CONTROLABLE)", extra={"fields": {"device": self.state.name}})
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


def _loose_power(document: dict) -> str | None:
    """Why a PowerMeasurement's values are not JSON numbers, before s2-python reads them: its
    lax float reads the string "NaN" as nan, "1e999" as inf, "12" as 12.0 and true as 1.0."""
    if document.get("message_type") != "PowerMeasurement" or not isinstance(document.get("values"), list):
        return None
    for index, item in enumerate(document["values"]):
        value = item.get("value") if isinstance(item, dict) else None
        if (
            isinstance(item, dict)
            and "value" in item
            and (isinstance(value, bool) or not isinstance(value, int | float))
        ):
            return f"values[{index}].value must be a JSON number of watts, not {quote(value, 30)}"
    return None


def _message_id(document: dict) -> uuid.UUID:
    """The message_id of even an invalid message, for its ReceptionStatus (else the nil UUID)."""
    try:
        return uuid.UUID(str(document.get("message_id")))
    except (ValueError, TypeError):
        return NIL


_MESSAGE_ID = re.compile(r'"message_id"\s*:\s*"([0-9A-Fa-f-]{32,36})"')


def _message_id_in(raw: str | bytes) -> uuid.UUID:
    """The message_id of a frame that is not JSON we accept (NaN, too deep, …), found by pattern."""
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    found = _MESSAGE_ID.search(text)
    try:
        return uuid.UUID(found.group(1)) if found else NIL
    except ValueError:
        return NIL


def _peer(connection: ServerConnection) -> str:
    try:
        host, port = connection.remote_address[:2]
        return f"{host}:{port}"
    except (TypeError, ValueError, OSError):
        return "?"
