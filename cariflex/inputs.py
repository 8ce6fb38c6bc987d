"""Input rules: one validator per kind of value people type, whichever edge it comes in by.

The plugin's JSON API (Flask query parameters), its CLI (click options) and the VTN's CLI and
admin API each checked these by themselves, some with different ranges. Here each rule is one
plain function ``rule(value, name, ...)``: it takes the text (or number) as typed, returns the
value to use, or raises :class:`InputError` whose message names the input (``name``: ``hours``,
``--hours``, ``CARIFLEX_FEED_IN_TARIFF``) and the problem, quoting at most 60 characters of it.

- :func:`hours`: a look-ahead in hours (schedule, flexibility): 0.25 (one 15-minute period, the
  resolution of every plan and flexibility figure) to 48 (the schedule endpoint's window);
- :func:`since`: an ISO 8601 time (no offset: UTC) or a duration back from now (``PT24H``, ``P7D``),
  in the past and at most 10 years ago (the bound on every other time the system accepts);
- :func:`period`: a statistics period, one of day ``YYYY-MM-DD``, month ``YYYY-MM``, year ``YYYY``,
  within the years 2000..2100;
- :func:`tariff`: a flat feed-in tariff, 0..10,000 EUR/MWh;
- :func:`duration`: a positive ISO 8601 duration of fixed length (days, hours, minutes, seconds),
  at most 7 days (ramp-up, notification and recovery periods, a load-control event, a schedule
  horizon), optionally a whole number of ``step``.

Each rule keeps the wording its main edge answered with before (so ``since: 'yesterday' is not
an ISO time ...`` and ``--ramp-up '30min' is not an ISO 8601 duration ...`` read as they did).

From a Flask view: ``try: h = inputs.hours(request.args.get("hours", "4"))`` /
``except InputError as exc: return 400``. From click: ``callback=inputs.click_callback(inputs.hours)``
(a refusal becomes a usage error naming the option), or call the rule in the command body and
refuse as the command refuses other input. InputError is a ValueError, so handlers that answer
ValueError with a 400 keep doing so.

Only the standard library and isodate: the VTN and VEN images have no pandas.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from typing import Any

import isodate

from cariflex.json_input import quote

__all__ = [
    "HOURS_RANGE",
    "MAX_DURATION",
    "PERIOD_YEARS",
    "SINCE_MAX_YEARS",
    "TARIFF_RANGE_EUR_PER_MWH",
    "InputError",
    "Period",
    "click_callback",
    "duration",
    "hours",
    "period",
    "since",
    "tariff",
]

HOURS_RANGE = (0.25, 48.0)
SINCE_MAX_YEARS = 10
PERIOD_YEARS = (2000, 2100)
TARIFF_RANGE_EUR_PER_MWH = (0.0, 10_000.0)
MAX_DURATION = timedelta(days=7)

# A number as people type it: plain ASCII decimal, optional exponent. (float() also takes
# "1_000", " ４ ", "nan" and "infinity"; none of them is a value anyone means here.)
_DECIMAL = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?", re.ASCII)


class InputError(ValueError):
    """Bad input; the message names the input and the problem."""


def _number(value: Any) -> float | None:
    """``value`` (a number, or text of one) as a float; None when it is neither."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        try:
            return float(value)
        except OverflowError:  # an integer beyond float range
            return math.inf if value > 0 else -math.inf
    if isinstance(value, str) and _DECIMAL.fullmatch(value.strip()):
        return float(value.strip())  # "1e999" is inf: refused by the range check
    return None


def hours(value: Any, name: str = "hours") -> float:
    """A look-ahead in hours within :data:`HOURS_RANGE` (0.25..48)."""
    number = _number(value)
    if number is None:
        raise InputError(f"{name}: {quote(value)} is not a number")
    low, high = HOURS_RANGE
    if not (math.isfinite(number) and low <= number <= high):
        raise InputError(
            f"{name}: {quote(value)} must be at least {low:g} (one 15-minute period) and at most {high:g}"
        )
    return number


def since(value: Any, name: str = "since", now: datetime | None = None) -> datetime:
    """The UTC moment ``value`` names: an ISO 8601 time (read as UTC without an offset) or an
    ISO 8601 duration back from ``now``; in the past, at most :data:`SINCE_MAX_YEARS` years ago."""
    now = (now or datetime.now(UTC)).astimezone(UTC)
    problem = (
        f"{name}: {quote(value)} is not an ISO time (2026-11-24T06:00-04:00) or an ISO 8601 duration (PT24H)"
    )
    raw = value.strip() if isinstance(value, str) else ""
    if not raw:
        raise InputError(problem)
    is_duration = raw[:1].upper() == "P"
    moment: datetime | None
    try:
        if is_duration:
            moment = now - isodate.parse_duration(raw)  # months and years too: P1M is a month back
        else:
            moment = datetime.fromisoformat(raw)
            moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment
        moment = moment.astimezone(UTC)
    except (ValueError, OverflowError, TypeError, ArithmeticError, isodate.ISO8601Error):
        moment = None
    if moment is None:
        raise InputError(problem)
    if moment >= now:
        what = "must be a positive duration" if is_duration else f"lies in the future ({moment.isoformat()})"
        raise InputError(f"{name}: {quote(value)} {what}")
    if now.year - moment.year > SINCE_MAX_YEARS:
        raise InputError(f"{name}: {quote(value)} is more than {SINCE_MAX_YEARS} years ago")
    return moment


