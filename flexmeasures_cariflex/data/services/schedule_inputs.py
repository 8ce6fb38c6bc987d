"""What the fleet scheduler reads: the prices, the site's import capacity under load control and
each device's state of charge, all through the one latest-belief reader, known before the run.

Bad input is refused here (``ScheduleRefused``), before anything is computed or written.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pandas as pd
from flexmeasures.data import db
from flexmeasures.data.models.generic_assets import GenericAsset
from flexmeasures.data.models.time_series import Sensor

from cariflex.fleet import Fleet
from flexmeasures_cariflex.data.queries.latest_beliefs import (
    BeliefQuery,
    last_event_per_sensor,
    series_per_sensor,
)
from flexmeasures_cariflex.data.queries.site import require_site, site_sensors
from flexmeasures_cariflex.data.services.schedule_errors import ScheduleRefused
from flexmeasures_cariflex.data.services.stored_flex import StoredFlex, read_stored_flex

__all__ = ["QUARTER", "ScheduleInputs", "ScheduleRefused", "gather_inputs", "latest_socs", "soc_at_start"]

QUARTER = timedelta(minutes=15)
FALLBACK_SOC_PCT = 50.0
SOC_FRESH = timedelta(minutes=2)  # a re-plan from now wants readings of the last minute or so


@dataclass
class ScheduleInputs:
    """Everything the model is built from, on the scheduling grid [start, end)."""

    start: pd.Timestamp  # UTC
    end: pd.Timestamp  # UTC; earlier than asked when the horizon was shortened to the prices
    resolution: timedelta
    grid: pd.DatetimeIndex
    tz: ZoneInfo
    belief_time: pd.Timestamp  # what was known at this moment counts
    site: GenericAsset
    sensors: dict[str, Sensor]
    flex: StoredFlex  # the site's flex-context and the devices' flex-models, as FlexMeasures stores them
    consumption_price: pd.Series  # hourly, covers the horizon
    consumption_price_unit: str
    production_price: pd.Series | None  # None: it does not cover the horizon
    production_price_unit: str
    capacity_kw: pd.Series  # site import capacity per period (on the net import at the connection)
    soc_at: pd.Timestamp  # when the devices' states of charge are read (the start, or now for MPC)
    soc_fresh: timedelta | None  # older SoC readings than this get a note
    # what the site produces and consumes without being scheduled: FlexMeasures reads their
    # latest beliefs known before the run (PV: the weather's forecast; base load: its forecast)
    inflexible_production: list[int]  # PV power sensor ids (production positive)
    inflexible_consumption: list[int]  # the base load sensor id, when the fleet models one


def utc(ts: datetime) -> pd.Timestamp:
    stamp = pd.Timestamp(ts)
    if stamp.tzinfo is None:
        raise ScheduleRefused(f"start {ts} has no timezone; give e.g. 2026-11-25T00:00-04:00")
    return stamp.tz_convert("UTC")


def latest_values(sensor: Sensor, start: pd.Timestamp, end: pd.Timestamp, before: pd.Timestamp) -> pd.Series:
    """Most recent belief per event in [start, end), known before ``before``; indexed by event start.

    The window starts at ``start`` floored to the sensor's resolution, so an event that began
    before ``start`` and still holds counts (as FlexMeasures' search for overlapping events does).
    """
    step = sensor.event_resolution
    query = BeliefQuery(
        sensor_ids=[sensor.id],
        start=(start.floor(step) if step else start).to_pydatetime(),
        end=end.to_pydatetime(),
        known_before=before.to_pydatetime(),
    )
    return series_per_sensor(db.session, query)[sensor.id]


def _missing_periods(values: pd.Series, start: pd.Timestamp, end: pd.Timestamp, step: timedelta) -> list:
    """Contiguous [from, to) periods of the grid start..end (by ``step``) that have no value."""
    grid = pd.date_range(start, end, freq=step, inclusive="left")
    present = set(values.dropna().index)
    missing, run_start, previous = [], None, None
    for slot in grid:
        if slot in present:
            if run_start is not None:
                missing.append((run_start, previous + step))
                run_start = None
            continue
        if run_start is None:
            run_start = slot
        previous = slot
    if run_start is not None:
        missing.append((run_start, previous + step))
    return missing


def latest_socs(sensors: list[Sensor], at: pd.Timestamp) -> dict:
    """Each state-of-charge sensor's latest event at or before ``at``, for all devices in one
    query (sensor id -> LastEvent; sensors without one are left out)."""
    if not sensors:
        return {}
    return last_event_per_sensor(
        db.session,
        BeliefQuery(
            sensor_ids=[sensor.id for sensor in sensors],
            end=at.to_pydatetime(),
            end_inclusive=True,
            cumulative_probability=None,
        ),
    )


def soc_at_start(
    sensor: Sensor | None,
    capacity_kwh: float,
    at: pd.Timestamp,
    name: str,
    notes: list,
    *,
    fresh: timedelta | None = None,
    known: dict | None = None,
):
    """The device's state of charge: its latest belief at or before ``at`` (the plan's start, or
    for a re-plan from now, now itself). ``fresh``: older than this gets a note (MPC wants it at
    most a minute old). ``known``: ``latest_socs`` read already for the whole fleet at ``at``."""
    if sensor is not None:
        if known is None:
            known = latest_socs([sensor], at)
        last = known.get(sensor.id)
        if last is not None:
            value = float(last.event_value)
            age = at - pd.Timestamp(last.event_start)
            if fresh is not None and age > fresh:
                notes.append(f"{name}: latest SoC is {age.total_seconds() / 60:.0f} min old")
            if not 0 <= value <= capacity_kwh:
                clipped = min(max(value, 0.0), capacity_kwh)
                notes.append(
                    f"{name}: latest SoC {value:g} kWh is outside 0..{capacity_kwh:g} kWh; used {clipped:g}"
                )
                value = clipped
            return value
    value = capacity_kwh * FALLBACK_SOC_PCT / 100
    notes.append(f"{name}: no SoC belief before the start; assumed {FALLBACK_SOC_PCT:g} % ({value:g} kWh)")
    return value


def gather_inputs(
    fleet: Fleet,
    start: datetime,
    horizon: timedelta,
    resolution: timedelta,
    shorten_to_prices: bool,
    notes: list,
    soc_at: datetime | None = None,
) -> ScheduleInputs:
    """Check the request and read what the model needs; ``notes`` gets what the user should know."""
    if horizon <= timedelta(0):
        raise ScheduleRefused(f"the horizon must be positive, got {horizon}")
    if resolution <= timedelta(0) or horizon % resolution:
        raise ScheduleRefused(f"the horizon {horizon} must be a whole number of periods of {resolution}")
    start_utc = utc(start)
    if start_utc.value % pd.Timedelta(resolution).value:
        raise ScheduleRefused(f"start {start} is not on a {resolution} boundary")
    end_utc = start_utc + horizon
    tz = ZoneInfo(fleet.site.timezone)
    belief_time = pd.Timestamp.now(tz="UTC")
    grid = pd.date_range(start_utc, end_utc, freq=resolution, inclusive="left")
    if not fleet.batteries and not fleet.ev_chargers:
        raise ScheduleRefused(f"fleet {fleet.source} has no batteries or EV chargers to schedule")

    site = require_site(fleet)
    sensors = site_sensors(fleet)
    wanted = ["load_control_signal"] + [f"{d.name}_power" for d in (*fleet.batteries, *fleet.ev_chargers)]
    lacking = [name for name in wanted if name not in sensors]
    if lacking:
        raise ScheduleRefused(
            f"sensor(s) {', '.join(lacking)} missing; run `flexmeasures cariflex setup` first"
        )
    # What the site's flex-context says: the price sensors, the connection, the inflexible devices.
    flex = read_stored_flex(fleet, site)
    by_id = {sensor.id: sensor for sensor in sensors.values()}

    def context_sensor(key: str) -> Sensor:
        sensor_id = flex.context_sensor(key)
        sensor = by_id.get(sensor_id) or db.session.get(Sensor, sensor_id)
        if sensor is None:
            raise ScheduleRefused(
                f"the flex-context of site '{site.name}' has '{key}' sensor {sensor_id}, which does not exist"
            )
        return sensor

    consumption_sensor = context_sensor("consumption-price")
    production_sensor = (
        context_sensor("production-price") if "production-price" in flex.context else consumption_sensor
    )
    connection_kw = flex.context_quantity("site-consumption-capacity", "kW")

    # Prices: the consumption price must cover the horizon; the production price falls back to it.
    hour = consumption_sensor.event_resolution or timedelta(hours=1)
    price_start = start_utc.floor(hour)
    consumption = latest_values(consumption_sensor, price_start, end_utc, belief_time)
    missing = _missing_periods(consumption, price_start, end_utc, hour)
    if missing and shorten_to_prices and missing[0][0] > start_utc:
        end_utc = max(start_utc + resolution, missing[0][0].floor(resolution))
        horizon = end_utc - start_utc
        grid = pd.date_range(start_utc, end_utc, freq=resolution, inclusive="left")
        notes.append(
            f"horizon shortened to {horizon}: consumption prices are known until "
            f"{end_utc.tz_convert(tz):%Y-%m-%d %H:%M}"
        )
        missing = []
    if missing:
        spans = ", ".join(f"{a.tz_convert(tz):%Y-%m-%d %H:%M}-{b.tz_convert(tz):%H:%M}" for a, b in missing)
        raise ScheduleRefused(
            f"{consumption_sensor.name} has no value for {spans} ({fleet.site.timezone}); "
            "nothing was scheduled or written"
        )
    production: pd.Series | None = latest_values(production_sensor, price_start, end_utc, belief_time)
    if _missing_periods(production, price_start, end_utc, hour):
        production = None
        notes.append(
            f"{production_sensor.name} does not cover the horizon: "
            "the consumption price is used for production too"
        )

    # Site import capacity: connection capacity x load-control %, per period (100 % without beliefs).
    signal = latest_values(sensors["load_control_signal"], start_utc, end_utc, belief_time)
    pct = signal.reindex(grid, method="ffill") if not signal.empty else pd.Series(index=grid, dtype=float)
    signal_step = sensors["load_control_signal"].event_resolution
    if not signal.empty and signal_step:
        # A value only holds for its own event; periods without a belief are 100 %.
        covered = pd.Series(False, index=grid)
        for slot in signal.index:
            covered |= (grid >= slot) & (grid < slot + signal_step)
        pct = pct.where(covered)
    pct = pct.fillna(100.0).clip(lower=0)
    capacity_kw = (pct / 100 * connection_kw).round(6)
    if (pct < 100).any():
        notes.append(
            f"load control: import capped below {connection_kw:g} kW in {(pct < 100).sum()} period(s)"
        )

    pv_ids = flex.context_sensors("inflexible-production")
    load_ids = flex.context_sensors("inflexible-consumption")
    return ScheduleInputs(
        start_utc,
        end_utc,
        resolution,
        grid,
        tz,
        belief_time,
        site,
        sensors,
        flex,
        consumption,
        consumption_sensor.unit,
        production,
        production_sensor.unit,
        capacity_kw,
        utc(soc_at) if soc_at is not None else start_utc,
        SOC_FRESH if soc_at is not None else None,
        pv_ids,
        load_ids,
    )
