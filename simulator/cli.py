"""``cariflex-sim``: simulated S2 resource managers for the fleet's batteries and EV chargers, and
the site's meters (each PV site and the base load, NOT_CONTROLABLE).

    cariflex-sim run [--s2-url ws://127.0.0.1:8765/s2] [--fleet FILE] [--devices bat_01,pv_03,site_load]
                     [--no-meters] [--seed 1] [--site-time 2030-03-01T12:00-04:00]
                     [--measure-seconds 2] [--cem-timeout-seconds 30] [--ev-presence always|schedule]
                     [--token-file var/sim/s2_tokens.json] [--s2-ca-file CA.pem]

One process, one asyncio loop, one WebSocket (and S2 session) per device and per meter. Logs are
JSON lines on stderr. SIGTERM or SIGINT closes every connection and exits 0. The meters read PV
production in "actual" weather and the base load with noise (``simulator.site``), both seeded by
``--seed``; ``--site-time`` starts the meters' clock at another instant (it then runs in real time).

Each device presents its S2 access token, as a paired real device does; the tokens come from
``--token-file`` (written by ``cariflex-ven pair DEVICE… --token-file FILE``; the demo does it).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from datetime import datetime
from pathlib import Path

from cariflex import logs, settings
from cariflex.fleet import FleetError, load_fleet
from cariflex.s2.credentials import TokenFile
from cariflex.s2.meters import s2_resources, site_meters
from simulator.devices import PRESENCE_CHOICES, build_devices
from simulator.runner import run_fleet
from simulator.site import DEFAULT_SEED, SimMeter, SiteClock, build_meters

log = logging.getLogger("cariflex.sim")


def default_url() -> str:
    try:
        port = settings.get("CARIFLEX_S2_PORT")
    except KeyError:  # an older settings module without the variable
        port = os.environ.get("CARIFLEX_S2_PORT")
    return f"ws://127.0.0.1:{port or 8765}/s2"


def default_token_file() -> Path:
    configured = settings.get("CARIFLEX_S2_TOKEN_FILE")
    return Path(configured) if configured else settings.var_dir() / "sim" / "s2_tokens.json"


def _positive(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {text}")
    return value


def _instant(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 date-time: {text!r}") from None
    if value.tzinfo is None:
        raise argparse.ArgumentTypeError(f"give a UTC offset, e.g. {text}-04:00 (site time) or {text}Z")
    return value


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="cariflex-sim",
        description="Simulated S2 resource managers for the Cariflex fleet's batteries and EV chargers "
        "(FRBC) and the site's PV and base-load meters (NOT_CONTROLABLE).",
    )
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = commands.add_parser(
        "run",
        help="run one S2 resource manager per device and per meter against the CEM",
        description="Run one S2 resource manager per battery / EV charger (FRBC) and per PV site / base "
        "load (NOT_CONTROLABLE, metered), each on its own WebSocket to the CEM, until SIGTERM.",
    )
    run.add_argument(
        "--s2-url",
        default=None,
        help="the CEM's S2 WebSocket (default ws://127.0.0.1:$CARIFLEX_S2_PORT/s2, port 8765)",
    )
    run.add_argument(
        "--fleet", default=None, help="fleet description YAML ($CARIFLEX_FLEET_FILE; default: packaged fleet)"
    )
    run.add_argument(
        "--devices",
        default=None,
        help="comma-separated names to simulate, e.g. bat_01,ev_03,pv_02,site_load (default: every battery, "
        "EV charger, PV site and the base load)",
    )
    run.add_argument(
        "--no-meters",
        action="store_true",
        help="without --devices: the batteries and EV chargers only, no PV or base-load meter",
    )
    run.add_argument(
        "--seed",
        type=int,
        default=DEFAULT_SEED,
        help="seed of the meters' deviations from the forecast weather and the load profile "
        f"(default {DEFAULT_SEED})",
    )
    run.add_argument(
        "--site-time",
        type=_instant,
        default=None,
        help="the meters' clock starts at this instant (ISO 8601 with offset) and runs in real time "
        "(default: now), e.g. to show noon's PV at night",
    )
    run.add_argument(
        "--measure-seconds",
        type=_positive,
        default=2.0,
        help="seconds between PowerMeasurement + StorageStatus reports (default 2)",
    )
    run.add_argument(
        "--cem-timeout-seconds",
        type=_positive,
        default=30.0,
        help="without a CEM for this long, devices go idle / off (default 30)",
    )
    run.add_argument(
        "--ev-presence",
        choices=PRESENCE_CHOICES,
        default="always",
        help="'always': cars plugged in all the time (default); 'schedule': they follow the fleet's "
        "arrival/departure times",
    )
    run.add_argument(
        "--token-file",
        default=None,
        help="the devices' S2 access tokens, JSON written by `cariflex-ven pair … --token-file` "
        "($CARIFLEX_S2_TOKEN_FILE; default $CARIFLEX_VAR_DIR/sim/s2_tokens.json); re-read on every "
        "connection attempt",
    )
    run.add_argument(
        "--s2-ca-file",
        default=None,
        help="CA (PEM) of the CEM's certificate for a wss:// URL ($CARIFLEX_S2_CA_FILE; default: system CAs)",
    )
    run.add_argument(
        "--publish-meters",
        action="store_true",
        help="also publish each meter's reading every second to the broker of $CARIFLEX_MQTT_URL",
    )
    run.add_argument(
        "--mqtt-url",
        default=None,
        help="also publish each meter's reading every second to this MQTT broker "
        "(mqtt://[user:password@]host:port; for the meter ingestion service); default: S2 only",
    )
    run.add_argument("--log-level", default=None, help="log level ($CARIFLEX_LOG_LEVEL, default INFO)")
    check = commands.add_parser(
        "check",
        help="exit 0 when the CEM's S2 port accepts connections (container health check)",
    )
    check.add_argument("--s2-url", default=None, help="the CEM's S2 WebSocket (default as for run)")
    return top


def check(url: str) -> int:
    """Simulated devices without a reachable CEM only idle: that is what makes the container unhealthy."""
    import socket
    from urllib.parse import urlparse

    parsed = urlparse(url)
    try:
        socket.create_connection((parsed.hostname, parsed.port or 80), timeout=5).close()
    except OSError as exc:
        print(f"cariflex-sim: CEM at {url} unreachable: {exc}", file=sys.stderr)
        return 1
    print(f"CEM at {url} reachable")
    return 0


async def _run(args: argparse.Namespace) -> int:
    try:
        fleet = load_fleet(args.fleet)
        names = [n.strip() for n in args.devices.split(",") if n.strip()] if args.devices else None
        known = s2_resources(fleet)
        unknown = [n for n in names or [] if n not in known]
        if unknown:
            raise ValueError(
                f"unknown device(s) {', '.join(unknown)}; the fleet has {', '.join(sorted(known))}"
            )
        metered = site_meters(fleet)
        device_names = [n for n in names if n not in metered] if names else None
        meter_names = [n for n in names if n in metered] if names else None
        devices: list = (
            []
            if names and not device_names
            else build_devices(fleet, device_names, ev_presence=args.ev_presence)
        )
        if (names and meter_names) or (not names and not args.no_meters):
            devices += build_meters(fleet, meter_names, seed=args.seed, clock=SiteClock(args.site_time))
    except (FleetError, ValueError) as exc:
        log.error("cannot start", extra={"fields": {"error": str(exc)}})
        print(f"cariflex-sim: {exc}", file=sys.stderr)
        return 2
    if not devices:
        print("cariflex-sim: the fleet has no batteries, EV chargers, PV sites or base load", file=sys.stderr)
        return 2
    url = args.s2_url or default_url()
    tokens = TokenFile(args.token_file or default_token_file())
    ca_file = args.s2_ca_file or settings.get("CARIFLEX_S2_CA_FILE")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info(
        "simulator starting",
        extra={
            "fields": {
                "url": url,
                "fleet": fleet.source,
                "devices": [d.name for d in devices],
                "seed": args.seed,
                "site_time": args.site_time.isoformat() if args.site_time else None,
                "token_file": str(tokens.path),
            }
        },
    )
    publishing = None
    meters = [d for d in devices if isinstance(d, SimMeter)]
    mqtt_url = args.mqtt_url or (settings.get("CARIFLEX_MQTT_URL") if args.publish_meters else None)
    if args.publish_meters and not mqtt_url:
        print("cariflex-sim: --publish-meters needs CARIFLEX_MQTT_URL", file=sys.stderr)
        return 2
    if mqtt_url and meters:
        from simulator.mqtt_meters import MeterPublisher

        try:
            publisher = MeterPublisher(mqtt_url, meters)
        except ValueError as exc:
            print(f"cariflex-sim: {exc}", file=sys.stderr)
            return 2
        publishing = asyncio.create_task(publisher.run(stop))
    await run_fleet(
        url,
        devices,
        stop=stop,
        measure_seconds=args.measure_seconds,
        cem_timeout_seconds=args.cem_timeout_seconds,
        tokens=tokens,
        ca_file=ca_file,
    )
    if publishing is not None:
        stop.set()
        await publishing
    log.info("simulator stopped", extra={"fields": {"devices": len(devices)}})
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "check":
        return check(args.s2_url or default_url())
    logs.configure(args.log_level)
    return asyncio.run(_run(args))


if __name__ == "__main__":
    sys.exit(main())
