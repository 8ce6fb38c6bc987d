"""Query time of every Grafana panel on a year of 1-minute data.

A fresh database (CARIFLEX_TEST_DATABASE_URL, else 127.0.0.1:5432, else embedded) gets the
FlexMeasures schema and the Cariflex site (`setup_site`), then ``--days`` (365) of 1-minute values
for every sensor of the site by COPY (plus, on the battery and EV power sensors, a scheduler
belief per minute for the last 7 days, so schedule and actual both exist). Then every panel's SQL,
expanded as Grafana would (tests/helpers/grafana_macros.py), runs as ``grafana_reader`` for the last 24 h
(interval 2m) and the last 7 days (interval 15m), 5 times each; the median is reported.

Prints one JSON line. Goal: every panel <= 50 ms on 24 h and <= 200 ms on 7 d.

    .venv/bin/python bench/grafana_queries.py [--days 365] [--repeat 5]
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import secrets
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import psycopg2  # noqa: E402

from bench.common import parse_args, print_result  # noqa: E402
from cariflex.fleet import load_fleet  # noqa: E402
from operations import database  # noqa: E402
from tests.helpers.common import database_server_url  # noqa: E402
from tests.helpers.grafana_macros import expand  # noqa: E402

DASHBOARD = Path(__file__).resolve().parent.parent / "grafana" / "dashboards" / "cariflex.json"
PASSWORD = secrets.token_urlsafe(16)  # this run's grafana_reader password


def load(url: str, days: int) -> tuple[dict, datetime]:
    """Schema, site, role and data; returns the sensor ids by name and the data's end."""
    os.environ["SQLALCHEMY_TEST_DATABASE_URI"] = url
    os.environ.pop("FLEXMEASURES_PLUGINS", None)
    from flexmeasures.app import create
    from flexmeasures.data import db

    from flexmeasures_cariflex.config import patch_flexmeasures_defaults
    from flexmeasures_cariflex.data.queries.site import ensure_source, site_sensors
    from flexmeasures_cariflex.data.services.grafana_role import ensure_grafana_role
    from flexmeasures_cariflex.data.services.site_setup import setup_site

    patch_flexmeasures_defaults()
    app = create(env="testing", plugins=["flexmeasures_cariflex"])
    with app.app_context():
        db.create_all()
        fleet = load_fleet()
        setup_site(fleet)
        simulator = ensure_source("Simulator", "demo script").id
        scheduler = ensure_source("Cariflex scheduler", "scheduler").id
        ensure_grafana_role(PASSWORD)
        db.session.commit()
        sensors = {name: s.id for name, s in site_sensors(fleet).items()}
        db.session.remove()
        db.engine.dispose()
    end = datetime.now(UTC).replace(second=0, microsecond=0)
    start = end - timedelta(days=days)
    minutes = np.arange(
        np.datetime64(start.replace(tzinfo=None), "m"), np.datetime64(end.replace(tzinfo=None), "m")
    )
    stamps = np.datetime_as_string(minutes, unit="m")
    conn = psycopg2.connect(database.to_psycopg2(url).replace("postgresql+psycopg2", "postgresql"))
    began = time.perf_counter()
    with conn, conn.cursor() as cursor:
        for i, (name, sensor_id) in enumerate(sorted(sensors.items())):
            values = 50 + 40 * np.sin(np.arange(len(minutes)) / 240 + i)
            _copy(cursor, stamps, values, sensor_id, simulator)
            if name.endswith("_power") and not name.startswith("pv_"):
                week = slice(len(minutes) - 7 * 1440, None)
                _copy(cursor, stamps[week], values[week] * 0.9, sensor_id, scheduler, horizon="-1 hours")
        cursor.execute("ANALYZE timed_belief")
    rows = len(minutes) * len(sensors)
    print(f"loaded {rows} rows in {time.perf_counter() - began:.0f} s", file=sys.stderr)
    conn.close()
    return sensors, end


def _copy(
    cursor, stamps: np.ndarray, values: np.ndarray, sensor_id: int, source_id: int, horizon: str = "0"
) -> None:
    text = "\n".join(
        f"{s}:00+00\t{horizon}\t0.5\t{v:.3f}\t{sensor_id}\t{source_id}"
        for s, v in zip(stamps, values, strict=True)
    )
    cursor.copy_expert(
        "COPY timed_belief (event_start, belief_horizon, cumulative_probability, event_value, sensor_id, "
        "source_id) FROM STDIN",
        io.StringIO(text + "\n"),
    )


def measure(url: str, end: datetime, repeat: int) -> dict:
    from sqlalchemy.engine import make_url

    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    parsed = make_url(database.to_psycopg2(url))
    conn = psycopg2.connect(
        host=parsed.host or parsed.query.get("host"),
        port=parsed.port,
        dbname=parsed.database,
        user="grafana_reader",
        password=PASSWORD,
    )
    conn.autocommit = True
    variables = {"site": load_fleet().site.name, "device": "bat_01"}
    results = {}
    with conn.cursor() as cursor:
        for panel in dashboard["panels"]:
            for target in panel["targets"]:
                key = f"{panel['id']:02d}{target['refId']} {panel['title']}"
                results[key] = {}
                for label, span, interval in (
                    ("24h_ms", timedelta(hours=24), "2m"),
                    ("7d_ms", timedelta(days=7), "15m"),
                ):
                    sql = expand(
                        target["rawSql"], start=end - span, end=end, interval=interval, variables=variables
                    )
                    times = []
                    for _ in range(repeat):
                        began = time.perf_counter()
                        cursor.execute(sql)
                        cursor.fetchall()
                        times.append((time.perf_counter() - began) * 1000)
                    results[key][label] = round(statistics.median(times), 1)
    conn.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--repeat", type=int, default=5)
    args = parse_args(parser, days=2, repeat=1)
    logging.disable(logging.WARNING)
    with tempfile.TemporaryDirectory() as folder:
        url = database.with_database(
            database_server_url(Path(folder)), f"cariflex_bench_{uuid.uuid4().hex[:8]}"
        )
        database.create_database(url)
        try:
            _, end = load(url, args.days)
            results = measure(url, end, args.repeat)
        finally:
            database.drop_database(url)
    worst_24h = max(r["24h_ms"] for r in results.values())
    worst_7d = max(r["7d_ms"] for r in results.values())
    print_result(
        "grafana_queries",
        results,
        "slowest_panel_24h_ms",
        worst_24h,
        50,
        days=args.days,
        slowest_7d_ms={"measured": worst_7d, "goal": 200, "met": worst_7d <= 200},
    )


if __name__ == "__main__":
    main()
