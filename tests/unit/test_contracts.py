"""The contracts between processes (cariflex.contracts) and the shared input rules (cariflex.inputs).

For each contract: what the real producer emits passes ``from_dict`` and comes back unchanged from
``to_dict``; what the consumer refused before is refused, naming the field; and on arbitrary JSON
``from_dict`` raises nothing but ContractError. The same for the input rules with InputError.
No database, no network: the producers called here are pure functions.
"""

from __future__ import annotations

import copy
import importlib
import math
from datetime import UTC, datetime, timedelta, timezone
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cariflex import inputs
from cariflex.contracts import MAX_YEARS_AWAY, ContractError, iso_duration
from cariflex.contracts.fleet_schedule import MAX_PERIODS, FleetSchedule
from cariflex.contracts.openadr_event import (
    LOAD_CONTROL,
    PRICE,
    PRICE_RANGE_EUR_PER_KWH,
    STORED_ON,
    Interval,
    ItemBase,
    OpenAdrEvent,
)
from cariflex.contracts.s2_device import DeviceStatus, FleetStatus, Setpoints
from cariflex.inputs import InputError

PROPERTY = settings(
    max_examples=300,
    derandomize=True,
    database=None,  # nothing written next to the tests
    deadline=None,
    suppress_health_check=list(HealthCheck),
)


def _module(*names: str):
    """A producer or consumer module, under its new path or its old one (files are moving)."""
    for name in names:
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    pytest.skip(f"none of {', '.join(names)} can be imported")


def refused(cls_or_rule, data, *fragments: str, error=ContractError, **kwargs) -> str:
    with pytest.raises(error) as caught:
        cls_or_rule(data, **kwargs) if not hasattr(cls_or_rule, "from_dict") else cls_or_rule.from_dict(data)
    message = str(caught.value)
    assert type(caught.value) is error
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    return message


# Arbitrary JSON as json.loads gives it (NaN included: the VEN's outbox state is read that way).
JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=10**300, max_value=10**400)
    | st.floats()
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=5),
    max_leaves=25,
)


def _paths(doc: Any, prefix: tuple = ()):
    yield prefix
    if isinstance(doc, dict):
        for key, value in doc.items():
            yield from _paths(value, (*prefix, key))
    elif isinstance(doc, list):
        for index, value in enumerate(doc):
            yield from _paths(value, (*prefix, index))


def _mutated(data, valid: dict) -> Any:
    """``valid`` with one place replaced by arbitrary JSON, removed, or given an extra key."""
    doc = copy.deepcopy(valid)
    path = data.draw(st.sampled_from(list(_paths(doc))))
    action = data.draw(st.sampled_from(["replace", "remove", "add"]))
    if not path:
        return data.draw(JSON) if action == "replace" else doc
    parent = doc
    for step in path[:-1]:
        parent = parent[step]
    last = path[-1]
    if action == "replace":
        parent[last] = data.draw(JSON)
    elif action == "remove":
        del parent[last]
    elif isinstance(parent, dict):
        parent[data.draw(st.text(max_size=8))] = data.draw(JSON)
    else:
        parent.append(data.draw(JSON))
    return doc


def assert_only_contract_errors(cls, payload: Any) -> None:
    try:
        parsed = cls.from_dict(payload)
    except ContractError as exc:
        assert len(str(exc)) < 600, str(exc)
    else:
        assert cls.from_dict(parsed.to_dict()).to_dict() == parsed.to_dict()


# --- the normalised OpenADR event ----------------------------------------------------------------

policy = _module("ven_bridge.policy")
T0 = (datetime.now(UTC) + timedelta(days=1)).replace(hour=4, minute=0, second=0, microsecond=0)
RESOURCES = {"bat_01", "ev_01", "Cariflex site"}


def openleadr_event(signals, *, status="far", number=2, modified=None) -> dict:
    """An event as openleadr hands it to the VEN's handler (as tests/unit/test_ven_policy.py)."""
    end = max(s[2][-1][0] + s[2][-1][1] for s in signals)
    return {
        "event_descriptor": {
            "event_id": "evt-20261124-8fc1a133",
            "modification_number": number,
            "event_status": status,
            "modification_date_time": modified or T0 - timedelta(hours=5, microseconds=-123456),
        },
        "active_period": {"dtstart": T0, "duration": end - T0},
        "event_signals": [
            {
                "signal_name": name,
                "signal_type": kind,
                "measurement": {"description": "currencyPerKWh", "unit": "EUR", "scale": "none"}
                if kind == "price"
                else {},
                "intervals": [
                    {"dtstart": start, "duration": length, "uid": i, "signal_payload": value}
                    for i, (start, length, value) in enumerate(intervals)
                ],
            }
            for name, kind, intervals in signals
        ],
        "targets": [{"ven_id": "ven-1"}],
    }


def hourly(values, start=T0, step=timedelta(hours=1)):
    return [(start + i * step, step, v) for i, v in enumerate(values)]


PRICES = [round(0.08 + 0.005 * h, 3) for h in range(24)]
PRODUCED = {
    "day-ahead prices": [("ENERGY_PRICE", "price", hourly(PRICES))],
    "electricity prices": [("ELECTRICITY_PRICE", "price", hourly([0.1, -0.02, 0.35]))],
    "15-minute prices averaged": [
        ("ENERGY_PRICE", "price", hourly([0.1, 0.2, 0.3, 0.4, 0.05] * 4, step=timedelta(minutes=15)))
    ],
    "load control": [
        (
            "LOAD_CONTROL",
            "x-loadControlCapacity",
            hourly([0.6, 0.5, 0.4, 0.7], start=T0 + timedelta(hours=14)),
        )
    ],
    "load control, quarter hours": [
        (
            "LOAD_CONTROL",
            "x-loadControlCapacity",
            hourly([0.0, 1, 0.25], start=T0 + timedelta(minutes=45), step=timedelta(minutes=15)),
        )
    ],
    "two signals": [
        ("ENERGY_PRICE", "price", hourly(PRICES[:4])),
        ("LOAD_CONTROL", "x-loadControlCapacity", hourly([0.5, 0.5])),
    ],
}


