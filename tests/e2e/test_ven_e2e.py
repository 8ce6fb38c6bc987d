"""The whole chain as processes: VTN → VEN → FlexMeasures (gunicorn + plugin) → beliefs in PostgreSQL.

One FlexMeasures server, VTN and VEN serve the module; each test issues events for its own days, so
their beliefs never overlap, and reads the FlexMeasures database directly.
"""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import create_engine, text

from tests.helpers.common import free_port
from tests.helpers.openadr_harness import FlexMeasuresServer, VenProcess, VtnProcess, wait_until
from ven_bridge.outbox import Outbox
from vtn.events import SITE_TZ
from vtn.store import Event, Interval, Store

MIDNIGHT = (datetime.now(UTC).astimezone(SITE_TZ) + timedelta(days=1)).replace(
    hour=0, minute=0, second=0, microsecond=0
)


def day(n: int) -> datetime:
    return MIDNIGHT + timedelta(days=n)


@pytest.fixture(scope="module")
def stack(tmp_path_factory, new_database):
    folder = tmp_path_factory.mktemp("e2e")
    fm = FlexMeasuresServer(folder / "fm", new_database("cariflex_e2e"), free_port())
    fm.prepare()
    fm.start()
    vtn_store = f"sqlite:///{folder / 'vtn.sqlite'}"
    vtn = VtnProcess(folder / "vtn", vtn_store).start()
    vtn.cli("ven", "add", "cariflex-ven")
    ven = VenProcess(folder / "ven", vtn.url, fm.url).start()
    wait_until(lambda: ven.logged("registered"), 60, "the VEN to register")
    engine = create_engine(fm.env["CARIFLEX_DATABASE_URL"])
    parts = {"fm": fm, "vtn": vtn, "ven": ven, "db": engine, "vtn_store": vtn_store, "folder": folder}
    yield parts
    engine.dispose()
    parts["ven"].stop()  # a test may have replaced it
    vtn.stop()
    fm.stop()


def beliefs(db, sensor: str, start: datetime, end: datetime) -> list[tuple[datetime, float]]:
    """Most recent belief per time slot (smallest horizon), from the FlexMeasures database."""
    with db.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT DISTINCT ON (b.event_start) b.event_start, b.event_value FROM timed_belief b "
                "JOIN sensor s ON s.id = b.sensor_id WHERE s.name = :name AND b.event_start >= :start "
                "AND b.event_start < :end ORDER BY b.event_start, b.belief_horizon"
            ),
            {"name": sensor, "start": start, "end": end},
        ).all()
    return [(r[0], r[1]) for r in rows]


def belief_rows(db, sensor: str, start: datetime, end: datetime) -> int:
    with db.connect() as conn:
        return conn.execute(
            text(
                "SELECT count(*) FROM timed_belief b JOIN sensor s ON s.id = b.sensor_id "
                "WHERE s.name = :name AND b.event_start >= :start AND b.event_start < :end"
            ),
            {"name": sensor, "start": start, "end": end},
        ).scalar_one()


def all_beliefs(db) -> int:
    with db.connect() as conn:
        return conn.execute(text("SELECT count(*) FROM timed_belief")).scalar_one()


def price(vtn: VtnProcess, start: datetime, prices: list[float]) -> str:
    response = vtn.admin("POST", "/events/price", {"start": start.isoformat(), "prices": prices})
    assert response.status_code == 201, response.text
    return response.json()["event_id"]


def load_control(vtn: VtnProcess, start: datetime, levels: list[float], hours: int) -> str:
    body = {"start": start.isoformat(), "duration": f"PT{hours}H", "levels": levels}
    response = vtn.admin("POST", "/events/load-control", body)
    assert response.status_code == 201, response.text
    return response.json()["event_id"]


def quarter_values(db, sensor: str, start: datetime, hours: float) -> list[float]:
    return [v for _, v in beliefs(db, sensor, start, start + timedelta(hours=hours))]


