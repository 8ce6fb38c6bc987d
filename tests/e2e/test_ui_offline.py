"""FlexMeasures' web UI works offline (issue 21, point 4), in a real browser: headless Chromium
with every host but 127.0.0.1 unresolvable logs in to FlexMeasures (gunicorn, the plugin, a
database prepared as `make demo` does), opens the Cariflex site, sees its asset tree, opens a
battery's power sensor and sees its schedule chart, and no resource load failed on the way."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
import requests

from tests.helpers.browser import chrome, foreign, network, require_browser
from tests.helpers.common import free_port
from tests.helpers.openadr_harness import FlexMeasuresServer, wait_until
from tests.integration.test_replan import THIS_HOUR, prices_from_now

ADMIN = "admin@cariflex.example"
ADMIN_PASSWORD = "ui-admin-secret-1"


@pytest.fixture(scope="module")
def fm(tmp_path_factory, new_database):
    require_browser()
    folder = tmp_path_factory.mktemp("ui")
    event = folder / "prices.json"
    event.write_text(json.dumps(prices_from_now(0)))
    server = FlexMeasuresServer(folder / "fm", new_database("cariflex_ui"), free_port())
    server.env["CARIFLEX_ADMIN_PASSWORD"] = ADMIN_PASSWORD
    server.prepare(
        "cariflex ensure-admin",
        f"cariflex ingest-event {event} --no-replan",
        f"cariflex schedule --start {THIS_HOUR.isoformat()} --horizon PT12H",
    )
    server.start()
    yield server
    server.stop()


def api(fm, path: str):
    token = requests.post(
        f"{fm.url}/api/requestAuthToken", json={"email": ADMIN, "password": ADMIN_PASSWORD}, timeout=30
    ).json()["auth_token"]
    return requests.get(f"{fm.url}{path}", headers={"Authorization": token}, timeout=30).json()


def test_the_flexmeasures_ui_shows_the_site_and_a_battery_schedule_with_no_internet(fm):
    from selenium.webdriver.common.by import By

    assets = api(fm, "/api/v3_0/assets?all_accessible=true")
    site = next(a for a in assets if a["name"] == "Cariflex site")
    sensors = api(fm, f"/api/v3_0/sensors?asset={next(a['id'] for a in assets if a['name'] == 'bat_01')}")
    power = next(s for s in sensors if s["name"] == "bat_01_power")

    driver = chrome()
    try:
        driver.get(f"{fm.url}/login")
        driver.find_element(By.NAME, "email").send_keys(ADMIN)
        driver.find_element(By.NAME, "password").send_keys(ADMIN_PASSWORD)
        driver.find_element(By.CSS_SELECTOR, "form [type=submit]").click()
        wait_until(lambda: "/login" not in driver.current_url, 30, "the login to go through")

        # the site: its asset tree names its batteries, EV chargers and PV sites
        driver.get(f"{fm.url}/assets/{site['id']}/context")
        wait_until(
            lambda: "bat_01" in driver.page_source and "ev_01" in driver.page_source, 30, "the asset tree"
        )
        sheets = driver.execute_script(
            "return Array.from(document.styleSheets).map(s => s.href)"
            ".filter(h => h && h.includes('/ui-vendor/'))"
        )
        assert any("bootstrap@5.3.3" in href for href in sheets), sheets  # styled, from this server
        assert driver.execute_script(
            "return typeof bootstrap !== 'undefined' && typeof vegaEmbed === 'function'"
        )

        # a battery's power sensor: the chart (Vega) draws the schedule
        shown = f"start_time={THIS_HOUR.isoformat()}&end_time={(THIS_HOUR + timedelta(hours=12)).isoformat()}"
        driver.get(f"{fm.url}/sensors/{power['id']}?{shown}")

        def chart_drawn() -> bool:
            return bool(
                driver.execute_script(
                    "return Array.from(document.querySelectorAll('canvas, svg.marks')).some("
                    "e => e.getBoundingClientRect().width > 200)"
                )
            )

        wait_until(chart_drawn, 60, "the sensor chart")
        # the chart's data came: the statistics of the shown range name the schedule's source
        wait_until(lambda: "Cariflex scheduler" in driver.page_source, 60, "the schedule's statistics")
        loads = network(driver)
        assert not loads.failed, loads.failed
        assert not foreign(loads.requested), foreign(loads.requested)
        assert any("/cariflex/ui-vendor/vega@" in url for url in loads.requested)
    finally:
        driver.quit()
