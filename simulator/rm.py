"""One S2 resource manager per simulated device, each on its own WebSocket to the CEM.

Built on s2-python's RM side: ``S2AsyncConnection`` over ``WebsocketClientMedium``, with
``ResourceManagerHandler`` doing the handshake (Handshake ["0.0.2-beta"] → HandshakeResponse →
ResourceManagerDetails) and ``FRBCControlType`` the activation. Around it, what s2-python leaves
to the application (reference/s2.md §1):

- exactly one ReceptionStatus per received message (traps 5-7): the dispatcher answers
  INVALID_CONTENT for a type an RM does not handle, a handler chooses OK or INVALID_CONTENT (with
  the reason) itself, and an error in our handlers becomes INVALID_CONTENT instead of
  PERMANENT_ERROR plus a dead connection;
- a CEM that repeats a ReceptionStatus or never sends one does not end the connection: such
  statuses are logged, and unclaimed ones are kept in a bounded cache only;
- instructions are checked semantically (``cariflex.s2.validation.check_instruction``) — refused
  ones get INVALID_CONTENT and InstructionStatusUpdate REJECTED, accepted ones ACCEPTED, then at
  their execution time STARTED and SUCCEEDED (or ABORTED when no longer allowed), followed at once
  by an ActuatorStatus and a PowerMeasurement; RevokeObject of a pending instruction → REVOKED;
- reconnection with capped backoff (1 s … 10 s), a new handshake and system description each
  time; without a CEM for ``cem_timeout_seconds`` the device goes idle ("off" for EVs);
- pairing like a real device (cariflex.s2.credentials): each connection presents the device's
  access token as ``Authorization: Bearer`` (read afresh from ``tokens`` on every attempt); a device
  without a token does not connect, and one the CEM refuses (close code 4401/4403/4404, logged
  with the CEM's reason) retries only at the longest backoff; ``wss://`` with ``ca_file``.

Message sequence per session, RM → CEM: Handshake, (ReceptionStatus for the CEM's Handshake and
HandshakeResponse), ResourceManagerDetails, (ReceptionStatus for SelectControlType),
FRBC.SystemDescription, FRBC.StorageStatus, FRBC.ActuatorStatus, PowerMeasurement, then every
``measure_seconds`` PowerMeasurement + FRBC.StorageStatus.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from s2python.common import (
    Commodity,
    ControlType,
    Duration,
    EnergyManagementRole,
    InstructionStatus,
    InstructionStatusUpdate,
    PowerMeasurement,
    PowerValue,
    ReceptionStatus,
    ReceptionStatusValues,
    RevokableObjects,
    RevokeObject,
    Role,
    RoleType,
    SessionRequest,
    SessionRequestType,
)
from s2python.connection.asset_details import AssetDetails
from s2python.connection.async_.connection import S2AsyncConnection
from s2python.connection.async_.control_type.class_based import (
    FRBCControlType,
    ResourceManagerHandler,
    S2ControlType,
)
from s2python.connection.async_.medium.s2_medium import MediumCouldNotConnectError, S2MediumException
from s2python.connection.async_.medium.websocket import WebsocketClientMedium
from s2python.connection.async_.message_handlers import MessageHandlers
from s2python.connection.connection_events import S2ConnectionEvent
from s2python.frbc import FRBCActuatorStatus, FRBCInstruction, FRBCStorageStatus, FRBCTimerStatus
from s2python.message import S2Message
from s2python.reception_status_awaiter import ReceptionStatusAwaiter
from s2python.version import S2_VERSION
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import WebSocketException

from cariflex.fleet import Battery, EVCharger
from cariflex.s2.credentials import CLOSE_REPLACED, REFUSED, TokenFileError
from cariflex.s2.devices import POWER
from simulator.devices import SimDevice

log = logging.getLogger("cariflex.sim")

INSTRUCTION_PROCESSING_DELAY_MS = 100
RECEPTION_STATUS_TIMEOUT = 5.0
BACKOFF_MIN_SECONDS = 1.0
BACKOFF_MAX_SECONDS = 10.0
KEEP_INSTRUCTIONS = 1000  # instruction histories kept per device
STOP_GRACE_SECONDS = 5.0
FINAL_STATUSES = {
    InstructionStatus.REJECTED,
    InstructionStatus.REVOKED,
    InstructionStatus.SUCCEEDED,
    InstructionStatus.ABORTED,
}


def resource_id(name: str) -> uuid.UUID:
    """The device's stable S2 resource id."""
    return uuid.uuid5(uuid.NAMESPACE_URL, "cariflex:" + name)


