"""The VEN's durable outbox: what must reach FlexMeasures, kept on disk until it has.

An embedded SQLite file (WAL mode) under the VEN's state directory. OpenADR handlers only ever
*add* here (a local write of a few milliseconds), never call FlexMeasures; the poster drains it and
marks an entry done only once FlexMeasures accepted it. After a crash the entries that were not yet
accepted are simply still here.

Order is kept per *group*, not globally: all modifications (and signal parts) of one OpenADR event
form one group, all measurements of one sensor another. Within a group entries go in the order
they were queued: a later modification must not overtake an earlier one (the plugin answers a
modification number not newer than its ledger's "already-ingested"), and the last power posted per
device must be its newest. Across groups nothing depends on the order (each event's beliefs carry
its own modification time, each minute of a sensor is its own belief), so the poster takes the
oldest entry that heads its group and is due: an entry waiting for a retry holds back only the
entries of its own group, and one FlexMeasures refused is moved aside to the dead letters.

Tables:
- ``outbox``: pending entries; ``group_key`` orders them (see above), ``dedupe_key`` keeps an event
  modification from being queued twice (openleadr calls on_event again for every event after a VEN
  restart);
- ``done``: keys already delivered, for the same reason;
- ``dead_letter``: entries FlexMeasures refused for their content, with its status code and answer,
  never retried unless an operator requeues them (``cariflex-ven outbox requeue``); a discarded one
  stays (``discarded_at``) only so that its key is not queued again;
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
REASON_MAX_CHARS = 2000  # of FlexMeasures' answer kept with a dead letter or a retried entry
PART_SEPARATOR = "#"  # ven_bridge.policy: a signal's part of an event is "<event_id>#<signal_name>"

SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    dedupe_key TEXT NOT NULL UNIQUE,
    payload TEXT NOT NULL,
    created_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL DEFAULT 0,
    last_error TEXT,
    group_key TEXT
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
    response TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    discarded_at REAL
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

# Columns added after the first release: an older state directory gets them on open.
ADDED_COLUMNS = {
    "outbox": {"group_key": "TEXT"},
    "dead_letter": {"attempts": "INTEGER NOT NULL DEFAULT 0", "discarded_at": "REAL"},
}
INDEXES = """
CREATE INDEX IF NOT EXISTS outbox_group ON outbox (group_key, id);
CREATE INDEX IF NOT EXISTS dead_letter_key ON dead_letter (dedupe_key);
"""
# The first id of each group: a skip scan over the (group_key, id) index, one step per group, so
# that finding the heads costs the same for 10 pending entries as for a day's 50,000.
HEADS = """
WITH RECURSIVE g(k) AS (
    SELECT MIN(group_key) FROM outbox
    UNION ALL
    SELECT (SELECT MIN(group_key) FROM outbox WHERE group_key > g.k) FROM g WHERE g.k IS NOT NULL
)
SELECT (SELECT MIN(id) FROM outbox WHERE group_key = g.k) FROM g WHERE g.k IS NOT NULL
"""


def group_of(kind: str, payload: dict[str, Any]) -> str:
    """The ordering group of an entry: its OpenADR event (all modifications and signal parts), or
    its sensor (all minutes of it). Entries of different groups never wait for one another."""
    if kind == "event":
        event_id = str(payload.get("event_id"))
        part = f"{PART_SEPARATOR}{payload.get('signal_name')}"
        if event_id.endswith(part) and len(event_id) > len(part):
            event_id = event_id[: -len(part)]  # "<event_id>#LOAD_CONTROL" belongs to "<event_id>"
        return f"event:{event_id}"
    if kind == "measurement":
        return f"measurement:{payload.get('sensor')}"
    return kind


def clip(text: str | None, limit: int = REASON_MAX_CHARS) -> str:
    """At most ``limit`` characters of a remote answer, saying when it was cut."""
    text = text or ""
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text) - limit} more characters)"


@dataclass
class Entry:
    id: int
    kind: str
    dedupe_key: str
    payload: dict[str, Any]
    created_at: float
    attempts: int
    group_key: str = ""


ENTRY_COLUMNS = "id, kind, dedupe_key, payload, created_at, attempts, group_key"


def _entry(row: tuple) -> Entry:
    return Entry(row[0], row[1], row[2], json.loads(row[3]), row[4], row[5], row[6] or "")


class Outbox:
    """Thread-safe: one SQLite connection per thread, WAL so readers never block the writer."""

    def __init__(self, state_dir: str | Path):
        self.path = Path(state_dir) / "outbox.sqlite"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self.wake = threading.Event()  # set on every add, so the poster does not wait for its timer
        self._conn().executescript(SCHEMA)  # executescript manages its own transaction
        self._migrate()
        self._conn().executescript(INDEXES)

    def _migrate(self) -> None:
        """Bring a state directory of an earlier version up to this schema (its entries included)."""
        conn = self._conn()
        with self._tx():
            for table, columns in ADDED_COLUMNS.items():
                have = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
                for column, declaration in columns.items():
                    if column not in have:
                        conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")
            rows = conn.execute("SELECT id, kind, payload FROM outbox WHERE group_key IS NULL").fetchall()
            for entry_id, kind, payload in rows:
                group = group_of(kind, json.loads(payload))
                conn.execute("UPDATE outbox SET group_key = ? WHERE id = ?", (group, entry_id))

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

    def add(self, kind: str, dedupe_key: str, payload: dict[str, Any], group: str | None = None) -> bool:
        """Queue an entry unless the same key is queued, delivered or dead already; True when queued.
        ``group``: its ordering group, by default ``group_of(kind, payload)``."""
        group = group or group_of(kind, payload)
        with self._tx() as conn:
            if conn.execute("SELECT 1 FROM done WHERE dedupe_key = ?", (dedupe_key,)).fetchone():
                return False
            if conn.execute("SELECT 1 FROM dead_letter WHERE dedupe_key = ?", (dedupe_key,)).fetchone():
                return False  # FlexMeasures refused it once; it will again (requeue is the operator's)
            cursor = conn.execute(
                "INSERT OR IGNORE INTO outbox (kind, dedupe_key, payload, created_at, group_key) "
                "VALUES (?, ?, ?, ?, ?)",
                (kind, dedupe_key, json.dumps(payload), time.time(), group),
            )
            added = cursor.rowcount == 1
        if added:
            self.wake.set()
        return added

    def heads(self) -> list[tuple[Entry, float]]:
        """The first entry of each group with the time it is due (epoch seconds), oldest first."""
        rows = self._conn().execute(
            f"SELECT {ENTRY_COLUMNS}, next_attempt_at FROM outbox WHERE id IN ({HEADS})"
        )
        return [(_entry(row), row[7]) for row in sorted(rows)]

    def head(self) -> tuple[Entry | None, float | None]:
        """The next entry to post: the oldest that is first in its group and due. Else (None, seconds
        until the first group head is due), or (None, None) when nothing is pending."""
        now, wait = time.time(), None
        for entry, due in self.heads():
            if due <= now:
                return entry, None
            wait = due - now if wait is None else min(wait, due - now)
        return None, wait

    def pending(self) -> list[Entry]:
        """Every entry not yet delivered, in the order queued (due or not)."""
        rows = self._conn().execute(f"SELECT {ENTRY_COLUMNS} FROM outbox ORDER BY id").fetchall()
        return [_entry(r) for r in rows]

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
        """Try the entry again in ``delay_s``; its group waits, the others do not."""
        with self._tx() as conn:
            conn.execute(
                "UPDATE outbox SET attempts = attempts + 1, next_attempt_at = ?, last_error = ? WHERE id = ?",
                (time.time() + delay_s, clip(error), entry.id),
            )

    def dead_letter(self, entry: Entry, status_code: int | None, response: str) -> None:
        """Move a refused entry aside, with FlexMeasures' status code and answer (clipped)."""
        with self._tx() as conn:
            conn.execute("DELETE FROM outbox WHERE id = ?", (entry.id,))
            conn.execute(
                "INSERT INTO dead_letter (kind, dedupe_key, payload, created_at, failed_at, status_code, "
                "response, attempts) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    entry.kind,
                    entry.dedupe_key,
                    json.dumps(entry.payload),
                    entry.created_at,
                    time.time(),
                    status_code,
                    clip(response),
                    entry.attempts + 1,
                ),
            )

    # --- dead letters: the operator's -----------------------------------------------------------

    @staticmethod
    def _match(keys: list[str] | None) -> tuple[str, list[Any]]:
        """SQL condition on live dead letters: every one (``keys`` None), or those whose key equals
        (or, with * ? [, matches as a glob) one of ``keys``, or whose number is ``N`` / ``#N``."""
        if keys is None:
            return "discarded_at IS NULL", []
        terms, args = [], []
        for key in keys:
            if key.lstrip("#").isdigit():
                terms.append("id = ?")
                args.append(int(key.lstrip("#")))
            terms.append("dedupe_key GLOB ?" if any(c in key for c in "*?[") else "dedupe_key = ?")
            args.append(key)
        return f"discarded_at IS NULL AND ({' OR '.join(terms) or '0'})", args

    def requeue(self, keys: list[str] | None = None) -> list[str]:
        """Dead letters back into the outbox (all, or those ``keys`` name), each at the end of its
        group with its attempts reset; the keys requeued."""
        where, args = self._match(keys)
        requeued = []
        with self._tx() as conn:
            rows = conn.execute(
                f"SELECT id, kind, dedupe_key, payload, created_at FROM dead_letter WHERE {where} "
                "ORDER BY id",
                args,
            ).fetchall()
            for dead_id, kind, key, payload, created_at in rows:
                conn.execute("DELETE FROM dead_letter WHERE id = ?", (dead_id,))
                if conn.execute("SELECT 1 FROM done WHERE dedupe_key = ?", (key,)).fetchone():
                    continue
                conn.execute(
                    "INSERT OR IGNORE INTO outbox (kind, dedupe_key, payload, created_at, group_key) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (kind, key, payload, created_at, group_of(kind, json.loads(payload))),
                )
                requeued.append(key)
        if requeued:
            self.wake.set()
        return requeued

    def discard(self, keys: list[str] | None = None) -> list[str]:
        """Give up on dead letters (all, or those ``keys`` name); the keys discarded. Their keys stay
        known for DONE_KEEP_S, so that a VTN re-sending the event does not queue it again."""
        where, args = self._match(keys)
        now = time.time()
        with self._tx() as conn:
            found = conn.execute(f"SELECT dedupe_key FROM dead_letter WHERE {where} ORDER BY id", args)
            keys_found = [row[0] for row in found]
            conn.execute(f"UPDATE dead_letter SET discarded_at = ? WHERE {where}", [now, *args])
            conn.execute("DELETE FROM dead_letter WHERE discarded_at < ?", (now - DONE_KEEP_S,))
        return keys_found

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
        """Depth, groups, entries waiting for a retry (``head_*``: the oldest of them), dead letters."""
        conn = self._conn()
        depth, oldest, groups = conn.execute(
            "SELECT COUNT(*), MIN(created_at), COUNT(DISTINCT group_key) FROM outbox"
        ).fetchone()
        retrying = conn.execute("SELECT COUNT(*) FROM outbox WHERE attempts > 0").fetchone()[0]
        dead = conn.execute("SELECT COUNT(*) FROM dead_letter WHERE discarded_at IS NULL").fetchone()[0]
        head_error = conn.execute(
            "SELECT last_error, attempts FROM outbox WHERE attempts > 0 ORDER BY id LIMIT 1"
        ).fetchone()
        return {
            "outbox_depth": depth,
            "groups": groups,
            "retrying": retrying,
            "oldest_pending_age_s": round(time.time() - oldest, 1) if oldest else None,
            "head_attempts": head_error[1] if head_error else 0,
            "head_error": head_error[0] if head_error else None,
            "dead_letters": dead,
            "delivered": conn.execute("SELECT COUNT(*) FROM done").fetchone()[0],
        }

    def retrying(self, limit: int = 20) -> list[dict[str, Any]]:
        """Entries waiting for a retry, oldest first: key, group, attempts, last error, due in."""
        now = time.time()
        rows = (
            self._conn()
            .execute(
                "SELECT dedupe_key, group_key, attempts, last_error, next_attempt_at FROM outbox "
                "WHERE attempts > 0 ORDER BY id LIMIT ?",
                (limit,),
            )
            .fetchall()
        )
        return [
            {
                "key": r[0],
                "group": r[1],
                "attempts": r[2],
                "last_error": r[3],
                "retry_in_s": round(max(0.0, r[4] - now), 1),
            }
            for r in rows
        ]

    def dead_letters(self) -> list[dict[str, Any]]:
        """Live dead letters (not discarded), oldest first, with the status code and answer."""
        rows = (
            self._conn()
            .execute(
                "SELECT id, kind, dedupe_key, failed_at, status_code, response, attempts FROM dead_letter "
                "WHERE discarded_at IS NULL ORDER BY id"
            )
            .fetchall()
        )
        return [
            dict(
                zip(("id", "kind", "key", "failed_at", "status_code", "response", "attempts"), r, strict=True)
            )
            for r in rows
        ]
