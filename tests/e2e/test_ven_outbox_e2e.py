"""The outbox never stalls, against a real FlexMeasures (gunicorn + plugin on PostgreSQL).

Issue 18's findings, replayed: an outbox whose head is a measurement for a sensor FlexMeasures does
not have (an S2 resource manager outside the fleet, queued by an earlier VEN), and one FlexMeasures
refuses (a unit it cannot convert; a changed value for a minute it already has, 403
INVALID_REPLACEMENT). Before, the poster retried such a head forever and nothing behind it was
posted again, across VEN restarts. FlexMeasures must be real here: what it answers (404/422/403 and
their bodies, 503 while the site is not set up) is the point of the test.
"""

from __future__ import annotations

import json
import subprocess
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import create_engine, text

from tests.helpers.common import free_port
from tests.helpers.openadr_harness import (
    BIN,
    FM_VEN_PASSWORD,
    FlexMeasuresServer,
    VenProcess,
    VtnProcess,
    wait_until,
)
from ven_bridge.fm_client import FlexMeasuresClient
from ven_bridge.outbox import Outbox
from ven_bridge.poster import Poster
from vtn.events import SITE_TZ

MIDNIGHT = (datetime.now(UTC).astimezone(SITE_TZ) + timedelta(days=1)).replace(
    hour=0, minute=0, second=0, microsecond=0
)
MINUTE = (datetime.now(UTC) - timedelta(hours=2)).replace(second=0, microsecond=0)


@pytest.fixture(scope="module")
def fm(tmp_path_factory, new_database):
    server = FlexMeasuresServer(tmp_path_factory.mktemp("fm"), new_database("cariflex_outbox"), free_port())
    server.prepare()
    server.start()
    engine = create_engine(server.env["CARIFLEX_DATABASE_URL"])
    yield server, engine
    engine.dispose()
    server.stop()


def values(db, sensor: str, start: datetime, end: datetime) -> list[float]:
    """The most recent belief per time slot, from the FlexMeasures database."""
    with db.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT DISTINCT ON (b.event_start) b.event_value FROM timed_belief b "
                "JOIN sensor s ON s.id = b.sensor_id WHERE s.name = :name AND b.event_start >= :start "
                "AND b.event_start < :end ORDER BY b.event_start, b.belief_horizon"
            ),
            {"name": sensor, "start": start, "end": end},
        ).all()
    return [r[0] for r in rows]


def measurement(sensor: str, minute: datetime, value: float, unit: str = "kW", prior: bool = False) -> dict:
    found = {
        "sensor": sensor,
        "start": minute.isoformat(),
        "duration": "PT1M",
        "values": [value],
        "unit": unit,
    }
    if prior:  # the belief time: the end of the minute, so that a changed value is a replacement
        found["prior"] = (minute + timedelta(minutes=1)).isoformat()
    return found


def price_event(event_id: str, day: datetime, eur_per_kwh: float) -> dict:
    """A normalised price event (ven_bridge.policy's contract with the plugin)."""
    return {
        "event_id": event_id,
        "modification_number": 0,
        "status": "far",
        "modification_date_time": datetime.now(UTC).isoformat(),
        "signal_name": "ENERGY_PRICE",
        "signal_type": "price",
        "item_base": {"name": "currencyPerKWh", "unit": "EUR", "scale": "none"},
        "intervals": [
            {"start": (day + timedelta(hours=h)).isoformat(), "duration": "PT1H", "value": eur_per_kwh}
            for h in range(24)
        ],
    }


def ven_cli(ven: VenProcess, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "cariflex-ven"), *args], env=ven.env, capture_output=True, text=True, timeout=60
    )


