"""Alerts: readings outside physical bounds, silent sensors, devices not following their schedule.

Each alert is a row of ``cariflex_alert``: when (the event it is about), which sensor, which rule,
the value, a sentence for people, and when it was recorded. Rules:

- ``out_of_bounds``: a reading outside its sensor's physical range (``cariflex_sensor_bounds``,
  written by ``flexmeasures cariflex setup`` from the fleet: irradiance 0..1400 W/m², temperature
  -20..60 °C, wind 0..75 m/s, state of charge 0..capacity, power within the device's limit).
  A statement trigger on ``timed_belief`` records it in the same transaction as the write, and
  the rollups (hence the statistics and Grafana's panels) leave such readings out.
- ``silent``: a measured device sensor (battery and EV power and state of charge) without a new
  reading for more than ``CARIFLEX_ALERT_SILENT_PERIODS`` (default 15) x its resolution.
- ``not_following``: a battery or EV charger whose measured 15-minute mean power is more than
  max(1 kW, 10 % of its limit) away from its schedule, in a period without a load-control cap
  (a cap legitimately overrides the schedule). The schedule is the Cariflex scheduler's (its data
  source, ``schedule_persist.SCHEDULER_SOURCE``): what the CEM follows. Beliefs of any other
  source of type ``scheduler`` (e.g. a schedule someone triggered through FlexMeasures' own API)
  are not compared. An operator's own setpoint (``cariflex-ven
  setpoint``) is not visible here and shows up as ``not_following`` too.

``flexmeasures cariflex alerts check`` runs the last two (the demo and the worker do it with the
hourly refresh); ``flexmeasures cariflex alerts [--since]`` lists them.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from flexmeasures.data import db
from sqlalchemy import text

from cariflex import settings
from cariflex.fleet import Fleet
from cariflex.site_model import SITE_LOAD, meter_sensor
from flexmeasures_cariflex.data.queries.latest_beliefs import BeliefQuery, Sql, latest_beliefs_sql
from flexmeasures_cariflex.data.queries.site import find_source, site_sensors
from flexmeasures_cariflex.data.services.rollups import TABLE as ROLLUP
from flexmeasures_cariflex.data.services.rollups import statement_triggers
from flexmeasures_cariflex.data.services.schedule_persist import SCHEDULER_SOURCE

TABLE = "cariflex_alert"
BOUNDS = "cariflex_sensor_bounds"
RULES = ("out_of_bounds", "silent", "not_following")
WEATHER_BOUNDS = {"irradiance": (0.0, 1400.0), "temperature": (-20.0, 60.0), "wind_speed": (0.0, 75.0)}
FOLLOW_TOLERANCE_KW = 1.0
FOLLOW_TOLERANCE_SHARE = 0.10
_EPS = 1e-6  # float noise on a reading at exactly the limit is not an alert

_DDL = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    id bigserial PRIMARY KEY,
    sensor_id integer NOT NULL REFERENCES sensor (id) ON DELETE CASCADE,
    rule text NOT NULL,
    event_start timestamptz NOT NULL,
    value double precision,
    detail text NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (sensor_id, rule, event_start)
);
CREATE INDEX IF NOT EXISTS {TABLE}_recorded ON {TABLE} (recorded_at);

CREATE OR REPLACE FUNCTION cariflex_alert_bounds() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- One row per sensor and event even when a statement writes several beliefs about it (the
    -- most recent counts): ON CONFLICT may touch a row only once, and a failing trigger would
    -- fail the write it watches.
    INSERT INTO {TABLE} (sensor_id, rule, event_start, value, detail)
    SELECT DISTINCT ON (n.sensor_id, n.event_start) n.sensor_id, 'out_of_bounds', n.event_start,
        n.event_value,
        format('%%s %%s is outside %%s..%%s', s.name, n.event_value, b.min_value, b.max_value)
    FROM changed_rows n
    JOIN {BOUNDS} b ON b.sensor_id = n.sensor_id
    JOIN sensor s ON s.id = n.sensor_id
    WHERE (n.event_value < b.min_value - {_EPS} OR n.event_value > b.max_value + {_EPS})
      AND n.source_id NOT IN (SELECT id FROM data_source WHERE type = 'scheduler')
    ORDER BY n.sensor_id, n.event_start, n.belief_horizon
    ON CONFLICT (sensor_id, rule, event_start) DO UPDATE
        SET value = EXCLUDED.value, detail = EXCLUDED.detail, recorded_at = now();
    RETURN NULL;
END
$$;

""" + statement_triggers("cariflex_alert", "cariflex_alert_bounds", ("INSERT", "UPDATE"))


