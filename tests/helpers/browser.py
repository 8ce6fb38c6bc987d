"""A real browser for the web UI tests: Debian's Chromium and chromedriver, headless, with every
host but 127.0.0.1 unresolvable (so a page that loads anything from the internet shows it here
even on a machine that has internet), and what it loaded read from Chrome's network log."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from urllib.parse import urlparse

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


def require_browser() -> None:
    """Skip, saying what is missing and how to get it, where Chromium cannot run."""
    if not CHROMIUM or not CHROMEDRIVER:
        pytest.skip(
            "the browser tests need Chromium and chromedriver: `apt-get install -y chromium chromium-driver` "
            "(.ci/run installs them where it can)"
        )
    try:
        import selenium  # noqa: F401
    except ImportError:  # pragma: no cover - in the test extra
        pytest.skip("the browser tests need selenium (pip install -e '.[test]')")


def chrome(width: int = 1400, height: int = 1000):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        f"--window-size={width},{height}",
        # nothing but this machine: a CDN address fails to load instead of quietly working
        "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


@dataclass
class Loads:
    requested: list[str]
    failed: list[str]  # "url: reason"


def network(driver) -> Loads:
    """Every request the pages made since the last call, and those that failed (a network error
    or an HTTP status of 400 and above)."""
    requested: dict[str, str] = {}
    failed: list[str] = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        params = message.get("params", {})
        if message["method"] == "Network.requestWillBeSent":
            requested[params["requestId"]] = params["request"]["url"]
        elif message["method"] == "Network.loadingFailed":
            url = requested.get(params["requestId"], "?")
            if not params.get("canceled"):
                failed.append(f"{url}: {params.get('errorText')}")
        elif message["method"] == "Network.responseReceived":
            status = params["response"]["status"]
            if status >= 400:
                failed.append(f"{params['response']['url']}: HTTP {status}")
    return Loads(list(requested.values()), failed)


def foreign(urls: list[str]) -> list[str]:
    """The addresses that are not this machine's (data: and blob: URLs are in the page)."""
    return [
        u
        for u in urls
        if urlparse(u).scheme in ("http", "https", "ws", "wss") and urlparse(u).hostname != "127.0.0.1"
    ]
