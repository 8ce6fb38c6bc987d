"""The Grafana provisioning and the Cariflex dashboard: structure, and every panel's SQL run as the
read-only role against a database the plugin filled with a day of simulated data."""

from __future__ import annotations

import json
import re
import secrets
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import psycopg2
import pytest
import yaml
from sqlalchemy.engine import make_url

from flexmeasures_cariflex.config import LP_SOLVER_OPTIONS
from tests.helpers.grafana_macros import expand, rfc3339

ROOT = Path(__file__).resolve().parent.parent.parent
GRAFANA = ROOT / "grafana"
DASHBOARD = json.loads((GRAFANA / "dashboards" / "cariflex.json").read_text(encoding="utf-8"))
TZ = ZoneInfo("America/Martinique")
DAY = datetime.combine(datetime.now(TZ).date() - timedelta(days=1), datetime.min.time(), TZ)  # yesterday
PASSWORD = secrets.token_urlsafe(16)  # this run's grafana_reader password


def targets():
    for panel in DASHBOARD["panels"]:
        for target in panel["targets"]:
            yield panel, target


# --- structure ------------------------------------------------------------------------------------


def test_committed_dashboard_is_what_the_generator_makes():
    import importlib.util

    spec = importlib.util.spec_from_file_location("build_dashboard", GRAFANA / "build_dashboard.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.render() == (GRAFANA / "dashboards" / "cariflex.json").read_text(encoding="utf-8"), (
        "grafana/dashboards/cariflex.json is stale: run .venv/bin/python grafana/build_dashboard.py"
    )


def test_panels_are_unique_do_not_overlap_and_use_the_provisioned_datasource():
    datasources = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "flexmeasures.yaml").read_text())
    uids = {d["uid"] for d in datasources["datasources"]}
    assert all("${" in str(d[k]) for d in datasources["datasources"] for k in ("url", "user"))  # from the env
    assert "${" in datasources["datasources"][0]["secureJsonData"]["password"]
    panels = DASHBOARD["panels"]
    assert len(panels) >= 14
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    cells: dict[tuple[int, int], int] = {}
    for p in panels:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']} overlaps panel {cells[(x, y)]}"
                cells[(x, y)] = p["id"]
    for panel, target in targets():
        assert target["datasource"]["uid"] in uids, panel["title"]
        assert target["rawQuery"] is True and target["format"] in ("time_series", "table")
        assert not re.search(r"sensor_id\s*(=|IN\s*\(\s*)\d", target["rawSql"]), panel["title"]
        assert not re.search(r"\bs\.id\s*=\s*\d", target["rawSql"]), panel["title"]
    for variable in DASHBOARD["templating"]["list"]:
        assert variable["datasource"]["uid"] in uids


def test_every_dashboard_file_is_under_a_provider():
    providers = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "cariflex.yaml").read_text())
    paths = {p["options"]["path"] for p in providers["providers"]}
    assert paths == {"/var/lib/grafana/dashboards"}  # grafana/dashboards is mounted there
    assert sorted(f.name for f in (GRAFANA / "dashboards").glob("*.json")) == ["cariflex.json"]


def test_the_macro_expander_matches_grafanas_documented_vectors():
    start, end = datetime(2018, 4, 12, 18, 0, tzinfo=UTC), datetime(2018, 4, 12, 18, 5, tzinfo=UTC)
    e = lambda sql: expand(sql, start=start, end=end)  # noqa: E731
    assert e("WHERE $__timeFilter(time_column)") == (
        "WHERE time_column BETWEEN '2018-04-12T18:00:00Z' AND '2018-04-12T18:05:00Z'"
    )
    assert (
        e("SELECT $__timeGroup(time_column,'5m')") == "SELECT floor(extract(epoch from time_column)/300)*300"
    )
    assert e("SELECT $__timeGroup(time_column,'5m'), x") == (
        'SELECT floor(extract(epoch from time_column)/300)*300 AS "time", x'
    )
    assert e("SELECT $__timeGroupAlias(time_column,'5m')") == (
        'SELECT floor(extract(epoch from time_column)/300)*300 AS "time"'
    )
    assert e("select $__timeFrom()") == "select '2018-04-12T18:00:00Z'"
    assert e("WHERE $__unixEpochFilter(t)") == "WHERE t >= 1523556000 AND t <= 1523556300"
    with pytest.raises(ValueError, match="unexpanded"):
        e("SELECT $unknown")