def _now() -> datetime:
    return datetime.now(UTC)


# --- s2-python connection core, with exactly-one-ReceptionStatus guarantees ----------------------


class Reply:
    """The ``send_okay`` a handler receives: call it for OK, or ``send`` another status. Only the
    first status goes out; the dispatcher sends OK afterwards if the handler sent none."""

    def __init__(self, connection: S2AsyncConnection, subject: uuid.UUID):
        self.connection, self.subject = connection, subject
        self.status: ReceptionStatusValues | None = None

    async def __call__(self) -> None:
        await self.send(ReceptionStatusValues.OK, "Processed okay.")

    async def send(self, status: ReceptionStatusValues, label: str) -> None:
        if self.status is not None:
            log.warning(
                "second reception status suppressed",
                extra={"fields": {"subject": str(self.subject), "status": status.value}},
            )
            return
        self.status = status
        await self.connection.respond_with_reception_status(self.subject, status, label[:500])


class _Dispatcher(MessageHandlers):
    """Like s2-python's, but a message type without a handler gets INVALID_CONTENT (not silence)."""

    async def handle_event(self, connection: S2AsyncConnection, event: Any) -> None:
        handler = self.handlers.get(type(event))
        if isinstance(event, S2ConnectionEvent):
            if handler is not None:
                await handler(connection, event, None)
            return
        reply = Reply(connection, event.message_id)
        if handler is None:
            await reply.send(
                ReceptionStatusValues.INVALID_CONTENT,
                f"{event.message_type} is not a message a resource manager accepts",
            )
            return
        try:
            await handler(connection, event, reply)
        except Exception:
            # s2-python's own handlers (handshake, details): their failure ends the session.
            if reply.status is None:
                await reply.send(
                    ReceptionStatusValues.PERMANENT_ERROR, f"could not process {event.message_type}"
                )
            raise
        if reply.status is None:
            await reply()


class _TolerantAwaiter(ReceptionStatusAwaiter):
    """A repeated ReceptionStatus is logged, not fatal (trap 7); unclaimed ones are capped."""

    KEEP = 512

    def __init__(self) -> None:
        super().__init__()
        self.received = OrderedDict()

    async def receive_reception_status(self, reception_status: ReceptionStatus) -> None:
        subject = reception_status.subject_message_id
        if subject in self.received:
            log.warning(
                "duplicate reception status from the CEM", extra={"fields": {"subject": str(subject)}}
            )
            return
        self.received[subject] = reception_status
        while len(self.received) > self.KEEP:
            self.received.popitem(last=False)
        waiting = self.awaiting.pop(subject, None)
        if waiting is not None:
            waiting.set()


class RmConnection(S2AsyncConnection):
    def __init__(self, medium: WebsocketClientMedium, device: str):
        super().__init__(medium, asyncio.get_running_loop())
        self._handlers = _Dispatcher()
        self._reception_status_awaiter = _TolerantAwaiter()
        self.device = device
        self._watchers: set[asyncio.Task] = set()

    async def send_tracked(self, message: Any, timeout: float = RECEPTION_STATUS_TIMEOUT) -> None:
        """Send; a watcher logs a missing or non-OK ReceptionStatus without ending the session."""
        await self.send_and_forget(message)
        task = asyncio.create_task(self._watch(message, timeout))
        self._watchers.add(task)
        task.add_done_callback(self._watchers.discard)

    async def _watch(self, message: Any, timeout: float) -> None:
        try:
            status = await self._reception_status_awaiter.wait_for_reception_status(
                message.message_id, timeout
            )
        except TimeoutError:
            log.warning(
                "no reception status from the CEM",
                extra={"fields": {"device": self.device, "type": message.message_type}},
            )
            return
        if status.status != ReceptionStatusValues.OK:
            log.warning(
                "CEM did not accept a message",
                extra={
                    "fields": {
                        "device": self.device,
                        "type": message.message_type,
                        "status": status.status.value,
                        "reason": status.diagnostic_label,
                    }
                },
            )

    def close_watchers(self) -> None:
        for task in list(self._watchers):
            task.cancel()


