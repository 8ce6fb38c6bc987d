"""Meter ingestion under load: N meter sensors at 1 Hz over MQTT into FlexMeasures' database.

Real parts on this machine: a fresh database set up like the site (FlexMeasures' schema, the
plugin's rollup and alert triggers), a private Mosquitto (operations/mqtt_broker.py), the ingestion
service as its own process(es) (`cariflex-ingest run`), and a publisher process that sends each
sensor one QoS 1 reading a second, stamped with the time it is published. Two phases: the steady
rate (`--sensors` readings a second for `--seconds`), then a step (`--step-rate` a second for
`--step-seconds`). For each: readings committed per second, publish -> committed latency (p50,
p99: the service's commit time minus the reading's stamp), the CPU each process used (1.0 = one
core: publisher, Mosquitto, the ingestion workers, their PostgreSQL backends), and the database's
growth per day at the steady rate (timed_belief and the rollups). Then the Grafana query over one
day of 1 Hz readings of the site's 11 meters (generated in the database): the 15-minute rollups the
dashboard's panels read.

Goals (issue 22): p99 < 100 ms at 1,000 readings/s, >= 5,000 readings/s sustained, a panel's query
<= 50 ms. Prints one JSON line.

    .venv/bin/python bench/meter_ingest.py [--sensors 1000] [--seconds 600] [--step-rate 6000]
        [--step-seconds 60] [--workers 1]

The step offers 6,000 readings a second by default: what the service commits then is what it
sustains, compared with the 5,000 of the goal.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import Goal, flexmeasures_app, parse_args, print_goals  # noqa: E402

BIN = Path(sys.executable).parent
TICK = 0.01  # the publisher sends in 10 ms slices
SUSTAINED_GOAL = 5000  # readings a second (issue 22)


def publish(url: str, sensors: int, rate: float, seconds: float) -> None:
    """The publisher process: ``rate`` readings a second, round-robin over ``m_0001``..., each
    stamped with the time it is sent; prints how many it sent and at what rate."""
    from urllib.parse import urlparse

    import paho.mqtt.client as mqtt

    from cariflex.contracts.meter_reading import encode, topic

    parsed = urlparse(url)
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-pub-{os.getpid()}")
    if parsed.username:
        client.username_pw_set(parsed.username, parsed.password)
    client.max_inflight_messages_set(10_000)
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", parsed.port)
    client.loop_start()
    topics = [topic("bench", f"m_{i:04d}") for i in range(1, sensors + 1)]
    sent, began = 0, time.monotonic()
    last = None
    while (now := time.monotonic()) - began < seconds:
        # as many as the elapsed time asks for (a slice that ran late is made up in the next)
        for _ in range(int(rate * (now - began)) - sent):
            last = client.publish(topics[sent % sensors], encode(1.0, datetime.now(UTC)), qos=1)
            sent += 1
        time.sleep(max(0.0, TICK - (time.monotonic() - now)))
    if last is not None:
        last.wait_for_publish(60)
    elapsed = time.monotonic() - began
    client.loop_stop()
    client.disconnect()
    print(
        json.dumps({"sent": sent, "seconds": round(elapsed, 2), "rate": round(sent / elapsed, 1)}), flush=True
    )


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def health(port: int) -> dict:
    import requests

    return requests.get(f"http://127.0.0.1:{port}/health", timeout=5).json()


def setup(n_sensors: int) -> None:
    """The site (schema, rollups, alerts) and ``n_sensors`` meter sensors on a bench asset."""
    from datetime import timedelta as td

    from flexmeasures.data import db
    from flexmeasures.data.models.generic_assets import GenericAsset, GenericAssetType
    from flexmeasures.data.models.time_series import Sensor

    from cariflex.fleet import load_fleet
    from flexmeasures_cariflex.data.queries.site import require_site
    from flexmeasures_cariflex.data.services.site_setup import setup_site

    fleet = load_fleet()
    setup_site(fleet)
    db.session.flush()
    kind = GenericAssetType(name="meter bench")
    bench = GenericAsset(name="meter bench", generic_asset_type=kind, parent_asset=require_site(fleet))
    db.session.add_all([kind, bench])
    db.session.flush()
    db.session.add_all(
        Sensor(
            name=f"m_{i:04d}",
            generic_asset=bench,
            unit="kW",
            event_resolution=td(seconds=1),
            attributes={"mqtt_meter": True},
        )
        for i in range(1, n_sensors + 1)
    )
    db.session.commit()


def database_bytes() -> int:
    from flexmeasures.data import db
    from sqlalchemy import text

    db.session.rollback()
    return db.session.execute(
        text(
            "SELECT pg_total_relation_size('timed_belief') + pg_total_relation_size('cariflex_rollup_15min')"
        )
    ).scalar_one()


def backend_pids() -> list[int]:
    from flexmeasures.data import db
    from sqlalchemy import text

    db.session.rollback()
    return list(
        db.session.execute(
            text("SELECT pid FROM pg_stat_activity WHERE application_name = 'cariflex-ingest'")
        ).scalars()
    )


def phase(rate: float, seconds: float, n_sensors: int, broker, workers: list, ports: list[int]) -> dict:
    """Publish at ``rate`` for ``seconds``; what was committed, how fast, and at what cost."""
    backends = backend_pids()  # the workers connect with their first batch: there since setup's probe
    watched = {
        "mosquitto": [broker.process.pid],
        "ingest_workers": [w.pid for w in workers],
        "postgres_backends": backends,
    }
    before = {name: sum(cpu_seconds(p) for p in pids) for name, pids in watched.items()}
    accepted0 = sum(health(p)["accepted"] for p in ports)
    began = time.monotonic()
    publisher = subprocess.Popen(
        [
            sys.executable,
            __file__,
            "--publish",
            broker.url,
            "--sensors",
            str(n_sensors),
            "--rate",
            str(rate),
            "--seconds",
            str(seconds),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    publisher_cpu = 0.0
    while publisher.poll() is None:
        publisher_cpu = cpu_seconds(publisher.pid) or publisher_cpu
        time.sleep(0.5)
    sent = json.loads(publisher.stdout.read().strip().splitlines()[-1])
    # what was published is committed within a few seconds at most (else: the backlog is the answer)
    deadline = time.monotonic() + 30
    while (
        sum(health(p)["accepted"] for p in ports) - accepted0 < sent["sent"] and time.monotonic() < deadline
    ):
        time.sleep(0.2)
    wall = time.monotonic() - began
    committed = sum(health(p)["accepted"] for p in ports) - accepted0
    lags = [health(p)["lag_ms"] for p in ports]
    cpu = {
        name: round((sum(cpu_seconds(p) for p in pids) - before[name]) / wall, 3)
        for name, pids in watched.items()
    }
    cpu["publisher"] = round(publisher_cpu / wall, 3)
    return {
        "rate_asked": rate,
        "published": sent["sent"],
        "published_per_s": sent["rate"],
        "committed": committed,
        "committed_per_s": round(committed / sent["seconds"], 1),
        "lost": sent["sent"] - committed,
        "lag_ms_p50": max((x["p50"] or 0) for x in lags),
        "lag_ms_p99": max((x["p99"] or 0) for x in lags),
        "cpu_cores": cpu,
    }


def panel_query_ms(repeat: int = 5) -> float:
    """A day of 1 Hz readings of the site's 11 meters (generated in the database, through the
    rollup triggers), then the dashboard-style query of the day from the 15-minute rollups."""
    from flexmeasures.data import db
    from sqlalchemy import text

    day = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=2)
    db.session.rollback()
    db.session.execute(
        text("INSERT INTO data_source (name, type, attributes) VALUES ('bench day', 'gateway', '{}')")
    )
    db.session.execute(
        text(
            "INSERT INTO timed_belief (event_start, belief_horizon, cumulative_probability, event_value, "
            "sensor_id, source_id) "
            "SELECT :day + make_interval(secs => g), interval '0', 0.5, 1 + (g % 7), s.id, "
            "(SELECT id FROM data_source WHERE name = 'bench day') "
            "FROM sensor s, generate_series(0, 86399) g "
            "WHERE s.name LIKE 'pv\\_%\\_meter' OR s.name = 'site_load_meter'"
        ),
        {"day": day},
    )
    db.session.commit()
    query = text(
        "SELECT r.bucket AS time, s.name AS metric, r.value FROM cariflex_rollup_15min r "
        "JOIN sensor s ON s.id = r.sensor_id "
        "WHERE (s.name LIKE 'pv\\_%\\_meter' OR s.name = 'site_load_meter') "
        "AND r.bucket >= :start AND r.bucket < :end ORDER BY 1"
    )
    times = []
    for _ in range(repeat):
        began = time.perf_counter()
        rows = db.session.execute(query, {"start": day, "end": day + timedelta(days=1)}).all()
        times.append((time.perf_counter() - began) * 1000)
        assert len(rows) == 11 * 96, len(rows)
    return round(sorted(times)[len(times) // 2], 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sensors", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=600)
    # the step offers more than the 5,000 a second the service must sustain: a rate it keeps up
    # with is measured as sustained, not one the publisher happened to reach
    parser.add_argument("--step-rate", type=float, default=6000)
    parser.add_argument("--step-seconds", type=float, default=60)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--publish", help=argparse.SUPPRESS)  # the publisher process
    parser.add_argument("--rate", type=float, help=argparse.SUPPRESS)
    args = parse_args(parser, sensors=20, seconds=3, step_rate=100, step_seconds=2)
    if args.publish:
        publish(args.publish, args.sensors, args.rate, args.seconds)
        return

    from operations.mqtt_broker import free_port, private_broker

    with tempfile.TemporaryDirectory() as folder, flexmeasures_app() as app:
        setup(args.sensors)
        database_url = app.config["SQLALCHEMY_DATABASE_URI"]
        broker = private_broker(Path(folder) / "mosquitto").start()
        workers, ports = [], []
        try:
            for index in range(args.workers):
                port = free_port()
                env = {
                    **os.environ,
                    "CARIFLEX_MQTT_URL": broker.url,
                    "CARIFLEX_DATABASE_URL": database_url,
                    "CARIFLEX_LOG_LEVEL": "WARNING",
                }
                command = [
                    str(BIN / "cariflex-ingest"),
                    "run",
                    "--health",
                    f"127.0.0.1:{port}",
                    "--client-id",
                    f"bench-ingest-{index}",
                ]
                if args.workers > 1:
                    command += ["--share", "bench"]
                workers.append(subprocess.Popen(command, env=env))
                ports.append(port)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                try:
                    if all(health(p)["broker_connected"] for p in ports):
                        break
                except Exception:  # noqa: BLE001 - not listening yet
                    pass
                time.sleep(0.2)
            # one short burst first, so that every worker has its database connection (measured)
            phase(len(ports) * 20, 1, args.sensors, broker, workers, ports)
            size0 = database_bytes()
            steady = phase(args.sensors, args.seconds, args.sensors, broker, workers, ports)
            grown = database_bytes() - size0
            per_reading = grown / max(steady["committed"], 1)
            steady["db_bytes_per_reading"] = round(per_reading, 1)
            steady["db_growth_gb_per_day"] = round(per_reading * args.sensors * 86400 / 1e9, 2)
            step = phase(args.step_rate, args.step_seconds, args.sensors, broker, workers, ports)
            panel_ms = panel_query_ms()
        finally:
            for worker in workers:
                worker.terminate()
                worker.wait(timeout=60)
            broker.stop()
    results = {
        "sensors": args.sensors,
        "workers": args.workers,
        "steady": steady,
        "step": step,
        "panel_query_ms": panel_ms,
    }
    print_goals(
        "meter_ingest",
        results,
        [
            Goal("p99_publish_to_committed_ms_at_steady_rate", 100, steady["lag_ms_p99"]),
            Goal("sustained_readings_per_s_at_step", SUSTAINED_GOAL, step["committed_per_s"], at_least=True),
            Goal("panel_query_ms_day_of_1hz", 50, panel_ms),
        ],
    )


if __name__ == "__main__":
    main()
