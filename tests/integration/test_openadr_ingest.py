"""OpenADR events into FlexMeasures: the ingestion service, `flexmeasures cariflex ingest-event`
and POST /api/cariflex/v1/openadr/events, against a real PostgreSQL database."""

from __future__ import annotations

import copy
import json
import math
import secrets
from datetime import UTC, datetime, timedelta

import pytest
from flexmeasures.data.models.time_series import Sensor
from flexmeasures.data.models.user import User
from sqlalchemy import select

from cariflex.fleet import load_fleet
from flexmeasures_cariflex.data.services.admin_user import ensure_user
from flexmeasures_cariflex.data.services.openadr_ingest import IngestError, ingest_event
from tests.helpers.common import call, request_token
from tests.helpers.events import (
    DAY,
    HOUR,
    LC_START,
    LEVELS,
    MODIFIED,
    PRICES,
    belief_count,
    iso,
    lc_event,
    ledger,
    post_event,
    price_event,
)

QUARTER = timedelta(minutes=15)


def ingest(fm_db, fleet, event, **kwargs):
    result = ingest_event(event, fleet, **kwargs)
    fm_db.session.commit()
    return result


def sensor(fm_db, name: str) -> Sensor:
    return fm_db.session.execute(select(Sensor).filter(Sensor.name == name)).scalar_one()


def latest(fm_db, name: str) -> dict[datetime, tuple[float, datetime]]:
    """Most recent belief per slot: {event_start (UTC): (value, belief_time (UTC))}."""
    fm_db.session.expire_all()
    bdf = sensor(fm_db, name).search_beliefs(source="OpenADR VTN", most_recent_beliefs_only=True)
    out = {}
    for (start, belief_time, _source, _cp), row in bdf.iterrows():
        out[start.to_pydatetime().astimezone(UTC)] = (row["event_value"], belief_time.to_pydatetime())
    return out


def quarters(start: datetime, hours: float) -> list[datetime]:
    return [start + i * QUARTER for i in range(int(hours * 4))]


# --- the service -------------------------------------------------------------------------------


def test_price_event_becomes_hourly_eur_per_mwh_at_the_modification_time(fm_db, fleet):
    result = ingest(fm_db, fleet, price_event())
    assert result.status == "ingested"
    assert result.written == {"consumption_price": 24}
    beliefs = latest(fm_db, "consumption_price")
    assert sorted(beliefs) == [DAY + h * HOUR for h in range(24)]
    for h, price in enumerate(PRICES):
        value, belief_time = beliefs[DAY + h * HOUR]
        assert value == pytest.approx(price * 1000)
        assert belief_time == MODIFIED
    assert belief_count(fm_db) == 24
    assert ledger(fm_db)["evt-price-1"]["modification_number"] == 0


def test_load_control_event_writes_levels_dr_flag_and_the_restore_slot(fm_db, fleet):
    result = ingest(fm_db, fleet, lc_event())
    assert result.written == {"load_control_signal": 17, "demand_response_signal": 17}
    levels = latest(fm_db, "load_control_signal")
    flags = latest(fm_db, "demand_response_signal")
    slots = quarters(LC_START, 4)
    expected = [level * 100 for level in LEVELS for _ in range(4)]
    assert [levels[s][0] for s in slots] == pytest.approx(expected)
    assert [flags[s][0] for s in slots] == [1.0] * 16
    end = LC_START + 4 * HOUR
    assert levels[end][0] == 100.0 and flags[end][0] == 0.0
    assert set(levels) == set(slots) | {end}
    assert {belief_time for _, belief_time in levels.values()} == {MODIFIED}


def test_modification_supersedes_and_shrinking_restores_what_it_no_longer_covers(fm_db, fleet):
    ingest(fm_db, fleet, lc_event())
    later = MODIFIED + timedelta(hours=1)
    result = ingest(fm_db, fleet, lc_event(number=1, modified=later, levels=[0.3, 0.2]))
    assert result.status == "ingested"
    levels = latest(fm_db, "load_control_signal")
    flags = latest(fm_db, "demand_response_signal")
    slots = quarters(LC_START, 4) + [LC_START + 4 * HOUR]
    assert [levels[s][0] for s in slots] == pytest.approx([30.0] * 4 + [20.0] * 4 + [100.0] * 9)
    assert [flags[s][0] for s in slots] == [1.0] * 8 + [0.0] * 9
    assert {levels[s][1] for s in slots} == {later}
    assert belief_count(fm_db) == 2 * 17 + 2 * 17  # nothing deleted: both versions kept
    assert ledger(fm_db)["evt-lc-1"]["end"] == iso(LC_START + 2 * HOUR)


