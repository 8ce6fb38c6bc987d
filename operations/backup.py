"""Backups of a Cariflex installation: create, verify, restore, rotate (``scripts/*.sh`` call these).

    python -m operations.backup create [--dest DIR] [--redis URL]
    python -m operations.backup verify ARCHIVE
    python -m operations.backup restore ARCHIVE --target-db URL [--redis URL] [--vtn-target URL] [--force]
    python -m operations.backup rotate [--dry-run] DIR

An archive ``YYYYMMDD_HHMMSS.tar.gz`` (the site's local time, America/Martinique for Cariflex)
holds ``flexmeasures.dump`` (pg_dump custom format), the VTN store (``vtn.dump`` or ``vtn.sqlite``,
copied with SQLite's backup API), ``redis.rdb`` (``redis-cli --rdb``), ``config/`` (``.env`` and the
fleet file), ``grafana/``, ``docker-compose.yml``, ``docker/`` (container states and networks when
a Docker engine answers), ``MANIFEST.json`` and ``SHA256SUMS``. It is written as a hidden
``.partial`` file with mode 600 (it holds secrets) and renamed only when every step succeeded; a
failed step exits 1 naming the step, and leaves nothing that looks like a backup.

In the compose deployment pg_dump must match the server: set CARIFLEX_BACKUP_PG_DUMP to e.g.
``docker compose exec -T db pg_dump`` (reference: pg_dump older than the server fails and leaves
an empty file).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shlex
import shutil
import sqlite3
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlparse
from zoneinfo import ZoneInfo

from cariflex import __version__, settings

NAME = re.compile(r"^(\d{8})_(\d{6})\.tar\.gz$")
ROOT = Path(__file__).resolve().parent.parent


class StepFailed(RuntimeError):
    def __init__(self, step: str, detail: str):
        super().__init__(f"{step}: {detail}")
        self.step = step


def _run(step: str, command: list[str], env: dict | None = None, stdout=None) -> str:
    try:
        done = subprocess.run(
            command,
            env={**os.environ, **(env or {})},
            stdout=stdout or subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            timeout=3600,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise StepFailed(step, f"{command[0]}: {exc}") from None
    if done.returncode != 0:
        raise StepFailed(step, (done.stderr or done.stdout or f"exit {done.returncode}").strip()[-800:])
    return done.stdout or ""


def _libpq(url: str) -> tuple[str, dict[str, str]]:
    """A libpq connection string without the password, and the password as PGPASSWORD."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    parts = {
        "host": parsed.host or parsed.query.get("host"),
        "port": parsed.port,
        "user": parsed.username,
        "dbname": parsed.database,
    }
    dsn = " ".join(f"{k}={v}" for k, v in parts.items() if v)
    return dsn, ({"PGPASSWORD": parsed.password} if parsed.password else {})


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --- create ---------------------------------------------------------------------------------------


def _fm_url() -> str:
    url = settings.get("CARIFLEX_DATABASE_URL")
    if url:
        return url
    from cariflex.database_url import embedded_server_url

    return embedded_server_url(settings.var_dir() / "pgdata", database="cariflex")


