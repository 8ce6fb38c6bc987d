"""The meter-reading contract (cariflex/contracts/meter_reading.py) against input we did not write:
any topic and any payload is a reading or a refusal that names the problem, never a crash."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cariflex.contracts.meter_reading import (
    Reading,
    ReadingRefused,
    dead_letter_topic,
    encode,
    parse_payload,
    parse_topic,
    to_unit,
)

WHEN = datetime(2026, 12, 6, 10, 0, 1, tzinfo=timezone(timedelta(hours=-4)))


def test_a_reading_round_trips_through_its_payload():
    reading = parse_payload("gw", "pv_01_meter", encode(12.5, WHEN))
    assert reading == Reading("gw", "pv_01_meter", 12.5, WHEN, "kW")
    assert to_unit(parse_payload("gw", "x", encode(2500, WHEN, "W")), "kW") == 2.5


@pytest.mark.parametrize(
    ("payload", "problem"),
    [
        (b"[1]", "not an object"),
        (b'{"value": 1, "time": "2026-12-06T10:00:00", "unit": "kW"}', "has no UTC offset"),
        (b'{"value": "1", "time": "2026-12-06T10:00:00Z", "unit": "kW"}', "value: expected a number"),
        (b'{"value": 1e999, "time": "2026-12-06T10:00:00Z", "unit": "kW"}', "not a finite number"),
        (
            b'{"value": Infinity, "time": "2026-12-06T10:00:00Z", "unit": "kW"}',
            "Infinity is not a JSON number",
        ),
        (b'{"value": 1, "time": "yesterday", "unit": "kW"}', "not ISO 8601"),
        # year 1 with a positive offset passes ISO 8601 but cannot be turned into UTC
        (b'{"value": 1, "time": "0001-01-01T00:00:00+01:00", "unit": "kW"}', "out of range"),
        (b'{"value": 1, "time": "2026-12-06T10:00:00Z"}', "unit: expected"),
        (b'{"value": 1, "time": "2026-12-06T10:00:00Z", "unit": "kW", "x": 1}', "unknown field(s) 'x'"),
        (b"[" * 900 + b"]" * 100, "not a JSON object"),
        (b" " * 2000, "at most 1024"),
    ],
)
def test_a_payload_that_is_not_a_reading_is_refused_naming_the_problem(payload, problem):
    with pytest.raises(ReadingRefused) as refused:
        parse_payload("gw", "s", payload)
    assert problem in str(refused.value)


def test_a_unit_that_does_not_fit_the_sensor_is_refused():
    with pytest.raises(ReadingRefused, match="unit 'kWh' does not fit sensor x"):
        to_unit(parse_payload("gw", "x", encode(1, WHEN, "kWh")), "kW")


@given(st.binary(max_size=300))
def test_any_payload_is_a_reading_or_a_refusal(payload):
    try:
        reading = parse_payload("gw", "s", payload)
    except ReadingRefused as refused:
        assert str(refused)
    else:
        assert math.isfinite(reading.value) and reading.time.utcoffset() is not None


@given(st.text(max_size=120))
def test_any_topic_is_a_gateway_and_sensor_or_a_refusal_and_always_has_a_dead_letter_topic(name):
    try:
        gateway, sensor = parse_topic(name)
    except ReadingRefused as refused:
        assert str(refused)
    else:
        assert name == f"cariflex/meters/{gateway}/{sensor}"
    parts = (name.split("/") + ["", "", "", ""])[2:4]
    assert dead_letter_topic(*parts).startswith("cariflex/dead-letter/")
    assert "+" not in dead_letter_topic(*parts) and "#" not in dead_letter_topic(*parts)


@given(
    st.floats(allow_nan=False, allow_infinity=False),
    st.datetimes(timezones=st.just(UTC), min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1)),
)
def test_what_a_publisher_encodes_the_service_reads_back(value, when):
    reading = parse_payload("gw", "s", encode(value, when))
    assert reading.value == value and reading.time == when


def test_a_bad_broker_url_is_refused_without_showing_its_password():
    from meter_ingest.service import Ingestor
    from simulator.mqtt_meters import MeterPublisher

    for make in (lambda url: Ingestor(url, "postgresql://nowhere/x"), lambda url: MeterPublisher(url, [])):
        with pytest.raises(ValueError) as refused:
            make("http://cariflex:s3cret-pw@127.0.0.1:1883")
        assert "s3cret" not in str(refused.value) and "mqtt://" in str(refused.value)
        with pytest.raises(ValueError) as refused:  # a '/' in a password unquoted: urllib names it
            make("mqtt://cariflex:Ab3/s3cret@127.0.0.1:1883")
        assert "Ab3" not in str(refused.value) and "s3cret" not in str(refused.value)
