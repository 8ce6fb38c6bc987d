"""The production price: what the grid pays for injected energy, hourly on ``production_price``.

From a flat feed-in tariff (CARIFLEX_FEED_IN_TARIFF, EUR/MWh) or a CSV of 24 hourly prices (the
same format as the VTN's day-ahead price file), stored for one local day with the source
"Feed-in tariff" and the current time as belief time. A changed price asks for a re-plan, like an
OpenADR price does (the same prices again change nothing).
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pandas as pd
from flexmeasures.data import db
from flexmeasures.data.models.generic_assets import GenericAsset
from sqlalchemy import select

from cariflex import inputs, settings
from cariflex.fleet import Fleet
from cariflex.price_file import read_price_csv
from flexmeasures_cariflex.data.queries.site import SiteNotReady, ensure_source, require_site, site_sensors
from flexmeasures_cariflex.data.services.beliefs import changed_sensors, insert_beliefs
from flexmeasures_cariflex.data.services.replan import mark_replan_needed

SOURCE = ("Feed-in tariff", "script")
SENSOR = "production_price"


class PriceRefused(ValueError):
    """Prices that cannot be stored; nothing was written."""


def tariff() -> float:
    """CARIFLEX_FEED_IN_TARIFF, by the rule of ``--tariff`` (``cariflex.inputs.tariff``)."""
    try:
        return inputs.tariff(settings.get("CARIFLEX_FEED_IN_TARIFF"), "CARIFLEX_FEED_IN_TARIFF")
    except inputs.InputError as exc:
        raise PriceRefused(str(exc)) from None


def hourly_prices(csv_file: str | None = None, flat: float | None = None) -> list[float]:
    """24 prices in EUR/MWh from the CSV, the given flat tariff, or the configured one."""
    if csv_file:
        try:
            texts = read_price_csv(csv_file)
        except ValueError as exc:
            raise PriceRefused(str(exc)) from None
        if len(texts) != 24:
            raise PriceRefused(f"price file {csv_file}: {len(texts)} prices; one per hour (24) are needed")
        prices = []
        for hour, text in enumerate(texts):
            try:
                value = float(text)
            except ValueError:
                raise PriceRefused(f"price file {csv_file}: hour {hour}: {text!r} is not a number") from None
            if not -10_000 <= value <= 10_000:
                raise PriceRefused(f"price file {csv_file}: hour {hour}: {value:g} EUR/MWh is implausible")
            prices.append(value)
        return prices
    return [tariff() if flat is None else flat] * 24


def store_production_prices(
    fleet: Fleet, day: date, prices: list[float], now: datetime | None = None
) -> dict:
    """Write the day's 24 prices (caller commits); says how many were written and which changed."""
    now = now or datetime.now(UTC)
    require_site(fleet)
    sensor = site_sensors(fleet).get(SENSOR)
    if sensor is None:
        raise SiteNotReady(f"sensor {SENSOR} missing; run `flexmeasures cariflex setup` first")
    tz = ZoneInfo(fleet.site.timezone)
    start = pd.Timestamp(datetime.combine(day, time(0), tz)).tz_convert("UTC")
    values = pd.Series(prices, index=pd.date_range(start, periods=24, freq="h"), dtype=float)
    changed = bool(changed_sensors({sensor: {t.to_pydatetime(): v for t, v in values.items()}}))
    if not changed:  # the same prices again: nothing new to store or plan for
        return {"day": day.isoformat(), "written": 0, "changed": False, "replan": False}
    source = ensure_source(*SOURCE)
    written = insert_beliefs({sensor: values}, source, now)
    replan = False
    if changed:
        grid_signals = db.session.execute(
            select(GenericAsset).filter_by(name=fleet.grid_signals.name).with_for_update()
        ).scalar_one()
        replan = mark_replan_needed(grid_signals, [SENSOR])
    return {"day": day.isoformat(), "written": written, "changed": changed, "replan": replan}


def default_day(fleet: Fleet, now: datetime | None = None) -> date:
    """Tomorrow, local: prices are stored daily for the next day."""
    return (now or datetime.now(UTC)).astimezone(ZoneInfo(fleet.site.timezone)).date() + timedelta(days=1)
