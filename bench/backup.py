"""Backup, verify and restore times and archive size for a year of 1-minute data.

Fills a fresh database like bench/grafana_queries.py (every sensor of the site, ``--days`` of
1-minute values, COPY), then times ``operations.backup`` create (pg_dump -Fc of FlexMeasures, the
VTN store, Redis, configuration; tar), verify (checksums, pg_restore to /dev/null,
redis-check-rdb) and restore (into another fresh database).

Prints one JSON line. Goal: backup + verify <= 1 s per million beliefs.

    .venv/bin/python bench/backup.py [--days 365]
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import parse_args, print_result  # noqa: E402
from bench.grafana_queries import load  # noqa: E402
from operations import backup, database  # noqa: E402
from tests.helpers.common import database_server_url  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/12")
    args = parse_args(parser, days=2)
    logging.disable(logging.WARNING)
    with tempfile.TemporaryDirectory() as folder:
        server = database_server_url(Path(folder))
        source = database.with_database(server, f"cariflex_bench_{uuid.uuid4().hex[:8]}")
        target = database.with_database(server, f"cariflex_bench_{uuid.uuid4().hex[:8]}")
        database.create_database(source)
        database.create_database(target)
        try:
            sensors, _ = load(source, args.days)
            beliefs = args.days * 1440 * len(sensors)
            vtn = f"sqlite:///{Path(folder) / 'vtn.sqlite'}"
            began = time.perf_counter()
            archive = backup.create(
                Path(folder) / "backups", fm_url=source, vtn_url=vtn, redis_url=args.redis
            )
            backed_up = time.perf_counter() - began
            began = time.perf_counter()
            backup.verify(archive)
            verified = time.perf_counter() - began
            began = time.perf_counter()
            backup.restore(archive, target_db=target, redis_url=None, vtn_target=None, force=True)
            restored = time.perf_counter() - began
            size = archive.stat().st_size
        finally:
            database.drop_database(source)
            database.drop_database(target)
    per_million = (backed_up + verified) / (beliefs / 1e6)
    print_result(
        "backup",
        {
            "beliefs": beliefs,
            "backup_s": round(backed_up, 1),
            "verify_s": round(verified, 1),
            "restore_s": round(restored, 1),
            "archive_mb": round(size / 2**20, 1),
        },
        "backup_plus_verify_s_per_million_beliefs",
        round(per_million, 2),
        1.0,
        days=args.days,
    )


if __name__ == "__main__":
    main()
