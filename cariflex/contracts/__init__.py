"""Contracts: the shape of what travels between Cariflex processes, one module per arrow.

A contract here is a frozen dataclass for one payload that crosses a process boundary (an HTTP
body, a JSON document kept in the VEN's outbox state), with

- ``from_dict(data)``: the payload as parsed JSON in, a checked object out, or one
  :class:`ContractError` whose message names the field (``intervals[3].value``) and the problem,
  quoting at most ~60 characters of the input (``cariflex.json_input.quote``);
- ``to_dict()``: the JSON-ready dict, with the same keys and value formats (ISO 8601 times and
  durations, units) that travel today, so that swapping a contract in changes no byte on the wire.

The rule: both sides of an arrow use the same contract. The producer builds the object and sends
``to_dict()``; the consumer reads with ``from_dict`` (and maps a ContractError to its own refusal,
e.g. a 422). A change to what travels is then made in one place, and a test of the contract is a
test of both ends.

The arrows:

- ``openadr_event``: the normalised OpenADR event, VEN bridge (``ven_bridge.policy``) -> plugin
  (``POST /api/cariflex/v1/openadr/events``), and the VEN's own copy of its load-control events
  (outbox state ``load_control_events``) that the CEM's fleet controller caps the site by;
- ``fleet_schedule``: the fleet schedule, plugin (``GET /api/cariflex/v1/schedule``) -> VEN bridge's
  schedule follower (outbox state ``schedule``) -> fleet controller;
- ``s2_device``: operator setpoints (``cariflex-ven setpoint`` -> outbox state ``setpoints`` -> fleet
  controller) and the per-device state the CEM reports (outbox state ``s2`` -> ``cariflex-ven
  status``).

Only the core may be imported here (plus the standard library and isodate): the VTN and VEN images
carry neither FlexMeasures nor pandas. The helpers below read one JSON value each; they are for
the contract modules, not a general validation library (operator input is ``cariflex.inputs``).
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn

import isodate

from cariflex.json_input import JsonInputError, clip, finite, quote

MAX_YEARS_AWAY = 10  # times further from today than this are typing or clock errors
MAX_NAME = 100  # device names: longer ones are not a fleet's


class ContractError(ValueError):
    """A payload that does not meet its contract; the message names the field and the problem."""


def fail(where: str, problem: str) -> NoReturn:
    raise ContractError(f"{where}: {problem}")


def fields(
    value: Any,
    where: str,
    required: tuple[str, ...],
    optional: tuple[str, ...] = (),
    *,
    exact: bool = True,
) -> dict[str, Any]:
    """``value`` as a JSON object with the ``required`` keys; with ``exact``, no other keys than
    ``required`` and ``optional`` (a reader that ignores extra keys passes ``exact=False``)."""
    if not isinstance(value, dict):
        fail(where, f"must be a JSON object, got {type(value).__name__}")
    missing = [k for k in required if k not in value]
    allowed = set(required) | set(optional)
    unknown = sorted(clip(str(k), 30) for k in value if k not in allowed) if exact else []
    problems = []
    if missing:
        problems.append(f"missing field(s) {', '.join(missing)}")
    if unknown:
        shown = unknown[:5] + ([f"… ({len(unknown) - 5} more)"] if len(unknown) > 5 else [])
        problems.append(f"unknown field(s) {', '.join(shown)}")
    if problems:
        expected = ", ".join(required + optional)
        fail(where, f"{'; '.join(problems)} (expected {'exactly' if exact else 'at least'}: {expected})")
    return value


def text(value: Any, where: str, *, max_length: int = 200, printable: bool = False) -> str:
    """A non-empty string of at most ``max_length`` characters (with ``printable``: no control or
    invisible characters)."""
    if not isinstance(value, str) or not value.strip():
        fail(where, f"must be a non-empty string, got {quote(value)}")
    if len(value) > max_length:
        fail(where, f"longer than {max_length} characters")
    if printable and not value.isprintable():
        fail(where, f"{quote(value)} contains control or invisible characters")
    return value


def name(value: Any, where: str) -> str:
    """A device name: a non-empty printable string of at most :data:`MAX_NAME` characters."""
    return text(value, where, max_length=MAX_NAME, printable=True)


def integer(value: Any, where: str, *, low: int = 0, high: int = 2**32 - 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        fail(where, f"must be an integer >= {low}, got {quote(value)}")
    if not low <= value <= high:
        fail(where, f"must be an integer within {low}..{high}, got {quote(value)}")
    return value


def boolean(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        fail(where, f"must be true or false, got {quote(value)}")
    return value


def number(value: Any, where: str) -> float:
    """A finite JSON number (not a boolean), as it came: an integer stays one, so that
    ``to_dict`` gives back the bytes it was given. (Messages as the plugin's event ingestion
    answered before the contracts; other contracts use :func:`finite_number`.)"""
    if isinstance(value, bool) or not isinstance(value, int | float):
        fail(where, f"must be a number, got {quote(value)}")
    try:
        result = float(value)
    except OverflowError:  # an integer beyond float range, e.g. 10**400
        result = None
    if result is None:
        fail(where, f"{quote(value)} is too large")
    if not math.isfinite(result):
        fail(where, f"must be a finite number, got {quote(result)}")
    return value if isinstance(value, int) else result


def finite_number(value: Any, where: str) -> float:
    """A finite JSON number (``cariflex.json_input.finite``), as it came (an integer stays one)."""
    try:
        finite(value, where)
    except JsonInputError as exc:
        raise ContractError(str(exc)) from None
    except OverflowError:  # an integer beyond float range, e.g. 10**400
        fail(where, f"{quote(value)} is too large")
    return value


def optional_finite(value: Any, where: str) -> float | None:
    return None if value is None else finite_number(value, where)


def moment(value: Any, where: str, *, now: datetime | None = None) -> datetime:
    """An ISO 8601 date-time string with a UTC offset, within :data:`MAX_YEARS_AWAY` years of
    today; returned as parsed (its own offset kept, so that ``isoformat()`` gives it back)."""
    if not isinstance(value, str):
        fail(where, f"must be an ISO 8601 date-time string, got {quote(value)}")
    # (no fail() inside an except block: the exception it chains to would carry the whole input)
    try:
        parsed: datetime | None = datetime.fromisoformat(value)
    except ValueError:
        parsed = None
    if parsed is None:
        fail(where, f"{quote(value)} is not an ISO 8601 date-time")
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        fail(where, f"{quote(value)} has no UTC offset (add an offset such as +00:00)")
    try:
        in_utc: datetime | None = parsed.astimezone(UTC)
    except OverflowError:
        in_utc = None
    if in_utc is None:
        fail(where, f"{quote(value)} is out of range")
    if abs(in_utc.year - (now or datetime.now(UTC)).year) > MAX_YEARS_AWAY:
        fail(where, f"{quote(value)} is more than {MAX_YEARS_AWAY} years from today")
    return parsed


def duration(value: Any, where: str, *, maximum: timedelta) -> timedelta:
    """A positive ISO 8601 duration string of fixed length (no years or months), at most ``maximum``."""
    if not isinstance(value, str):
        fail(where, f"must be an ISO 8601 duration string such as 'PT1H', got {quote(value)}")
    try:
        parsed: Any = isodate.parse_duration(value)
    except (isodate.ISO8601Error, ValueError, ArithmeticError, TypeError):
        parsed = None
    if parsed is None:
        fail(where, f"{quote(value)} is not an ISO 8601 duration such as 'PT1H'")
    if not isinstance(parsed, timedelta):  # years or months: no fixed length
        fail(where, f"{quote(value)} has no fixed length (use days, hours or minutes)")
    if parsed <= timedelta(0):
        fail(where, f"{quote(value)} must be positive")
    if parsed > maximum:
        fail(where, f"{quote(value)} is longer than {maximum.days} days")
    return parsed


def iso_duration(value: timedelta) -> str:
    """A duration as it travels: ``PT1H``, ``PT15M``, ``P1DT2H`` (isodate's formatting)."""
    return isodate.duration_isoformat(value)


def strings(value: Any, where: str, *, max_items: int = 10_000) -> tuple[str, ...]:
    """A JSON list of strings."""
    if not isinstance(value, list):
        fail(where, f"must be a list, got {type(value).__name__}")
    if len(value) > max_items:
        fail(where, f"has {len(value)} items; at most {max_items}")
    for index, item in enumerate(value):
        if not isinstance(item, str):
            fail(f"{where}[{index}]", f"must be a string, got {quote(item)}")
    return tuple(value)


__all__ = ["ContractError", "MAX_NAME", "MAX_YEARS_AWAY"]
