"""Opt decisions and the normalised event the VEN hands to FlexMeasures.

Policy (decided at once, inside the openleadr handler, without any network call): opt in, unless
the event targets resources this VEN does not have, its signal is not one we can act on, or its
payload is unusable (unknown currency or unit, intervals that overlap or leave gaps, NaN). The
decision and its reason are logged and kept in the outbox database.

The normalised event is the contract with the plugin's ``POST /api/cariflex/v1/openadr/events``:
``event_id, modification_number, status, modification_date_time, signal_name, signal_type,
item_base, intervals[{start, duration, value}]`` (ISO 8601 times and durations).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import isodate

PRICE_SIGNALS = {("ENERGY_PRICE", "price"), ("ELECTRICITY_PRICE", "price")}
LOAD_SIGNALS = {("LOAD_CONTROL", "x-loadControlCapacity")}
SUPPORTED = PRICE_SIGNALS | LOAD_SIGNALS
# What FlexMeasures' consumption_price (EUR/MWh) can take: a price per kWh in EUR.
PRICE_ITEM_BASES = {"currencyPerKWh"}
PRICE_CURRENCIES = {"EUR"}
PRICE_SCALES = {None, "none"}  # the plugin stores EUR/MWh from plain EUR/kWh only


@dataclass(frozen=True)
class Decision:
    opt: str  # "optIn" | "optOut"
    reason: str
    normalised: dict[str, Any] | None  # what goes to FlexMeasures; None = nothing

    @property
    def key(self) -> str:
        return f"event:{self.normalised['event_id']}:{self.normalised['modification_number']}"


def _out(reason: str) -> Decision:
    return Decision("optOut", reason, None)


def _iso(moment: datetime) -> str:
    return moment.isoformat()


def decide(event: dict[str, Any], resources: set[str]) -> Decision:
    """optIn/optOut for one openleadr event dict, with the normalised event when opted in."""
    descriptor = event.get("event_descriptor") or {}
    signals = event.get("event_signals") or []
    if len(signals) != 1:
        return _out(f"expected one signal, got {len(signals)}")
    signal = signals[0]
    kind = (signal.get("signal_name"), signal.get("signal_type"))
    if kind not in SUPPORTED:
        return _out(f"unsupported signal {kind[0]}/{kind[1]}")

    unknown = sorted(
        str(t["resource_id"])
        for t in event.get("targets") or []
        if t.get("resource_id") is not None and str(t["resource_id"]) not in resources
    )
    if unknown:
        return _out(f"targets resources this VEN does not have: {', '.join(unknown)}")

    item_base = None
    if kind in PRICE_SIGNALS:
        measurement = signal.get("measurement") or {}
        name = measurement.get("description") or measurement.get("name")
        if name not in PRICE_ITEM_BASES:
            return _out(f"price unit {name!r} is not supported (need currencyPerKWh)")
        if measurement.get("unit") not in PRICE_CURRENCIES:
            return _out(f"price currency {measurement.get('unit')!r} is not supported (need EUR)")
        if measurement.get("scale") not in PRICE_SCALES:
            return _out(f"price scale {measurement.get('scale')!r} is not supported")
        item_base = {"name": name, "unit": measurement["unit"], "scale": measurement.get("scale") or "none"}

    intervals = sorted(signal.get("intervals") or [], key=lambda i: i.get("uid", 0))
    if not intervals:
        return _out("event has no intervals")
    normalised_intervals = []
    cursor = (event.get("active_period") or {}).get("dtstart")
    for index, interval in enumerate(intervals):
        start = interval.get("dtstart") or cursor
        duration = interval.get("duration")
        value = interval.get("signal_payload")
        if not isinstance(start, datetime) or not isinstance(duration, timedelta) or duration <= timedelta(0):
            return _out(f"interval {index} has no valid start or duration")
        if index and start != cursor:
            what = "overlaps the previous one" if start < cursor else "leaves a gap after the previous one"
            return _out(f"interval {index} starting {start.isoformat()} {what}")
        try:
            number = float(value)
        except (TypeError, ValueError):
            return _out(f"interval {index} payload {value!r} is not a number")
        if not math.isfinite(number):
            return _out(f"interval {index} payload {value!r} is not a finite number")
        if kind in LOAD_SIGNALS and not 0.0 <= number <= 1.0:
            return _out(f"interval {index} capacity fraction {number:g} is outside 0..1")
        normalised_intervals.append(
            {"start": _iso(start), "duration": isodate.duration_isoformat(duration), "value": number}
        )
        cursor = start + duration

    modified = descriptor.get("modification_date_time") or descriptor.get("created_date_time")
    normalised = {
        "event_id": descriptor.get("event_id"),
        "modification_number": int(descriptor.get("modification_number") or 0),
        "status": descriptor.get("event_status"),
        "modification_date_time": _iso(modified) if isinstance(modified, datetime) else None,
        "signal_name": kind[0],
        "signal_type": kind[1],
        "item_base": item_base,
        "intervals": normalised_intervals,
    }
    if not normalised["event_id"] or normalised["modification_date_time"] is None:
        return _out("event has no id or modification time")
    return Decision("optIn", "supported signal, valid payload", normalised)
