"""The day-ahead price job: every day at the configured local time, publish tomorrow's prices.

APScheduler runs it in the VTN's loop. At start the job also runs once if today's publication
time has passed, so a VTN that was down at 13:00 catches up, and today's prices are published
too if they never were; publication is idempotent (one day-ahead event per day), so a restart
never doubles it.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger

from vtn.events import SITE_TZ
from vtn.prices import parse_publish_time, publish_day_ahead

if TYPE_CHECKING:
    from vtn.server import CariflexVtn

log = logging.getLogger("cariflex.vtn.scheduler")


def start_day_ahead(vtn: CariflexVtn) -> AsyncIOScheduler | None:
    at = parse_publish_time(vtn.options.day_ahead_time)
    if at is None:
        log.info("day-ahead price publication is off")
        return None

    def job() -> None:
        try:
            publish_day_ahead(vtn.store, price_file=vtn.options.price_file)
        except Exception:  # a bad price file must not take the VTN down; it is logged loudly
            log.exception("day-ahead price publication failed")

    scheduler = AsyncIOScheduler(timezone=SITE_TZ)
    scheduler.add_job(
        job,
        CronTrigger(hour=at.hour, minute=at.minute, timezone=SITE_TZ),
        id="day-ahead-prices",
        misfire_grace_time=3600,
        coalesce=True,
    )
    scheduler.start()
    now_local = datetime.now(UTC).astimezone(SITE_TZ)
    try:
        # A VTN that was not running when today's prices were due publishes them now: a site
        # without a price for the current hour cannot be scheduled.
        publish_day_ahead(vtn.store, price_file=vtn.options.price_file, day=now_local.date())
    except Exception:
        log.exception("publishing today's prices failed")
    if now_local.time() >= at:
        job()
    log.info("day-ahead price publication scheduled", extra={"fields": {"local_time": at.strftime("%H:%M")}})
    return scheduler
