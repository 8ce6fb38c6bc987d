"""The site's own consumption (base load): its typical daily shape, and a forecast from history.

Why a fixed shape: a Martinique commercial site (offices, cold rooms, air conditioning) draws
about 40 % of its peak at night, ramps up from 06:00, peaks in the hot early afternoon and again
in the early evening, with weekends lower. The shape is what the forecast falls back to when the
site has too little history, and what the simulator draws measurements around.

The forecast from history (``forecast_from_history``) is the mean of the same quarter-hour of the
same kind of day (weekday / weekend) over the last weeks, the method EMHASS calls "naive
persistence" widened to several days: for a building load it beats a single-day persistence
because it averages out one-off days, and it needs nothing but the site's own meter. With fewer
than ``MIN_DAYS`` days of history the profile is used.
"""

from __future__ import annotations

from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd

# Fraction of the peak per local hour (00..23) on a weekday; interpolated within the hour.
WEEKDAY_SHAPE = (
    0.42, 0.40, 0.39, 0.39, 0.40, 0.45, 0.58, 0.72, 0.84, 0.90, 0.94, 0.97,
    0.99, 1.00, 0.98, 0.94, 0.90, 0.88, 0.92, 0.90, 0.78, 0.62, 0.52, 0.46,
)  # fmt: skip
WEEKEND_FACTOR = 0.7  # Saturday and Sunday: the same shape, lower
MIN_DAYS = 3
HISTORY_DAYS = 14


def profile_kw(times: pd.DatetimeIndex, peak_kw: float, timezone: str) -> pd.Series:
    """The typical base load (kW) at each time (tz-aware index), without noise."""
    local = times.tz_convert(ZoneInfo(timezone))
    hours = local.hour + local.minute / 60 + local.second / 3600
    shape = np.interp(hours, np.arange(25), (*WEEKDAY_SHAPE, WEEKDAY_SHAPE[0]))
    weekend = np.where(local.dayofweek >= 5, WEEKEND_FACTOR, 1.0)
    return pd.Series(peak_kw * shape * weekend, index=times, dtype=float)


def forecast_from_history(
    history: pd.Series, times: pd.DatetimeIndex, peak_kw: float, timezone: str
) -> tuple[pd.Series, str]:
    """The forecast at ``times`` and the method used ("history" or "profile").

    ``history``: measured kW indexed by UTC time (any resolution); each forecast time gets the
    mean of the history at the same local quarter-hour on days of the same kind (weekday or
    weekend), falling back to the profile where none exists."""
    tz = ZoneInfo(timezone)
    fallback = profile_kw(times, peak_kw, timezone)
    if history.empty:
        return fallback, "profile"
    local = history.index.tz_convert(tz)
    if len(set(local.date)) < MIN_DAYS:
        return fallback, "profile"
    quarters = local.floor("15min")
    key = pd.MultiIndex.from_arrays([quarters.dayofweek >= 5, quarters.hour * 4 + quarters.minute // 15])
    mean = history.groupby(key).mean()
    target = times.tz_convert(tz).floor("15min")
    wanted = pd.MultiIndex.from_arrays([target.dayofweek >= 5, target.hour * 4 + target.minute // 15])
    values = mean.reindex(wanted).to_numpy()
    forecast = pd.Series(np.where(np.isnan(values), fallback.to_numpy(), values), index=times, dtype=float)
    return forecast, "history"
