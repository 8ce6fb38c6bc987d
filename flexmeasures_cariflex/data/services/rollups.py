"""15-minute rollups of the latest beliefs, kept current by triggers, for Grafana.

Why: a dashboard over a week of 1-minute data for 30 power sensors reads 300,000 beliefs and
sorts them for "latest belief per event" (~400 ms); the same panel from 15-minute rollups reads
20,000 rows. FlexMeasures' own migrations are not touched: ``flexmeasures cariflex setup`` creates
(idempotently) the table ``cariflex_rollup_15min``, a refresh function and statement-level
triggers on ``timed_belief`` (INSERT, UPDATE, DELETE, with transition tables), and fills the
table from what is already stored when it first creates it.

A row: the average (``value``) and the integral (``energy``: Σ value x the sensor's resolution in
hours, kWh for a kW sensor; only the minutes actually measured count, so a quarter-hour with two
1-minute readings holds two minutes of energy) over a 15-minute bucket of the latest belief per
event (the rules of ``data/queries/latest_beliefs.py``, as the dashboard's raw queries pick it)
of one sensor, from
every source but the scheduler (``kind`` 0; the column leaves room for other kinds), leaving out a
latest belief outside the sensor's physical bounds (``cariflex_sensor_bounds``, see alerts.py).
Schedules are not rolled up: no week-long panel shows them, and a re-plan (28,800 rows) would pay
~0.35 s for it. Each other write to ``timed_belief`` recomputes just the buckets of the sensors it
touched, in the same transaction; raw meter readings (``mqtt_meter`` sensors, 1 s, written once
each by ``meter_ingest``) are added to their buckets instead (``readings`` counts them), since
recomputing a bucket of 900 readings on every batch grew quadratically.
"""

from __future__ import annotations

from flexmeasures.data import db
from sqlalchemy import text

from flexmeasures_cariflex.data.queries.latest_beliefs import BeliefQuery, Sql, latest_beliefs_sql

TABLE = "cariflex_rollup_15min"

# The latest measured belief per event in the function's buckets: the one reader's definition,
# rendered for plpgsql (its variables in place of bind parameters).
_LATEST = latest_beliefs_sql(
    BeliefQuery(
        sensor_ids=Sql("p_sensor_ids"),
        start=Sql("first_bucket"),
        end=Sql("last_bucket"),
        exclude_source_types=["scheduler"],
    ),
    literal=True,
).text

