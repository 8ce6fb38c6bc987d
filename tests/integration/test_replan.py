"""Re-planning on new prices and load-control limits: debounced, once per real change, through the
ingestion API, the CLI and (with Redis) FlexMeasures' scheduling queue; the schedule the VEN reads."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from flexmeasures.data.models.data_sources import DataSource
from flexmeasures.data.models.time_series import TimedBelief
from sqlalchemy import func, select

from cariflex.contracts.fleet_schedule import FleetSchedule
from flexmeasures_cariflex.config import LP_SOLVER_OPTIONS
from flexmeasures_cariflex.data.services.replan import replan_now, schedule_status
from tests.helpers.common import call, request_token
from tests.helpers.events import lc_event, post_event, price_event

HOUR = timedelta(hours=1)
THIS_HOUR = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
MODIFIED = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=30)


def prices_from_now(number: int, values: list[float] | None = None, event_id: str = "dayahead") -> dict:
    """30 hourly prices from the current hour on: the whole 24-h re-plan horizon is priced."""
    values = values or [0.08 if h % 24 < 6 else 0.3 if 18 <= h % 24 < 21 else 0.15 for h in range(30)]
    event = price_event(event_id, number, modified=MODIFIED + number * timedelta(seconds=1), prices=values)
    event["intervals"] = [
        {"start": (THIS_HOUR + h * HOUR).isoformat(), "duration": "PT1H", "value": v}
        for h, v in enumerate(values)
    ]
    return event


@pytest.fixture
def replanning(app, fm_db):
    app.config["FLEXMEASURES_LP_SOLVER_OPTIONS"] = LP_SOLVER_OPTIONS
    # A debounce no test waits out: each test flushes its burst (settle), so none depends on timing.
    app.config["CARIFLEX_REPLAN_DEBOUNCE_S"] = 600
    yield app
    replanner = app.extensions.pop("cariflex_replanner", None)
    if replanner is not None:
        replanner.flush()
        assert replanner.wait_idle(60), "a re-plan was still running at the end of the test"
    app.config["CARIFLEX_REPLAN_DEBOUNCE_S"] = -1


def settle(app) -> None:
    """End the burst: what is pending runs now; wait until it is done."""
    replanner = app.extensions["cariflex_replanner"]
    replanner.flush()
    assert replanner.wait_idle(60)


def schedule_versions(fm_db) -> int:
    """How many schedules were saved (one belief time per run)."""
    fm_db.session.rollback()
    return fm_db.session.execute(
        select(func.count(func.distinct(TimedBelief.event_start - TimedBelief.belief_horizon)))
        .join(DataSource, TimedBelief.source_id == DataSource.id)
        .where(DataSource.name == "Cariflex scheduler")
    ).scalar_one()


def get_schedule(app, token, hours="4", etag=None):
    headers = {"Authorization": token}
    if etag:
        headers["If-None-Match"] = etag
    return call(app, "GET", f"/api/cariflex/v1/schedule?hours={hours}", headers=headers)


def test_a_burst_of_changes_gives_one_replan_and_the_same_prices_again_none(
    replanning,
    fm_db,
    fleet,
    token,
):
    app = replanning
    answers = [
        post_event(app, token, prices_from_now(n, [0.1 + 0.01 * n + 0.001 * h for h in range(30)]))
        for n in range(3)
    ]
    answers.append(post_event(app, token, prices_from_now(3)))
    assert [a.status_code for a in answers] == [200] * 4
    assert all(a.json["replan"] for a in answers)
    replanner = app.extensions["cariflex_replanner"]
    settle(app)
    assert (replanner.requests, replanner.runs) == (4, 1)
    with app.app_context():
        status = schedule_status(fleet)
    assert status["ok"] and status["request"] == 4 and status["runs"] == 1, status
    assert status["because"] == ["consumption_price"]
    assert schedule_versions(fm_db) == 1

    # The VTN sends the very same prices again as a new modification: nothing to re-plan.
    again = post_event(app, token, prices_from_now(4))
    assert again.status_code == 200 and again.json["status"] == "ingested"
    assert again.json["changed"] == [] and again.json["replan"] is False
    settle(app)
    assert (replanner.requests, replanner.runs) == (4, 1)
    assert schedule_versions(fm_db) == 1

    # A load-control limit is a change: one more schedule, under the cap.
    limit = lc_event("lc-now", levels=[0.1, 0.1], start=THIS_HOUR + 2 * HOUR, modified=MODIFIED)
    assert post_event(app, token, limit).json["replan"] is True
    settle(app)
    assert replanner.runs == 2 and schedule_versions(fm_db) == 2
    with app.app_context():
        status = schedule_status(fleet)
    assert status["because"] == ["load_control_signal"] and status["ok"], status

    schedule = get_schedule(app, token, hours="6")
    assert schedule.status_code == 200, schedule.json
    body = schedule.json
    assert body["version"] == status["version"] and len(body["devices"]) == 20
    first = datetime.fromisoformat(body["start"])
    capped = [(first + i * timedelta(minutes=15)) for i in range(24)]
    for i, moment in enumerate(capped):
        if THIS_HOUR + 2 * HOUR <= moment < THIS_HOUR + 4 * HOUR:
            total = sum(values[i] for values in body["devices"].values())
            assert total <= 0.1 * fleet.site.capacity_kw + 1e-3, (moment, total)


def test_schedule_endpoint_answers_304_until_a_replan_and_refuses_bad_hours(
    replanning,
    fm_db,
    fleet,
    token,
):
    app = replanning
    post_event(app, token, prices_from_now(0))
    settle(app)
    first = get_schedule(app, token)
    assert first.status_code == 200 and first.json["ok"] is True
    assert FleetSchedule.from_dict(first.json).to_dict() == first.json  # what the follower reads
    assert all(len(v) == 16 and None not in v for v in first.json["devices"].values())
    etag = first.headers["ETag"]
    assert etag == f'"{first.json["version"]}|{first.json["start"]}|4"'  # checked before the payload is built
    assert get_schedule(app, token, etag=etag).status_code == 304
    post_event(app, token, prices_from_now(1, [0.5] * 30))
    settle(app)
    assert get_schedule(app, token, etag=etag).status_code == 200
    for bad in ("0", "-1", "49", "soon", "0.1"):  # 0.1: less than one period (accepted before)
        refused = get_schedule(app, token, hours=bad)
        assert refused.status_code == 400 and "hours" in refused.json["message"], bad
    assert get_schedule(app, token, hours="0.1").json["message"] == (
        "hours: '0.1' must be at least 0.25 (one 15-minute period) and at most 48"
    )


def test_missing_prices_record_a_refused_replan_and_keep_the_old_schedule(replanning, fm_db, fleet):
    from flexmeasures_cariflex.data.services.openadr_ingest import ingest_event

    app = replanning
    # Prices start two hours from now: nothing is known for the current period.
    event = prices_from_now(0)
    event["intervals"] = event["intervals"][2:]
    ingest_event(event, fleet)
    fm_db.session.commit()
    status = replan_now(fleet)
    assert status["ok"] is False and "consumption_price has no value" in status["error"]
    assert status["version"] is None and schedule_versions(fm_db) == 0
    assert schedule_status(fleet)["error"] == status["error"]
    assert app  # re-planning enabled, yet nothing was written


def test_cli_ingestion_replans_at_once(replanning, cli, fm_db, fleet, tmp_path):
    path = tmp_path / "event.json"
    path.write_text(json.dumps(prices_from_now(0)))
    out = cli("cariflex", "ingest-event", str(path))
    assert out.exit_code == 0, out.output
    assert "Re-planned" in out.output and "version" in out.output
    assert schedule_versions(fm_db) == 1
    path.write_text(json.dumps(prices_from_now(1)))  # same prices, new modification
    out = cli("cariflex", "ingest-event", str(path))
    assert out.exit_code == 0 and "Re-planned" not in out.output
    assert schedule_versions(fm_db) == 1


def test_with_redis_the_replan_is_a_job_on_the_scheduling_queue(
    replanning,
    fm_db,
    fleet,
    token,
    monkeypatch,
):
    """Real Redis (127.0.0.1:6379) and a real RQ worker: the debounced request becomes one job."""
    from redis import Redis
    from rq import Queue, SimpleWorker

    redis = Redis("127.0.0.1", 6379)
    try:
        redis.ping()
    except Exception as exc:  # pragma: no cover - the machine runs Redis
        pytest.fail(f"Redis on 127.0.0.1:6379 is needed for this test: {exc}")
    app = replanning
    queue = Queue(f"cariflex-test-{uuid.uuid4().hex[:8]}", connection=redis)
    monkeypatch.setenv("CARIFLEX_REDIS_URL", "redis://127.0.0.1:6379/0")
    monkeypatch.setitem(app.queues, "scheduling", queue)
    try:
        post_event(app, token, prices_from_now(0))
        post_event(app, token, lc_event("lc-now", levels=[0.5], start=THIS_HOUR + HOUR, modified=MODIFIED))
        settle(app)
        assert queue.count == 1  # two requests, one job
        assert schedule_versions(fm_db) == 0  # nothing ran in the web process
        SimpleWorker([queue], connection=redis).work(burst=True)
        status = schedule_status(fleet)
        assert status["ok"] and status["request"] == 2, status
        assert schedule_versions(fm_db) == 1
    finally:
        queue.delete(delete_jobs=True)


def test_schedule_command_as_job_runs_in_an_rq_worker(replanning, cli, fm_db, fleet, monkeypatch):
    from redis import Redis
    from rq import Queue, SimpleWorker

    redis = Redis("127.0.0.1", 6379)
    queue = Queue(f"cariflex-test-{uuid.uuid4().hex[:8]}", connection=redis)
    from flexmeasures_cariflex.data.services.openadr_ingest import ingest_event

    ingest_event(prices_from_now(0), fleet)
    fm_db.session.commit()
    start = THIS_HOUR.isoformat()
    refused = cli("cariflex", "schedule", "--start", start, "--horizon", "PT12H", "--as-job")
    assert refused.exit_code == 1 and "needs CARIFLEX_REDIS_URL" in refused.output
    monkeypatch.setenv("CARIFLEX_REDIS_URL", "redis://127.0.0.1:6379/0")
    monkeypatch.setitem(replanning.queues, "scheduling", queue)
    try:
        out = cli("cariflex", "schedule", "--start", start, "--horizon", "PT12H", "--as-job")
        assert out.exit_code == 0 and "Queued fleet schedule job" in out.output, out.output
        assert schedule_versions(fm_db) == 0
        SimpleWorker([queue], connection=redis).work(burst=True)
        assert schedule_versions(fm_db) == 1
        job = queue.fetch_job(out.output.split("job ")[1].split(";")[0])
        assert job.return_value()["beliefs_saved"] == 20 * 12 * 60
    finally:
        queue.delete(delete_jobs=True)


# P8D and PT20M: the rule of --horizon (cariflex.inputs.duration: at most 7 days, whole periods)
@pytest.mark.parametrize("bad", ["PT0H", "-PT1H", "tomorrow", "P1M", "P8D", "PT20M"])
def test_a_bad_configured_horizon_is_a_recorded_refusal(replanning, cli, fm_db, fleet, monkeypatch, bad):
    monkeypatch.setenv("CARIFLEX_SCHEDULE_HORIZON", bad)
    status = replan_now(fleet, force=True)
    assert status["ok"] is False and "CARIFLEX_SCHEDULE_HORIZON" in status["error"] and bad in status["error"]
    assert schedule_versions(fm_db) == 0
    refused = cli("cariflex", "schedule", "--horizon", bad, "--dry-run")
    assert (
        refused.exit_code == 1
        and f"Error: {status['error'].replace('CARIFLEX_SCHEDULE_HORIZON', '--horizon')}" in refused.output
    )


def test_the_served_schedule_carries_the_planned_base_load_minus_pv(replanning, fm_db, fleet, token):
    """The packaged fleet (10 PV sites, a 150 kW base load): with PV and base-load forecasts stored,
    GET /schedule carries ``site_kw`` = base load − PV per period, averaged from the 1-minute
    beliefs the re-plan knew (its version); PV sites without a forecast count 0, periods without a
    base-load forecast are unknown; a forecast stored after the re-plan changes nothing served."""
    import pandas as pd

    from cariflex.site_model import SITE_LOAD, SOURCE_FORECASTER
    from flexmeasures_cariflex.data.queries.site import ensure_source, site_sensors
    from flexmeasures_cariflex.data.services.beliefs import insert_beliefs
    from flexmeasures_cariflex.data.services.weather import PV_SOURCE

    app = replanning
    begin = pd.Timestamp(THIS_HOUR)
    minutes = pd.date_range(begin, begin + pd.Timedelta(hours=8), freq="1min", inclusive="left")
    quarter = (minutes - begin) // pd.Timedelta(minutes=15)
    # the base load: 100 + minute-in-quarter (mean 107 kW) + 10 kW per quarter mod 4; 5 h known
    load = pd.Series(100.0 + minutes.minute % 15 + 10 * (quarter % 4), index=minutes)[: 5 * 60]
    # PV: site k produces k kW in odd quarters, 0 in even ones, for 4 h; pv_10 has no forecast
    pv = {
        p.name: pd.Series(float(k) * (quarter % 2), index=minutes)[: 4 * 60]
        for k, p in enumerate(fleet.pv[:9], start=1)
    }
    sensors = site_sensors(fleet)
    made = (pd.Timestamp.now(tz="UTC") - pd.Timedelta(hours=1)).to_pydatetime()
    insert_beliefs({sensors[SITE_LOAD]: load}, ensure_source(*SOURCE_FORECASTER), made)
    insert_beliefs({sensors[f"{n}_power"]: s for n, s in pv.items()}, ensure_source(*PV_SOURCE), made)
    fm_db.session.commit()

    post_event(app, token, prices_from_now(0))
    settle(app)
    answer = get_schedule(app, token, hours="6")
    assert answer.status_code == 200, answer.json
    body = answer.json
    assert body["ok"] is True and FleetSchedule.from_dict(body).to_dict() == body
    start = pd.Timestamp(body["start"])
    produced = sum(pv.values()).resample("15min").mean()
    expected = [
        None
        if period not in load.index
        else round(load.resample("15min").mean()[period] - produced.get(period, 0.0), 4)
        for period in pd.date_range(start, periods=24, freq="15min")
    ]
    assert len(body["site_kw"]) == len(body["devices"]["bat_01"]) == 24
    assert body["site_kw"] == pytest.approx(expected), (body["site_kw"], expected)
    assert body["site_kw"][0] is not None and None in body["site_kw"]  # 5 h known of the 6 served
    assert FleetSchedule.from_dict(body).site_kw_at(start.to_pydatetime()) == pytest.approx(expected[0])

    # A newer forecast, stored after the re-plan: not what the plan assumed, so not served.
    insert_beliefs({sensors[SITE_LOAD]: load + 500}, ensure_source(*SOURCE_FORECASTER), datetime.now(UTC))
    fm_db.session.commit()
    again = get_schedule(app, token, hours="6")
    moved = (pd.Timestamp(again.json["start"]) - start) // pd.Timedelta(minutes=15)  # a boundary passed?
    assert again.json["site_kw"][: 24 - moved] == body["site_kw"][moved:]
    if not moved:
        assert get_schedule(app, token, hours="6", etag=answer.headers["ETag"]).status_code == 304


# --- prices and limits written through FlexMeasures itself (its API, its CLI) ---------------------


def _api_user_token(app, fm_db, fleet) -> str:
    """A plain FlexMeasures API user of the site's account (no Cariflex role), with a real token."""
    from flexmeasures_cariflex.data.services.admin_user import ensure_user

    ensure_user("trader@cariflex.example", "trader-secret-1", fleet.site.account, ())
    fm_db.session.commit()
    return request_token(app, "trader@cariflex.example", "trader-secret-1")


