"""Simulated resource managers: one per device, each with its physics loop and its own S2 session
(a WebSocket to the CEM, ``simulator.transport``; the S2 control types, ``simulator.adapters``),
and the fleet of them in one asyncio loop (``start_fleet``, ``run_fleet``). ``ResourceManager`` is
the session, pairing and reconnection every RM shares; ``SimulatedRM`` a battery or EV charger
under FRBC, ``MeteredRM`` a PV site or the base load (NOT_CONTROLABLE, ``simulator.site``):

- instructions are checked semantically (``cariflex.s2.validation.check_instruction``) — refused
  ones get INVALID_CONTENT and InstructionStatusUpdate REJECTED, accepted ones ACCEPTED, then at
  their execution time STARTED and SUCCEEDED (or ABORTED when no longer allowed), followed at once
  by an ActuatorStatus and a PowerMeasurement; RevokeObject of a pending instruction → REVOKED; an
  error in our handlers becomes INVALID_CONTENT instead of PERMANENT_ERROR plus a dead connection;
- reconnection with capped backoff (1 s … 10 s), a new handshake and system description each
  time; without a CEM for ``cem_timeout_seconds`` the device goes idle ("off" for EVs);
- pairing like a real device (cariflex.s2.credentials): each connection presents the device's
  access token as ``Authorization: Bearer`` (read afresh from ``tokens`` on every attempt); a device
  without a token does not connect, and one the CEM refuses (close code 4401/4403/4404, logged
  with the CEM's reason) retries only at the longest backoff; ``wss://`` with ``ca_file``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from s2python.common import (
    InstructionStatus,
    InstructionStatusUpdate,
    ReceptionStatusValues,
    RevokableObjects,
    RevokeObject,
    SessionRequest,
    SessionRequestType,
)
from s2python.connection.asset_details import AssetDetails
from s2python.connection.async_.control_type.class_based import S2ControlType
from s2python.connection.async_.medium.s2_medium import S2MediumException
from s2python.frbc import FRBCActuatorStatus, FRBCInstruction
from s2python.message import S2MessageWithID

from cariflex.fleet import Battery, EVCharger
from cariflex.s2.credentials import CLOSE_REPLACED, REFUSED, TokenFileError
from simulator.adapters import (
    FrbcControl,
    NoSelection,
    NotControllable,
    RmHandler,
    actuator_status,
    asset_details,
    meter_details,
    power_measurement,
    storage_status,
    system_description,
    timer_status,
)
from simulator.devices import SimDevice
from simulator.site import SimMeter
from simulator.transport import Reply, RmConnection, RmMedium, client_ssl_context

log = logging.getLogger("cariflex.sim")

BACKOFF_MIN_SECONDS = 1.0
BACKOFF_MAX_SECONDS = 10.0
KEEP_INSTRUCTIONS = 1000  # instruction histories kept per device
STOP_GRACE_SECONDS = 5.0


def _now() -> datetime:
    return datetime.now(UTC)


class ResourceManager:
    """What every simulated resource manager shares, whatever it offers the CEM: the (re)connecting
    S2 session with its token, backoff and refusals, the messages it sent, and a device loop beside
    it. ``SimulatedRM`` (a battery or EV charger under FRBC) and ``MeteredRM`` (a PV site or the base
    load, NOT_CONTROLABLE) differ only in the control types they offer, their device loop and what
    they do with the CEM's messages. Readable state for tests: ``connected``, ``sent`` (recent
    messages sent), ``sessions`` (count of sessions started), ``closes`` (the CEM's close codes and
    reasons), ``refused`` (the last refusal, None once accepted again).

    ``tokens``: where the device's access token comes from, anything with ``get(name)`` (a dict,
    or a ``cariflex.s2.credentials.TokenFile``); ``ca_file``: CA of the CEM's certificate (wss)."""

    def __init__(
        self,
        details: AssetDetails,
        url: str,
        *,
        measure_seconds: float = 2.0,
        cem_timeout_seconds: float = 30.0,
        backoff_min_seconds: float = BACKOFF_MIN_SECONDS,
        backoff_max_seconds: float = BACKOFF_MAX_SECONDS,
        verify_certificate: bool = True,
        tokens: Any = None,
        ca_file: str | Path | None = None,
    ) -> None:
        self.details = details
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
        self.sessions = 0
        self.sent: deque[S2MessageWithID] = deque(maxlen=500)
        self._connection: RmConnection | None = None
        self._stop = asyncio.Event()
        self._change = asyncio.Event()
        self._cem_timer: asyncio.TimerHandle | None = None
        self._next_delay: float | None = None
        self._selected = False

    @property
    def name(self) -> str:
        return self.details.name or str(self.details.resource_id)

    # --- what a kind of resource manager provides ---------------------------------------------

    def control_types(self) -> list[S2ControlType]:
        """The control types offered in ResourceManagerDetails, each with its activation."""
        raise NotImplementedError

    async def device_loop(self) -> None:
        """Runs beside the sessions for the RM's whole life (physics, periodic reports)."""
        raise NotImplementedError

    def session_ended(self) -> None:
        """A session ended: forget what only held within it."""

    def cem_gone(self) -> None:
        """No CEM for ``cem_timeout_seconds``."""

    def on_session_request(self, request: SessionRequest) -> None:
        terminate = request.request == SessionRequestType.TERMINATE
        self._next_delay = self.backoff_max if terminate else 0.0
        log.info("cem asked to " + request.request.value.lower(), extra=self._fields())

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
        """The device loop plus the S2 session, reconnecting until ``stop()``."""
        physics = asyncio.create_task(self.device_loop())
        backoff = self.backoff_min
        try:
            while not self._stop.is_set():
                token = self._token()
                if token is None:
                    self._next_delay = self.backoff_max  # look again later: it may get paired
                else:
                    medium = RmMedium(self.url, token, self.ssl_context)
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

    def _closed_by_cem(self, medium: RmMedium) -> None:
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

    async def _session(self, medium: RmMedium) -> bool:
        """One S2 session; True when it got as far as a control type (backoff then restarts)."""
        connection = RmConnection(medium, self.name)
        handler = RmHandler(self, self.control_types(), self.details)
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
            self._connection, self.connected = None, False
            self.session_ended()
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
        self.cem_gone()

    # --- outgoing messages ------------------------------------------------------------------

    async def _send(self, message: S2MessageWithID) -> bool:
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


