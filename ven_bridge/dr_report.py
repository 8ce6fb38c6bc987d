"""DR verification back to the grid operator: what the fleet delivered in the last load-control event.

FlexMeasures verifies every load-control event against a baseline (the plugin's
``dr_verification.py``). The VEN fetches those results every few minutes, keeps them in its
outbox state (they survive a restart), and offers the latest verified event in its
TELEMETRY_USAGE report beside the fleet power: ``energy_real`` = delivered kWh, and a custom
``x-drDeliveredPercent`` = delivered share of the requested reduction. Nothing is reported until
an event has been verified.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from datetime import UTC, datetime

from ven_bridge.fm_client import FlexMeasuresClient
from ven_bridge.outbox import Outbox

log = logging.getLogger("cariflex.ven.dr")
STATE_KEY = "dr_verification"


def latest_verified(results: list[dict]) -> dict | None:
    """The most recent event with at least one verified period."""
    verified = [r for r in results if r.get("periods_verified")]
    return max(verified, key=lambda r: r["start"]) if verified else None


class DrVerificationFollower:
    def __init__(self, client: FlexMeasuresClient, outbox: Outbox, *, poll_s: float = 300.0):
        self.client, self.outbox, self.poll_s = client, outbox, poll_s

    def fetch(self) -> bool:
        """One GET; True when the results were stored."""
        answer = self.client.get_dr_verification()
        if not answer.accepted:
            log.warning("DR verification not fetched", extra={"fields": {"status": answer.status}})
            return False
        try:
            events = json.loads(answer.text)["events"]
        except (ValueError, KeyError, TypeError) as exc:
            log.error("DR verification answer unusable", extra={"fields": {"error": str(exc)}})
            return False
        self.outbox.set_state(STATE_KEY, events)
        return True

    def delivered_kwh(self) -> list[tuple[datetime, float]]:
        latest = latest_verified(self.outbox.get_state(STATE_KEY, []))
        return [] if latest is None else [(datetime.now(UTC), float(latest["delivered_kwh"]))]

    def delivered_pct(self) -> list[tuple[datetime, float]]:
        latest = latest_verified(self.outbox.get_state(STATE_KEY, []))
        if latest is None or latest.get("delivered_pct") is None:
            return []
        return [(datetime.now(UTC), float(latest["delivered_pct"]))]

    async def run(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            try:
                await asyncio.to_thread(self.fetch)
            except Exception:  # the next round tries again
                log.exception("DR verification fetch failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), self.poll_s)
