"""S2 fleet control speed: from a new load-control limit to the last RM acknowledging its
instruction, for 20 and 200 resource managers, and the CEM's CPU time per message.

The CEM and the fleet controller run in this process (as in `cariflex-ven run`); the simulated
resource managers run as a separate `cariflex-sim run` process over loopback WebSockets, so this
process's CPU time is the CEM's. Each trial: every device charges at full power, then a
load-control limit (alternately 60 % and 50 % of the site capacity) arrives; the time until every
device's new instruction is ACCEPTED is one sample.

Prints one JSON line. Goal with 20 RMs: p95 <= 200 ms.

    .venv/bin/python bench/s2_fleet.py [--trials 10] [--sizes 20,200]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import parse_args, percentile, print_result  # noqa: E402
from cariflex.fleet import default_fleet_path, load_fleet  # noqa: E402
from cariflex.s2.credentials import write_tokens  # noqa: E402
from cem.fleet_control import FleetController  # noqa: E402
from cem.pairing import PairingStore  # noqa: E402
from cem.server import Cem  # noqa: E402
from ven_bridge.outbox import Outbox  # noqa: E402

BIN = Path(sys.executable).parent
ACK = ("ACCEPTED", "STARTED", "SUCCEEDED")


def fleet_file(folder: Path, size: int) -> Path:
    """The Cariflex fleet scaled to `size` devices (half batteries, half EV chargers)."""
    data = yaml.safe_load(default_fleet_path().read_text())
    battery, ev = data["batteries"][0], data["ev_chargers"][0]
    half = size // 2
    data["batteries"] = [{**battery, "name": f"bat_{i:03d}"} for i in range(1, half + 1)]
    data["ev_chargers"] = [{**ev, "name": f"ev_{i:03d}"} for i in range(1, size - half + 1)]
    data["site"]["capacity"] = f"{30 * size} kW"
    path = folder / f"fleet_{size}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


async def wait_for(predicate, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        await asyncio.sleep(0.002)


def acknowledged(cem: Cem, since: float) -> float | None:
    """When the last device acknowledged an instruction sent after `since` (None: not all yet)."""
    latest = 0.0
    for state in cem.devices.values():
        record = state.instructions.get(state.last_instruction) if state.last_instruction else None
        if record is None or record["sent"] < since:
            return None
        acks = [t for status, t in record.get("statuses", []) if status in ACK]
        if not acks:
            return None
        latest = max(latest, acks[0])
    return latest


async def run_size(size: int, trials: int, folder: Path) -> dict:
    path = fleet_file(folder, size)
    fleet = load_fleet(path)
    names = [d.name for d in (*fleet.batteries, *fleet.ev_chargers)]
    pairings = PairingStore(folder / f"state_{size}")  # every device paired, as in `cariflex-ven pair`
    tokens = folder / f"s2_tokens_{size}.json"
    write_tokens(tokens, {name: pairings.pair(name) for name in names})
    cem = Cem(port=0, pairings=pairings, fleet=names)
    await cem.start()
    outbox = Outbox(folder / f"state_{size}")
    env = {**os.environ, "CARIFLEX_VAR_DIR": str(folder), "CARIFLEX_LOG_LEVEL": "WARNING"}
    sim = subprocess.Popen(
        [
            *(str(BIN / "cariflex-sim"), "run", "--s2-url", f"ws://127.0.0.1:{cem.port}/s2"),
            *("--fleet", str(path), "--token-file", str(tokens)),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    controller = FleetController(fleet, cem, outbox)
    stopping = asyncio.Event()
    task = asyncio.create_task(controller.run(stopping))
    try:
        await wait_for(lambda: sum(d.controllable for d in cem.devices.values()) == size, 120)
        cpu0, received0 = time.process_time(), _received(cem)
        samples = []
        for trial in range(trials):
            outbox.set_state("load_control_events", {})
            outbox.set_state("setpoints", {n: 20.0 for n in names})
            started = time.monotonic()
            cem.on_change.set()
            await wait_for(lambda s=started: acknowledged(cem, s) is not None, 60)
            now = datetime.now(UTC)
            level = 0.6 if trial % 2 == 0 else 0.5
            outbox.set_state(
                "load_control_events",
                {
                    "bench": {
                        "status": "active",
                        "intervals": [
                            {
                                "start": (now - timedelta(minutes=1)).isoformat(),
                                "duration": "PT1H",
                                "value": level,
                            }
                        ],
                    }
                },
            )
            started = time.monotonic()
            cem.on_change.set()
            await wait_for(lambda s=started: acknowledged(cem, s) is not None, 60)
            samples.append(acknowledged(cem, started) - started)
        cpu = time.process_time() - cpu0
        messages = _received(cem) - received0
    finally:
        stopping.set()
        await task
        sim.send_signal(signal.SIGTERM)
        sim.wait(30)
        await cem.stop()
        outbox.close()
    ordered = sorted(samples)
    p95 = percentile(samples, 0.95)
    return {
        "rms": size,
        "trials": trials,
        "median_ms": round(statistics.median(ordered) * 1000, 1),
        "p95_ms": round(p95 * 1000, 1),
        "max_ms": round(ordered[-1] * 1000, 1),
        "cem_cpu_us_per_message": round(cpu / max(1, messages) * 1e6, 1),
        "messages": messages,
    }


def _received(cem: Cem) -> int:
    return sum(session.received for session in cem.sessions.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--sizes", default="20,200")
    args = parse_args(parser, trials=2, sizes="2")
    with tempfile.TemporaryDirectory() as tmp:
        results = [asyncio.run(run_size(int(n), args.trials, Path(tmp))) for n in args.sizes.split(",")]
    twenty = next((r for r in results if r["rms"] == 20), results[0])
    print_result("s2_fleet", results, "p95_ms_at_20_rms", twenty["p95_ms"], 200)


if __name__ == "__main__":
    main()
