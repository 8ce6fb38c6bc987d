"""429 + Retry-After, honoured by every HTTP client of ours (cariflex.http_retry), against a real
local HTTP server that answers 429 with Retry-After first, then 200."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from cariflex.http_retry import RetryAfter, retry_after


class Server:
    """Answers each request with the next planned (status, Retry-After) — 200 with ``body`` once the
    plan is used up — and records when each request came."""

    def __init__(self) -> None:
        self.plan: list[tuple[int, str | None]] = []
        self.body: dict = {"ok": True}
        self.seen: list[tuple[str, str, float]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                server.seen.append((self.command, self.path, time.monotonic()))
                status, wait = server.plan.pop(0) if server.plan else (200, None)
                payload = json.dumps(server.body if status == 200 else {"message": "slow down"}).encode()
                self.send_response(status)
                if wait is not None:
                    self.send_header("Retry-After", wait)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = _answer

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def gaps(self) -> list[float]:
        return [b[2] - a[2] for a, b in zip(self.seen, self.seen[1:], strict=False)]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[Server]:
    s = Server()
    yield s
    s.close()


def test_a_429_is_waited_out_for_its_retry_after_then_sent_again(server):
    server.plan = [(429, "1")]
    response = RetryAfter().send(lambda: requests.get(f"{server.url}/x", timeout=5))
    assert response.status_code == 200 and response.json() == {"ok": True}
    assert len(server.seen) == 2 and server.gaps()[0] >= 0.95


def test_retry_after_as_an_http_date_and_a_bare_429(server):
    waits: list[float] = []
    when = format_datetime(datetime.now(UTC), usegmt=True)
    server.plan = [(429, when), (429, None), (503, "2")]
    response = RetryAfter(attempts=4, sleep=waits.append).send(
        lambda: requests.get(f"{server.url}/x", timeout=5)
    )
    assert response.status_code == 200 and len(server.seen) == 4
    assert waits[0] <= 1.0  # the date is now: no wait to speak of
    assert waits[1:] == [1.0, 2.0]  # a 429 without Retry-After: the default second; the 503's own


def test_a_503_without_retry_after_and_other_errors_are_the_callers(server):
    server.plan = [(503, None), (500, "1")]
    retry = RetryAfter(sleep=pytest.fail)
    assert retry.send(lambda: requests.get(f"{server.url}/x", timeout=5)).status_code == 503
    assert retry.send(lambda: requests.get(f"{server.url}/x", timeout=5)).status_code == 500
    assert len(server.seen) == 2


def test_a_long_wait_or_the_last_attempt_goes_back_with_the_time_left(server):
    server.plan = [(429, "120")]
    retry = RetryAfter(max_wait_s=30, sleep=pytest.fail)
    assert retry.send(lambda: requests.get(f"{server.url}/x", timeout=5)).status_code == 429
    assert 118 < retry.hold_s() <= 120 and len(server.seen) == 1
    server.plan = [(429, "0"), (429, "5")]
    last = RetryAfter(attempts=2, sleep=lambda s: None)
    assert last.send(lambda: requests.get(f"{server.url}/x", timeout=5)).status_code == 429
    assert 4 < last.hold_s() <= 5


def test_retry_after_parsing():
    now = datetime(2030, 3, 1, 12, 0, tzinfo=UTC)
    assert retry_after("120") == 120 and retry_after("-3") == 0
    assert retry_after("Fri, 01 Mar 2030 12:01:30 GMT", now) == 90
    assert retry_after("soon") is None and retry_after("") is None and retry_after("nan") is None


# --- the clients ---------------------------------------------------------------------------------


def test_the_vens_flexmeasures_client_waits_out_a_429_and_then_holds_off(server):
    from ven_bridge.fm_client import FlexMeasuresClient

    server.body = {"auth_token": "t0k3n", "sensors": {"bat_01_power": 7}}
    server.plan = [(200, None), (429, "1")]  # the login, then the first request is rate-limited
    client = FlexMeasuresClient(server.url, "ven@cariflex.example", "pw")
    assert client.sensor_id("bat_01_power") == (7, None)
    assert [p for _, p, _ in server.seen] == ["/api/requestAuthToken", *["/api/cariflex/v1/sensors"] * 2]
    assert server.gaps()[1] >= 0.95
    # FlexMeasures asks for more than the client waits in one call: handed back, then not sent again
    server.plan = [(429, "600")]
    answer = client.get_schedule(4)
    assert answer.status == 429 and answer.retry_after_s == 600
    again = client.get_schedule(4)
    assert again.status == 429 and 590 < again.retry_after_s <= 600 and "not sent" in again.text
    assert len(server.seen) == 4


def test_the_vtn_remote_client_waits_out_a_429(server, monkeypatch):
    from vtn.remote import call_remote

    monkeypatch.setenv("CARIFLEX_VTN_ADMIN_TOKEN", "admin-token")
    server.body = [{"ven_name": "cariflex-ven"}]
    server.plan = [(429, "1")]
    assert call_remote(server.url, "list_vens") == [{"ven_name": "cariflex-ven"}]
    assert len(server.seen) == 2 and server.gaps()[0] >= 0.95


def test_the_weather_fetch_waits_out_a_429(server, monkeypatch):
    from flexmeasures_cariflex.data.services.weather import WeatherUnreachable, request_open_meteo

    monkeypatch.setenv("CARIFLEX_OPEN_METEO_URL", f"{server.url}/v1/forecast")
    server.body = {"hourly": {"time": []}}
    server.plan = [(429, "1")]
    today = datetime.now(UTC).date()
    assert request_open_meteo(14.6, -61.0, today, today, backoff_s=0) == {"hourly": {"time": []}}
    assert len(server.seen) == 2 and server.gaps()[0] >= 0.95
    # asked to come back in an hour: not hammered, said to be unreachable for now
    server.plan = [(429, "3600")] * 5
    with pytest.raises(WeatherUnreachable, match="rate-limited"):
        request_open_meteo(14.6, -61.0, today, today, backoff_s=0)
    assert len(server.seen) == 3