class _Medium(WebsocketClientMedium):
    """s2-python's WebSocket client medium (bearer token on the upgrade), plus what it lacks: a CA
    file for a CEM with its own certificate (it only offers verify on/off) and the close code and
    reason the CEM gave (to tell a refusal from a network failure)."""

    def __init__(self, url: str, token: str | None, ssl_context: ssl.SSLContext | None):
        super().__init__(url, bearer_token=token)
        self._ssl_context = ssl_context

    async def connect(self) -> None:
        options: dict[str, Any] = {"open_timeout": 10}
        if self._ssl_context is not None and self.url.startswith("wss://"):
            options["ssl"] = self._ssl_context
        if self._bearer_token:
            options["additional_headers"] = {"Authorization": f"Bearer {self._bearer_token}"}
        try:
            self._ws = await ws_connect(self.url, **options)
        except (EOFError, OSError, WebSocketException, TimeoutError) as exc:
            self._closed = True
            raise MediumCouldNotConnectError(f"Could not connect due to: {exc}") from exc

    @property
    def close_code(self) -> int | None:
        return self._ws.protocol.close_code if self._ws is not None else None

    @property
    def close_reason(self) -> str | None:
        return self._ws.protocol.close_reason if self._ws is not None else None


def client_ssl_context(ca_file: str | Path | None) -> ssl.SSLContext:
    """Verify the CEM's certificate against ``ca_file`` (else the system's CAs)."""
    return ssl.create_default_context(cafile=str(ca_file) if ca_file else None)


# --- control types and the RM handler -------------------------------------------------------------


class _FrbcControl(FRBCControlType):
    def __init__(self, rm: SimulatedRM):
        self.rm = rm

    async def handle_instruction(self, connection: Any, msg: Any, send_okay: Any) -> None:
        await self.rm.on_instruction(msg, send_okay)

    async def activate(self, connection: Any) -> None:
        await self.rm.on_frbc_activated()

    async def deactivate(self, connection: Any) -> None:
        self.rm.on_frbc_deactivated()


class _NoSelection(S2ControlType):
    """NO_SELECTION: the CEM does not control the device; the simulator then keeps it idle."""

    def __init__(self, rm: SimulatedRM):
        self.rm = rm

    def get_protocol_control_type(self) -> ControlType:
        return ControlType.NO_SELECTION

    def register_handlers(self, connection: Any) -> None:
        pass

    async def activate(self, connection: Any) -> None:
        await self.rm.on_no_selection()

    async def deactivate(self, connection: Any) -> None:
        pass