# --- the SQL, as grafana_reader, on a day of simulated data ---------------------------------------


@pytest.fixture
def filled(app, cli, fm_db, fleet):
    """The plugin's own paths: setup, weather + PV, production price, OpenADR events, a fleet
    schedule, one day of device measurements, and a revised belief."""
    from flexmeasures_cariflex.data.queries.site import ensure_source, site_sensors
    from flexmeasures_cariflex.data.services.beliefs import insert_beliefs
    from flexmeasures_cariflex.data.services.fleet_schedule import compute_fleet_schedule
    from flexmeasures_cariflex.data.services.openadr_ingest import ingest_event
    from flexmeasures_cariflex.data.services.weather import fetch_weather

    app.config["FLEXMEASURES_LP_SOLVER_OPTIONS"] = LP_SOLVER_OPTIONS
    start, end = pd.Timestamp(DAY), pd.Timestamp(DAY) + pd.Timedelta(days=1)
    fetch_weather(fleet, start, end, source="synthetic")
    assert cli("cariflex", "production-price", "--day", f"{DAY:%Y-%m-%d}", "--no-replan").exit_code == 0
    modified = (start - pd.Timedelta(hours=12)).tz_convert("UTC").isoformat()
    hours = [start + pd.Timedelta(hours=h) for h in range(24)]
    for event in (
        {
            "event_id": "evt-price", "signal_name": "ENERGY_PRICE", "signal_type": "price",
            "item_base": {"name": "currencyPerKWh", "unit": "EUR", "scale": "none"},
            "intervals": [
                {"start": t.isoformat(), "duration": "PT1H", "value": 0.3 if 18 <= t.hour < 21 else 0.12}
                for t in hours
            ],
        },
        {
            "event_id": "evt-lc", "signal_name": "LOAD_CONTROL", "signal_type": "x-loadControlCapacity",
            "item_base": None,
            "intervals": [{"start": hours[18].isoformat(), "duration": "PT4H", "value": 0.6}],
        },
    ):  # fmt: skip
        ingest_event(
            {**event, "modification_number": 0, "status": "far", "modification_date_time": modified}, fleet
        )
    fm_db.session.commit()
    result = compute_fleet_schedule(fleet, DAY)
    assert result.ok, result.infeasible
    sensors = site_sensors(fleet)
    minutes = pd.date_range(start, end, freq="min", inclusive="left")
    simulator = ensure_source("Simulator", "demo script")
    measured = {}
    for i, device in enumerate((*fleet.batteries, *fleet.ev_chargers)):
        power = pd.Series(10 * np.sin(np.arange(len(minutes)) / 240 + i), index=minutes)
        measured[sensors[f"{device.name}_power"]] = power
        measured[sensors[f"{device.name}_soc"]] = 30 + power.cumsum() / 600
    insert_beliefs(measured, simulator, None)
    # A revised irradiance value: a forecast, then the measurement for the same slot and source.
    slot = start + pd.Timedelta(hours=12)
    synthetic = ensure_source("Simulator", "demo script")
    insert_beliefs({sensors["irradiance"]: pd.Series({slot: 111.0})}, synthetic, slot - pd.Timedelta(hours=6))
    insert_beliefs({sensors["irradiance"]: pd.Series({slot: 222.0})}, synthetic, None)
    # The insights panels: an impossible reading (an alert), the fleet's flexibility at noon, the
    # day's statistics and the verification of its load-control event.
    from flexmeasures_cariflex.data.services.dr_verification import store_verifications, verify_events
    from flexmeasures_cariflex.data.services.flexibility import current, store_fleet

    insert_beliefs(
        {sensors["irradiance"]: pd.Series({slot + pd.Timedelta(hours=1): 1500.0})}, synthetic, None
    )
    store_fleet(fleet, current(fleet, 1.0, now=slot.to_pydatetime()))
    store_verifications(fleet, verify_events(fleet, start.to_pydatetime(), end.to_pydatetime()))
    fm_db.session.commit()
    assert cli("cariflex", "statistics", "--day", f"{DAY:%Y-%m-%d}").exit_code == 0
    assert cli("cariflex", "grafana-role", "--password-env", "CARIFLEX_TEST_GRAFANA_PASSWORD").exit_code == 1
    fm_db.session.commit()
    return slot


