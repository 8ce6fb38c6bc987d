"""Arrow: meters and gateways -> MQTT broker -> meter ingestion (-> FlexMeasures' ``timed_belief``).

One reading per message, QoS 1, on the topic ``cariflex/meters/<gateway>/<sensor name>`` (the
gateway names the data source its readings are stored under; the sensor is resolved by name), with
a JSON object as payload::

    {"value": 12.5, "time": "2026-12-06T10:00:01-04:00", "unit": "kW"}

``value`` a finite number (not a boolean), ``time`` ISO 8601 with its UTC offset (when the meter
measured), ``unit`` the unit of ``value`` (``W``, ``kW`` or ``MW`` for a power sensor in kW).
Refused readings go to ``cariflex/dead-letter/<gateway>/<sensor name>`` with the reason. Used by
both sides: publishers (the simulator's meters, the load test) encode with :func:`encode`, the
ingestion service decodes with :func:`parse_topic` and :func:`parse_payload`.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import ParseResult, urlparse

TOPIC_PREFIX = "cariflex/meters"
DEAD_LETTER_PREFIX = "cariflex/dead-letter"
SUBSCRIPTION = f"{TOPIC_PREFIX}/+/+"
MAX_PAYLOAD_BYTES = 1024
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
# A power sensor in kW takes readings in these units (factor to kW)
POWER_UNITS_TO_KW = {"W": 0.001, "kW": 1.0, "MW": 1000.0}


class ReadingRefused(ValueError):
    """A message that is not a reading of this contract; the text is the reason."""


@dataclass(frozen=True)
class Reading:
    gateway: str
    sensor: str
    value: float
    time: datetime  # aware
    unit: str


def topic(gateway: str, sensor: str) -> str:
    for what, name in (("gateway", gateway), ("sensor", sensor)):
        if not _NAME.match(name):
            raise ValueError(f"{what} name {name!r} must be 1-64 letters, digits, '_', '.' or '-'")
    return f"{TOPIC_PREFIX}/{gateway}/{sensor}"


def dead_letter_topic(gateway: str, sensor: str) -> str:
    """Where a refused reading goes (names that are not valid become '_', so any topic has one)."""
    safe = [name if _NAME.match(name) else "_" for name in (gateway, sensor)]
    return f"{DEAD_LETTER_PREFIX}/{safe[0]}/{safe[1]}"


def parse_topic(name: str) -> tuple[str, str]:
    """(gateway, sensor) of a reading's topic."""
    parts = name.split("/")
    if len(parts) != 4 or "/".join(parts[:2]) != TOPIC_PREFIX:
        raise ReadingRefused(f"topic {name[:120]!r} is not {TOPIC_PREFIX}/<gateway>/<sensor>")
    gateway, sensor = parts[2], parts[3]
    for what, value in (("gateway", gateway), ("sensor", sensor)):
        if not _NAME.match(value):
            raise ReadingRefused(
                f"topic {name[:120]!r}: {what} name must be 1-64 letters, digits, '_', '.' or '-'"
            )
    return gateway, sensor


def parse_payload(gateway: str, sensor: str, payload: bytes) -> Reading:
    """The reading, or :class:`ReadingRefused` naming the field and the problem."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise ReadingRefused(f"payload has {len(payload)} bytes; at most {MAX_PAYLOAD_BYTES}")
    try:
        data = json.loads(payload.decode("utf-8"), parse_constant=_no_constant)
    except ReadingRefused:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ReadingRefused(f"payload is not a JSON object: {str(exc)[:120]}") from None
    if not isinstance(data, dict):
        raise ReadingRefused(f"payload is a JSON {type(data).__name__}, not an object")
    extra = sorted(set(data) - {"value", "time", "unit"})
    if extra:
        raise ReadingRefused(f"unknown field(s) {', '.join(repr(k[:40]) for k in extra[:5])}")
    value = data.get("value")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ReadingRefused(f"value: expected a number, got {_short(value)}")
    value = float(value)
    if not math.isfinite(value):
        raise ReadingRefused(f"value: {value} is not a finite number")
    stamp = data.get("time")
    if not isinstance(stamp, str):
        raise ReadingRefused(f"time: expected an ISO 8601 string with its UTC offset, got {_short(stamp)}")
    try:
        when = datetime.fromisoformat(stamp)
    except ValueError:
        raise ReadingRefused(f"time: {_short(stamp)} is not ISO 8601") from None
    if when.tzinfo is None or when.utcoffset() is None:
        raise ReadingRefused(f"time: {_short(stamp)} has no UTC offset")
    if not 1970 <= when.year <= 9998:  # (year 1 with an offset cannot even be turned into UTC)
        raise ReadingRefused(f"time: {_short(stamp)} is out of range")
    unit = data.get("unit")
    if not isinstance(unit, str) or not unit or len(unit) > 16:
        raise ReadingRefused(f"unit: expected a unit like 'kW', got {_short(unit)}")
    return Reading(gateway, sensor, value, when, unit)


def _no_constant(name: str):
    raise ReadingRefused(f"value: {name} is not a JSON number")


def _short(value: object) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def encode(value: float, time: datetime, unit: str = "kW") -> bytes:
    """A reading's payload, as publishers send it."""
    if time.tzinfo is None:
        raise ValueError("time must be timezone-aware")
    return json.dumps({"value": value, "time": time.isoformat(), "unit": unit}).encode()


def to_unit(reading: Reading, sensor_unit: str) -> float:
    """The value in the sensor's unit, or :class:`ReadingRefused` if the units do not match."""
    if reading.unit == sensor_unit:
        return reading.value
    if sensor_unit == "kW" and reading.unit in POWER_UNITS_TO_KW:
        return reading.value * POWER_UNITS_TO_KW[reading.unit]
    raise ReadingRefused(f"unit {reading.unit!r} does not fit sensor {reading.sensor} (in {sensor_unit})")


def broker_address(url: str, what: str) -> tuple[ParseResult, int]:
    """The parsed broker URL and its port; a bad one is refused without echoing it (it may hold
    the password, which urllib quotes back in some of its errors)."""
    parsed = urlparse(url)
    try:
        port = parsed.port or 1883
    except ValueError:
        port = None
    if parsed.scheme not in ("mqtt", "tcp") or not parsed.hostname or port is None:
        raise ValueError(f"{what} must be mqtt://[user:password@]host:port (user and password URL-quoted)")
    return parsed, port