class SimulatedRM(ResourceManager):
    """A battery or EV charger: its physics loop and its S2 session under FRBC. Readable state for
    tests, beside ``ResourceManager``'s: ``power_w``, ``fill_level``, ``mode_label``, ``factor``,
    ``frbc_active``, ``instruction_statuses`` (instruction id → statuses sent), ``rejections``
    (id → reason)."""

    def __init__(self, device: SimDevice, url: str, **options: Any) -> None:
        super().__init__(asset_details(device), url, **options)
        self.device = device
        self.frbc_active = False
        self.instruction_statuses: dict[uuid.UUID, list[InstructionStatus]] = {}
        self.rejections: dict[uuid.UUID, str] = {}
        self._pending: dict[uuid.UUID, asyncio.Task[None]] = {}
        self._last_advance = time.monotonic()
        self._mode_unreported = False  # the device changed mode on its own since the last ActuatorStatus

    def control_types(self) -> list[S2ControlType]:
        return [FrbcControl(self), NoSelection(self)]

    def session_ended(self) -> None:
        self.frbc_active = False
        for task in self._pending.values():
            task.cancel()
        self._pending.clear()

    # --- readable state ---------------------------------------------------------------------

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

    def cem_gone(self) -> None:
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
        changed, stopped = self.device.advance(elapsed, _now())
        if changed:
            log.info("ev " + ("arrived" if self.device.present else "left"), extra=self._fields())
        if stopped:
            log.info("storage limit reached: device idle", extra=self._fields(fill_level=self.fill_level))
        if changed or stopped:
            self._mode_unreported = True
        return changed or stopped

    async def device_loop(self) -> None:
        deadline = time.monotonic()
        while True:
            deadline += self.measure_seconds
            await asyncio.sleep(max(0.0, deadline - time.monotonic()))
            self._advance()
            if self.frbc_active and self._mode_unreported:
                await self._send(self._actuator_status())
            if self.frbc_active:
                await self._send(power_measurement(self.device, _now()))
                await self._send(storage_status(self.device))
            self._changed()

    # --- outgoing messages ------------------------------------------------------------------

    def _actuator_status(self) -> FRBCActuatorStatus:
        self._mode_unreported = False
        return actuator_status(self.device)

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
        await self._send(system_description(self.device, _now()))
        await self._send(storage_status(self.device))
        await self._send(self._actuator_status())
        await self._send(power_measurement(self.device, _now()))
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
            await self._send(timer_status(self.device, timer_id, finished_at))
        await self._send(self._actuator_status())
        await self._send(power_measurement(self.device, _now()))
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