def reader_connection(app, monkeypatch, cli):
    monkeypatch.setenv("CARIFLEX_TEST_GRAFANA_PASSWORD", PASSWORD)
    out = cli("cariflex", "grafana-role", "--password-env", "CARIFLEX_TEST_GRAFANA_PASSWORD")
    assert out.exit_code == 0, out.output
    again = cli("cariflex", "grafana-role", "--password-env", "CARIFLEX_TEST_GRAFANA_PASSWORD")
    assert again.exit_code == 0 and "updated" in again.output  # idempotent
    from flexmeasures.data import db

    url = make_url(str(db.engine.url.render_as_string(hide_password=False)))
    return psycopg2.connect(
        host=url.host or url.query.get("host"),
        port=url.port,
        dbname=url.database,
        user="grafana_reader",
        password=PASSWORD,
    )


def run(conn, sql: str) -> tuple[list[str], list[tuple]]:
    with conn.cursor() as cursor:
        cursor.execute(sql)
        return [c.name for c in cursor.description], cursor.fetchall()


def test_every_panel_query_runs_as_grafana_reader_and_counts_revisions_once(
    app, cli, fm_db, fleet, filled, monkeypatch
):
    conn = reader_connection(app, monkeypatch, cli)
    start, end = DAY, DAY + timedelta(days=1)
    variables = {"site": fleet.site.name, "device": "bat_01"}
    try:
        for variable in DASHBOARD["templating"]["list"]:
            columns, rows = run(conn, expand(variable["query"], start=start, end=end, variables=variables))
            assert rows, variable["name"]
        for (panel, target), interval in [(t, i) for t in targets() for i in ("2m", "15m")]:
            sql = expand(target["rawSql"], start=start, end=end, interval=interval, variables=variables)
            columns, rows = run(conn, sql)
            assert rows, f"{panel['title']} at {interval}: no rows"
            if target["format"] == "time_series":
                assert "time" in columns, f"{panel['title']}: no time column in {columns}"
                numeric = [i for i, c in enumerate(columns) if c not in ("time", "metric")]
                assert all(isinstance(r[i], int | float) or r[i] is None for r in rows for i in numeric), (
                    panel["title"]
                )
        # The revised irradiance is counted once: its latest value, not the average of both.
        irradiance = next(t for p, t in targets() if p["title"] == "Irradiance")
        sql = expand(
            irradiance["rawSql"], start=filled, end=filled + timedelta(minutes=14), variables=variables
        )
        columns, rows = run(conn, sql)
        assert [r[columns.index("value")] for r in rows] == [222.0]
        # The reader cannot write, nor read the users.
        with pytest.raises(psycopg2.Error):
            run(conn, "SELECT email FROM fm_user")
        conn.rollback()
        with pytest.raises(psycopg2.Error):
            run(conn, "DELETE FROM timed_belief")
        conn.rollback()
    finally:
        conn.close()


