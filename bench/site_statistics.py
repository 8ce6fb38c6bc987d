"""Time for a site-wide year of daily statistics on one year of 1-minute data.

Fills a fresh database through the plugin's path (setup, then COPY into ``timed_belief`` with the
rollup and alert triggers firing): ``--days`` of 1-minute power for the 10 PV sites, 10 batteries
and 10 EV chargers (within their limits), hourly consumption and production prices and carbon
intensity. Then times ``statistics`` for the site over the year (365 local days) and storing the
daily figures, ``--repeat`` times.

Prints one JSON line. Goal: <= 5 s for the year.

    .venv/bin/python bench/site_statistics.py [--days 365] [--repeat 3]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

# Run as a script, the repository root is not on the path; the benches import from it.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import psycopg2  # noqa: E402

from bench.common import parse_args, print_result  # noqa: E402
from bench.grafana_queries import _copy  # noqa: E402
from cariflex.fleet import load_fleet  # noqa: E402
from operations import database  # noqa: E402
from tests.helpers.common import database_server_url  # noqa: E402


def _profile(kind: str, n: int, i: int, minutes: np.ndarray) -> np.ndarray:
    """Plausible 1-minute power within the device's limits (kW)."""
    day = (minutes.astype("datetime64[m]").astype(np.int64) % 1440) / 1440
    if kind == "pv":  # production-positive, daylight only (UTC-4: noon is 16:00 UTC)
        return np.clip(40 * np.sin((day - 0.42) * 2 * np.pi), 0, None)
    if kind == "battery":
        return 30 * np.sin(np.arange(n) / 240 + i)
    return 11 + 10 * np.sin(np.arange(n) / 300 + i)  # EV charging


def load(url: str, days: int):
    os.environ["SQLALCHEMY_TEST_DATABASE_URI"] = url
    os.environ.pop("FLEXMEASURES_PLUGINS", None)
    from flexmeasures.app import create
    from flexmeasures.data import db

    from flexmeasures_cariflex.config import patch_flexmeasures_defaults
    from flexmeasures_cariflex.data.queries.site import ensure_source, site_sensors
    from flexmeasures_cariflex.data.services.site_setup import setup_site

    patch_flexmeasures_defaults()
    app = create(env="testing", plugins=["flexmeasures_cariflex"])
    fleet = load_fleet()
    with app.app_context():
        db.create_all()
        setup_site(fleet)
        simulator = ensure_source("Simulator", "demo script").id
        vtn = ensure_source("OpenADR VTN", "gateway").id
        db.session.commit()
        sensors = {name: s.id for name, s in site_sensors(fleet).items()}
    end = datetime.now(UTC).replace(hour=4, minute=0, second=0, microsecond=0)  # a local midnight
    start = end - timedelta(days=days)
    minutes = np.arange(
        np.datetime64(start.replace(tzinfo=None), "m"), np.datetime64(end.replace(tzinfo=None), "m")
    )
    stamps = np.datetime_as_string(minutes, unit="m")
    hours = minutes[::60]
    hour_stamps = np.datetime_as_string(hours, unit="m")
    conn = psycopg2.connect(database.to_psycopg2(url).replace("postgresql+psycopg2", "postgresql"))
    began = time.perf_counter()
    rows = 0
    with conn, conn.cursor() as cursor:
        devices = [("pv", d.name) for d in fleet.pv] + [("battery", d.name) for d in fleet.batteries]
        devices += [("ev", d.name) for d in fleet.ev_chargers]
        for i, (kind, name) in enumerate(devices):
            _copy(
                cursor, stamps, _profile(kind, len(minutes), i, minutes), sensors[f"{name}_power"], simulator
            )
            rows += len(minutes)
        hour_of_day = np.arange(len(hours)) % 24
        for name, values in (
            ("consumption_price", 90 + 60 * np.sin(hour_of_day / 24 * 2 * np.pi)),
            ("production_price", np.full(len(hours), 70.0)),
            ("grid_carbon_intensity", 525 + 100 * np.cos(hour_of_day / 24 * 2 * np.pi)),
        ):
            _copy(cursor, hour_stamps, values, sensors[name], vtn, horizon="1 day")
            rows += len(hours)
        cursor.execute("ANALYZE")
    print(f"loaded {rows} rows in {time.perf_counter() - began:.0f} s", file=sys.stderr)
    conn.close()
    return app, fleet, end, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--repeat", type=int, default=3)
    args = parse_args(parser, days=2, repeat=1)
    logging.disable(logging.WARNING)
    with tempfile.TemporaryDirectory() as folder:
        server = database_server_url(Path(folder))
        url = database.with_database(server, f"cariflex_bench_{uuid.uuid4().hex[:8]}")
        database.create_database(url)
        database.install_extensions(url)
        try:
            app, fleet, end, rows = load(url, args.days)
            from flexmeasures.data import db

            from flexmeasures_cariflex.data.services.statistics import Period, statistics, store_daily

            last = (end - timedelta(days=1)).date()
            period = Period(f"{args.days} days", last - timedelta(days=args.days - 1), last)
            computed, stored = [], []
            with app.app_context():
                for _ in range(args.repeat):
                    began = time.perf_counter()
                    result = statistics(fleet, period)
                    computed.append(time.perf_counter() - began)
                    began = time.perf_counter()
                    store_daily(fleet, result)
                    db.session.commit()
                    stored.append(time.perf_counter() - began)
                total = result["total"]
                db.session.remove()
                db.engine.dispose()
        finally:
            database.drop_database(url)
    compute_s, store_s = sorted(computed)[len(computed) // 2], sorted(stored)[len(stored) // 2]
    print_result(
        "site_statistics",
        {
            "rows": rows,
            "days": len(result["days"]),
            "compute_s": round(compute_s, 2),
            "store_s": round(store_s, 2),
            "site_year": {k: total[k] for k in ("consumed_kwh", "injected_kwh", "cost_eur", "co2_kg")},
        },
        "site_year_of_daily_statistics_s",
        round(compute_s + store_s, 2),
        5.0,
        repeat=args.repeat,
    )


if __name__ == "__main__":
    main()