def produced_parts(case: str, **kwargs) -> tuple[dict, ...]:
    decision = policy.decide(openleadr_event(PRODUCED[case], **kwargs), RESOURCES)
    assert decision.opt == "optIn", decision.reason
    return decision.parts


@pytest.mark.parametrize("case", PRODUCED)
def test_what_the_ven_policy_emits_passes_and_comes_back_unchanged(case):
    for part in produced_parts(case):
        event = OpenAdrEvent.from_dict(copy.deepcopy(part))
        assert event.to_dict() == part
        assert list(event.to_dict()) == list(part)  # the same keys in the same order
        assert event.key == policy.part_key(part)


def test_a_cancellation_and_the_ven_s_withdrawal_pass():
    (part,) = produced_parts("load control")
    cancelled = {**part, "status": "cancelled", "intervals": []}  # a VTN may cancel without intervals
    assert OpenAdrEvent.from_dict(cancelled).to_dict() == cancelled
    later = T0 - timedelta(hours=1)
    # what ven_bridge.ven.CariflexVen._withdraw builds from the copy in load_control_events
    withdrawn = {
        **part,
        "status": "cancelled",
        "modification_number": 3,
        "modification_date_time": later.isoformat(),
    }
    event = OpenAdrEvent.from_dict(part).withdrawn(3, later)
    assert event.to_dict() == withdrawn and OpenAdrEvent.from_dict(withdrawn) == event
    kept_time = OpenAdrEvent.from_dict(part).withdrawn(3).to_dict()
    assert kept_time["modification_date_time"] == part["modification_date_time"]


def test_a_posted_example_passes_unchanged():
    """The example of openadr_ingest's docstring and of tests/helpers/events.py, as JSON gives it."""
    example = {
        "event_id": "evt-price-1",
        "modification_number": 0,
        "status": "far",
        "modification_date_time": "2026-11-24T16:00:00+00:00",
        "signal_name": "ENERGY_PRICE",
        "signal_type": "price",
        "item_base": {"name": "currencyPerKWh", "unit": "EUR", "scale": "none"},
        "intervals": [
            {"start": f"2026-11-25T{4 + h:02d}:00:00+00:00", "duration": "PT1H", "value": 0.08 + h / 200}
            for h in range(20)
        ],
    }
    event = OpenAdrEvent.from_dict(example)
    assert event.to_dict() == example and event.kind == PRICE and not event.cancelled
    assert event.start == datetime(2026, 11, 25, 4, tzinfo=UTC) and event.end == event.start + timedelta(
        hours=20
    )
    with_offset = {**example, "modification_date_time": "2026-11-24T12:00:00-04:00"}
    assert OpenAdrEvent.from_dict(with_offset).to_dict() == with_offset  # its own offset kept
    assert OpenAdrEvent.from_dict(with_offset).modified_utc == datetime(2026, 11, 24, 16, tzinfo=UTC)
    whole = {**example, "intervals": [{**example["intervals"][0], "value": 1}]}  # an integer stays one
    assert OpenAdrEvent.from_dict(whole).to_dict()["intervals"][0]["value"] == 1


def _event(**changes) -> dict:
    (part,) = produced_parts("day-ahead prices")
    return {**copy.deepcopy(part), **changes}


def _lc(**changes) -> dict:
    (part,) = produced_parts("load control")
    return {**copy.deepcopy(part), **changes}


def _interval(event: dict, index: int, **changes) -> dict:
    event = copy.deepcopy(event)
    event["intervals"][index].update(changes)
    return event


def _iso(moment: datetime) -> str:
    return moment.isoformat()


# The refusals tests/integration/test_openadr_ingest.py pins for the plugin's answer, and more.
REFUSED_EVENTS = {
    "not an object": ([], ("event: must be a JSON object, got list",)),
    "unsupported signal type": (
        _lc(signal_type="level"),
        ("signal_name/signal_type: 'LOAD_CONTROL'/'level'",),
    ),
    "unknown currency": (
        _event(item_base={"name": "currencyPerKWh", "unit": "USD", "scale": "none"}),
        ("item_base.unit: currency 'USD' is not supported",),
    ),
    "per-kW price": (
        _event(item_base={"name": "currencyPerKW", "unit": "EUR", "scale": "none"}),
        ("item_base.name: 'currencyPerKW' is not supported",),
    ),
    "scaled price": (
        _event(item_base={"name": "currencyPerKWh", "unit": "EUR", "scale": "k"}),
        ("item_base.scale: 'k' is not supported",),
    ),
    "price without item base": (_event(item_base=None), ("item_base: ENERGY_PRICE/price needs one",)),
    "load control with item base": (
        _lc(item_base={"name": "currencyPerKWh", "unit": "EUR", "scale": "none"}),
        ("item_base: must be null for LOAD_CONTROL",),
    ),
    "overlap": (
        _interval(_event(), 5, start=_iso(T0 + timedelta(hours=4.5))),
        ("intervals[5].start: ", "overlaps intervals[4], which ends at"),
    ),
    "gap": (
        _interval(_lc(), 2, start=_iso(T0 + timedelta(hours=17))),
        ("intervals[2].start: ", "leaves a gap after intervals[1]"),
    ),
    "NaN": (_interval(_event(), 3, value=math.nan), ("intervals[3].value: must be a finite number",)),
    "text value": (_interval(_event(), 0, value="0.1"), ("intervals[0].value: must be a number",)),
    "huge integer value": (_interval(_event(), 0, value=10**400), ("intervals[0].value: ", "is too large")),
    "level above 1": (_interval(_lc(), 1, value=1.2), ("intervals[1].value: 1.2 is outside 0..1",)),
    "price above the site range": (
        _interval(_event(), 0, value=200.0),
        ("intervals[0].value: 200 EUR/kWh is outside -10..100",),
    ),
    "price not on the hour": (
        _interval(_event(intervals=_event()["intervals"][:1]), 0, start=_iso(T0 + timedelta(minutes=30))),
        ("intervals[0].start: ", "is not on a whole hour", "consumption_price"),
    ),
    "load control not on a quarter hour": (
        _lc(intervals=[{"start": _iso(T0 + timedelta(minutes=5)), "duration": "PT1H", "value": 0.5}]),
        ("intervals[0].start: ", "is not on a quarter hour"),
    ),
    "duration not a multiple": (
        _lc(intervals=[{"start": _iso(T0), "duration": "PT20M", "value": 0.5}]),
        ("intervals[0].duration: PT20M is not a multiple of PT15M",),
    ),
    "duration of months": (
        _interval(_event(), 0, duration="P1M"),
        ("intervals[0].duration: 'P1M' has no fixed",),
    ),
    "interval too long": (
        _interval(_lc(), 0, duration="P32D"),
        ("intervals[0].duration: 'P32D' is longer than 31",),
    ),
    "no intervals": (_event(intervals=[]), ("intervals: at least one interval is needed",)),
    "missing field": (
        {k: v for k, v in _event().items() if k != "modification_date_time"},
        ("event: missing field(s) modification_date_time",),
    ),
    "unknown field": (_event(priority=1), ("event: unknown field(s) priority",)),
    "no offset": (
        _event(modification_date_time="2026-11-24T16:00:00"),
        ("modification_date_time: ", "no UTC offset"),
    ),
    "far away": (
        _event(modification_date_time="1999-11-24T16:00:00+00:00"),
        (f"modification_date_time: '1999-11-24T16:00:00+00:00' is more than {MAX_YEARS_AWAY} years",),
    ),
    "no status": (_event(status=None), ("status: None is not one of far, near",)),
    "OpenADR status none": (_event(status="none"), ("status: 'none' is not one of",)),
    "negative modification number": (
        _event(modification_number=-1),
        ("modification_number: must be an integer",),
    ),
    "boolean modification number": (
        _event(modification_number=True),
        ("modification_number: must be an integer",),
    ),
    "modification number beyond xs:unsignedInt": (
        _event(modification_number=2**32),
        ("modification_number: must be an integer within 0..4294967295",),
    ),
    "empty event id": (_event(event_id="  "), ("event_id: must be a non-empty string",)),
    "long event id": (_event(event_id="e" * 201), ("event_id: longer than 200 characters",)),
}


