"""FlexMeasures over HTTP, as the VEN needs it: a token, the sensor ids by name, two POSTs.

No FlexMeasures import: the VEN image does not have it. The token from ``/api/requestAuthToken``
goes in the ``Authorization`` header as it is (FlexMeasures answers 401 to "Bearer <token>"), and
is renewed before FlexMeasures' 6-hour lifetime ends, or at once when a request gets a 401.

Every request goes through ``cariflex.http_retry.RetryAfter``: a 429 (FlexMeasures' rate limit, per
login: the VEN has its own, ``CARIFLEX_FM_USER``) or a 503 with Retry-After is waited out and sent
again when the wait is short (up to ``RETRY_AFTER_MAX_WAIT_S``); a longer one is handed back as the
answer, and until it has passed the client answers 429 itself without sending (the poster pauses its
queue, the schedule follower keeps its copy).

What an answer means for the outbox (retry it, or give up on it) is the poster's call
(``ven_bridge.poster.classify``); the client only reports what happened, and says so when it knows
by itself that FlexMeasures will never take an entry (``Answer.final``: a measurement for a sensor
the set-up site does not have).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from functools import partial
from typing import Any

import requests

from cariflex.http_retry import RetryAfter, retry_after

__all__ = ["Answer", "FlexMeasuresClient", "retry_after"]

TOKEN_RENEW_AFTER_S = 5 * 3600  # FlexMeasures' SECURITY_TOKEN_MAX_AGE is 6 h
EVENTS_PATH = "/api/cariflex/v1/openadr/events"
SENSORS_PATH = "/api/cariflex/v1/sensors"
SCHEDULE_PATH = "/api/cariflex/v1/schedule"
DR_VERIFICATION_PATH = "/api/cariflex/v1/dr-verification"
RETRY_AFTER_MAX_WAIT_S = 15.0  # a longer Retry-After goes back to the caller (the poster pauses)


@dataclass
class Answer:
    """What FlexMeasures said; ``status`` 0 means it could not be reached."""

    status: int
    text: str
    etag: str | None = None
    retry_after_s: float | None = None  # FlexMeasures' Retry-After (429, 503), in seconds
    final: bool = False  # the client knows FlexMeasures will never take this (see module docstring)

    @property
    def accepted(self) -> bool:
        return 200 <= self.status < 300


class FlexMeasuresClient:
    def __init__(
        self,
        base_url: str,
        email: str,
        password: str,
        timeout_s: tuple[float, float] = (5, 15),
        retry: RetryAfter | None = None,
    ):
        self.base_url = base_url.rstrip("/")
        self.retry = retry or RetryAfter(max_wait_s=RETRY_AFTER_MAX_WAIT_S, name="FlexMeasures")
        self.email = email
        self.password = password
        self.timeout_s = timeout_s
        self.session = requests.Session()
        self._token: str | None = None
        self._token_at = 0.0
        self._sensor_ids: dict[str, int] | None = None

    def _authenticate(self) -> Answer | None:
        """Get a token; an Answer only when that failed."""
        try:
            response = self.retry.send(
                lambda: self.session.post(
                    f"{self.base_url}/api/requestAuthToken",
                    json={"email": self.email, "password": self.password},
                    timeout=self.timeout_s,
                )
            )
        except requests.RequestException as exc:
            return Answer(0, f"cannot reach FlexMeasures at {self.base_url}: {exc}")
        if response.status_code != 200:
            # A failed login says nothing about the entry being posted: wrong credentials are a
            # configuration problem, so whatever FlexMeasures answered, the entry is retried (503).
            return Answer(
                429 if response.status_code == 429 else 503,
                f"login as {self.email} refused: HTTP {response.status_code}: {response.text[:500]}",
                retry_after_s=retry_after(response.headers.get("Retry-After")),
            )
        try:
            self._token = response.json()["auth_token"]
        except (ValueError, KeyError, TypeError):
            return Answer(503, f"login answer from {self.base_url} has no auth_token: {response.text[:300]}")
        self._token_at = time.monotonic()
        return None

    def request(self, method: str, path: str, body: Any = None, headers: dict | None = None) -> Answer:
        hold = self.retry.hold_s()
        if hold > 0:  # FlexMeasures asked us to stay away that long: not a request before then
            return Answer(
                429, f"FlexMeasures asked us to wait: {hold:.0f} s left, not sent", retry_after_s=hold
            )
        for attempt in (1, 2):
            if self._token is None or time.monotonic() - self._token_at > TOKEN_RENEW_AFTER_S:
                failed = self._authenticate()
                if failed:
                    return failed
            try:
                response = self.retry.send(
                    partial(
                        self.session.request,
                        method,
                        f"{self.base_url}{path}",
                        json=body,
                        headers={"Authorization": self._token, **(headers or {})},
                        timeout=self.timeout_s,
                    )
                )
            except requests.RequestException as exc:
                return Answer(0, f"cannot reach FlexMeasures at {self.base_url}: {exc}")
            if response.status_code == 401 and attempt == 1:
                self._token = None  # expired or revoked: log in again once
                continue
            return Answer(
                response.status_code,
                response.text,
                response.headers.get("ETag"),
                retry_after(response.headers.get("Retry-After")),
            )
        raise AssertionError("unreachable")

    def post_event(self, normalised: dict[str, Any]) -> Answer:
        return self.request("POST", EVENTS_PATH, normalised)

    def sensor_id(self, name: str, refresh: bool = False) -> tuple[int | None, Answer | None]:
        """A sensor's id by name through the plugin's API: (id, None); (None, None) when the site has
        no such sensor (the plugin lists a site's sensors only once it is set up, else answers 503);
        (None, answer) when the lookup failed. Cached; looked up again on a miss or with ``refresh``."""
        if refresh or self._sensor_ids is None or name not in self._sensor_ids:
            answer = self.request("GET", SENSORS_PATH)
            if not answer.accepted:
                return None, answer
            try:
                self._sensor_ids = {str(k): int(v) for k, v in json.loads(answer.text)["sensors"].items()}
            except (ValueError, KeyError, TypeError, AttributeError):
                return None, Answer(502, f"unreadable sensor list from FlexMeasures: {answer.text[:300]}")
        return self._sensor_ids.get(name), None

    def post_measurement(self, measurement: dict[str, Any]) -> Answer:
        """FlexMeasures' own sensor data endpoint, sensor resolved by name. An optional ``prior`` (the
        belief time) is passed on: FlexMeasures then keeps one value per minute and refuses a changed
        one with 403 INVALID_REPLACEMENT (without it, the belief time is the time of the request)."""
        try:
            name = str(measurement["sensor"])
            body = {k: measurement[k] for k in ("values", "start", "duration", "unit")}
        except (KeyError, TypeError) as exc:
            return Answer(
                400, f"not a measurement (needs sensor, values, start, duration, unit): {exc!r}", final=True
            )
        if "prior" in measurement:
            body["prior"] = measurement["prior"]
        for refresh in (False, True):
            sensor_id, failed = self.sensor_id(name, refresh=refresh)
            if failed is not None:
                return failed  # e.g. 503: the site is not set up (yet); retried
            if sensor_id is None:
                return Answer(
                    404,
                    f"sensor {name[:100]!r} does not exist in FlexMeasures (its site is set up without it): "
                    "if the fleet gained this device, run `flexmeasures cariflex setup`, then "
                    "`cariflex-ven outbox requeue`",
                    final=True,
                )
            answer = self.request("POST", f"/api/v3_0/sensors/{sensor_id}/data", body)
            stale = answer.status == 404 or (answer.status == 422 and "No sensor found" in answer.text)
            if not stale:
                return answer
            # that id is gone (the sensor was deleted, perhaps made again): look the name up once more
        return answer

    def get_dr_verification(self, since: str = "P2D") -> Answer:
        """The verification of the recent load-control events (plugin: dr_verification.py)."""
        return self.request("GET", f"{DR_VERIFICATION_PATH}?since={since}")

    def get_schedule(self, hours: float, etag: str | None = None) -> Answer:
        """The fleet schedule from now on (304 while ``etag`` is still current)."""
        return self.request(
            "GET", f"{SCHEDULE_PATH}?hours={hours:g}", headers={"If-None-Match": etag} if etag else None
        )