class _RmHandler(ResourceManagerHandler):
    def __init__(self, rm: SimulatedRM, control_types: list[S2ControlType], details: AssetDetails):
        super().__init__(control_types, details)
        self.rm = rm

    def register_handlers(self, connection: Any) -> None:
        super().register_handlers(connection)
        # Registered up front: an instruction before FRBC is active must still get its status.
        connection.register_handler(FRBCInstruction, self._on_instruction)
        connection.register_handler(RevokeObject, self._on_revoke)
        connection.register_handler(SessionRequest, self._on_session_request)

    async def _on_handshake(self, connection: Any, event: Any, send_okay: Any) -> None:
        if event.role != EnergyManagementRole.CEM:
            await send_okay.send(
                ReceptionStatusValues.INVALID_CONTENT, f"expected a CEM, not {event.role.value}"
            )
            return
        await super()._on_handshake(connection, event, send_okay)

    async def _on_handshake_response(self, connection: Any, event: Any, send_okay: Any) -> None:
        if event.selected_protocol_version != S2_VERSION:
            await send_okay.send(
                ReceptionStatusValues.INVALID_CONTENT,
                f"protocol version {event.selected_protocol_version} not supported (only {S2_VERSION})",
            )
            await connection.stop()
            return
        await super()._on_handshake_response(connection, event, send_okay)

    async def _on_select_control_type(self, connection: Any, event: Any, send_okay: Any) -> None:
        offered = [c.get_protocol_control_type() for c in self._control_types]
        if event.control_type not in offered:
            await send_okay.send(
                ReceptionStatusValues.INVALID_CONTENT,
                f"control type {event.control_type.value} not offered (offered: "
                + ", ".join(c.value for c in offered)
                + ")",
            )
            return
        await super()._on_select_control_type(connection, event, send_okay)

    async def _on_instruction(self, connection: Any, event: Any, send_okay: Any) -> None:
        await self.rm.on_instruction(event, send_okay)

    async def _on_revoke(self, connection: Any, event: Any, send_okay: Any) -> None:
        await self.rm.on_revoke(event, send_okay)

    async def _on_session_request(self, connection: Any, event: Any, send_okay: Any) -> None:
        await send_okay()
        self.rm.on_session_request(event)
        await connection.stop()


# --- one simulated resource manager ---------------------------------------------------------------