def create(
    dest: Path, *, fm_url: str, vtn_url: str, redis_url: str | None, now: datetime | None = None
) -> Path:
    tz = ZoneInfo("America/Martinique")
    stamp = (now or datetime.now(tz)).astimezone(tz).strftime("%Y%m%d_%H%M%S")
    dest.mkdir(parents=True, exist_ok=True)
    final = dest / f"{stamp}.tar.gz"
    partial = dest / f".{stamp}.tar.gz.partial"
    manifest: dict[str, Any] = {"created": stamp, "timezone": str(tz), "cariflex": __version__, "items": {}}
    with tempfile.TemporaryDirectory(prefix="cariflex-backup-") as work:
        stage = Path(work) / stamp
        stage.mkdir()
        redis_snapshot: subprocess.Popen | None = None
        try:
            pg_dump = shlex.split(settings.get("CARIFLEX_BACKUP_PG_DUMP"))
            # The Redis snapshot runs beside the dumps: Redis waits repl-diskless-sync-delay (5 s by
            # default) before it sends an RDB, time the dumps can use.
            redis_snapshot = (
                subprocess.Popen(  # noqa: SIM115 (waited for below, killed on failure)
                    ["redis-cli", "-u", _redis_no_password(redis_url), "--rdb", str(stage / "redis.rdb")],
                    env={**os.environ, **_redis_auth(redis_url)},
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                )
                if redis_url
                else None
            )
            dsn, env = _libpq(fm_url)
            with (stage / "flexmeasures.dump").open("w") as out:
                _run(
                    "flexmeasures database (pg_dump)",
                    [*pg_dump, "-Fc", "-Z", "1", "-d", dsn],
                    env,
                    stdout=out,
                )
            manifest["items"]["flexmeasures.dump"] = {"what": "FlexMeasures database, pg_dump -Fc"}
            if vtn_url.startswith("sqlite"):
                source = Path(vtn_url.split("///", 1)[1])
                if source.exists():
                    try:
                        with sqlite3.connect(source) as src, sqlite3.connect(stage / "vtn.sqlite") as copy:
                            src.backup(copy)
                    except sqlite3.Error as exc:
                        raise StepFailed("VTN store (SQLite backup)", str(exc)) from None
                    manifest["items"]["vtn.sqlite"] = {"what": "VTN event store, SQLite backup API"}
            else:
                dsn, env = _libpq(vtn_url)
                with (stage / "vtn.dump").open("w") as out:
                    _run("VTN store (pg_dump)", [*pg_dump, "-Fc", "-Z", "1", "-d", dsn], env, stdout=out)
                manifest["items"]["vtn.dump"] = {"what": "VTN event store, pg_dump -Fc"}
            if redis_snapshot is not None:
                try:
                    output, _ = redis_snapshot.communicate(timeout=3600)
                except subprocess.TimeoutExpired:
                    redis_snapshot.kill()
                    raise StepFailed("redis (redis-cli --rdb)", "no snapshot within an hour") from None
                if redis_snapshot.returncode != 0:
                    raise StepFailed("redis (redis-cli --rdb)", (output or "").strip()[-800:])
                if not (stage / "redis.rdb").exists() or (stage / "redis.rdb").stat().st_size == 0:
                    raise StepFailed("redis (redis-cli --rdb)", "no snapshot was written")
                db_index = (urlparse(redis_url).path or "/0").strip("/") or "0"
                manifest["items"]["redis.rdb"] = {"what": "Redis RDB snapshot", "db": int(db_index)}
            _copy_config(stage, manifest)
            _docker_state(stage, manifest)
            manifest["versions"] = {
                "pg_dump": _run("versions", [*pg_dump, "--version"]).strip(),
                "redis-cli": _run("versions", ["redis-cli", "--version"]).strip() if redis_url else None,
            }
            for name, item in manifest["items"].items():
                path = stage / name
                item["bytes"] = (
                    sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
                    if path.is_dir()
                    else (path.stat().st_size)
                )
            (stage / "MANIFEST.json").write_text(json.dumps(manifest, indent=2) + "\n")
            sums = [f"{_sha256(f)}  {f.relative_to(stage)}" for f in sorted(stage.rglob("*")) if f.is_file()]
            (stage / "SHA256SUMS").write_text("\n".join(sums) + "\n")
            old_umask = os.umask(0o077)
            try:
                # The dumps are compressed already (pg_dump -Z 1): gzip only frames them (level 0).
                with tarfile.open(partial, "w:gz", compresslevel=0) as tar:
                    tar.add(stage, arcname=stamp)
            finally:
                os.umask(old_umask)
            os.chmod(partial, 0o600)
            os.replace(partial, final)
        except BaseException:
            if redis_snapshot is not None and redis_snapshot.poll() is None:
                redis_snapshot.kill()
                redis_snapshot.wait()
            partial.unlink(missing_ok=True)
            raise
    return final


def _redis_auth(url: str) -> dict[str, str]:
    from urllib.parse import urlparse

    password = urlparse(url).password
    return {"REDISCLI_AUTH": password} if password else {}


def _redis_no_password(url: str) -> str:
    from urllib.parse import urlparse

    parsed = urlparse(url)
    host = f"{parsed.hostname}:{parsed.port or 6379}"
    return f"{parsed.scheme}://{host}{parsed.path or ''}"


