"""Beliefs for scheduling tests: prices and other series written as FlexMeasures would store them,
and the scheduler's stored plan read back."""

from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pandas as pd
import timely_beliefs as tb
from flexmeasures.data.models.data_sources import DataSource
from flexmeasures.data.models.time_series import TimedBelief
from flexmeasures.data.utils import save_to_db
from sqlalchemy import select

from flexmeasures_cariflex.data.queries.site import site_sensors

TZ = ZoneInfo("America/Martinique")


def midnight() -> pd.Timestamp:
    """A local midnight two days ahead (in the future, whole horizon after now)."""
    return pd.Timestamp(datetime.now(TZ).date() + timedelta(days=2), tz=TZ)


def write(fleet, sensor_name: str, values: dict[pd.Timestamp, float], source_name="OpenADR VTN") -> None:
    sensor = site_sensors(fleet)[sensor_name]
    from flexmeasures.data import db

    source = db.session.execute(select(DataSource).filter(DataSource.name == source_name)).scalars().first()
    series = pd.Series(values, dtype=float).rename("event_value")
    series.index = pd.DatetimeIndex(series.index).tz_convert("UTC")
    series.index.name = "event_start"
    bdf = tb.BeliefsDataFrame(
        series, sensor=sensor, source=source, belief_time=pd.Timestamp.now(tz="UTC") - pd.Timedelta(hours=1)
    )
    save_to_db(bdf)
    db.session.commit()


def prices(fleet, start: pd.Timestamp, by_hour, hours: int = 24) -> None:
    write(fleet, "consumption_price", {start + pd.Timedelta(hours=h): by_hour(h) for h in range(hours)})


def stored(db, fleet, name: str) -> pd.Series:
    """The scheduler's beliefs on a device power sensor as stored (1-min events), by local time."""
    sensor = site_sensors(fleet)[f"{name}_power"]
    rows = db.session.execute(
        select(TimedBelief.event_start, TimedBelief.event_value)
        .join(DataSource, TimedBelief.source_id == DataSource.id)
        .filter(TimedBelief.sensor_id == sensor.id, DataSource.name == "Cariflex scheduler")
    ).all()
    series = pd.Series({r.event_start: r.event_value for r in rows}, dtype=float).sort_index()
    series.index = pd.DatetimeIndex(series.index).tz_convert(TZ)
    return series


def between(series: pd.Series, start: pd.Timestamp, a: int, b: int) -> pd.Series:
    return series[
        (series.index >= start + pd.Timedelta(hours=a)) & (series.index < start + pd.Timedelta(hours=b))
    ]