class SimulatedRM:
    """A device, its physics loop and its (re)connecting S2 session. Readable state for tests:
    ``power_w``, ``fill_level``, ``mode_label``, ``factor``, ``connected``, ``frbc_active``,
    ``instruction_statuses`` (instruction id → statuses sent), ``rejections`` (id → reason),
    ``sent`` (recent messages sent), ``sessions`` (count of sessions started), ``closes`` (the
    CEM's close codes and reasons), ``refused`` (the last refusal, None once accepted again).

    ``tokens``: where the device's access token comes from, anything with ``get(name)`` (a dict,
    or a ``cariflex.s2.credentials.TokenFile``); ``ca_file``: CA of the CEM's certificate (wss)."""

    def __init__(
        self,
        device: SimDevice,
        url: str,
        *,
        measure_seconds: float = 2.0,
        cem_timeout_seconds: float = 30.0,
        backoff_min_seconds: float = BACKOFF_MIN_SECONDS,
        backoff_max_seconds: float = BACKOFF_MAX_SECONDS,
        verify_certificate: bool = True,
        tokens: Any = None,
        ca_file: str | Path | None = None,
    ):
        self.device = device
        self.url = url
        self.measure_seconds = measure_seconds
        self.cem_timeout_seconds = cem_timeout_seconds
        self.backoff_min, self.backoff_max = backoff_min_seconds, backoff_max_seconds
        self.verify_certificate = verify_certificate
        self.tokens = tokens
        self.ssl_context = client_ssl_context(ca_file) if ca_file else None
        if self.ssl_context is None and not verify_certificate:
            self.ssl_context = ssl.create_default_context()
            self.ssl_context.check_hostname, self.ssl_context.verify_mode = False, ssl.CERT_NONE
        self.closes: list[tuple[int | None, str | None]] = []
        self.refused: tuple[int, str] | None = None
        self._token_problem: str | None = None
        self.connected = False
        self.frbc_active = False
        self.sessions = 0
        self.instruction_statuses: dict[uuid.UUID, list[InstructionStatus]] = {}
        self.rejections: dict[uuid.UUID, str] = {}
        self.sent: deque[S2Message] = deque(maxlen=500)
        self._connection: RmConnection | None = None
        self._pending: dict[uuid.UUID, asyncio.Task] = {}
        self._stop = asyncio.Event()
        self._change = asyncio.Event()
        self._cem_timer: asyncio.TimerHandle | None = None
        self._last_advance = time.monotonic()
        self._next_delay: float | None = None
        self._selected = False
        self._mode_unreported = False  # the device changed mode on its own since the last ActuatorStatus
        self.details = AssetDetails(
            resource_id=resource_id(device.name),
            name=device.name,
            provides_forecast=False,
            provides_power_measurements=[POWER],
            instruction_processing_delay=Duration.from_milliseconds(INSTRUCTION_PROCESSING_DELAY_MS),
            roles=[Role(role=RoleType.ENERGY_STORAGE, commodity=Commodity.ELECTRICITY)],
            manufacturer="Cariflex",
            model="simulated battery" if device.kind == "battery" else "simulated EV charger",
        )

    # --- readable state ---------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.device.name

    @property
    def power_w(self) -> float:
        return self.device.power_w

    @property
    def fill_level(self) -> float:
        return self.device.fill_level

    @property
    def mode_label(self) -> str:
        return self.device.mode_label

    @property
    def factor(self) -> float:
        return self.device.factor

    def _changed(self) -> None:
        event, self._change = self._change, asyncio.Event()
        event.set()

    async def wait_until(self, predicate: Callable[[], bool], timeout: float) -> None:
        """Wait until ``predicate()`` holds (re-checked on every state change); TimeoutError else."""
        async with asyncio.timeout(timeout):
            while not predicate():
                await self._change.wait()

    def _fields(self, **more: Any) -> dict[str, Any]:
        return {"fields": {"device": self.name, **more}}

    # --- lifecycle --------------------------------------------------------------------------

    async def run(self) -> None:
        """Physics loop plus the S2 session, reconnecting until ``stop()``."""
        physics = asyncio.create_task(self._physics_loop())
        backoff = self.backoff_min
        try:
            while not self._stop.is_set():
                token = self._token()
                if token is None:
                    self._next_delay = self.backoff_max  # look again later: it may get paired
                else:
                    medium = _Medium(self.url, token, self.ssl_context)
                    try:
                        await medium.connect()
                    except S2MediumException as exc:
                        log.info(
                            "cem not reachable",
                            extra=self._fields(url=self.url, error=str(exc), retry_in_seconds=backoff),
                        )
                    else:
                        healthy = await self._session(medium)
                        if healthy:
                            backoff = self.backoff_min
                        self._closed_by_cem(medium)
                delay = backoff if self._next_delay is None else self._next_delay
                self._next_delay = None
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), delay)
                backoff = min(self.backoff_max, backoff * 2)
        finally:
            physics.cancel()
            await asyncio.gather(physics, return_exceptions=True)
            if self._cem_timer is not None:
                self._cem_timer.cancel()

    def _token(self) -> str | None:
        """The access token to present now (None, logged once per problem: do not connect)."""
        try:
            token = self.tokens.get(self.name) if self.tokens is not None else None
            where = getattr(self.tokens, "path", "the tokens given")  # never the tokens themselves
            problem = None if token else f"no S2 access token for {self.name} in {where}"
        except TokenFileError as exc:
            token, problem = None, str(exc)
        if problem and problem != self._token_problem:
            log.error(
                "not paired: pair the device (cariflex-ven pair DEVICE --token-file FILE)",
                extra=self._fields(error=problem),
            )
        self._token_problem = problem
        return token

    def _closed_by_cem(self, medium: _Medium) -> None:
        code, reason = medium.close_code, medium.close_reason
        self.closes.append((code, reason))
        del self.closes[:-50]
        if code in REFUSED:
            self.refused = (code, reason or "")
            self._next_delay = self.backoff_max  # an operator has to act: do not hammer the CEM
            log.error("cem refused this device", extra=self._fields(code=code, reason=reason))
        elif code == CLOSE_REPLACED:
            log.warning("cem took a newer connection of this device", extra=self._fields(reason=reason))
        self._changed()

    async def stop(self) -> None:
        self._stop.set()
        if self._connection is not None:
            await self._connection.stop()

    async def _session(self, medium: _Medium) -> bool:
        """One S2 session; True when it got as far as a control type (backoff then restarts)."""
        connection = RmConnection(medium, self.name)
        handler = _RmHandler(self, [_FrbcControl(self), _NoSelection(self)], self.details)
        handler.register_handlers(connection)
        self._connection, self.connected = connection, True
        self.sessions += 1
        self._selected = False
        if self._cem_timer is not None:
            self._cem_timer.cancel()
            self._cem_timer = None
        log.info("connected to cem", extra=self._fields(url=self.url, session=self.sessions))
        self._changed()
        try:
            if self._stop.is_set():
                return False
            await connection.run()
        except Exception as exc:
            log.warning("s2 session ended with an error", extra=self._fields(error=repr(exc)))
        finally:
            self._connection, self.connected, self.frbc_active = None, False, False
            for task in self._pending.values():
                task.cancel()
            self._pending.clear()
            connection.close_watchers()
            with contextlib.suppress(Exception):
                await medium.disconnect()
            if not self._stop.is_set():
                self._cem_timer = asyncio.get_running_loop().call_later(
                    self.cem_timeout_seconds, self._cem_gone
                )
            log.info("disconnected from cem", extra=self._fields())
            self._changed()
        return self._selected

    def _cem_gone(self) -> None:
        self._cem_timer = None
        self._advance()
        if self.device.go_idle(_now()):
            self._mode_unreported = True
            log.warning(
                "no cem: device set to idle",
                extra=self._fields(after_seconds=self.cem_timeout_seconds, mode=self.mode_label),
            )
            self._changed()

    # --- physics and periodic reports -------------------------------------------------------

    def _advance(self) -> bool:
        """Bring the device up to now; True when it changed mode on its own (full, empty, car left)."""
        clock = time.monotonic()
        elapsed, self._last_advance = clock - self._last_advance, clock
        now = _now()
        changed = self.device.update_presence(now)
        if changed:
            log.info("ev " + ("arrived" if self.device.present else "left"), extra=self._fields())
        stopped = self.device.step(elapsed, now)
        if stopped:
            log.info("storage limit reached: device idle", extra=self._fields(fill_level=self.fill_level))
        if changed or stopped:
            self._mode_unreported = True
        return changed or stopped

    async def _physics_loop(self) -> None:
        deadline = time.monotonic()
        while True:
            deadline += self.measure_seconds
            await asyncio.sleep(max(0.0, deadline - time.monotonic()))
            self._advance()
            if self.frbc_active and self._mode_unreported:
                await self._send(self._actuator_status())
            if self.frbc_active:
                await self._send(self._power_measurement())
                await self._send(self._storage_status())
            self._changed()

    # --- outgoing messages ------------------------------------------------------------------

    async def _send(self, message: S2Message) -> bool:
        connection = self._connection
        if connection is None:
            return False
        try:
            await connection.send_tracked(message)
        except (S2MediumException, RuntimeError) as exc:
            log.info("send failed", extra=self._fields(type=message.message_type, error=str(exc)))
            return False
        self.sent.append(message)
        return True

    def _power_measurement(self) -> PowerMeasurement:
        return PowerMeasurement(
            message_id=uuid.uuid4(),
            measurement_timestamp=_now(),
            values=[PowerValue(commodity_quantity=POWER, value=round(self.power_w, 3))],
        )

    def _storage_status(self) -> FRBCStorageStatus:
        return FRBCStorageStatus(message_id=uuid.uuid4(), present_fill_level=round(self.fill_level, 6))

    def _actuator_status(self) -> FRBCActuatorStatus:
        self._mode_unreported = False
        device = self.device
        return FRBCActuatorStatus(
            message_id=uuid.uuid4(),
            actuator_id=device.actuator_id,
            active_operation_mode_id=device.mode_id,
            operation_mode_factor=device.factor,
            previous_operation_mode_id=device.previous_mode_id,
            transition_timestamp=device.transition_at,
        )

    async def _status_update(self, instruction_id: uuid.UUID, status: InstructionStatus) -> None:
        self.instruction_statuses.setdefault(instruction_id, []).append(status)
        for history in (self.instruction_statuses, self.rejections):  # bounded for long runs
            while len(history) > KEEP_INSTRUCTIONS:
                del history[next(iter(history))]
        self._changed()
        await self._send(
            InstructionStatusUpdate(
                message_id=uuid.uuid4(), instruction_id=instruction_id, status_type=status, timestamp=_now()
            )
        )

    # --- callbacks from the S2 handlers -----------------------------------------------------

    async def on_frbc_activated(self) -> None:
        self._selected, self.refused = True, None
        self._advance()
        description = self.device.model.description.model_copy(
            update={"message_id": uuid.uuid4(), "valid_from": _now()}
        )
        await self._send(description)
        await self._send(self._storage_status())
        await self._send(self._actuator_status())
        await self._send(self._power_measurement())
        self.frbc_active = True
        log.info("under FRBC control", extra=self._fields(mode=self.mode_label, fill_level=self.fill_level))
        self._changed()

    def on_frbc_deactivated(self) -> None:
        self.frbc_active = False
        for task in self._pending.values():
            task.cancel()
        self._pending.clear()
        self._changed()

    async def on_no_selection(self) -> None:
        self._selected, self.refused = True, None
        self._advance()
        self.device.go_idle(_now())
        log.info("cem selected no control: device idle", extra=self._fields())
        self._changed()

    def on_session_request(self, request: SessionRequest) -> None:
        terminate = request.request == SessionRequestType.TERMINATE
        self._next_delay = self.backoff_max if terminate else 0.0
        log.info("cem asked to " + request.request.value.lower(), extra=self._fields())

    async def on_instruction(self, instruction: FRBCInstruction, reply: Reply) -> None:
        try:
            await self._on_instruction(instruction, reply)
        except Exception as exc:  # never PERMANENT_ERROR and a dead session over one message (trap 6)
            log.exception("instruction handling failed", extra=self._fields())
            if reply.status is None:
                await reply.send(ReceptionStatusValues.INVALID_CONTENT, f"internal error: {exc}")

    async def _on_instruction(self, instruction: FRBCInstruction, reply: Reply) -> None:
        self._advance()
        now = _now()
        if not self.frbc_active:
            problem = "FILL_RATE_BASED_CONTROL is not active"
        elif instruction.id in self.instruction_statuses:
            problem = f"instruction id {instruction.id} was already used"
        else:
            problem = self.device.check(instruction, now)
        if problem:
            self.rejections[instruction.id] = problem
            log.warning(
                "instruction rejected", extra=self._fields(instruction=str(instruction.id), reason=problem)
            )
            await reply.send(ReceptionStatusValues.INVALID_CONTENT, problem)
            await self._status_update(instruction.id, InstructionStatus.REJECTED)
            return
        await reply()
        await self._status_update(instruction.id, InstructionStatus.ACCEPTED)
        delay = (instruction.execution_time - now).total_seconds()
        if delay <= 0:
            await self._execute(instruction)
        else:
            task = asyncio.create_task(self._execute_later(instruction, delay))
            self._pending[instruction.id] = task

    async def _execute_later(self, instruction: FRBCInstruction, delay: float) -> None:
        await asyncio.sleep(delay)
        self._pending.pop(instruction.id, None)
        try:
            await self._execute(instruction)
        except Exception:
            log.exception("instruction execution failed", extra=self._fields(instruction=str(instruction.id)))

    async def _execute(self, instruction: FRBCInstruction) -> None:
        self._advance()
        now = _now()
        problem = self.device.check(instruction, now)  # the state may have moved since it was accepted
        if problem:
            self.rejections[instruction.id] = problem
            log.warning(
                "instruction aborted", extra=self._fields(instruction=str(instruction.id), reason=problem)
            )
            await self._status_update(instruction.id, InstructionStatus.ABORTED)
            return
        timers = self.device.apply(instruction.operation_mode, instruction.operation_mode_factor, now)
        log.info(
            "instruction executed",
            extra=self._fields(
                instruction=str(instruction.id),
                mode=self.mode_label,
                factor=self.factor,
                power_w=self.power_w,
            ),
        )
        await self._status_update(instruction.id, InstructionStatus.STARTED)
        await self._status_update(instruction.id, InstructionStatus.SUCCEEDED)
        for timer_id, finished_at in timers:
            await self._send(
                FRBCTimerStatus(
                    message_id=uuid.uuid4(),
                    timer_id=timer_id,
                    actuator_id=self.device.actuator_id,
                    finished_at=finished_at,
                )
            )
        await self._send(self._actuator_status())
        await self._send(self._power_measurement())
        self._changed()

    async def on_revoke(self, revoke: RevokeObject, reply: Reply) -> None:
        if revoke.object_type != RevokableObjects.FRBC_Instruction:
            await reply.send(
                ReceptionStatusValues.INVALID_CONTENT,
                f"{revoke.object_type.value} objects cannot be revoked here (only FRBC.Instruction)",
            )
            return
        task = self._pending.pop(revoke.object_id, None)
        if task is None:
            statuses = self.instruction_statuses.get(revoke.object_id)
            state = statuses[-1].value if statuses else "unknown"
            await reply.send(
                ReceptionStatusValues.INVALID_CONTENT,
                f"instruction {revoke.object_id} is {state}: "
                "only instructions not yet executed can be revoked",
            )
            return
        task.cancel()
        await reply()
        log.info("instruction revoked", extra=self._fields(instruction=str(revoke.object_id)))
        await self._status_update(revoke.object_id, InstructionStatus.REVOKED)


