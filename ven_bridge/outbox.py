"""The VEN's durable outbox: what must reach FlexMeasures, kept on disk until it has.

An embedded SQLite file (WAL mode) under the VEN's state directory. OpenADR handlers only ever
*add* here (a local write of a few milliseconds), never call FlexMeasures; the poster drains it in
order and marks an entry done only once FlexMeasures accepted it. After a crash the entries that
were not yet accepted are simply still here.

Tables:
- ``outbox``: pending entries, in order; ``dedupe_key`` keeps an event modification from being
  queued twice (openleadr calls on_event again for every event after a VEN restart);
- ``done``: keys already delivered, for the same reason;
- ``dead_letter``: entries FlexMeasures refused (4xx), with its answer, never retried;
- ``decisions``: each opt decision with its reason;
- ``state``: registration, last poll, last post, fleet telemetry, for ``cariflex-ven status``.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DONE_KEEP_S = 8 * 24 * 3600

SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    dedupe_key TEXT NOT NULL UNIQUE,
    payload TEXT NOT NULL,
    created_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL DEFAULT 0,
    last_error TEXT
);
CREATE TABLE IF NOT EXISTS done (
    dedupe_key TEXT PRIMARY KEY,
    done_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS dead_letter (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    dedupe_key TEXT NOT NULL,
    payload TEXT NOT NULL,
    created_at REAL NOT NULL,
    failed_at REAL NOT NULL,
    status_code INTEGER,
    response TEXT
);
CREATE TABLE IF NOT EXISTS decisions (
    event_id TEXT NOT NULL,
    modification_number INTEGER NOT NULL,
    opt TEXT NOT NULL,
    reason TEXT NOT NULL,
    decided_at REAL NOT NULL,
    PRIMARY KEY (event_id, modification_number)
);
CREATE TABLE IF NOT EXISTS state (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""


@dataclass
class Entry:
    id: int
    kind: str
    dedupe_key: str
    payload: dict[str, Any]
    created_at: float
    attempts: int


class Outbox:
    """Thread-safe: one SQLite connection per thread, WAL so readers never block the writer."""

    def __init__(self, state_dir: str | Path):
        self.path = Path(state_dir) / "outbox.sqlite"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self.wake = threading.Event()  # set on every add, so the poster does not wait for its timer
        self._conn().executescript(SCHEMA)  # executescript manages its own transaction

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=True)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")  # an accepted entry must survive a power cut
            conn.execute("PRAGMA busy_timeout=30000")
            self._local.conn = conn
        return conn

    @contextmanager
    def _tx(self):
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    # --- queue ----------------------------------------------------------------------------------

    def add(self, kind: str, dedupe_key: str, payload: dict[str, Any]) -> bool:
        """Queue an entry unless the same key is queued or delivered already; True when queued."""
        with self._tx() as conn:
            if conn.execute("SELECT 1 FROM done WHERE dedupe_key = ?", (dedupe_key,)).fetchone():
                return False
            if conn.execute("SELECT 1 FROM dead_letter WHERE dedupe_key = ?", (dedupe_key,)).fetchone():
                return False  # FlexMeasures refused it once; it will again
            cursor = conn.execute(
                "INSERT OR IGNORE INTO outbox (kind, dedupe_key, payload, created_at) VALUES (?, ?, ?, ?)",
                (kind, dedupe_key, json.dumps(payload), time.time()),
            )
            added = cursor.rowcount == 1
        if added:
            self.wake.set()
        return added

    def head(self) -> tuple[Entry | None, float | None]:
        """The oldest entry if it is due, else (None, seconds until it is)."""
        row = (
            self._conn()
            .execute(
                "SELECT id, kind, dedupe_key, payload, created_at, attempts, next_attempt_at "
                "FROM outbox ORDER BY id LIMIT 1"
            )
            .fetchone()
        )
        if row is None:
            return None, None
        wait = row[6] - time.time()
        if wait > 0:
            return None, wait
        return Entry(row[0], row[1], row[2], json.loads(row[3]), row[4], row[5]), None

    def pending(self) -> list[Entry]:
        """Every entry not yet delivered, in order (due or not)."""
        rows = (
            self._conn()
            .execute("SELECT id, kind, dedupe_key, payload, created_at, attempts FROM outbox ORDER BY id")
            .fetchall()
        )
        return [Entry(r[0], r[1], r[2], json.loads(r[3]), r[4], r[5]) for r in rows]

    def mark_done(self, entry: Entry) -> None:
        with self._tx() as conn:
            conn.execute("DELETE FROM outbox WHERE id = ?", (entry.id,))
            conn.execute(
                "INSERT OR REPLACE INTO done (dedupe_key, done_at) VALUES (?, ?)",
                (entry.dedupe_key, time.time()),
            )
            # openleadr re-sends only current events; keys older than any event's life can go.
            conn.execute("DELETE FROM done WHERE done_at < ?", (time.time() - DONE_KEEP_S,))

    def retry_later(self, entry: Entry, delay_s: float, error: str) -> None:
        with self._tx() as conn:
            conn.execute(
                "UPDATE outbox SET attempts = attempts + 1, next_attempt_at = ?, last_error = ? WHERE id = ?",
                (time.time() + delay_s, error[:2000], entry.id),
            )

    def dead_letter(self, entry: Entry, status_code: int | None, response: str) -> None:
        with self._tx() as conn:
            conn.execute("DELETE FROM outbox WHERE id = ?", (entry.id,))
            conn.execute(
                "INSERT INTO dead_letter (kind, dedupe_key, payload, created_at, failed_at, status_code, "
                "response) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    entry.kind,
                    entry.dedupe_key,
                    json.dumps(entry.payload),
                    entry.created_at,
                    time.time(),
                    status_code,
                    response[:4000],
                ),
            )

    # --- decisions and state --------------------------------------------------------------------

    def record_decision(self, event_id: str, modification_number: int, opt: str, reason: str) -> None:
        with self._tx() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO decisions VALUES (?, ?, ?, ?, ?)",
                (event_id, modification_number, opt, reason, time.time()),
            )

    def decisions(self) -> list[dict[str, Any]]:
        rows = (
            self._conn()
            .execute(
                "SELECT event_id, modification_number, opt, reason, decided_at "
                "FROM decisions ORDER BY decided_at"
            )
            .fetchall()
        )
        return [
            dict(zip(("event_id", "modification_number", "opt", "reason", "decided_at"), r, strict=True))
            for r in rows
        ]

    def set_state(self, key: str, value: Any) -> None:
        with self._tx() as conn:
            conn.execute("INSERT OR REPLACE INTO state VALUES (?, ?)", (key, json.dumps(value)))

    def get_state(self, key: str, default: Any = None) -> Any:
        row = self._conn().execute("SELECT value FROM state WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else default

    def status(self) -> dict[str, Any]:
        conn = self._conn()
        depth, oldest = conn.execute("SELECT COUNT(*), MIN(created_at) FROM outbox").fetchone()
        dead = conn.execute("SELECT COUNT(*) FROM dead_letter").fetchone()[0]
        head_error = conn.execute("SELECT last_error, attempts FROM outbox ORDER BY id LIMIT 1").fetchone()
        return {
            "outbox_depth": depth,
            "oldest_pending_age_s": round(time.time() - oldest, 1) if oldest else None,
            "head_attempts": head_error[1] if head_error else 0,
            "head_error": head_error[0] if head_error else None,
            "dead_letters": dead,
            "delivered": conn.execute("SELECT COUNT(*) FROM done").fetchone()[0],
        }

    def dead_letters(self) -> list[dict[str, Any]]:
        rows = (
            self._conn()
            .execute(
                "SELECT id, kind, dedupe_key, failed_at, status_code, response FROM dead_letter ORDER BY id"
            )
            .fetchall()
        )
        return [
            dict(zip(("id", "kind", "key", "failed_at", "status_code", "response"), r, strict=True))
            for r in rows
        ]