_DDL = f"""
-- Physical bounds per sensor (alerts.py writes them from the fleet): readings outside never
-- enter a rollup, hence neither the statistics nor Grafana's panels.
CREATE TABLE IF NOT EXISTS cariflex_sensor_bounds (
    sensor_id integer PRIMARY KEY REFERENCES sensor (id) ON DELETE CASCADE,
    min_value double precision NOT NULL,
    max_value double precision NOT NULL,
    watched boolean NOT NULL DEFAULT false
);

CREATE TABLE IF NOT EXISTS {TABLE} (
    sensor_id integer NOT NULL REFERENCES sensor (id) ON DELETE CASCADE,
    kind smallint NOT NULL,
    bucket timestamptz NOT NULL,
    value double precision,
    PRIMARY KEY (sensor_id, kind, bucket)
);
-- added after the first release: an older table gains them and is refilled (ensure_rollups)
ALTER TABLE {TABLE} ADD COLUMN IF NOT EXISTS energy double precision;
ALTER TABLE {TABLE} ADD COLUMN IF NOT EXISTS readings integer;

CREATE OR REPLACE FUNCTION cariflex_refresh_rollup(
    p_sensor_ids integer[], p_from timestamptz, p_to timestamptz
) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    first_bucket timestamptz := to_timestamp(floor(extract(epoch FROM p_from) / 900) * 900);
    last_bucket timestamptz := to_timestamp(floor(extract(epoch FROM p_to) / 900) * 900 + 900);
BEGIN
    DELETE FROM {TABLE}
    WHERE sensor_id = ANY (p_sensor_ids) AND bucket >= first_bucket AND bucket < last_bucket;
    INSERT INTO {TABLE} (sensor_id, kind, bucket, value, energy, readings)
    SELECT l.sensor_id, 0::smallint, to_timestamp(floor(extract(epoch FROM l.event_start) / 900) * 900),
        avg(l.event_value), sum(l.event_value * extract(epoch FROM s.event_resolution) / 3600), count(*)
    FROM (
{_LATEST}
    ) l
    JOIN sensor s ON s.id = l.sensor_id
    LEFT JOIN cariflex_sensor_bounds b ON b.sensor_id = l.sensor_id
    WHERE b.sensor_id IS NULL
       OR l.event_value BETWEEN b.min_value - 1e-6 AND b.max_value + 1e-6
    GROUP BY 1, 2, 3
    -- two writers of the same sensor and quarter-hour at once: the later one's average wins,
    -- instead of a unique violation that would fail its write
    ON CONFLICT (sensor_id, kind, bucket) DO UPDATE
    SET value = EXCLUDED.value, energy = EXCLUDED.energy, readings = EXCLUDED.readings;
END
$$;

CREATE OR REPLACE FUNCTION cariflex_rollup_changed() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    r record;
    appended integer[] := '{{}}';
BEGIN
    IF TG_OP = 'INSERT' THEN
        -- Raw meter readings (sensors marked mqtt_meter, 1 s; meter_ingest): appended, one belief
        -- per event, so the new readings are added to their buckets instead of each bucket being
        -- recomputed (900 readings a quarter-hour, recomputed on every batch, grew quadratically:
        -- 2,000-reading batches took 2 s at 1,000 sensors).
        SELECT coalesce(array_agg(id), '{{}}') INTO appended FROM sensor
        WHERE id IN (SELECT DISTINCT sensor_id FROM changed_rows)
          AND (attributes::jsonb ->> 'mqtt_meter') = 'true';
        INSERT INTO {TABLE} AS t (sensor_id, kind, bucket, value, energy, readings)
        SELECT c.sensor_id, 0::smallint, to_timestamp(floor(extract(epoch FROM c.event_start) / 900) * 900),
            avg(c.event_value), sum(c.event_value * extract(epoch FROM s.event_resolution) / 3600), count(*)
        FROM changed_rows c
        JOIN sensor s ON s.id = c.sensor_id
        LEFT JOIN cariflex_sensor_bounds b ON b.sensor_id = c.sensor_id
        WHERE c.sensor_id = ANY (appended)
          AND c.source_id NOT IN (SELECT id FROM data_source WHERE type = 'scheduler')
          AND (b.sensor_id IS NULL OR c.event_value BETWEEN b.min_value - 1e-6 AND b.max_value + 1e-6)
        GROUP BY 1, 2, 3
        ON CONFLICT (sensor_id, kind, bucket) DO UPDATE SET
            value = (t.value * t.readings + EXCLUDED.value * EXCLUDED.readings)
                / (t.readings + EXCLUDED.readings),
            energy = t.energy + EXCLUDED.energy,
            readings = t.readings + EXCLUDED.readings;
    END IF;
    FOR r IN
        SELECT sensor_id, min(event_start) AS low, max(event_start) AS high FROM changed_rows
        WHERE source_id NOT IN (SELECT id FROM data_source WHERE type = 'scheduler')
          AND NOT (sensor_id = ANY (appended))
        GROUP BY 1
    LOOP
        PERFORM cariflex_refresh_rollup(ARRAY[r.sensor_id], r.low, r.high);
    END LOOP;
    RETURN NULL;
END
$$;

"""


def statement_triggers(prefix: str, function: str, events: tuple[str, ...]) -> str:
    """(Re)create AFTER ``events`` statement triggers on ``timed_belief`` that see the rows the
    statement wrote (or deleted) as the transition table ``changed_rows``."""
    parts = []
    for event in events:
        rows = "OLD" if event == "DELETE" else "NEW"
        name = f"{prefix}_{event.lower()}"
        parts.append(
            f"DROP TRIGGER IF EXISTS {name} ON timed_belief;\n"
            f"CREATE TRIGGER {name} AFTER {event} ON timed_belief REFERENCING {rows} TABLE AS changed_rows "
            f"FOR EACH STATEMENT EXECUTE FUNCTION {function}();\n"
        )
    return "".join(parts)


_DDL += statement_triggers("cariflex_rollup", "cariflex_rollup_changed", ("INSERT", "UPDATE", "DELETE"))


def ensure_rollups() -> bool:
    """Create or update the rollup table, function and triggers (caller commits).

    True when the table was new, or lacked the ``energy`` or ``readings`` column: it is then
    (re)filled from the beliefs already stored.
    """
    new = db.session.execute(
        text(
            "SELECT to_regclass(:t) IS NULL OR (SELECT count(*) FROM information_schema.columns "
            "WHERE table_schema = current_schema() AND table_name = :t "
            "AND column_name IN ('energy', 'readings')) < 2"
        ),
        {"t": TABLE},
    ).scalar_one()
    db.session.connection().exec_driver_sql(_DDL)  # plpgsql bodies: no bind-parameter parsing
    if new:
        db.session.execute(
            text(
                "SELECT cariflex_refresh_rollup(array_agg(sensor_id), min(event_start), max(event_start)) "
                "FROM (SELECT sensor_id, min(event_start) AS event_start FROM timed_belief GROUP BY 1 "
                "UNION ALL SELECT sensor_id, max(event_start) FROM timed_belief GROUP BY 1) s "
                "HAVING count(*) > 0"
            )
        )
    return bool(new)