def _sensor_ids(fleet) -> dict[str, int]:
    from flexmeasures_cariflex.data.queries.site import site_sensors

    return {name: sensor.id for name, sensor in site_sensors(fleet).items()}


_posts = iter(range(10_000))


def post_sensor_data(
    app, token, sensor_id: int, values: list[float], start: datetime, duration: str, unit: str
):
    """FlexMeasures' own endpoint, as any FlexMeasures API user posts data; each post believed a
    second later than the one before (FlexMeasures' default, the server's time, repeats within a
    second, and a second post then "replaces" the first, which it refuses)."""
    body = {
        "values": values,
        "start": start.isoformat(),
        "duration": duration,
        "unit": unit,
        "prior": (MODIFIED + timedelta(seconds=next(_posts))).isoformat(),
    }
    return call(
        app, "POST", f"/api/v3_0/sensors/{sensor_id}/data", json=body, headers={"Authorization": token}
    )


def test_prices_posted_through_flexmeasures_api_replan_debounced_and_only_on_change(replanning, fm_db, fleet):
    app = replanning
    token = _api_user_token(app, fm_db, fleet)
    ids = _sensor_ids(fleet)
    hourly = [80.0 if h % 24 < 6 else 300.0 if 18 <= h % 24 < 21 else 150.0 for h in range(30)]

    # Not a price: a PV measurement through the same endpoint asks for nothing.
    pv = post_sensor_data(app, token, ids["pv_01_power"], [1.0] * 60, THIS_HOUR - HOUR, "PT1H", "kW")
    assert pv.status_code == 200, pv.json
    assert "cariflex_replanner" not in app.extensions

    # A refused write (a unit that is no price) stores nothing and asks for nothing.
    refused = post_sensor_data(app, token, ids["consumption_price"], hourly, THIS_HOUR, "PT30H", "kW")
    assert refused.status_code in (400, 422), refused.json
    assert "cariflex_replanner" not in app.extensions

    # A burst of two corrections: two requests, one run (debounced like the OpenADR endpoint).
    for shift in (0.0, 1.0):
        answer = post_sensor_data(
            app, token, ids["consumption_price"], [v + shift for v in hourly], THIS_HOUR, "PT30H", "EUR/MWh"
        )
        assert answer.status_code == 200, answer.json
    replanner = app.extensions["cariflex_replanner"]
    assert (replanner.requests, replanner.runs) == (2, 0)
    settle(app)
    assert (replanner.requests, replanner.runs) == (2, 1)
    status = schedule_status(fleet)
    assert status["ok"] and status["request"] == 2 and status["because"] == ["consumption_price"], status
    assert schedule_versions(fm_db) == 1

    # The same prices again: FlexMeasures keeps nothing new, nothing is re-planned.
    same = post_sensor_data(
        app, token, ids["consumption_price"], [v + 1.0 for v in hourly], THIS_HOUR, "PT30H", "EUR/MWh"
    )
    assert same.status_code == 200, same.json
    settle(app)
    assert (replanner.requests, replanner.runs) == (2, 1) and schedule_versions(fm_db) == 1

    # A production price posted by hand is a change too; so is a load-control limit.
    feed_in = post_sensor_data(
        app, token, ids["production_price"], [50.0] * 30, THIS_HOUR, "PT30H", "EUR/MWh"
    )
    limit = post_sensor_data(
        app, token, ids["load_control_signal"], [20.0] * 8, THIS_HOUR + HOUR, "PT2H", "%"
    )
    assert (feed_in.status_code, limit.status_code) == (200, 200), (feed_in.json, limit.json)
    settle(app)
    assert (replanner.requests, replanner.runs) == (4, 2) and schedule_versions(fm_db) == 2
    status = schedule_status(fleet)
    assert status["ok"] and status["request"] == 4 and status["because"] == ["load_control_signal"], status


