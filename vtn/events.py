"""Operator input → validated event drafts, and the status rules of an event.

Everything an operator can type passes through here, whichever way it came in (CLI, admin API,
day-ahead scheduler), so the checks and their messages are the same everywhere. A draft is only
handed to the store once it is entirely valid: a bad input changes nothing.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from cariflex import inputs
from cariflex.inputs import InputError  # the VTN's modules (cli, actions, admin_api, ...) import it from here
from cariflex.site_model import PRICE_RANGE_EUR_PER_MWH

SITE_TZ = ZoneInfo("America/Martinique")
HOUR = timedelta(hours=1)
QUARTER = timedelta(minutes=15)
PRICE_INTERVALS = 24
MAX_YEARS_AWAY = 10
MAX_LOAD_CONTROL = inputs.MAX_DURATION
# Ramp-up, notification and recovery periods: longer ones are typing errors (P800000D overflowed).
MAX_PERIOD = inputs.MAX_DURATION
# Prices the operator may enter, in EUR/MWh (the unit is converted first): the site-wide range.
PRICE_RANGE_MWH = PRICE_RANGE_EUR_PER_MWH

# What an operator-given name becomes on the wire: a 2.0b ei:resourceID / oadrVenName (xs:string).
# We allow the characters of identifiers and URNs only, so nothing needs escaping and nothing can
# break the XML of any VEN (e.g. "site&co" or "x</ei:resourceID>").
RESOURCE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,99}$")
VEN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")

PRICE_SIGNAL = ("ENERGY_PRICE", "price")
LOAD_CONTROL_SIGNAL = ("LOAD_CONTROL", "x-loadControlCapacity")
MARKET_CONTEXT = "http://cariflex.example/programs/martinique"
# OpenADR 2.0b has no per-MWh itemBase (its XSD allows currency, currencyPerKWh, currencyPerKW,
# currencyPerThm), so prices travel as currency per kWh and the VEN converts back.
PRICE_UNITS = {"MWh": 1e-3, "kWh": 1.0}
CURRENCIES = ("EUR", "USD")


class NotFound(LookupError):
    """An unknown event or VEN."""


class Conflict(ValueError):
    """A valid request the event's state does not allow (e.g. modifying a cancelled event)."""


@dataclass
class IntervalDraft:
    start: datetime
    duration: timedelta
    value: float


@dataclass
class EventDraft:
    kind: str
    signal_name: str
    signal_type: str
    intervals: list[IntervalDraft]
    measurement: dict | None = None
    unit: str | None = None
    ramp_up: timedelta | None = None
    notification: timedelta | None = None
    recovery: timedelta | None = None
    resource_targets: list[str] | None = None
    ven_names: list[str] | None = None
    source: str = "operator"
    entered_values: list[float] = field(default_factory=list)

    @property
    def start(self) -> datetime:
        return self.intervals[0].start

    @property
    def duration(self) -> timedelta:
        last = self.intervals[-1]
        return last.start + last.duration - self.start


def parse_time(text: str | datetime, name: str = "--start") -> datetime:
    """An ISO 8601 time; without an offset it is read as Martinique local time."""
    if isinstance(text, datetime):
        moment = text
    else:
        try:
            moment = datetime.fromisoformat(str(text).strip().replace("Z", "+00:00"))
        except ValueError:
            raise InputError(
                f"{name} {text!r} is not an ISO 8601 time (e.g. 2026-11-25T00:00-04:00)"
            ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=SITE_TZ)
    try:
        moment = moment.astimezone(UTC)
    except OverflowError:
        raise InputError(f"{name} {text!r} is out of range") from None
    if abs(moment.year - datetime.now(UTC).year) > MAX_YEARS_AWAY:
        raise InputError(f"{name} {moment.isoformat()} is more than {MAX_YEARS_AWAY} years from today")
    return moment


