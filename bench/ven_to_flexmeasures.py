"""Time from `event price` on the VTN to its 24 beliefs being queryable in FlexMeasures, and the
rate at which the VEN's outbox drains into FlexMeasures.

Real processes: the VTN (1 s poll), FlexMeasures with the plugin under gunicorn on a fresh database
(CARIFLEX_TEST_DATABASE_URL, else 127.0.0.1:5432, else an embedded server), and the VEN. Latency:
20 price events, each issued through the admin API at a random phase of the poll, timed until
24 beliefs for its day are in FlexMeasures' database. Drain: FlexMeasures is stopped, 20 more price
events queue up in the outbox, FlexMeasures starts, and the time until the outbox is empty gives
values per second.

Prints one JSON line. Goal: p95 <= 2 s.

    .venv/bin/python bench/ven_to_flexmeasures.py [--events 20]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import create_engine, text  # noqa: E402

from bench.common import parse_args, percentile, print_result  # noqa: E402
from operations import database  # noqa: E402
from tests.helpers.common import database_server_url, free_port  # noqa: E402
from tests.helpers.openadr_harness import FlexMeasuresServer, VenProcess, VtnProcess, wait_until  # noqa: E402
from vtn.events import SITE_TZ  # noqa: E402


def count(db, start: datetime) -> int:
    with db.connect() as conn:
        return conn.execute(
            text(
                "SELECT count(*) FROM timed_belief b JOIN sensor s ON s.id = b.sensor_id "
                "WHERE s.name = 'consumption_price' AND b.event_start >= :start AND b.event_start < :end"
            ),
            {"start": start, "end": start + timedelta(days=1)},
        ).scalar_one()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20)
    args = parse_args(parser, events=2)
    random.seed(11)
    midnight = (datetime.now(UTC).astimezone(SITE_TZ) + timedelta(days=1)).replace(
        hour=0, minute=0, second=0, microsecond=0
    )
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        db_url = database.with_database(database_server_url(folder), f"cariflex_bench_{uuid.uuid4().hex[:8]}")
        database.create_database(db_url)
        fm = FlexMeasuresServer(folder / "fm", db_url, free_port())
        vtn = VtnProcess(folder / "vtn", f"sqlite:///{folder / 'vtn.sqlite'}", poll_seconds=1)
        ven = None
        db = create_engine(db_url)
        try:
            fm.prepare()
            fm.start()
            vtn.start()
            vtn.cli("ven", "add", "cariflex-ven")
            ven = VenProcess(folder / "ven", vtn.url, fm.url).start()
            wait_until(lambda: ven.logged("registered"), 60, "registration")

            latencies = []
            for n in range(args.events):
                start = midnight + timedelta(days=n)
                time.sleep(random.uniform(0, 1.0))  # random phase against the 1 s poll
                issued = time.monotonic()
                vtn.admin("POST", "/events/price", {"start": start.isoformat(), "prices": [100.0 + n] * 24})
                wait_until(lambda s=start: count(db, s) == 24, 30, "24 beliefs", interval=0.01)
                latencies.append(time.monotonic() - issued)

            fm.stop()
            first = midnight + timedelta(days=args.events)
            for n in range(args.events):
                vtn.admin(
                    "POST",
                    "/events/price",
                    {"start": (first + timedelta(days=n)).isoformat(), "prices": [50.0 + n] * 24},
                )
            wait_until(lambda: ven.status()["outbox_depth"] == args.events, 60, "a full outbox")
            fm.start()
            began = time.monotonic()
            wait_until(lambda: ven.status()["outbox_depth"] == 0, 300, "the outbox to drain", interval=0.05)
            drain_s = time.monotonic() - began
        finally:
            if ven is not None:
                ven.stop()
            vtn.stop()
            fm.stop()
            db.dispose()
            database.drop_database(db_url)

    ordered = sorted(latencies)
    p95 = percentile(latencies, 0.95)
    latency = {
        "min": round(ordered[0], 3),
        "median": round(statistics.median(ordered), 3),
        "p95": round(p95, 3),
        "max": round(ordered[-1], 3),
    }
    drain = {
        "events": args.events,
        "values": 24 * args.events,
        "seconds": round(drain_s, 2),
        "values_per_s": round(24 * args.events / drain_s, 1),
    }
    print_result(
        "ven_to_flexmeasures",
        {"latency_s": latency, "drain": drain},
        "p95_s",
        round(p95, 3),
        2.0,
        events=args.events,
        poll_s=1,
    )


if __name__ == "__main__":
    main()