class MeteredRM(ResourceManager):
    """A metered resource (a PV site, the base load): the CEM selects NOT_CONTROLABLE and it
    reports a PowerMeasurement at once and every ``measure_seconds`` (W, consumption positive: a
    producing PV site is negative). It takes no instruction: one gets INVALID_CONTENT, counted in
    ``instructions_refused``. Readable state beside ``ResourceManager``'s: ``power_w`` (the last
    reading), ``metering`` (NOT_CONTROLABLE active)."""

    def __init__(self, meter: SimMeter, url: str, **options: Any) -> None:
        super().__init__(meter_details(meter), url, **options)
        self.meter = meter
        self.metering = False
        self.instructions_refused = 0
        meter.sample()

    @property
    def power_w(self) -> float:
        return self.meter.power_w

    def control_types(self) -> list[S2ControlType]:
        return [NotControllable(self)]

    def session_ended(self) -> None:
        self.metering = False

    async def device_loop(self) -> None:
        deadline = time.monotonic()
        while True:
            deadline += self.measure_seconds
            await asyncio.sleep(max(0.0, deadline - time.monotonic()))
            self.meter.sample()
            if self.metering:
                await self._send(power_measurement(self.meter, _now()))
            self._changed()

    async def on_metering_activated(self) -> None:
        self._selected, self.refused = True, None
        self.metering = True
        self.meter.sample()
        await self._send(power_measurement(self.meter, _now()))
        log.info("metered (NOT_CONTROLABLE)", extra=self._fields(power_w=self.power_w))
        self._changed()

    def on_metering_deactivated(self) -> None:
        self.metering = False
        self._changed()

    async def on_instruction(self, instruction: FRBCInstruction, reply: Reply) -> None:
        self.instructions_refused += 1
        log.warning(
            "instruction to a metered resource refused", extra=self._fields(instruction=str(instruction.id))
        )
        await reply.send(
            ReceptionStatusValues.INVALID_CONTENT, f"{self.name} is NOT_CONTROLABLE: it takes no instruction"
        )
        self._changed()

    async def on_revoke(self, revoke: RevokeObject, reply: Reply) -> None:
        await reply.send(
            ReceptionStatusValues.INVALID_CONTENT, f"{self.name} is NOT_CONTROLABLE: nothing to revoke"
        )


# --- many RMs in one loop -------------------------------------------------------------------------


class SimulatedFleet:
    """Resource managers running in this event loop; ``fleet[name]`` is a ``SimulatedRM`` (a
    battery or EV charger) or a ``MeteredRM`` (a PV site, the base load)."""

    def __init__(self, rms: list[ResourceManager]) -> None:
        self.rms = {rm.name: rm for rm in rms}
        self._tasks: list[asyncio.Task[None]] = []

    def __getitem__(self, name: str) -> Any:
        return self.rms[name]

    def __iter__(self) -> Iterator[Any]:
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

    async def wait_until(self, predicate: Callable[[Any], bool], timeout: float) -> None:
        """Wait until ``predicate(rm)`` holds for every RM."""
        async with asyncio.timeout(timeout):
            await asyncio.gather(*(rm.wait_until(lambda rm=rm: predicate(rm), timeout) for rm in self))

    def summary(self) -> dict[str, Any]:
        devices = [rm for rm in self if isinstance(rm, SimulatedRM)]
        meters = [rm for rm in self if isinstance(rm, MeteredRM)]
        return {
            "devices": len(devices),
            "connected": sum(rm.connected for rm in devices),
            "frbc": sum(rm.frbc_active for rm in devices),
            "power_kw": round(sum(rm.power_w for rm in devices) / 1000, 3),
            "meters": len(meters),
            "metering": sum(rm.metering for rm in meters),
            "pv_kw": round(-sum(rm.power_w for rm in meters if rm.meter.kind == "pv") / 1000, 3) + 0.0,
            "base_load_kw": round(sum(rm.power_w for rm in meters if rm.meter.kind != "pv") / 1000, 3),
        }

    async def __aenter__(self) -> SimulatedFleet:
        return await self.start() if not self._tasks else self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


def _as_rm(
    device: SimDevice | SimMeter | Battery | EVCharger, url: str, options: dict[str, Any]
) -> ResourceManager:
    if isinstance(device, SimMeter):
        return MeteredRM(device, url, **options)
    if isinstance(device, Battery):
        device = SimDevice.battery(device)
    elif isinstance(device, EVCharger):
        device = SimDevice.ev_charger(device)
    return SimulatedRM(device, url, **options)


async def start_fleet(
    url: str, devices: Iterable[SimDevice | SimMeter | Battery | EVCharger], **options: Any
) -> SimulatedFleet:
    """Start one RM per device or meter in the running loop; options are ``ResourceManager``'s
    keywords. Use as ``async with await start_fleet(...) as fleet`` or call ``fleet.stop()``."""
    return await SimulatedFleet([_as_rm(d, url, options) for d in devices]).start()


async def run_fleet(
    url: str,
    devices: Iterable[SimDevice | SimMeter | Battery | EVCharger],
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
