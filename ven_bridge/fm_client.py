"""FlexMeasures over HTTP, as the VEN needs it: a token, the sensor ids by name, two POSTs.

No FlexMeasures import: the VEN image does not have it. The token from ``/api/requestAuthToken``
goes in the ``Authorization`` header as it is (FlexMeasures answers 401 to "Bearer <token>"), and
is renewed before FlexMeasures' 6-hour lifetime ends, or at once when a request gets a 401.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import requests

TOKEN_RENEW_AFTER_S = 5 * 3600  # FlexMeasures' SECURITY_TOKEN_MAX_AGE is 6 h
EVENTS_PATH = "/api/cariflex/v1/openadr/events"
SENSORS_PATH = "/api/cariflex/v1/sensors"
SCHEDULE_PATH = "/api/cariflex/v1/schedule"
DR_VERIFICATION_PATH = "/api/cariflex/v1/dr-verification"


@dataclass
class Answer:
    """What FlexMeasures said; ``status`` 0 means it could not be reached."""

    status: int
    text: str
    etag: str | None = None

    @property
    def accepted(self) -> bool:
        return 200 <= self.status < 300

    @property
    def refused(self) -> bool:
        """FlexMeasures will never take this data. Other failures (unreachable, 5xx, 401/403/404 from a
        misconfigured account or a missing plugin, 429) are retried: they are fixed elsewhere."""
        return self.status in (400, 409, 413, 415, 422)


class FlexMeasuresClient:
    def __init__(self, base_url: str, email: str, password: str, timeout_s: tuple[float, float] = (5, 15)):
        self.base_url = base_url.rstrip("/")
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
            response = self.session.post(
                f"{self.base_url}/api/requestAuthToken",
                json={"email": self.email, "password": self.password},
                timeout=self.timeout_s,
            )
        except requests.RequestException as exc:
            return Answer(0, f"cannot reach FlexMeasures at {self.base_url}: {exc}")
        if response.status_code != 200:
            # Wrong credentials are a configuration problem, not bad data: keep retrying.
            return Answer(
                503 if response.status_code in (400, 401) else response.status_code,
                f"login as {self.email} refused: {response.text[:500]}",
            )
        try:
            self._token = response.json()["auth_token"]
        except (ValueError, KeyError, TypeError):
            return Answer(503, f"login answer from {self.base_url} has no auth_token: {response.text[:300]}")
        self._token_at = time.monotonic()
        return None

    def request(self, method: str, path: str, body: Any = None, headers: dict | None = None) -> Answer:
        for attempt in (1, 2):
            if self._token is None or time.monotonic() - self._token_at > TOKEN_RENEW_AFTER_S:
                failed = self._authenticate()
                if failed:
                    return failed
            try:
                response = self.session.request(
                    method,
                    f"{self.base_url}{path}",
                    json=body,
                    headers={"Authorization": self._token, **(headers or {})},
                    timeout=self.timeout_s,
                )
            except requests.RequestException as exc:
                return Answer(0, f"cannot reach FlexMeasures at {self.base_url}: {exc}")
            if response.status_code == 401 and attempt == 1:
                self._token = None  # expired or revoked: log in again once
                continue
            return Answer(response.status_code, response.text, response.headers.get("ETag"))
        raise AssertionError("unreachable")

    def post_event(self, normalised: dict[str, Any]) -> Answer:
        return self.request("POST", EVENTS_PATH, normalised)

    def sensor_id(self, name: str) -> int | None:
        """Resolve a sensor name through the plugin's API (cached; refreshed once on a miss)."""
        for refresh in (False, True):
            if self._sensor_ids is None or refresh:
                answer = self.request("GET", SENSORS_PATH)
                if not answer.accepted:
                    return None
                import json

                self._sensor_ids = json.loads(answer.text)["sensors"]
            if name in self._sensor_ids:
                return self._sensor_ids[name]
        return None

    def post_measurement(self, measurement: dict[str, Any]) -> Answer:
        """FlexMeasures' own sensor data endpoint, sensor resolved by name."""
        sensor_id = self.sensor_id(measurement["sensor"])
        if sensor_id is None:
            return Answer(503, f"sensor {measurement['sensor']!r} not found (yet) in FlexMeasures")
        body = {k: measurement[k] for k in ("values", "start", "duration", "unit")}
        return self.request("POST", f"/api/v3_0/sensors/{sensor_id}/data", body)

    def get_dr_verification(self, since: str = "P2D") -> Answer:
        """The verification of the recent load-control events (plugin: dr_verification.py)."""
        return self.request("GET", f"{DR_VERIFICATION_PATH}?since={since}")

    def get_schedule(self, hours: float, etag: str | None = None) -> Answer:
        """The fleet schedule from now on (304 while ``etag`` is still current)."""
        return self.request(
            "GET", f"{SCHEDULE_PATH}?hours={hours:g}", headers={"If-None-Match": etag} if etag else None
        )