@pytest.mark.parametrize("case", REFUSED_EVENTS)
def test_what_the_plugin_refuses_is_refused_naming_the_field(case):
    payload, fragments = REFUSED_EVENTS[case]
    refused(OpenAdrEvent, payload, *fragments)


def test_a_refusal_quotes_little_of_the_input():
    long = "x" * 10_000
    for payload in (
        _event(event_id=long),
        _event(status=long),
        _event(modification_date_time=long),
        _interval(_event(), 0, duration=long),
        _event(**{long: 1, long + "y": 2}),
        _event(item_base={"name": long, "unit": "EUR", "scale": "none"}),
    ):
        message = refused(OpenAdrEvent, payload)
        assert len(message) < 400 and long[:100] not in message, message


def test_the_grid_is_that_of_the_site_model():
    """The resolutions the contract checks are those the site model gives the plugin's sensors."""
    from cariflex.fleet import load_fleet
    from cariflex.site_model import child_assets

    resolutions = {s.name: s.resolution for a in child_assets(load_fleet()) for s in a.sensors}
    for sensor, resolution in STORED_ON.values():
        assert resolutions[sensor] == resolution
    low, high = PRICE_RANGE_EUR_PER_KWH
    assert (low, high) == (-10.0, 100.0)


def test_the_fleet_controller_s_reading_of_load_control_events_agrees():
    """load_control_level (the CEM's reading of outbox state load_control_events) and the contract."""
    fleet_control = _module("cem.fleet_control", "ven_bridge.fleet_control")
    (part,) = produced_parts("load control")
    event = OpenAdrEvent.from_dict(part)
    for minutes in (-1, 0, 14 * 60, 14 * 60 + 59, 16 * 60 + 30, 18 * 60):
        now = T0 + timedelta(minutes=minutes)
        assert event.level_at(now) == fleet_control.load_control_level({part["event_id"]: part}, now)
    cancelled = event.withdrawn(3).to_dict()
    now = T0 + timedelta(hours=15)
    assert event.withdrawn(3).level_at(now) is None
    assert fleet_control.load_control_level({"x": cancelled}, now) is None
    # one interval at a time, as the controller and can_meet read them (partial events in tests)
    loose = {"start": _iso(T0 - timedelta(minutes=1)), "duration": "PT1H", "value": 0}
    assert Interval.from_dict(loose, "interval", LOAD_CONTROL).to_dict() == loose


def test_the_plugin_s_parser_and_the_contract_refuse_alike():
    """openadr_ingest.parse_event (the consumer, which reads with the contract) and the contract on
    the cases above: every one is refused by the plugin, with the contract's message."""
    ingest = _module("flexmeasures_cariflex.data.services.openadr_ingest")
    for case, (payload, _) in REFUSED_EVENTS.items():
        with pytest.raises(ingest.IngestError) as plugin:
            ingest.parse_event(copy.deepcopy(payload))
        with pytest.raises(ContractError) as caught:
            OpenAdrEvent.from_dict(copy.deepcopy(payload))
        assert str(caught.value) == str(plugin.value), case
    for case in PRODUCED:
        for part in produced_parts(case):
            parsed = ingest.parse_event(part)
            event = OpenAdrEvent.from_dict(part)
            assert (parsed.event_id, parsed.kind, parsed.modified) == (
                event.event_id,
                event.kind,
                event.modified_utc,
            )
            assert [(i.start, i.duration, i.value) for i in parsed.intervals] == [
                (i.start_utc, i.duration, i.value) for i in event.intervals
            ]


@PROPERTY
@given(data=st.data())
def test_an_event_mutated_anywhere_gives_a_contract_error_or_an_event(data):
    valid = data.draw(st.sampled_from([p for case in PRODUCED for p in produced_parts(case)]))
    assert_only_contract_errors(OpenAdrEvent, _mutated(data, valid))


@PROPERTY
@given(payload=JSON)
def test_arbitrary_json_gives_a_contract_error_or_an_event(payload):
    assert_only_contract_errors(OpenAdrEvent, payload)


OFFSETS = st.integers(min_value=-14 * 60, max_value=14 * 60).map(lambda m: timezone(timedelta(minutes=m)))