@dataclass(frozen=True)
class Period:
    """Whole local days: ``first`` to ``last`` inclusive, as typed (``label``)."""

    label: str
    first: date
    last: date

    def bounds(self, tz: tzinfo) -> tuple[datetime, datetime]:
        """[start, end) in UTC of these days in the timezone ``tz``."""
        start = datetime.combine(self.first, time(0), tz).astimezone(UTC)
        end = datetime.combine(self.last + timedelta(days=1), time(0), tz).astimezone(UTC)
        return start, end


_PERIOD_FORMS = {
    "day": (re.compile(r"(\d{4})-(\d{2})-(\d{2})", re.ASCII), "2026-11-24"),
    "month": (re.compile(r"(\d{4})-(\d{1,2})", re.ASCII), "2026-11"),
    "year": (re.compile(r"(\d{4})", re.ASCII), "2026"),
}


def period(
    day: str | None = None, month: str | None = None, year: str | None = None, *, prefix: str = ""
) -> Period:
    """Exactly one of ``day`` (YYYY-MM-DD), ``month`` (YYYY-MM) or ``year`` (YYYY), within
    :data:`PERIOD_YEARS`. ``prefix`` goes before the names in messages (``--`` for a CLI)."""
    given = [(kind, v) for kind, v in (("day", day), ("month", month), ("year", year)) if v]
    if len(given) != 1:
        raise InputError(
            f"give exactly one of {prefix}day (YYYY-MM-DD), {prefix}month (YYYY-MM) or {prefix}year (YYYY)"
        )
    kind, value = given[0]
    pattern, example = _PERIOD_FORMS[kind]
    found = pattern.fullmatch(value) if isinstance(value, str) else None
    first = last = None
    if found:
        parts = [int(p) for p in found.groups()]
        try:
            if kind == "day":
                first = last = date(*parts)
            elif kind == "month":
                first = date(parts[0], parts[1], 1)
                last = (first.replace(day=28) + timedelta(days=4)).replace(day=1) - timedelta(days=1)
            else:
                first, last = date(parts[0], 1, 1), date(parts[0], 12, 31)
        except ValueError:  # month 13, 31 February, year 0
            first = last = None
    if first is None or last is None:
        raise InputError(f"{prefix}{kind} {quote(value)} is not a {kind} like {example}")
    low, high = PERIOD_YEARS
    if not low <= first.year <= high:
        raise InputError(f"{prefix}{kind} {quote(value)} is outside the years {low}..{high}")
    return Period(value, first, last)


def tariff(value: Any, name: str = "tariff") -> float:
    """A flat feed-in tariff in EUR/MWh within :data:`TARIFF_RANGE_EUR_PER_MWH` (0..10,000)."""
    number = _number(value)
    if number is None:
        raise InputError(f"{name} {quote(value)} is not a number (EUR/MWh)")
    low, high = TARIFF_RANGE_EUR_PER_MWH
    if not low <= number <= high:  # also refuses nan
        raise InputError(f"{name} {number:g} EUR/MWh is outside {low:g}..{high:g}")
    return number


def duration(
    value: Any,
    name: str = "duration",
    *,
    required: bool = True,
    maximum: timedelta = MAX_DURATION,
    step: timedelta | None = None,
    hint: str = "",
) -> timedelta | None:
    """A positive ISO 8601 duration in days, hours, minutes or seconds (``PT4H``, ``PT30M``), at
    most ``maximum`` (7 days), a whole number of ``step`` when given. None (or "") is refused
    unless not ``required``, then None comes back. ``hint`` follows the too-long message."""
    if value is None or value == "":
        if required:
            raise InputError(f"{name} is missing; give an ISO 8601 duration such as PT4H")
        return None
    if isinstance(value, timedelta):
        parsed: Any = value
    else:
        parsed = None
        if isinstance(value, str):
            try:
                parsed = isodate.parse_duration(value.strip())
            except (isodate.ISO8601Error, ValueError, OverflowError, TypeError, ArithmeticError):
                parsed = None
        if parsed is None:
            raise InputError(f"{name} {quote(value)} is not an ISO 8601 duration (e.g. PT4H, PT30M)")
        if not isinstance(parsed, timedelta):
            raise InputError(f"{name} {quote(value)}: use days, hours or minutes, not months or years")
    if parsed <= timedelta(0):
        raise InputError(f"{name} {quote(value)} must be a positive duration")
    if parsed > maximum:
        raise InputError(
            f"{name} {quote(value)} is longer than {maximum.days} days" + (f"; {hint}" if hint else "")
        )
    if step is not None and parsed % step:
        raise InputError(
            f"{name} {quote(value)} must be a whole number of {step.total_seconds() / 60:g}-minute steps"
        )
    return parsed


def click_callback(rule: Callable[..., Any], **options: Any) -> Callable[[Any, Any, Any], Any]:
    """A click option callback that runs ``rule`` (with ``options``) on the option's value and
    names the option (its longest flag) in a refusal, which click shows as a usage error. An
    unset option (None) passes through."""

    def callback(ctx: Any, param: Any, value: Any) -> Any:
        if value is None:
            return None
        flag = max(param.opts, key=len) if getattr(param, "opts", None) else param.name
        try:
            return rule(value, flag, **options)
        except InputError as exc:
            import click  # only where click runs the callback: the core does not need it

            raise click.UsageError(str(exc), ctx) from None

    return callback
