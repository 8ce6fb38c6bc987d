"""The grid's carbon intensity (gCO2/kWh), the sensor the CO2 statistics read.

Martinique's grid is not interconnected: the island's own plants set the emissions of every
kWh drawn. Without a better source the configured flat value is stored
(``CARIFLEX_CARBON_INTENSITY``, default 525 gCO2eq/kWh: the 2022 annual mean for Martinique,
lowcarbonpower.org; 655 in 2011). A CSV of 24 hourly values (``--csv`` or
``CARIFLEX_CARBON_INTENSITY_FILE``, same layout as a price file with an ``intensity`` column)
gives an hourly profile, e.g. from the grid operator's published mix.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time
from zoneinfo import ZoneInfo

import pandas as pd

from cariflex import settings
from cariflex.fleet import Fleet
from cariflex.price_file import read_price_csv
from cariflex.site_model import SOURCE_INSIGHTS
from flexmeasures_cariflex.data.queries.site import SiteNotReady, ensure_source, site_sensors
from flexmeasures_cariflex.data.services.beliefs import changed_sensors, insert_beliefs

SENSOR = "grid_carbon_intensity"
LIMITS = (0.0, 2000.0)


class CarbonError(ValueError):
    """Values that cannot be stored; nothing was written."""


def default_intensity() -> float:
    try:
        return settings.number("CARIFLEX_CARBON_INTENSITY", *LIMITS, "gCO2/kWh")
    except ValueError as exc:
        raise CarbonError(str(exc)) from None


def hourly_intensity(csv_file: str | None) -> tuple[list[float], str]:
    """24 values (gCO2/kWh) and where they came from."""
    csv_file = csv_file or settings.get("CARIFLEX_CARBON_INTENSITY_FILE")
    if not csv_file:
        return [default_intensity()] * 24, f"flat {default_intensity():g} gCO2/kWh"
    try:
        texts = read_price_csv(csv_file, column="intensity", what="carbon-intensity file")
    except ValueError as exc:
        raise CarbonError(str(exc)) from None
    if len(texts) != 24:
        raise CarbonError(
            f"carbon-intensity file {csv_file}: {len(texts)} values; one per hour (24) are needed"
        )
    values = []
    for hour, text in enumerate(texts):
        try:
            value = float(text)
        except ValueError:
            raise CarbonError(
                f"carbon-intensity file {csv_file}: hour {hour}: {text!r} is not a number"
            ) from None
        if not LIMITS[0] <= value <= LIMITS[1]:
            raise CarbonError(
                f"carbon-intensity file {csv_file}: hour {hour}: {value:g} gCO2/kWh is outside 0..2000"
            )
        values.append(value)
    return values, f"file {csv_file}"


def store_carbon_intensity(
    fleet: Fleet, day: date, csv_file: str | None = None, now: datetime | None = None
) -> dict:
    """Write the day's 24 hourly values (caller commits); unchanged values are not written again."""
    values, origin = hourly_intensity(csv_file)
    sensor = site_sensors(fleet).get(SENSOR)
    if sensor is None:
        raise SiteNotReady(f"sensor {SENSOR} missing; run `flexmeasures cariflex setup` first")
    start = pd.Timestamp(datetime.combine(day, time(0), ZoneInfo(fleet.site.timezone))).tz_convert("UTC")
    series = pd.Series(values, index=pd.date_range(start, periods=24, freq="h"), dtype=float)
    if not changed_sensors({sensor: {t.to_pydatetime(): v for t, v in series.items()}}):
        return {"day": day.isoformat(), "written": 0, "source": origin}
    written = insert_beliefs({sensor: series}, ensure_source(*SOURCE_INSIGHTS), now or datetime.now(UTC))
    return {"day": day.isoformat(), "written": written, "source": origin}
