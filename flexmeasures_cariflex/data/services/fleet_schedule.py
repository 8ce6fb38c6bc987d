"""One multi-device schedule for all batteries and EV chargers of the Cariflex site.

A single FlexMeasures ``StorageScheduler`` run on the site asset with a list flex-model (one entry
per device power sensor, found by name through ``site_sensors``), so the site's import capacity
(connection capacity x load-control %) is shared by the whole fleet. Results are saved as beliefs
on the device power sensors (consumption positive, as those sensors declare) by the data source
"Cariflex scheduler", in the caller's transaction (the caller commits).

Bad input is refused (``ScheduleRefused``) before anything is written; an EV whose departure need
cannot be met is reported in ``breaches``; an infeasible problem is reported in ``infeasible``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
from flexmeasures.data import db
from flexmeasures.data.models.planning.exceptions import InfeasibleProblemException
from flexmeasures.data.models.planning.storage import StorageScheduler
from flexmeasures.data.models.time_series import Sensor, TimedBelief
from sqlalchemy import select

from cariflex.fleet import Battery, EVCharger, Fleet
from flexmeasures_cariflex.data.queries.site import ensure_source, require_site, site_sensors
from flexmeasures_cariflex.data.services.beliefs import insert_beliefs

SCHEDULER_SOURCE = ("Cariflex scheduler", "scheduler")
EV_SOC_MIN_PCT = 10.0
EV_SOC_MAX_PCT = 100.0
EV_ROUNDTRIP_EFFICIENCY_PCT = 92.0
FALLBACK_SOC_PCT = 50.0
QUARTER = timedelta(minutes=15)
_TOLERANCE_KWH = 0.05
# FlexMeasures' default tie-breakers add a cost term per device, doubling the solve time for 20
# devices (1.4 s vs 0.7 s); ``_tie_broken`` prices do the same job at no cost.
NO_TIE_BREAKERS = {"prefer-charging-sooner": False, "prefer-curtailing-later": False}
TIE_BREAK = 1e-4  # price units per period: 0.01 EUR/MWh over a day, far below any real price step


class ScheduleRefused(ValueError):
    """Input that cannot be scheduled (nothing is written)."""


@dataclass
class DeviceSchedule:
    name: str
    kind: str  # "battery" | "ev"
    power_kw: pd.Series  # consumption positive, at the scheduling resolution
    soc_at_start_kwh: float
    soc_kwh: pd.Series  # at the end of each period

    @property
    def charged_kwh(self) -> float:
        hours = self.power_kw.index.freq.nanos / 3.6e12 if self.power_kw.index.freq else 0.25
        return float(self.power_kw.clip(lower=0).sum() * hours)

    @property
    def discharged_kwh(self) -> float:
        hours = self.power_kw.index.freq.nanos / 3.6e12 if self.power_kw.index.freq else 0.25
        return float(-self.power_kw.clip(upper=0).sum() * hours)

    @property
    def peak_kw(self) -> float:
        return float(self.power_kw.abs().max()) if len(self.power_kw) else 0.0


@dataclass
class FleetScheduleResult:
    start: datetime
    end: datetime
    resolution: timedelta
    dry_run: bool
    devices: dict[str, DeviceSchedule] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    breaches: list[str] = field(default_factory=list)
    infeasible: str | None = None
    belief_time: datetime | None = None  # of the saved beliefs: the schedule's version
    beliefs_saved: int = 0
    compute_seconds: float = 0.0
    save_seconds: float = 0.0
    site_consumption_capacity_kw: pd.Series | None = None
    flex_model: list[dict] = field(default_factory=list)
    flex_context: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.infeasible is None


def _utc(ts: datetime) -> pd.Timestamp:
    stamp = pd.Timestamp(ts)
    if stamp.tzinfo is None:
        raise ScheduleRefused(f"start {ts} has no timezone; give e.g. 2026-11-25T00:00-04:00")
    return stamp.tz_convert("UTC")


def _iso(ts: pd.Timestamp) -> str:
    return ts.isoformat()


def _latest_values(sensor: Sensor, start: pd.Timestamp, end: pd.Timestamp, before: pd.Timestamp) -> pd.Series:
    """Most recent belief per event in [start, end), known before ``before``; indexed by event start."""
    bdf = sensor.search_beliefs(
        event_starts_after=start,
        event_ends_before=end,
        beliefs_before=before,
        most_recent_beliefs_only=True,
        one_deterministic_belief_per_event=True,
    )
    if bdf.empty:
        return pd.Series(dtype=float)
    series = bdf.reset_index().set_index("event_start")["event_value"].astype(float)
    series.index = pd.DatetimeIndex(series.index).tz_convert("UTC")
    return series[~series.index.duplicated(keep="last")].sort_index()


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


def _segments(series: pd.Series, step: timedelta, unit: str) -> list[dict]:
    """Merge equal consecutive values into [{start, end, value}] segments (FlexMeasures time series)."""
    segments: list[dict] = []
    for slot, value in series.items():
        if segments and segments[-1]["_value"] == value and segments[-1]["_end"] == slot:
            segments[-1]["_end"] = slot + step
            continue
        segments.append({"_start": slot, "_end": slot + step, "_value": value})
    return [
        {"start": _iso(s["_start"]), "end": _iso(s["_end"]), "value": f"{s['_value']:g} {unit}"}
        for s in segments
    ]


def _soc_at_start(sensor: Sensor | None, capacity_kwh: float, start: pd.Timestamp, name: str, notes: list):
    if sensor is not None:
        row = db.session.execute(
            select(TimedBelief.event_value, TimedBelief.event_start)
            .filter(TimedBelief.sensor_id == sensor.id, TimedBelief.event_start <= start)
            .order_by(TimedBelief.event_start.desc(), TimedBelief.belief_horizon.asc())
            .limit(1)
        ).first()
        if row is not None:
            value = float(row.event_value)
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


def _ev_presence(ev: EVCharger, grid: pd.DatetimeIndex, tz: ZoneInfo) -> pd.Series:
    """True for the periods the car is plugged in (local arrival <= t < departure, wrapping midnight)."""
    local = grid.tz_convert(tz)
    minutes = local.hour * 60 + local.minute
    arrive = ev.arrival.hour * 60 + ev.arrival.minute
    depart = ev.departure.hour * 60 + ev.departure.minute
    if arrive < depart:
        present = (minutes >= arrive) & (minutes < depart)
    else:
        present = (minutes >= arrive) | (minutes < depart)
    return pd.Series(present, index=grid)


def _departures(ev: EVCharger, start: pd.Timestamp, end: pd.Timestamp, tz: ZoneInfo) -> list[pd.Timestamp]:
    local_start = start.tz_convert(tz)
    day = local_start.normalize() - pd.Timedelta(days=1)
    found = []
    while day.tz_convert("UTC") < end:
        moment = pd.Timestamp(datetime.combine(day.date(), ev.departure), tz=tz).tz_convert("UTC")
        if start < moment <= end:
            found.append(moment)
        day = day + pd.Timedelta(days=1)
    return found


def _tie_broken(prices: pd.Series, grid: pd.DatetimeIndex, step: timedelta, unit: str) -> list[dict]:
    """The prices per period, each a little (TIE_BREAK per period) dearer than the one before.

    Of equally priced periods the earliest is then the cheapest to charge in: batteries and EVs
    charge as soon as the price allows, not in an arbitrary one of several equal periods, and a
    re-plan acts in the current period. FlexMeasures' own ``prefer-charging-sooner`` does the same
    with a cost term per device, which doubles the solve time for 20 devices.
    """
    per_period = prices.reindex(grid, method="ffill") + TIE_BREAK * np.arange(len(grid))
    return _segments(per_period.round(9), step, unit)


def _driving_usage(ev: EVCharger, departures: list[pd.Timestamp], present: pd.Series) -> pd.Series:
    """kW drawn from the car while it is away, so that it comes back with its usual arrival energy.

    What it uses on the road is taken as its departure need minus its arrival energy, spread over
    the whole time away (of which the horizon may hold only a part).
    """
    drawn = pd.Series(0.0, index=present.index)
    away_hours = 24 - ev.plugged_hours
    used = max(0.0, ev.departure_need_kwh - ev.arrival_kwh)
    if not used or not away_hours:
        return drawn
    for moment in departures:
        later = present.index >= moment
        back = present[later & present.to_numpy()]
        until = back.index[0] if len(back) else present.index[-1] + (present.index[1] - present.index[0])
        drawn[(present.index >= moment) & (present.index < until)] = used / away_hours
    return drawn


def _solve(site, start, end, resolution, belief_time, flex_model, flex_context) -> list[dict]:
    scheduler = StorageScheduler(
        asset_or_sensor=site,
        start=start.to_pydatetime(),
        end=end.to_pydatetime(),
        resolution=resolution,
        belief_time=belief_time.to_pydatetime(),
        flex_model=flex_model,
        flex_context=flex_context,
        return_multiple=True,
    )
    # FlexMeasures' constraint validation (14 pandas.eval checks per device, ~1.2 s for 20 devices)
    # re-checks what the fleet loader and the flex-model built here already guarantee (min < max,
    # departure needs within the charger's reach, power limits); a problem that is still infeasible
    # is reported by the solver.
    return scheduler.compute(skip_validation=True)


def compute_fleet_schedule(  # noqa: C901
    fleet: Fleet,
    start: datetime,
    horizon: timedelta = timedelta(hours=24),
    resolution: timedelta = QUARTER,
    dry_run: bool = False,
    shorten_to_prices: bool = False,
) -> FleetScheduleResult:
    """Schedule every battery and EV charger of the site in one StorageScheduler run.

    ``shorten_to_prices``: for re-planning from now, end the horizon where the known consumption
    prices end (day-ahead prices rarely reach 24 h ahead) instead of refusing; a note says so.
    """
    if horizon <= timedelta(0):
        raise ScheduleRefused(f"the horizon must be positive, got {horizon}")
    if resolution <= timedelta(0) or horizon % resolution:
        raise ScheduleRefused(f"the horizon {horizon} must be a whole number of periods of {resolution}")
    start_utc = _utc(start)
    if start_utc.value % pd.Timedelta(resolution).value:
        raise ScheduleRefused(f"start {start} is not on a {resolution} boundary")
    end_utc = start_utc + horizon
    tz = ZoneInfo(fleet.site.timezone)
    belief_time = pd.Timestamp.now(tz="UTC")
    grid = pd.date_range(start_utc, end_utc, freq=resolution, inclusive="left")
    result = FleetScheduleResult(start_utc.to_pydatetime(), end_utc.to_pydatetime(), resolution, dry_run)
    if not fleet.batteries and not fleet.ev_chargers:
        raise ScheduleRefused(f"fleet {fleet.source} has no batteries or EV chargers to schedule")

    site = require_site(fleet)
    sensors = site_sensors(fleet)
    wanted = ["consumption_price", "production_price", "load_control_signal"]
    wanted += [f"{d.name}_power" for d in (*fleet.batteries, *fleet.ev_chargers)]
    lacking = [name for name in wanted if name not in sensors]
    if lacking:
        raise ScheduleRefused(
            f"sensor(s) {', '.join(lacking)} missing; run `flexmeasures cariflex setup` first"
        )

    # Prices: the consumption price must cover the horizon; the production price falls back to it.
    hour = sensors["consumption_price"].event_resolution or timedelta(hours=1)
    price_start = start_utc.floor(hour)
    consumption = _latest_values(sensors["consumption_price"], price_start, end_utc, belief_time)
    missing = _missing_periods(consumption, price_start, end_utc, hour)
    if missing and shorten_to_prices and missing[0][0] > start_utc:
        end_utc = max(start_utc + resolution, missing[0][0].floor(resolution))
        horizon = end_utc - start_utc
        grid = pd.date_range(start_utc, end_utc, freq=resolution, inclusive="left")
        result.end = end_utc.to_pydatetime()
        result.notes.append(
            f"horizon shortened to {horizon}: consumption prices are known until "
            f"{end_utc.tz_convert(tz):%Y-%m-%d %H:%M}"
        )
        missing = []
    if missing:
        spans = ", ".join(f"{a.tz_convert(tz):%Y-%m-%d %H:%M}-{b.tz_convert(tz):%H:%M}" for a, b in missing)
        raise ScheduleRefused(
            f"consumption_price has no value for {spans} ({fleet.site.timezone}); "
            "nothing was scheduled or written"
        )
    production = _latest_values(sensors["production_price"], price_start, end_utc, belief_time)
    consumption_prices = _tie_broken(consumption, grid, resolution, sensors["consumption_price"].unit)
    if _missing_periods(production, price_start, end_utc, hour):
        production_prices = consumption_prices
        result.notes.append(
            "production_price does not cover the horizon: the consumption price is used for production too"
        )
    else:
        production_prices = _tie_broken(production, grid, resolution, sensors["production_price"].unit)

    # Site import capacity: connection capacity x load-control %, per period (100 % without beliefs).
    signal = _latest_values(sensors["load_control_signal"], start_utc, end_utc, belief_time)
    pct = signal.reindex(grid, method="ffill") if not signal.empty else pd.Series(index=grid, dtype=float)
    signal_step = sensors["load_control_signal"].event_resolution
    if not signal.empty and signal_step:
        # A value only holds for its own event; periods without a belief are 100 %.
        covered = pd.Series(False, index=grid)
        for slot in signal.index:
            covered |= (grid >= slot) & (grid < slot + signal_step)
        pct = pct.where(covered)
    pct = pct.fillna(100.0).clip(lower=0)
    capacity_kw = (pct / 100 * fleet.site.capacity_kw).round(6)
    result.site_consumption_capacity_kw = capacity_kw
    if (pct < 100).any():
        result.notes.append(
            f"load control: import capped below {fleet.site.capacity_kw:g} kW "
            f"in {(pct < 100).sum()} period(s)"
        )

    flex_model: list[dict] = []
    kinds: dict[str, tuple[Battery | EVCharger, float, float]] = {}
    for bat in fleet.batteries:
        soc0 = _soc_at_start(
            sensors.get(f"{bat.name}_soc"), bat.capacity_kwh, start_utc, bat.name, result.notes
        )
        kinds[bat.name] = (bat, soc0, bat.roundtrip_efficiency_pct)
        flex_model.append(
            {
                "sensor": sensors[f"{bat.name}_power"].id,
                "soc-at-start": f"{soc0:g} kWh",
                "soc-min": f"{bat.capacity_kwh * bat.soc_min_pct / 100:g} kWh",
                "soc-max": f"{bat.capacity_kwh * bat.soc_max_pct / 100:g} kWh",
                "power-capacity": f"{bat.power_kw:g} kW",
                "roundtrip-efficiency": f"{bat.roundtrip_efficiency_pct:g}%",
                **NO_TIE_BREAKERS,
            }
        )
    usage: dict[str, pd.Series] = {}
    for ev in fleet.ev_chargers:
        cap = ev.battery_capacity_kwh
        present = _ev_presence(ev, grid, tz)
        if present.iloc[0]:
            soc0 = _soc_at_start(sensors.get(f"{ev.name}_soc"), cap, start_utc, ev.name, result.notes)
        else:
            soc0 = ev.arrival_kwh  # away now: the car comes back with what it usually brings
        kinds[ev.name] = (ev, soc0, EV_ROUNDTRIP_EFFICIENCY_PCT)
        available = _segments(present.astype(float) * ev.power_kw, resolution, "kW")
        departures = _departures(ev, start_utc, end_utc, tz)
        minima = [
            {"datetime": _iso(moment), "value": f"{ev.departure_need_kwh:g} kWh"} for moment in departures
        ]
        entry = {
            "sensor": sensors[f"{ev.name}_power"].id,
            "soc-at-start": f"{soc0:g} kWh",
            "soc-min": f"{min(cap * EV_SOC_MIN_PCT / 100, soc0):g} kWh",
            "soc-max": f"{cap * EV_SOC_MAX_PCT / 100:g} kWh",
            "power-capacity": f"{ev.power_kw:g} kW",
            "consumption-capacity": available,
            "production-capacity": available if ev.bidirectional else "0 kW",
            "roundtrip-efficiency": f"{EV_ROUNDTRIP_EFFICIENCY_PCT:g}%",
            **NO_TIE_BREAKERS,
        }
        if minima:
            entry["soc-minima"] = minima
        driving = _driving_usage(ev, departures, present)
        if driving.any():
            usage[ev.name] = driving
            entry["soc-usage"] = [_segments(driving, resolution, "kW")]
        flex_model.append(entry)

    flex_context = {
        "consumption-price": consumption_prices,
        "production-price": production_prices,
        "site-consumption-capacity": _segments(capacity_kw, resolution, "kW"),
        "site-production-capacity": f"{fleet.site.capacity_kw:g} kW",
        # Site limits are hard: a load-control cap is an obligation.
        "relax-site-capacity-constraints": False,
        "relax-soc-constraints": False,
    }
    result.flex_model, result.flex_context = flex_model, flex_context

    began = time.perf_counter()
    try:
        outputs = _solve(site, start_utc, end_utc, resolution, belief_time, flex_model, flex_context)
    except InfeasibleProblemException:
        # Hard SoC minima cannot all be met (e.g. a load-control cap below what the EVs' departures
        # need): solve again with soft minima, so the best possible schedule is still made and the
        # shortfall shows up as named breaches below. (Soft from the start would cost ~2x per run.)
        # The driving use after a departure goes too: a car that cannot leave with what it needs
        # cannot use that much on the road either (it would end below empty: infeasible again).
        result.flex_context = flex_context = {**flex_context, "relax-soc-constraints": True}
        result.flex_model = flex_model = [
            {k: v for k, v in entry.items() if k != "soc-usage"} for entry in flex_model
        ]
        usage.clear()
        result.notes.append(
            "hard SoC minima were infeasible; solved again with soft minima (and no driving use modelled)"
        )
        try:
            outputs = _solve(site, start_utc, end_utc, resolution, belief_time, flex_model, flex_context)
        except InfeasibleProblemException as exc:
            result.compute_seconds = time.perf_counter() - began
            result.infeasible = f"the scheduling problem is infeasible ({exc}); nothing was written"
            return result
    result.compute_seconds = time.perf_counter() - began

    by_sensor_id = {
        o["sensor"].id: o for o in outputs if o.get("name") == "storage_schedule" and "sensor" in o
    }
    hours = resolution / timedelta(hours=1)
    for name, (device, soc0, rte) in kinds.items():
        sensor = sensors[f"{name}_power"]
        output = by_sensor_id.get(sensor.id)
        if output is None:
            result.infeasible = f"the scheduler returned no schedule for {name}; nothing was written"
            return result
        # The scheduler returns consumption-positive values in the sensor's unit (kW).
        power = output["data"].astype(float).reindex(grid).fillna(0.0)
        power.index.freq = pd.tseries.frequencies.to_offset(resolution)
        eta = math.sqrt(rte / 100)
        delta = power.clip(lower=0) * hours * eta + power.clip(upper=0) * hours / eta
        if name in usage:
            delta = delta - usage[name] * hours
        soc = soc0 + delta.cumsum()
        result.devices[name] = DeviceSchedule(
            name, "ev" if isinstance(device, EVCharger) else "battery", power, soc0, soc
        )
        if isinstance(device, EVCharger):
            need = device.departure_need_kwh
            for moment in _departures(device, start_utc, end_utc, tz):
                reached = float(soc.loc[: moment - resolution].iloc[-1]) if moment > start_utc else soc0
                if reached + _TOLERANCE_KWH < need:
                    result.breaches.append(
                        f"{name}: leaves at {moment.tz_convert(tz):%Y-%m-%d %H:%M} with {reached:.1f} kWh, "
                        f"needs {need:g} kWh ({device.departure_soc_pct:g} %): {need - reached:.1f} kWh short"
                    )

    if dry_run:
        return result

    began = time.perf_counter()
    source = ensure_source(*SCHEDULER_SOURCE)
    values = {}
    for name, schedule in result.devices.items():
        sensor = sensors[f"{name}_power"]
        # Store as the sensor declares: consumption-positive sensors take the values as they are.
        sign = 1 if sensor.get_attribute("consumption_is_positive", False) else -1
        series = sign * schedule.power_kw
        step = sensor.event_resolution or resolution
        if step != resolution:
            # Stored at the sensor's own resolution (1 min): each 15-min value holds for its period.
            series = series.reindex(
                pd.date_range(start_utc, end_utc, freq=step, inclusive="left"), method="ffill"
            )
        values[sensor] = series
    # A new belief time per run: every row is new (see beliefs.insert_beliefs for why not save_to_db).
    result.beliefs_saved = insert_beliefs(values, source, belief_time, fresh=True)
    result.belief_time = belief_time.to_pydatetime()
    result.save_seconds = time.perf_counter() - began
    return result


def schedule_job(start_iso: str, horizon_s: float, fleet_file: str | None = None) -> dict:
    """``flexmeasures cariflex schedule --as-job`` in FlexMeasures' worker (inside its app context):
    compute, save and commit; the job's result is a summary (an infeasible run fails the job)."""
    from cariflex.fleet import load_fleet

    result = compute_fleet_schedule(
        load_fleet(fleet_file), datetime.fromisoformat(start_iso), horizon=timedelta(seconds=horizon_s)
    )
    if not result.ok:
        db.session.rollback()
        raise RuntimeError(result.infeasible)
    db.session.commit()
    return {
        "start": result.start.isoformat(),
        "end": result.end.isoformat(),
        "beliefs_saved": result.beliefs_saved,
        "breaches": result.breaches,
        "notes": result.notes,
    }
