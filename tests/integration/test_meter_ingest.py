"""Meter readings over MQTT into FlexMeasures' database (issue 22, point 1), with real parts: a
private Mosquitto on an ephemeral port, `cariflex-ingest run` as a process, the test database set
up by `flexmeasures cariflex setup`, and a paho publisher and dead-letter subscriber of our own."""

from __future__ import annotations

import json
import math
import threading
import uuid
from datetime import UTC, datetime, timedelta
from urllib.parse import urlparse

import paho.mqtt.client as mqtt
import pytest
import requests
from sqlalchemy import text

from cariflex.contracts.meter_reading import DEAD_LETTER_PREFIX, encode, topic
from operations.mqtt_broker import Broker, mosquitto_binary, private_broker
from tests.helpers.openadr_harness import BIN, LoggedProcess, base_env, wait_until

pytestmark = pytest.mark.skipif(
    mosquitto_binary() is None, reason="needs mosquitto (apt-get install mosquitto)"
)

GATEWAY = "gw-test"


class Client:
    """A publisher that also collects the dead letters."""

    def __init__(self, broker: Broker):
        url = urlparse(broker.url)
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"test-{uuid.uuid4().hex[:8]}")
        if url.username:
            self.client.username_pw_set(url.username, url.password)
        self.dead: list[dict] = []
        self.lock = threading.Lock()
        self.client.on_message = self._dead_letter
        self.client.connect("127.0.0.1", url.port)
        self.client.subscribe(f"{DEAD_LETTER_PREFIX}/#", qos=1)
        self.client.loop_start()

    def _dead_letter(self, client, userdata, message) -> None:
        with self.lock:
            self.dead.append({"topic": message.topic, **json.loads(message.payload)})

    def publish(self, sensor: str, payload: bytes, gateway: str = GATEWAY) -> None:
        self.client.publish(f"cariflex/meters/{gateway}/{sensor}", payload, qos=1).wait_for_publish(10)

    def reading(self, sensor: str, value: float, when: datetime, unit: str = "kW", gateway: str = GATEWAY):
        self.client.publish(topic(gateway, sensor), encode(value, when, unit), qos=1).wait_for_publish(10)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def ingest_process(broker: Broker, database_url: str, folder, *extra: str) -> LoggedProcess:
    env = base_env(folder, CARIFLEX_MQTT_URL=broker.url, CARIFLEX_DATABASE_URL=database_url)
    process = LoggedProcess([str(BIN / "cariflex-ingest"), "run", "--health", "127.0.0.1:0", *extra], env)
    process.start()
    wait_until(lambda: process.logged("connected to the broker"), 60, "the ingest service to subscribe")
    return process


def health(process: LoggedProcess) -> dict:
    port = process.logged("ingest started")[0]["health_port"]
    return requests.get(f"http://127.0.0.1:{port}/health", timeout=5).json()


def stored(fm_db, sensor: str, gateway: str = GATEWAY) -> list[tuple[datetime, float]]:
    fm_db.session.rollback()
    rows = fm_db.session.execute(
        text(
            "SELECT b.event_start, b.event_value FROM timed_belief b JOIN sensor s ON s.id = b.sensor_id "
            "JOIN data_source d ON d.id = b.source_id WHERE s.name = :s AND d.name = :g ORDER BY 1"
        ),
        {"s": sensor, "g": gateway},
    ).all()
    return [(r[0], r[1]) for r in rows]


@pytest.fixture
def broker(tmp_path):
    broker = private_broker(tmp_path / "mosquitto").start()
    yield broker
    broker.stop()


@pytest.fixture
def ingest(broker, test_db_url, fleet, fm_db, tmp_path):
    fm_db.session.commit()
    process = ingest_process(broker, test_db_url, tmp_path / "ingest")
    yield process
    process.stop()


