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
from tests.helpers.common import call
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