def _copy_config(stage: Path, manifest: dict) -> None:
    config = stage / "config"
    config.mkdir()
    env_file = Path(os.environ.get("CARIFLEX_ENV_FILE", ".env"))
    if env_file.is_file():
        shutil.copy2(env_file, config / ".env")
    from cariflex.fleet import default_fleet_path

    fleet = Path(settings.get("CARIFLEX_FLEET_FILE") or default_fleet_path())
    if not fleet.is_file():
        raise StepFailed("configuration", f"fleet file {fleet} not found")
    shutil.copy2(fleet, config / fleet.name)
    manifest["items"]["config"] = {"what": "configuration: .env (if any) and the fleet description"}
    if (ROOT / "grafana").is_dir():
        shutil.copytree(ROOT / "grafana", stage / "grafana", ignore=shutil.ignore_patterns("__pycache__"))
        manifest["items"]["grafana"] = {"what": "Grafana provisioning and dashboards"}
    if (ROOT / "docker-compose.yml").is_file():
        shutil.copy2(ROOT / "docker-compose.yml", stage / "docker-compose.yml")
        manifest["items"]["docker-compose.yml"] = {"what": "the compose file"}


def _docker_state(stage: Path, manifest: dict) -> None:
    """Container states and networks, when a Docker engine answers (none here: noted, not failed)."""
    try:
        probe = subprocess.run(["docker", "info", "--format", "{{.ID}}"], capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        probe = None
    if probe is None or probe.returncode != 0:
        manifest["docker"] = "no Docker engine reachable: container state not included"
        return
    docker = stage / "docker"
    docker.mkdir()
    ids = _run("docker state", ["docker", "ps", "-aq"]).split()
    (docker / "containers.json").write_text(
        _run("docker state", ["docker", "inspect", *ids]) if ids else "[]"
    )
    networks = _run("docker state", ["docker", "network", "ls", "-q"]).split()
    (docker / "networks.json").write_text(_run("docker state", ["docker", "network", "inspect", *networks]))
    manifest["items"]["docker"] = {"what": "docker inspect of containers and networks"}


# --- verify ---------------------------------------------------------------------------------------


def _extract(archive: Path, into: Path) -> Path:
    try:
        with tarfile.open(archive, "r:gz") as tar:
            tar.extractall(into, filter="data")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise StepFailed("archive", f"{archive} cannot be read whole ({exc})") from None
    roots = [p for p in into.iterdir() if p.is_dir()]
    if len(roots) != 1:
        raise StepFailed("archive", f"{archive} does not hold one backup folder")
    return roots[0]


def verify(archive: Path) -> list[str]:
    """Every check that passed; StepFailed names the first fault."""
    passed = []
    with tempfile.TemporaryDirectory(prefix="cariflex-verify-") as work:
        root = _extract(archive, Path(work))
        sums = root / "SHA256SUMS"
        if not sums.is_file():
            raise StepFailed("checksums", "SHA256SUMS is missing")
        listed = {}
        for line in sums.read_text().splitlines():
            digest, _, name = line.partition("  ")
            listed[name] = digest
        for name, digest in listed.items():
            path = root / name
            if not path.is_file():
                raise StepFailed("checksums", f"{name} is listed in SHA256SUMS but missing from the archive")
            if _sha256(path) != digest:
                raise StepFailed("checksums", f"{name} does not match its SHA256 checksum")
        for required in ("MANIFEST.json", "flexmeasures.dump"):
            if required not in listed:
                raise StepFailed("contents", f"{required} is missing")
        passed.append(f"checksums of {len(listed)} files")
        for dump in sorted(root.glob("*.dump")):
            _run(f"pg_restore {dump.name}", ["pg_restore", "-f", "/dev/null", str(dump)])
            passed.append(f"{dump.name} restores (pg_restore to /dev/null)")
        if (root / "vtn.sqlite").is_file():
            with sqlite3.connect(root / "vtn.sqlite") as conn:
                result = conn.execute("PRAGMA integrity_check").fetchone()[0]
            if result != "ok":
                raise StepFailed("vtn.sqlite", f"integrity check: {result}")
            passed.append("vtn.sqlite integrity check")
        if (root / "redis.rdb").is_file():
            _run("redis-check-rdb", ["redis-check-rdb", str(root / "redis.rdb")])
            passed.append("redis.rdb (redis-check-rdb)")
    return passed


# --- restore --------------------------------------------------------------------------------------


def _table_counts(dsn: str, env: dict) -> dict[str, int]:
    import psycopg2

    conn = psycopg2.connect(dsn, password=env.get("PGPASSWORD"))
    try:
        with conn.cursor() as cursor:
            cursor.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1")
            tables = [r[0] for r in cursor.fetchall()]
            counts = {}
            for table in tables:
                cursor.execute(f'SELECT count(*) FROM "{table}"')
                counts[table] = cursor.fetchone()[0]
            return counts
    finally:
        conn.close()


def _empty_schema(dsn: str, env: dict, force: bool, what: str) -> None:
    import psycopg2

    try:
        conn = psycopg2.connect(dsn, password=env.get("PGPASSWORD"))
    except psycopg2.Error as exc:
        raise StepFailed(f"{what}: target database", str(exc).strip()) from None
    conn.autocommit = True
    try:
        with conn.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
            if cursor.fetchone()[0]:
                if not force:
                    raise StepFailed(f"{what}: target database", "it is not empty; use --force to replace it")
                cursor.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
    finally:
        conn.close()


def restore(
    archive: Path, *, target_db: str, redis_url: str | None, vtn_target: str | None, force: bool
) -> dict:
    verify(archive)
    with tempfile.TemporaryDirectory(prefix="cariflex-restore-") as work:
        root = _extract(archive, Path(work))
        dsn, env = _libpq(target_db)
        _empty_schema(dsn, env, force, "flexmeasures")
        _run("restore flexmeasures (pg_restore)", ["pg_restore", "--no-owner", "--exit-on-error", "-d", dsn,
             str(root / "flexmeasures.dump")], env)  # fmt: skip
        out: dict[str, Any] = {"flexmeasures": _table_counts(dsn, env)}
        if vtn_target and (root / "vtn.dump").is_file():
            vdsn, venv = _libpq(vtn_target)
            _empty_schema(vdsn, venv, force, "vtn")
            _run(
                "restore vtn (pg_restore)",
                ["pg_restore", "--no-owner", "-d", vdsn, str(root / "vtn.dump")],
                venv,
            )
            out["vtn"] = _table_counts(vdsn, venv)
        elif vtn_target and (root / "vtn.sqlite").is_file():
            target = Path(vtn_target.split("///", 1)[1])
            if target.exists() and not force:
                raise StepFailed("vtn: target", f"{target} exists; use --force to replace it")
            shutil.copy2(root / "vtn.sqlite", target)
            out["vtn"] = {"file": str(target)}
        if redis_url and (root / "redis.rdb").is_file():
            manifest = json.loads((root / "MANIFEST.json").read_text())
            source_db = manifest["items"].get("redis.rdb", {}).get("db", 0)
            out["redis_keys"] = _restore_redis(root / "redis.rdb", redis_url, force, source_db)
    return out


def _restore_redis(rdb: Path, target_url: str, force: bool, source_db: int = 0) -> int:
    """Load the snapshot into a private redis-server, then DUMP/RESTORE every key of the database
    that was backed up into the target's (a running Redis cannot load an RDB file)."""
    import socket
    import time

    import redis

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(rdb.parent),
         "--dbfilename", rdb.name, "--appendonly", "no", "--save", ""],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        source = redis.Redis("127.0.0.1", port)
        deadline = time.monotonic() + 30
        while True:
            try:
                if source.ping():
                    break
            except redis.ConnectionError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise StepFailed("redis restore", "the snapshot could not be loaded") from None
                time.sleep(0.05)
        target = redis.Redis.from_url(target_url)
        source = redis.Redis("127.0.0.1", port, db=source_db)
        if target.dbsize() and not force:
            raise StepFailed("redis restore", "the target Redis database is not empty; use --force")
        count = 0
        for key in source.scan_iter(count=1000):
            ttl = source.pttl(key)
            target.restore(key, max(ttl, 0), source.dump(key), replace=True)
            count += 1
        return count
    finally:
        server.terminate()
        server.wait(timeout=30)


