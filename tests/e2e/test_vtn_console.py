"""The operator console (issue 23) in a real browser: headless Chromium, every host but 127.0.0.1
unresolvable, against a real VTN process, with a foreign VEN (openleadr's own client) registered,
answering optIn and reporting its fleet power (a back-filled hour, then once a second).

The operator logs in with the keyboard, is refused a bad level (nothing stored), issues a
load-control event, watches the VEN's optIn appear and its power drop under the cap, modifies
and cancels the event (the VEN receives both), and is refused a form without its CSRF token.
The screenshot of the event page during the event is the README's (``CARIFLEX_UPDATE_SCREENSHOTS=1``
writes it to docs/images/).
"""

from __future__ import annotations

import os
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.helpers.browser import chrome, foreign, network, require_browser
from tests.helpers.openadr_harness import VenFleet, VtnProcess, wait_until

OPERATOR, PASSWORD = "alice", "console-test-password-1"
CAPACITY_KW = 400
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "images" / "vtn-console-event.png"


class FleetMeter:
    """The foreign VEN's TELEMETRY_USAGE: an hour of history at its first report (a VEN that was
    metering before it could report), then a reading a second; ~350 kW, ~185 kW while an event
    it received is active."""

    def __init__(self, ven):
        self.ven = ven
        self.first = True

    def __call__(self):
        now = datetime.now(UTC)
        if self.first:
            self.first = False
            return [(now - timedelta(minutes=m), 350.0 + (m % 7) * 3) for m in range(60, 0, -1)]
        active = any(r["status"] == "active" for r in self.ven.received[-1:])
        return [(now, 185.0 if active else 352.0)]


@pytest.fixture(scope="module")
def console(tmp_path_factory):
    require_browser()
    folder = tmp_path_factory.mktemp("console")
    vtn = VtnProcess(
        folder,
        f"sqlite:///{folder / 'vtn.sqlite'}",
        env={"CARIFLEX_VTN_OPERATOR": OPERATOR, "CARIFLEX_VTN_OPERATOR_PASSWORD": PASSWORD},
    )
    vtn.cli("ven", "add", "site-ven", "--capacity-kw", str(CAPACITY_KW))
    vtn.start()
    fleet = VenFleet()
    try:
        meter = FleetMeter(None)
        ven = fleet.add(
            "site-ven",
            vtn.url,
            reports=[
                {
                    "callback": lambda: meter(),
                    "resource_id": "site",
                    "measurement": "power_real",
                    "unit": "W",
                    "scale": "k",
                    "sampling_rate": timedelta(seconds=1),
                    "report_duration": timedelta(hours=1),
                }
            ],
        )
        meter.ven = ven
        assert ven.registered
        driver = chrome()
        try:
            yield vtn, ven, driver, folder
        finally:
            driver.quit()
    finally:
        fleet.close()
        vtn.stop()


def text(driver, css: str) -> str:
    """The element's text, found and read in one step in the page: the event page swaps its VEN
    table in every few seconds, so an element found first and read after may be gone (stale)."""
    from selenium.common.exceptions import NoSuchElementException

    found = driver.execute_script(
        "const e = document.querySelector(arguments[0]); return e === null ? null : e.innerText", css
    )
    if found is None:
        raise NoSuchElementException(f"no {css} on {driver.current_url}")
    return found.replace("\t", " ").strip()  # table cells as WebDriver reads them: a space apart


def events(vtn) -> list[dict]:
    return vtn.admin("GET", "/events").json()


