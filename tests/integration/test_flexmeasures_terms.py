"""The site in FlexMeasures' own terms (issue 21, point 1): setup writes the site's flex-context and
each device's flex-model in FlexMeasures' fields, the plugin's scheduler plans with what is stored
there, and FlexMeasures' own trigger on the site (a real RQ worker on a real Redis) gives the same
fleet schedule as the plugin; a trigger the fleet cannot be planned from is refused with why."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta

import numpy as np
import pytest
from flexmeasures.data.models.generic_assets import GenericAsset
from flexmeasures.data.models.time_series import Sensor
from flexmeasures.data.schemas.scheduling import DBFlexContextSchema
from flexmeasures.data.schemas.scheduling.storage import DBStorageFlexModelSchema
from sqlalchemy import select

from flexmeasures_cariflex.config import LP_SOLVER_OPTIONS
from flexmeasures_cariflex.data.models.planning import CariflexFleetScheduler
from flexmeasures_cariflex.data.services.fleet_schedule import compute_fleet_schedule
from flexmeasures_cariflex.data.services.openadr_ingest import ingest_event
from flexmeasures_cariflex.data.services.replan import schedule_status
from tests.helpers.common import assert_clean, call
from tests.integration.test_replan import THIS_HOUR, prices_from_now, schedule_versions


def asset(fm_db, name: str) -> GenericAsset:
    return fm_db.session.execute(select(GenericAsset).filter(GenericAsset.name == name)).scalar_one()


def sensor(fm_db, name: str) -> Sensor:
    return fm_db.session.execute(select(Sensor).filter(Sensor.name == name)).scalar_one()


@pytest.fixture
def admin_token(app, fm_db, fleet):
    """A user of the site's account who may trigger schedules on its assets (account-admin)."""
    from flexmeasures.data.models.user import Account
    from flexmeasures.data.services.users import create_user

    from tests.helpers.common import request_token

    account = fm_db.session.execute(select(Account).filter(Account.name == fleet.site.account)).scalar_one()
    create_user(
        email="planner@cariflex.example",
        password="planner-secret-1",  # create_user hashes it
        account_name=account.name,
        user_roles=["account-admin"],
    )
    fm_db.session.commit()
    return request_token(app, "planner@cariflex.example", "planner-secret-1")


@pytest.fixture
def queue(app, monkeypatch):
    """FlexMeasures' scheduling queue on the machine's Redis (a queue of this test's own)."""
    from redis import Redis
    from rq import Queue

    app.config["FLEXMEASURES_LP_SOLVER_OPTIONS"] = LP_SOLVER_OPTIONS
    redis = Redis("127.0.0.1", 6379)
    redis.ping()
    queue = Queue(f"cariflex-test-{uuid.uuid4().hex[:8]}", connection=redis)
    monkeypatch.setitem(app.queues, "scheduling", queue)
    yield queue
    queue.delete(delete_jobs=True)


def test_setup_writes_the_site_and_devices_in_flexmeasures_fields_that_flexmeasures_accepts(fm_db, fleet):
    site = asset(fm_db, fleet.site.name)
    context = site.flex_context
    assert context["consumption-price"] == {"sensor": sensor(fm_db, "consumption_price").id}
    assert context["production-price"] == {"sensor": sensor(fm_db, "production_price").id}
    assert context["site-consumption-capacity"] == f"{fleet.site.capacity_kw:g} kW"
    assert {item["sensor"] for item in context["inflexible-production"]} == {
        sensor(fm_db, f"{pv.name}_power").id for pv in fleet.pv
    }
    assert context["inflexible-consumption"] == [{"sensor": sensor(fm_db, "site_load").id}]
    DBFlexContextSchema().load(context)  # FlexMeasures' own check of a stored flex-context

    bat = fleet.batteries[0]
    model = asset(fm_db, bat.name).flex_model
    assert model["power-capacity"] == f"{bat.power_kw:g} kW"
    assert model["soc-max"] == f"{bat.capacity_kwh * bat.soc_max_pct / 100:g} kWh"
    one_way = next((ev for ev in fleet.ev_chargers if not ev.bidirectional), None)
    for device in (*fleet.batteries, *fleet.ev_chargers):
        DBStorageFlexModelSchema().load(asset(fm_db, device.name).flex_model)
    if one_way is not None:
        assert asset(fm_db, one_way.name).flex_model["production-capacity"] == "0 kW"
    # FlexMeasures runs the Cariflex scheduler for the site, by the registered class name
    assert site.attributes["custom-scheduler"] == CariflexFleetScheduler.__name__