def bounds(fleet: Fleet) -> dict[str, tuple[float, float, bool]]:
    """Sensor name -> (min, max, watched for silence), from the fleet and the weather limits."""
    out: dict[str, tuple[float, float, bool]] = dict(
        (name, (low, high, False)) for name, (low, high) in WEATHER_BOUNDS.items()
    )
    for pv in fleet.pv:  # production-positive
        out[f"{pv.name}_power"] = (0.0, pv.inverter_limit_kw, False)
        out[meter_sensor(pv.name)] = (0.0, pv.inverter_limit_kw, False)
    if fleet.site.base_load_kw is not None:
        # what the site can draw: the connection, plus what its PV and batteries give it
        most = fleet.site.capacity_kw + sum(p.inverter_limit_kw for p in fleet.pv)
        most += sum(b.power_kw for b in fleet.batteries) + sum(
            e.power_kw for e in fleet.ev_chargers if e.bidirectional
        )
        out[meter_sensor(SITE_LOAD)] = (0.0, most, False)
    for bat in fleet.batteries:  # consumption-positive
        out[f"{bat.name}_power"] = (-bat.power_kw, bat.power_kw, True)
        out[f"{bat.name}_soc"] = (0.0, bat.capacity_kwh, True)
    for ev in fleet.ev_chargers:
        out[f"{ev.name}_power"] = (-ev.power_kw if ev.bidirectional else 0.0, ev.power_kw, True)
        out[f"{ev.name}_soc"] = (0.0, ev.battery_capacity_kwh, True)
    return out


def ensure_alerts(fleet: Fleet) -> int:
    """Create the alert table and trigger, and (re)write the fleet's sensor bounds (caller commits).

    Returns how many sensors' bounds changed; their rollups are recomputed, so a reading that a
    new bound makes invalid leaves the statistics at once."""
    db.session.connection().exec_driver_sql(_DDL)  # '%%': psycopg2 formats even without parameters
    sensors = site_sensors(fleet)
    changed = []
    for name, (low, high, watched) in bounds(fleet).items():
        sensor = sensors.get(name)
        if sensor is None:
            continue
        row = db.session.execute(
            text(
                f"INSERT INTO {BOUNDS} (sensor_id, min_value, max_value, watched) VALUES (:s, :lo, :hi, :w) "
                f"ON CONFLICT (sensor_id) DO UPDATE SET min_value = EXCLUDED.min_value, "
                f"max_value = EXCLUDED.max_value, watched = EXCLUDED.watched "
                f"WHERE ({BOUNDS}.min_value, {BOUNDS}.max_value, {BOUNDS}.watched) "
                f"IS DISTINCT FROM (EXCLUDED.min_value, EXCLUDED.max_value, EXCLUDED.watched) "
                f"RETURNING sensor_id"
            ),
            {"s": sensor.id, "lo": low, "hi": high, "w": watched},
        ).first()
        if row is not None:
            changed.append(sensor.id)
    if changed:
        db.session.execute(
            text(
                "SELECT cariflex_refresh_rollup(CAST(:ids AS integer[]), min(event_start), max(event_start)) "
                "FROM timed_belief WHERE sensor_id = ANY (CAST(:ids AS integer[])) HAVING count(*) > 0"
            ),
            {"ids": changed},
        )
    return len(changed)


def silent_periods() -> int:
    return int(settings.number("CARIFLEX_ALERT_SILENT_PERIODS", 1, 10_000, "periods"))


_SILENT = f"""
WITH last_bucket AS (
    -- the rollups' primary key finds the last measured quarter-hour at once (no scan past the
    -- scheduler's beliefs); the reading itself is then looked up within that quarter-hour only
    SELECT b.sensor_id, s.name, s.event_resolution,
        (SELECT max(r.bucket) FROM {ROLLUP} r
         WHERE r.sensor_id = b.sensor_id AND r.kind = 0 AND r.bucket <= :now) AS bucket
    FROM {BOUNDS} b JOIN sensor s ON s.id = b.sensor_id
    WHERE b.watched AND b.sensor_id = ANY (CAST(:ids AS integer[]))
), last AS (
    SELECT l.sensor_id, l.name, l.event_resolution,
        (SELECT max(tb.event_start) FROM timed_belief tb
         WHERE tb.sensor_id = l.sensor_id AND tb.event_start >= l.bucket
           AND tb.event_start < l.bucket + interval '15 minutes' AND tb.event_start <= :now
           AND tb.source_id NOT IN (SELECT id FROM data_source WHERE type = 'scheduler')) AS last_start
    FROM last_bucket l
)
INSERT INTO {TABLE} (sensor_id, rule, event_start, value, detail)
SELECT sensor_id, 'silent', last_start + event_resolution,
    extract(epoch FROM :now - (last_start + event_resolution)) / 60,
    format('%s: no reading since %s (%s min)', name,
           to_char((last_start + event_resolution) AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI"Z"'),
           round(extract(epoch FROM :now - (last_start + event_resolution)) / 60))
FROM last
WHERE last_start IS NOT NULL AND :now - (last_start + event_resolution) > event_resolution * :periods
ON CONFLICT (sensor_id, rule, event_start) DO UPDATE
    SET value = EXCLUDED.value, detail = EXCLUDED.detail, recorded_at = now()
RETURNING sensor_id
"""

