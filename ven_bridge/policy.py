"""Opt decisions and the normalised events the VEN hands to FlexMeasures.

Policy (decided at once, inside the openleadr handler, without any network call): opt in, unless
the event targets resources this VEN does not have, one of its signals is not one we can act on,
or a payload is unusable (unknown currency or unit, intervals that overlap or leave gaps, NaN,
intervals FlexMeasures cannot store). The decision and its reason are logged and kept in the
outbox database.

What any VTN may send, and what becomes of it:
- several signals in one event: each signal is checked; the event is opted in only when every
  signal can be acted on (at most one price and one load-control signal), and each signal goes to
  FlexMeasures as its own normalised event, ``<event_id>#<signal_name>``, because the plugin keeps
  one ledger entry per event id. A single-signal event keeps its own id.
- intervals: load-control levels on the 15-minute grid (the plugin keeps one level per quarter
  hour); prices on whole hours, or finer prices (e.g. 15 minutes) that make up whole hours, which
  are averaged per hour (the plugin keeps one price per hour). Anything else is opted out.

The normalised event is the contract with the plugin's ``POST /api/cariflex/v1/openadr/events``
(``cariflex.contracts.openadr_event``): every part is built through it, so a part the plugin would
refuse (422) is opted out of here, with the contract's reason, instead of dead-lettered later.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import isodate

from cariflex.contracts.openadr_event import (
    LOAD_CONTROL,
    PRICE,
    SIGNALS,
    STORED_ON,
    ContractError,
    OpenAdrEvent,
)

PRICE_SIGNALS = {signal for signal, kind in SIGNALS.items() if kind == PRICE}
LOAD_SIGNALS = {signal for signal, kind in SIGNALS.items() if kind == LOAD_CONTROL}
SUPPORTED = PRICE_SIGNALS | LOAD_SIGNALS
# What FlexMeasures' consumption_price (EUR/MWh) can take: a price per kWh in EUR.
PRICE_ITEM_BASES = {"currencyPerKWh"}
PRICE_CURRENCIES = {"EUR"}
PRICE_SCALES = {None, "none"}  # the plugin stores EUR/MWh from plain EUR/kWh only
# The resolutions of the plugin's sensors: consumption_price 1 h, load_control_signal 15 min.
PRICE_STEP = STORED_ON[PRICE][1]
LOAD_STEP = STORED_ON[LOAD_CONTROL][1]
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
PART_SEPARATOR = "#"


@dataclass(frozen=True)
class Decision:
    opt: str  # "optIn" | "optOut"
    reason: str
    parts: tuple[dict[str, Any], ...] = ()  # what goes to FlexMeasures: one event per signal

    @property
    def normalised(self) -> dict[str, Any] | None:
        """The one normalised event of a single-signal event; None when opted out."""
        return self.parts[0] if len(self.parts) == 1 else None

    @property
    def key(self) -> str:
        return part_key(self.parts[0])


def part_key(part: dict[str, Any]) -> str:
    """The outbox dedupe key of one normalised event (one modification of it)."""
    return f"event:{part['event_id']}:{part['modification_number']}"


def belongs_to(part_id: str, event_id: str) -> bool:
    """Whether a normalised event id is the OpenADR event's own or one of its signals'."""
    return part_id == event_id or part_id.rsplit(PART_SEPARATOR, 1)[0] == event_id


def _out(reason: str) -> Decision:
    return Decision("optOut", reason)


def _iso(moment: datetime) -> str:
    return moment.isoformat()


def _on_grid(moment: datetime, step: timedelta) -> bool:
    return (moment - EPOCH) % step == timedelta(0)


def _hourly_means(intervals: list[tuple[datetime, timedelta, float]]) -> list[tuple[datetime, float]]:
    """Time-weighted mean per hour of contiguous intervals that begin and end on whole hours."""
    start, end = intervals[0][0], intervals[-1][0] + intervals[-1][1]
    means = []
    hour = start
    while hour < end:
        total = 0.0
        for begin, duration, value in intervals:
            overlap = min(begin + duration, hour + PRICE_STEP) - max(begin, hour)
            if overlap > timedelta(0):
                total += value * (overlap / PRICE_STEP)
        means.append((hour, round(total, 9)))
        hour += PRICE_STEP
    return means


def _signal(signal: dict[str, Any], cursor: datetime | None) -> tuple[str | None, dict[str, Any], str]:
    """(refusal or None, the normalised signal fields, a note on what was done)."""
    kind = (signal.get("signal_name"), signal.get("signal_type"))
    if kind not in SUPPORTED:
        return f"unsupported signal {kind[0]}/{kind[1]}", {}, ""

    item_base = None
    if kind in PRICE_SIGNALS:
        measurement = signal.get("measurement") or {}
        name = measurement.get("description") or measurement.get("name")
        if name not in PRICE_ITEM_BASES:
            return f"price unit {name!r} is not supported (need currencyPerKWh)", {}, ""
        if measurement.get("unit") not in PRICE_CURRENCIES:
            return f"price currency {measurement.get('unit')!r} is not supported (need EUR)", {}, ""
        if measurement.get("scale") not in PRICE_SCALES:
            return f"price scale {measurement.get('scale')!r} is not supported", {}, ""
        item_base = {"name": name, "unit": measurement["unit"], "scale": measurement.get("scale") or "none"}

    raw = sorted(signal.get("intervals") or [], key=lambda i: i.get("uid", 0))
    if not raw:
        return "event has no intervals", {}, ""
    intervals: list[tuple[datetime, timedelta, float]] = []
    for index, interval in enumerate(raw):
        start = interval.get("dtstart") or cursor
        duration = interval.get("duration")
        value = interval.get("signal_payload")
        if (
            not isinstance(start, datetime)
            or start.tzinfo is None
            or not isinstance(duration, timedelta)
            or duration <= timedelta(0)
        ):
            return f"interval {index} has no valid start or duration", {}, ""
        if index and start != cursor:
            what = "overlaps the previous one" if start < cursor else "leaves a gap after the previous one"
            return f"interval {index} starting {start.isoformat()} {what}", {}, ""
        try:
            number = float(value)
        except (TypeError, ValueError):
            return f"interval {index} payload {value!r} is not a number", {}, ""
        if not math.isfinite(number):
            return f"interval {index} payload {value!r} is not a finite number", {}, ""
        if kind in LOAD_SIGNALS and not 0.0 <= number <= 1.0:
            return f"interval {index} capacity fraction {number:g} is outside 0..1", {}, ""
        intervals.append((start, duration, number))
        cursor = start + duration

    note = ""
    first, end = intervals[0][0], intervals[-1][0] + intervals[-1][1]
    if kind in LOAD_SIGNALS:
        for index, (start, duration, _) in enumerate(intervals):
            if not _on_grid(start, LOAD_STEP) or duration % LOAD_STEP:
                return (
                    f"interval {index} ({start.isoformat()}, {isodate.duration_isoformat(duration)}) "
                    "is not on the 15-minute grid FlexMeasures keeps load-control levels on",
                    {},
                    "",
                )
    elif any(not _on_grid(start, PRICE_STEP) or duration % PRICE_STEP for start, duration, _ in intervals):
        if not (_on_grid(first, PRICE_STEP) and _on_grid(end, PRICE_STEP)):
            return (
                f"price intervals from {first.isoformat()} to {end.isoformat()} do not make whole hours "
                "(FlexMeasures keeps one price per hour)",
                {},
                "",
            )
        hourly = _hourly_means(intervals)
        note = f"{len(intervals)} price intervals averaged into {len(hourly)} hourly prices"
        intervals = [(hour, PRICE_STEP, value) for hour, value in hourly]

    return (
        None,
        {
            "signal_name": kind[0],
            "signal_type": kind[1],
            "item_base": item_base,
            "intervals": [
                {"start": _iso(start), "duration": isodate.duration_isoformat(duration), "value": number}
                for start, duration, number in intervals
            ],
        },
        note,
    )


def _unknown_resources(targets: list[dict[str, Any]] | None, resources: set[str]) -> list[str]:
    return [
        str(t["resource_id"])
        for t in targets or []
        if isinstance(t, dict) and t.get("resource_id") is not None and str(t["resource_id"]) not in resources
    ]


def decide(event: dict[str, Any], resources: set[str]) -> Decision:
    """optIn/optOut for one openleadr event dict, with the normalised events when opted in."""
    descriptor = event.get("event_descriptor") or {}
    signals = event.get("event_signals") or []
    if not signals:
        return _out("event has no signals")

    unknown = _unknown_resources(event.get("targets"), resources)
    for signal in signals:
        unknown += _unknown_resources(signal.get("targets"), resources)
    if unknown:
        return _out(f"targets resources this VEN does not have: {', '.join(sorted(set(unknown)))}")

    event_id = descriptor.get("event_id")
    modified = descriptor.get("modification_date_time") or descriptor.get("created_date_time")
    if not event_id or not isinstance(modified, datetime):
        return _out("event has no id or modification time")

    cursor = (event.get("active_period") or {}).get("dtstart")
    parts, notes, kinds = [], [], set()
    for signal in signals:
        refusal, fields, note = _signal(signal, cursor)
        if refusal is not None:
            return _out(refusal if len(signals) == 1 else f"signal {signal.get('signal_name')}: {refusal}")
        kind = "price" if (fields["signal_name"], fields["signal_type"]) in PRICE_SIGNALS else "load control"
        if kind in kinds:  # two would write the same FlexMeasures sensor over each other
            return _out(f"more than one {kind} signal in one event")
        kinds.add(kind)
        notes += [note] if note else []
        part = {
            "event_id": str(event_id)
            if len(signals) == 1
            else f"{event_id}{PART_SEPARATOR}{fields['signal_name']}",
            "modification_number": int(descriptor.get("modification_number") or 0),
            "status": descriptor.get("event_status"),
            "modification_date_time": _iso(modified),
            **fields,
        }
        try:  # what FlexMeasures would refuse with a 422 is opted out of now, with its reason
            part = OpenAdrEvent.from_dict(part).to_dict()
        except ContractError as exc:
            return _out(str(exc) if len(signals) == 1 else f"signal {signal.get('signal_name')}: {exc}")
        parts.append(part)
    names = ", ".join(f"{p['signal_name']}/{p['signal_type']}" for p in parts)
    reason = f"supported signal{'s' if len(parts) > 1 else ''} {names}, valid payload"
    return Decision("optIn", "; ".join([reason, *notes]), tuple(parts))
