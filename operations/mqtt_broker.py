"""A private Mosquitto for `make demo` and the tests: the OS's ``mosquitto``, on loopback, an
ephemeral port, a generated password, its messages persisted under its folder.

Why Mosquitto and not an embedded Python broker (amqtt): it is what the compose stack runs and what
gateways are tested against, it persists QoS 1 messages of persistent sessions across a restart
(what "nothing the broker accepted is lost" rests on), and it sustains the load test's rate on
two cores. Without it, the demo says what is missing and runs without meter ingestion.

The limits that matter for ingestion are raised: Mosquitto's default 20 QoS 1 messages in flight
per client would cap a worker that acknowledges after its commit at 20 readings per commit (10,000:
what one worker holds unacknowledged at most), and its default 1,000 queued messages per offline
session would drop readings while a worker restarts.
"""

from __future__ import annotations

import getpass
import secrets
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path


def mosquitto_binary(path: str | None = None) -> str | None:
    return shutil.which("mosquitto", path=path) or (
        "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
    )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Broker:
    folder: Path
    port: int
    user: str | None = None
    password: str | None = None
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        credentials = f"{self.user}:{self.password}@" if self.user else ""
        return f"mqtt://{credentials}127.0.0.1:{self.port}"

    def config(self) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        lines = [
            "# Written at each start (operations/mqtt_broker.py): a private broker on loopback.",
            f"listener {self.port} 127.0.0.1",
            # run as whoever started it (as root Mosquitto would switch to 'mosquitto', which
            # cannot read this private folder)
            f"user {getpass.getuser()}",
            "persistence true",
            f"persistence_location {self.folder.resolve()}/",
            "autosave_interval 1",
            "max_inflight_messages 10000",
            "max_queued_messages 1000000",
            "set_tcp_nodelay true",
            f"log_dest file {(self.folder / 'mosquitto.log').resolve()}",
            "log_type error",
            "log_type warning",
        ]
        if self.user:
            passwd = self.folder / "passwd"
            passwd.touch(mode=0o600)
            subprocess.run(
                ["mosquitto_passwd", "-b", str(passwd), self.user, self.password],
                check=True,
                capture_output=True,
            )
            lines += ["allow_anonymous false", f"password_file {passwd.resolve()}"]
        else:
            lines.append("allow_anonymous true")
        conf = self.folder / "mosquitto.conf"
        conf.write_text("\n".join(lines) + "\n")
        return conf

    def start(self, binary: str | None = None, timeout_s: float = 15) -> Broker:
        binary = binary or mosquitto_binary()
        if binary is None:
            raise FileNotFoundError("mosquitto is not installed (apt-get install mosquitto)")
        self.process = subprocess.Popen([binary, "-c", str(self.config())], stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                log = self.folder / "mosquitto.log"
                tail = log.read_text()[-500:] if log.exists() else ""
                raise RuntimeError(f"mosquitto exited with {self.process.returncode}: {tail}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"mosquitto did not listen on 127.0.0.1:{self.port} within {timeout_s:.0f} s")

    def stop(self, timeout_s: float = 15) -> None:
        """SIGTERM: Mosquitto saves its persistence file and exits."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


def private_broker(folder: Path, with_password: bool = True) -> Broker:
    """A broker description on a free port (not started)."""
    password = secrets.token_urlsafe(18) if with_password and shutil.which("mosquitto_passwd") else None
    return Broker(folder, free_port(), "cariflex" if password else None, password)