# The latest value per device and event of the Cariflex scheduler (:scheduler, its source id), and
# the latest load-control level: the one reader's definition (data/queries/latest_beliefs.py),
# rendered with this query's parameters.
_SCHEDULED = latest_beliefs_sql(
    BeliefQuery(
        sensor_ids=Sql("CAST(:ids AS integer[])"),
        start=Sql(":since"),
        end=Sql(":until"),
        source_ids=Sql("ARRAY[CAST(:scheduler AS integer)]"),
        cumulative_probability=None,
    ),
    literal=True,
).text
_CAPPED = latest_beliefs_sql(
    BeliefQuery(sensor_ids=Sql("ARRAY[:lc]"), start=Sql(":since"), end=Sql(":until")), literal=True
).text

_NOT_FOLLOWING = f"""
WITH devices AS (
    SELECT * FROM unnest(CAST(:ids AS integer[]), CAST(:limits AS float8[])) AS d(sensor_id, limit_kw)
), scheduled AS (
    SELECT l.sensor_id, to_timestamp(floor(extract(epoch FROM l.event_start) / 900) * 900) AS bucket,
        avg(l.event_value) AS kw
    FROM (
{_SCHEDULED}
    ) l
    GROUP BY 1, 2
), capped AS (
{_CAPPED}
)
INSERT INTO {TABLE} (sensor_id, rule, event_start, value, detail)
SELECT r.sensor_id, 'not_following', r.bucket, r.value,
    format('%s: measured %s kW, scheduled %s kW', s.name,
           round(r.value::numeric, 2), round(sc.kw::numeric, 2))
FROM {ROLLUP} r
JOIN devices d ON d.sensor_id = r.sensor_id
JOIN scheduled sc ON sc.sensor_id = r.sensor_id AND sc.bucket = r.bucket
JOIN sensor s ON s.id = r.sensor_id
LEFT JOIN capped c ON c.event_start = r.bucket
WHERE r.kind = 0 AND r.bucket >= :since AND r.bucket < :until
  AND coalesce(c.event_value, 100) >= 100
  AND abs(r.value - sc.kw) > greatest({FOLLOW_TOLERANCE_KW}, {FOLLOW_TOLERANCE_SHARE} * d.limit_kw)
ON CONFLICT (sensor_id, rule, event_start) DO UPDATE
    SET value = EXCLUDED.value, detail = EXCLUDED.detail, recorded_at = now()
RETURNING sensor_id
"""


def check(
    fleet: Fleet, now: datetime | None = None, lookback: timedelta = timedelta(hours=2)
) -> dict[str, int]:
    """Record ``silent`` and ``not_following`` alerts as of ``now`` (caller commits).

    Only whole 15-minute periods before ``now`` are compared with the schedule."""
    now = now or datetime.now(UTC)
    sensors = site_sensors(fleet)
    watched = [sensors[n].id for n, (_, _, w) in bounds(fleet).items() if w and n in sensors]
    silent = db.session.execute(
        text(_SILENT), {"now": now, "ids": watched, "periods": silent_periods()}
    ).all()
    scheduler = find_source(*SCHEDULER_SOURCE)
    if scheduler is None:  # never scheduled: nothing to follow
        return {"silent": len(silent), "not_following": 0}
    devices = [(f"{d.name}_power", d.power_kw) for d in (*fleet.batteries, *fleet.ev_chargers)]
    until = datetime.fromtimestamp(now.timestamp() // 900 * 900, UTC)
    following = db.session.execute(
        text(_NOT_FOLLOWING),
        {
            "ids": [sensors[n].id for n, _ in devices if n in sensors],
            "limits": [kw for n, kw in devices if n in sensors],
            "lc": sensors["load_control_signal"].id,
            "scheduler": scheduler.id,
            "since": until - lookback,
            "until": until,
        },
    ).all()
    return {"silent": len(silent), "not_following": len(following)}


def list_alerts(since: datetime, rule: str | None = None, limit: int = 1000) -> list[dict[str, Any]]:
    """Alerts recorded since ``since``, newest first."""
    if rule is not None and rule not in RULES:
        raise ValueError(f"rule {rule!r} is not one of {', '.join(RULES)}")
    rows = db.session.execute(
        text(
            f"SELECT a.recorded_at, a.event_start, s.name AS sensor, a.rule, a.value, a.detail "
            f"FROM {TABLE} a JOIN sensor s ON s.id = a.sensor_id "
            f"WHERE a.recorded_at >= :since AND (CAST(:rule AS text) IS NULL OR a.rule = :rule) "
            f"ORDER BY a.recorded_at DESC, a.event_start DESC LIMIT :limit"
        ),
        {"since": since, "rule": rule, "limit": limit},
    ).mappings()
    return [
        {
            "recorded_at": r["recorded_at"].isoformat(),
            "time": r["event_start"].isoformat(),
            "sensor": r["sensor"],
            "rule": r["rule"],
            "value": r["value"],
            "detail": r["detail"],
        }
        for r in rows
    ]
