"""The FlexMeasures fleet schedule, followed: what each device should do in the current period.

FlexMeasures re-plans whenever prices or the load-control limit change (``replan`` in the
plugin). This keeps the VEN's copy current: it asks ``GET /api/cariflex/v1/schedule`` every
``poll_s`` with the ETag it holds (a 304 costs FlexMeasures one attribute read), so a re-plan
reaches the devices within a poll, and asks again right after each 15-minute boundary (the ETag
names the first period, so the window moves on). The copy lives in the outbox state
("schedule"): after a restart, or while FlexMeasures is unreachable, the devices keep following
the last schedule until it runs out.

What travels is the contract ``cariflex.contracts.fleet_schedule`` (the plugin serves
``FleetSchedule.to_dict()``; the follower reads the answer, and its kept copy, with
``FleetSchedule.from_dict``: an answer that does not meet it is logged and the last copy kept).

The fleet controller reads ``setpoints(now)``; an operator's ``cariflex-ven setpoint`` overrides a
device's scheduled value, and an active load-control limit still caps the sum on top of both. It
also reads ``site_kw(now)``: the site's inflexible net import (base load - PV) the plan assumed for
the current period, so that the limit holds on the net import at the connection (None: unknown).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from datetime import UTC, datetime
from typing import Any

from cariflex.contracts.fleet_schedule import PERIOD, ContractError, FleetSchedule
from cariflex.json_input import clip
from cem.ports import ScheduleSource, StateStore

log = logging.getLogger("cariflex.ven.schedule")

STATE_KEY = "schedule"


def period_start(now: datetime) -> datetime:
    return now.replace(minute=now.minute - now.minute % 15, second=0, microsecond=0)


def _read(schedule: Any) -> FleetSchedule | None:
    """The copy in outbox state "schedule" (the served schedule plus its ``etag``) through the
    contract; None when there is none or it is unusable."""
    if not schedule:
        return None
    try:
        return FleetSchedule.from_dict(schedule)
    except ContractError as exc:
        log.error("kept schedule unusable; ignored", extra={"fields": {"error": clip(str(exc), 300)}})
        return None


def scheduled_setpoints(schedule: dict | None, now: datetime) -> dict[str, float]:
    """kW per device for the period holding ``now`` (charging positive); none outside the copy."""
    parsed = _read(schedule)
    return parsed.setpoints(now) if parsed is not None else {}


class ScheduleFollower:
    def __init__(self, client: ScheduleSource, outbox: StateStore, *, poll_s: float = 2.0, hours: float = 4):
        self.client, self.outbox, self.poll_s, self.hours = client, outbox, poll_s, hours
        self.changed = asyncio.Event()  # set when a new schedule (or window) arrived
        self._schedule: dict = outbox.get_state(STATE_KEY) or {}  # as served, plus its etag
        self._parsed: FleetSchedule | None = _read(self._schedule)
        self._etag: str | None = self._schedule.get("etag") if self._parsed is not None else None
        self._failing = False

    def setpoints(self, now: datetime) -> dict[str, float]:
        return self._parsed.setpoints(now) if self._parsed is not None else {}

    def site_kw(self, now: datetime) -> float | None:
        """Base load - PV (kW, consumption positive) for the period holding ``now``, as the schedule
        carries it; None without a schedule, outside it, or where the site's figure is unknown."""
        return self._parsed.site_kw_at(now) if self._parsed is not None else None

    def fetch(self) -> bool:
        """One conditional GET; True when a new copy was stored."""
        answer = self.client.get_schedule(self.hours, self._etag)
        if answer.status == 304:
            self._recovered()
            return False
        if not answer.accepted:
            if not self._failing:
                log.warning(
                    "schedule not fetched; following the last copy",
                    extra={"fields": {"status": answer.status, "answer": answer.text[:300]}},
                )
            self._failing = True
            return False
        try:
            schedule = json.loads(answer.text)
            parsed = FleetSchedule.from_dict(schedule)
        except ValueError as exc:  # not JSON, or not the contract (ContractError is a ValueError)
            log.error(
                "schedule answer unusable", extra={"fields": {"error": str(exc), "answer": answer.text[:300]}}
            )
            return False
        self._recovered()
        new_version = parsed.version != (self._parsed.version if self._parsed is not None else None)
        self._schedule = {**schedule, "etag": answer.etag}
        self._parsed = parsed
        self.outbox.set_state(STATE_KEY, self._schedule)
        self._etag = answer.etag
        if new_version:
            log.info(
                "new fleet schedule",
                extra={
                    "fields": {
                        "version": parsed.version,
                        "start": parsed.start.isoformat(),
                        "devices": len(parsed.devices),
                        "with_site_kw": parsed.site_kw is not None,
                        "breaches": len(parsed.breaches),
                    }
                },
            )
        return True

    def _recovered(self) -> None:
        if self._failing:
            log.info("schedule fetched again")
        self._failing = False

    async def run(self, stopping: asyncio.Event) -> None:
        boundary = period_start(datetime.now(UTC))
        while not stopping.is_set():
            try:
                if await asyncio.to_thread(self.fetch):
                    self.changed.set()
            except Exception:  # keep following whatever one round hit
                log.exception("schedule fetch failed")
            now = datetime.now(UTC)
            next_boundary = boundary + PERIOD
            wait = min(self.poll_s, max(0.0, (next_boundary - now).total_seconds()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), wait)
            if datetime.now(UTC) >= next_boundary:
                boundary = period_start(datetime.now(UTC))
                self.changed.set()  # the controller moves to the next period's values at once
