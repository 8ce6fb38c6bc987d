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
    PENDING_OR_ACTIVE,
    RESOURCE_ID,
    SITE_TZ,
    VEN_NAME,
    Conflict,
    EventDraft,
    InputError,
    NotFound,
    load_control_draft,
    parse_numbers,
    price_draft,
    status_at,
)
from vtn.store import (
    Delivery,
    Event,
    EventHistory,
    Interval,
    OptResponse,
    ReportRegistration,
    ReportValue,
    Store,
    Ven,
)

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
        out = [e for e in out if e["status"] in PENDING_OR_ACTIVE]
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
        out["picture"] = load_control_picture(session, event, now) if event.kind == "load_control" else None
        if out["picture"] is not None:
            out["fleet_power_kw"] = {
                k: out["picture"][k] for k in ("before", "samples_before", "during", "samples_during")
            }
    out["vens_sent"] = deliveries(store, [event_id]).get(event_id, [])
    return out


_SCALE_TO_KW = {"k": 1.0, "none": 1e-3, None: 1e-3, "M": 1e3}
DELIVERED_PCT = "x-drDeliveredPercent"  # the VEN's DR verification (ven_bridge.dr_report)


def _targeted_vens(session: Session, event: Event) -> list[Ven]:
    query = select(Ven)
    if event.ven_names is not None:
        query = query.where(Ven.ven_name.in_(event.ven_names))
    return list(session.execute(query.order_by(Ven.ven_name)).scalars())


# What a VEN's power stream is called: openleadr's description of power_real, the 2.0b item name.
REAL_POWER = {"realpower", "powerreal", "power_real"}


def _streams(session: Session, ven_ids: set[str]) -> tuple[dict, set]:
    """(ven_id, r_id) → kW per reported unit for the real-power streams, and the delivered-%
    streams, from what the VENs registered (oadrRegisterReport)."""
    power: dict[tuple[str, str], float] = {}
    delivered: set[tuple[str, str]] = set()
    query = select(ReportRegistration).where(ReportRegistration.ven_id.in_(ven_ids))
    for r in session.execute(query).scalars():
        measurement = str(r.description.get("measurement", ""))
        if measurement == DELIVERED_PCT:
            delivered.add((r.ven_id, r.r_id))
        elif measurement.lower() in REAL_POWER:  # not reactive or apparent power
            power[(r.ven_id, r.r_id)] = _SCALE_TO_KW.get(r.description.get("scale"), 1e-3)
    return power, delivered


MAX_POINTS = 1200  # per VEN in a picture: a 4-hour event at a 1 s telemetry rate is 18,000 readings


def _thinned(points: list[tuple[str, float]]) -> list[tuple[str, float]]:
    """Readings as they came, or, beyond MAX_POINTS, their means per minute (stamped at the minute)."""
    if len(points) <= MAX_POINTS:
        return points
    minutes: dict[str, list[float]] = {}
    for at, kw in points:
        minutes.setdefault(
            datetime.fromisoformat(at).replace(second=0, microsecond=0).isoformat(), []
        ).append(kw)
    return [(at, round(_mean(values), 3)) for at, values in minutes.items()]


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def load_control_picture(session: Session, event: Event, now: datetime) -> dict[str, Any]:
    """What the console draws and ``event show`` tells for a load-control event.

    - ``series``: each targeted VEN's reported real power (kW), from an hour before the event to its
      end, its cancellation or now, whichever comes first;
    - ``before``/``during``: the fleet's power — the sum over the VENs of each one's mean — in the
      hour before and during, against ``cap``: each interval's level × the capacity provisioned for
      those VENs (the same fleet total);
    - ``delivered``: the share of the requested reduction each VEN verified and reported after the
      event (``x-drDeliveredPercent``: the VEN reports its latest verified event's share, without an
      event id), until the next load-control event has ended; a value equal to the one it reported
      before this event ended is still the previous event's and is left out.
    """
    vens = _targeted_vens(session, event)
    names = {v.ven_id: v.ven_name for v in vens}
    power, delivered = _streams(session, set(names))
    end = event.start + timedelta(seconds=event.duration_s)
    if event.cancelled:
        end = min(end, event.modified_at)  # a cancellation is the event's last change
    begin, finish = event.start - timedelta(hours=1), min(end, now)
    rows = session.execute(
        select(ReportValue)
        .where(ReportValue.at >= begin, ReportValue.at < finish, ReportValue.ven_id.in_(set(names)))
        .order_by(ReportValue.at)
    ).scalars()
    series: dict[str, list[tuple[str, float]]] = {}
    before: dict[str, list[float]] = {}
    during: dict[str, list[float]] = {}
    for r in rows:
        factor = power.get((r.ven_id, r.r_id))
        if factor is None:
            continue
        kw = r.value * factor
        series.setdefault(names[r.ven_id], []).append((r.at.isoformat(), round(kw, 3)))
        (before if r.at < event.start else during).setdefault(r.ven_id, []).append(kw)
    series = {name: _thinned(points) for name, points in series.items()}
    capacity = sum(v.capacity_kw for v in vens if v.capacity_kw)
    cap = []
    if capacity:
        for i in event.intervals:
            stop = min(i.start + timedelta(seconds=i.duration_s), end)
            if stop > i.start:
                cap.append(
                    {
                        "start": i.start.isoformat(),
                        "end": stop.isoformat(),
                        "level": i.value,
                        "cap_kw": round(i.value * capacity, 3),
                    }
                )
    return {
        "before": round(sum(map(_mean, before.values())), 3) if before else None,
        "samples_before": sum(map(len, before.values())),
        "during": round(sum(map(_mean, during.values())), 3) if during else None,
        "samples_during": sum(map(len, during.values())),
        "series": series,
        "capacity_kw": capacity or None,
        "vens_without_capacity": [v.ven_name for v in vens if not v.capacity_kw],
        "cap": cap,
        "delivered": _delivered(session, event, end, names, delivered) if delivered and end <= now else [],
    }