def test_cancellation_restores_full_capacity_over_the_period(fm_db, fleet):
    ingest(fm_db, fleet, lc_event())
    cancelled_at = MODIFIED + timedelta(hours=2)
    ingest(fm_db, fleet, lc_event(number=1, modified=cancelled_at, status="cancelled"))
    levels = latest(fm_db, "load_control_signal")
    flags = latest(fm_db, "demand_response_signal")
    slots = quarters(LC_START, 4) + [LC_START + 4 * HOUR]
    assert [levels[s] for s in slots] == [(100.0, cancelled_at)] * 17
    assert [flags[s] for s in slots] == [(0.0, cancelled_at)] * 17
    assert ledger(fm_db)["evt-lc-1"]["status"] == "cancelled"


def test_cancellation_without_intervals_uses_the_ledger_period(fm_db, fleet):
    ingest(fm_db, fleet, lc_event())
    cancelled_at = MODIFIED + timedelta(hours=2)
    result = ingest(fm_db, fleet, lc_event(number=1, modified=cancelled_at, status="cancelled", intervals=[]))
    assert result.written == {"load_control_signal": 17, "demand_response_signal": 17}
    assert {v for v, _ in latest(fm_db, "load_control_signal").values()} == {100.0}


def test_restore_slot_covered_by_another_event_keeps_that_events_level(fm_db, fleet):
    end = LC_START + 4 * HOUR
    ingest(fm_db, fleet, lc_event("evt-lc-next", start=end, levels=[0.5], modified=MODIFIED))
    ingest(fm_db, fleet, lc_event(modified=MODIFIED + timedelta(minutes=5)))
    levels = latest(fm_db, "load_control_signal")
    flags = latest(fm_db, "demand_response_signal")
    assert levels[end][0] == 50.0 and flags[end][0] == 1.0
    assert levels[end + HOUR][0] == 100.0 and flags[end + HOUR][0] == 0.0


def test_replay_and_older_modification_write_nothing(fm_db, fleet):
    first = ingest(fm_db, fleet, lc_event(number=2))
    before = belief_count(fm_db)
    assert before == sum(first.written.values())
    for number in (2, 1):
        again = ingest(fm_db, fleet, lc_event(number=number, levels=[0.1] * 4))
        assert again.status == "already-ingested"
        assert again.as_dict() == {
            "status": "already-ingested",
            "event_id": "evt-lc-1",
            "modification_number": number,
            "ingested_modification_number": 2,
        }
    assert belief_count(fm_db) == before
    assert latest(fm_db, "load_control_signal")[LC_START][0] == 60.0


def test_modification_must_keep_the_signal_and_not_go_back_in_time(fm_db, fleet):
    ingest(fm_db, fleet, lc_event())
    before = belief_count(fm_db)
    with pytest.raises(IngestError, match="was ingested as LOAD_CONTROL, it cannot become ENERGY_PRICE"):
        ingest_event(price_event("evt-lc-1", number=1), fleet)
    fm_db.session.rollback()
    with pytest.raises(
        IngestError, match=r"modification_date_time: .* is earlier than that of modification 0"
    ):
        ingest_event(lc_event(number=1, modified=MODIFIED - HOUR), fleet)
    fm_db.session.rollback()
    assert belief_count(fm_db) == before


def test_ledger_forgets_events_that_ended_over_a_week_ago(fm_db, fleet):
    old_day = DAY - timedelta(days=10)
    old = price_event("evt-old", modified=old_day - HOUR)
    old["intervals"] = [{**i, "start": iso(old_day + h * HOUR)} for h, i in enumerate(old["intervals"])]
    ingest(fm_db, fleet, old)
    assert "evt-old" in ledger(fm_db)  # the event being ingested is always kept
    ingest(fm_db, fleet, lc_event())
    assert set(ledger(fm_db)) == {"evt-lc-1"}


