"""``make demo``: the Cariflex chain on one machine, from nothing, in one command.

Today it prepares the database (embedded PostgreSQL under var/ unless CARIFLEX_DATABASE_URL is
set) and the job queue (a private ``redis-server`` under var/redis unless CARIFLEX_REDIS_URL is
set; without one, re-plans run in-process and it says so), the meters' MQTT broker (a private
``mosquitto`` under var/mosquitto unless CARIFLEX_MQTT_URL is set) and the meter ingestion service,
runs ``flexmeasures db upgrade``,
``flexmeasures cariflex setup`` and creates the admin, then serves FlexMeasures with the plugin on
CARIFLEX_FM_BIND, beside the RQ worker the compose stack runs (``python -m operations.launch
worker``), until Ctrl-C or SIGTERM. Later
components (VTN, VEN bridge, simulator, Grafana) join the same process list. The simulated
devices are paired with the VEN's S2 CEM first (``cariflex-ven pair --all --token-file``, kept
across restarts), as an operator pairs real ones.

This module orchestrates processes only; it does not import FlexMeasures.
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from cariflex import logs, settings
from operations import database
from operations.launch import gunicorn_command, hourly_refresh, init_commands, mpc_loop

log = logging.getLogger("cariflex.demo")
BIN = Path(sys.executable).parent
DATABASE_NAME = "cariflex"


def prepare_database() -> str:
    """The FlexMeasures database URL, with the database created if it was missing."""
    configured = settings.get("CARIFLEX_DATABASE_URL")
    if configured:
        url = database.to_psycopg2(configured)
        where = "configured server"
    else:
        server = database.embedded_server_url(settings.var_dir() / "pgdata")
        url = database.with_database(server, DATABASE_NAME)
        where = f"embedded PostgreSQL in {settings.var_dir() / 'pgdata'}"
    created = database.create_database(url)
    missing = database.install_extensions(url)
    log.info(
        "database ready",
        extra={"fields": {"where": where, "created": created, "extensions_missing": missing}},
    )
    return url


def start_job_queue(env: dict[str, str], running: list[tuple[str, subprocess.Popen]]) -> str | None:
    """The Redis of FlexMeasures' job queues: CARIFLEX_REDIS_URL, else a private ``redis-server``
    under var/redis (loopback, an ephemeral port, a password, nothing persisted), else None: then
    the demo says what is missing, re-plans run in the server's process, and FlexMeasures is given
    no Redis at all (never whatever listens on localhost:6379)."""
    configured = settings.get("CARIFLEX_REDIS_URL")
    if configured:
        env["CARIFLEX_REDIS_URL"] = configured
        log.info("job queue ready", extra={"fields": {"where": "configured Redis"}})
        return configured
    server = shutil.which("redis-server", path=env.get("PATH"))
    if server is None:
        print(
            "\n  demo: redis-server is not installed (not on PATH) and CARIFLEX_REDIS_URL is not set:\n"
            "  no job queue and no worker. Re-plans run inside the FlexMeasures server instead;\n"
            "  FlexMeasures' own scheduling (POST /api/v3_0/assets/<id>/schedules/trigger) cannot run.\n"
            "  Install Redis (e.g. `apt-get install redis-server`) or set CARIFLEX_REDIS_URL.\n",
            flush=True,
        )
        log.warning("no job queue: redis-server not found, re-plans run in-process")
        return None
    where = settings.var_dir() / "redis"
    where.mkdir(parents=True, exist_ok=True, mode=0o700)
    from operations.mqtt_broker import free_port

    port = free_port()
    password = secrets.token_urlsafe(24)
    conf = where / "redis.conf"
    conf.touch(mode=0o600)
    conf.chmod(0o600)
    conf.write_text(
        "# Written by `make demo` at each start: its private job queue, nothing persisted.\n"
        f"bind 127.0.0.1\nport {port}\nrequirepass {password}\n"
        f'dir {where.resolve()}\nsave ""\nappendonly no\nlogfile ""\nloglevel warning\n'
    )
    proc = start_process("redis", [server, str(conf.resolve())], env, running)
    url = f"redis://:{password}@127.0.0.1:{port}/0"
    wait_for_redis(url, proc, timeout_s=30)
    env["CARIFLEX_REDIS_URL"] = url
    log.info("job queue ready", extra={"fields": {"where": f"redis-server in {where}", "port": port}})
    return url


def start_meter_ingestion(env: dict[str, str], running: list[tuple[str, subprocess.Popen]]) -> str | None:
    """The site meters' path into FlexMeasures over MQTT: CARIFLEX_MQTT_URL when configured,
    else a private Mosquitto under var/mosquitto (loopback, an ephemeral port, a generated
    password, persisted messages); then the ingestion service (``cariflex-ingest run``). Returns
    the broker's URL for the simulator's meters to publish to, or None (no ``mosquitto``: said so,
    and the meters report over S2 only)."""
    from operations.mqtt_broker import free_port, mosquitto_binary, private_broker

    configured = settings.get("CARIFLEX_MQTT_URL")
    if configured is None:
        if mosquitto_binary(env.get("PATH")) is None:
            print(
                "\n  demo: mosquitto is not installed and CARIFLEX_MQTT_URL is not set: no meter\n"
                "  ingestion over MQTT (the meters still report over S2). Install it with\n"
                "  `apt-get install mosquitto` or set CARIFLEX_MQTT_URL.\n",
                flush=True,
            )
            log.warning("no MQTT broker: mosquitto not found, meter ingestion off")
            return None
        broker = private_broker(settings.var_dir() / "mosquitto").start()
        running.append(("mosquitto", broker.process))
        configured = broker.url
        log.info("MQTT broker ready", extra={"fields": {"where": str(broker.folder), "port": broker.port}})
    env["CARIFLEX_MQTT_URL"] = configured
    env.setdefault("CARIFLEX_INGEST_HEALTH_BIND", f"127.0.0.1:{free_port()}")
    start_process("meter-ingest", [str(BIN / "cariflex-ingest"), "run"], env, running)
    return configured


def wait_for_redis(url: str, proc: subprocess.Popen, timeout_s: float) -> None:
    from redis import Redis
    from redis.exceptions import RedisError

    client = Redis.from_url(url, socket_timeout=2)
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SystemExit(f"demo: redis-server exited with {proc.returncode} before it was ready")
            try:
                client.ping()
                return
            except RedisError:
                time.sleep(0.2)
    finally:
        client.close()
    raise SystemExit(f"demo: redis-server did not answer within {timeout_s:.0f} s")


def worker_command() -> list[str]:
    """The compose stack's worker (RQ on FlexMeasures' queues); the demo runs the refresh itself."""
    return [sys.executable, "-m", "operations.launch", "worker", "--no-refresh"]


def run_flexmeasures(commands: list[str], env: dict[str, str]) -> None:
    """Run ``flexmeasures`` commands in one process (see flexmeasures_cariflex.cli.batch)."""
    cmd = [sys.executable, "-m", "flexmeasures_cariflex.cli.batch", *commands]
    # FlexMeasures writes flexmeasures.log into its working directory: keep it in var/.
    result = subprocess.run(cmd, env=env, cwd=env["CARIFLEX_VAR_DIR"])
    if result.returncode != 0:
        raise SystemExit(f"demo: `flexmeasures {commands}` failed (exit {result.returncode})")


def wait_until_ready(url: str, proc: subprocess.Popen, timeout_s: float) -> None:
    """Poll a health URL until it answers 200; fail early if the process died."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"demo: server exited with {proc.returncode} before it was ready")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    raise SystemExit(f"demo: {url} did not answer within {timeout_s:.0f} s")


