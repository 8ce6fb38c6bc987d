"""The site's base-load forecast, stored as beliefs on ``site_load`` with the time it was made.

What the planner knew stays auditable: each forecast is a belief formed at ``now`` by
"Cariflex forecaster" (FlexMeasures keeps every version; the scheduler reads the latest one
known before its run). The method (``cariflex.load_profile``): the mean of the same quarter-hour
on the same kind of day over the last two weeks of measurements, else the fleet's daily profile.
Why not FlexMeasures' own forecasting: its pipelines train a model per sensor in the worker (tens
of seconds, and a dependency tree the images do not carry) for what a two-week average answers
as well for a building load.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pandas as pd
from flexmeasures.data import db

from cariflex.fleet import Fleet
from cariflex.load_profile import HISTORY_DAYS, forecast_from_history
from cariflex.site_model import SITE_LOAD, SOURCE_FORECASTER
from flexmeasures_cariflex.data.queries.latest_beliefs import BeliefQuery, series_per_sensor
from flexmeasures_cariflex.data.queries.site import SiteNotReady, ensure_source, site_sensors
from flexmeasures_cariflex.data.services.beliefs import insert_beliefs

QUARTER = timedelta(minutes=15)


@dataclass
class LoadForecast:
    start: datetime
    end: datetime
    method: str  # "history" | "profile" | "none" (the fleet models no base load)
    beliefs_saved: int = 0


def forecast_base_load(fleet: Fleet, hours: float = 36, now: datetime | None = None) -> LoadForecast:
    """Forecast [now, now + hours) from the measurements before ``now`` and store it (caller commits)."""
    now = now or datetime.now(UTC)
    start = pd.Timestamp(now).tz_convert("UTC").ceil(QUARTER)
    end = start + pd.Timedelta(hours=hours)
    if fleet.site.base_load_kw is None:
        return LoadForecast(start.to_pydatetime(), end.to_pydatetime(), "none")
    sensor = site_sensors(fleet).get(SITE_LOAD)
    if sensor is None:
        raise SiteNotReady(f"sensor {SITE_LOAD} missing; run `flexmeasures cariflex setup` first")
    measured = BeliefQuery(  # measurements only (beliefs formed at or after their event)
        sensor_ids=[sensor.id],
        start=now - timedelta(days=HISTORY_DAYS),
        end=now,
        horizons_at_most=timedelta(0),
        cumulative_probability=None,
    )
    history = series_per_sensor(db.session, measured)[sensor.id]
    quarters = pd.date_range(start, end, freq=QUARTER, inclusive="left")
    forecast, method = forecast_from_history(history, quarters, fleet.site.base_load_kw, fleet.site.timezone)
    step = sensor.event_resolution or QUARTER
    if step != QUARTER:  # stored at the sensor's own resolution: each quarter's value holds for it
        forecast = forecast.reindex(pd.date_range(start, end, freq=step, inclusive="left"), method="ffill")
    saved = insert_beliefs({sensor: forecast.round(3)}, ensure_source(*SOURCE_FORECASTER), now)
    return LoadForecast(start.to_pydatetime(), end.to_pydatetime(), method, saved)
