"""Can FlexMeasures' ``timed_belief`` be partitioned by time (issue 22, point 4)? Tried here on a
database of its own: the table is rebuilt as a range-partitioned one (a partition a month, a
default one), setup re-creates the plugin's triggers on it, and then FlexMeasures' own CLI, the
plugin's scheduler (COPY of 14,400 rows) and the meter ingestion's INSERT ... ON CONFLICT all work
on it, and PostgreSQL reads only the partitions a query's time range needs."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import psycopg2

from cariflex.database_url import to_libpq
from meter_ingest.store import Row, Store
from tests.helpers.openadr_harness import base_env
from tests.integration.test_replan import THIS_HOUR, prices_from_now

PARTITION = """
BEGIN;
ALTER TABLE timed_belief RENAME TO timed_belief_plain;
ALTER TABLE timed_belief_plain RENAME CONSTRAINT timed_belief_pkey TO timed_belief_plain_pkey;
CREATE TABLE timed_belief (LIKE timed_belief_plain INCLUDING DEFAULTS) PARTITION BY RANGE (event_start);
ALTER TABLE timed_belief ADD CONSTRAINT timed_belief_pkey
    PRIMARY KEY (event_start, belief_horizon, cumulative_probability, sensor_id, source_id);
ALTER TABLE timed_belief ADD FOREIGN KEY (sensor_id) REFERENCES sensor (id) ON DELETE CASCADE;
ALTER TABLE timed_belief ADD FOREIGN KEY (source_id) REFERENCES data_source (id);
CREATE INDEX ON timed_belief (sensor_id, event_start);
CREATE INDEX ON timed_belief (event_start, sensor_id, source_id) INCLUDE (belief_horizon);
CREATE TABLE timed_belief_this_month PARTITION OF timed_belief
    FOR VALUES FROM (date_trunc('month', now())) TO (date_trunc('month', now()) + interval '1 month');
CREATE TABLE timed_belief_next_month PARTITION OF timed_belief
    FOR VALUES FROM (date_trunc('month', now()) + interval '1 month')
    TO (date_trunc('month', now()) + interval '2 month');
CREATE TABLE timed_belief_other PARTITION OF timed_belief DEFAULT;
INSERT INTO timed_belief SELECT * FROM timed_belief_plain;
DROP TABLE timed_belief_plain;
COMMIT;
"""


def batch(env, *commands: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "flexmeasures_cariflex.cli.batch", *commands],
        env=env,
        cwd=env["CARIFLEX_VAR_DIR"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def test_timed_belief_partitioned_by_month_keeps_flexmeasures_and_the_plugin_working(new_database, tmp_path):
    url = new_database("cariflex_partitioned")
    env = base_env(tmp_path, CARIFLEX_DATABASE_URL=url)
    batch(env, "db upgrade", "cariflex setup")
    dsn = to_libpq(url)
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(PARTITION)
    event = tmp_path / "prices.json"
    event.write_text(json.dumps(prices_from_now(0)))
    out = batch(
        env,
        "cariflex setup",  # the rollup and alert triggers again, now on the partitioned table
        f"cariflex ingest-event {event} --no-replan",
        f"cariflex schedule --start {THIS_HOUR.isoformat()} --horizon PT12H",
        "db upgrade",  # FlexMeasures' migrations at head: nothing to do, nothing broken
    )
    assert "saved 14400 beliefs" in out, out[-2000:]  # 20 devices x 12 h of 1-minute beliefs

    # the meter ingestion's write path (COPY, then INSERT ... ON CONFLICT DO NOTHING)
    store = Store(dsn)
    meter = store.meter("pv_01_meter")
    source = store.source("gw-partitioned")
    now = datetime.now(UTC).replace(microsecond=0)
    rows = [Row(now - timedelta(seconds=s), meter.id, source, 1.0) for s in range(10)]
    assert store.write(rows) == 10 and store.write(rows) == 0  # written once
    store.close()

    with conn.cursor() as cur:
        cur.execute("SELECT relkind FROM pg_class WHERE relname = 'timed_belief'")
        assert cur.fetchone()[0] == "p"  # still partitioned
        cur.execute("SELECT count(*) FROM timed_belief_this_month")
        this_month = cur.fetchone()[0]
        cur.execute("SELECT count(*) FROM timed_belief")
        assert cur.fetchone()[0] >= 14400 + 10 and this_month > 0
        cur.execute(
            "SELECT sum(energy) FROM cariflex_rollup_15min r JOIN sensor s ON s.id = r.sensor_id "
            "WHERE s.name = 'pv_01_meter'"
        )
        assert abs(cur.fetchone()[0] - 10 / 3600) < 1e-9  # the rollup triggers fire on it
        # a query for one day reads only its partition
        cur.execute(
            "EXPLAIN SELECT * FROM timed_belief WHERE event_start >= %s AND event_start < %s",
            (THIS_HOUR, THIS_HOUR + timedelta(hours=1)),
        )
        plan = " ".join(row[0] for row in cur.fetchall())
        cur.execute("SELECT id FROM sensor WHERE name = 'bat_01_power'")
        battery = cur.fetchone()[0]
    conn.close()
    scanned = {
        name
        for name in ("timed_belief_this_month", "timed_belief_next_month", "timed_belief_other")
        if name in plan
    }
    assert len(scanned) == 1, plan

    # FlexMeasures' own reader, through its CLI
    shown = batch(env, f"show beliefs --sensor {battery} --start {THIS_HOUR.isoformat()} --duration PT1H")
    # the schedule, read back and charted by FlexMeasures
    assert "No data found" not in shown and "kW" in shown, shown[-2000:]
