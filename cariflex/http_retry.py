"""One rule for every HTTP client of ours: "429 Too Many Requests" is waited out, as the server says.

FlexMeasures rate-limits its API (Flask-Limiter: 500 requests a minute per login by default) and
answers 429 with ``Retry-After``; Open-Meteo and the VTN's admin API may do the same, and a 503 may
carry one too. Every client of ours (the VEN's FlexMeasures client, the weather fetch, the VTN
operator CLI's remote client) sends through :class:`RetryAfter`:

- a 429, or a 503 with ``Retry-After``: wait as long as the header says (seconds, or an HTTP date),
  then send again; a 429 without a usable header waits ``default_wait_s``; at most ``attempts``
  sends in all;
- a wait longer than ``max_wait_s`` is not done inside the call: the answer goes back to the
  caller, and :meth:`RetryAfter.hold_s` says how long the server asked us to stay away (the VEN's
  client then answers its callers without sending until that time, its poster pauses the queue);
- anything else is the caller's to judge (its own backoff for 5xx, refusals, ...).

Transport-agnostic: ``requests`` responses (``status_code``) and ``urllib`` responses or
``HTTPError`` s (``getcode()``) are read as they are; others give ``status`` and ``header``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar

log = logging.getLogger("cariflex.http")

T = TypeVar("T")

RATE_LIMITED = 429
RETRY_STATUSES = frozenset({429, 503})


def retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """A Retry-After header (seconds, or an HTTP date) in seconds from now; None if absent or garbled."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if seconds == seconds else None  # NaN is garbled too
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def status_of(response: Any) -> int:
    """The status code of a ``requests`` response or a ``urllib`` response / HTTPError."""
    code = getattr(response, "status_code", None)
    return int(code if code is not None else response.getcode())


def retry_after_header(response: Any) -> str | None:
    headers = getattr(response, "headers", None)
    return headers.get("Retry-After") if headers is not None else None


class RetryAfter:
    """Sends a request again after the wait a 429 (or a 503 with Retry-After) asks for.

    One per client: it remembers a wait it did not do (:meth:`hold_s`)."""

    def __init__(
        self,
        attempts: int = 3,
        max_wait_s: float = 30.0,
        default_wait_s: float = 1.0,
        sleep: Callable[[float], Any] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        name: str = "server",
    ):
        if attempts < 1:
            raise ValueError(f"attempts {attempts} must be at least 1")
        self.attempts, self.max_wait_s, self.default_wait_s = attempts, max_wait_s, default_wait_s
        self.sleep, self.clock, self.name = sleep, clock, name
        self._hold_until = 0.0

    def wait_s(self, status: int, header: str | None) -> float | None:
        """How long the server asked us to wait before sending again; None: it did not ask."""
        if status not in RETRY_STATUSES:
            return None
        seconds = retry_after(header)
        if seconds is None and status == RATE_LIMITED:
            seconds = self.default_wait_s
        return seconds

    def hold_s(self) -> float:
        """How much longer the server asked us to stay away (a wait longer than ``max_wait_s``)."""
        return max(0.0, self._hold_until - self.clock())

    def send(
        self,
        send: Callable[[], T],
        status: Callable[[T], int] = status_of,
        header: Callable[[T], str | None] = retry_after_header,
    ) -> T:
        """``send()`` until its answer does not ask to wait, the wait is too long, or the attempts
        are used up; the last answer is returned (the caller judges it)."""
        for attempt in range(1, self.attempts + 1):
            response = send()
            wait = self.wait_s(status(response), header(response))
            if wait is None:
                return response
            if wait > self.max_wait_s:
                self._hold_until = max(self._hold_until, self.clock() + wait)
                log.warning(
                    "asked to wait longer than we wait in one call",
                    extra={"fields": {"server": self.name, "status": status(response), "wait_s": wait}},
                )
                return response
            if attempt == self.attempts:
                self._hold_until = max(self._hold_until, self.clock() + wait)
                return response
            log.info(
                "waiting as asked (Retry-After)",
                extra={"fields": {"server": self.name, "status": status(response), "wait_s": wait}},
            )
            close = getattr(response, "close", None)
            if callable(close):
                close()
            self.sleep(wait)
        raise AssertionError("unreachable")
