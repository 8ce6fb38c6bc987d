"""Flexibility from what the database knows: the latest measured fill level and power of each
battery and EV charger, through ``cariflex.flexibility`` (the method is documented there; the VEN
uses the same code with the devices' own S2 status)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pandas as pd
from flexmeasures.data import db

from cariflex import inputs
from cariflex.fleet import Fleet
from cariflex.flexibility import FleetFlexibility, fleet_flexibility
from cariflex.site_model import FLEXIBILITY_SENSORS, SOURCE_INSIGHTS
from flexmeasures_cariflex.data.queries.latest_beliefs import BeliefQuery, last_event_per_sensor
from flexmeasures_cariflex.data.queries.site import ensure_source, site_sensors
from flexmeasures_cariflex.data.services.beliefs import insert_beliefs

FRESH = timedelta(minutes=30)  # an older reading says nothing about now


class FlexibilityError(ValueError):
    """A request that cannot be answered; nothing was written."""


def current(fleet: Fleet, hours: float = 1.0, now: datetime | None = None) -> FleetFlexibility:
    """Flexibility over ``[now, now + hours]`` from the latest readings (at most 30 minutes old)."""
    try:
        hours = inputs.hours(hours)
    except inputs.InputError as exc:
        raise FlexibilityError(str(exc)) from None
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
    # the latest measured event of each sensor in (now - FRESH, now] (the one reader's rules)
    found = last_event_per_sensor(
        db.session,
        BeliefQuery(
            sensor_ids=list(by_id),
            start=now - FRESH + timedelta(microseconds=1),
            end=now,
            end_inclusive=True,
            exclude_source_types=["scheduler"],
        ),
    )
    latest = {by_id[sensor_id]: float(event.event_value) for sensor_id, event in found.items()}
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