# --- many RMs in one loop -------------------------------------------------------------------------


class SimulatedFleet:
    """Resource managers running in this event loop; ``fleet[name]`` is a ``SimulatedRM``."""

    def __init__(self, rms: list[SimulatedRM]):
        self.rms = {rm.name: rm for rm in rms}
        self._tasks: list[asyncio.Task] = []

    def __getitem__(self, name: str) -> SimulatedRM:
        return self.rms[name]

    def __iter__(self):
        return iter(self.rms.values())

    async def start(self) -> SimulatedFleet:
        self._tasks = [asyncio.create_task(rm.run(), name=f"rm-{rm.name}") for rm in self.rms.values()]
        return self

    async def stop(self) -> None:
        """Close every session (WebSocket close handshake) and end the tasks."""
        await asyncio.gather(*(rm.stop() for rm in self.rms.values()))
        if self._tasks:
            _, late = await asyncio.wait(self._tasks, timeout=STOP_GRACE_SECONDS)
            for task in late:  # e.g. stuck in a connection attempt to an unresponsive host
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def wait(self) -> None:
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def wait_until(self, predicate: Callable[[SimulatedRM], bool], timeout: float) -> None:
        """Wait until ``predicate(rm)`` holds for every RM."""
        async with asyncio.timeout(timeout):
            await asyncio.gather(*(rm.wait_until(lambda rm=rm: predicate(rm), timeout) for rm in self))

    def summary(self) -> dict[str, Any]:
        return {
            "devices": len(self.rms),
            "connected": sum(rm.connected for rm in self),
            "frbc": sum(rm.frbc_active for rm in self),
            "power_kw": round(sum(rm.power_w for rm in self) / 1000, 3),
        }

    async def __aenter__(self) -> SimulatedFleet:
        return await self.start() if not self._tasks else self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


def _as_device(device: SimDevice | Battery | EVCharger) -> SimDevice:
    if isinstance(device, SimDevice):
        return device
    if isinstance(device, Battery):
        return SimDevice.battery(device)
    return SimDevice.ev_charger(device)


async def start_fleet(
    url: str, devices: Iterable[SimDevice | Battery | EVCharger], **options: Any
) -> SimulatedFleet:
    """Start one RM per device in the running loop; options are ``SimulatedRM``'s keywords.
    Use as ``async with await start_fleet(...) as fleet`` or call ``fleet.stop()``."""
    return await SimulatedFleet([SimulatedRM(_as_device(d), url, **options) for d in devices]).start()


async def run_fleet(
    url: str,
    devices: Iterable[SimDevice | Battery | EVCharger],
    *,
    stop: asyncio.Event | None = None,
    status_seconds: float = 60.0,
    **options: Any,
) -> SimulatedFleet:
    """Run the RMs until ``stop`` is set (forever without one), then close them all cleanly."""
    fleet = await start_fleet(url, devices, **options)
    stop = stop or asyncio.Event()
    try:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), status_seconds)
            log.info("fleet status", extra={"fields": fleet.summary()})
    finally:
        await fleet.stop()
    return fleet
