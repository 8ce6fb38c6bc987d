"""What an operator can do to the VTN: the one implementation behind the CLI and the admin API.

Each function runs in one store transaction: it validates everything first and writes only
when the whole request is valid, so a refused request leaves the store exactly as it was.
Results are plain JSON-able dicts, printed by the CLI and returned by the API alike.
"""

from __future__ import annotations

import re
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from cariflex.json_input import clip
from vtn.events import (
    RESOURCE_ID,
    SITE_TZ,
    VEN_NAME,
    Conflict,
    EventDraft,
    InputError,
    NotFound,
    load_control_draft,
    price_draft,
    status_at,
)
from vtn.store import Event, EventHistory, Interval, OptResponse, ReportRegistration, ReportValue, Store, Ven

# The inputs of each event kind, by the names the CLI options and the admin API share.
PRICE_FIELDS = frozenset(
    {"start", "prices", "prices_name", "currency", "unit", "targets", "vens", "allow_past"}
)
LOAD_CONTROL_FIELDS = frozenset(
    {"start", "duration", "levels", "ramp_up", "notification", "recovery", "targets", "vens", "allow_past"}
)

_FINGERPRINT = re.compile(r"^([0-9A-F]{2}:){9}[0-9A-F]{2}$")


def _seconds(value: timedelta | None) -> int | None:
    return None if value is None else int(value.total_seconds())


def _delta(seconds: int | None) -> timedelta | None:
    return None if seconds is None else timedelta(seconds=seconds)


def event_status(event: Event, now: datetime) -> str:
    return status_at(
        start=event.start,
        duration=timedelta(seconds=event.duration_s),
        ramp_up=_delta(event.ramp_up_s),
        cancelled=event.cancelled,
        now=now,
    )


def entered_values(event: Event) -> list[float]:
    """Interval values in the unit the operator used (prices travel per kWh)."""
    values = [i.value for i in event.intervals]
    if event.kind == "price" and event.unit and event.unit.endswith("/MWh"):
        return [round(v * 1000, 9) for v in values]
    return values


