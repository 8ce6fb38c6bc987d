"""Demand-response verification: did the fleet deliver the load reduction the operator asked for?

Method (the "previous comparable days" baseline, a common DR settlement method):

- An *event* is a run of 15-minute periods in which ``load_control_signal`` (the level the VEN
  stored from OpenADR, % of the site's capacity) is below 100 %. Its cap per period is
  level x the site capacity.
- *Measured* = the fleet's import per period: Σ battery and EV charger power (15-minute means,
  consumption-positive), the load the cap applies to.
- *Baseline* per period = the mean measured import at the same local time of day on the
  previous comparable days: up to ``BASELINE_DAYS`` (5) days of the same kind (Monday-Friday, or
  weekend) within ``LOOKBACK_DAYS`` (20), that had no load-control period at all and have data at
  that time.
- *Requested* = Σ max(0, baseline - cap) x 0.25 h; *delivered* = Σ (baseline - measured) x 0.25 h
  (negative when the fleet drew more than usual); *delivered %* = delivered / requested.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pandas as pd
from flexmeasures.data import db
from sqlalchemy import text

from cariflex.fleet import Fleet
from cariflex.site_model import DR_SENSORS, SOURCE_INSIGHTS
from flexmeasures_cariflex.data.queries.site import ensure_source, site_sensors
from flexmeasures_cariflex.data.services.beliefs import insert_beliefs, latest_values
from flexmeasures_cariflex.data.services.rollups import TABLE as ROLLUP

BASELINE_DAYS = 5
LOOKBACK_DAYS = 20
QUARTER = pd.Timedelta(minutes=15)


class VerificationError(ValueError):
    """A verification that cannot be made (site not set up, bad range); nothing was written."""


def _levels(sensor, start: datetime, end: datetime) -> pd.Series:
    """The load-control level (%) per quarter-hour, latest belief each."""
    levels = latest_values([sensor], start, end)[sensor.id]
    return pd.Series(
        {pd.Timestamp(t).tz_convert("UTC"): v for t, v in levels.items()}, dtype=float
    ).sort_index()


def _fleet_import(sensor_ids: list[int], signs: list[float], start: datetime, end: datetime) -> pd.Series:
    rows = db.session.execute(
        text(
            f"SELECT r.bucket, sum(r.value * s.sign) FROM {ROLLUP} r "
            "JOIN unnest(CAST(:ids AS integer[]), CAST(:signs AS float8[])) AS s(sensor_id, sign) "
            "ON s.sensor_id = r.sensor_id "
            "WHERE r.kind = 0 AND r.bucket >= :a AND r.bucket < :b GROUP BY 1"
        ),
        {"ids": sensor_ids, "signs": signs, "a": start, "b": end},
    ).all()
    return pd.Series({pd.Timestamp(t).tz_convert("UTC"): v for t, v in rows}, dtype=float).sort_index()


def _events(levels: pd.Series) -> list[pd.Series]:
    """Runs of consecutive quarter-hours below 100 %."""
    below = levels[levels < 100 - 1e-9]
    runs: list[list[pd.Timestamp]] = []
    for moment in below.index:
        if runs and moment - runs[-1][-1] == QUARTER:
            runs[-1].append(moment)
        else:
            runs.append([moment])
    return [below.loc[run] for run in runs]


def _weekend(day: date) -> bool:
    return day.weekday() >= 5


def _comparable_days(day: date, capped_days: set[date]) -> list[date]:
    """Earlier days of the same kind (weekday or weekend) without load control, newest first."""
    earlier = (day - timedelta(days=n) for n in range(1, LOOKBACK_DAYS + 1))
    return [d for d in earlier if _weekend(d) == _weekend(day) and d not in capped_days]


def verify_events(fleet: Fleet, since: datetime, until: datetime) -> list[dict[str, Any]]:
    """Every load-control event that started in [since, until), with its verification."""
    if since >= until:
        raise VerificationError(f"the range {since.isoformat()} - {until.isoformat()} is empty")
    sensors = site_sensors(fleet)
    if "load_control_signal" not in sensors:
        raise VerificationError("sensor load_control_signal missing; run `flexmeasures cariflex setup`")
    tz = ZoneInfo(fleet.site.timezone)
    names = [f"{d.name}_power" for d in (*fleet.batteries, *fleet.ev_chargers)]
    ids = [sensors[n].id for n in names if n in sensors]
    signs = [
        1.0 if (sensors[n].attributes or {}).get("consumption_is_positive") else -1.0
        for n in names
        if n in sensors
    ]
    lc = sensors["load_control_signal"]
    history_start = since - timedelta(days=LOOKBACK_DAYS + 1)
    levels = _levels(lc, history_start, until + timedelta(days=1))
    imports = _fleet_import(ids, signs, history_start, until + timedelta(days=1))
    capped_days = {t.astimezone(tz).date() for t in levels[levels < 100 - 1e-9].index}
    results = []
    for event in _events(levels):
        start = event.index[0]
        if not since <= start.to_pydatetime() < until:
            continue
        used_days: set[date] = set()
        baseline, measured, requested, delivered = 0.0, 0.0, 0.0, 0.0
        periods = 0
        for moment, level in event.items():
            local = moment.astimezone(tz)
            same_time = []
            for day in _comparable_days(local.date(), capped_days):  # the period's own local day
                at = pd.Timestamp(datetime.combine(day, local.timetz().replace(tzinfo=None), tz)).tz_convert(
                    "UTC"
                )
                if at in imports.index:
                    same_time.append((day, imports[at]))
                if len(same_time) == BASELINE_DAYS:
                    break
            if not same_time or moment not in imports.index:
                continue
            used_days.update(day for day, _ in same_time)
            base = sum(v for _, v in same_time) / len(same_time)
            cap = level / 100 * fleet.site.capacity_kw
            periods += 1
            baseline += base * 0.25
            measured += imports[moment] * 0.25
            requested += max(0.0, base - cap) * 0.25
            delivered += (base - imports[moment]) * 0.25
        end = event.index[-1] + QUARTER
        results.append(
            {
                "start": start.isoformat(),
                "end": end.isoformat(),
                "level_pct": float(event.min()),
                "cap_kw": round(float(event.min()) / 100 * fleet.site.capacity_kw, 3),
                "periods": len(event),
                "periods_verified": periods,
                "baseline_kwh": round(baseline, 3),
                "measured_kwh": round(measured, 3),
                "requested_kwh": round(requested, 3),
                "delivered_kwh": round(delivered, 3),
                "delivered_pct": round(100 * delivered / requested, 1) if requested > 1e-9 else None,
                "baseline_days": sorted(d.isoformat() for d in used_days),
            }
        )
    return results


def store_verifications(fleet: Fleet, results: list[dict[str, Any]], now: datetime | None = None) -> int:
    """Delivered kWh and % per event (at its start) on the DR sensors, for Grafana (caller commits)."""
    sensors = site_sensors(fleet)
    values = {}
    for name, (key, _) in DR_SENSORS.items():
        if name not in sensors:
            raise VerificationError(f"sensor {name} missing; run `flexmeasures cariflex setup`")
        values[sensors[name]] = pd.Series(
            {pd.Timestamp(r["start"]): r[key] for r in results if r[key] is not None}, dtype=float
        )
    return insert_beliefs(values, ensure_source(*SOURCE_INSIGHTS), now or datetime.now(UTC))
