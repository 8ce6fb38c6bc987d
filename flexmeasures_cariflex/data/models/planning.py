"""The Cariflex fleet scheduler as a FlexMeasures ``Scheduler`` class, so that FlexMeasures' own
trigger (``POST /api/v3_0/assets/<site id>/schedules/trigger`` with just a start and a duration,
or ``flexmeasures add schedule``'s job) plans the fleet exactly as the plugin does.

FlexMeasures registers this class by name (it scans plugins for ``Scheduler`` subclasses) and runs
it for any asset or sensor whose attributes say ``"custom-scheduler": "CariflexFleetScheduler"``:
setup writes that on the site and every asset and sensor below it, so no plain StorageScheduler
ever plans one device of the fleet on its own (ignoring load control, the other devices and the
EVs' timetables, and writing planned SoC onto a measurement sensor).

At trigger time (``deserialize_config``, before the job is queued) a trigger is refused with a
reason (FlexMeasures answers 422) when it is not for the site, carries its own flex-model or
flex-context (the site is planned from its stored ones), or lacks what the schedule needs (prices
for the horizon, the stored fields, a start on the grid). In the worker, ``compute`` runs
``compute_fleet_schedule`` and saves through the plugin's own path (same data source, one COPY),
returning no series for FlexMeasures to save a second time.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from flexmeasures.data.models.planning import Scheduler
from flexmeasures.data.models.time_series import Sensor

from cariflex.fleet import Fleet, load_fleet
from cariflex.site_model import CUSTOM_SCHEDULER
from flexmeasures_cariflex.data.queries.site import SiteNotReady, find_site
from flexmeasures_cariflex.data.services.fleet_schedule import SCHEDULER_SOURCE, ScheduleRefused
from flexmeasures_cariflex.data.services.replan import schedule_on_trigger
from flexmeasures_cariflex.data.services.schedule_inputs import QUARTER, gather_inputs
from flexmeasures_cariflex.data.services.schedule_model import build_model


class CariflexFleetScheduler(Scheduler):
    """All batteries and EV chargers of the Cariflex site in one run (see the module docstring)."""

    __author__ = SCHEDULER_SOURCE[0]
    __version__ = None
    supports_scheduling_an_asset = True

    def __init__(self, *args: Any, asset_or_sensor: Any = None, sensor: Sensor | None = None, **kwargs: Any):
        # FlexMeasures' base class rejects a sensor outright (an exception its trigger endpoints do
        # not turn into a 4xx); a sensor's asset stands in, and deserialize_config refuses with why.
        self.triggered_for = asset_or_sensor if asset_or_sensor is not None else sensor
        target = (
            self.triggered_for.generic_asset if isinstance(self.triggered_for, Sensor) else self.triggered_for
        )
        super().__init__(*args, asset_or_sensor=target, **kwargs)
        self.requested = (self.flex_model, self.flex_context)  # before the stored fields are merged in

    @classmethod
    def get_data_source_info(cls) -> dict:
        """The plugin's own scheduler source (no model or version), so that FlexMeasures' schedule
        endpoint (``GET /api/v3_0/sensors/<id>/schedules/<job>``) finds what ``compute`` saved."""
        return {"name": SCHEDULER_SOURCE[0], "model": None, "version": None}

    def _fleet(self) -> Fleet:
        return load_fleet()

    def deserialize_config(self) -> None:
        """Refuse, with a reason, what cannot be scheduled: FlexMeasures answers the trigger 422."""
        fleet = self._fleet()
        site = find_site(fleet)
        target = self.triggered_for
        if site is None:
            raise ValueError(
                f"site '{fleet.site.name}' does not exist; run `flexmeasures cariflex setup` first"
            )
        if isinstance(target, Sensor) or target is None or target.id != site.id:
            kind = "sensor" if isinstance(target, Sensor) else "asset"
            what = f"{kind} {target.id} ({target.name})" if target is not None else "this trigger"
            raise ValueError(
                f"{what} is planned with the whole Cariflex fleet: trigger the site '{site.name}' "
                f"(POST /api/v3_0/assets/{site.id}/schedules/trigger) instead"
            )
        flex_model, flex_context = self.requested
        if flex_model or flex_context:
            raise ValueError(
                f"site '{site.name}' is planned from its stored flex-context and its devices' stored "
                "flex-models; change those (FlexMeasures' asset page or PATCH /api/v3_0/assets/<id>) "
                "and trigger with only a start and a duration"
            )
        super().deserialize_timing_config()
        notes: list[str] = []
        try:
            # what the run will read, read now (nothing is written): prices for the whole horizon,
            # the stored flex-context and flex-models, the states of charge
            inputs = gather_inputs(fleet, self.start, self.end - self.start, self._resolution(), False, notes)
            build_model(fleet, inputs, notes)
        except (ScheduleRefused, SiteNotReady) as exc:
            raise ValueError(str(exc)) from None
        self.config_deserialized = True

    def _resolution(self) -> timedelta:
        return self.resolution or QUARTER

    def compute(self, *args: Any, **kwargs: Any) -> list[dict]:
        """Plan and save the fleet (the caller, FlexMeasures' ``make_schedule``, commits)."""
        fleet = self._fleet()
        result = schedule_on_trigger(
            fleet, self.start, self.end - self.start, self._resolution(), "FlexMeasures trigger"
        )
        if not result.ok:
            raise ScheduleRefused(result.infeasible)
        self.info = {
            "scheduler": CUSTOM_SCHEDULER,
            "beliefs_saved": result.beliefs_saved,
            "version": result.belief_time.isoformat(),
            "breaches": result.breaches,
            "notes": result.notes,
        }
        return []  # saved already, by the plugin's own path