def test_a_limit_changed_through_flexmeasures_api_is_what_the_plugin_plans_with(
    app, fm_db, fleet, admin_token
):
    ingest_event(prices_from_now(0), fleet)
    fm_db.session.commit()
    bat = asset(fm_db, "bat_01")
    model = {**bat.flex_model, "power-capacity": "7 kW"}
    response = call(
        app,
        "PATCH",
        f"/api/v3_0/assets/{bat.id}",
        json={"flex_model": json.dumps(model)},
        headers={"Authorization": admin_token},
    )
    assert_clean(response)
    assert response.status_code == 200, response.json
    result = compute_fleet_schedule(fleet, THIS_HOUR, horizon=timedelta(hours=12), dry_run=True)
    assert result.ok, result.infeasible
    assert result.devices["bat_01"].peak_kw == pytest.approx(7, abs=1e-3)  # not the fleet file's 50 kW
    assert result.devices["bat_02"].peak_kw > 7

    # and a field that cannot be read refuses the schedule, naming the asset and the field
    model["soc-max"] = "lots"
    fm_db.session.execute(
        select(GenericAsset).filter(GenericAsset.id == bat.id)
    ).scalar_one().flex_model = model
    with pytest.raises(ValueError, match=r"flex-model of asset 'bat_01' has 'soc-max' 'lots'"):
        compute_fleet_schedule(fleet, THIS_HOUR, horizon=timedelta(hours=12), dry_run=True)
    fm_db.session.rollback()


def test_flexmeasures_trigger_on_the_site_runs_on_a_worker_and_equals_the_plugin_schedule(
    app, fm_db, fleet, admin_token, queue
):
    from rq import SimpleWorker
    from rq.job import Job

    ingest_event(prices_from_now(0), fleet)
    fm_db.session.commit()
    site = asset(fm_db, fleet.site.name)
    body = {"start": THIS_HOUR.isoformat(), "duration": "PT12H"}
    response = call(
        app,
        "POST",
        f"/api/v3_0/assets/{site.id}/schedules/trigger",
        json=body,
        headers={"Authorization": admin_token},
    )
    assert response.status_code == 202, response.json
    job_id = response.json["job"]
    assert schedule_versions(fm_db) == 0  # nothing runs in the web process
    SimpleWorker([queue], connection=queue.connection).work(burst=True)
    job = Job.fetch(job_id, connection=queue.connection)
    assert job.get_status(refresh=True) == "finished", job.latest_result()
    assert schedule_versions(fm_db) == 1
    status = schedule_status(fleet)
    assert status["ok"] and status["because"] == ["FlexMeasures trigger"], status

    plugin = compute_fleet_schedule(fleet, THIS_HOUR, horizon=timedelta(hours=12), dry_run=True)
    assert plugin.ok
    for name, planned in plugin.devices.items():
        got = call(
            app,
            "GET",
            f"/api/v3_0/sensors/{sensor(fm_db, f'{name}_power').id}/schedules/{job_id}",
            query_string={"duration": "PT12H"},
            headers={"Authorization": admin_token},
        )
        assert got.status_code == 200, got.json
        values = np.array(got.json["values"], dtype=float)  # 1-minute values, consumption positive
        assert len(values) == 12 * 60
        per_period = values.reshape(-1, 15)
        assert np.allclose(per_period, per_period[:, :1])  # each quarter-hour's value holds for it
        assert np.allclose(per_period[:, 0], planned.power_kw.to_numpy(), atol=1e-3), name


@pytest.mark.parametrize(
    "what, body, problem",
    [
        ("device", {"duration": "PT12H"}, "trigger the site"),
        ("sensor", {"duration": "PT12H"}, "trigger the site"),  # FlexMeasures' deprecated sensor trigger
        (
            "flex-model",
            {"duration": "PT12H", "flex-model": [{"sensor": "bat_01_power", "soc-at-start": "5 kWh"}]},
            "stored flex-context",
        ),
        (
            "flex-context",
            {"duration": "PT12H", "flex-context": {"consumption-price": "10 EUR/MWh"}},
            "stored flex-context",
        ),
        ("horizon beyond the prices", {"duration": "PT48H"}, "consumption_price has no value for"),
        ("start off the grid", {"duration": "PT12H", "start": "+7min"}, "is not on a 0:15:00 boundary"),
    ],
)
def test_a_trigger_the_fleet_cannot_be_planned_from_is_refused_with_why_and_queues_nothing(
    app, fm_db, fleet, admin_token, queue, what, body, problem
):
    ingest_event(prices_from_now(0), fleet)
    fm_db.session.commit()
    url = f"/api/v3_0/assets/{asset(fm_db, fleet.site.name).id}/schedules/trigger"
    if what == "device":
        url = f"/api/v3_0/assets/{asset(fm_db, 'bat_01').id}/schedules/trigger"
    elif what == "sensor":
        url = f"/api/v3_0/sensors/{sensor(fm_db, 'bat_01_power').id}/schedules/trigger"
    start = THIS_HOUR + (timedelta(minutes=7) if body.get("start") == "+7min" else timedelta(0))
    body = {**body, "start": start.isoformat()}
    for item in body.get("flex-model", []):
        item["sensor"] = sensor(fm_db, item["sensor"]).id
    response = call(app, "POST", url, json=body, headers={"Authorization": admin_token})
    assert_clean(response)
    assert response.status_code == 422, response.json
    assert problem in json.dumps(response.json), response.json
    assert queue.count == 0 and schedule_versions(fm_db) == 0