def stop_process(proc: subprocess.Popen, name: str, timeout_s: float = 30) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            log.warning("killing after timeout", extra={"fields": {"process": name}})
            proc.kill()
            proc.wait()
    log.info("stopped", extra={"fields": {"process": name, "exit": proc.returncode}})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="cariflex-demo",
        description="Run the Cariflex EMS demo: database, site setup, admin user, FlexMeasures "
        "server. Configuration from CARIFLEX_* variables or .env (see .env.example).",
    )
    parser.add_argument(
        "--fleet", help="fleet description (default: $CARIFLEX_FLEET_FILE or the packaged one)"
    )
    parser.add_argument("--bind", help="FlexMeasures address host:port (default: $CARIFLEX_FM_BIND)")
    args = parser.parse_args(argv)
    logs.configure()

    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())

    bind = args.bind or settings.get("CARIFLEX_FM_BIND")
    env = {
        **os.environ,
        "CARIFLEX_VAR_DIR": str(settings.var_dir()),
        "CARIFLEX_ENV_FILE": str(Path(os.environ.get("CARIFLEX_ENV_FILE", ".env")).resolve()),
    }
    running: list[tuple[str, subprocess.Popen]] = []
    try:
        # The VTN needs nothing from FlexMeasures: start it first, it is ready long before.
        provision_ven(settings.get("CARIFLEX_VEN_NAME"), args.fleet)
        # The console's operator: the VTN sets this password at start (generated under var/).
        env["CARIFLEX_VTN_OPERATOR_PASSWORD"] = settings.secret(
            "CARIFLEX_VTN_OPERATOR_PASSWORD", "vtn_operator_password"
        )
        vtn = start_process("openadr-vtn", [str(BIN / "cariflex-vtn"), "serve", "--insecure"], env, running)
        env["CARIFLEX_DATABASE_URL"] = prepare_database()
        redis_url = start_job_queue(env, running)
        run_flexmeasures(init_commands(args.fleet), env)
        if stop.is_set():
            return 0
        server = start_process("flexmeasures-server", gunicorn_command(bind), env, running)
        if redis_url:
            start_process("flexmeasures-worker", worker_command(), env, running)
        mqtt_url = start_meter_ingestion(env, running)
        # Weather, PV power and the production price now and every hour after (in the background).
        threading.Thread(
            target=hourly_refresh, args=(env, args.fleet, stop), name="refresh", daemon=True
        ).start()
        # and the fleet re-planned every 15 minutes from the measured states of charge (MPC)
        threading.Thread(target=mpc_loop, args=(env, args.fleet, stop), name="mpc", daemon=True).start()

        base = f"http://{bind}"
        vtn_admin = f"http://127.0.0.1:{settings.get('CARIFLEX_VTN_ADMIN_PORT')}"
        wait_until_ready(f"{base}/api/v3_0/health/ready", server, timeout_s=120)
        wait_until_ready(f"{vtn_admin}/health", vtn, timeout_s=60)
        # The VEN bridge: VTN events into FlexMeasures (it would wait for both anyway).
        env.setdefault("CARIFLEX_FM_URL", base)
        env.setdefault(
            "CARIFLEX_VTN_URL", f"http://127.0.0.1:{settings.get('CARIFLEX_VTN_PORT')}/OpenADR2/Simple/2.0b"
        )
        fleet_args = ["--fleet", args.fleet] if args.fleet else []
        # Simulated batteries and EV chargers, controlled by the VEN's S2 CEM once paired with it, and
        # the site's meters (PV sites, base load: NOT_CONTROLABLE), whose net import a cap holds.
        tokens = pair_simulated_devices(fleet_args, env)
        start_process("openadr-ven", [str(BIN / "cariflex-ven"), "run", *fleet_args], env, running)
        start_process(
            "device-simulator",
            [
                str(BIN / "cariflex-sim"),
                "run",
                *fleet_args,
                "--token-file",
                str(tokens),
                # the broker's URL (with its password) from the environment, not the command line
                *(["--publish-meters"] if mqtt_url else []),
            ],
            env,
            running,
        )
        ingest_health = env["CARIFLEX_INGEST_HEALTH_BIND"] if mqtt_url else None
        print(banner(base, vtn_admin, queued=bool(redis_url), ingest_health=ingest_health), flush=True)
        log.info("demo ready", extra={"fields": {"url": base, "vtn_admin": vtn_admin}})
        while not stop.is_set() and all(proc.poll() is None for _, proc in running):
            stop.wait(1)
    finally:
        for name, proc in reversed(running):
            stop_process(proc, name)
    return 0 if stop.is_set() else 1