def test_event_before_setup_is_refused_with_what_to_do(fm_db):
    with pytest.raises(LookupError, match="run `flexmeasures cariflex setup` first"):
        ingest_event(price_event(), load_fleet())


# --- refusals, via the CLI and the HTTP endpoint -----------------------------------------------


def _with_interval(event, index, **changes):
    event = copy.deepcopy(event)
    event["intervals"][index].update(changes)
    return event


BAD_EVENTS = {
    "unsupported signal type": (
        lc_event(signal_type="level"),
        "signal_name/signal_type: 'LOAD_CONTROL'/'level' is not supported",
    ),
    "unknown currency": (
        price_event(item_base={"name": "currencyPerKWh", "unit": "USD", "scale": "none"}),
        "item_base.unit: currency 'USD' is not supported",
    ),
    "per-kW price": (
        price_event(item_base={"name": "currencyPerKW", "unit": "EUR", "scale": "none"}),
        "item_base.name: 'currencyPerKW' is not supported",
    ),
    "scaled price": (
        price_event(item_base={"name": "currencyPerKWh", "unit": "EUR", "scale": "k"}),
        "item_base.scale: 'k' is not supported",
    ),
    "overlap": (
        _with_interval(price_event(), 5, start=iso(DAY + 4.5 * HOUR)),
        ("intervals[5].start: ", "overlaps intervals[4], which ends at"),
    ),
    "gap": (
        _with_interval(lc_event(), 2, start=iso(LC_START + 3 * HOUR)),
        ("intervals[2].start: ", "leaves a gap after intervals[1]"),
    ),
    "NaN": (_with_interval(price_event(), 3, value=math.nan), "intervals[3].value: must be a finite number"),
    "text value": (_with_interval(price_event(), 0, value="0.1"), "intervals[0].value: must be a number"),
    "level above 1": (lc_event(levels=[0.6, 1.2, 0.5, 0.5]), "intervals[1].value: 1.2 is outside 0..1"),
    "price not on the hour": (
        price_event(
            intervals=[{"start": iso(DAY + timedelta(minutes=30)), "duration": "PT1H", "value": 0.1}]
        ),
        ("intervals[0].start: ", "is not on a whole hour"),
    ),
    "load control not on a quarter hour": (
        lc_event(start=LC_START + timedelta(minutes=5)),
        ("intervals[0].start: ", "is not on a quarter hour"),
    ),
    "duration not a multiple": (
        _with_interval(lc_event(levels=[0.5]), 0, duration="PT20M"),
        "intervals[0].duration: PT20M is not a multiple of PT15M",
    ),
    "missing field": (
        {k: v for k, v in price_event().items() if k != "modification_date_time"},
        "event: missing field(s) modification_date_time",
    ),
    "unknown field": (price_event(priority=1), "event: unknown field(s) priority"),
    "no offset": (price_event(modification_date_time="2026-11-24T16:00:00"), "modification_date_time: "),
}


NOT_JSON = {"NaN": "NaN is not a JSON number"}


def test_bad_events_are_refused_by_cli_and_api_and_nothing_is_written(
    app, cli, fm_db, fleet, token, tmp_path
):
    # One test for all cases: each test pays for `setup` and a login, the cases themselves are cheap.
    ingest(fm_db, fleet, lc_event("evt-earlier"))  # so there is a ledger to leave alone
    before, ledger_before = belief_count(fm_db), ledger(fm_db)
    for case, (event, message) in BAD_EVENTS.items():
        fragments = message if isinstance(message, tuple) else (message,)
        path = tmp_path / f"{case.replace(' ', '_')}.json"
        path.write_text(json.dumps(event))
        result = cli("cariflex", "ingest-event", str(path))
        assert result.exit_code == 1, (case, result.output)
        assert "Error: " in result.output, case
        assert all(f in result.output for f in ((NOT_JSON[case],) if case in NOT_JSON else fragments)), (
            case,
            result.output,
        )
        assert "Nothing was written to the database." in result.output, case

        response = post_event(app, token, event)
        if case in NOT_JSON:  # JSON has no NaN: the API's JSON reader refuses it before ingestion
            assert response.status_code == 400 and NOT_JSON[case] in response.json["message"], case
        else:
            assert response.status_code == 422, (case, response.json)
            assert all(f in response.json["message"] for f in fragments), (case, response.json)

        assert belief_count(fm_db) == before, case
        assert ledger(fm_db) == ledger_before, case


