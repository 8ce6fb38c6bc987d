"""JSON from outside, read with limits: the one parser behind every HTTP edge we own.

Python's ``json`` accepts what no API of ours should: ``NaN``/``Infinity``, ``1e999`` (read as
``inf``), nesting deep enough to raise RecursionError (a 500), integers of more than 4300 digits
(ValueError from the int conversion, another 500), ``\\u0000`` and lone surrogates (``\\ud800``),
which PostgreSQL refuses mid-transaction and whose error text then carried the SQL statement into
the answer. :func:`load_json` refuses each of them with a :class:`JsonInputError` that names the
place (``intervals[3].value``) and quotes at most :data:`QUOTE_CHARS` characters of the input.

Used by the plugin's API (Flask) and the VTN admin API (aiohttp); nothing here imports either.
"""

from __future__ import annotations

import json
import math
from typing import Any

MAX_BYTES = 1024 * 1024  # a day of 1-minute values for 20 sensors is ~1 MB as JSON
MAX_DEPTH = 32  # our deepest document (an event with intervals) is 3 levels
MAX_NUMBER_DIGITS = 40  # more digits than any float can tell apart
QUOTE_CHARS = 60  # refused input quoted in answers and logs at most this long


class JsonInputError(ValueError):
    """The body is not JSON we accept; the message names the place and the problem."""


def quote(value: Any, limit: int = QUOTE_CHARS) -> str:
    """``value`` as an answer or a log line may show it: repr, clipped, printable."""
    text = repr(value)
    text = "".join(c if c.isprintable() else "?" for c in text[: limit + 1])
    return text if len(text) <= limit else text[:limit] + "…"


def clip(text: str, limit: int = QUOTE_CHARS) -> str:
    """Outside text as an answer or a log line may show it, unquoted: clipped, printable."""
    text = "".join(c if c.isprintable() else "?" for c in str(text)[: limit + 1])
    return text if len(text) <= limit else text[:limit] + "…"


def _depth(text: str, max_depth: int) -> None:
    """Refuse nesting beyond ``max_depth`` before json.loads can recurse (RecursionError)."""
    depth = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > max_depth:
                raise JsonInputError(f"the JSON is nested more than {max_depth} levels deep")
        elif char in "]}":
            depth -= 1


def _number(text: str) -> float:
    if len(text.lstrip("-").replace(".", "").split("e")[0].split("E")[0]) > MAX_NUMBER_DIGITS:
        raise JsonInputError(f"the number {quote(text)} has more than {MAX_NUMBER_DIGITS} digits")
    value = float(text)
    if not math.isfinite(value):
        raise JsonInputError(f"the number {quote(text)} is out of range (not a finite number)")
    return value


def _integer(text: str) -> int:
    if len(text.lstrip("-")) > MAX_NUMBER_DIGITS:
        raise JsonInputError(f"the number {quote(text)} has more than {MAX_NUMBER_DIGITS} digits")
    return int(text)


def _constant(name: str) -> Any:
    raise JsonInputError(f"{name} is not a JSON number; send a finite number")


def _check_strings(value: Any, path: str) -> None:
    if isinstance(value, str):
        _check_text(value, path)
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_text(key, f"{path}.{quote(key, 30)}" if path else quote(key, 30))
            _check_strings(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_strings(item, f"{path}[{index}]")


def _check_text(text: str, path: str) -> None:
    if "\x00" in text:
        raise JsonInputError(f"{path or 'the body'}: text contains a NUL character (U+0000)")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise JsonInputError(
            f"{path or 'the body'}: text contains a lone surrogate ({quote(text)})"
        ) from None


def load_json(raw: bytes | str, *, max_bytes: int = MAX_BYTES, max_depth: int = MAX_DEPTH) -> Any:
    """The JSON document in ``raw``, or a JsonInputError naming what is wrong with it."""
    if len(raw) > max_bytes:
        raise JsonInputError(f"the body has {len(raw)} bytes; the limit is {max_bytes}")
    if isinstance(raw, bytes):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise JsonInputError(f"the body is not UTF-8 (byte {exc.start})") from None
    else:
        text = raw
    _depth(text, max_depth)
    try:
        value = json.loads(text, parse_float=_number, parse_int=_integer, parse_constant=_constant)
    except JsonInputError:
        raise
    except (ValueError, RecursionError) as exc:
        raise JsonInputError(f"the body is not valid JSON: {quote(str(exc), 100)}") from None
    _check_strings(value, "")
    return value


def finite(value: Any, name: str, *, low: float | None = None, high: float | None = None) -> float:
    """A number within [low, high] for field ``name``; refuses booleans, text, NaN and infinities."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise JsonInputError(f"{name}: {quote(value)} is not a number")
    number = float(value)
    if not math.isfinite(number):
        raise JsonInputError(f"{name}: {quote(value)} is not a finite number")
    if (low is not None and number < low) or (high is not None and number > high):
        raise JsonInputError(f"{name}: {number:g} is outside {low:g}..{high:g}")
    return number