def test_price_and_load_control_become_beliefs_that_modifications_supersede(stack):
    vtn, db = stack["vtn"], stack["db"]
    prices = [round(100 + 4.5 * h, 2) for h in range(24)]
    price(vtn, day(0), prices)
    got = wait_until(
        lambda: (
            len(beliefs(db, "consumption_price", day(0), day(1))) == 24
            and beliefs(db, "consumption_price", day(0), day(1))
        ),
        30,
        "24 prices in FlexMeasures",
    )
    assert [v for _, v in got] == pytest.approx(prices)
    assert [t for t, _ in got] == [day(0) + timedelta(hours=h) for h in range(24)]

    start = day(0) + timedelta(hours=18)
    event_id = load_control(vtn, start, [0.6, 0.5, 0.4, 0.7], 4)
    expected = [60.0] * 4 + [50.0] * 4 + [40.0] * 4 + [70.0] * 4 + [100.0]  # + the restore slot
    wait_until(lambda: quarter_values(db, "load_control_signal", start, 4.25) == expected, 30, "load control")
    assert quarter_values(db, "demand_response_signal", start, 4.25) == [1.0] * 16 + [0.0]

    vtn.cli("event", "modify", event_id, "--levels", "0.3")
    wait_until(lambda: quarter_values(db, "load_control_signal", start, 4) == [30.0] * 16, 30, "modification")
    vtn.cli("event", "cancel", event_id)
    wait_until(lambda: quarter_values(db, "load_control_signal", start, 4.25) == [100.0] * 17, 30, "restore")
    assert quarter_values(db, "demand_response_signal", start, 4.25) == [0.0] * 17


def test_flexmeasures_down_for_a_while_loses_and_doubles_nothing(stack):
    vtn, ven, fm, db = stack["vtn"], stack["ven"], stack["fm"], stack["db"]
    fm.stop()
    try:
        price(vtn, day(2), [90.0] * 24)
        price(vtn, day(3), [95.0] * 24)
        wait_until(
            lambda: ven.status()["outbox_depth"] >= 2 and ven.status()["head_attempts"] >= 1,
            30,
            "the events to wait in the outbox",
        )
    finally:
        fm.start()
    wait_until(lambda: ven.status()["outbox_depth"] == 0, 60, "the outbox to drain")
    for n, value in ((2, 90.0), (3, 95.0)):
        assert belief_rows(db, "consumption_price", day(n), day(n + 1)) == 24  # once each, no duplicates
        assert {v for _, v in beliefs(db, "consumption_price", day(n), day(n + 1))} == {value}


def test_killed_ven_resumes_its_outbox(stack):
    vtn, fm, db = stack["vtn"], stack["fm"], stack["db"]
    ven = stack["ven"]
    fm.stop()
    try:
        price(vtn, day(4), [77.0] * 24)
        wait_until(lambda: ven.status()["outbox_depth"] >= 1, 30, "the event in the outbox")
        ven.kill()
    finally:
        fm.start()
    restarted = VenProcess(stack["folder"] / "ven", vtn.url, fm.url).start()
    stack["ven"] = restarted
    wait_until(lambda: belief_rows(db, "consumption_price", day(4), day(5)) == 24, 60, "the resumed post")
    wait_until(lambda: restarted.status()["outbox_depth"] == 0, 30, "an empty outbox")
    assert belief_rows(db, "consumption_price", day(4), day(5)) == 24