def check_start(start: datetime, *, now: datetime, allow_past: bool, align: timedelta, name: str) -> None:
    if start < now - timedelta(seconds=1) and not allow_past:
        raise InputError(
            f"{name} {start.astimezone(SITE_TZ).isoformat()} is in the past; "
            "pass --allow-past (API: allow_past) if that is intended"
        )
    offset = start.astimezone(SITE_TZ) - start.astimezone(SITE_TZ).replace(
        hour=0, minute=0, second=0, microsecond=0
    )
    if offset % align:
        raise InputError(
            f"{name} {start.astimezone(SITE_TZ).isoformat()} must fall on a "
            f"{int(align.total_seconds() // 60)}-minute boundary"
        )


def parse_duration(
    text: str | timedelta | None, name: str, *, required: bool = True, maximum: timedelta = MAX_PERIOD
) -> timedelta | None:
    """A positive ISO 8601 duration in days, hours, minutes or seconds (e.g. PT4H, PT30M): the
    shared rule, ``cariflex.inputs.duration``."""
    return inputs.duration(text, name, required=required, maximum=maximum)


def parse_numbers(values: list, name: str) -> list[float]:
    out = []
    for index, raw in enumerate(values, start=1):
        if isinstance(raw, bool):
            raise InputError(f"{name}: value {index} ({raw!r}) is not a number")
        try:
            number = float(raw)
        except (TypeError, ValueError):
            raise InputError(f"{name}: value {index} ({_clip(raw)}) is not a number") from None
        except OverflowError:  # an integer beyond float range, e.g. 10**400
            raise InputError(f"{name}: value {index} ({_clip(raw)}) is not a finite number") from None
        if not math.isfinite(number):
            raise InputError(f"{name}: value {index} ({_clip(raw)}) is not a finite number")
        out.append(number)
    return out


def _clip(raw: object, limit: int = 40) -> str:
    """Refused input as an error message may quote it: short, whatever it was."""
    text = repr(raw)
    return text if len(text) <= limit else text[:limit] + "…"


def _names(
    values: list[str] | str | None, name: str, pattern: re.Pattern[str] = RESOURCE_ID
) -> list[str] | None:
    if values is None or values == "" or values == [] or values == "all":
        return None  # "all": every VEN (also to undo an earlier --vens)
    items = values.split(",") if isinstance(values, str) else list(values)
    cleaned = [str(v).strip() for v in items]
    if any(not v for v in cleaned):
        raise InputError(f"{name} {_clip(values)} has an empty entry")
    for value in cleaned:
        if not pattern.match(value):
            raise InputError(
                f"{name}: {_clip(value)} is not a valid identifier: 1-100 letters, digits, "
                f"{'.:/_-' if pattern is RESOURCE_ID else '._-'}, starting with a letter or digit"
            )
    return cleaned


def price_draft(
    *,
    start: str | datetime,
    prices: list,
    currency: str = "EUR",
    unit: str = "MWh",
    targets: list[str] | str | None = None,
    vens: list[str] | str | None = None,
    allow_past: bool = False,
    now: datetime | None = None,
    source: str = "operator",
    prices_name: str = "--values",
) -> EventDraft:
    """A day-ahead ENERGY_PRICE event: 24 one-hour intervals from ``start``."""
    now = now or datetime.now(UTC)
    begin = parse_time(start)
    check_start(begin, now=now, allow_past=allow_past, align=HOUR, name="--start")
    if currency not in CURRENCIES:
        raise InputError(f"--currency {currency!r} is not supported; use one of {', '.join(CURRENCIES)}")
    if unit not in PRICE_UNITS:
        raise InputError(f"--unit {unit!r} is not supported; use one of {', '.join(PRICE_UNITS)}")
    values = parse_numbers(list(prices), prices_name)
    if len(values) != PRICE_INTERVALS:
        raise InputError(
            f"{prices_name} has {len(values)} prices; a price event needs exactly {PRICE_INTERVALS} "
            "(one per hour)"
        )
    factor = PRICE_UNITS[unit]
    low, high = PRICE_RANGE_MWH
    for index, value in enumerate(values, start=1):
        per_mwh = value * factor * 1000
        if not low <= per_mwh <= high:
            raise InputError(
                f"{prices_name}: value {index} ({value:g} {currency}/{unit}) is outside "
                f"{low:g}..{high:g} {currency}/MWh"
            )
    return EventDraft(
        kind="price",
        signal_name=PRICE_SIGNAL[0],
        signal_type=PRICE_SIGNAL[1],
        intervals=[IntervalDraft(begin + i * HOUR, HOUR, v * factor) for i, v in enumerate(values)],
        measurement={
            "name": "currencyPerKWh",
            "description": "currencyPerKWh",
            "unit": currency,
            "scale": "none",
        },
        unit=f"{currency}/{unit}",
        resource_targets=_names(targets, "--targets"),
        ven_names=_names(vens, "--vens", VEN_NAME),
        source=source,
        entered_values=values,
    )


