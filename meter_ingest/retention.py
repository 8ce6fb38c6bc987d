"""Retention of raw meter readings: 1 Hz for ``CARIFLEX_METER_RAW_DAYS`` days (default 7), then
1-minute means.

A meter sensor names its 1-minute sibling in ``downsample_to`` (``pv_01_meter`` -> ``pv_01_power``,
``site_load_meter`` -> ``site_load``): the readings older than the cut-off (the start of a minute)
become one mean per minute and gateway on the sibling, known at the minute's end, and the raw
readings are deleted, in one transaction per meter; a minute already there (a re-run, a mean the
VEN posted from the same meter under the same source) is kept. A meter without a sibling keeps its
raw readings and is reported. Run daily by cron (`cariflex-ingest downsample`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import psycopg2

log = logging.getLogger("cariflex.ingest")

_METERS = """
SELECT m.id, m.name, t.id
FROM sensor m
LEFT JOIN sensor t
    ON t.name = (m.attributes::jsonb ->> 'downsample_to') AND t.generic_asset_id = m.generic_asset_id
WHERE (m.attributes::jsonb ->> 'mqtt_meter') = 'true'
ORDER BY m.name
"""


@dataclass
class Report:
    cutoff: datetime
    minutes: int = 0  # 1-minute means written
    deleted: int = 0  # raw readings removed
    kept_raw: list[str] = field(default_factory=list)  # meters without a 1-minute sibling


def cutoff(keep_days: float, now: datetime | None = None) -> datetime:
    moment = (now or datetime.now(UTC)) - timedelta(days=keep_days)
    return moment.replace(second=0, microsecond=0)


def downsample(dsn: str, keep_days: float, *, now: datetime | None = None, dry_run: bool = False) -> Report:
    if keep_days < 0:
        raise ValueError(f"keep_days must be 0 or more, got {keep_days}")
    report = Report(cutoff(keep_days, now))
    conn = psycopg2.connect(dsn, connect_timeout=10, application_name="cariflex-retention")
    try:
        with conn.cursor() as cur:
            cur.execute(_METERS)
            meters = cur.fetchall()
        conn.rollback()
        for meter_id, name, target_id in meters:
            if target_id is None:
                report.kept_raw.append(name)
                continue
            with conn.cursor() as cur:
                cur.execute(
                    "INSERT INTO timed_belief (event_start, belief_horizon, cumulative_probability, "
                    "event_value, sensor_id, source_id) "
                    "SELECT date_trunc('minute', event_start), interval '0', 0.5, avg(event_value), %s, "
                    "source_id "
                    "FROM timed_belief WHERE sensor_id = %s AND event_start < %s "
                    "GROUP BY 1, source_id ORDER BY 1 ON CONFLICT DO NOTHING",
                    (target_id, meter_id, report.cutoff),
                )
                minutes = cur.rowcount
                cur.execute(
                    "DELETE FROM timed_belief WHERE sensor_id = %s AND event_start < %s",
                    (meter_id, report.cutoff),
                )
                deleted = cur.rowcount
            if dry_run:
                conn.rollback()
            else:
                conn.commit()
            report.minutes += minutes
            report.deleted += deleted
            if deleted:
                log.info(
                    "raw readings down-sampled",
                    extra={"fields": {"meter": name, "minutes": minutes, "raw_deleted": deleted}},
                )
    finally:
        conn.close()
    return report
