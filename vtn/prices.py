"""Day-ahead prices: where they come from and how tomorrow's ENERGY_PRICE event is published.

Sources, in order: a CSV file the operator maintains (CARIFLEX_VTN_PRICE_FILE), else the
built-in Martinique tariff model below.

The model (EUR/MWh, local hour h of the day):

    price(h) = BASE × shape(h)

    BASE  = 180 EUR/MWh  (order of the island's fuel-oil generation cost; a non-interconnected grid
                          whose own peak plants set the marginal price, ARCHITECTURE.md "Site facts")
    shape = 0.75  00:00-06:00 and 22:00-24:00   night, base-load only
            1.00  06:00-11:00 and 14:00-18:00   day
            0.85  11:00-14:00                   midday solar surplus (6 % of the mix is solar)
            1.50  18:00-22:00                   evening peak, peakers running

It is a planning model, not a published tariff: it gives the scheduler the right shape (cheap
nights and middays, dear evenings) until the operator supplies real prices.
"""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

from sqlalchemy import select

from cariflex.price_file import PriceFileError
from cariflex.price_file import read_price_csv as shared_read_price_csv
from vtn import actions
from vtn.events import PRICE_INTERVALS, SITE_TZ, InputError, price_draft
from vtn.store import Event, Store

log = logging.getLogger("cariflex.vtn.prices")

BASE_PRICE = 180.0


def tariff_shape(hour: int) -> float:
    if hour < 6 or hour >= 22:
        return 0.75
    if 11 <= hour < 14:
        return 0.85
    if 18 <= hour < 22:
        return 1.50
    return 1.00


def tariff_prices() -> list[float]:
    """The Martinique time-of-use model: 24 hourly prices in EUR/MWh."""
    return [round(BASE_PRICE * tariff_shape(h), 2) for h in range(24)]


def read_price_csv(path: str | Path) -> list[str]:
    """The price column of a price file (``cariflex.price_file``), as an operator input error."""
    try:
        return shared_read_price_csv(path)
    except PriceFileError as exc:
        raise InputError(str(exc)) from None


def day_ahead_start(today: date) -> datetime:
    return datetime.combine(today + timedelta(days=1), time(0), SITE_TZ).astimezone(UTC)


def publish_day_ahead(
    store: Store, *, price_file: str | None, now: datetime | None = None, day: date | None = None
) -> dict | None:
    """Publish the price event of ``day`` (default tomorrow) unless it exists already (safe to call
    at every start). A day already begun (catching up today's prices) is allowed to start in the past."""
    now = now or datetime.now(UTC)
    today = now.astimezone(SITE_TZ).date()
    start = day_ahead_start((day or today + timedelta(days=1)) - timedelta(days=1))
    with store.session() as session:
        existing = session.execute(
            select(Event.event_id).where(Event.source == "day-ahead", Event.start == start)
        ).scalar_one_or_none()
    if existing:
        log.info("day-ahead prices already published", extra={"fields": {"event_id": existing}})
        return None
    if price_file:
        prices, name = read_price_csv(price_file), f"price file {price_file}"
    else:
        prices, name = tariff_prices(), "tariff model"
    draft = price_draft(
        start=start, prices=prices, now=now, source="day-ahead", prices_name=name, allow_past=start < now
    )
    assert len(draft.intervals) == PRICE_INTERVALS
    result = actions.create_event(store, draft, now=now)
    log.info(
        "published day-ahead prices",
        extra={"fields": {"event_id": result["event_id"], "start": result["start"], "source": name}},
    )
    return result


def parse_publish_time(text: str | None) -> time | None:
    """'13:00' → 13:00 local; 'off' or empty → no scheduled publication."""
    if not text or text.strip().lower() in ("off", "none", "no"):
        return None
    try:
        hour, minute = (int(part) for part in text.strip().split(":"))
        return time(hour, minute)
    except ValueError:
        raise InputError(f"CARIFLEX_VTN_DAY_AHEAD_TIME {text!r} must be 'HH:MM' or 'off'") from None
