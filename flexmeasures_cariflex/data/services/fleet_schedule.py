"""One multi-device schedule for all batteries and EV chargers of the Cariflex site.

A single FlexMeasures ``StorageScheduler`` run on the site asset with a list flex-model (one entry
per device power sensor, found by name through ``site_sensors``), so the site's import capacity
(connection capacity x load-control %) is shared by the whole fleet. Results are saved as beliefs
on the device power sensors (consumption positive, as those sensors declare) by the data source
"Cariflex scheduler", in the caller's transaction (the caller commits).

In three steps, one module each: ``schedule_inputs`` (what is known: prices, the load-control cap,
states of charge), ``schedule_model`` (the flex-model and flex-context), ``schedule_persist``
(saving); this module runs them around the solver and reads the results back (state of charge
per period, EV departure breaches).

Bad input is refused (``ScheduleRefused``) before anything is written; an EV whose departure need
cannot be met is reported in ``breaches``; an infeasible problem is reported in ``infeasible``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import pandas as pd
from flexmeasures.data import db
from flexmeasures.data.models.planning.exceptions import InfeasibleProblemException
from flexmeasures.data.models.planning.storage import StorageScheduler

from cariflex.fleet import EVCharger, Fleet
from flexmeasures_cariflex.data.services.schedule_inputs import QUARTER, ScheduleRefused, gather_inputs
from flexmeasures_cariflex.data.services.schedule_model import build_model, ev_departures
from flexmeasures_cariflex.data.services.schedule_persist import SCHEDULER_SOURCE, persist

__all__ = ["QUARTER", "SCHEDULER_SOURCE", "ScheduleRefused", "compute_fleet_schedule", "schedule_job"]

_TOLERANCE_KWH = 0.05


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


class _FleetStorageScheduler(StorageScheduler):
    """FlexMeasures' StorageScheduler on a flex-model and flex-context that are complete already.

    Its ``collect_flex_config`` merges the stored flex-context and *every* stored flex-model below
    the asset into the request: ``schedule_model`` has merged what it reads from the stored fields
    already, and a fleet that plans a subset of the site's devices (or a device a fleet file no
    longer lists) would get the others added as devices without a sensor (infeasible, as the
    single-device runs of bench/fleet_schedule.py showed)."""

    def collect_flex_config(self) -> None:
        pass


def _solve(site, start, end, resolution, belief_time, flex_model, flex_context) -> list[dict]:
    scheduler = _FleetStorageScheduler(
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


def compute_fleet_schedule(
    fleet: Fleet,
    start: datetime,
    horizon: timedelta = timedelta(hours=24),
    resolution: timedelta = QUARTER,
    dry_run: bool = False,
    shorten_to_prices: bool = False,
    soc_at: datetime | None = None,
) -> FleetScheduleResult:
    """Schedule every battery and EV charger of the site in one StorageScheduler run.

    ``shorten_to_prices``: for re-planning from now, end the horizon where the known consumption
    prices end (day-ahead prices rarely reach 24 h ahead) instead of refusing; a note says so.
    ``soc_at``: read each device's state of charge as of this moment (a re-plan from now: the
    latest measurement, not the one before the current quarter-hour began), else at ``start``.
    """
    began = time.perf_counter()  # compute time: reading the inputs, the model, the solver, the results
    notes: list[str] = []
    inputs = gather_inputs(fleet, start, horizon, resolution, shorten_to_prices, notes, soc_at)
    start_utc, end_utc, grid, tz = inputs.start, inputs.end, inputs.grid, inputs.tz
    result = FleetScheduleResult(start_utc.to_pydatetime(), end_utc.to_pydatetime(), resolution, dry_run)
    result.notes = notes
    result.site_consumption_capacity_kw = inputs.capacity_kw
    model = build_model(fleet, inputs, notes)
    result.flex_model, result.flex_context = model.flex_model, model.flex_context
    kinds, usage = model.kinds, model.usage
    site, sensors, belief_time = inputs.site, inputs.sensors, inputs.belief_time

    try:
        outputs = _solve(
            site, start_utc, end_utc, resolution, belief_time, model.flex_model, model.flex_context
        )
    except InfeasibleProblemException:
        # Hard SoC minima cannot all be met (e.g. a load-control cap below what the EVs' departures
        # need): solve again with soft minima, so the best possible schedule is still made and the
        # shortfall shows up as named breaches below. (Soft from the start would cost ~2x per run.)
        # The driving use after a departure goes too: a car that cannot leave with what it needs
        # cannot use that much on the road either (it would end below empty: infeasible again).
        model = model.with_soft_minima()
        result.flex_model, result.flex_context = model.flex_model, model.flex_context
        usage = model.usage
        result.notes.append(
            "hard SoC minima were infeasible; solved again with soft minima (and no driving use modelled)"
        )
        try:
            outputs = _solve(
                site, start_utc, end_utc, resolution, belief_time, model.flex_model, model.flex_context
            )
        except InfeasibleProblemException as exc:
            result.compute_seconds = time.perf_counter() - began
            result.infeasible = f"the scheduling problem is infeasible ({exc}); nothing was written"
            return result

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
            for moment in ev_departures(device, start_utc, end_utc, tz):
                reached = float(soc.loc[: moment - resolution].iloc[-1]) if moment > start_utc else soc0
                if reached + _TOLERANCE_KWH < need:
                    result.breaches.append(
                        f"{name}: leaves at {moment.tz_convert(tz):%Y-%m-%d %H:%M} with {reached:.1f} kWh, "
                        f"needs {need:g} kWh ({device.departure_soc_pct:g} %): {need - reached:.1f} kWh short"
                    )

    result.compute_seconds = time.perf_counter() - began
    if dry_run:
        return result
    persist(result, inputs)
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