def _delivered(
    session: Session, event: Event, end: datetime, names: dict[str, str], streams: set
) -> list[dict[str, Any]]:
    """The last delivered percentage each VEN reported for this event (see load_control_picture)."""
    following = session.execute(
        select(Event)
        .where(Event.kind == "load_control", Event.start > event.start, Event.cancelled.is_(False))
        .order_by(Event.start)
        .limit(1)
    ).scalar_one_or_none()
    window_end = end + timedelta(days=1)
    if following is not None:
        # until the next event has ended and been verified, the latest verified event is this one
        window_end = min(window_end, following.start + timedelta(seconds=following.duration_s))
    out: dict[str, dict[str, Any]] = {}
    for ven_id, name in names.items():
        r_ids = [r_id for v, r_id in streams if v == ven_id]
        if not r_ids:
            continue
        mine = [ReportValue.ven_id == ven_id, ReportValue.r_id.in_(r_ids)]
        earlier = session.execute(
            select(ReportValue.value)
            .where(*mine, ReportValue.at < end)
            .order_by(ReportValue.at.desc())
            .limit(1)
        ).scalar_one_or_none()
        after = [*mine, ReportValue.at >= end, ReportValue.at < window_end]
        if earlier is not None:
            after.append(ReportValue.value != earlier)
        latest = session.execute(
            select(ReportValue).where(*after).order_by(ReportValue.at.desc()).limit(1)
        ).scalar_one_or_none()
        if latest is not None:
            out[name] = {"ven": name, "at": latest.at.isoformat(), "delivered_pct": latest.value}
    return list(out.values())


def deliveries(store: Store, event_ids: list[str] | None = None) -> dict[str, list[dict[str, Any]]]:
    """Per event, per VEN: the modification it was last sent (and when) and its opt per
    modification. ``event_ids`` None: every event."""
    with store.session() as session:
        sent = select(Delivery, Ven.ven_name).join(Ven, Ven.ven_id == Delivery.ven_id, isouter=True)
        opts = select(OptResponse, Ven.ven_name).join(Ven, Ven.ven_id == OptResponse.ven_id, isouter=True)
        if event_ids is not None:
            sent = sent.where(Delivery.event_id.in_(event_ids))
            opts = opts.where(OptResponse.event_id.in_(event_ids))
        out: dict[str, dict[str, dict[str, Any]]] = {}
        for d, name in session.execute(sent):
            out.setdefault(d.event_id, {})[d.ven_id] = {
                "ven": name or d.ven_id,
                "sent_modification": d.modification_number,
                "sent_status": d.status,
                "sent_at": d.delivered_at.isoformat(),
                "opts": {},
            }
        for o, name in session.execute(opts.order_by(OptResponse.modification_number)):
            row = out.setdefault(o.event_id, {}).setdefault(
                o.ven_id,
                {
                    "ven": name or o.ven_id,
                    "sent_modification": None,
                    "sent_status": None,
                    "sent_at": None,
                    "opts": {},
                },
            )
            row["opts"][o.modification_number] = o.opt_type
        return {event_id: sorted(by_ven.values(), key=lambda r: r["ven"]) for event_id, by_ven in out.items()}


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


def check_capacity(capacity_kw: float | None) -> float | None:
    if capacity_kw is None or capacity_kw == "":
        return None
    (value,) = parse_numbers([capacity_kw], "--capacity-kw")
    if not 0 < value <= 1e6:
        raise InputError(f"--capacity-kw {value:g} must be above 0 and at most 1000000 kW")
    return value


def add_ven(
    store: Store, name: str, fingerprint: str | None = None, capacity_kw: float | None = None
) -> dict[str, Any]:
    if not name or not VEN_NAME.match(name):
        raise InputError(f"VEN name {name!r} must be 1-100 letters, digits, '.', '_' or '-'")
    fp = normalise_fingerprint(fingerprint)
    capacity = check_capacity(capacity_kw)
    with store.write_session() as session:
        if session.execute(select(Ven).where(Ven.ven_name == name)).scalar_one_or_none():
            raise Conflict(f"VEN {name!r} is already provisioned")
        ven = Ven(ven_name=name, ven_id=f"ven-{secrets.token_hex(6)}", fingerprint=fp, capacity_kw=capacity)
        session.add(ven)
        return _ven_dict(ven)


def set_ven_capacity(store: Store, name: str, capacity_kw: float | None) -> dict[str, Any]:
    """The site's contracted import capacity (what a load-control level is a fraction of)."""
    capacity = check_capacity(capacity_kw)
    with store.session() as session:
        ven = session.execute(select(Ven).where(Ven.ven_name == name)).scalar_one_or_none()
        if ven is None:
            raise NotFound(f"VEN {clip(repr(name))} is not provisioned (see `cariflex-vtn ven list`)")
        ven.capacity_kw = capacity
        return _ven_dict(ven)


def _ven_dict(ven: Ven) -> dict[str, Any]:
    return {
        "ven_name": ven.ven_name,
        "ven_id": ven.ven_id,
        "fingerprint": ven.fingerprint,
        "capacity_kw": ven.capacity_kw,
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
        active = sum(event_status(e, now) in PENDING_OR_ACTIVE for e in events)
    return {"vens": vens, "vens_registered": registered, "events_pending_or_active": active}