def load_control_draft(
    *,
    start: str | datetime,
    duration: str | timedelta,
    levels: list | str,
    ramp_up: str | timedelta | None = None,
    notification: str | timedelta | None = None,
    recovery: str | timedelta | None = None,
    targets: list[str] | str | None = None,
    vens: list[str] | str | None = None,
    allow_past: bool = False,
    now: datetime | None = None,
) -> EventDraft:
    """A LOAD_CONTROL event: x-loadControlCapacity (fraction 0..1), one interval per hour."""
    now = now or datetime.now(UTC)
    begin = parse_time(start)
    check_start(begin, now=now, allow_past=allow_past, align=QUARTER, name="--start")
    length = inputs.duration(
        duration, "--duration", maximum=MAX_LOAD_CONTROL, step=QUARTER, hint="split the event"
    )
    raw_levels = levels.split(",") if isinstance(levels, str) else list(levels)
    values = parse_numbers(raw_levels, "--levels")
    for index, level in enumerate(values, start=1):
        if not 0.0 <= level <= 1.0:
            raise InputError(
                f"--levels: value {index} ({level:g}) is outside 0..1 (a fraction of normal capacity)"
            )
    pieces: list[tuple[datetime, timedelta]] = []
    cursor = begin
    while cursor < begin + length:
        step = min(HOUR, begin + length - cursor)
        pieces.append((cursor, step))
        cursor += step
    if len(values) == 1:
        values = values * len(pieces)
    if len(values) != len(pieces):
        raise InputError(
            f"--levels has {len(values)} values; give 1 (for the whole event) or {len(pieces)} (one per hour)"
        )
    return EventDraft(
        kind="load_control",
        signal_name=LOAD_CONTROL_SIGNAL[0],
        signal_type=LOAD_CONTROL_SIGNAL[1],
        intervals=[IntervalDraft(s, d, v) for (s, d), v in zip(pieces, values, strict=True)],
        ramp_up=parse_duration(ramp_up, "--ramp-up", required=False),
        notification=parse_duration(notification, "--notification", required=False),
        recovery=parse_duration(recovery, "--recovery", required=False),
        resource_targets=_names(targets, "--targets"),
        ven_names=_names(vens, "--vens", VEN_NAME),
        entered_values=values,
    )


# The statuses of an event that is still to come or under way (not completed, not cancelled).
PENDING_OR_ACTIVE = ("far", "near", "active")


def status_at(
    *, start: datetime, duration: timedelta, ramp_up: timedelta | None, cancelled: bool, now: datetime
) -> str:
    """OpenADR event status (same rules as openleadr's determine_event_status, plus cancelled)."""
    if cancelled:
        return "cancelled"
    if now >= start + duration:
        return "completed"
    if now >= start:
        return "active"
    if ramp_up is not None and now >= start - ramp_up:
        return "near"
    return "far"