@st.composite
def events(draw) -> OpenAdrEvent:
    kind = draw(st.sampled_from([PRICE, LOAD_CONTROL]))
    step = STORED_ON[kind][1]
    start = T0 + draw(st.integers(min_value=-96, max_value=96)) * step
    count = draw(st.integers(min_value=1, max_value=8))
    values = st.floats(*PRICE_RANGE_EUR_PER_KWH) if kind == PRICE else st.floats(0, 1)
    intervals = []
    for _ in range(count):
        length = draw(st.integers(min_value=1, max_value=12)) * step
        intervals.append(Interval(start.astimezone(draw(OFFSETS)), length, draw(values)))
        start += length
    modified = T0 - draw(st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=300)))
    return OpenAdrEvent(
        draw(st.text(min_size=1, max_size=50).filter(str.strip)),
        draw(st.integers(min_value=0, max_value=2**32 - 1)),
        draw(st.sampled_from(["far", "near", "active", "completed", "cancelled"])),
        modified.astimezone(draw(OFFSETS)),
        *(("ENERGY_PRICE", "price") if kind == PRICE else ("LOAD_CONTROL", "x-loadControlCapacity")),
        ItemBase() if kind == PRICE else None,
        tuple(intervals),
    )


@PROPERTY
@given(event=events())
def test_any_valid_event_survives_the_round_trip(event):
    sent = event.to_dict()
    assert OpenAdrEvent.from_dict(sent) == event
    assert OpenAdrEvent.from_dict(sent).to_dict() == sent


@PROPERTY
@given(length=st.timedeltas(min_value=timedelta(microseconds=1), max_value=timedelta(days=31)))
def test_durations_travel_unchanged(length):
    import isodate

    text = iso_duration(length)
    assert isodate.parse_duration(text) == length and iso_duration(isodate.parse_duration(text)) == text


# --- the fleet schedule --------------------------------------------------------------------------


