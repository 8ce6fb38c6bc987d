"""The VTN process with real openleadr VENs over loopback: events, modifications, opts, restarts."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from tests.helpers.openadr_harness import VenFleet, VtnProcess, wait_until
from vtn.events import SITE_TZ

NEXT_DAY = (datetime.now(UTC).astimezone(SITE_TZ) + timedelta(days=1)).replace(
    hour=0, minute=0, second=0, microsecond=0
)
PRICES = [round(95 + 7.25 * h, 2) for h in range(24)]  # EUR/MWh


@pytest.fixture
def fleet():
    vens = VenFleet()
    yield vens
    vens.close()


@pytest.fixture
def vtn(tmp_path, vtn_store_url):
    process = VtnProcess(tmp_path, vtn_store_url).start()
    yield process
    process.stop()


def provision(vtn: VtnProcess, name: str) -> None:
    vtn.cli("ven", "add", name)


def issue_price(vtn: VtnProcess, start: datetime = NEXT_DAY, prices=PRICES) -> dict:
    response = vtn.admin("POST", "/events/price", {"start": start.isoformat(), "prices": prices})
    assert response.status_code == 201, response.text
    return response.json()


def issue_load_control(vtn: VtnProcess, levels=(0.6, 0.5, 0.4, 0.7), **extra) -> dict:
    body = {
        "start": (NEXT_DAY + timedelta(hours=18)).isoformat(),
        "duration": "PT4H",
        "levels": list(levels),
        **extra,
    }
    response = vtn.admin("POST", "/events/load-control", body)
    assert response.status_code == 201, response.text
    return response.json()


def opts(vtn: VtnProcess, event_id: str) -> list[dict]:
    return vtn.admin("GET", f"/events/{event_id}/opts").json()


def test_ven_receives_exact_price_and_load_control_events(vtn, fleet):
    provision(vtn, "ven-1")
    ven = fleet.add("ven-1", vtn.url)
    assert ven.registered

    price = issue_price(vtn)
    load = issue_load_control(vtn, ramp_up="PT30M", notification="PT2H")
    got_price = wait_until(lambda: ven.latest(price["event_id"]), 20, "the price event")
    got_load = wait_until(lambda: ven.latest(load["event_id"]), 20, "the load-control event")

    # Prices travel as EUR per kWh (the 2.0b itemBase); the VEN gets exactly the operator's values.
    assert got_price["values"] == pytest.approx([p / 1000 for p in PRICES])
    signal = got_price["raw"]["event_signals"][0]
    assert (signal["signal_name"], signal["signal_type"]) == ("ENERGY_PRICE", "price")
    assert signal["measurement"]["unit"] == "EUR"
    assert signal["measurement"]["description"] == "currencyPerKWh"
    intervals = signal["intervals"]
    assert [i["dtstart"] for i in intervals] == [NEXT_DAY + timedelta(hours=h) for h in range(24)]
    assert {i["duration"] for i in intervals} == {timedelta(hours=1)}

    assert got_load["values"] == [0.6, 0.5, 0.4, 0.7]
    load_signal = got_load["raw"]["event_signals"][0]
    assert (load_signal["signal_name"], load_signal["signal_type"]) == (
        "LOAD_CONTROL",
        "x-loadControlCapacity",
    )
    period = got_load["raw"]["active_period"]
    assert period["ramp_up"] == timedelta(minutes=30)  # openleadr's add_raw_event would drop these
    assert period["notification"] == timedelta(hours=2)

    wait_until(lambda: opts(vtn, load["event_id"]), 20, "the VEN's opt response")
    assert opts(vtn, load["event_id"])[0] | {"received_at": None} == {
        "ven": "ven-1",
        "ven_id": ven.ven_id,
        "modification_number": 0,
        "opt": "optIn",
        "received_at": None,
    }


def test_modify_and_cancel_reach_the_ven_and_opts_are_kept_per_modification(vtn, fleet):
    provision(vtn, "ven-m")
    ven = fleet.add("ven-m", vtn.url, opt="optIn")
    load = issue_load_control(vtn)
    event_id = load["event_id"]
    wait_until(lambda: any(o["modification_number"] == 0 for o in opts(vtn, event_id)), 20, "opt for mod 0")

    ven.opt = "optOut"
    modified = vtn.cli("event", "modify", event_id, "--levels", "0.2,0.3,0.3,0.2", "--json")
    assert json.loads(modified.stdout)["modification_number"] == 1
    got = wait_until(lambda: (r := ven.latest(event_id)) and r["modification_number"] == 1 and r, 20, "mod 1")
    assert got["values"] == [0.2, 0.3, 0.3, 0.2]
    wait_until(lambda: len(opts(vtn, event_id)) == 2, 20, "opt for mod 1")

    vtn.cli("event", "cancel", event_id)
    got = wait_until(lambda: (r := ven.latest(event_id)) and r["status"] == "cancelled" and r, 20, "cancel")
    assert got["modification_number"] == 2
    wait_until(lambda: len(opts(vtn, event_id)) == 3, 20, "opt for the cancellation")
    assert [(o["modification_number"], o["opt"]) for o in opts(vtn, event_id)] == [
        (0, "optIn"),
        (1, "optOut"),
        (2, "optOut"),
    ]


def test_events_without_targets_go_to_every_ven_and_vens_limits_them(vtn, fleet):
    for name in ("ven-a", "ven-b"):
        provision(vtn, name)
    a, b = fleet.add("ven-a", vtn.url), fleet.add("ven-b", vtn.url)
    everyone = issue_load_control(vtn)
    only_b = issue_load_control(vtn, levels=(0.9,), vens=["ven-b"])
    wait_until(lambda: a.latest(everyone["event_id"]) and b.latest(everyone["event_id"]), 20, "fan-out")
    wait_until(lambda: b.latest(only_b["event_id"]), 20, "the targeted event")
    assert a.latest(only_b["event_id"]) is None


def test_unprovisioned_ven_is_refused(vtn, fleet):
    stranger = fleet.add("ven-unknown", vtn.url)
    assert not stranger.registered
    refusal = wait_until(lambda: vtn.logged("refused registration: VEN not provisioned"), 10, "the refusal")
    assert refusal[0]["ven_name"] == "ven-unknown"
    assert "ven-unknown" not in [v["ven_name"] for v in vtn.admin("GET", "/vens").json()]


def test_killed_vtn_restarts_on_its_store_and_loses_nothing(tmp_path, vtn_store_url, fleet):
    vtn = VtnProcess(tmp_path, vtn_store_url).start()
    provision(vtn, "ven-r")
    ven = fleet.add("ven-r", vtn.url)
    ven_id = ven.ven_id
    price = issue_price(vtn)
    load = issue_load_control(vtn)
    vtn.cli("event", "modify", load["event_id"], "--levels", "0.4")
    wait_until(lambda: (r := ven.latest(load["event_id"])) and r["modification_number"] == 1, 20, "mod 1")

    vtn.kill()  # SIGKILL: no shutdown code runs
    # While the VTN is down, the operator issues another event into the store.
    late = json.loads(
        vtn.cli(
            "event",
            "load-control",
            "--start",
            (NEXT_DAY + timedelta(hours=6)).isoformat(),
            "--duration",
            "PT1H",
            "--levels",
            "0.8",
            "--json",
        ).stdout
    )

    restarted = VtnProcess(tmp_path, vtn_store_url, port=vtn.port).start()
    try:
        # The running VEN keeps polling the same address and gets what it missed.
        got = wait_until(lambda: ven.latest(late["event_id"]), 30, "the event issued while down")
        assert got["values"] == [0.8]
        # A VEN process that starts afresh syncs every event, with unchanged ids and numbers.
        fleet.stop_ven(ven)
        again = fleet.add("ven-r", restarted.url)
        assert again.ven_id == ven_id
        wait_until(
            lambda: all(again.latest(e) for e in (price["event_id"], load["event_id"], late["event_id"])),
            30,
            "all events after the restart",
        )
        assert again.latest(price["event_id"])["modification_number"] == 0
        assert again.latest(price["event_id"])["values"] == pytest.approx([p / 1000 for p in PRICES])
        assert again.latest(load["event_id"])["modification_number"] == 1
        assert again.latest(load["event_id"])["values"] == [0.4, 0.4, 0.4, 0.4]
    finally:
        restarted.stop()


def test_admin_api_needs_the_token_and_answers_health_without_it(vtn):
    assert vtn.admin("GET", "/health", token=None).json()["status"] == "ok"
    assert vtn.admin("GET", "/events", token=None).status_code == 401
    assert vtn.admin("GET", "/events", token="wrong").status_code == 401


def test_admin_api_reports_bad_input_unknown_ids_and_conflicts(vtn):
    bad = vtn.admin("POST", "/events/price", {"start": NEXT_DAY.isoformat(), "prices": [1.0] * 23})
    assert bad.status_code == 400
    assert bad.json()["error"] == "--values has 23 prices; a price event needs exactly 24 (one per hour)"
    for body, message in (
        ({"prices": "1" * 24}, "field 'prices' must be a list"),
        ({"prices": None}, "missing field(s) prices"),
        ({"prices": [True] * 24}, "value 1 (True) is not a number"),
        ({"prices": PRICES, "allow_past": "false"}, "field 'allow_past' must be true/false"),
        ({"prices": PRICES, "vens": {"a": 1}}, "field 'vens' must be a list or a string"),
    ):
        wrong = vtn.admin("POST", "/events/price", {"start": NEXT_DAY.isoformat(), **body})
        assert wrong.status_code == 400 and message in wrong.json()["error"], wrong.text
    unknown_field = vtn.admin("POST", "/events/price", {"start": NEXT_DAY.isoformat(), "prizes": []})
    assert unknown_field.status_code == 400 and "unknown field(s) prizes" in unknown_field.json()["error"]
    assert vtn.admin("GET", "/events/evt-missing").status_code == 404
    event_id = issue_load_control(vtn)["event_id"]
    assert vtn.admin("POST", f"/events/{event_id}/cancel").status_code == 200
    conflict = vtn.admin("PATCH", f"/events/{event_id}", {"levels": [0.1]})
    assert conflict.status_code == 409 and "cancelled" in conflict.json()["error"]
    listed = {e["event_id"]: e for e in vtn.admin("GET", "/events").json()}
    assert listed[event_id]["status"] == "cancelled"


def test_remote_cli_operates_through_the_admin_api(vtn):
    result = vtn.cli(
        "--remote",
        vtn.admin_url,
        "event",
        "price",
        "--start",
        NEXT_DAY.isoformat(),
        "--values",
        ",".join(map(str, PRICES)),
        "--json",
    )
    event_id = json.loads(result.stdout)["event_id"]
    shown = json.loads(vtn.cli("--remote", vtn.admin_url, "event", "show", event_id, "--json").stdout)
    assert shown["values"] == pytest.approx(PRICES)
    refused = vtn.cli("--remote", vtn.admin_url, "event", "cancel", "evt-nope", check=False)
    assert refused.returncode == 1 and "event 'evt-nope' does not exist" in refused.stderr


def test_sigterm_stops_the_vtn_cleanly(tmp_path, vtn_store_url):
    vtn = VtnProcess(tmp_path, vtn_store_url).start()
    assert vtn.stop() == 0
    wait_until(lambda: vtn.logged("vtn stopped"), 10, "the shutdown log line")


def test_plain_http_needs_insecure(tmp_path, vtn_store_url):
    vtn = VtnProcess(tmp_path, vtn_store_url, extra=["--day-ahead-time", "off"])
    result = vtn.cli("serve", "--port", "0", "--admin-port", "0", check=False)
    assert result.returncode == 2
    assert "refusing to serve OpenADR over plain HTTP" in result.stderr


def test_day_ahead_prices_are_published_at_start_when_the_time_has_passed(tmp_path, fleet):
    store = f"sqlite:///{tmp_path / 'dayahead.sqlite'}"
    prices = tmp_path / "prices.csv"
    prices.write_text("hour,price\n" + "\n".join(f"{h},{120 + h}" for h in range(24)) + "\n")
    vtn = VtnProcess(
        tmp_path, store, extra=["--insecure", "--day-ahead-time", "00:00", "--price-file", str(prices)]
    ).start()
    try:
        vtn.cli("ven", "add", "ven-d")
        ven = fleet.add("ven-d", vtn.url)
        events = wait_until(
            lambda: (
                len(found := [e for e in vtn.admin("GET", "/events").json() if e["source"] == "day-ahead"])
                == 2
                and found
            ),
            20,
            "the day-ahead events of today (caught up) and tomorrow",
        )
        by_start = {e["start"]: e for e in events}
        assert sorted(by_start) == [(NEXT_DAY - timedelta(days=1)).isoformat(), NEXT_DAY.isoformat()]
        tomorrow = by_start[NEXT_DAY.isoformat()]
        got = wait_until(lambda: ven.latest(tomorrow["event_id"]), 20, "day-ahead prices at the VEN")
        assert got["values"] == pytest.approx([(120 + h) / 1000 for h in range(24)])
    finally:
        assert vtn.stop() == 0
    # A restart does not publish the same day twice.
    again = VtnProcess(
        tmp_path, store, extra=["--insecure", "--day-ahead-time", "00:00", "--price-file", str(prices)]
    ).start()
    try:
        wait_until(lambda: again.logged("day-ahead prices already published"), 20, "the idempotency check")
        assert len([e for e in again.admin("GET", "/events").json() if e["source"] == "day-ahead"]) == 2
    finally:
        again.stop()


def test_telemetry_reports_are_stored(vtn, fleet, vtn_store_url):
    from sqlalchemy import select

    from vtn.store import ReportRegistration, ReportValue, Store

    provision(vtn, "ven-t")
    readings = iter(range(1000))
    ven = fleet.add(
        "ven-t",
        vtn.url,
        reports=[
            {
                "callback": lambda: 40.0 + next(readings),
                "resource_id": "site",
                "measurement": "power_real",
                "unit": "W",
                "sampling_rate": timedelta(seconds=1),
                "report_duration": timedelta(hours=1),
            }
        ],
    )
    assert ven.registered
    store = Store(vtn_store_url)

    def stored() -> list[ReportValue]:
        with store.session() as session:
            return (
                session.execute(select(ReportValue).where(ReportValue.ven_id == ven.ven_id)).scalars().all()
            )

    try:
        values = wait_until(lambda: len(stored()) >= 2 and stored(), 30, "two stored report values")
        assert all(v.value >= 40.0 for v in values)
        assert all(v.at.tzinfo is not None for v in values)
        # What the VEN registered (oadrRegisterReport) is stored too, by the r_id its values carry:
        # that is how `event show` and the console know these values are power in W.
        with store.session() as session:
            registered = (
                session.execute(select(ReportRegistration).where(ReportRegistration.ven_id == ven.ven_id))
                .scalars()
                .all()
            )
        assert {r.r_id for r in registered} >= {v.r_id for v in values}
        (power,) = [r for r in registered if r.r_id == values[0].r_id]
        assert power.description["measurement"] == "RealPower" and power.description["unit"] == "W"
    finally:
        store.dispose()