def test_an_openadr_event_is_asked_for_once_not_again_by_the_flexmeasures_listener(
    replanning, fm_db, fleet, token
):
    """The plugin's ingestion marks and asks itself; its own SQL is not seen as a FlexMeasures write."""
    app = replanning
    assert post_event(app, token, prices_from_now(0)).json["replan"] is True
    replanner = app.extensions["cariflex_replanner"]
    settle(app)
    assert (replanner.requests, replanner.runs) == (1, 1)
    assert schedule_status(fleet)["request"] == 1
    # the scheduler's own writes (20 power sensors) asked for nothing either
    assert replan_now(fleet) is None and schedule_versions(fm_db) == 1


def test_prices_and_limits_added_through_flexmeasures_cli_replan(replanning, cli, fm_db, fleet, tmp_path):
    ids = _sensor_ids(fleet)

    def csv(name: str, rows: list[tuple[datetime, float]]) -> str:
        path = tmp_path / name
        path.write_text("datetime,value\n" + "".join(f"{t.isoformat()},{v}\n" for t, v in rows))
        return str(path)

    prices = csv("prices.csv", [(THIS_HOUR + h * HOUR, 100.0 + h) for h in range(30)])
    out = cli("add", "beliefs", "--sensor", str(ids["consumption_price"]), "--source", "operator", prices)
    assert out.exit_code == 0 and "Successfully created beliefs" in out.output, out.output
    assert "Cariflex: re-planned" in out.output, out.output
    assert schedule_versions(fm_db) == 1
    assert schedule_status(fleet)["because"] == ["consumption_price"]

    # The same prices again (FlexMeasures' CLI stores them anew, with a new belief time): no re-plan.
    out = cli("add", "beliefs", "--sensor", str(ids["consumption_price"]), "--source", "operator", prices)
    assert out.exit_code == 0 and "Successfully created beliefs" in out.output, out.output
    assert "re-planned" not in out.output and schedule_versions(fm_db) == 1

    quarters = [(THIS_HOUR + HOUR + q * timedelta(minutes=15), 25.0) for q in range(8)]
    out = cli(
        "add",
        "beliefs",
        "--sensor",
        str(ids["load_control_signal"]),
        "--source",
        "operator",
        csv("limit.csv", quarters),
    )
    assert out.exit_code == 0 and "Cariflex: re-planned" in out.output, out.output
    assert schedule_versions(fm_db) == 2
    status = schedule_status(fleet)
    assert status["ok"] and status["because"] == ["load_control_signal"], status

    # A failing write (the same beliefs at the same belief time again, no overwrite) asks for nothing.
    fixed = csv("fixed.csv", [(THIS_HOUR + h * HOUR, 1.0) for h in range(30)])
    args = ("add", "beliefs", "--sensor", str(ids["consumption_price"]), "--source", "operator")
    out = cli(*args, "--horizon", "60", fixed)
    assert out.exit_code == 0 and "Cariflex: re-planned" in out.output, out.output
    assert schedule_versions(fm_db) == 3
    out = cli(*args, "--horizon", "60", fixed)
    assert "Failed to create beliefs" in out.output and "re-planned" not in out.output, out.output
    assert schedule_versions(fm_db) == 3
    assert schedule_status(fleet)["request"] == 3


