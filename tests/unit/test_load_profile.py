"""The base load's daily shape and its forecast from history (cariflex.load_profile)."""

from __future__ import annotations

import pandas as pd
import pytest

from cariflex.load_profile import WEEKEND_FACTOR, forecast_from_history, profile_kw

TZ = "America/Martinique"


def day(date: str) -> pd.DatetimeIndex:
    return pd.date_range(pd.Timestamp(date, tz=TZ), periods=96, freq="15min").tz_convert("UTC")


def minutes(first: str, last: str) -> pd.DatetimeIndex:
    return pd.date_range(first, last, freq="1min", tz="UTC", inclusive="left")


def test_the_profile_peaks_in_the_afternoon_is_low_at_night_and_lower_at_weekends():
    weekday = profile_kw(day("2026-12-02"), 150, TZ)  # a Wednesday
    local = weekday.index.tz_convert(TZ)
    assert weekday.max() == 150 and 12 <= local[weekday.argmax()].hour <= 14
    assert weekday[local.hour == 3].max() < 0.45 * 150
    saturday = profile_kw(day("2026-12-05"), 150, TZ)
    assert saturday.to_numpy() == pytest.approx(weekday.to_numpy() * WEEKEND_FACTOR)


def test_the_forecast_is_the_profile_until_three_days_of_history_then_follows_history():
    times = day("2026-12-09")
    short = pd.Series(80.0, index=minutes("2026-12-07 12:00", "2026-12-09"))  # two local days
    forecast, method = forecast_from_history(short, times, 150, TZ)
    assert method == "profile" and forecast.equals(profile_kw(times, 150, TZ))
    long = pd.Series(80.0, index=minutes("2026-11-25", "2026-12-09"))
    forecast, method = forecast_from_history(long, times, 150, TZ)
    assert method == "history" and (forecast == 80.0).all()


def test_weekdays_and_weekends_are_forecast_from_their_own_kind_of_day():
    index = pd.date_range("2026-11-23", "2026-12-07", freq="15min", tz=TZ, inclusive="left").tz_convert("UTC")
    history = pd.Series([60.0 if t.dayofweek >= 5 else 100.0 for t in index.tz_convert(TZ)], index=index)
    saturday, _ = forecast_from_history(history, day("2026-12-12"), 150, TZ)
    monday, _ = forecast_from_history(history, day("2026-12-07"), 150, TZ)
    assert (saturday == 60.0).all() and (monday == 100.0).all()