def test_cli_ingests_and_a_replay_changes_nothing(cli, fm_db, fleet, tmp_path):
    path = tmp_path / "event.json"
    path.write_text(json.dumps(price_event()))
    first = cli("cariflex", "ingest-event", str(path))
    assert first.exit_code == 0, first.output
    assert "evt-price-1 modification 0: ingested, beliefs written: 24 on consumption_price" in first.output
    again = cli("cariflex", "ingest-event", str(path))
    assert again.exit_code == 0
    assert "already-ingested" in again.output
    assert belief_count(fm_db) == 24


# --- the HTTP endpoints ------------------------------------------------------------------------


def test_api_ingests_then_answers_already_ingested(app, fm_db, token):
    response = post_event(app, token, lc_event())
    assert response.status_code == 200, response.json
    assert response.json == {
        "status": "ingested",
        "event_id": "evt-lc-1",
        "modification_number": 0,
        "written": {"load_control_signal": 17, "demand_response_signal": 17},
        "changed": ["load_control_signal", "demand_response_signal"],
        "replan": True,
    }
    before = belief_count(fm_db)
    again = post_event(app, token, lc_event())
    assert again.status_code == 200
    assert again.json["status"] == "already-ingested"
    assert belief_count(fm_db) == before == 34


def test_api_refuses_a_body_that_is_not_an_object(app, fm_db, token):
    for body in ("[1, 2]", '"event"', "null", "{not json"):
        response = call(
            app,
            "POST",
            "/api/cariflex/v1/openadr/events",
            data=body,
            headers={"Authorization": token, "Content-Type": "application/json"},
        )
        assert response.status_code == 400, body
        assert "must be a JSON object" in response.json["message"], body
    assert belief_count(fm_db) == 0


def test_api_needs_a_token_and_the_role(app, fm_db, fleet):
    assert call(app, "POST", "/api/cariflex/v1/openadr/events", json=price_event()).status_code == 401
    assert call(app, "GET", "/api/cariflex/v1/sensors").status_code == 401

    ensure_user("viewer@cariflex.example", "viewer-secret-1", fleet.site.account, ["account-admin"])
    fm_db.session.commit()
    other = request_token(app, "viewer@cariflex.example", "viewer-secret-1")
    assert post_event(app, other, price_event()).status_code == 403
    assert call(app, "GET", "/api/cariflex/v1/sensors", headers={"Authorization": other}).status_code == 403
    assert belief_count(fm_db) == 0


def test_api_accepts_an_admin(app, fm_db, fleet):
    ensure_user("ops@cariflex.example", "ops-secret-1", fleet.site.account, ["admin"])
    fm_db.session.commit()
    admin = request_token(app, "ops@cariflex.example", "ops-secret-1")
    assert post_event(app, admin, price_event()).status_code == 200


def test_api_sensors_maps_every_site_sensor_name_to_its_id(app, fm_db, token):
    response = call(app, "GET", "/api/cariflex/v1/sensors", headers={"Authorization": token})
    assert response.status_code == 200
    sensors = response.json["sensors"]
    assert len(sensors) == 82  # 70 devices, weather, grid and insights sensors + site_load, 11 meters (1 s)
    assert sensors == {s.name: s.id for s in fm_db.session.execute(select(Sensor)).scalars()}


# --- the VEN's login ---------------------------------------------------------------------------


def test_ensure_ven_user_creates_once_with_the_role(cli, fm_db, monkeypatch, tmp_path):
    monkeypatch.setenv("CARIFLEX_VAR_DIR", str(tmp_path / "var"))
    monkeypatch.delenv("CARIFLEX_FM_PASSWORD", raising=False)
    monkeypatch.delenv("CARIFLEX_FM_USER", raising=False)
    first = cli("cariflex", "ensure-ven-user")
    assert first.exit_code == 0, first.output
    password = (tmp_path / "var" / "fm_ven_password").read_text().strip()
    assert f"VEN user created: ven@cariflex.example  password: {password}" in first.output
    user = fm_db.session.execute(select(User).filter(User.email == "ven@cariflex.example")).scalar_one()
    assert {r.name for r in user.roles} == {"cariflex-ven"}
    assert user.account.name == "Cariflex"

    second = cli("cariflex", "ensure-ven-user")
    assert "VEN user exists: ven@cariflex.example" in second.output
    assert password not in second.output


