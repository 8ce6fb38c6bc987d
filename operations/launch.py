"""How the FlexMeasures side of Cariflex starts, for the demo and for the container image alike.

``make demo`` and the ``flexmeasures-server`` container run the same idempotent preparation
(``INIT_COMMANDS``: migrations, site setup, the admin and VEN logins, Grafana's read-only role)
and the same gunicorn command, so what the tests exercise locally is what production runs.

    python -m operations.launch server [--bind 0.0.0.0:5000]   # init, then gunicorn
    python -m operations.launch worker                         # RQ worker
    python -m operations.launch worker-health                  # exit 0 = heartbeat fresh

Configuration comes from the ``CARIFLEX_*`` variables (``.env.example``); nothing here reads a
file of its own. Importing this module does not import FlexMeasures.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

log = logging.getLogger("cariflex.launch")

# Every step is idempotent: a restart (or a second replica) re-runs them harmlessly.
INIT_COMMANDS: tuple[str, ...] = (
    "db upgrade",
    "cariflex setup{fleet}",
    "cariflex ensure-admin{fleet}",
    "cariflex ensure-ven-user{fleet}",
    "cariflex grafana-role",
)

# The RQ queues Cariflex puts work on (re-plans and `cariflex schedule --as-job` use "scheduling").
WORKER_QUEUES = "scheduling|forecasting"


def init_commands(fleet_file: str | None = None) -> list[str]:
    """``INIT_COMMANDS`` with the fleet file passed to the commands that read it."""
    flag = f" --fleet {fleet_file}" if fleet_file else ""
    return [command.format(fleet=flag) for command in INIT_COMMANDS]


def executable(name: str) -> str:
    """A console script of this Python environment (the venv need not be on PATH)."""
    beside = os.path.join(os.path.dirname(sys.executable), name)
    return beside if os.access(beside, os.X_OK) else name


def gunicorn_command(bind: str) -> list[str]:
    """Two workers (FlexMeasures' advice, so a long request cannot starve the health check),
    threads for the VEN's concurrent posts, and a short graceful timeout for SIGTERM."""
    return [
        executable("gunicorn"),
        "--bind",
        bind,
        "--workers",
        "2",
        "--threads",
        "4",
        "--graceful-timeout",
        "10",
        "--no-control-socket",
        "flexmeasures_cariflex.app:create_app()",
    ]


WEATHER_EVERY_S = 3600


def hourly_refresh(env: dict[str, str], fleet_file: str | None, stop: threading.Event) -> None:
    """The hourly refresh (the demo, and the worker container), at start and then every hour:

    1. the weather (Open-Meteo, else the synthetic model, said so in the output) with the PV power
       it implies, back-filling missed hours, today's and tomorrow's production price, and the
       base-load forecast;
    2. the insights: carbon intensity, yesterday's and today's site statistics, the
       fleet's flexibility, DR verification of the last two days, and the alert checks.

    Each part runs as its own batch, so a failure of one (logged, never fatal) leaves the other."""
    from cariflex.fleet import FleetError, load_fleet

    try:
        tz = ZoneInfo(load_fleet(fleet_file).site.timezone)
    except FleetError as exc:
        log.error("hourly refresh disabled: the fleet file is invalid", extra={"fields": {"error": str(exc)}})
        return
    fleet = f" --fleet {fleet_file}" if fleet_file else ""
    first = True
    while not stop.is_set():
        today = datetime.now(UTC).astimezone(tz)
        weather = [f"cariflex weather fetch --source auto{fleet}"]
        # yesterday too, every hour: its last hour (and late readings) arrive after midnight
        insights = [
            f"cariflex carbon-intensity{fleet}",
            f"cariflex statistics --day {today - timedelta(days=1):%Y-%m-%d}{fleet}",
        ]
        if first:
            weather.append(f"cariflex production-price --day {today:%Y-%m-%d} --no-replan{fleet}")
        weather.append(f"cariflex production-price --no-replan{fleet}")
        weather.append(f"cariflex forecast-load{fleet}")
        insights += [
            f"cariflex statistics{fleet}",
            f"cariflex flexibility --store{fleet}",
            f"cariflex dr-verification --since P2D --store{fleet}",
            f"cariflex alerts check{fleet}",
        ]
        for part, commands in (("weather", weather), ("insights", insights)):
            cmd = [sys.executable, "-m", "flexmeasures_cariflex.cli.batch", *commands]
            try:
                result = subprocess.run(cmd, env=env, cwd=env["CARIFLEX_VAR_DIR"])
            except OSError as exc:  # the loop must outlive one bad hour
                log.warning("refresh could not start", extra={"fields": {"part": part, "error": str(exc)}})
                continue
            if result.returncode != 0:
                log.warning("refresh failed", extra={"fields": {"part": part, "exit": result.returncode}})
        first = False
        stop.wait(WEATHER_EVERY_S)


MPC_EVERY_S = 900
MPC_OFFSET_S = 20  # after the quarter-hour, so that the devices' first readings of it are in


def mpc_loop(env: dict[str, str], fleet_file: str | None, stop: threading.Event) -> None:
    """Model-predictive control: re-plan the fleet every 15 minutes (``cariflex replan``), from
    the measured states of charge, so that drift between plan and reality never outlives a
    quarter-hour. Price and limit changes still re-plan at once (the debounced re-planner)."""
    fleet = f" --fleet {fleet_file}" if fleet_file else ""
    while not stop.is_set():
        wait = MPC_EVERY_S - (time.time() % MPC_EVERY_S) + MPC_OFFSET_S
        if stop.wait(wait):
            return
        cmd = [sys.executable, "-m", "flexmeasures_cariflex.cli.batch", f"cariflex replan{fleet}"]
        try:
            result = subprocess.run(cmd, env=env, cwd=env["CARIFLEX_VAR_DIR"])
        except OSError as exc:  # the loop must outlive one bad quarter-hour
            log.warning("re-plan could not start", extra={"fields": {"error": str(exc)}})
            continue
        if result.returncode != 0:
            log.warning("re-plan failed", extra={"fields": {"exit": result.returncode}})


def worker_name() -> str:
    """Unique per container, so replicas scaled with `docker compose up --scale` do not collide."""
    return f"cariflex-worker-{socket.gethostname()}"


def worker_is_alive(redis_url: str, name: str, now: datetime | None = None) -> tuple[bool, str]:
    """Whether RQ knows a worker called ``name`` whose heartbeat is younger than its TTL.

    FlexMeasures appends a suffix when the name is taken (a restarted container whose previous
    registration has not expired yet), so every worker whose name starts with ``name`` counts."""
    from redis import Redis
    from rq import Worker

    workers = [w for w in Worker.all(connection=Redis.from_url(redis_url)) if w.name.startswith(name)]
    if not workers:
        return False, f"no worker {name} registered in Redis"
    now = now or datetime.now(UTC)
    ages = {
        w.name: now - (w.last_heartbeat if w.last_heartbeat.tzinfo else w.last_heartbeat.replace(tzinfo=UTC))
        for w in workers
        if w.last_heartbeat is not None
    }
    fresh = {n: age for n, age in ages.items() if age <= timedelta(seconds=workers[0].worker_ttl)}
    if not fresh:
        return False, f"worker {name}: no heartbeat within its TTL ({workers[0].worker_ttl} s)"
    best = min(fresh, key=fresh.get)
    return True, f"worker {best}: heartbeat {fresh[best].total_seconds():.0f} s ago"


def _server(bind: str) -> int:
    from flexmeasures_cariflex.cli import batch

    code = batch.main(init_commands(os.environ.get("CARIFLEX_FLEET_FILE") or None))
    if code != 0:
        print(f"launch: preparation failed (exit {code}); not starting the server", file=sys.stderr)
        return code
    command = gunicorn_command(bind)
    os.execvp(command[0], command)  # gunicorn becomes PID 1's process: SIGTERM reaches it directly


def _worker(refresh: bool) -> int:
    """The RQ worker as a child, and the hourly weather / production-price refresh beside it.

    SIGTERM goes to the worker (RQ finishes its current job, then exits) and ends the refresh."""
    from cariflex import settings

    stop = threading.Event()
    command = [
        executable("flexmeasures"),
        "jobs",
        "run-worker",
        "--name",
        worker_name(),
        "--queue",
        WORKER_QUEUES,
    ]
    child = subprocess.Popen(command)

    def forward(signum, _frame) -> None:
        stop.set()
        if child.poll() is None:
            child.send_signal(signum)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, forward)
    env = {**os.environ, "CARIFLEX_VAR_DIR": str(settings.var_dir())}
    fleet_file = os.environ.get("CARIFLEX_FLEET_FILE") or None
    if refresh:
        threading.Thread(
            target=hourly_refresh, args=(env, fleet_file, stop), name="refresh", daemon=True
        ).start()
        threading.Thread(target=mpc_loop, args=(env, fleet_file, stop), name="mpc", daemon=True).start()
    code = child.wait()
    stop.set()
    log.info("worker stopped", extra={"fields": {"exit": code}})
    return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m operations.launch",
        description="Start the FlexMeasures server or worker the way the Cariflex image does. "
        "Configuration from CARIFLEX_* variables (see .env.example).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    server = commands.add_parser("server", help="prepare the database (idempotent), then run gunicorn")
    server.add_argument("--bind", default=None, help="host:port (default: $CARIFLEX_FM_BIND)")
    worker = commands.add_parser(
        "worker", help="run an RQ worker on Cariflex's queues, and the hourly weather and price refresh"
    )
    worker.add_argument(
        "--no-refresh", action="store_true", help="only the RQ worker (another one runs the refresh)"
    )
    commands.add_parser("worker-health", help="exit 0 when this container's worker has a fresh heartbeat")
    args = parser.parse_args(argv)

    from cariflex import logs, settings

    logs.configure()

    if args.command == "server":
        return _server(args.bind or settings.get("CARIFLEX_FM_BIND"))
    if args.command == "worker":
        return _worker(refresh=not args.no_refresh)
    redis_url = settings.get("CARIFLEX_REDIS_URL")
    if not redis_url:
        print("CARIFLEX_REDIS_URL is not set: there is no worker to check", file=sys.stderr)
        return 1
    alive, why = worker_is_alive(redis_url, worker_name())
    print(why, file=sys.stdout if alive else sys.stderr)
    return 0 if alive else 1


if __name__ == "__main__":
    sys.exit(main())