def schedule_payload(start: datetime | None = None, periods: int = 16, site: bool = False) -> dict:
    """What replan.current_schedule returns and GET /schedule serves (hours=4: 16 periods); with
    ``site``, the site's base load − PV per period (a fleet with PV or a base load)."""
    import pandas as pd

    begin = pd.Timestamp(start or datetime.now(UTC)).floor("15min")
    payload = {
        "version": pd.Timestamp.now(tz="UTC").to_pydatetime().isoformat(),
        "ok": True,
        "breaches": ["ev_03: leaves at 2026-11-25 07:00 with 30.2 kWh, needs 40 kWh (80 %): 9.8 kWh short"],
        "start": begin.isoformat(),
        "resolution": "PT15M",
        "unit": "kW",
        "devices": {
            "bat_01": [round(float(v), 4) for v in [12.5, -7.25, 0.0, 3.3333] * (periods // 4)],
            "ev_01": [None] * 4 + [round(11.0 + i / 3, 4) for i in range(periods - 4)],
            "bat_02": [None] * periods,
        },
    }
    if site:  # night (base load), noon (PV surplus), unknown
        payload["site_kw"] = [[100.0, -300.0, None, 0.0][i % 4] for i in range(periods)]
    return payload


NEVER_PLANNED = {
    "version": None,
    "ok": None,
    "breaches": [],
    "start": "2026-11-24T16:00:00+00:00",
    "resolution": "PT15M",
    "unit": "kW",
    "devices": {"bat_01": [None, None], "ev_01": [None, None]},
}


@pytest.mark.parametrize(
    "payload",
    [
        schedule_payload(),
        schedule_payload(periods=192),
        NEVER_PLANNED,
        schedule_payload(site=True),
        schedule_payload(periods=192, site=True),
        {**NEVER_PLANNED, "site_kw": [150.0, None]},
    ],
)
def test_the_served_schedule_passes_and_comes_back_unchanged(payload):
    schedule = FleetSchedule.from_dict(copy.deepcopy(payload))
    assert schedule.to_dict() == payload and list(schedule.to_dict()) == list(payload)


def test_site_kw_is_optional_both_ways_and_read_per_period():
    """A schedule without site_kw (an older plugin, a fleet without PV and base load) reads as None
    and writes back without it; with it, site_kw_at gives the period's figure."""
    old = schedule_payload()
    read = FleetSchedule.from_dict(old)
    assert read.site_kw is None and "site_kw" not in read.to_dict()
    assert FleetSchedule.from_dict({**old, "site_kw": None}).to_dict() == old  # null: none given
    start = datetime.fromisoformat(old["start"])
    assert FleetSchedule.from_dict(old).site_kw_at(start) is None
    schedule = FleetSchedule.from_dict(schedule_payload(site=True))
    expected = {-1: None, 0: 100.0, 14: 100.0, 15: -300.0, 30: None, 45: 0.0, 239: 0.0, 240: None}
    for minutes, kw in expected.items():
        assert schedule.site_kw_at(start + timedelta(minutes=minutes)) == kw, minutes
    assert schedule.end == start + timedelta(hours=4)
    only_site = FleetSchedule(None, None, (), start, {}, (12.5, None))  # no devices: the site's periods
    assert only_site.periods == 2 and only_site.site_kw_at(start) == 12.5
    assert FleetSchedule.from_dict(only_site.to_dict()) == only_site


def test_the_follower_s_copy_and_its_reading_agree():
    follower = _module("cem.schedule_follower", "ven_bridge.schedule_follower")
    payload = schedule_payload()
    kept = {**payload, "etag": '"v|start|4"'}  # the follower's copy in outbox state "schedule"
    schedule = FleetSchedule.from_dict(kept)
    assert schedule.to_dict() == payload  # extra keys ignored
    start = datetime.fromisoformat(payload["start"])
    for minutes in (-1, 0, 7, 15, 59, 60, 239, 240, 600):
        now = start + timedelta(minutes=minutes)
        assert schedule.setpoints(now) == follower.scheduled_setpoints(kept, now), minutes
    assert schedule.end == start + timedelta(hours=4)


REFUSED_SCHEDULES = {
    "not an object": ("schedule", ("schedule: must be a JSON object",)),
    "no start": (
        {k: v for k, v in NEVER_PLANNED.items() if k != "start"},
        ("schedule: missing field(s) start",),
    ),
    "naive start": ({**NEVER_PLANNED, "start": "2026-11-24T16:00:00"}, ("start: ", "no UTC offset")),
    "start not a time": ({**NEVER_PLANNED, "start": "soon"}, ("start: 'soon' is not an ISO 8601 date-time",)),
    "devices a list": ({**NEVER_PLANNED, "devices": []}, ("devices: must be a JSON object",)),
    "values not a list": ({**NEVER_PLANNED, "devices": {"bat_01": 5}}, ("devices.bat_01: must be a list",)),
    "text value": (
        {**NEVER_PLANNED, "devices": {"bat_01": ["5"]}},
        ("devices.bat_01[0]: '5' is not a number",),
    ),
    "NaN value": (
        {**NEVER_PLANNED, "devices": {"bat_01": [math.nan]}},
        ("devices.bat_01[0]: nan is not a finite",),
    ),
    "ragged": (
        {**NEVER_PLANNED, "devices": {"a": [1.0], "b": [1.0, 2.0]}},
        ("devices: the devices have different",),
    ),
    "too long": (
        {**NEVER_PLANNED, "devices": {"a": [0.0] * (MAX_PERIODS + 1)}},
        ("devices.a: has 193 periods",),
    ),
    "hourly": ({**NEVER_PLANNED, "resolution": "PT1H"}, ("resolution: 'PT1H' is not 'PT15M'",)),
    "in W": ({**NEVER_PLANNED, "unit": "W"}, ("unit: 'W' is not 'kW'",)),
    "ok as text": ({**NEVER_PLANNED, "ok": "yes"}, ("ok: must be true or false",)),
    "breaches as text": ({**NEVER_PLANNED, "breaches": "none"}, ("breaches: must be a list",)),
    "numeric version": ({**NEVER_PLANNED, "version": 3}, ("version: must be a non-empty string",)),
    "empty device name": (
        {**NEVER_PLANNED, "devices": {"": [None]}},
        ("devices: must be a non-empty string",),
    ),
    "site_kw not a list": ({**NEVER_PLANNED, "site_kw": 100.0}, ("site_kw: must be a list",)),
    "site_kw text": ({**NEVER_PLANNED, "site_kw": ["100", None]}, ("site_kw[0]: '100' is not a number",)),
    "site_kw NaN": ({**NEVER_PLANNED, "site_kw": [None, math.nan]}, ("site_kw[1]: nan is not a finite",)),
    "site_kw boolean": ({**NEVER_PLANNED, "site_kw": [True, None]}, ("site_kw[0]: ",)),
    "site_kw other periods": (
        {**NEVER_PLANNED, "site_kw": [1.0, 2.0, 3.0]},
        ("site_kw: has 3 periods; the devices have 2",),
    ),
    "site_kw too long": (
        {**NEVER_PLANNED, "devices": {}, "site_kw": [0.0] * (MAX_PERIODS + 1)},
        ("site_kw: has 193 periods",),
    ),
}


@pytest.mark.parametrize("case", REFUSED_SCHEDULES)
def test_an_unusable_schedule_is_refused_naming_the_field(case):
    payload, fragments = REFUSED_SCHEDULES[case]
    refused(FleetSchedule, payload, *fragments)


@PROPERTY
@given(data=st.data())
def test_a_schedule_mutated_anywhere_gives_a_contract_error_or_a_schedule(data):
    valid = data.draw(st.sampled_from([schedule_payload(T0), schedule_payload(T0, site=True), NEVER_PLANNED]))
    assert_only_contract_errors(FleetSchedule, _mutated(data, valid))


@PROPERTY
@given(payload=JSON)
def test_arbitrary_json_gives_a_contract_error_or_a_schedule(payload):
    assert_only_contract_errors(FleetSchedule, payload)


# --- S2 devices: setpoints and the CEM's report ----------------------------------------------------


def test_the_setpoint_command_s_state_passes_and_comes_back_unchanged():
    written = {"bat_01": 20.0, "ev_03": -7.5, "bat_02": 0.0}  # cariflex-ven setpoint (click float)
    setpoints = Setpoints.from_dict(written)
    assert setpoints.to_dict() == written
    assert setpoints.with_setpoint("ev_01", 11.0).to_dict() == {**written, "ev_01": 11.0}
    assert "bat_01" not in setpoints.without("bat_01").to_dict()
    assert Setpoints.from_dict({}).to_dict() == {}
    refused(setpoints.with_setpoint, "ev_01", "setpoints.ev_01: nan is not a finite number", kw=math.nan)
    refused(Setpoints, {"bat_01": "20"}, "setpoints.bat_01: '20' is not a number")
    refused(Setpoints, {"bat_01": math.inf}, "setpoints.bat_01: inf is not a finite number")
    refused(Setpoints, [["bat_01", 20.0]], "setpoints: must be a JSON object")
    refused(Setpoints, {"": 1.0}, "setpoints: must be a non-empty string")


def test_the_cem_s_report_passes_and_comes_back_unchanged():
    """FleetController.status() (outbox state "s2") from real CEM device states."""
    fleet_control = _module("cem.fleet_control", "ven_bridge.fleet_control")
    server = _module("cem.server", "ven_bridge.s2_cem")
    from cariflex.fleet import load_fleet

    cem = server.Cem("127.0.0.1", 0)
    cem.devices["bat_01"] = server.DeviceState(
        "bat_01", connected=True, frbc=True, fill_level=48.25, power_w=12_512.7, setpoint_kw=12.5
    )
    cem.devices["ev_01"] = server.DeviceState("ev_01", connected=False)
    controller = fleet_control.FleetController(load_fleet(), cem, outbox=None)
    controller.cap_kw, controller.shortfall_kw, controller.dropped = 180.0, 2.34567, 3
    status = controller.status()
    report = FleetStatus.from_dict(copy.deepcopy(status))
    assert report.to_dict() == status and list(report.to_dict()) == list(status)
    assert report.devices["bat_01"] == DeviceStatus.of(cem.devices["bat_01"])
    assert report.devices["bat_01"].power_kw == 12.513 and report.devices["ev_01"].power_kw is None
    idle = {**status, "cap_kw": None, "shortfall_kw": 0.0, "devices": {}}
    assert FleetStatus.from_dict(idle).to_dict() == idle
    # The site figures: the fleet's measured power (connected fleet devices), the planned base
    # load − PV of the quarter-hour (set by a control round) and the net import, their sum.
    assert status["fleet_kw"] == 12.513 and "site_kw" not in status and "net_import_kw" not in status
    controller.site_kw = 100.0
    site = controller.status()
    assert (site["fleet_kw"], site["site_kw"], site["net_import_kw"]) == (12.513, 100.0, 112.513)
    assert FleetStatus.from_dict(copy.deepcopy(site)).to_dict() == site
    cem.devices["bat_01"].connected = False  # no measured device: no fleet figure, no net import
    assert {k: controller.status().get(k) for k in ("fleet_kw", "site_kw", "net_import_kw")} == {
        "fleet_kw": None,
        "site_kw": 100.0,
        "net_import_kw": None,
    }


def test_a_report_without_the_site_figures_stays_valid_both_ways():
    """Written by a VEN from before the site figures: read as unknown, written back unchanged."""
    report = FleetStatus.from_dict(copy.deepcopy(GOOD_STATUS))
    assert (report.fleet_kw, report.site_kw, report.net_import_kw) == (None, None, None)
    assert report.to_dict() == GOOD_STATUS
    with_site = {**GOOD_STATUS, "fleet_kw": 1.5, "site_kw": -300.0, "net_import_kw": -298.5}
    assert FleetStatus.from_dict(with_site).to_dict() == with_site
    assert FleetStatus.from_dict({**GOOD_STATUS, "site_kw": None}).to_dict() == GOOD_STATUS
    metered = {**with_site, **METERED_FIELDS}
    report = FleetStatus.from_dict(copy.deepcopy(metered))
    assert (report.pv_kw, report.base_load_kw, report.site_source) == (417.1, 117.1, "measured")
    assert report.meters["pv_01"].power_kw == -51.5 and report.to_dict() == metered


METERED_FIELDS = {
    "pv_kw": 417.1,
    "base_load_kw": 117.1,
    "site_source": "measured",
    "meters": {
        "pv_01": {"power_kw": -51.5, "age_s": 0.5, "connected": True},
        "site_load": {"power_kw": None, "age_s": None, "connected": False},
    },
}


def test_device_status_of_anything_shaped_like_the_cem_s_state():
    state = SimpleNamespace(power_w=-5000.0, fill_level=None, setpoint_kw=None, connected=True)
    assert DeviceStatus.of(state).to_dict() == {
        "power_kw": -5.0,
        "fill_kwh": None,
        "setpoint_kw": None,
        "connected": True,
    }


GOOD_STATUS = {
    "connected": 1,
    "under_frbc": 1,
    "cap_kw": None,
    "shortfall_kw": 0.0,
    "dropped_measurements": 0,
    "devices": {"bat_01": {"power_kw": 1.5, "fill_kwh": 40.0, "setpoint_kw": 1.5, "connected": True}},
}


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        ({**GOOD_STATUS, "connected": -1}, "connected: must be an integer within"),
        ({**GOOD_STATUS, "under_frbc": 1.5}, "under_frbc: must be an integer"),
        ({**GOOD_STATUS, "shortfall_kw": -1.0}, "shortfall_kw: -1 is negative"),
        ({**GOOD_STATUS, "cap_kw": "lots"}, "cap_kw: 'lots' is not a number"),
        ({**GOOD_STATUS, "devices": {"bat_01": {}}}, "devices.bat_01: missing field(s) power_kw"),
        (
            {**GOOD_STATUS, "devices": {"bat_01": {**GOOD_STATUS["devices"]["bat_01"], "connected": 1}}},
            "devices.bat_01.connected: must be true or false",
        ),
        ({k: v for k, v in GOOD_STATUS.items() if k != "devices"}, "s2: missing field(s) devices"),
        ({**GOOD_STATUS, "site_kw": "lots"}, "site_kw: 'lots' is not a number"),
        ({**GOOD_STATUS, "net_import_kw": math.inf}, "net_import_kw: inf is not a finite number"),
        ({**GOOD_STATUS, "fleet_kw": [1.0]}, "fleet_kw: "),
        ({**GOOD_STATUS, "site": 1.0}, "s2: unknown field(s) site"),
        ({**GOOD_STATUS, "site_source": "guessed"}, "site_source: 'guessed' is not one of measured, planned"),
        ({**GOOD_STATUS, "pv_kw": math.nan}, "pv_kw: nan is not a finite number"),
        ({**GOOD_STATUS, "meters": []}, "meters: must be a JSON object"),
        ({**GOOD_STATUS, "meters": {"pv_01": {"power_kw": 1.0}}}, "meters.pv_01: missing field(s) age_s"),
        (
            {**GOOD_STATUS, "meters": {"pv_01": {"power_kw": 1.0, "age_s": -2, "connected": True}}},
            "meters.pv_01.age_s: -2 is negative",
        ),
    ],
)
def test_an_unusable_report_is_refused_naming_the_field(payload, fragment):
    refused(FleetStatus, payload, fragment)


