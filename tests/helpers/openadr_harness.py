"""Real processes for OpenADR tests: the VTN as `cariflex-vtn serve`, VENs as openleadr clients.

The VTN runs as its own process on ephemeral loopback ports (it binds port 0 and logs the ports it
got). VENs are real ``openleadr.OpenADRClient`` instances in one asyncio loop on a background
thread; tests wait on conditions with timeouts, never on sleeps.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests
from openleadr import OpenADRClient

BIN = Path(sys.executable).parent
ADMIN_TOKEN = "test-admin-token"


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class Ven:
    """What one openleadr VEN received, as (event_id, modification_number, status, values, raw)."""

    def __init__(self, name: str, opt: str = "optIn"):
        self.name = name
        self.opt = opt
        self.received: list[dict[str, Any]] = []
        self.client: OpenADRClient | None = None
        self.registered = False

    async def handle(self, event: dict[str, Any]) -> str:
        descriptor = event["event_descriptor"]
        signal_ = event["event_signals"][0]
        self.received.append(
            {
                "event_id": descriptor["event_id"],
                "modification_number": descriptor["modification_number"],
                "status": descriptor["event_status"],
                "values": [i["signal_payload"] for i in signal_["intervals"]],
                "raw": event,
                "at": time.monotonic(),
            }
        )
        return self.opt

    def latest(self, event_id: str) -> dict[str, Any] | None:
        matches = [r for r in self.received if r["event_id"] == event_id]
        return matches[-1] if matches else None

    @property
    def ven_id(self) -> str | None:
        return self.client.ven_id if self.client else None


class VenFleet:
    """openleadr VENs in one asyncio loop on a background thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.vens: list[Ven] = []

    def _run(self, coro, timeout: float = 60):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def add(
        self,
        name: str,
        vtn_url: str,
        *,
        opt: str = "optIn",
        reports: list[dict] | None = None,
        **client_kwargs: Any,
    ) -> Ven:
        ven = Ven(name, opt)

        async def start() -> None:
            client = OpenADRClient(ven_name=name, vtn_url=vtn_url, show_fingerprint=False, **client_kwargs)
            client.add_handler("on_event", ven.handle)
            client.add_handler("on_update_event", ven.handle)
            for report in reports or []:
                client.add_report(**report)
            ven.client = client
            await client.run()
            ven.registered = client.registration_id is not None

        self._run(start())
        self.vens.append(ven)
        return ven

    def stop_ven(self, ven: Ven) -> None:
        async def stop() -> None:
            if ven.client is not None:
                await ven.client.stop()

        self._run(stop())

    def close(self) -> None:
        for ven in self.vens:
            with contextlib.suppress(Exception):  # a VEN that never registered has nothing to stop
                self.stop_ven(ven)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)


# Every process a test starts, killed at exit if a test or fixture failed before stopping it:
# an orphaned server would outlive the test run (and hold CI).
_STARTED: list[subprocess.Popen] = []


@atexit.register
def _kill_leftovers() -> None:
    for proc in _STARTED:
        if proc.poll() is None:
            proc.kill()


class LoggedProcess:
    """A Cariflex process with JSON log lines on stderr, collected for the test to wait on."""

    def __init__(self, command: list[str], env: dict[str, str], cwd: Path | None = None):
        self.command, self.env, self.cwd = command, env, cwd
        self.lines: list[dict[str, Any]] = []
        self.proc: subprocess.Popen | None = None

    def start(self) -> LoggedProcess:
        self.lines = []
        self.proc = subprocess.Popen(
            self.command,
            env=self.env,
            cwd=self.cwd,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        _STARTED.append(self.proc)

        def reader(stream) -> None:
            for raw in stream:
                try:
                    line = json.loads(raw)
                except ValueError:
                    line = {"msg": raw.rstrip()}
                line = line if isinstance(line, dict) else {"msg": str(line)}
                line["received_at"] = time.monotonic()  # when this test saw it (for latencies)
                self.lines.append(line)

        threading.Thread(target=reader, args=(self.proc.stderr,), daemon=True).start()
        return self

    def logged(self, message: str) -> list[dict[str, Any]]:
        return [line for line in self.lines if line.get("msg") == message]

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)


def base_env(var_dir: Path, **extra: str) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("CARIFLEX_", "SQLALCHEMY_", "FLEXMEASURES_"))
    }
    env.update(CARIFLEX_VAR_DIR=str(var_dir), CARIFLEX_ENV_FILE=str(var_dir / "no.env"), **extra)
    return env


FM_VEN_PASSWORD = secrets.token_urlsafe(16)  # the VEN login of this test run


