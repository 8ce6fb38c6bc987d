"""Drains the outbox into FlexMeasures: each entry until it is accepted, or refused for good.

The outbox hands out the oldest entry that heads its group (one OpenADR event, or one sensor) and
is due, so an entry waiting for a retry holds back its own group only. What each answer means
(``classify``):

- accepted (2xx): done;
- FlexMeasures is not there or not ready (no connection, 502/503/504, the site not set up yet, so
  also "sensor not found" while it is not), the login or role is wrong (401 after logging in again
  once, 403 other than ``INVALID_REPLACEMENT``), or it asks us to slow down (429): retried, and since
  every other entry would get the same answer, the poster pauses as a whole (FlexMeasures'
  Retry-After, else capped exponential backoff) instead of trying each group in turn;
- any other 5xx, 404/405 (endpoint missing: plugin not loaded or a wrong ``CARIFLEX_FM_URL``), 408,
  or an exception while sending: this entry is retried with capped exponential backoff, the others
  go on;
- refused for its content (any other 4xx, e.g. 400/409/413/415/422; 403 ``INVALID_REPLACEMENT``, a
  changed value for a minute FlexMeasures already has; a sensor the set-up site does not have):
  moved to the dead letters with the status code and FlexMeasures' answer, and the queue goes on.
  ``cariflex-ven outbox requeue`` / ``discard`` are the operator's way out.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from dataclasses import dataclass

from ven_bridge.fm_client import Answer, FlexMeasuresClient
from ven_bridge.outbox import Entry, Outbox

log = logging.getLogger("cariflex.ven.poster")

BACKOFF_FIRST_S = 0.5
BACKOFF_CAP_S = 30.0
RETRY_AFTER_CAP_S = 300.0  # a Retry-After longer than this is not waited out in one go
IDLE_WAIT_S = 2.0  # the longest the poster sleeps: a requeue by the CLI (another process) is seen by then

DONE, RETRY, DEAD = "done", "retry", "dead"


def backoff(attempts: int) -> float:
    """0.5 s, 1 s, 2 s, ... up to 30 s, with ±20 % jitter so restarts do not synchronise."""
    delay = min(BACKOFF_CAP_S, BACKOFF_FIRST_S * 2 ** max(0, attempts))
    return delay * random.uniform(0.8, 1.2)


@dataclass(frozen=True)
class Verdict:
    action: str  # DONE | RETRY | DEAD
    why: str
    everyone: bool = False  # RETRY: every entry would get this answer now, so pause the poster
    delay_s: float | None = None  # RETRY: how long FlexMeasures asked us to wait (Retry-After)


def classify(answer: Answer) -> Verdict:
    """What an answer from FlexMeasures means for the entry it was about (see module docstring)."""
    status, text = answer.status, answer.text or ""
    wait = None
    if answer.retry_after_s is not None:  # honoured, but neither 0 (a busy loop) nor for hours
        wait = min(max(answer.retry_after_s, BACKOFF_FIRST_S), RETRY_AFTER_CAP_S)
    if answer.accepted:
        return Verdict(DONE, "accepted")
    if answer.final:
        return Verdict(DEAD, "refused: FlexMeasures will never take it")
    if status == 0:
        return Verdict(RETRY, "FlexMeasures unreachable", everyone=True)
    if status in (502, 503, 504):
        return Verdict(RETRY, "FlexMeasures not available or not ready", everyone=True, delay_s=wait)
    if status == 429:
        return Verdict(RETRY, "rate-limited by FlexMeasures", everyone=True, delay_s=wait)
    if status == 401:
        return Verdict(RETRY, "not authenticated (after logging in again)", everyone=True)
    if status == 403:
        if "INVALID_REPLACEMENT" in text:
            return Verdict(DEAD, "refused: it would change a value FlexMeasures already has")
        return Verdict(RETRY, "forbidden: the account lacks the role", everyone=True)
    if status >= 500:
        return Verdict(RETRY, "FlexMeasures failed on this entry", delay_s=wait)
    if status in (404, 405):
        return Verdict(RETRY, "endpoint not found (plugin not loaded, or a wrong CARIFLEX_FM_URL)")
    if status == 408:
        return Verdict(RETRY, "request timeout")
    if 400 <= status < 500:
        return Verdict(DEAD, "refused for its content")
    return Verdict(RETRY, f"unexpected answer {status}")


class Poster:
    def __init__(self, outbox: Outbox, client: FlexMeasuresClient):
        self.outbox = outbox
        self.client = client
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="outbox-poster", daemon=True)
        self._paused_until = 0.0  # monotonic: FlexMeasures-wide trouble, nothing is tried before
        self._trouble = 0  # FlexMeasures-wide failures in a row, for the pause's backoff

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
        return Answer(400, f"unknown outbox entry kind {entry.kind!r}", final=True)

    def drain_once(self) -> float | None:
        """Handle the next due entry; the seconds to wait before the next try, or None for 'go on'."""
        paused = self._paused_until - time.monotonic()
        if paused > 0:
            return min(paused, IDLE_WAIT_S)
        entry, wait = self.outbox.head()
        if entry is None:
            return IDLE_WAIT_S if wait is None else min(wait, IDLE_WAIT_S)
        try:
            answer = self._send(entry)
        except Exception as exc:  # a bug on one entry's path must not stop the others
            log.exception("posting an outbox entry failed", extra={"fields": {"key": entry.dedupe_key}})
            answer = Answer(500, f"{type(exc).__name__}: {exc}")
        verdict = classify(answer)
        fields = {"key": entry.dedupe_key, "status": answer.status, "attempts": entry.attempts + 1}
        if verdict.action == DONE:
            self._trouble = 0
            self.outbox.mark_done(entry)
            self.outbox.set_state(
                "last_post", {"at": time.time(), "key": entry.dedupe_key, "status": answer.status}
            )
            if entry.kind == "measurement":
                self._remember_fleet_power(entry)
            log.info("posted to FlexMeasures", extra={"fields": fields})
            return None
        if verdict.action == DEAD:
            self._trouble = 0
            self.outbox.dead_letter(entry, answer.status, answer.text)
            log.error(
                "FlexMeasures refused an entry; moved to dead letters",
                extra={"fields": {**fields, "why": verdict.why, "response": answer.text[:500]}},
            )
            return None
        if verdict.everyone:
            self._trouble += 1
            delay = verdict.delay_s if verdict.delay_s is not None else backoff(self._trouble - 1)
            self._paused_until = time.monotonic() + delay
        else:
            delay = verdict.delay_s if verdict.delay_s is not None else backoff(entry.attempts)
        self.outbox.retry_later(entry, delay, f"{answer.status}: {answer.text[:500]}")
        log.warning(
            "FlexMeasures not reachable or failing; will retry",
            extra={
                "fields": {
                    **fields,
                    "why": verdict.why,
                    "retry_in_s": round(delay, 2),
                    "pause_all": verdict.everyone,
                    "error": answer.text[:300],
                }
            },
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
            except Exception:  # never let a full disk or a locked database kill the poster silently
                log.exception("outbox poster error")
                wait = IDLE_WAIT_S
            if wait is not None:
                self.outbox.wake.wait(timeout=wait)
                self.outbox.wake.clear()
        self.outbox.close()
