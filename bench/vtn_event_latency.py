"""Time from issuing a price event to the VEN handler call, for 1/10/50 VENs at 1 s and 10 s polls.

The VTN runs as its own process (`cariflex-vtn serve`, SQLite store); the VENs are real openleadr
clients in this process. Each trial waits a random fraction of the poll period (so the event lands
at a random phase of the VENs' polls), issues a 24-hour price event through the admin API (what
`cariflex-vtn --remote ... event price` does, without the CLI's start-up), and records when each
VEN's handler ran. The event is cancelled (and the cancellation acknowledged) before the next
trial, so every distribution carries one event.

Prints one JSON line. Goal: p95 <= 1.0 s at a 1 s poll with 50 VENs.

    .venv/bin/python bench/vtn_event_latency.py [--quick]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import parse_args, percentile, print_result  # noqa: E402
from tests.helpers.openadr_harness import VenFleet, VtnProcess, wait_until  # noqa: E402
from vtn.events import SITE_TZ  # noqa: E402


def run_config(vens: int, poll_s: float, trials: int) -> dict:
    start = (datetime.now(UTC).astimezone(SITE_TZ) + timedelta(days=1)).replace(
        hour=0, minute=0, second=0, microsecond=0
    )
    with tempfile.TemporaryDirectory() as folder:
        vtn = VtnProcess(Path(folder), f"sqlite:///{folder}/vtn.sqlite", poll_seconds=poll_s).start()
        fleet = VenFleet()
        try:
            for i in range(vens):
                assert vtn.admin("POST", "/vens", {"name": f"ven-{i:03d}"}).status_code == 201
            clients = [fleet.add(f"ven-{i:03d}", vtn.url) for i in range(vens)]
            latencies: list[float] = []
            for _ in range(trials):
                time.sleep(random.uniform(0, poll_s))  # random phase against the polls
                issued = time.monotonic()
                event = vtn.admin(
                    "POST", "/events/price", {"start": start.isoformat(), "prices": [100.0] * 24}
                )
                event_id = event.json()["event_id"]
                wait_until(
                    lambda eid=event_id: all(c.latest(eid) for c in clients),
                    3 * poll_s + 10,
                    "every VEN to receive the event",
                    interval=0.005,
                )
                latencies += [c.latest(event_id)["at"] - issued for c in clients]
                vtn.admin("POST", f"/events/{event_id}/cancel")
                wait_until(
                    lambda eid=event_id: (
                        sum(
                            o["modification_number"] == 1
                            for o in vtn.admin("GET", f"/events/{eid}/opts").json()
                        )
                        == vens
                    ),
                    3 * poll_s + 10,
                    "every VEN to confirm the cancellation",
                    interval=0.05,
                )
        finally:
            fleet.close()
            vtn.stop()
    return {
        "vens": vens,
        "poll_s": poll_s,
        "trials": trials,
        "samples": len(latencies),
        "min_s": round(min(latencies), 3),
        "median_s": round(statistics.median(latencies), 3),
        "p95_s": round(percentile(latencies, 0.95), 3),
        "max_s": round(max(latencies), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer trials (a smoke run)")
    parser.add_argument(
        "--config",
        action="append",
        metavar="VENS:POLL_S",
        help="run only these configurations, e.g. --config 50:1 (repeatable)",
    )
    args = parse_args(parser, quick=True, config=["3:1"])
    random.seed(7)
    fast_trials, slow_trials = (3, 1) if args.quick else (10, 3)
    configs = (
        [tuple(int(x) for x in c.split(":")) for c in args.config]
        if args.config
        else [(n, poll) for poll in (1, 10) for n in (1, 10, 50)]
    )
    results = [run_config(n, poll, fast_trials if poll == 1 else slow_trials) for n, poll in configs]
    headline = next((r for r in results if r["vens"] == 50 and r["poll_s"] == 1), results[-1])
    print_result("vtn_event_latency", results, "p95_s_at_1s_poll_50_vens", headline["p95_s"], 1.0)


if __name__ == "__main__":
    main()
