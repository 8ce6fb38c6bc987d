"""Saving a computed fleet schedule: beliefs on the device power sensors, by "Cariflex scheduler",
in the caller's transaction (the caller commits)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import pandas as pd

from flexmeasures_cariflex.data.queries.site import ensure_source
from flexmeasures_cariflex.data.services.beliefs import insert_beliefs
from flexmeasures_cariflex.data.services.schedule_inputs import ScheduleInputs

if TYPE_CHECKING:
    from flexmeasures_cariflex.data.services.fleet_schedule import FleetScheduleResult

SCHEDULER_SOURCE = ("Cariflex scheduler", "scheduler")


def persist(result: FleetScheduleResult, inputs: ScheduleInputs) -> None:
    """Store every device's power; the run's belief time is the schedule's version."""
    sensors, start_utc, end_utc, resolution = inputs.sensors, inputs.start, inputs.end, inputs.resolution
    belief_time = inputs.belief_time
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
