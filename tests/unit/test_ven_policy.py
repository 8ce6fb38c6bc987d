"""The VEN's opt policy and the normalised event it hands to FlexMeasures."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pytest

from ven_bridge.policy import decide

T0 = datetime(2030, 3, 2, 4, 0, tzinfo=UTC)
RESOURCES = {"bat_01", "ev_01", "Cariflex site"}


def event(
    signal_name="ENERGY_PRICE",
    signal_type="price",
    values=None,
    *,
    measurement=None,
    targets=None,
    starts=None,
    hours=1,
):
    values = values if values is not None else [0.1 + 0.01 * h for h in range(24)]
    starts = starts or [T0 + timedelta(hours=hours * i) for i in range(len(values))]
    return {
        "event_descriptor": {
            "event_id": "evt-1",
            "modification_number": 2,
            "event_status": "far",
            "modification_date_time": T0 - timedelta(hours=5),
        },
        "active_period": {"dtstart": T0, "duration": timedelta(hours=hours * len(values))},
        "event_signals": [
            {
                "signal_name": signal_name,
                "signal_type": signal_type,
                "measurement": measurement
                if measurement is not None
                else {"description": "currencyPerKWh", "unit": "EUR", "scale": "none"},
                "intervals": [
                    {"dtstart": s, "duration": timedelta(hours=hours), "uid": i, "signal_payload": v}
                    for i, (s, v) in enumerate(zip(starts, values, strict=True))
                ],
            }
        ],
        "targets": targets or [{"ven_id": "ven-1"}],
    }


def test_price_event_is_opted_in_and_normalised():
    decision = decide(event(), RESOURCES)
    assert (decision.opt, decision.key) == ("optIn", "event:evt-1:2")
    n = decision.normalised
    assert n["item_base"] == {"name": "currencyPerKWh", "unit": "EUR", "scale": "none"}
    assert n["modification_date_time"] == "2030-03-01T23:00:00+00:00"
    assert n["intervals"][0] == {"start": "2030-03-02T04:00:00+00:00", "duration": "PT1H", "value": 0.1}
    assert len(n["intervals"]) == 24


def test_load_control_event_is_opted_in():
    decision = decide(event("LOAD_CONTROL", "x-loadControlCapacity", [0.6, 0.5], measurement={}), RESOURCES)
    assert decision.opt == "optIn" and decision.normalised["item_base"] is None


@pytest.mark.parametrize(
    "kind, reason",
    [
        (
            ("LOAD_CONTROL", "x-loadControlLevelOffset"),
            "unsupported signal LOAD_CONTROL/x-loadControlLevelOffset",
        ),
        (("SIMPLE", "level"), "unsupported signal SIMPLE/level"),
    ],
)
def test_unsupported_signal_is_opted_out(kind, reason):
    decision = decide(event(*kind, [0.5], measurement={}), RESOURCES)
    assert (decision.opt, decision.reason, decision.normalised) == ("optOut", reason, None)


@pytest.mark.parametrize(
    "measurement, reason",
    [
        (
            {"description": "currencyPerKWh", "unit": "USD", "scale": "none"},
            "price currency 'USD' is not supported",
        ),
        (
            {"description": "currencyPerKW", "unit": "EUR", "scale": "none"},
            "price unit 'currencyPerKW' is not",
        ),
        ({"description": "currencyPerKWh", "unit": "EUR", "scale": "k"}, "price scale 'k' is not supported"),
    ],
)
def test_unknown_currency_or_unit_is_opted_out(measurement, reason):
    decision = decide(event(measurement=measurement), RESOURCES)
    assert decision.opt == "optOut" and decision.reason.startswith(reason)


def test_overlapping_and_gapped_intervals_are_opted_out():
    overlap = [T0, T0 + timedelta(minutes=30)]
    gap = [T0, T0 + timedelta(hours=2)]
    assert decide(event(values=[0.1, 0.2], starts=overlap), RESOURCES).reason.endswith(
        "overlaps the previous one"
    )
    assert decide(event(values=[0.1, 0.2], starts=gap), RESOURCES).reason.endswith(
        "leaves a gap after the previous one"
    )


@pytest.mark.parametrize("bad", [math.nan, math.inf, "x", None])
def test_non_finite_payload_is_opted_out(bad):
    decision = decide(event(values=[0.1, bad, 0.2]), RESOURCES)
    assert decision.opt == "optOut" and decision.reason.startswith("interval 1 payload")


def test_level_outside_0_1_is_opted_out():
    decision = decide(event("LOAD_CONTROL", "x-loadControlCapacity", [0.5, 1.5], measurement={}), RESOURCES)
    assert decision.reason == "interval 1 capacity fraction 1.5 is outside 0..1"


def test_targets_decide_by_resource():
    mine = decide(event(targets=[{"resource_id": "bat_01"}]), RESOURCES)
    other = decide(event(targets=[{"resource_id": "bat_01"}, {"resource_id": "pump_7"}]), RESOURCES)
    assert mine.opt == "optIn"
    assert (other.opt, other.reason) == ("optOut", "targets resources this VEN does not have: pump_7")


def test_opting_out_of_a_later_modification_lifts_the_earlier_limit(tmp_path):
    import asyncio

    from ven_bridge.outbox import Outbox
    from ven_bridge.ven import CariflexVen, VenOptions, _Client

    box = Outbox(tmp_path)
    ven = CariflexVen(VenOptions("v", "http://vtn", frozenset(RESOURCES), "Cariflex site"), box, poster=None)
    first = event("LOAD_CONTROL", "x-loadControlCapacity", [0.4], measurement={})
    first["event_descriptor"]["modification_number"] = 0
    assert asyncio.run(ven.handle_event(first)) == "optIn"
    retargeted = event(
        "LOAD_CONTROL", "x-loadControlCapacity", [0.4], measurement={}, targets=[{"resource_id": "pump_7"}]
    )
    assert asyncio.run(ven.handle_event(retargeted)) == "optOut"
    queued = []
    while (entry := box.head()[0]) is not None:
        queued.append(entry.payload)
        box.mark_done(entry)
    assert [(q["modification_number"], q["status"]) for q in queued] == [(0, "far"), (2, "cancelled")]
    # openleadr's own lookup of an answer it forgot (a re-sent cancelled event) no longer raises
    client = _Client(ven_name="v", vtn_url="http://127.0.0.1:9/OpenADR2/Simple/2.0b")
    assert client.responded_events["evt-forgotten"] == "optIn"


def _two_signals(load_values=(0.5,), *, number=0):
    both = event(values=[0.1, 0.2])
    load = event("LOAD_CONTROL", "x-loadControlCapacity", list(load_values), measurement={})
    both["event_signals"] += load["event_signals"]
    both["event_descriptor"]["modification_number"] = number
    return both


def test_each_signal_of_an_event_becomes_its_own_normalised_event():
    decision = decide(_two_signals(), RESOURCES)
    assert decision.opt == "optIn" and decision.normalised is None  # not one event any more
    assert [(p["event_id"], p["signal_name"], len(p["intervals"])) for p in decision.parts] == [
        ("evt-1#ENERGY_PRICE", "ENERGY_PRICE", 2),
        ("evt-1#LOAD_CONTROL", "LOAD_CONTROL", 1),
    ]
    twice = event(values=[0.1])
    twice["event_signals"] += event("ELECTRICITY_PRICE", values=[0.2])["event_signals"]
    assert decide(twice, RESOURCES).reason == "more than one price signal in one event"
    bad = _two_signals([1.5])
    assert (
        decide(bad, RESOURCES).reason
        == "signal LOAD_CONTROL: interval 0 capacity fraction 1.5 is outside 0..1"
    )


def test_intervals_flexmeasures_cannot_store_are_opted_out_or_averaged():
    five = [T0 + timedelta(minutes=5 * i) for i in range(3)]
    load = event("LOAD_CONTROL", "x-loadControlCapacity", [0.5] * 3, measurement={}, starts=five)
    for interval in load["event_signals"][0]["intervals"]:
        interval["duration"] = timedelta(minutes=5)
    assert decide(load, RESOURCES).reason.endswith(
        "is not on the 15-minute grid FlexMeasures keeps load-control levels on"
    )
    quarters = event(values=[0.1, 0.2, 0.3, 0.4], starts=[T0 + timedelta(minutes=15 * i) for i in range(4)])
    for interval in quarters["event_signals"][0]["intervals"]:
        interval["duration"] = timedelta(minutes=15)
    averaged = decide(quarters, RESOURCES)
    assert averaged.normalised["intervals"] == [
        {"start": "2030-03-02T04:00:00+00:00", "duration": "PT1H", "value": 0.25}
    ]
    two_hours = decide(event(values=[0.3], hours=2), RESOURCES)  # whole hours stay as they are
    assert two_hours.normalised["intervals"] == [
        {"start": "2030-03-02T04:00:00+00:00", "duration": "PT2H", "value": 0.3}
    ]


def test_a_modification_without_its_load_control_signal_lifts_the_limit(tmp_path):
    import asyncio

    from ven_bridge.outbox import Outbox
    from ven_bridge.ven import CariflexVen, VenOptions

    box = Outbox(tmp_path)
    ven = CariflexVen(VenOptions("v", "http://vtn", frozenset(RESOURCES), "Cariflex site"), box, poster=None)
    assert asyncio.run(ven.handle_event(_two_signals(number=0))) == "optIn"
    price_only = event(values=[0.1, 0.3])
    price_only["event_descriptor"]["modification_number"] = 1
    assert asyncio.run(ven.handle_event(price_only)) == "optIn"
    assert [(e.dedupe_key, e.payload["status"]) for e in box.pending()] == [
        ("event:evt-1#ENERGY_PRICE:0", "far"),
        ("event:evt-1#LOAD_CONTROL:0", "far"),
        ("event:evt-1:1", "far"),  # the price, now the event's only signal
        ("event:evt-1#LOAD_CONTROL:1", "cancelled"),  # after it: the limit is lifted
    ]
    assert box.get_state("load_control_events")["evt-1#LOAD_CONTROL"]["status"] == "cancelled"


def test_a_part_flexmeasures_would_refuse_is_opted_out_with_the_contract_s_reason():
    """Each part is built through cariflex.contracts.openadr_event: what the plugin would answer
    with a 422 (and the outbox dead-letter) is opted out of at once, with the plugin's words."""
    beyond = decide(event(values=[0.1, 200.0]), RESOURCES)  # 200 EUR/kWh: outside the site range
    assert (beyond.opt, beyond.parts) == ("optOut", ())
    assert beyond.reason.startswith("intervals[1].value: 200 EUR/kWh is outside -10..100")
    no_status = _two_signals()
    no_status["event_descriptor"]["event_status"] = "none"  # an OpenADR status the plugin does not take
    assert decide(no_status, RESOURCES).reason == (
        "signal ENERGY_PRICE: status: 'none' is not one of far, near, active, completed, cancelled"
    )


def test_an_unusable_stored_load_control_event_neither_breaks_the_handler_nor_is_withdrawn(tmp_path, caplog):
    import asyncio
    import logging

    from ven_bridge.outbox import Outbox
    from ven_bridge.ven import CariflexVen, VenOptions

    box = Outbox(tmp_path)
    ven = CariflexVen(VenOptions("v", "http://vtn", frozenset(RESOURCES), "Cariflex site"), box, poster=None)
    box.set_state(
        "load_control_events",
        {"evt-1#LOAD_CONTROL": "not an event", "evt-1": {"event_id": "evt-1", "status": "far"}},
    )
    price_only = event(values=[0.1, 0.3])
    price_only["event_descriptor"]["modification_number"] = 1
    with caplog.at_level(logging.ERROR, logger="cariflex.ven"):
        assert asyncio.run(ven.handle_event(price_only)) == "optIn"  # was optOut: AttributeError
    assert [(e.dedupe_key, e.payload["status"]) for e in box.pending()] == [("event:evt-1:1", "far")]
    unusable = [
        r for r in caplog.records if r.getMessage() == "stored load-control event unusable; not withdrawn"
    ]
    assert [r.fields["event_id"] for r in unusable] == ["evt-1#LOAD_CONTROL"]