# --- rotate ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Backup:
    path: Path
    at: datetime


def backups_in(folder: Path) -> list[Backup]:
    found = []
    for path in folder.iterdir():
        match = NAME.match(path.name)
        if not match or not path.is_file():
            continue
        try:
            at = datetime.strptime(match[1] + match[2], "%Y%m%d%H%M%S")
        except ValueError:
            continue
        found.append(Backup(path, at))
    return sorted(found, key=lambda b: b.at)


def survivors(stamps: list[datetime], today: date) -> set[datetime]:
    """The policy: the newest backup of each of the last 30 days, of each of the last 12 ISO weeks,
    and of every month; and always the newest backup of all."""
    keep: set[datetime] = set()
    newest_of: dict[tuple, datetime] = {}
    for at in stamps:
        for key in (
            ("day", at.date()) if (today - at.date()).days < 30 else None,
            ("week", *at.isocalendar()[:2]) if _weeks_back(at.date(), today) < 12 else None,
            ("month", at.year, at.month),
        ):
            if key is not None and (key not in newest_of or at > newest_of[key]):
                newest_of[key] = at
    keep.update(newest_of.values())
    if stamps:
        keep.add(max(stamps))
    return keep


def _weeks_back(day: date, today: date) -> int:
    monday = today - timedelta(days=today.weekday())
    return (monday - (day - timedelta(days=day.weekday()))).days // 7


