"""Flexibility from what the database knows: the latest measured fill level and power of each
battery and EV charger, through ``cariflex.flexibility`` (the method is documented there; the VEN
uses the same code with the devices' own S2 status)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pandas as pd
from flexmeasures.data import db
from sqlalchemy import text

from cariflex.fleet import Fleet
from cariflex.flexibility import FleetFlexibility, fleet_flexibility
from cariflex.site_model import FLEXIBILITY_SENSORS, SOURCE_INSIGHTS
from flexmeasures_cariflex.data.queries.site import ensure_source, site_sensors
from flexmeasures_cariflex.data.services.beliefs import insert_beliefs

FRESH = timedelta(minutes=30)  # an older reading says nothing about now


class FlexibilityError(ValueError):
    """A request that cannot be answered; nothing was written."""


_LATEST = """
SELECT DISTINCT ON (tb.sensor_id) tb.sensor_id, tb.event_value
FROM timed_belief tb
WHERE tb.sensor_id = ANY (CAST(:ids AS integer[])) AND tb.event_start <= :now AND tb.event_start > :oldest
  AND tb.cumulative_probability = 0.5
  AND tb.source_id NOT IN (SELECT id FROM data_source WHERE type = 'scheduler')
ORDER BY tb.sensor_id, tb.event_start DESC, tb.belief_horizon
"""


def current(fleet: Fleet, hours: float = 1.0, now: datetime | None = None) -> FleetFlexibility:
    """Flexibility over ``[now, now + hours]`` from the latest readings (at most 30 minutes old)."""
    if not 0 < hours <= 48:
        raise FlexibilityError(f"hours must be within 0..48, got {hours:g}")
    now = now or datetime.now(UTC)
    sensors = site_sensors(fleet)
    names = [d.name for d in (*fleet.batteries, *fleet.ev_chargers)]
    wanted = {f"{n}_{kind}": n for n in names for kind in ("soc", "power")}
    missing = [s for s in wanted if s not in sensors]
    if missing:
        raise FlexibilityError(
            f"sensors {', '.join(missing[:3])} ... missing; run `flexmeasures cariflex setup`"
        )
    by_id = {sensors[s].id: s for s in wanted}
    rows = db.session.execute(text(_LATEST), {"ids": list(by_id), "now": now, "oldest": now - FRESH}).all()
    latest = {by_id[sensor_id]: float(value) for sensor_id, value in rows}
    fills = {n: latest.get(f"{n}_soc") for n in names}
    powers = {n: latest.get(f"{n}_power", 0.0) for n in names}
    return fleet_flexibility(fleet, fills, powers, now, hours)


def store_fleet(fleet: Fleet, flex: FleetFlexibility) -> int:
    """The fleet's up/down power at the current quarter-hour, for the Grafana panel (caller commits)."""
    sensors = site_sensors(fleet)
    slot = pd.Timestamp(flex.start).floor("15min")
    figures = {"up_kw": flex.up_kw, "down_kw": flex.down_kw}
    values = {}
    for name, key in FLEXIBILITY_SENSORS.items():
        if name not in sensors:
            raise FlexibilityError(f"sensor {name} missing; run `flexmeasures cariflex setup`")
        values[sensors[name]] = pd.Series({slot: figures[key]}, dtype=float)
    return insert_beliefs(values, ensure_source(*SOURCE_INSIGHTS), flex.start)