def test_schedule_and_actual_are_separate_series_and_cap_follows_load_control(
    app, cli, fm_db, fleet, filled, monkeypatch
):
    conn = reader_connection(app, monkeypatch, cli)
    variables = {"site": fleet.site.name, "device": "bat_01"}
    by_title = {p["title"]: p for p in DASHBOARD["panels"]}
    try:
        sql = expand(
            by_title["Schedule vs actual: $device"]["targets"][0]["rawSql"],
            start=DAY, end=DAY + timedelta(days=1), variables=variables,
        )  # fmt: skip
        columns, rows = run(conn, sql)
        assert {r[columns.index("metric")] for r in rows} == {"schedule", "actual"}
        assert len(rows) == 2 * 96
        cap = by_title["Fleet net import against the load-control cap"]["targets"][1]["rawSql"]
        window = DAY + timedelta(hours=18)
        columns, rows = run(
            conn,
            expand(
                cap, start=window, end=window + timedelta(hours=4) - timedelta(seconds=1), variables=variables
            ),
        )
        assert {round(r[1], 3) for r in rows} == {0.6 * fleet.site.capacity_kw}
    finally:
        conn.close()


def test_rfc3339_is_utc():
    assert rfc3339(DAY) == DAY.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def test_rollups_follow_inserts_revisions_and_deletes_and_match_the_raw_beliefs(
    app, cli, fm_db, fleet, filled, monkeypatch
):
    """The 15-minute rollups behind the week-long panels say what the raw beliefs say."""
    from sqlalchemy import text

    from flexmeasures_cariflex.data.queries.site import ensure_source, site_sensors
    from flexmeasures_cariflex.data.services.beliefs import insert_beliefs

    conn = reader_connection(app, monkeypatch, cli)
    variables = {"site": fleet.site.name, "device": "bat_01"}
    battery = next(t for p, t in targets() if p["title"] == "Battery power (charging +)")["rawSql"]
    start, end = DAY, DAY + timedelta(days=1) - timedelta(seconds=1)

    def series(interval: str) -> pd.Series:
        columns, rows = run(
            conn, expand(battery, start=start, end=end, interval=interval, variables=variables)
        )
        frame = pd.DataFrame(rows, columns=columns)
        frame = frame[frame["metric"] == "bat_01_power"]
        return frame.set_index("time")["value"].astype(float)

    try:
        rolled, raw = series("15m"), series("5m")  # rollups / beliefs themselves
        assert len(rolled) == 96
        regrouped = raw.groupby((raw.index // 900) * 900).mean()
        assert np.allclose(rolled.to_numpy(), regrouped.to_numpy())

        sensor = site_sensors(fleet)["bat_01_power"]
        slot = pd.Timestamp(DAY) + pd.Timedelta(hours=3)
        revised = pd.Series(1000.0, index=pd.date_range(slot, periods=15, freq="min"))
        insert_beliefs(
            {sensor: revised}, ensure_source("Simulator", "demo script"), slot - pd.Timedelta(days=1)
        )
        fm_db.session.commit()  # an older belief: the later one still counts, nothing changes
        conn.rollback()
        assert series("15m").loc[slot.timestamp()] == pytest.approx(rolled.loc[slot.timestamp()])
        fm_db.session.execute(
            text(
                "UPDATE timed_belief SET event_value = 37 "
                "WHERE sensor_id = :s AND event_start >= :a AND event_start < :b"
            ),
            {
                "s": sensor.id,
                "a": slot.to_pydatetime(),
                "b": (slot + pd.Timedelta(minutes=15)).to_pydatetime(),
            },
        )
        fm_db.session.commit()
        conn.rollback()
        assert series("15m").loc[slot.timestamp()] == pytest.approx(37)  # within the 50 kW limit
        fm_db.session.execute(
            text("DELETE FROM timed_belief WHERE sensor_id = :s AND event_start >= :a AND event_start < :b"),
            {
                "s": sensor.id,
                "a": slot.to_pydatetime(),
                "b": (slot + pd.Timedelta(minutes=15)).to_pydatetime(),
            },
        )
        fm_db.session.commit()
        conn.rollback()
        assert slot.timestamp() not in series("15m").index
    finally:
        conn.close()
