"""Backups on the real test PostgreSQL and Redis: round trip, corruption, failures, retention."""

from __future__ import annotations

import io
import subprocess
import tarfile
import tempfile
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import create_engine, text

from operations import backup
from tests.helpers.common import ROOT

SCRIPTS = ROOT / "scripts"
REDIS_SOURCE = "redis://127.0.0.1:6379/13"
REDIS_TARGET = "redis://127.0.0.1:6379/14"


def db_url(fm_db) -> str:
    return fm_db.engine.url.render_as_string(hide_password=False)


def fingerprint(url: str) -> tuple[dict, str]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            tables = conn.execute(
                text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
            ).scalars()
            counts = {
                t: conn.execute(text(f'SELECT count(*) FROM "{t}"')).scalar_one() for t in sorted(tables)
            }
            digest = conn.execute(
                text(
                    "SELECT md5(string_agg(concat_ws(',', event_start, belief_horizon, "
                    "cumulative_probability, event_value, sensor_id, source_id), ';' "
                    "ORDER BY sensor_id, event_start, belief_horizon, source_id)) FROM timed_belief"
                )
            ).scalar_one()
    finally:
        engine.dispose()
    return counts, digest


@pytest.fixture
def filled(fleet, fm_db, tmp_path):
    """FlexMeasures through the plugin (site, weather + PV, an OpenADR price event), a VTN store with
    an event, and Redis keys."""
    from flexmeasures_cariflex.data.services.openadr_ingest import ingest_event
    from flexmeasures_cariflex.data.services.weather import fetch_weather
    from tests.helpers.events import price_event
    from vtn import actions
    from vtn.store import Store

    start = datetime(2030, 1, 10, 4, tzinfo=UTC)
    fetch_weather(fleet, start, start + timedelta(days=1), source="synthetic")
    ingest_event(price_event(), fleet)
    fm_db.session.commit()
    vtn_url = f"sqlite:///{tmp_path / 'vtn.sqlite'}"
    store = Store(vtn_url)
    actions.add_ven(store, "ven-backup")
    store.dispose()
    source = redis.Redis.from_url(REDIS_SOURCE)
    source.flushdb()
    source.set("cariflex:test:a", "1")
    source.hset("cariflex:test:h", mapping={"x": "1", "y": "2"})
    source.rpush("cariflex:test:l", "a", "b")
    yield {"fm": db_url(fm_db), "vtn": vtn_url, "dest": tmp_path / "backups"}
    source.flushdb()
    redis.Redis.from_url(REDIS_TARGET).flushdb()


def make(filled, **changes) -> Path:
    args = {"fm_url": filled["fm"], "vtn_url": filled["vtn"], "redis_url": REDIS_SOURCE, **changes}
    return backup.create(filled["dest"], **args)