def test_prices_saved_by_a_flexmeasures_ingestion_job_queue_a_replan(replanning, fm_db, fleet, monkeypatch):
    """When FlexMeasures has an ingestion worker, the API answers 202 and the job writes: real Redis,
    a real RQ worker; the job's commit queues one re-plan job on the scheduling queue."""
    from flexmeasures.data.services.data_ingestion import add_beliefs_to_db_and_enqueue_forecasting_jobs
    from redis import Redis
    from rq import Queue, SimpleWorker

    from flexmeasures_cariflex.data.services.admin_user import find_user

    redis = Redis("127.0.0.1", 6379)
    ingestion = Queue(f"cariflex-test-{uuid.uuid4().hex[:8]}", connection=redis)
    scheduling = Queue(f"cariflex-test-{uuid.uuid4().hex[:8]}", connection=redis)
    monkeypatch.setitem(replanning.queues, "scheduling", scheduling)
    _api_user_token(replanning, fm_db, fleet)
    user_id = find_user("trader@cariflex.example").id
    sensor_id = _sensor_ids(fleet)["consumption_price"]

    def ingest(values: list[float]) -> None:
        data = {
            "values": values,
            "start": THIS_HOUR.isoformat(),
            "duration": "PT30H",
            "unit": "EUR/MWh",
            "prior": (MODIFIED + timedelta(seconds=next(_posts))).isoformat(),
        }
        ingestion.enqueue(
            add_beliefs_to_db_and_enqueue_forecasting_jobs,
            sensor_id=sensor_id,
            user_id=user_id,
            sensor_data=data,
        )
        SimpleWorker([ingestion], connection=redis).work(burst=True)

    try:
        ingest([120.0 + h for h in range(30)])
        assert scheduling.count == 1 and schedule_versions(fm_db) == 0
        ingest([120.0 + h for h in range(30)])  # the same prices again
        assert scheduling.count == 1
        SimpleWorker([scheduling], connection=redis).work(burst=True)
        status = schedule_status(fleet)
        assert status["ok"] and status["request"] == 1 and status["because"] == ["consumption_price"], status
        assert schedule_versions(fm_db) == 1
    finally:
        ingestion.delete(delete_jobs=True)
        scheduling.delete(delete_jobs=True)