def test_readings_are_stored_and_every_bad_one_is_refused_to_the_dead_letter_topic_with_why(
    broker, ingest, fm_db
):
    client = Client(broker)
    now = datetime.now(UTC).replace(microsecond=0)
    try:
        client.reading("pv_01_meter", 3.25, now - timedelta(seconds=2))
        client.reading("pv_01_meter", 3500, now - timedelta(seconds=1), unit="W")  # 3.5 kW
        bad = {
            "wrong unit": (b"", "does not fit sensor pv_01_meter"),
            "NaN": (b'{"value": NaN, "time": "%s", "unit": "kW"}' % now.isoformat().encode(), "NaN"),
            "out of bounds": (encode(1e6, now), "outside pv_01_meter's physical bounds"),
            "future": (encode(1.0, now + timedelta(hours=1)), "in the future"),
            "not json": (b"\xff\xfe", "not a JSON object"),
            "boolean": (
                b'{"value": true, "time": "%s", "unit": "kW"}' % now.isoformat().encode(),
                "expected a number",
            ),
        }
        bad["wrong unit"] = (encode(1.0, now, "kWh"), "does not fit sensor pv_01_meter")
        for payload, _ in bad.values():
            client.publish("pv_01_meter", payload)
        client.reading("no_such_meter", 1.0, now)
        client.reading("pv_01_power", 1.0, now)  # a sensor, but not a meter: its 1-minute sibling
        wait_until(lambda: len(client.dead) == len(bad) + 2, 30, "every refusal on the dead-letter topic")
        reasons = [d["reason"] for d in client.dead]
        for _, problem in bad.values():
            assert any(problem in reason for reason in reasons), (problem, reasons)
        assert sum("unknown sensor 'no_such_meter'" in r for r in reasons) == 1
        assert sum("unknown sensor 'pv_01_power'" in r for r in reasons) == 1
        assert all(d["topic"].startswith("cariflex/meters/") for d in client.dead)
        assert {d["topic"] for d in client.dead} >= {f"cariflex/meters/{GATEWAY}/pv_01_meter"}
        wait_until(lambda: len(stored(fm_db, "pv_01_meter")) == 2, 30, "the two good readings")
        assert [v for _, v in stored(fm_db, "pv_01_meter")] == [3.25, 3.5]  # nothing of the refused
        assert health(ingest)["refused"] == len(bad) + 2
    finally:
        client.close()


def test_a_reading_delivered_again_is_written_once_and_the_rollups_follow(broker, ingest, fm_db):
    client = Client(broker)
    when = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
    try:
        for _ in range(3):  # a gateway resending after a lost acknowledgement
            client.reading("site_load_meter", 120.0, when)
        client.reading("site_load_meter", 130.0, when + timedelta(seconds=1))
        wait_until(lambda: health(ingest)["accepted"] == 4, 30, "four readings taken")
        assert [v for _, v in stored(fm_db, "site_load_meter")] == [120.0, 130.0]
        fm_db.session.rollback()
        energy = fm_db.session.execute(
            text(
                "SELECT sum(r.energy) FROM cariflex_rollup_15min r JOIN sensor s ON s.id = r.sensor_id "
                "WHERE s.name = 'site_load_meter'"
            )
        ).scalar_one()
        assert math.isclose(energy, (120 + 130) / 3600, rel_tol=1e-9)  # 2 s of 1-second readings
        # added to their bucket reading by reading (rollups.py), as a full recomputation gives
        rollup = text(
            "SELECT r.value, r.energy, r.readings FROM cariflex_rollup_15min r JOIN sensor s "
            "ON s.id = r.sensor_id WHERE s.name = 'site_load_meter'"
        )
        added = fm_db.session.execute(rollup).one()
        fm_db.session.execute(
            text(
                "SELECT cariflex_refresh_rollup(ARRAY[id], :a, :b) FROM sensor WHERE name = 'site_load_meter'"
            ),
            {"a": when, "b": when + timedelta(seconds=1)},
        )
        recomputed = fm_db.session.execute(rollup).one()
        fm_db.session.rollback()
        assert added.readings == recomputed.readings == 2
        assert math.isclose(added.value, recomputed.value) and math.isclose(added.energy, recomputed.energy)
    finally:
        client.close()