def rotate(folder: Path, *, dry_run: bool, today: date | None = None) -> tuple[list[Path], list[Path]]:
    found = backups_in(folder)
    today = today or datetime.now(ZoneInfo("America/Martinique")).date()
    keep = survivors([b.at for b in found], today)
    kept = [b.path for b in found if b.at in keep]
    deleted = [b.path for b in found if b.at not in keep]
    if not dry_run:
        for path in deleted:
            path.unlink()
    return kept, deleted


# --- command line ---------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cariflex-backup", description="Cariflex backups.")
    commands = parser.add_subparsers(dest="command", required=True)
    c = commands.add_parser("create", help="write DIR/YYYYMMDD_HHMMSS.tar.gz")
    c.add_argument("--dest", default=None, help="folder (default: $CARIFLEX_VAR_DIR/backups)")
    c.add_argument("--redis", default=None, help="Redis URL (default: $CARIFLEX_REDIS_URL; unset = no Redis)")
    v = commands.add_parser("verify", help="checksums, pg_restore to /dev/null, redis-check-rdb")
    v.add_argument("archive")
    r = commands.add_parser("restore", help="restore into a database (and Redis)")
    r.add_argument("archive")
    r.add_argument("--target-db", required=True)
    r.add_argument("--redis", default=None)
    r.add_argument("--vtn-target", default=None, help="database URL or sqlite:///file for the VTN store")
    r.add_argument("--force", action="store_true", help="replace a non-empty target")
    o = commands.add_parser("rotate", help="retention: 30 daily, 12 weekly, monthly forever")
    o.add_argument("folder")
    o.add_argument("--dry-run", action="store_true")
    args = parser.parse_args(argv)
    try:
        if args.command == "create":
            from vtn.store import default_url

            dest = Path(args.dest) if args.dest else settings.var_dir() / "backups"
            archive = create(
                dest,
                fm_url=_fm_url(),
                vtn_url=default_url(),
                redis_url=args.redis or settings.get("CARIFLEX_REDIS_URL"),
            )
            print(f"backup written: {archive} ({archive.stat().st_size} bytes)")
        elif args.command == "verify":
            for check in verify(Path(args.archive)):
                print(f"ok  {check}")
            print(f"{args.archive}: verified")
        elif args.command == "restore":
            out = restore(
                Path(args.archive),
                target_db=args.target_db,
                redis_url=args.redis,
                vtn_target=args.vtn_target,
                force=args.force,
            )
            for part, counts in out.items():
                if isinstance(counts, dict):
                    for table, n in counts.items():
                        print(f"{part:12} {table:40} {n}")
                else:
                    print(f"{part:12} {counts}")
        else:
            folder = Path(args.folder)
            if not folder.is_dir():
                raise StepFailed("rotate", f"{folder} is not a folder")
            kept, deleted = rotate(folder, dry_run=args.dry_run)
            for path in kept:
                print(f"keep    {path.name}")
            for path in deleted:
                print(f"{'would delete' if args.dry_run else 'delete'}  {path.name}")
    except StepFailed as exc:
        print(f"{args.command} failed at step '{exc.step}': {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