def test_a_password_from_the_environment_is_never_echoed(cli, fm_db, monkeypatch, tmp_path):
    """Container logs keep everything: an operator's password must not land there."""
    password = secrets.token_urlsafe(12)
    monkeypatch.setenv("CARIFLEX_VAR_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("CARIFLEX_FM_PASSWORD", password)
    monkeypatch.delenv("CARIFLEX_FM_USER", raising=False)
    result = cli("cariflex", "ensure-ven-user")
    assert result.exit_code == 0, result.output
    assert "VEN user created: ven@cariflex.example  password: $CARIFLEX_FM_PASSWORD" in result.output
    assert password not in result.output
    assert not (tmp_path / "var" / "fm_ven_password").exists()


def test_the_ven_may_not_log_in_as_the_admin(cli, fm_db, monkeypatch, tmp_path):
    """FlexMeasures counts its API rate limit per login: the VEN sharing the admin's would spend the
    operators' and API users' budget (and they its own)."""
    monkeypatch.setenv("CARIFLEX_VAR_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("CARIFLEX_ADMIN_EMAIL", "boss@cariflex.example")
    monkeypatch.setenv("CARIFLEX_FM_USER", "Boss@cariflex.example")
    refused = cli("cariflex", "ensure-ven-user")
    assert refused.exit_code == 1
    assert "the VEN needs a login of its own, not the admin's (Boss@cariflex.example)" in refused.output
    assert fm_db.session.execute(select(User)).scalars().all() == []
    # an existing admin under another name is refused as well
    assert cli("cariflex", "ensure-admin", "--email", "ops@cariflex.example").exit_code == 0
    other = cli("cariflex", "ensure-ven-user", "--email", "ops@cariflex.example")
    assert other.exit_code == 1 and "ops@cariflex.example has the role admin" in other.output


def test_the_ven_has_a_rate_limit_budget_of_its_own(app, fm_db, fleet, token, monkeypatch):
    """Issue 21: an operator (or API user) who spends the admin login's budget leaves the VEN's alone."""
    from flexmeasures_cariflex.data.services.admin_user import ensure_admin

    ensure_admin("admin@cariflex.example", "admin-secret-1", fleet.site.account)
    fm_db.session.commit()
    admin = request_token(app, "admin@cariflex.example", "admin-secret-1")
    monkeypatch.setitem(app.config, "FLEXMEASURES_API_DEFAULT_RATE_LIMIT", "3 per 7 minutes")

    def sensors(auth: str):
        return call(app, "GET", "/api/cariflex/v1/sensors", headers={"Authorization": auth})

    assert [sensors(admin).status_code for _ in range(4)] == [200, 200, 200, 429]
    limited = sensors(admin)
    assert limited.status_code == 429 and float(limited.headers["Retry-After"]) > 0
    assert [sensors(token).status_code for _ in range(3)] == [200, 200, 200]


def test_refusal_is_a_value_error():
    assert issubclass(IngestError, ValueError)


def test_future_modification_time_and_wrong_types_are_refused(fm_db, fleet):
    with pytest.raises(IngestError, match="lies in the future"):
        ingest_event(lc_event(modified=datetime.now(UTC) + timedelta(hours=1)), fleet)
    with pytest.raises(IngestError, match="signal_name/signal_type"):
        ingest_event({**lc_event(), "signal_type": ["x-loadControlCapacity"]}, fleet)
    with pytest.raises(IngestError, match="out of range|more than 10 years"):
        ingest_event(lc_event(modified=datetime(9999, 12, 31, 23, tzinfo=UTC)), fleet)


def test_same_prices_in_a_new_modification_are_written_but_change_nothing(fm_db, fleet):
    first = ingest(fm_db, fleet, price_event())
    assert first.changed == ["consumption_price"]
    same = ingest(fm_db, fleet, price_event(number=1, modified=MODIFIED + HOUR))
    assert same.status == "ingested" and same.written == {"consumption_price": 24}
    assert same.changed == []  # nothing to re-plan for
    dearer = ingest(fm_db, fleet, price_event(number=2, modified=MODIFIED + 2 * HOUR, prices=[0.3] * 24))
    assert dearer.changed == ["consumption_price"]