@PROPERTY
@given(data=st.data())
def test_s2_payloads_mutated_anywhere_give_contract_errors_or_objects(data):
    assert_only_contract_errors(FleetStatus, _mutated(data, GOOD_STATUS))
    site = {**GOOD_STATUS, "fleet_kw": 1.5, "site_kw": 100.0, "net_import_kw": 101.5}
    assert_only_contract_errors(FleetStatus, _mutated(data, site))
    assert_only_contract_errors(FleetStatus, _mutated(data, {**site, **METERED_FIELDS}))
    assert_only_contract_errors(Setpoints, _mutated(data, {"bat_01": 20.0, "ev_01": -3}))


@PROPERTY
@given(payload=JSON)
def test_arbitrary_json_gives_contract_errors_or_s2_objects(payload):
    assert_only_contract_errors(FleetStatus, payload)
    assert_only_contract_errors(Setpoints, payload)
    assert_only_contract_errors(DeviceStatus, payload)


# --- the input rules -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"), [("0.25", 0.25), ("4", 4.0), (" 48 ", 48.0), (1, 1.0), (48, 48.0)]
)
def test_hours_within_range(value, expected):
    assert inputs.hours(value) == expected


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("0", "hours: '0' must be at least 0.25"),
        ("0.1", "hours: '0.1' must be at least 0.25"),
        ("-1", "must be at least 0.25"),
        ("49", "hours: '49' must be at least 0.25 (one 15-minute period) and at most 48"),
        ("1e999", "must be at least"),
        ("soon", "hours: 'soon' is not a number"),
        ("nan", "hours: 'nan' is not a number"),
        ("1_0", "is not a number"),
        ("", "hours: '' is not a number"),
        (None, "hours: None is not a number"),
        (True, "hours: True is not a number"),
        (math.inf, "must be at least"),
        (10**400, "must be at least"),
    ],
)
def test_hours_refused(value, fragment):
    refused(inputs.hours, value, fragment, error=InputError)
    assert "--hours: " in refused(inputs.hours, value, error=InputError, name="--hours")


NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("PT24H", NOW - timedelta(hours=24)),
        ("P7D", NOW - timedelta(days=7)),
        ("P3650D", NOW - timedelta(days=3650)),
        ("P1M", datetime(2026, 11, 5, 12, 0, tzinfo=UTC)),
        ("2026-06-10T00:00Z", datetime(2026, 6, 10, tzinfo=UTC)),
        ("2026-11-24T06:00-04:00", datetime(2026, 11, 24, 10, tzinfo=UTC)),
        ("2026-11-24T06:00", datetime(2026, 11, 24, 6, tzinfo=UTC)),  # no offset: UTC, as before
        ("2026-11-24", datetime(2026, 11, 24, tzinfo=UTC)),
    ],
)
def test_since_names_a_utc_moment(value, expected):
    moment = inputs.since(value, now=NOW)
    assert moment == expected and moment.tzinfo == UTC


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("yesterday", "since: 'yesterday' is not an ISO time"),
        ("", "since: '' is not an ISO time"),
        ("P10000Y", "since: 'P10000Y' is not an ISO time"),
        ("last week", "is not an ISO time"),
        ("now", "is not an ISO time"),
        ("-P1D", "is not an ISO time"),
        ("P0D", "since: 'P0D' must be a positive duration"),
        ("2027-01-01T00:00Z", "since: '2027-01-01T00:00Z' lies in the future"),
        ("P11Y", "since: 'P11Y' is more than 10 years ago"),
        ("1999-01-01", "is more than 10 years ago"),
        (None, "since: None is not an ISO time"),
        (7, "since: 7 is not an ISO time"),
    ],
)
def test_since_refused(value, fragment):
    refused(inputs.since, value, fragment, error=InputError, now=NOW)


# What cariflex.times.parse_since (pandas; replaced by inputs.since) answered, pinned.
OLD_SINCE_MOMENTS = {
    "PT24H": NOW - timedelta(hours=24),
    "P7D": NOW - timedelta(days=7),
    "P2D": NOW - timedelta(days=2),
    "2026-06-10T00:00Z": datetime(2026, 6, 10, tzinfo=UTC),
    "2026-11-24T06:00-04:00": datetime(2026, 11, 24, 10, tzinfo=UTC),
    "2026-11-24T06:00": datetime(2026, 11, 24, 6, tzinfo=UTC),
}


def test_since_in_the_words_of_the_old_parser():
    """Where cariflex.times.parse_since (pandas) accepted, inputs.since gives the same moment; where
    it refused, the same message."""
    for text, moment in OLD_SINCE_MOMENTS.items():
        assert inputs.since(text, now=NOW) == moment
    for text in ("yesterday", "", "P10000Y"):
        old = f"--since: {text!r} is not an ISO time (2026-11-24T06:00-04:00) or an ISO 8601 duration (PT24H)"
        assert refused(inputs.since, text, error=InputError, name="--since", now=NOW) == old


@pytest.mark.parametrize(
    ("kwargs", "label", "first", "last"),
    [
        ({"day": "2026-11-24"}, "2026-11-24", "2026-11-24", "2026-11-24"),
        ({"month": "2026-02"}, "2026-02", "2026-02-01", "2026-02-28"),
        ({"month": "2028-2"}, "2028-2", "2028-02-01", "2028-02-29"),
        ({"month": "2026-12"}, "2026-12", "2026-12-01", "2026-12-31"),
        ({"year": "2026"}, "2026", "2026-01-01", "2026-12-31"),
        ({"day": "", "year": "2000"}, "2000", "2000-01-01", "2000-12-31"),
    ],
)
def test_period(kwargs, label, first, last):
    from datetime import date
    from zoneinfo import ZoneInfo

    period = inputs.period(**kwargs)
    assert (period.label, period.first, period.last) == (
        label,
        date.fromisoformat(first),
        date.fromisoformat(last),
    )
    start, end = period.bounds(ZoneInfo("America/Martinique"))
    assert start.hour == 4 and (end - start).days == (period.last - period.first).days + 1


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({}, "give exactly one of day (YYYY-MM-DD), month (YYYY-MM) or year (YYYY)"),
        ({"day": "2026-11-24", "year": "2026"}, "give exactly one of"),
        ({"year": "9999"}, "year '9999' is outside the years 2000..2100"),
        ({"day": "1999-12-31"}, "day '1999-12-31' is outside the years 2000..2100"),
        ({"month": "2026-13"}, "month '2026-13' is not a month like 2026-11"),
        ({"day": "2026-02-30"}, "day '2026-02-30' is not a day like 2026-11-24"),
        ({"day": "20261124"}, "is not a day like"),
        ({"year": "+2026"}, "year '+2026' is not a year like 2026"),
        ({"year": "２０２６"}, "is not a year like"),
    ],
)
def test_period_refused(kwargs, fragment):
    refused(lambda _: inputs.period(**kwargs), None, fragment, error=InputError)


def test_period_names_cli_options():
    with pytest.raises(InputError, match=r"--year '9999' is outside"):
        inputs.period(year="9999", prefix="--")


def test_period_as_the_statistics_service_reads_it():
    statistics = _module("flexmeasures_cariflex.data.services.statistics")
    for kwargs in ({"day": "2026-11-24"}, {"month": "2026-02"}, {"year": "2026"}):
        old, new = statistics.parse_period(**kwargs), inputs.period(**kwargs)
        assert (old.label, old.first, old.last) == (new.label, new.first, new.last)
    for kwargs in ({"year": "9999"}, {}, {"month": "2026-13"}):
        with pytest.raises(ValueError) as old:
            statistics.parse_period(**kwargs)
        assert str(old.value) == refused(lambda _, k=kwargs: inputs.period(**k), None, error=InputError)