def test_unknown_sensor_and_refused_entries_at_the_head_do_not_delay_a_price_event(fm, tmp_path):
    server, db = fm
    # The state directory an earlier VEN left: an unknown device's measurement at the head, retried
    # a few times already; a measurement FlexMeasures refuses; an event of another group in backoff.
    box = Outbox(tmp_path / "ven" / "ven")
    box.add("measurement", "m:fuzz_rm_hol_power:0", measurement("fuzz_rm_hol_power", MINUTE, 3.0))
    for _ in range(5):
        box.retry_later(box.head()[0], 0, "503: sensor 'fuzz_rm_hol_power' not found (yet) in FlexMeasures")
    box.add("measurement", "m:bat_01_power:eur", measurement("bat_01_power", MINUTE, 5.0, unit="EUR/MWh"))
    box.add("event", "event:evt-stuck:0", price_event("evt-stuck", MIDNIGHT + timedelta(days=5), 0.2))
    box.retry_later(box.pending()[-1], 3600, "500: Internal Server Error")
    box.close()

    vtn = VtnProcess(tmp_path / "vtn", f"sqlite:///{tmp_path / 'vtn.sqlite'}").start()
    ven = VenProcess(tmp_path / "ven", vtn.url, server.url)
    try:
        vtn.cli("ven", "add", "cariflex-ven")
        ven.start()
        wait_until(lambda: ven.logged("registered"), 60, "the VEN to register")
        response = vtn.admin(
            "POST",
            "/events/price",
            {"start": MIDNIGHT.isoformat(), "prices": [100.0 + 10 * h for h in range(24)]},  # EUR/MWh
        )
        assert response.status_code == 201, response.text
        event_id = response.json()["event_id"]
        got = wait_until(
            lambda: (
                len(prices := values(db, "consumption_price", MIDNIGHT, MIDNIGHT + timedelta(days=1))) == 24
                and prices
            ),
            30,
            "the price event in FlexMeasures",
        )
        assert got == pytest.approx([100.0 + 10 * h for h in range(24)])

        status = json.loads(ven_cli(ven, "outbox", "status", "--json").stdout)
        dead = {d["key"]: d for d in status["dead_letter_entries"]}
        assert set(dead) == {"m:fuzz_rm_hol_power:0", "m:bat_01_power:eur"}
        assert dead["m:fuzz_rm_hol_power:0"]["status_code"] == 404
        assert (
            "'fuzz_rm_hol_power' does not exist in FlexMeasures" in dead["m:fuzz_rm_hol_power:0"]["response"]
        )
        assert dead["m:fuzz_rm_hol_power:0"]["attempts"] == 6
        assert dead["m:bat_01_power:eur"]["status_code"] == 422
        assert [e["key"] for e in status["retrying_entries"]] == ["event:evt-stuck:0"]  # its own group only
        posted = [line["key"] for line in ven.logged("posted to FlexMeasures")]
        assert f"event:{event_id}:0" in posted and "event:evt-stuck:0" not in posted

        shown = ven_cli(ven, "outbox", "status").stdout
        assert "m:bat_01_power:eur  HTTP 422:" in shown and "HTTP 404: sensor 'fuzz_rm_hol_power'" in shown
        # The operator: requeue one (the running VEN tries it again: refused again), discard the rest.
        assert ven_cli(ven, "outbox", "requeue", "m:bat_01_power:eur").returncode == 0
        wait_until(
            lambda: len(ven.logged("FlexMeasures refused an entry; moved to dead letters")) == 3,
            30,
            "the requeued entry to be tried again",
        )
        discarded = ven_cli(ven, "outbox", "discard", "--all")
        assert discarded.returncode == 0 and "2 dead letter(s) discarded" in discarded.stdout
        assert ven.status()["dead_letters"] == 0
    finally:
        ven.stop()
        vtn.stop()


def test_a_changed_value_for_a_filled_minute_is_a_dead_letter_and_stalls_nothing(fm, tmp_path):
    """403 INVALID_REPLACEMENT: the VEN lost its state directory (and with it the keys it had
    delivered) and measured minute M again, differently."""
    server, db = fm
    day = MIDNIGHT + timedelta(days=2)

    def post_all(state_dir) -> Outbox:
        box = Outbox(state_dir)
        poster = Poster(box, FlexMeasuresClient(server.url, "ven@cariflex.example", FM_VEN_PASSWORD))
        poster.start()
        try:
            wait_until(lambda: box.status()["outbox_depth"] == 0, 30, "an empty outbox")
        finally:
            poster.stop()
        return Outbox(state_dir)

    first = Outbox(tmp_path / "before")
    first.add("measurement", "m:bat_03_power:M", measurement("bat_03_power", MINUTE, 5.0, prior=True))
    first.close()
    assert post_all(tmp_path / "before").dead_letters() == []

    again = Outbox(tmp_path / "after")  # a new state directory: nothing delivered, as far as it knows
    again.add("measurement", "m:bat_03_power:M", measurement("bat_03_power", MINUTE, 7.0, prior=True))
    later = MINUTE + timedelta(minutes=1)
    again.add("measurement", "m:bat_03_power:M+1", measurement("bat_03_power", later, 6.0, prior=True))
    again.add("event", "event:evt-after:0", price_event("evt-after", day, 0.3))
    again.close()
    box = post_all(tmp_path / "after")

    (dead,) = box.dead_letters()
    assert (dead["key"], dead["status_code"]) == ("m:bat_03_power:M", 403)
    assert "INVALID_REPLACEMENT" in dead["response"]
    assert values(db, "bat_03_power", MINUTE, later + timedelta(minutes=1)) == [5.0, 6.0]
    assert values(db, "consumption_price", day, day + timedelta(days=1)) == [300.0] * 24
    assert box.status()["delivered"] == 2
