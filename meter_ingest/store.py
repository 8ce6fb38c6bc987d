"""The database side of meter ingestion: which sensors take readings, the gateways' data sources,
and one transaction per batch (COPY into a temporary table, then one INSERT into ``timed_belief``
that skips what is there already: a reading the broker delivers again is not written twice).

A reading is stored as a measurement of the second it was taken in: ``event_start`` its time
floored to the sensor's resolution (1 s), ``belief_horizon`` 0 (known when the second ended), so the
same reading always makes the same row.
"""

from __future__ import annotations

import io
import logging
import time
from dataclasses import dataclass
from datetime import datetime

import psycopg2

log = logging.getLogger("cariflex.ingest")

_METERS = """
SELECT s.id, s.name, s.unit, extract(epoch FROM s.event_resolution), b.min_value, b.max_value
FROM sensor s LEFT JOIN cariflex_sensor_bounds b ON b.sensor_id = s.id
WHERE (s.attributes::jsonb ->> 'mqtt_meter') = 'true'
"""
_LOCK = 0x6D65746572  # pg_advisory_xact_lock: one gateway source created at a time


@dataclass(frozen=True)
class Meter:
    id: int
    name: str
    unit: str
    resolution_s: float
    low: float | None
    high: float | None


@dataclass(frozen=True)
class Row:
    event_start: datetime  # UTC, on the sensor's resolution
    sensor_id: int
    source_id: int
    value: float


def event_start(when: datetime, resolution_s: float) -> datetime:
    """The reading's time floored to the sensor's resolution (a second: its second)."""
    step = max(resolution_s, 1e-6)
    epoch = when.timestamp()
    floored = epoch - (epoch % step)
    return datetime.fromtimestamp(floored, tz=when.tzinfo).astimezone(when.tzinfo)


class Store:
    """One connection, used from one thread."""

    def __init__(self, dsn: str):
        self.dsn = dsn
        self.conn: psycopg2.extensions.connection | None = None
        self._meters: dict[str, Meter] = {}
        self._ambiguous: set[str] = set()
        self._meters_read = float("-inf")
        self._sources: dict[str, int] = {}

    def connect(self) -> None:
        if self.conn is None or self.conn.closed:
            self.conn = psycopg2.connect(self.dsn, connect_timeout=5, application_name="cariflex-ingest")
            with self.conn.cursor() as cur:
                cur.execute(
                    "CREATE TEMP TABLE IF NOT EXISTS meter_batch (event_start timestamptz, "
                    "sensor_id integer, source_id integer, event_value double precision) "
                    "ON COMMIT DELETE ROWS"
                )
            self.conn.commit()

    def close(self) -> None:
        if self.conn is not None and not self.conn.closed:
            self.conn.close()
        self.conn = None

    def ping(self) -> bool:
        try:
            self.connect()
            with self.conn.cursor() as cur:
                cur.execute("SELECT 1")
            self.conn.rollback()
            return True
        except psycopg2.Error:
            self.close()
            return False

    def meter(self, name: str, refresh_s: float = 10.0) -> Meter | None:
        """The meter sensor of that name; re-read at most every ``refresh_s`` when one is not
        known (a sensor set up after the start), so a flood of unknown names costs no queries."""
        age = time.monotonic() - self._meters_read
        # an unknown name at most every refresh_s; all of them every minute (a sensor made again,
        # changed bounds)
        if (name not in self._meters and age > refresh_s) or age > 60:
            self._read_meters()
        if name in self._ambiguous:
            return None
        return self._meters.get(name)

    def is_ambiguous(self, name: str) -> bool:
        return name in self._ambiguous

    def _read_meters(self) -> None:
        self.connect()
        with self.conn.cursor() as cur:
            cur.execute(_METERS)  # the bounds table is made by `flexmeasures cariflex setup`
            rows = cur.fetchall()
        self.conn.rollback()
        meters: dict[str, Meter] = {}
        seen: set[str] = set()
        ambiguous: set[str] = set()
        for sensor_id, name, unit, resolution_s, low, high in rows:
            if name in seen:
                ambiguous.add(name)
            seen.add(name)
            meters[name] = Meter(sensor_id, name, unit, float(resolution_s or 1), low, high)
        self._meters, self._ambiguous = meters, ambiguous
        self._meters_read = time.monotonic()

    def source(self, gateway: str) -> int:
        """The data source of a gateway (type 'gateway'), created in the batch's transaction."""
        if gateway in self._sources:
            return self._sources[gateway]
        self.connect()
        find = (
            "SELECT id FROM data_source WHERE name = %s AND type = 'gateway' AND model IS NULL "
            "AND version IS NULL AND user_id IS NULL ORDER BY id LIMIT 1"
        )
        with self.conn.cursor() as cur:
            cur.execute(find, (gateway,))
            found = cur.fetchone()
            if found is None:  # again under the lock: two workers must not make two sources
                cur.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK,))
                cur.execute(find, (gateway,))
                found = cur.fetchone()
            if found is None:
                cur.execute(
                    "INSERT INTO data_source (name, type, attributes) "
                    "VALUES (%s, 'gateway', '{}') RETURNING id",
                    (gateway,),
                )
                found = cur.fetchone()
                log.info("new gateway", extra={"fields": {"gateway": gateway, "source_id": found[0]}})
        # its own transaction: a later rollback (a meter lookup, a failed batch) must not undo it
        self.conn.commit()
        self._sources[gateway] = found[0]
        return found[0]

    def write(self, rows: list[Row]) -> int:
        """One transaction: the rows that are not stored yet; returns how many were new.
        Raises ``psycopg2.Error`` (nothing written) when the database refuses or is away."""
        try:
            self.connect()
            buffer = io.StringIO()
            for row in rows:
                buffer.write(
                    f"{row.event_start.isoformat()}\t{row.sensor_id}\t{row.source_id}\t{row.value!r}\n"
                )
            buffer.seek(0)
            with self.conn.cursor() as cur:
                cur.copy_expert(
                    "COPY meter_batch (event_start, sensor_id, source_id, event_value) FROM STDIN", buffer
                )
                cur.execute(
                    "INSERT INTO timed_belief (event_start, belief_horizon, cumulative_probability, "
                    "event_value, sensor_id, source_id) "
                    "SELECT event_start, interval '0', 0.5, event_value, sensor_id, source_id "
                    "FROM meter_batch ORDER BY sensor_id, event_start ON CONFLICT DO NOTHING"
                )
                written = cur.rowcount
            self.conn.commit()
            return written
        except psycopg2.Error:
            self._sources.clear()  # a source made in the failed transaction does not exist
            self.close()
            raise