def test_bad_events_are_opted_out_and_nothing_reaches_flexmeasures(stack):
    vtn, db = stack["vtn"], stack["db"]
    wait_until(lambda: stack["ven"].status()["outbox_depth"] == 0, 60, "a quiet outbox")
    before = all_beliefs(db)
    usd = vtn.admin(
        "POST", "/events/price", {"start": day(6).isoformat(), "prices": [1.0] * 24, "currency": "USD"}
    ).json()["event_id"]
    # What another VTN might send, and ours refuses to create: written straight into its store.
    store = Store(stack["vtn_store"])
    # (NaN payloads are checked by the policy and plugin tests: SQLite cannot even store a NaN.)
    bad = {
        "offset": ("x-loadControlLevelOffset", [0.5, 0.5], 0),
        "gap": ("x-loadControlCapacity", [0.5, 0.5], 1),
    }
    ids = {}
    with store.write_session() as session:
        for name, (signal_type, values, gap_hours) in bad.items():
            ids[name] = f"evt-bad-{name}"
            start = day(7) + timedelta(hours=len(ids) * 3)
            session.add(
                Event(
                    event_id=ids[name],
                    kind="load_control",
                    signal_name="LOAD_CONTROL",
                    signal_type=signal_type,
                    market_context="http://cariflex.example/programs/martinique",
                    start=start,
                    duration_s=3600 * (2 + gap_hours),
                    intervals=[
                        Interval(
                            uid=i,
                            start=start + timedelta(hours=i * (1 + gap_hours)),
                            duration_s=3600,
                            value=v,
                        )
                        for i, v in enumerate(values)
                    ],
                )
            )
    store.dispose()

    def opts() -> dict[str, str]:
        found = {}
        for name, event_id in {**ids, "usd": usd}.items():
            rows = vtn.admin("GET", f"/events/{event_id}/opts").json()
            if rows:
                found[name] = rows[-1]["opt"]
        return found

    assert wait_until(lambda: len(opts()) == 3 and opts(), 30, "the VEN's answers") == {
        "offset": "optOut",
        "gap": "optOut",
        "usd": "optOut",
    }
    status = json.loads(_ven_cli(stack["ven"], "outbox", "status", "--json"))
    decisions = {d["event_id"]: d["reason"] for d in status["decisions"]}
    assert decisions[usd] == "price currency 'USD' is not supported (need EUR)"
    assert decisions[ids["offset"]] == "unsupported signal LOAD_CONTROL/x-loadControlLevelOffset"
    assert decisions[ids["gap"]].endswith("leaves a gap after the previous one")
    assert all_beliefs(db) == before


def test_refused_measurement_goes_to_dead_letters_and_good_ones_feed_telemetry(stack):
    ven, db = stack["ven"], stack["db"]
    box = Outbox(stack["folder"] / "ven" / "ven")
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    box.add(
        "measurement",
        "m-bad",
        {
            "sensor": "bat_01_power",
            "start": now.isoformat(),
            "duration": "PT1M",
            "values": [5.0],
            "unit": "EUR/MWh",
        },
    )
    box.add(
        "measurement",
        "m-good",
        {
            "sensor": "bat_02_power",
            "start": now.isoformat(),
            "duration": "PT1M",
            "values": [12.5],
            "unit": "kW",
        },
    )
    box.close()
    wait_until(
        lambda: ven.status()["dead_letters"] >= 1 and ven.status()["outbox_depth"] == 0, 30, "the posts"
    )
    dead = json.loads(_ven_cli(ven, "outbox", "status", "--json"))["dead_letter_entries"]
    assert dead[-1]["key"] == "m-bad" and dead[-1]["status_code"] in (400, 422)
    assert belief_rows(db, "bat_02_power", now, now + timedelta(minutes=1)) == 1

    # The fleet power the VEN reports to the VTN now includes bat_02's 12.5 kW.
    store = Store(stack["vtn_store"])
    try:
        from sqlalchemy import select

        from vtn.store import ReportValue

        def reported() -> list[float]:
            with store.session() as session:
                return [r.value for r in session.execute(select(ReportValue)).scalars()]

        assert 12.5 in wait_until(lambda: reported(), 30, "a TELEMETRY_USAGE report")
    finally:
        store.dispose()
    # Everything the VEN bridge sent so far (registration, report registration, polls, event requests,
    # opt answers, telemetry) passed the VTN's edge, which validates each message against the 2.0b XSD.
    assert not stack["vtn"].logged("refused OpenADR message")