def start_process(
    name: str, command: list[str], env: dict[str, str], running: list[tuple[str, subprocess.Popen]]
) -> subprocess.Popen:
    # Working directory var/: FlexMeasures writes flexmeasures.log into it.
    proc = subprocess.Popen(command, env=env, cwd=env["CARIFLEX_VAR_DIR"])
    running.append((name, proc))
    log.info("started", extra={"fields": {"process": name, "pid": proc.pid}})
    return proc


def pair_simulated_devices(fleet_args: list[str], env: dict[str, str]) -> Path:
    """Pair every simulated device and meter with the VEN's S2 CEM (idempotent: valid tokens are
    kept); the tokens go to the simulator's token file (mode 600), only their hashes to the VEN's
    state."""
    from simulator.cli import default_token_file

    tokens = default_token_file()
    result = subprocess.run(
        [str(BIN / "cariflex-ven"), "pair", "--all", "--token-file", str(tokens), *fleet_args],
        env=env,
        cwd=env["CARIFLEX_VAR_DIR"],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise SystemExit(f"demo: pairing the simulated devices failed: {result.stderr.strip()[-500:]}")
    log.info(
        "simulated devices paired",
        extra={
            "fields": {
                "new": result.stdout.count(": paired"),
                "kept": result.stdout.count(": already paired"),
                "token_file": str(tokens),
            }
        },
    )
    return tokens


def provision_ven(name: str, fleet_path: str | None = None) -> None:
    """The bridge's VEN must be provisioned before it may register (idempotent), with the site's
    connection capacity: the console draws a load-control level as a cap in kW of it."""
    from cariflex.fleet import load_fleet
    from vtn import actions
    from vtn.events import Conflict
    from vtn.store import Store, default_url

    capacity = load_fleet(fleet_path).site.capacity_kw
    store = Store(default_url())
    try:
        actions.add_ven(store, name, capacity_kw=capacity)
        log.info("provisioned VEN", extra={"fields": {"ven_name": name, "capacity_kw": capacity}})
    except Conflict:
        actions.set_ven_capacity(store, name, capacity)
    finally:
        store.dispose()


def banner(base: str, vtn_admin: str, queued: bool = True, ingest_health: str | None = None) -> str:
    email = settings.get("CARIFLEX_ADMIN_EMAIL")
    password_hint = (
        "$CARIFLEX_ADMIN_PASSWORD"
        if settings.get("CARIFLEX_ADMIN_PASSWORD")
        else str(settings.var_dir() / "admin_password")
    )
    vtn_url = f"http://127.0.0.1:{settings.get('CARIFLEX_VTN_PORT')}/OpenADR2/Simple/2.0b"
    operator_hint = (
        "$CARIFLEX_VTN_OPERATOR_PASSWORD"
        if settings.get("CARIFLEX_VTN_OPERATOR_PASSWORD")
        else str(settings.var_dir() / "vtn_operator_password")
    )
    return (
        f"\n  Cariflex EMS is running: {base}\n"
        f"  Log in as {email} (password in {password_hint}).\n"
        f"  OpenADR VTN: {vtn_url}  (admin API {vtn_admin})\n"
        f"  Operator console: {vtn_admin}/console/  (log in as {settings.get('CARIFLEX_VTN_OPERATOR')}, "
        f"password in {operator_hint})\n"
        "  VEN bridge: VTN events -> FlexMeasures (`.venv/bin/cariflex-ven status`)\n"
        + (
            "  Jobs: an RQ worker on FlexMeasures' scheduling and forecasting queues\n"
            if queued
            else "  Jobs: no Redis, no worker (re-plans run in-process; see above)\n"
        )
        + (
            "  Meters: PV and base load at 1 Hz over MQTT -> cariflex-ingest -> *_meter sensors\n"
            f"      (.venv/bin/cariflex-ingest health --url http://{ingest_health}/health)\n"
            if ingest_health
            else "  Meters: no MQTT broker (see above); S2 only\n"
        )
        + "  S2: 20 simulated devices and the site's PV and base-load meters; make one obey:\n"
        "      .venv/bin/cariflex-ven setpoint bat_01 30   (the site's net import: cariflex-ven status)\n"
        "  Try, in another shell:  .venv/bin/cariflex-vtn event list\n"
        "  Ctrl-C stops it.\n"
    )


if __name__ == "__main__":
    sys.exit(main())