def _server(test_db_url: str, sql: str) -> None:
    """A statement on the server, from its maintenance database (not the one it is about)."""
    import psycopg2
    from sqlalchemy.engine import make_url

    from cariflex.database_url import to_libpq

    conn = psycopg2.connect(to_libpq(make_url(test_db_url).set(database="postgres").render_as_string(False)))
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
    finally:
        conn.close()


def test_the_database_away_loses_nothing_the_broker_accepted(broker, ingest, fm_db, test_db_url):
    database = urlparse(test_db_url).path.lstrip("/")
    client = Client(broker)
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
    try:
        _server(test_db_url, f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false')
        _server(
            test_db_url,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = 'cariflex-ingest'",
        )
        for second in range(50):
            client.reading("pv_02_meter", 1.0 + second, start + timedelta(seconds=second))
        wait_until(lambda: health(ingest)["db_errors"] >= 2, 60, "the service to find the database away")
        assert health(ingest)["ok"] is False
    finally:
        _server(test_db_url, f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')
    wait_until(lambda: len(stored(fm_db, "pv_02_meter")) == 50, 60, "all 50 readings after the outage")
    assert health(ingest)["ok"] is True
    client.close()


def test_the_broker_restarting_loses_nothing_it_accepted(broker, fleet, fm_db, test_db_url, tmp_path):
    fm_db.session.commit()
    process = ingest_process(broker, test_db_url, tmp_path / "ingest")
    process.stop()  # its session (and subscription) stays with the broker: readings are queued
    client = Client(broker)
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=10)
    for second in range(100):
        client.reading("pv_03_meter", 2.0, start + timedelta(seconds=second))
    client.close()
    broker.stop()  # SIGTERM: Mosquitto saves the queued messages
    broker.start()
    process = ingest_process(broker, test_db_url, tmp_path / "ingest")
    try:
        wait_until(lambda: len(stored(fm_db, "pv_03_meter")) == 100, 60, "the 100 queued readings")
    finally:
        process.stop()


def test_two_workers_share_the_readings_and_never_write_one_twice(
    broker, fleet, fm_db, test_db_url, tmp_path
):
    fm_db.session.commit()
    workers = [
        ingest_process(
            broker,
            test_db_url,
            tmp_path / f"w{i}",
            "--share",
            "ingest",
            "--client-id",
            f"ingest-{i}",
            "--batch",
            "50",
        )
        for i in (1, 2)
    ]
    client = Client(broker)
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    try:
        for second in range(1000):
            client.reading(f"pv_{second % 10 + 1:02d}_meter", 1.0, start + timedelta(seconds=second))
        wait_until(
            lambda: sum(health(w)["accepted"] for w in workers) == 1000,
            60,
            "1000 readings between the workers",
        )
        shares = [health(w)["accepted"] for w in workers]
        assert all(share > 0 for share in shares), shares  # both took part
        fm_db.session.rollback()
        count, distinct = fm_db.session.execute(
            text(
                "SELECT count(*), count(DISTINCT (b.sensor_id, b.event_start)) FROM timed_belief b "
                "JOIN data_source d ON d.id = b.source_id WHERE d.name = :g"
            ),
            {"g": GATEWAY},
        ).one()
        assert count == distinct == 1000
    finally:
        client.close()
        for worker in workers:
            worker.stop()


def test_raw_readings_past_the_kept_days_become_one_minute_means_on_the_minute_sensor(
    fleet, fm_db, test_db_url, tmp_path
):
    """The retention job (`cariflex-ingest downsample`, from cron) as a process: readings older
    than the kept days become 1-minute means on the meter's 1-minute sibling, the raw ones go, the
    recent ones stay; a dry run and a second run change nothing."""
    import subprocess

    old = (datetime.now(UTC) - timedelta(days=10)).replace(second=0, microsecond=0)
    recent = (datetime.now(UTC) - timedelta(days=1)).replace(second=0, microsecond=0)
    fm_db.session.execute(
        text("INSERT INTO data_source (name, type, attributes) VALUES (:g, 'gateway', '{}')"), {"g": GATEWAY}
    )
    raw = [(old + timedelta(seconds=s), float(s // 60 + 1)) for s in range(180)]  # 3 minutes: 1, 2, 3 kW
    raw += [(recent + timedelta(seconds=s), 9.0) for s in range(60)]
    for when, value in raw:
        fm_db.session.execute(
            text(
                "INSERT INTO timed_belief (event_start, belief_horizon, cumulative_probability, event_value, "
                "sensor_id, source_id) VALUES (:t, interval '0', 0.5, :v, "
                "(SELECT id FROM sensor WHERE name = 'pv_04_meter'), "
                "(SELECT id FROM data_source WHERE name = :g))"
            ),
            {"t": when, "v": value, "g": GATEWAY},
        )
    fm_db.session.commit()
    env = base_env(tmp_path, CARIFLEX_DATABASE_URL=test_db_url)

    def downsample(*extra: str) -> str:
        done = subprocess.run(
            [str(BIN / "cariflex-ingest"), "downsample", "--keep-days", "7", *extra],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout

    assert "would write 3 one-minute means, would delete 180 raw readings" in downsample("--dry-run")
    assert len(stored(fm_db, "pv_04_meter")) == 240
    assert "wrote 3 one-minute means, deleted 180 raw readings" in downsample()
    assert stored(fm_db, "pv_04_power") == [(old + timedelta(minutes=m), float(m + 1)) for m in range(3)]
    assert [v for _, v in stored(fm_db, "pv_04_meter")] == [9.0] * 60  # the last days stay raw
    assert "wrote 0 one-minute means, deleted 0 raw readings" in downsample()


def test_a_foreign_client_mosquitto_pub_is_read_and_its_raw_garbage_refused(broker, ingest, fm_db):
    """Messages from a client we did not write (Mosquitto's own mosquitto_pub), raw bytes included:
    the good reading is stored, every bad one is refused with its reason, the service stays up."""
    import shutil
    import subprocess

    if shutil.which("mosquitto_pub") is None:
        pytest.skip("needs mosquitto_pub (apt-get install mosquitto-clients)")
    client = Client(broker)  # the dead-letter listener
    url = urlparse(broker.url)
    now = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=3)
    messages = {
        "cariflex/meters/gw-foreign/pv_05_meter": encode(2.5, now),
        "cariflex/meters/gw-foreign/pv_06_meter": b"\x00\x01\x02not json",
        "cariflex/meters/gw-foreign/pv_07_meter": b'{"value": 1, "time": "'
        + now.isoformat().encode()
        + b'"}',
        "cariflex/meters/gw-foreign/pv_08_meter": b'{"value": [1], "time": "x", "unit": "kW"}',
    }
    try:
        for name, payload in messages.items():
            command = ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(url.port), "-q", "1", "-t", name, "-s"]
            if url.username:
                command += ["-u", url.username, "-P", url.password]
            subprocess.run(command, input=payload, check=True, timeout=30)
        wait_until(lambda: len(client.dead) == 3, 30, "three refusals")
        reasons = " | ".join(d["reason"] for d in client.dead)
        assert (
            "not a JSON object" in reasons and "unit: expected" in reasons and "expected a number" in reasons
        )
        wait_until(lambda: stored(fm_db, "pv_05_meter", "gw-foreign") == [(now, 2.5)], 30, "the good one")
        for sensor in ("pv_06_meter", "pv_07_meter", "pv_08_meter"):
            assert stored(fm_db, sensor, "gw-foreign") == []
        assert health(ingest)["ok"] is True
    finally:
        client.close()