def test_ven_registers_once_a_late_vtn_comes_up(stack, tmp_path):
    port = free_port()
    store_url = f"sqlite:///{tmp_path / 'late.sqlite'}"
    late = VtnProcess(tmp_path / "vtn", store_url, port=port)
    late.cli("ven", "add", "ven-early")
    ven = VenProcess(
        tmp_path / "ven",
        f"http://127.0.0.1:{port}/OpenADR2/Simple/2.0b",
        stack["fm"].url,
        ven_name="ven-early",
    ).start()
    try:
        wait_until(lambda: len(ven.logged("registration failed; retrying")) >= 2, 30, "failed attempts")
        late.start()
        wait_until(lambda: ven.logged("registered"), 60, "the registration")
        assert ven.status()["registered"]
    finally:
        ven.stop()
        late.stop()
        shutil.rmtree(tmp_path / "ven", ignore_errors=True)


def _ven_cli(ven: VenProcess, *args: str) -> str:
    import subprocess

    from tests.helpers.openadr_harness import BIN

    return subprocess.run(
        [str(BIN / "cariflex-ven"), *args],
        env=ven.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout


def test_dr_verification_reaches_the_vtn_in_the_telemetry_report(stack, tmp_path):
    """A verified load-control event (baseline 20 kW, measured 8 kW, cap 6 kW, one hour) goes back
    to the grid operator: delivered 12 kWh, 85.7 % of the 14 kWh asked."""
    from zoneinfo import ZoneInfo

    from sqlalchemy import select

    from flexmeasures_cariflex.data.services.dr_verification import _weekend
    from vtn.store import ReportValue

    db = stack["db"]
    tz = ZoneInfo("America/Martinique")
    event = (datetime.now(UTC) - timedelta(hours=3)).replace(minute=0, second=0, microsecond=0)
    local = event.astimezone(tz)
    day = local.date()
    comparable = [d for d in (day - timedelta(days=n) for n in range(1, 21)) if _weekend(d) == _weekend(day)]
    rows = []
    for d in comparable[:5]:
        start = datetime.combine(d, local.time(), tz).astimezone(UTC)
        rows += [("ev_05_power", start + timedelta(minutes=m), 20.0) for m in range(60)]
    rows += [("ev_05_power", event + timedelta(minutes=m), 8.0) for m in range(60)]
    rows += [("load_control_signal", event + timedelta(minutes=15 * q), 1.0) for q in range(4)]
    with db.begin() as conn:
        source = conn.execute(text("SELECT id FROM data_source WHERE name = 'Simulator'")).scalar_one()
        for name, at, value in rows:
            conn.execute(
                text(
                    "INSERT INTO timed_belief (event_start, belief_horizon, cumulative_probability, "
                    "event_value, sensor_id, source_id) SELECT :at, interval '0', 0.5, :v, s.id, :src "
                    "FROM sensor s WHERE s.name = :name"
                ),
                {"at": at, "v": value, "src": source, "name": name},
            )
    stack["vtn"].cli("ven", "add", "ven-dr")
    ven = VenProcess(
        tmp_path / "ven",
        stack["vtn"].url,
        stack["fm"].url,
        ven_name="ven-dr",
        extra=["--dr-poll-seconds", "1"],
    ).start()
    store = Store(stack["vtn_store"])
    try:

        def reported() -> set[float]:
            with store.session() as session:
                return {r.value for r in session.execute(select(ReportValue)).scalars()}

        # ReportValue rows carry the r_id of the VEN's energy_real and x-drDeliveredPercent streams
        wait_until(lambda: {12.0, 85.7} <= reported(), 60, "the DR verification in the telemetry report")
    finally:
        store.dispose()
        ven.stop()