def event_dict(event: Event, now: datetime, *, with_intervals: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {
        "event_id": event.event_id,
        "kind": event.kind,
        "signal": f"{event.signal_name}/{event.signal_type}",
        "status": event_status(event, now),
        "modification_number": event.modification_number,
        "start": event.start.astimezone(SITE_TZ).isoformat(),
        "end": (event.start + timedelta(seconds=event.duration_s)).astimezone(SITE_TZ).isoformat(),
        "unit": event.unit or "fraction of capacity",
        "ramp_up": _iso(event.ramp_up_s),
        "notification": _iso(event.notification_s),
        "recovery": _iso(event.recovery_s),
        "targets": event.resource_targets,
        "vens": event.ven_names or "all",
        "source": event.source,
        "modified_at": event.modified_at.isoformat(),
    }
    if with_intervals:
        out["values"] = entered_values(event)
    return out


def _iso(seconds: int | None) -> str | None:
    if seconds is None:
        return None
    import isodate

    return isodate.duration_isoformat(timedelta(seconds=seconds))


def _snapshot(event: Event) -> dict[str, Any]:
    return {
        "start": event.start.isoformat(),
        "duration_s": event.duration_s,
        "values": [i.value for i in event.intervals],
        "ramp_up_s": event.ramp_up_s,
        "cancelled": event.cancelled,
    }


def _apply(event: Event, draft: EventDraft) -> None:
    event.kind = draft.kind
    event.signal_name = draft.signal_name
    event.signal_type = draft.signal_type
    event.measurement = draft.measurement
    event.unit = draft.unit
    event.start = draft.start
    event.duration_s = int(draft.duration.total_seconds())
    event.ramp_up_s = _seconds(draft.ramp_up)
    event.notification_s = _seconds(draft.notification)
    event.recovery_s = _seconds(draft.recovery)
    event.resource_targets = draft.resource_targets
    event.ven_names = draft.ven_names
    event.intervals = [
        Interval(uid=i, start=piece.start, duration_s=int(piece.duration.total_seconds()), value=piece.value)
        for i, piece in enumerate(draft.intervals)
    ]


def _get_event(session: Session, event_id: str) -> Event:
    # Checked before the lookup: a NUL or an over-long id would make PostgreSQL fail, not answer.
    event = session.get(Event, event_id) if RESOURCE_ID.match(event_id or "") else None
    if event is None:
        raise NotFound(f"event {clip(repr(event_id))} does not exist (see `cariflex-vtn event list`)")
    return event


def _check_vens(session: Session, names: list[str] | None) -> None:
    if not names:
        return
    known = set(session.execute(select(Ven.ven_name).where(Ven.ven_name.in_(names))).scalars())
    unknown = [n for n in names if n not in known]
    if unknown:
        raise InputError(f"--vens: {', '.join(unknown)} not provisioned (see `cariflex-vtn ven list`)")


# --- events -------------------------------------------------------------------------------------


def create_event(store: Store, draft: EventDraft, *, now: datetime | None = None) -> dict[str, Any]:
    now = now or datetime.now(UTC)
    with store.write_session() as session:
        _check_vens(session, draft.ven_names)
        event = Event(
            event_id=f"evt-{now.astimezone(SITE_TZ):%Y%m%d}-{secrets.token_hex(4)}",
            market_context="http://cariflex.example/programs/martinique",
            modification_number=0,
            source=draft.source,
            created_at=now,
            modified_at=now,
        )
        _apply(event, draft)
        session.add(event)
        session.flush()
        session.add(
            EventHistory(
                event_id=event.event_id,
                modification_number=0,
                action="create",
                at=now,
                snapshot=_snapshot(event),
            )
        )
        return event_dict(event, now)


def create_price_event(store: Store, now: datetime | None = None, **inputs: Any) -> dict[str, Any]:
    return create_event(store, price_draft(now=now, **inputs), now=now)


def create_load_control_event(store: Store, now: datetime | None = None, **inputs: Any) -> dict[str, Any]:
    return create_event(store, load_control_draft(now=now, **inputs), now=now)


def list_events(store: Store, *, active: bool = False, now: datetime | None = None) -> list[dict[str, Any]]:
    now = now or datetime.now(UTC)
    with store.session() as session:
        events = session.execute(select(Event).order_by(Event.start, Event.created_at)).scalars().all()
        out = [event_dict(e, now, with_intervals=False) for e in events]
    if active:
        out = [e for e in out if e["status"] in ("far", "near", "active")]
    return out


def show_event(store: Store, event_id: str, *, now: datetime | None = None) -> dict[str, Any]:
    now = now or datetime.now(UTC)
    with store.session() as session:
        event = _get_event(session, event_id)
        out = event_dict(event, now)
        out["intervals"] = [
            {
                "uid": i.uid,
                "start": i.start.astimezone(SITE_TZ).isoformat(),
                "duration_s": i.duration_s,
                "value": v,
            }
            for i, v in zip(event.intervals, entered_values(event), strict=True)
        ]
        if event.kind == "load_control":
            out["fleet_power_kw"] = fleet_power(session, event, now)
        return out


_SCALE_TO_KW = {"k": 1.0, "none": 1e-3, None: 1e-3, "M": 1e3}


def fleet_power(session: Session, event: Event, now: datetime) -> dict[str, Any]:
    """Mean fleet power the targeted VENs reported (TELEMETRY_USAGE) in the hour before the event
    and during it so far: did the load control work?"""
    registrations = session.execute(select(ReportRegistration)).scalars().all()
    vens = None
    if event.ven_names is not None:
        vens = set(session.execute(select(Ven.ven_id).where(Ven.ven_name.in_(event.ven_names))).scalars())
    factor = {
        (r.ven_id, r.r_id): _SCALE_TO_KW.get(r.description.get("scale"), 1e-3)
        for r in registrations
        if "power" in str(r.description.get("measurement", "")).lower() and (vens is None or r.ven_id in vens)
    }
    end = min(event.start + timedelta(seconds=event.duration_s), now)
    windows = {"before": (event.start - timedelta(hours=1), event.start), "during": (event.start, end)}
    out: dict[str, Any] = {}
    for name, (begin, finish) in windows.items():
        rows = (
            session.execute(select(ReportValue).where(ReportValue.at >= begin, ReportValue.at < finish))
            .scalars()
            .all()
        )
        values = [r.value * factor[(r.ven_id, r.r_id)] for r in rows if (r.ven_id, r.r_id) in factor]
        out[name] = round(sum(values) / len(values), 3) if values else None
        out[f"samples_{name}"] = len(values)
    return out


def modify_event(
    store: Store, event_id: str, *, now: datetime | None = None, **changes: Any
) -> dict[str, Any]:
    """Change an event's values or timing; the VENs receive it with the next modification number."""
    now = now or datetime.now(UTC)
    changes = {k: v for k, v in changes.items() if v is not None and v != [] and v != ""}
    if not set(changes) - {"allow_past", "prices_name"}:
        raise InputError(
            "nothing to modify: give new values, levels, start, duration, periods, targets or vens"
        )
    with store.write_session() as session:
        event = _get_event(session, event_id)
        status = event_status(event, now)
        if status in ("cancelled", "completed"):
            raise Conflict(f"event {event_id} is {status}; it can no longer be modified")
        start_changed = "start" in changes
        common = {
            "start": changes.get("start", event.start),
            "targets": changes.get("targets", event.resource_targets),
            "vens": changes.get("vens", event.ven_names),
            # An event already under way keeps its start; only a new start must lie ahead.
            "allow_past": bool(changes.get("allow_past")) or not start_changed,
            "now": now,
        }
        if event.kind == "price":
            _refuse_unknown(changes, PRICE_FIELDS - {"currency", "unit"}, event)
            currency, unit = (event.unit or "EUR/MWh").split("/")
            draft = price_draft(
                prices=changes.get("prices", entered_values(event)),
                currency=currency,
                unit=unit,
                source=event.source,
                prices_name=changes.get("prices_name", "--values"),
                **common,
            )
        else:
            _refuse_unknown(changes, LOAD_CONTROL_FIELDS, event)
            levels = changes.get("levels")
            if levels is None:
                levels = entered_values(event)
                if "duration" in changes and len(set(levels)) == 1:
                    levels = levels[:1]  # one level for the whole event, whatever its new length
                elif "duration" in changes:
                    raise InputError(
                        "--duration changes the hours of an event with per-hour levels; "
                        "give --levels for the new hours too"
                    )
            draft = load_control_draft(
                duration=changes.get("duration", timedelta(seconds=event.duration_s)),
                levels=levels,
                ramp_up=changes.get("ramp_up", _delta(event.ramp_up_s)),
                notification=changes.get("notification", _delta(event.notification_s)),
                recovery=changes.get("recovery", _delta(event.recovery_s)),
                **common,
            )
        _check_vens(session, draft.ven_names)
        if draft.start + draft.duration <= now:
            # VENs never hear of a change to an event that is already over: say so instead.
            raise Conflict(f"this change would end event {event_id} in the past; cancel it instead")
        _apply(event, draft)
        _record_change(session, event, "modify", now)
        return event_dict(event, now)


def _record_change(session: Session, event: Event, action: str, now: datetime) -> None:
    """A change VENs must see: next modification number, audit trail, and a cache refresh."""
    event.modification_number += 1
    event.modified_at = now
    session.add(
        EventHistory(
            event_id=event.event_id,
            modification_number=event.modification_number,
            action=action,
            at=now,
            snapshot=_snapshot(event),
        )
    )


def _refuse_unknown(changes: dict[str, Any], allowed: set[str], event: Event) -> None:
    wrong = sorted(set(changes) - allowed)
    if wrong:
        raise InputError(f"a {event.kind.replace('_', '-')} event has no {', '.join(wrong)} to modify")


def cancel_event(store: Store, event_id: str, *, now: datetime | None = None) -> dict[str, Any]:
    now = now or datetime.now(UTC)
    with store.write_session() as session:
        event = _get_event(session, event_id)
        status = event_status(event, now)
        if status in ("cancelled", "completed"):
            raise Conflict(f"event {event_id} is already {status}")
        event.cancelled = True
        _record_change(session, event, "cancel", now)
        return event_dict(event, now, with_intervals=False)


def list_opts(store: Store, event_id: str) -> list[dict[str, Any]]:
    with store.session() as session:
        _get_event(session, event_id)
        rows = session.execute(
            select(OptResponse, Ven.ven_name)
            .join(Ven, Ven.ven_id == OptResponse.ven_id, isouter=True)
            .where(OptResponse.event_id == event_id)
            .order_by(OptResponse.modification_number, Ven.ven_name)
        ).all()
        return [
            {
                "ven": name or opt.ven_id,
                "ven_id": opt.ven_id,
                "modification_number": opt.modification_number,
                "opt": opt.opt_type,
                "received_at": opt.received_at.isoformat(),
            }
            for opt, name in rows
        ]


# --- VENs ---------------------------------------------------------------------------------------


def normalise_fingerprint(fingerprint: str | None) -> str | None:
    if not fingerprint:
        return None
    value = fingerprint.strip().upper()
    if not _FINGERPRINT.match(value):
        raise InputError(
            f"--fingerprint {fingerprint!r} is not an OpenADR certificate fingerprint "
            "(10 hex bytes separated by ':', as `openssl`/openleadr print it)"
        )
    return value


def add_ven(store: Store, name: str, fingerprint: str | None = None) -> dict[str, Any]:
    if not name or not VEN_NAME.match(name):
        raise InputError(f"VEN name {name!r} must be 1-100 letters, digits, '.', '_' or '-'")
    fp = normalise_fingerprint(fingerprint)
    with store.write_session() as session:
        if session.execute(select(Ven).where(Ven.ven_name == name)).scalar_one_or_none():
            raise Conflict(f"VEN {name!r} is already provisioned")
        ven = Ven(ven_name=name, ven_id=f"ven-{secrets.token_hex(6)}", fingerprint=fp)
        session.add(ven)
        return _ven_dict(ven)


def _ven_dict(ven: Ven) -> dict[str, Any]:
    return {
        "ven_name": ven.ven_name,
        "ven_id": ven.ven_id,
        "fingerprint": ven.fingerprint,
        "registered": ven.registration_id is not None,
        "registered_at": ven.registered_at.isoformat() if ven.registered_at else None,
        "last_poll_at": ven.last_poll_at.isoformat() if ven.last_poll_at else None,
    }


def list_vens(store: Store) -> list[dict[str, Any]]:
    with store.session() as session:
        return [_ven_dict(v) for v in session.execute(select(Ven).order_by(Ven.ven_name)).scalars()]


def counts(store: Store, now: datetime | None = None) -> dict[str, int]:
    """Figures for the health endpoint."""
    now = now or datetime.now(UTC)
    with store.session() as session:
        vens = session.execute(select(func.count()).select_from(Ven)).scalar_one()
        registered = session.execute(
            select(func.count()).select_from(Ven).where(Ven.registration_id.is_not(None))
        ).scalar_one()
        events = session.execute(select(Event)).scalars().all()
        active = sum(event_status(e, now) in ("far", "near", "active") for e in events)
    return {"vens": vens, "vens_registered": registered, "events_pending_or_active": active}
