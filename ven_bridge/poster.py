"""Drains the outbox into FlexMeasures, in order, until each entry is accepted or refused.

Connection errors, 5xx, and the 4xx a configuration fix cures (401, 403, 404, 429) are retried
with capped exponential backoff; the entry stays at the head, so later entries (the next
modification of the same event) never overtake it. A 400/409/413/415/422 means FlexMeasures will
never take this data: the entry goes to the dead-letter table with FlexMeasures' answer and the
queue moves on.
"""

from __future__ import annotations

import logging
import random
import threading
import time

from ven_bridge.fm_client import Answer, FlexMeasuresClient
from ven_bridge.outbox import Entry, Outbox

log = logging.getLogger("cariflex.ven.poster")

BACKOFF_FIRST_S = 0.5
BACKOFF_CAP_S = 30.0


def backoff(attempts: int) -> float:
    """0.5 s, 1 s, 2 s, ... up to 30 s, with ±20 % jitter so restarts do not synchronise."""
    delay = min(BACKOFF_CAP_S, BACKOFF_FIRST_S * 2 ** max(0, attempts))
    return delay * random.uniform(0.8, 1.2)


class Poster:
    def __init__(self, outbox: Outbox, client: FlexMeasuresClient):
        self.outbox = outbox
        self.client = client
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="outbox-poster", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self, timeout_s: float = 10) -> None:
        self.stopping.set()
        self.outbox.wake.set()
        self.thread.join(timeout_s)

    def _send(self, entry: Entry) -> Answer:
        if entry.kind == "event":
            return self.client.post_event(entry.payload)
        if entry.kind == "measurement":
            return self.client.post_measurement(entry.payload)
        return Answer(400, f"unknown outbox entry kind {entry.kind!r}")

    def drain_once(self) -> float | None:
        """Handle the head entry; the seconds to wait before the next try, or None for 'go on'."""
        entry, wait = self.outbox.head()
        if entry is None:
            return wait if wait is not None else 5.0
        answer = self._send(entry)
        fields = {"key": entry.dedupe_key, "status": answer.status, "attempts": entry.attempts + 1}
        if answer.accepted:
            self.outbox.mark_done(entry)
            self.outbox.set_state(
                "last_post", {"at": time.time(), "key": entry.dedupe_key, "status": answer.status}
            )
            if entry.kind == "measurement":
                self._remember_fleet_power(entry)
            log.info("posted to FlexMeasures", extra={"fields": fields})
            return None
        if answer.refused:
            self.outbox.dead_letter(entry, answer.status, answer.text)
            log.error(
                "FlexMeasures refused an entry; moved to dead letters",
                extra={"fields": {**fields, "response": answer.text[:500]}},
            )
            return None
        delay = backoff(entry.attempts)
        self.outbox.retry_later(entry, delay, f"{answer.status}: {answer.text[:500]}")
        log.warning(
            "FlexMeasures not reachable or failing; will retry",
            extra={"fields": {**fields, "retry_in_s": round(delay, 2), "error": answer.text[:300]}},
        )
        return None

    def _remember_fleet_power(self, entry: Entry) -> None:
        """Last posted power per device, for the fleet TELEMETRY_USAGE report to the VTN."""
        sensor = entry.payload.get("sensor", "")
        if sensor.endswith("_power") and sensor.startswith(("bat_", "ev_")) and entry.payload.get("values"):
            powers = self.outbox.get_state("device_power_kw", {})
            powers[sensor] = float(entry.payload["values"][-1])
            self.outbox.set_state("device_power_kw", powers)

    def _run(self) -> None:
        while not self.stopping.is_set():
            try:
                wait = self.drain_once()
            except Exception:  # never let one bad entry or a full disk kill the poster silently
                log.exception("outbox poster error")
                wait = 5.0
            if wait is not None:
                self.outbox.wake.wait(timeout=wait)
                self.outbox.wake.clear()
        self.outbox.close()