def test_round_trip_restores_the_same_rows_vtn_store_and_redis_keys(filled, new_database, tmp_path):
    archive = make(filled)
    assert backup.NAME.match(archive.name) and oct(archive.stat().st_mode & 0o777) == "0o600"
    with tarfile.open(archive) as tar:
        names = {Path(n).name for n in tar.getnames()}
    assert {
        "flexmeasures.dump",
        "vtn.sqlite",
        "redis.rdb",
        "MANIFEST.json",
        "SHA256SUMS",
        "cariflex.yaml",
    } <= names
    verified = subprocess.run(
        [str(SCRIPTS / "verify_backup.sh"), str(archive)], capture_output=True, text=True
    )
    assert verified.returncode == 0, verified.stderr
    assert "verified" in verified.stdout

    target = new_database("cariflex_restore")
    vtn_target = tmp_path / "restored-vtn.sqlite"
    restored = subprocess.run(
        [str(SCRIPTS / "restore.sh"), str(archive), "--target-db", target, "--redis", REDIS_TARGET,
         "--vtn-target", f"sqlite:///{vtn_target}"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert restored.returncode == 0, restored.stderr
    assert "timed_belief" in restored.stdout
    original, copy = fingerprint(filled["fm"]), fingerprint(target)
    assert original == copy and original[0]["timed_belief"] > 1000
    import sqlite3

    with sqlite3.connect(vtn_target) as conn:
        assert [r[0] for r in conn.execute("SELECT ven_name FROM vtn_ven")] == ["ven-backup"]
    source, restored_redis = redis.Redis.from_url(REDIS_SOURCE), redis.Redis.from_url(REDIS_TARGET)
    assert sorted(restored_redis.keys()) == sorted(source.keys())
    assert restored_redis.hgetall("cariflex:test:h") == {b"x": b"1", b"y": b"2"}
    assert restored_redis.lrange("cariflex:test:l", 0, -1) == [b"a", b"b"]

    again = subprocess.run(
        [str(SCRIPTS / "restore.sh"), str(archive), "--target-db", target], capture_output=True, text=True
    )
    assert again.returncode == 1 and "not empty; use --force" in again.stderr


def rewrite(archive: Path, change, name: str) -> Path:
    """A copy of the archive with one member changed by ``change(name, data) -> data | None``."""
    out = archive.with_name(f"{name}.tar.gz")
    with tarfile.open(archive) as src, tarfile.open(out, "w:gz") as dst:
        for member in src.getmembers():
            data = src.extractfile(member).read() if member.isfile() else None
            if data is not None:
                data = change(Path(member.name).name, data)
                if data is None:
                    continue
                member.size = len(data)
            dst.addfile(member, io.BytesIO(data) if data is not None else None)
    return out


def flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1 :]


def test_corruption_is_found_and_named(filled):
    archive = make(filled)
    cases = {
        "flipped byte in the dump": (
            rewrite(archive, lambda n, d: flip(d, len(d) // 2) if n == "flexmeasures.dump" else d, "flipped"),
            "flexmeasures.dump does not match its SHA256 checksum",
        ),
        "missing file": (
            rewrite(archive, lambda n, d: None if n == "redis.rdb" else d, "missing"),
            "redis.rdb is listed in SHA256SUMS but missing",
        ),
        "wrong checksum": (
            rewrite(
                archive, lambda n, d: d.replace(d[:8], b"00000000", 1) if n == "SHA256SUMS" else d, "wrongsum"
            ),
            "does not match its SHA256 checksum",
        ),
    }
    truncated = archive.with_name("truncated.tar.gz")
    truncated.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    cases["truncated archive"] = (truncated, "cannot be read whole")
    for label, (path, message) in cases.items():
        result = subprocess.run(
            [str(SCRIPTS / "verify_backup.sh"), str(path)], capture_output=True, text=True
        )
        assert result.returncode != 0, label
        assert message in result.stderr, (label, result.stderr)


def test_a_dump_corrupted_behind_its_checksum_fails_pg_restore(filled):
    archive = make(filled)
    with tempfile.TemporaryDirectory() as work:
        with tarfile.open(archive) as tar:
            tar.extractall(work, filter="data")
        root = next(Path(work).iterdir())
        dump = root / "flexmeasures.dump"
        data = dump.read_bytes()
        dump.write_bytes(flip(data, len(data) - 2000))
        sums = [f"{backup._sha256(f)}  {f.relative_to(root)}" for f in sorted(root.rglob("*")) if f.is_file()
                and f.name != "SHA256SUMS"]  # fmt: skip
        (root / "SHA256SUMS").write_text("\n".join(sums) + "\n")
        bad = archive.with_name("resummed.tar.gz")
        with tarfile.open(bad, "w:gz") as tar:
            tar.add(root, arcname=root.name)
    with pytest.raises(backup.StepFailed) as failed:
        backup.verify(bad)
    assert failed.value.step == "pg_restore flexmeasures.dump"


@pytest.mark.parametrize(
    "broken, step",
    [
        ({"fm_url": "postgresql://postgres@127.0.0.1:9/nothing"}, "flexmeasures database (pg_dump)"),
        ({"redis_url": "redis://127.0.0.1:9/0"}, "redis (redis-cli --rdb)"),
    ],
)
def test_an_unreachable_service_fails_the_named_step_and_leaves_no_archive(filled, broken, step):
    with pytest.raises(backup.StepFailed) as failed:
        make(filled, **broken)
    assert failed.value.step == step
    assert list(filled["dest"].iterdir()) == []  # no archive, no partial file


def test_the_script_names_the_failed_step(filled, monkeypatch, tmp_path):
    env = {
        "CARIFLEX_DATABASE_URL": "postgresql://postgres@127.0.0.1:9/nothing",
        "PATH": "/usr/bin:/bin",
        "CARIFLEX_VAR_DIR": str(tmp_path / "var"),
        "CARIFLEX_ENV_FILE": str(tmp_path / "no.env"),
    }
    result = subprocess.run(
        [str(SCRIPTS / "full_backup.sh"), "--dest", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        env=env,
    )
    assert result.returncode == 1
    assert "create failed at step 'flexmeasures database (pg_dump)'" in result.stderr
    assert not any((tmp_path / "out").glob("*")) if (tmp_path / "out").exists() else True


# --- retention ----------------------------------------------------------------------------------

TODAY = date(2029, 6, 15)


def reference_survivors(stamps: list[datetime], today: date) -> set[datetime]:
    """The policy read the other way round: walk newest first, keep the first backup met in each
    day (last 30 days), ISO week (last 12 weeks) and month; and the newest of all."""
    keep, seen = set(), set()
    this_monday = today - timedelta(days=today.weekday())
    for at in sorted(stamps, reverse=True):
        day = at.date()
        week_monday = day - timedelta(days=day.weekday())
        buckets = []
        if today - timedelta(days=29) <= day:
            buckets.append(("d", day))
        if week_monday > this_monday - timedelta(weeks=12):
            buckets.append(("w", week_monday))
        buckets.append(("m", day.year, day.month))
        for bucket in buckets:
            if bucket not in seen:
                seen.add(bucket)
                keep.add(at)
    if stamps:
        keep.add(max(stamps))
    return keep


moments = st.datetimes(min_value=datetime(2026, 6, 16), max_value=datetime(2029, 6, 15, 23, 59, 59)).map(
    lambda d: d.replace(microsecond=0)
)


@settings(max_examples=60, deadline=None)
@given(st.sets(moments, max_size=80))
def test_retention_keeps_exactly_the_policys_survivors_and_dry_run_deletes_nothing(stamps):
    with tempfile.TemporaryDirectory() as work:
        folder = Path(work)
        for at in stamps:
            (folder / f"{at:%Y%m%d_%H%M%S}.tar.gz").write_bytes(b"x")
        (folder / "notes.txt").write_text("not a backup")
        (folder / ".20290101_000000.tar.gz.partial").write_bytes(b"x")
        before = sorted(p.name for p in folder.iterdir())
        kept, deleted = backup.rotate(folder, dry_run=True, today=TODAY)
        assert sorted(p.name for p in folder.iterdir()) == before
        expected = reference_survivors(list(stamps), TODAY)
        assert {datetime.strptime(p.name[:15], "%Y%m%d_%H%M%S") for p in kept} == expected
        backup.rotate(folder, dry_run=False, today=TODAY)
        left = {p.name for p in folder.iterdir()}
        assert left == {f"{at:%Y%m%d_%H%M%S}.tar.gz" for at in expected} | {
            "notes.txt", ".20290101_000000.tar.gz.partial"}  # fmt: skip


def test_rotate_script_lists_what_it_keeps_and_deletes(tmp_path):
    for name in ("20260101_020000.tar.gz", "20260101_030000.tar.gz", "README"):
        (tmp_path / name).write_bytes(b"x")
    script = str(SCRIPTS / "rotate_backups.sh")
    result = subprocess.run([script, "--dry-run", str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "keep    20260101_030000.tar.gz" in result.stdout
    assert "would delete  20260101_020000.tar.gz" in result.stdout
    assert (tmp_path / "20260101_020000.tar.gz").exists()