class FlexMeasuresServer:
    """FlexMeasures with the plugin under gunicorn, on a database prepared like `make demo` does."""

    def __init__(self, var_dir: Path, database_url: str, port: int):
        self.var_dir, self.port = var_dir, port
        self.url = f"http://127.0.0.1:{port}"
        var_dir.mkdir(parents=True, exist_ok=True)
        self.env = base_env(
            var_dir,
            CARIFLEX_DATABASE_URL=database_url,
            CARIFLEX_FM_PASSWORD=FM_VEN_PASSWORD,
            CARIFLEX_LOG_LEVEL="WARNING",
        )
        self.process: LoggedProcess | None = None

    def prepare(self, *more: str) -> None:
        commands = ["db upgrade", "cariflex setup", "cariflex ensure-ven-user", *more]
        result = subprocess.run(
            [sys.executable, "-m", "flexmeasures_cariflex.cli.batch", *commands],
            env=self.env,
            cwd=self.var_dir,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    def start(self, timeout: float = 120) -> FlexMeasuresServer:
        self.process = LoggedProcess(
            [
                str(BIN / "gunicorn"),
                "--bind",
                f"127.0.0.1:{self.port}",
                "--workers",
                "1",
                "--threads",
                "4",
                "--no-control-socket",
                "flexmeasures_cariflex.app:create_app()",
            ],
            self.env,
            cwd=self.var_dir,
        ).start()

        def ready() -> bool:
            try:
                return requests.get(f"{self.url}/api/v3_0/health/ready", timeout=2).status_code == 200
            except requests.RequestException:
                return False

        wait_until(ready, timeout, "FlexMeasures to answer", interval=0.25)
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()


class VenProcess(LoggedProcess):
    """`cariflex-ven run` against a VTN and a FlexMeasures server."""

    def __init__(
        self,
        var_dir: Path,
        vtn_url: str,
        fm_url: str,
        *,
        ven_name: str = "cariflex-ven",
        extra: list[str] = (),
    ):
        env = base_env(
            var_dir,
            CARIFLEX_FM_URL=fm_url,
            CARIFLEX_FM_PASSWORD=FM_VEN_PASSWORD,
            CARIFLEX_VEN_NAME=ven_name,
            CARIFLEX_VTN_URL=vtn_url,
        )
        super().__init__(
            [str(BIN / "cariflex-ven"), "run", "--telemetry-seconds", "1", "--s2-port", "0", *extra], env
        )

    def status(self) -> dict[str, Any]:
        result = subprocess.run(
            [str(BIN / "cariflex-ven"), "status", "--json"],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        return json.loads(result.stdout)


class VtnProcess(LoggedProcess):
    def __init__(
        self,
        var_dir: Path,
        store_url: str,
        *,
        poll_seconds: float = 1.0,
        port: int = 0,
        extra: list[str] | None = None,
        env: dict[str, str] | None = None,
    ):
        args = [
            "--port",
            str(port),
            "--admin-port",
            "0",
            "--poll-seconds",
            str(poll_seconds),
            *(extra if extra is not None else ["--insecure", "--day-ahead-time", "off"]),
        ]
        super().__init__(
            [str(BIN / "cariflex-vtn"), "serve", *args],
            base_env(
                var_dir,
                CARIFLEX_VTN_DATABASE_URL=store_url,
                CARIFLEX_VTN_ADMIN_TOKEN=ADMIN_TOKEN,
                **(env or {}),
            ),
        )

    def start(self, timeout: float = 60) -> VtnProcess:
        super().start()
        try:
            info = wait_until(lambda: self.logged("vtn ready"), timeout, "the VTN to start")[0]
        except AssertionError:
            self.proc.kill()
            raise AssertionError(f"VTN did not start: {self.lines[-20:]}") from None
        self.port, self.admin_port, self.url = info["port"], info["admin_port"], info["url"]
        self.admin_url = f"http://127.0.0.1:{self.admin_port}"
        return self

    def admin(self, method: str, path: str, body: dict | None = None, token: str | None = ADMIN_TOKEN):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return requests.request(method, f"{self.admin_url}{path}", json=body, headers=headers, timeout=30)

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run(
            [str(BIN / "cariflex-vtn"), *args], env=self.env, capture_output=True, text=True, timeout=120
        )
        if check and result.returncode != 0:
            raise AssertionError(f"cariflex-vtn {' '.join(args)} failed: {result.stderr}")
        return result


def pair_simulator(ven_env: dict[str, str], token_file: Path) -> None:
    """Pair every battery and EV charger with the VEN's CEM, tokens into ``token_file`` for
    `cariflex-sim --token-file` (what the demo does)."""
    result = subprocess.run(
        [str(BIN / "cariflex-ven"), "pair", "--all", "--token-file", str(token_file)],
        env=ven_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
