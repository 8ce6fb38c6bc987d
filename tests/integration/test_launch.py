"""The container entry points, as real processes: the FlexMeasures worker with its health check
(real Redis, a real RQ worker), and the simulator's check of its CEM."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from operations.launch import init_commands
from tests.helpers.openadr_harness import wait_until

BIN = Path(sys.executable).parent
REDIS_URL = "redis://127.0.0.1:6379/5"  # a database of its own: nothing else's queues


def test_init_commands_pass_the_fleet_only_to_the_commands_that_read_it():
    assert init_commands() == [
        "db upgrade",
        "cariflex setup",
        "cariflex ensure-admin",
        "cariflex ensure-ven-user",
        "cariflex grafana-role",
    ]
    assert init_commands("f.yaml") == [
        "db upgrade",
        "cariflex setup --fleet f.yaml",
        "cariflex ensure-admin --fleet f.yaml",
        "cariflex ensure-ven-user --fleet f.yaml",
        "cariflex grafana-role",
    ]


def test_the_worker_is_healthy_while_it_runs_and_stops_cleanly_on_sigterm(app, test_db_url, tmp_path):
    from redis import Redis

    try:
        Redis.from_url(REDIS_URL).ping()
    except Exception as exc:  # pragma: no cover - the machine runs Redis
        pytest.fail(f"Redis on 127.0.0.1:6379 is needed for this test: {exc}")
    env = {
        **os.environ,
        "CARIFLEX_DATABASE_URL": test_db_url,
        "CARIFLEX_REDIS_URL": REDIS_URL,
        "CARIFLEX_VAR_DIR": str(tmp_path),
    }

    def health() -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "operations.launch", "worker-health"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    before = health()
    assert before.returncode == 1 and "no worker cariflex-worker-" in before.stderr
    worker = subprocess.Popen(
        [sys.executable, "-m", "operations.launch", "worker", "--no-refresh"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: health().returncode == 0, 180, "the worker's heartbeat", interval=0.5)
        assert "heartbeat" in health().stdout
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=60) == 0
        after = health()
        assert after.returncode == 1, after.stdout  # a stopped worker leaves no registration behind
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()


def test_worker_health_without_redis_configured_says_so(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "CARIFLEX_REDIS_URL"}
    env["CARIFLEX_ENV_FILE"] = str(tmp_path / "none.env")
    result = subprocess.run(
        [sys.executable, "-m", "operations.launch", "worker-health"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "CARIFLEX_REDIS_URL is not set" in result.stderr


def test_the_simulator_check_follows_its_cem():
    listener = socket.create_server(("127.0.0.1", 0))
    url = f"ws://127.0.0.1:{listener.getsockname()[1]}/s2"
    up = subprocess.run([str(BIN / "cariflex-sim"), "check", "--s2-url", url], capture_output=True, text=True)
    assert up.returncode == 0 and f"CEM at {url} reachable" in up.stdout
    listener.close()
    down = subprocess.run(
        [str(BIN / "cariflex-sim"), "check", "--s2-url", url], capture_output=True, text=True
    )
    assert down.returncode == 1 and f"CEM at {url} unreachable" in down.stderr
