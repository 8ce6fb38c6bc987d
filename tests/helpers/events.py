"""Normalised OpenADR events as the VEN posts them, and what the plugin stored of them."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from flexmeasures.data.models.generic_assets import GenericAsset
from flexmeasures.data.models.time_series import TimedBelief
from sqlalchemy import func, select

from tests.helpers.common import call

HOUR = timedelta(hours=1)


# Tomorrow 00:00 in Martinique (UTC-4, no DST), so nothing here is older than the ledger keeps.
DAY = datetime.now(UTC).replace(hour=4, minute=0, second=0, microsecond=0) + timedelta(days=1)


MODIFIED = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=3)  # belief times lie in the past


PRICES = [round(0.08 + 0.005 * h, 3) for h in range(24)]  # EUR/kWh


LEVELS = [0.6, 0.5, 0.4, 0.7]


LC_START = DAY + timedelta(hours=18)  # 18:00 local


def iso(moment: datetime) -> str:
    return moment.isoformat()


def price_event(event_id="evt-price-1", number=0, modified=MODIFIED, prices=PRICES, **changes):
    event = {
        "event_id": event_id,
        "modification_number": number,
        "status": "far",
        "modification_date_time": iso(modified),
        "signal_name": "ENERGY_PRICE",
        "signal_type": "price",
        "item_base": {"name": "currencyPerKWh", "unit": "EUR", "scale": "none"},
        "intervals": [
            {"start": iso(DAY + h * HOUR), "duration": "PT1H", "value": value}
            for h, value in enumerate(prices)
        ],
    }
    return {**event, **changes}


def lc_event(
    event_id="evt-lc-1", number=0, modified=MODIFIED, levels=LEVELS, start=LC_START, status="far", **changes
):
    event = {
        "event_id": event_id,
        "modification_number": number,
        "status": status,
        "modification_date_time": iso(modified),
        "signal_name": "LOAD_CONTROL",
        "signal_type": "x-loadControlCapacity",
        "item_base": None,
        "intervals": [
            {"start": iso(start + i * HOUR), "duration": "PT1H", "value": level}
            for i, level in enumerate(levels)
        ],
    }
    return {**event, **changes}


def belief_count(fm_db) -> int:
    fm_db.session.expire_all()
    return fm_db.session.execute(select(func.count()).select_from(TimedBelief)).scalar_one()


def ledger(fm_db) -> dict:
    fm_db.session.expire_all()
    asset = fm_db.session.execute(
        select(GenericAsset).filter(GenericAsset.name == "grid_signals")
    ).scalar_one()
    return asset.attributes.get("openadr_events", {})


def post_event(app, token: str, body):
    return call(
        app,
        "POST",
        "/api/cariflex/v1/openadr/events",
        data=json.dumps(body),
        headers={"Authorization": token, "Content-Type": "application/json"},
    )
