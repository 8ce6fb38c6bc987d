"""``cariflex-ingest``: the meter ingestion service (MQTT -> FlexMeasures' database).

    cariflex-ingest run [--share GROUP] [--client-id ID] [--batch N] [--flush-ms MS] [--health HOST:PORT]
    cariflex-ingest health [--url http://127.0.0.1:5071/health]
    cariflex-ingest downsample [--keep-days 7] [--dry-run]   (daily, from cron)

Configuration: CARIFLEX_MQTT_URL (the broker), CARIFLEX_DATABASE_URL (FlexMeasures' database),
CARIFLEX_INGEST_HEALTH_BIND, CARIFLEX_INGEST_SHARE_GROUP, CARIFLEX_INGEST_CLIENT_ID. JSON log lines
on stderr; ``GET /health`` answers 200 with the counters while the broker and the database are
reachable, else 503; SIGTERM or SIGINT stops after the batch in hand (what is not acknowledged
then stays with the broker).
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from cariflex import logs, settings
from cariflex.database_url import to_libpq

log = logging.getLogger("cariflex.ingest")


def _bind(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    try:
        return host or "127.0.0.1", int(port)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}") from None


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {value}")
    return value


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="cariflex-ingest", description=__doc__.split("\n\n")[0])
    top.add_argument("--log-level", default=None, help="default: $CARIFLEX_LOG_LEVEL or INFO")
    sub = top.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="subscribe to the meters' topics and store their readings until SIGTERM")
    run.add_argument(
        "--share",
        default=settings.get("CARIFLEX_INGEST_SHARE_GROUP") or None,
        help="MQTT shared-subscription group: workers of one group split the readings",
    )
    run.add_argument(
        "--client-id",
        default=settings.get("CARIFLEX_INGEST_CLIENT_ID"),
        help="MQTT client id (its session keeps unacknowledged readings across restarts); one per worker",
    )
    run.add_argument("--batch", type=_positive, default=2000, help="readings per transaction at most")
    run.add_argument("--flush-ms", type=_positive, default=50, help="longest a reading waits for its batch")
    run.add_argument(
        "--health", type=_bind, default=_bind(settings.get("CARIFLEX_INGEST_HEALTH_BIND")), help="HOST:PORT"
    )
    keep = settings.get("CARIFLEX_METER_RAW_DAYS")
    down = sub.add_parser(
        "downsample",
        help="raw readings older than the kept days -> 1-minute means on each meter's 1-minute sensor",
    )
    down.add_argument(
        "--keep-days", type=float, default=float(keep), help=f"days of 1 Hz readings kept (default {keep})"
    )
    down.add_argument("--dry-run", action="store_true", help="say what would change, change nothing")
    health = sub.add_parser("health", help="ask a running service (exit 0 when healthy)")
    health.add_argument("--url", default=None, help="default: from CARIFLEX_INGEST_HEALTH_BIND")
    return top


def _health_server(bind: tuple[str, int], state) -> ThreadingHTTPServer:
    class Health(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the http.server API
            if self.path.split("?")[0] != "/health":
                self._answer(404, {"error": f"no such path {self.path[:80]!r}; try /health"})
                return
            body = state()
            self._answer(200 if body["ok"] else 503, body)

        def _answer(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args) -> None:  # quiet: the service logs what matters
            pass

    server = ThreadingHTTPServer(bind, Health)
    threading.Thread(target=server.serve_forever, name="health", daemon=True).start()
    return server


def run(args: argparse.Namespace) -> int:
    from meter_ingest.service import Ingestor

    mqtt_url = settings.get("CARIFLEX_MQTT_URL")
    database = settings.get("CARIFLEX_DATABASE_URL")
    if not mqtt_url:
        log.error("CARIFLEX_MQTT_URL is not set: the broker the meters publish to")
        return 2
    if not database:
        log.error("CARIFLEX_DATABASE_URL is not set: the service writes to FlexMeasures' database")
        return 2
    try:
        ingestor = Ingestor(
            mqtt_url,
            to_libpq(database),
            client_id=args.client_id,
            share=args.share,
            batch=args.batch,
            flush_s=args.flush_ms / 1000,
        )
    except ValueError as exc:
        log.error("bad configuration", extra={"fields": {"error": str(exc)}})
        return 2

    def state() -> dict[str, Any]:
        database_ok = True if ingestor.counters.last_commit else None
        ok = ingestor.counters.connected and ingestor.counters.db_errors == 0
        return {"ok": ok, "database_ok": database_ok, **ingestor.counters.as_dict()}

    server = _health_server(args.health, state)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: ingestor.stop())
    ingestor.start()
    log.info(
        "ingest started",
        extra={
            "fields": {
                "broker": f"{ingestor.url.hostname}:{ingestor.port}",
                "subscription": ingestor.subscription,
                "client_id": args.client_id,
                "health_port": server.server_address[1],
            }
        },
    )
    ingestor.run()
    server.shutdown()
    log.info("ingest stopped", extra={"fields": ingestor.counters.as_dict()})
    return 0


def health(args: argparse.Namespace) -> int:
    from urllib.error import HTTPError, URLError
    from urllib.request import urlopen

    host, port = _bind(settings.get("CARIFLEX_INGEST_HEALTH_BIND"))
    url = args.url or f"http://{host}:{port}/health"
    try:
        with urlopen(url, timeout=5) as answer:  # noqa: S310 - an http URL of ours
            print(answer.read().decode())
            return 0
    except HTTPError as exc:
        print(exc.read().decode())
        return 1
    except URLError as exc:
        print(f"ingest service not reachable at {url}: {exc.reason}", file=sys.stderr)
        return 1


def downsample(args: argparse.Namespace) -> int:
    from meter_ingest.retention import downsample as run_downsample

    database = settings.get("CARIFLEX_DATABASE_URL")
    if not database:
        print("cariflex-ingest: CARIFLEX_DATABASE_URL is not set", file=sys.stderr)
        return 2
    try:
        report = run_downsample(to_libpq(database), args.keep_days, dry_run=args.dry_run)
    except ValueError as exc:
        print(f"cariflex-ingest: {exc}", file=sys.stderr)
        return 2
    verb = "would write" if args.dry_run else "wrote"
    print(
        f"raw readings before {report.cutoff.isoformat()}: {verb} {report.minutes} one-minute means, "
        f"{'would delete' if args.dry_run else 'deleted'} {report.deleted} raw readings"
        + (f"; kept raw (no 1-minute sensor): {', '.join(report.kept_raw)}" if report.kept_raw else "")
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logs.configure(args.log_level)
    commands = {"run": run, "health": health, "downsample": downsample}
    return commands[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