@pytest.mark.parametrize(("value", "expected"), [("65", 65.0), (0, 0.0), (10_000, 10_000.0), ("70.5", 70.5)])
def test_tariff(value, expected):
    assert inputs.tariff(value) == expected


@pytest.mark.parametrize(
    ("value", "name", "message"),
    [
        (-1.0, "--tariff", "--tariff -1 EUR/MWh is outside 0..10000"),
        (5e6, "--tariff", "--tariff 5e+06 EUR/MWh is outside 0..10000"),
        (math.nan, "--tariff", "--tariff nan EUR/MWh is outside 0..10000"),
        ("20000", "CARIFLEX_FEED_IN_TARIFF", "CARIFLEX_FEED_IN_TARIFF 20000 EUR/MWh is outside 0..10000"),
        ("cheap", "CARIFLEX_FEED_IN_TARIFF", "CARIFLEX_FEED_IN_TARIFF 'cheap' is not a number (EUR/MWh)"),
    ],
)
def test_tariff_refused_in_the_old_words(value, name, message):
    assert refused(inputs.tariff, value, error=InputError, name=name) == message


@pytest.mark.parametrize(
    ("value", "kwargs", "expected"),
    [
        ("PT4H", {}, timedelta(hours=4)),
        (" PT30M ", {}, timedelta(minutes=30)),
        ("P7D", {}, timedelta(days=7)),
        ("P1W", {}, timedelta(days=7)),
        (timedelta(hours=2), {}, timedelta(hours=2)),
        (None, {"required": False}, None),
        ("", {"required": False}, None),
        ("PT45M", {"step": timedelta(minutes=15)}, timedelta(minutes=45)),
    ],
)
def test_duration(value, kwargs, expected):
    assert inputs.duration(value, "--ramp-up", **kwargs) == expected


@pytest.mark.parametrize(
    ("value", "kwargs", "message"),
    [
        ("30min", {}, "--ramp-up '30min' is not an ISO 8601 duration (e.g. PT4H, PT30M)"),
        ("P8D", {}, "--ramp-up 'P8D' is longer than 7 days"),
        ("P1M", {}, "--ramp-up 'P1M': use days, hours or minutes, not months or years"),
        ("PT0S", {}, "--ramp-up 'PT0S' must be a positive duration"),
        ("-PT1H", {}, "--ramp-up '-PT1H' must be a positive duration"),
        (None, {}, "--ramp-up is missing; give an ISO 8601 duration such as PT4H"),
        (3600, {}, "--ramp-up 3600 is not an ISO 8601 duration (e.g. PT4H, PT30M)"),
        (
            "PT20M",
            {"step": timedelta(minutes=15)},
            "--ramp-up 'PT20M' must be a whole number of 15-minute steps",
        ),
        ("P30D", {"hint": "split the event"}, "--ramp-up 'P30D' is longer than 7 days; split the event"),
    ],
)
def test_duration_refused_in_the_vtn_s_words(value, kwargs, message):
    assert refused(inputs.duration, value, error=InputError, name="--ramp-up", **kwargs) == message


@PROPERTY
@given(text=st.text(alphabet="PTWYMDHS0123456789.,-+ ", max_size=12))
def test_duration_answers_as_the_vtn_did(text):
    """vtn.events.parse_duration (the VTN's rule for ramp-up, notification, recovery) and the shared
    rule: the same value, or the same message."""
    events = _module("vtn.events")
    try:
        old: Any = events.parse_duration(text, "--ramp-up", required=False)
    except events.InputError as exc:
        old = str(exc)
    try:
        new: Any = inputs.duration(text, "--ramp-up", required=False)
    except InputError as exc:
        new = str(exc)
    assert new == old


SOME_INPUT = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=10**300, max_value=10**400),
    st.floats(),
    st.text(max_size=30),
    st.text(alphabet="PTYMWDHS0123456789.:+-Z eE", max_size=25),
    st.timedeltas(),
    st.lists(st.integers(), max_size=2),
)


@PROPERTY
@given(value=SOME_INPUT)
def test_every_rule_answers_any_input_with_a_value_or_an_input_error(value):
    checks = {
        "hours": lambda v: inputs.HOURS_RANGE[0] <= v <= inputs.HOURS_RANGE[1],
        "since": lambda v: NOW - timedelta(days=366 * 11) < v < NOW and v.tzinfo == UTC,
        "tariff": lambda v: 0 <= v <= 10_000,
        "duration": lambda v: timedelta(0) < v <= inputs.MAX_DURATION,
        "period": lambda v: 2000 <= v.first.year <= 2100,
    }
    calls = {
        "hours": lambda: inputs.hours(value),
        "since": lambda: inputs.since(value, now=NOW),
        "tariff": lambda: inputs.tariff(value),
        "duration": lambda: inputs.duration(value),
        "period": lambda: inputs.period(day=value) if isinstance(value, str) or value is None else None,
    }
    for rule, call in calls.items():
        try:
            result = call()
        except InputError as exc:
            assert len(str(exc)) < 300
        else:
            assert result is None or checks[rule](result), (rule, value, result)


def test_a_click_option_with_a_rule():
    click = pytest.importorskip("click")
    from click.testing import CliRunner

    @click.command()
    @click.option("--hours", default="1", callback=inputs.click_callback(inputs.hours))
    @click.option("--ramp-up", default=None, callback=inputs.click_callback(inputs.duration, required=False))
    def command(hours, ramp_up):
        click.echo(f"{hours!r} {ramp_up!r}")

    runner = CliRunner()
    assert runner.invoke(command, ["--hours", "4"]).output == "4.0 None\n"
    assert runner.invoke(command, ["--ramp-up", "PT30M"]).output == "1.0 datetime.timedelta(seconds=1800)\n"
    bad = runner.invoke(command, ["--hours", "0"])
    assert bad.exit_code == 2 and "Error: --hours: '0' must be at least 0.25" in bad.output
    bad = runner.invoke(command, ["--ramp-up", "P9D"])
    assert bad.exit_code == 2 and "Error: --ramp-up 'P9D' is longer than 7 days" in bad.output
