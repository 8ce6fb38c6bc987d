"""Real processes for OpenADR tests: the VTN as `cariflex-vtn serve`, VENs as openleadr clients.

The VTN runs as its own process on ephemeral loopback ports (it binds port 0 and logs the ports it
got). VENs are real ``openleadr.OpenADRClient`` instances in one asyncio loop on a background
thread; tests wait on conditions with timeouts, never on sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
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


class VtnProcess:
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
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("CARIFLEX_")},
            "CARIFLEX_VAR_DIR": str(var_dir),
            "CARIFLEX_VTN_DATABASE_URL": store_url,
            "CARIFLEX_VTN_ADMIN_TOKEN": ADMIN_TOKEN,
            "CARIFLEX_ENV_FILE": str(var_dir / "no.env"),
            **(env or {}),
        }
        self.args = [
            "--port",
            str(port),
            "--admin-port",
            "0",
            "--poll-seconds",
            str(poll_seconds),
            *(extra if extra is not None else ["--insecure", "--day-ahead-time", "off"]),
        ]
        self.lines: list[dict[str, Any]] = []
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60) -> VtnProcess:
        self.lines = []
        self.proc = subprocess.Popen(
            [str(BIN / "cariflex-vtn"), "serve", *self.args],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        ready: queue.Queue = queue.Queue()

        def reader(stream) -> None:
            for raw in stream:
                try:
                    line = json.loads(raw)
                except ValueError:
                    line = {"msg": raw.rstrip()}
                self.lines.append(line)
                if line.get("msg") == "vtn ready":
                    ready.put(line)

        threading.Thread(target=reader, args=(self.proc.stderr,), daemon=True).start()
        try:
            info = ready.get(timeout=timeout)
        except queue.Empty:
            self.proc.kill()
            raise AssertionError(f"VTN did not start: {self.lines[-20:]}") from None
        self.port, self.admin_port, self.url = info["port"], info["admin_port"], info["url"]
        self.admin_url = f"http://127.0.0.1:{self.admin_port}"
        return self

    def logged(self, message: str) -> list[dict[str, Any]]:
        return [line for line in self.lines if line.get("msg") == message]

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

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=30)


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
