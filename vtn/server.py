"""The VTN process: openleadr's OpenADRServer, answered from the persistent store.

openleadr's own queues live in memory: a restart loses every event, the modification API is
missing, ramp-up periods are dropped by ``add_raw_event`` and a modification while a VEN's
answer is in flight costs opt responses (452). We therefore run openleadr in its *external
polling* mode and answer every poll from the store:

- ``on_poll``: distribute the VEN's events whenever one of them has a modification number or a
  status (far → near → active) the VEN has not been sent yet; what was sent is stored first.
- ``on_request_event`` (a VEN's initial sync): all its events.
- ``oadrCreatedEvent`` (replaced handler): every opt response is stored under the modification
  number the VEN answered, so nothing is lost when a modification crosses the answer.
- ``oadrUpdateReport`` (replaced handler): every value is stored, also after a restart, when
  openleadr would no longer know the report's callback.

Events are built here as ``openleadr.objects.Event`` with their own ActivePeriod, so
ramp-up, notification and recovery periods reach the VEN. The admin API, the day-ahead price
job and the health check run in the same asyncio loop.

No store call runs on that loop while the VTN serves: the OpenADR side's (venID lookup, poll,
registration, opt responses, reports, last-poll times) run one after the other on one store
thread, in the order their messages arrived, and the admin API's on two threads of its own; the
XML of the VENs' messages is parsed and rendered on a thread too. A slow
store (a CLI holding SQLite's write lock, a busy PostgreSQL) delays the messages that need it,
never the loop: the admin API and the other VENs' connections keep being answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import secrets
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web
from openleadr import OpenADRServer, errors, messaging, objects
from openleadr.service import VTNService
from sqlalchemy import delete, select

from vtn.actions import event_status
from vtn.events import MAX_LOAD_CONTROL
from vtn.openadr_edge import MAX_BODY_BYTES, OpenAdrEdge
from vtn.store import (
    Delivery,
    Event,
    OptResponse,
    ReportRegistration,
    ReportValue,
    Store,
    Ven,
    utcnow,
)

log = logging.getLogger("cariflex.vtn")

PATH_PREFIX = "/OpenADR2/Simple/2.0b"
LAST_POLL_FLUSH_S = 2.0
# Re-read the generation on every poll: one indexed one-row SELECT, and an operator change is
# seen by the very next poll (a 100 ms throttle here cost ~0.1 s of delivery latency).
GENERATION_CHECK_S = 0.0
# The reload reads events by start (indexed) back to this far: no event lasts longer, so one
# that started earlier has ended more than the day kept for late answers ago.
LONGEST_EVENT = max(MAX_LOAD_CONTROL, timedelta(days=1))
ADMIN_THREADS = 2


@dataclass
class VtnOptions:
    host: str = "127.0.0.1"
    port: int = 8080
    admin_port: int = 8081
    poll_seconds: float = 10.0
    vtn_id: str = "cariflex-vtn"
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_ca: str | None = None
    insecure: bool = False
    require_signatures: bool = False
    admin_token: str = ""
    day_ahead_time: str | None = "13:00"
    price_file: str | None = None

    @property
    def tls(self) -> bool:
        return bool(self.tls_cert and self.tls_key and self.tls_ca)


class StoreView:
    """The store as the poll path needs it, cached; reloaded when an operator write happened."""

    def __init__(self, store: Store):
        self.store = store
        self.generation = -1
        self._checked_at = -1.0
        self.events: list[Event] = []
        self.vens_by_id: dict[str, Ven] = {}
        self.deliveries: dict[str, dict[str, tuple[int, str]]] = {}
        self.answered: set[tuple[str, str, int]] = set()  # (ven_id, event_id, modification number)
        self.last_polls: dict[str, datetime] = {}
        # When each (VEN, event) was last sent, from the store at start: drives re-sending.
        self.sent_at: dict[tuple[str, str], datetime] = {}
        # One reload at a time (the store thread runs them; tests and start-up call them directly).
        self._lock = threading.Lock()

    def refresh(self, force: bool = False) -> None:
        with self._lock:
            self._refresh(force)

    def _refresh(self, force: bool) -> None:
        moment = time.monotonic()
        if not force and moment - self._checked_at < GENERATION_CHECK_S:
            return
        self._checked_at = moment
        generation = self.store.generation()
        if generation == self.generation and not force:
            return
        force = force or self.generation < 0  # the first load also reads deliveries and answers
        horizon = utcnow() - timedelta(days=1)
        with self.store.session() as session:
            events = (
                session.execute(
                    select(Event).where(Event.start >= horizon - LONGEST_EVENT).order_by(Event.start)
                )
                .scalars()
                .all()
            )
            # Completed events stay out of distributions; keep a day for late answers.
            self.events = [e for e in events if e.start.timestamp() + e.duration_s > horizon.timestamp()]
            self.vens_by_id = {v.ven_id: v for v in session.execute(select(Ven)).scalars()}
            if force:
                self.deliveries = {}
                for d in session.execute(select(Delivery)).scalars():
                    self.deliveries.setdefault(d.ven_id, {})[d.event_id] = (d.modification_number, d.status)
                    self.sent_at[(d.ven_id, d.event_id)] = d.delivered_at
                self.answered = {
                    (o.ven_id, o.event_id, o.modification_number)
                    for o in session.execute(select(OptResponse)).scalars()
                }
        self.generation = generation

    def events_for(self, ven: Ven, now: datetime) -> list[tuple[Event, str]]:
        """The events a VEN should hold now, with their status."""
        out = []
        for event in self.events:
            status = event_status(event, now)
            if status == "completed":
                continue
            if event.ven_names is not None and ven.ven_name not in event.ven_names:
                # A modification took this VEN off the event: it must hear that it is cancelled for it
                # (openleadr VENs do not cancel an event that merely disappears).
                if event.event_id not in self.deliveries.get(ven.ven_id, {}):
                    continue
                status = "cancelled"
            if status == "cancelled" and (
                (ven.ven_id, event.event_id, event.modification_number) in self.answered
                or event.event_id not in self.deliveries.get(ven.ven_id, {})
            ):
                continue  # the VEN confirmed the cancellation, or never knew the event
            out.append((event, status))
        return out


def to_openadr(event: Event, ven: Ven, status: str) -> objects.Event:
    """The openleadr object for one VEN, with the periods openleadr's add_raw_event would drop."""
    intervals = [
        objects.Interval(
            dtstart=i.start, duration=timedelta(seconds=i.duration_s), signal_payload=i.value, uid=i.uid
        )
        for i in event.intervals
    ]
    measurement = objects.Measurement(**event.measurement) if event.measurement else None
    if event.resource_targets:
        targets = [objects.Target(resource_id=r) for r in event.resource_targets]
    else:
        targets = [objects.Target(ven_id=ven.ven_id)]
    active_period = objects.ActivePeriod(
        dtstart=event.start,
        duration=timedelta(seconds=event.duration_s),
        ramp_up_period=_delta(event.ramp_up_s),
        notification_period=_delta(event.notification_s),
        recovery_period=_delta(event.recovery_s),
    )
    event_object = objects.Event(
        event_descriptor=objects.EventDescriptor(
            event_id=event.event_id,
            modification_number=event.modification_number,
            market_context=event.market_context,
            event_status=status,
            created_date_time=event.created_at,
            modification_date_time=event.modified_at,
            priority=event.priority,
        ),
        event_signals=[
            objects.EventSignal(
                intervals=intervals,
                signal_name=event.signal_name,
                signal_type=event.signal_type,
                signal_id=f"{event.event_id}-0",
                measurement=measurement,
                current_value=_current_value(event, status),
            )
        ],
        targets=targets,
        active_period=active_period,
        response_required=event.response_required,
    )
    # openleadr gap: Event.__post_init__ overwrites event_status with the one computed from the
    # active period, so a cancelled event would go out as far/near/active (test_vtn_units).
    event_object.event_descriptor.event_status = status
    return event_object