def test_an_operator_issues_watches_modifies_and_cancels_load_control(console):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    vtn, ven, driver, folder = console
    base = f"{vtn.admin_url}/console"

    # Not logged in: the console sends the browser to its login form.
    driver.get(f"{base}/")
    wait_until(lambda: "/console/login" in driver.current_url, 30, "the login form")

    # A wrong password is refused with a message, and no session is made.
    driver.find_element(By.ID, "name").send_keys(OPERATOR, Keys.TAB, "not-the-password", Keys.ENTER)
    wait_until(lambda: "wrong operator name or password" in driver.page_source, 30, "the refusal")
    assert "/console/login" in driver.current_url
    assert driver.get_cookie("cariflex_vtn_session") is None

    # The keyboard alone logs in: name, Tab, password, Enter.
    name = driver.find_element(By.ID, "name")
    name.clear()
    name.send_keys(OPERATOR, Keys.TAB, PASSWORD, Keys.ENTER)
    wait_until(lambda: driver.current_url.rstrip("/").endswith("/console"), 30, "the events page")
    assert OPERATOR in text(driver, ".who")
    cookie = driver.get_cookie("cariflex_vtn_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"

    # A new load-control event that started at this quarter hour (an event issued late).
    driver.find_element(By.LINK_TEXT, "New load-control event").click()
    now = datetime.now(UTC).astimezone(vtn_tz())
    start = now.replace(minute=now.minute - now.minute % 15, second=0, microsecond=0)
    driver.execute_script(
        "document.getElementById('start').value = arguments[0]", start.strftime("%Y-%m-%dT%H:%M")
    )
    for field, value in (("duration", "PT2H"), ("levels", "1.7")):
        box = driver.find_element(By.ID, field)
        box.clear()
        box.send_keys(value)
    driver.find_element(By.ID, "allow_past").send_keys(Keys.SPACE)

    # A bad value: refused with the CLI's message, the form keeps what was typed, nothing stored.
    driver.find_element(By.ID, "levels").send_keys(Keys.ENTER)
    wait_until(lambda: driver.find_elements(By.ID, "message"), 30, "the refusal")
    assert text(driver, "#message") == (
        "Refused: --levels: value 1 (1.7) is outside 0..1 (a fraction of normal capacity). "
        "Nothing was changed."
    )
    assert driver.find_element(By.ID, "levels").get_attribute("value") == "1.7"
    assert events(vtn) == []

    levels = driver.find_element(By.ID, "levels")
    levels.clear()
    levels.send_keys("0.5", Keys.ENTER)
    wait_until(lambda: "/console/events/evt-" in driver.current_url, 30, "the new event's page")
    event_id = driver.current_url.split("/events/")[1].split("?")[0]
    assert text(driver, "#message") == "Event created."
    assert text(driver, "#event-status") == "active"

    # The foreign VEN receives it and opts in; the page shows that by itself (it refreshes).
    wait_until(lambda: ven.latest(event_id), 30, "the VEN to receive the event")
    wait_until(lambda: "0: optIn" in text(driver, "#vens-sent"), 30, "the VEN's optIn on the event page")
    assert "site-ven" in text(driver, "#vens-sent")
    assert "modification 0 (active)" in text(driver, "#vens-sent")

    # The chart draws the VEN's power from the hour before against the cap (0.5 x 400 kW).
    wait_until(
        lambda: driver.execute_script("return document.querySelector('.uplot') !== null"), 30, "the chart"
    )
    wait_until(
        lambda: (
            driver.execute_script("return Number(document.getElementById('chart').dataset.drawn || 0)") > 60
        ),
        30,
        "the back-filled hour and the readings since",
    )
    legend = text(driver, ".uplot .u-legend")
    assert "site-ven fleet power (kW)" in legend and "cap (kW)" in legend
    wait_until(
        lambda: any(r["status"] == "active" for r in ven.received[-1:]), 30, "the VEN to see it active"
    )
    # what the chart draws: the hour before at ~355 kW, and since the VEN saw the event, 185 kW,
    # under the cap of 0.5 x 400 kW
    drawn = wait_until(
        lambda: (
            (
                data := driver.execute_async_script(
                    "fetch(arguments[0]).then(r => r.json()).then(arguments[1])",
                    f"{base}/events/{event_id}/data.json",
                )
            )["picture"]["series"]["site-ven"][-1][1]
            == 185.0
            and data
        ),
        30,
        "the VEN's reading under the cap",
    )
    assert [c["cap_kw"] for c in drawn["picture"]["cap"]] == [200.0, 200.0]
    assert 345 <= drawn["picture"]["before"] <= 370
    driver.refresh()
    assert "200.0 kW" in driver.page_source  # the cap, in the numbers above the chart
    during = float(text(driver, "#power-during").split()[0])
    assert 185.0 <= during < drawn["picture"]["before"]  # the mean during: late readings, then 185
    wait_until(
        lambda: driver.execute_script("return document.querySelector('.uplot') !== null"), 30, "the chart"
    )
    wait_until(lambda: "0: optIn" in text(driver, "#vens-sent"), 30, "the VEN table")
    shot = folder / "vtn-console-event.png"
    driver.set_window_size(1280, 1500)  # the numbers, the chart and the VENs' answers in one picture
    wait_until(lambda: "0: optIn" in text(driver, "#vens-sent"), 30, "the VEN table")
    driver.save_screenshot(str(shot))
    driver.set_window_size(1400, 1000)
    if os.environ.get("CARIFLEX_UPDATE_SCREENSHOTS") == "1":
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, SCREENSHOT)

    # Modify: new levels; the VEN receives modification 1 with them and opts in again.
    driver.find_element(By.LINK_TEXT, "Modify").click()
    levels = driver.find_element(By.ID, "levels")
    levels.send_keys("0.4", Keys.ENTER)
    wait_until(lambda: "done=modified" in driver.current_url, 30, "the modification")
    assert text(driver, "#event-modification") == "1"
    wait_until(
        lambda: (ven.latest(event_id) or {}).get("modification_number") == 1, 30, "modification 1 at the VEN"
    )
    assert ven.latest(event_id)["values"] == [0.4, 0.4]
    wait_until(lambda: "1: optIn" in text(driver, "#vens-sent"), 30, "the VEN's optIn to modification 1")

    # A form without its CSRF token changes nothing.
    driver.find_element(By.LINK_TEXT, "Cancel event").click()
    driver.execute_script("document.querySelector('form.actions input[name=csrf_token]').remove()")
    driver.find_element(By.CSS_SELECTOR, "form.actions button[type=submit]").click()
    wait_until(lambda: driver.find_elements(By.ID, "message"), 30, "the refusal")
    assert "CSRF token is missing or wrong, so nothing was changed" in text(driver, "#message")
    assert next(e for e in events(vtn) if e["event_id"] == event_id)["status"] == "active"

    # Cancel (with the token): the VEN receives the cancellation.
    driver.get(f"{base}/events/{event_id}/cancel")
    driver.find_element(By.CSS_SELECTOR, "form.actions button[type=submit]").click()
    wait_until(lambda: "done=cancelled" in driver.current_url, 30, "the cancellation")
    assert text(driver, "#event-status") == "cancelled"
    wait_until(lambda: (ven.latest(event_id) or {}).get("status") == "cancelled", 30, "the VEN to hear it")

    # Every action is on the event page with the operator's name, and in the VTN's log.
    history = text(driver, "main")
    for action in ("create load_control", "modify", "cancel"):
        assert f"{OPERATOR} {action} done" in history, history
    assert f"{OPERATOR} cancel refused missing or wrong CSRF token" in history
    logged = vtn.logged("console action")
    assert {(r["operator"], r["action"], r["outcome"]) for r in logged} >= {
        (OPERATOR, "create load_control", "refused"),
        (OPERATOR, "create load_control", "done"),
        (OPERATOR, "modify", "done"),
        (OPERATOR, "cancel", "done"),
    }

    # VENs and health pages; the calendar shows the event on its day.
    driver.get(f"{base}/vens")
    row = text(driver, "tbody tr")
    assert "site-ven" in row and "registered" in row and f"{CAPACITY_KW} kW" in row
    driver.get(f"{base}/health")
    assert "reachable" in text(driver, "main") and "VENs registered\n1" in text(driver, "main")
    driver.get(f"{base}/")
    assert driver.find_elements(By.CSS_SELECTOR, f".calendar a[href$='{event_id}']")

    # Nothing came from anywhere but this VTN, and no resource of its failed to load.
    loads = network(driver)
    assert foreign(loads.requested) == []
    assert [f for f in loads.failed if "/static/" in f or "data.json" in f] == []


def test_the_pages_fit_a_tablet_and_a_phone(console):
    vtn, ven, driver, folder = console
    base = f"{vtn.admin_url}/console"
    if driver.get_cookie("cariflex_vtn_session") is None:
        pytest.skip("needs the login of the test before")
    event_id = events(vtn)[-1]["event_id"]
    try:
        for width, height in ((820, 1180), (390, 844)):
            driver.set_window_size(width, height)
            for page in ("/", f"/events/{event_id}", "/events/new/load-control", "/vens", "/health"):
                driver.get(base + page)
                overflow = driver.execute_script(
                    "return document.documentElement.scrollWidth - document.documentElement.clientWidth"
                )
                assert overflow <= 1, f"{page} is {overflow} px wider than a {width} px screen"
                unlabeled = driver.execute_script(
                    "return Array.from(document.querySelectorAll("
                    "'input:not([type=hidden]), select, textarea'))"
                    ".filter(e => e.labels.length === 0).map(e => e.name)"
                )
                assert unlabeled == [], f"{page}: fields without a label: {unlabeled}"
    finally:
        driver.set_window_size(1400, 1000)


def vtn_tz():
    from vtn.events import SITE_TZ

    return SITE_TZ
