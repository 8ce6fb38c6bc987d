"""The plugin's HTTP edges (and FlexMeasures' own API behind our guard) refuse what they cannot take.

Every case: a 4xx naming the problem, no SQL or stack trace in the answer, nothing written.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from flexmeasures.data.models.time_series import Sensor, TimedBelief
from sqlalchemy import func, select

from cariflex.json_input import JsonInputError, load_json
from tests.helpers.common import assert_clean, call
from tests.helpers.events import price_event

EVENTS = "/api/cariflex/v1/openadr/events"


def beliefs(fm_db) -> int:
    return fm_db.session.execute(select(func.count()).select_from(TimedBelief)).scalar_one()


def post_raw(app, token: str, data: bytes | str, url: str = EVENTS):
    return call(
        app, "POST", url, data=data, headers={"Authorization": token, "Content-Type": "application/json"}
    )


def empty_values_post() -> dict:
    """A FlexMeasures sensor-data post with no values (FlexMeasures 1.0.1 answers it with a 500)."""
    return {
        "values": [],
        "start": datetime.now(UTC).replace(second=0, microsecond=0).isoformat(),
        "duration": "PT1M",
        "unit": "kW",
    }


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        ('{"a":' * 3000 + "1" + "}" * 3000, "nested more than"),
        ("[" * 50000 + "]" * 50000, "nested more than"),
        (json.dumps(price_event()).replace('"value": 0.08}', '"value": NaN}'), "NaN is not a JSON number"),
        (json.dumps(price_event()).replace('"value": 0.08}', '"value": 1e999}'), "out of range"),
        (json.dumps(price_event()).replace('"value": 0.08}', '"value": ' + "9" * 5000 + "}"), "digits"),
        (json.dumps(price_event(event_id="evt\u0000x")), "NUL"),
        (json.dumps(price_event()).replace("evt-price-1", "evt\\ud800"), "lone surrogate"),
        (b'{"event_id": "\xff\xfe"}', "not UTF-8"),
    ],
    ids=["deep-object", "deep-array", "nan", "1e999", "5000-digits", "nul", "lone-surrogate", "not-utf8"],
)
def test_ingestion_refuses_json_it_cannot_store_with_400(app, fm_db, token, data, problem):
    response = post_raw(app, token, data)
    assert_clean(response)
    assert response.status_code == 400 and problem in response.json["message"], response.json
    assert beliefs(fm_db) == 0


@pytest.mark.parametrize(
    ("event", "problem"),
    [
        (
            price_event(
                intervals=[{"start": "2030-01-01T00:00:00+00:00", "duration": "P3000000D", "value": 0.1}]
            ),
            "intervals[0].duration",
        ),
        (price_event(prices=[1e308] + [0.1] * 23), "EUR/kWh is outside"),
        (price_event(prices=[-20.0] + [0.1] * 23), "EUR/kWh is outside"),
    ],
    ids=["P3000000D", "1e308-per-kWh", "minus-20000-per-MWh"],
)
def test_ingestion_refuses_out_of_range_values_with_422(app, fm_db, token, event, problem):
    response = post_raw(app, token, json.dumps(event))
    assert_clean(response)
    assert response.status_code == 422 and problem in response.json["message"], response.json
    assert beliefs(fm_db) == 0


def test_refused_values_are_quoted_short_in_answers_and_logs(app, fm_db, token, caplog):
    long = "x" * 100_000
    response = post_raw(app, token, json.dumps(price_event(status=long)))
    assert response.status_code == 422
    assert len(response.get_data()) < 1000 and "…" in response.json["message"]
    assert all(len(r.getMessage()) < 1000 for r in caplog.records)
    assert beliefs(fm_db) == 0


def test_flexmeasures_own_sensor_data_post_with_no_values_is_a_422_not_a_500(app, fm_db, token, fleet):

    sensor = fm_db.session.execute(select(Sensor).where(Sensor.name == "bat_01_power")).scalar_one()
    body = empty_values_post()
    response = call(
        app, "POST", f"/api/v3_0/sensors/{sensor.id}/data", json=body, headers={"Authorization": token}
    )
    assert_clean(response)
    assert response.status_code == 422 and "values" in response.json["message"], response.json
    deep = post_raw(app, token, '{"a":' * 3000 + "1" + "}" * 3000, f"/api/v3_0/sensors/{sensor.id}/data")
    assert deep.status_code == 400 and "nested" in deep.json["message"]
    assert beliefs(fm_db) == 0


def test_flexmeasures_gap_without_our_guard_empty_values_are_a_500(app, fm_db, token, fleet, monkeypatch):
    """What the guard is for: FlexMeasures 1.0.1 alone answers ``values: []`` with a 500."""
    from flexmeasures_cariflex.api.guards import guard_json_bodies

    hooks = app.before_request_funcs[None]
    monkeypatch.setitem(app.before_request_funcs, None, [h for h in hooks if h is not guard_json_bodies])
    sensor = fm_db.session.execute(select(Sensor).where(Sensor.name == "bat_01_power")).scalar_one()
    body = empty_values_post()
    response = call(
        app, "POST", f"/api/v3_0/sensors/{sensor.id}/data", json=body, headers={"Authorization": token}
    )
    assert response.status_code == 500


def test_an_unexpected_error_is_answered_without_details(app, fm_db, token, monkeypatch):
    from flexmeasures_cariflex.api import routes

    secret = "UPDATE generic_asset SET attributes='{ledger}' WHERE generic_asset.id = 1"

    def fails(*args, **kwargs):
        raise RuntimeError(secret)  # as psycopg2 errors carry their statement

    monkeypatch.setattr(routes, "ingest_event", fails)
    response = post_raw(app, token, json.dumps(price_event()))
    assert response.status_code == 500
    assert secret not in response.get_data(as_text=True) and "generic_asset" not in response.get_data(
        as_text=True
    )
    assert "server log" in response.json["message"]


def test_flexibility_hours_must_be_a_positive_finite_number(app, fm_db, token):
    for hours in ("nan", "inf", "-1", "1e999", "0.1"):  # 0.1: less than one 15-minute period
        response = call(
            app, "GET", f"/api/cariflex/v1/flexibility?hours={hours}", headers={"Authorization": token}
        )
        assert_clean(response)
        assert response.status_code == 400 and "hours" in response.json["message"], hours


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ("Infinity", "not a JSON number"),
        ("[1e400]", "out of range"),
        ('{"a": "\\u0000"}', "a: text contains a NUL"),
        ('{"a": ["\\udc00"]}', "a[0]: text contains a lone surrogate"),
        ("1" * 41, "digits"),
    ],
)
def test_load_json_names_the_place_and_the_problem(raw, problem):
    with pytest.raises(JsonInputError) as refused:
        load_json(raw)
    assert problem in str(refused.value)
    assert load_json('{"a": [1, 2.5, "é"]}') == {"a": [1, 2.5, "é"]}


def test_flexmeasures_trigger_without_a_job_queue_is_refused_with_why_not_a_500(
    app, fm_db, token, fleet, monkeypatch
):
    """Without CARIFLEX_REDIS_URL FlexMeasures' queues point at port 0 (config.NO_REDIS): its
    schedule trigger would answer a 500 after redis-py's retries; the guard answers 409 and why."""
    from flexmeasures.data.models.generic_assets import GenericAsset

    from flexmeasures_cariflex.config import NO_REDIS

    monkeypatch.setitem(app.config, "FLEXMEASURES_REDIS_PORT", NO_REDIS["FLEXMEASURES_REDIS_PORT"])
    named = select(GenericAsset).where(GenericAsset.name == fleet.site.name)
    site = fm_db.session.execute(named).scalar_one()
    body = {"start": "2030-01-01T00:00:00+00:00", "duration": "PT24H"}
    url = f"/api/v3_0/assets/{site.id}/schedules/trigger"
    response = call(app, "POST", url, json=body, headers={"Authorization": token})
    assert_clean(response)
    assert response.status_code == 409 and "no job queue" in response.json["message"], response.json