def _delta(seconds: int | None) -> timedelta | None:
    return None if seconds is None else timedelta(seconds=seconds)


def _current_value(event: Event, status: str) -> float:
    if status == "active":
        now = utcnow()
        for interval in event.intervals:
            if interval.start <= now < interval.start + timedelta(seconds=interval.duration_s):
                return interval.value
    return 0.0


class CariflexVtn:
    """The VTN service: OpenADR endpoint, admin API and day-ahead job in one asyncio loop."""

    def __init__(self, store: Store, options: VtnOptions):
        self.store = store
        self.options = options
        self.view = StoreView(store)
        self.resend_after = max(timedelta(seconds=5), 3 * timedelta(seconds=options.poll_seconds))
        self.stopping = asyncio.Event()
        # Store calls leave the event loop (see the module's docstring): the OpenADR side's on one
        # thread, so they keep their arrival order and never wait on each other for SQLite's write
        # lock; the admin API's on threads of their own, so the operator is answered under load.
        self.store_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vtn-store")
        self.admin_threads = ThreadPoolExecutor(max_workers=ADMIN_THREADS, thread_name_prefix="vtn-admin")
        self.port: int | None = None
        self.started_at = datetime.now(UTC)
        self.admin_port: int | None = None
        tls = options.tls
        self.server = OpenADRServer(
            vtn_id=options.vtn_id,
            http_host=options.host,
            http_port=options.port,
            http_path_prefix=PATH_PREFIX,
            requested_poll_freq=timedelta(seconds=options.poll_seconds),
            http_cert=options.tls_cert if tls else None,
            http_key=options.tls_key if tls else None,
            http_ca_file=options.tls_ca if tls else None,
            cert=options.tls_cert if tls else None,  # also signs outgoing messages
            key=options.tls_key if tls else None,
            ven_lookup=self.ven_lookup,
            verify_message_signatures=False,  # the edge checks signatures (standard and high security)
            show_fingerprint=False,
        )
        # openleadr's services answer; our edge guards their routes (vtn/openadr_edge.py says why).
        self.edge = OpenAdrEdge(
            self.server.services,
            vtn_id=options.vtn_id,
            ven_lookup=self.ven_lookup_off_loop,
            require_signatures=options.require_signatures,
            create_message=VTNService._create_message,
        )
        self.edge.poll_seconds = timedelta(seconds=options.poll_seconds)
        # Parsing the VENs' XML and rendering the answers (a 24-interval distribution takes ~2 ms
        # per VEN) on a thread too: with 200 VENs the loop would otherwise be busy for whole
        # fractions of a second after each event, and the admin API with it.
        self.xml_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vtn-xml")
        self.edge.cpu_executor = self.xml_thread
        # openleadr's templates are files of its package: checking each one's mtime at every
        # message (jinja's auto_reload) cost six stat() calls per poll.
        messaging.TEMPLATES.auto_reload = False
        app = web.Application(client_max_size=MAX_BODY_BYTES)
        app.add_routes(self.edge.routes(PATH_PREFIX))
        self.server.app = app
        self.server.add_handler("on_create_party_registration", self.on_create_party_registration)
        self.server.add_handler("on_poll", self.on_poll)  # external mode: the store is the queue
        self.server.add_handler("on_request_event", self.on_request_event)
        self.server.add_handler("on_register_report", self.on_register_report)
        self.server.add_handler("on_cancel_party_registration", self.on_cancel_party_registration)
        events = self.server.services["event_service"]
        events.handlers["oadrCreatedEvent"] = self.on_created_event
        reports = self.server.services["report_service"]
        reports.handlers["oadrUpdateReport"] = self.on_update_report
        # What each r_id measures is stored before openleadr answers the registration: the console
        # and `event show` read power and delivered-% streams by it (openleadr keeps it in memory).
        self._openleadr_register_report = reports.handlers["oadrRegisterReport"]
        reports.handlers["oadrRegisterReport"] = self.on_register_report_message

    # --- off the loop ---------------------------------------------------------------------------

    async def in_store_thread(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``function`` on the store thread (OpenADR side), awaited without blocking the loop."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.store_thread, functools.partial(function, *args, **kwargs))

    async def in_admin_thread(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``function`` on an admin API thread, awaited without blocking the loop."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.admin_threads, functools.partial(function, *args, **kwargs))

    # --- registration ---------------------------------------------------------------------------

    async def ven_lookup_off_loop(self, ven_id: str) -> dict[str, Any] | None:
        return await self.in_store_thread(self.ven_lookup, ven_id)

    def ven_lookup(self, ven_id: str) -> dict[str, Any] | None:
        self.view.refresh()
        ven = self.view.vens_by_id.get(ven_id)
        if ven is None:
            return None
        return {
            "ven_id": ven.ven_id,
            "ven_name": ven.ven_name,
            "fingerprint": ven.fingerprint,
            "registration_id": ven.registration_id,
        }

    async def on_create_party_registration(self, payload: dict[str, Any]):
        return await self.in_store_thread(self._register, payload)

    def _register(self, payload: dict[str, Any]):
        """Register a provisioned VEN (with its certificate over TLS); refuse anyone else with 463.

        One answer for both refusals, so a caller cannot tell a provisioned name from an unknown one.
        """
        name = payload.get("ven_name")
        refusal = "this VEN is not provisioned on this VTN with this certificate"
        with self.store.session() as session:
            ven = session.execute(select(Ven).where(Ven.ven_name == name)).scalar_one_or_none()
            if ven is None:
                log.warning("refused registration: VEN not provisioned", extra={"fields": {"ven_name": name}})
                raise errors.NotRegisteredOrAuthorizedError(refusal)
            if self.options.tls:
                presented = payload.get("fingerprint")
                if ven.fingerprint is None or presented != ven.fingerprint:
                    log.warning(
                        "refused registration: certificate fingerprint does not match",
                        # the operator's log may name both; the answer on the wire names neither
                        extra={
                            "fields": {
                                "ven_name": name,
                                "presented": presented,
                                "provisioned": ven.fingerprint,
                            }
                        },
                    )
                    raise errors.NotRegisteredOrAuthorizedError(refusal)
            if payload.get("ven_id") and payload["ven_id"] != ven.ven_id:
                raise errors.InvalidIdError("this venID does not belong to this VEN; register without one")
            ven.registration_id = f"reg-{secrets.token_hex(6)}"
            ven.registered_at = utcnow()
            Store.bump_generation(session)
            result = (ven.ven_id, ven.registration_id)
        log.info("VEN registered", extra={"fields": {"ven_name": name, "ven_id": result[0]}})
        self.view.refresh(force=False)
        return result

    async def on_cancel_party_registration(self, payload: dict[str, Any]):
        return await self.in_store_thread(self._cancel_registration, payload)

    def _cancel_registration(self, payload: dict[str, Any]):
        """The VEN leaves: its registration ends (it must register again to receive events)."""
        ven_id, registration_id = payload.get("ven_id"), payload.get("registration_id")
        with self.store.session() as session:
            ven = session.execute(select(Ven).where(Ven.ven_id == ven_id)).scalar_one_or_none()
            if ven is None or ven.registration_id != registration_id:
                raise errors.InvalidIdError("registrationID is not this VEN's current registration")
            ven.registration_id = None
            Store.bump_generation(session)
        log.info("VEN cancelled its registration", extra={"fields": {"ven_id": ven_id}})
        self.view.refresh()
        return "oadrCanceledPartyRegistration", {"registration_id": registration_id, "ven_id": ven_id}

    # --- events ---------------------------------------------------------------------------------

    def _ven(self, ven_id: str) -> Ven | None:
        self.view.refresh()
        return self.view.vens_by_id.get(ven_id)

    def _distribution(self, ven: Ven, now: datetime, *, force: bool) -> list[objects.Event] | None:
        current = self.view.events_for(ven, now)
        delivered = self.view.deliveries.setdefault(ven.ven_id, {})
        wanted = {e.event_id: (e.modification_number, status) for e, status in current}
        changed = any(delivered.get(eid) != state for eid, state in wanted.items())
        # At least once: a distribution the VEN never answered (lost on the way, or the VTN died
        # between storing and sending it) goes out again after a few poll periods.
        unanswered = any(
            e.response_required == "always"
            and (ven.ven_id, e.event_id, e.modification_number) not in self.view.answered
            and now - self.view.sent_at.get((ven.ven_id, e.event_id), now) > self.resend_after
            for e, _ in current
        )
        if not (force or changed or unanswered):
            return None
        # What was sent is stored before the answer goes out, so a restarted VTN knows it.
        with self.store.session() as session:
            for event_id, (number, status) in wanted.items():
                session.merge(
                    Delivery(
                        ven_id=ven.ven_id,
                        event_id=event_id,
                        modification_number=number,
                        status=status,
                        delivered_at=now,
                    )
                )
        delivered.update(wanted)
        for event_id in wanted:
            self.view.sent_at[(ven.ven_id, event_id)] = now
        return [to_openadr(e, ven, status) for e, status in current]

    async def on_poll(self, ven_id: str):
        return await self.in_store_thread(self._poll, ven_id)

    def _poll(self, ven_id: str):
        now = utcnow()
        ven = self._ven(ven_id)
        if ven is None:
            return None
        self.view.last_polls[ven_id] = now
        events = self._distribution(ven, now, force=False)
        if events is None:
            return None
        log.info("distributing events", extra={"fields": {"ven_id": ven_id, "events": len(events)}})
        return "oadrDistributeEvent", {"events": events}

    async def on_request_event(self, ven_id: str):
        return await self.in_store_thread(self._request_event, ven_id)

    def _request_event(self, ven_id: str):
        ven = self._ven(ven_id)
        if ven is None:
            return None
        events = self._distribution(ven, utcnow(), force=True)
        return events or None

    async def on_created_event(self, payload: dict[str, Any]):
        return await self.in_store_thread(self._created_event, payload)

    def _created_event(self, payload: dict[str, Any]):
        ven_id = payload["ven_id"]
        now = utcnow()
        responses = payload.get("event_responses") or []
        # All or nothing: an answer naming an event this VEN was never sent is refused whole (a
        # modification crossing the answer is fine: the number answered is kept, see above).
        sent = self.view.deliveries.get(ven_id, {})
        unknown = sorted({str(r.get("event_id")) for r in responses if r.get("event_id") not in sent})
        if unknown:
            shown = ", ".join(u[:60] for u in unknown[:3])
            raise errors.InvalidIdError(f"eventID {shown} was never sent to this VEN")
        keys = []
        with self.store.session() as session:
            for response in responses:
                key = (ven_id, response["event_id"], int(response["modification_number"]))
                existing = session.execute(
                    select(OptResponse).where(
                        OptResponse.ven_id == key[0],
                        OptResponse.event_id == key[1],
                        OptResponse.modification_number == key[2],
                    )
                ).scalar_one_or_none()
                if existing is None:
                    session.add(
                        OptResponse(
                            ven_id=key[0],
                            event_id=key[1],
                            modification_number=key[2],
                            opt_type=response["opt_type"],
                            received_at=now,
                        )
                    )
                else:
                    existing.opt_type, existing.received_at = response["opt_type"], now
                keys.append(key)
                log.info(
                    "opt response",
                    extra={
                        "fields": {
                            "ven_id": ven_id,
                            "event_id": key[1],
                            "modification_number": key[2],
                            "opt": response["opt_type"],
                        }
                    },
                )
        self.view.answered.update(keys)  # once stored
        return "oadrResponse", {}

    # --- reports --------------------------------------------------------------------------------

    def _store_report_registrations(self, payload: dict[str, Any]) -> None:
        """What each r_id measures, replacing the VEN's earlier registration of the same r_id."""
        rows = []
        for report in payload.get("reports") or []:
            for description in report.get("report_descriptions") or []:
                measurement = description.get("measurement") or {}
                ids = (report.get("report_specifier_id"), description.get("r_id"))
                if any(not isinstance(i, str) or not 0 < len(i) <= 100 for i in ids):
                    continue  # not what the store's columns hold (nor what a reading could name)
                rows.append(
                    ReportRegistration(
                        ven_id=payload.get("ven_id"),
                        report_specifier_id=report.get("report_specifier_id"),
                        r_id=description.get("r_id"),
                        description={
                            "report_name": report.get("report_name"),
                            "resource_id": (description.get("report_data_source") or {}).get("resource_id"),
                            "measurement": measurement.get("description") or measurement.get("name"),
                            "unit": measurement.get("unit"),
                            "scale": measurement.get("scale"),
                        },
                    )
                )
        if rows:
            with self.store.session() as session:
                session.execute(
                    delete(ReportRegistration).where(
                        ReportRegistration.ven_id == payload.get("ven_id"),
                        ReportRegistration.r_id.in_([r.r_id for r in rows]),
                    )
                )
                session.add_all(rows)

    async def on_register_report_message(self, payload: dict[str, Any]):
        try:
            await self.in_store_thread(self._store_report_registrations, payload)
        except Exception:  # the console's picture lacks these streams; the VEN's reports still go on
            log.exception(
                "could not store report registrations", extra={"fields": {"ven_id": payload.get("ven_id")}}
            )
        return await self._openleadr_register_report(payload)

    def on_register_report(
        self, ven_id, resource_id, measurement, unit, scale, min_sampling_interval, max_sampling_interval
    ):
        """Accept every TELEMETRY_USAGE stream offered; values are stored by on_update_report."""
        # As fast as the VEN offers, within 1 s .. 15 min.
        period = min_sampling_interval or timedelta(seconds=10)
        period = min(max(period, timedelta(seconds=1)), timedelta(minutes=15))
        return (self._ignore_values, period)

    @staticmethod
    def _ignore_values(data):  # the replaced oadrUpdateReport handler has stored them already
        return None

    async def on_update_report(self, payload: dict[str, Any]):
        ven_id = payload.get("ven_id")
        rows = []
        for report in payload.get("reports") or []:
            for interval in report.get("intervals") or []:
                body = interval.get("report_payload") or {}
                if "value" not in body or interval.get("dtstart") is None:
                    continue
                value = float(body["value"])
                if not math.isfinite(value):  # xs:float admits NaN and INF; a reading does not
                    raise errors.InvalidDataError(f"report value {body['value']!r} is not a finite number")
                for name in ("r_id", "report_request_id"):
                    text = body.get(name) if name == "r_id" else report.get(name)
                    if text is not None and len(str(text)) > 100:
                        raise errors.InvalidDataError(f"{name} is longer than 100 characters")
                rows.append(
                    ReportValue(
                        ven_id=ven_id,
                        r_id=body.get("r_id"),
                        report_request_id=report.get("report_request_id"),
                        at=interval["dtstart"],
                        value=value,
                    )
                )
        if rows:
            await self.in_store_thread(self._store_rows, rows)
        return "oadrUpdatedReport", {}

    def _store_rows(self, rows: list[Any]) -> None:
        with self.store.session() as session:
            session.add_all(rows)

    def security_mode(self) -> str:
        if not self.options.tls:
            return "none (plain HTTP: loopback or a closed network only)"
        if self.options.require_signatures:
            return "high (mutual TLS and XML signatures required)"
        return "standard (mutual TLS; XML signatures checked when present)"

    # --- lifecycle ------------------------------------------------------------------------------

    async def _flush_last_polls(self) -> None:
        # On the store thread, where the polls note their times: nothing changes them meanwhile.
        await self.in_store_thread(self._flush_polls)

    def _flush_polls(self) -> None:
        if not self.view.last_polls:
            return
        polls = dict(self.view.last_polls)
        self.store.record_polls(polls)
        for ven_id, at in polls.items():  # forget only what was written (a failed write is retried)
            if self.view.last_polls.get(ven_id) == at:
                del self.view.last_polls[ven_id]

    async def _last_poll_writer(self) -> None:
        while not self.stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), LAST_POLL_FLUSH_S)
            try:
                await self._flush_last_polls()
            except Exception:  # informational data: log, keep the VTN serving, try again next time
                log.exception("could not store last-poll times")

    async def run(self) -> None:
        from vtn import admin_api
        from vtn.scheduler import start_day_ahead

        self.view.refresh(force=True)
        # One access-log line per poll (200 VENs at 1 s: 17 million a day) drowned the VTN's own
        # lines (registrations, distributions, opt responses, refusals); errors still reach the log.
        logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
        await self.server.run()
        self.port = _bound_port(self.server.app_runner)
        admin_runner = await admin_api.start(self, self.options.host, self.options.admin_port)
        self.admin_port = _bound_port(admin_runner)
        scheduler = start_day_ahead(self)
        writer = asyncio.create_task(self._last_poll_writer())
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.stopping.set)
        scheme = "https" if self.options.tls else "http"
        log.info(
            "vtn ready",
            extra={
                "fields": {
                    "url": f"{scheme}://{self.options.host}:{self.port}{PATH_PREFIX}",
                    "port": self.port,
                    "admin_port": self.admin_port,
                    "poll_seconds": self.options.poll_seconds,
                    "tls": self.options.tls,
                    "security": self.security_mode(),
                    "store": self.store.engine.url.render_as_string(hide_password=True),
                }
            },
        )
        await self.stopping.wait()
        log.info("vtn stopping")
        if scheduler is not None:
            scheduler.shutdown(wait=False)
        await writer
        await admin_runner.cleanup()
        await self.server.app_runner.cleanup()
        self.store_thread.shutdown(wait=True)
        self.xml_thread.shutdown(wait=True)
        self.admin_threads.shutdown(wait=True)
        self.store.dispose()
        log.info("vtn stopped")


def _bound_port(runner) -> int:
    """The port actually bound (the options may say 0 = any free port)."""
    for address in runner.addresses:
        if isinstance(address, tuple):
            return int(address[1])
    raise RuntimeError("server has no TCP address")
