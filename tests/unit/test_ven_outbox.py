"""The VEN's outbox on disk and its poster: order per group, de-duplication, done keys, dead letters
(with requeue and discard), what each FlexMeasures answer means, survival of a restart."""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from datetime import UTC, datetime, timedelta

import pytest
from click.testing import CliRunner

from tests.helpers.common import free_port
from ven_bridge.fm_client import Answer, FlexMeasuresClient, retry_after
from ven_bridge.outbox import Outbox, group_of
from ven_bridge.poster import DEAD, DONE, RETRY, Poster, classify


def event(event_id: str, number: int = 0, signal: str = "ENERGY_PRICE") -> dict:
    return {"event_id": event_id, "modification_number": number, "signal_name": signal, "status": "far"}


def measurement(sensor: str, minute: int, value: float = 1.0) -> dict:
    start = datetime(2030, 3, 1, 12, minute, tzinfo=UTC).isoformat()
    return {"sensor": sensor, "start": start, "duration": "PT1M", "values": [value], "unit": "kW"}


def drain(box: Outbox) -> list[str]:
    """Keys in the order the poster would take them, all accepted, until none is due."""
    keys = []
    while (entry := box.head()[0]) is not None:
        keys.append(entry.dedupe_key)
        box.mark_done(entry)
    return keys


def test_entries_keep_their_order_and_are_queued_once(tmp_path):
    box = Outbox(tmp_path)
    assert box.add("event", "event:a:0", event("a", 0))
    assert box.add("event", "event:a:1", event("a", 1))
    assert not box.add("event", "event:a:0", event("a", 0))  # openleadr repeats events after a restart
    head, _ = box.head()
    assert head.payload["modification_number"] == 0
    box.mark_done(head)
    assert not box.add("event", "event:a:0", event("a", 0))  # delivered keys stay delivered
    assert box.head()[0].payload["modification_number"] == 1


def test_groups_are_one_openadr_event_or_one_sensor():
    assert group_of("event", event("evt-1")) == "event:evt-1"
    assert group_of("event", event("evt-1#LOAD_CONTROL", signal="LOAD_CONTROL")) == "event:evt-1"
    assert group_of("event", event("evt-1#ENERGY_PRICE")) == "event:evt-1"
    assert group_of("event", event("a#b")) == "event:a#b"  # a foreign VTN's id with a '#' of its own
    assert group_of("measurement", measurement("bat_01_power", 0)) == "measurement:bat_01_power"
    assert group_of("measurement", measurement("bat_01_soc", 0)) == "measurement:bat_01_soc"


def test_an_entry_waiting_for_a_retry_holds_back_its_own_group_only(tmp_path):
    box = Outbox(tmp_path)
    box.add("event", "event:A:0", event("A", 0))
    box.add("event", "event:A#LOAD_CONTROL:0", event("A#LOAD_CONTROL", 0, "LOAD_CONTROL"))
    box.add("measurement", "m:bat_01_power:0", measurement("bat_01_power", 0))
    box.add("event", "event:B:0", event("B", 0))
    box.add("measurement", "m:bat_01_power:1", measurement("bat_01_power", 1))
    box.add("event", "event:A:1", event("A", 1))
    box.retry_later(box.head()[0], 60, "503: site not set up")  # event A's first modification
    # Everything else goes, oldest first; A's other part and its next modification wait behind it.
    assert drain(box) == ["m:bat_01_power:0", "event:B:0", "m:bat_01_power:1"]
    entry, wait = box.head()
    assert entry is None and 55 < wait <= 60
    status = box.status()
    assert (status["outbox_depth"], status["groups"], status["retrying"]) == (3, 1, 1)
    assert status["head_error"] == "503: site not set up" and status["head_attempts"] == 1
    assert box.retrying()[0]["key"] == "event:A:0"


def test_within_a_group_a_refused_entry_lets_the_next_one_go(tmp_path):
    box = Outbox(tmp_path)
    box.add("measurement", "m:bat_01_power:0", measurement("bat_01_power", 0))
    box.add("measurement", "m:bat_01_power:1", measurement("bat_01_power", 1))
    box.dead_letter(box.head()[0], 403, '{"status": "INVALID_REPLACEMENT", "message": "..."}')
    assert box.head()[0].dedupe_key == "m:bat_01_power:1"
    assert box.dead_letters()[0]["status_code"] == 403


def test_dead_letters_keep_the_answer_clipped_and_free_the_queue(tmp_path):
    box = Outbox(tmp_path)
    box.add("measurement", "m1", measurement("bat_01_power", 0))
    box.add("event", "k2", event("x"))
    box.dead_letter(box.head()[0], 422, "Unit EUR/MWh cannot be converted to kW" + "!" * 5000)
    assert box.head()[0].dedupe_key == "k2"
    dead = box.dead_letters()[0]
    assert dead["response"].startswith("Unit EUR/MWh cannot be converted to kW")
    assert len(dead["response"]) < 2100 and dead["response"].endswith("(3038 more characters)")
    assert box.status()["dead_letters"] == 1


def test_the_outbox_survives_a_restart(tmp_path):
    first = Outbox(tmp_path)
    first.add("event", "k1", event("a"))
    first.set_state("registration", {"ven_id": "ven-1"})
    first.close()
    again = Outbox(tmp_path)
    assert again.head()[0].dedupe_key == "k1"
    assert again.get_state("registration") == {"ven_id": "ven-1"}


def test_an_outbox_of_the_previous_version_gets_its_groups(tmp_path):
    """A state directory written by the FIFO outbox, with a stuck unknown-sensor entry at its head."""
    conn = sqlite3.connect(tmp_path / "outbox.sqlite")
    conn.executescript(
        """
        CREATE TABLE outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL,
            dedupe_key TEXT NOT NULL UNIQUE, payload TEXT NOT NULL, created_at REAL NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0, next_attempt_at REAL NOT NULL DEFAULT 0, last_error TEXT);
        CREATE TABLE dead_letter (id INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL,
            dedupe_key TEXT NOT NULL, payload TEXT NOT NULL, created_at REAL NOT NULL,
            failed_at REAL NOT NULL, status_code INTEGER, response TEXT);
        """
    )
    rows = [
        ("measurement", "m:fuzz", measurement("fuzz_rm_hol_power", 0), 412, time.time() + 30),
        ("event", "event:p:0", event("p"), 0, 0),
    ]
    for kind, key, payload, attempts, due in rows:
        conn.execute(
            "INSERT INTO outbox (kind, dedupe_key, payload, created_at, attempts, next_attempt_at, "
            "last_error) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (kind, key, json.dumps(payload), time.time(), attempts, due, "503: not found (yet)"),
        )
    conn.commit()
    conn.close()
    box = Outbox(tmp_path)
    assert [e.group_key for e in box.pending()] == ["measurement:fuzz_rm_hol_power", "event:p"]
    assert box.head()[0].dedupe_key == "event:p:0"  # no longer behind the stuck head


def test_requeue_and_discard_dead_letters(tmp_path):
    box = Outbox(tmp_path)
    for minute in range(3):
        box.add("measurement", f"m:bat_11_power:{minute}", measurement("bat_11_power", minute))
    box.add("event", "event:x:0", event("x"))
    for _ in range(4):
        box.dead_letter(box.head()[0], 404, "sensor 'bat_11_power' does not exist in FlexMeasures")
    assert box.status()["dead_letters"] == 4 and box.status()["outbox_depth"] == 0

    assert box.requeue(["m:bat_11_power:*"]) == [f"m:bat_11_power:{m}" for m in range(3)]
    assert [(e.dedupe_key, e.attempts) for e in box.pending()] == [
        (f"m:bat_11_power:{m}", 0) for m in range(3)
    ]
    assert box.requeue(["nothing-like-it"]) == []
    number = box.dead_letters()[0]["id"]
    assert box.discard([f"#{number}"]) == ["event:x:0"]
    assert box.dead_letters() == [] and box.status()["dead_letters"] == 0
    assert not box.add("event", "event:x:0", event("x"))  # the VTN re-sending it changes nothing
    assert box.requeue(["event:x:0"]) == []  # discarded is gone for good

    box.dead_letter(box.head()[0], 422, "refused")
    box.add("event", "event:y:0", event("y"))
    box.dead_letter(box.pending()[-1], 422, "refused")
    assert box.requeue() == ["m:bat_11_power:0", "event:y:0"]  # all of them
    assert [e.dedupe_key for e in box.pending()][-2:] == ["m:bat_11_power:0", "event:y:0"]
    assert drain(box)[0] == "m:bat_11_power:1"  # requeued at the end of its group


@pytest.mark.parametrize(
    ("answer", "action", "everyone"),
    [
        (Answer(200, "{}"), DONE, False),
        (Answer(202, "{}"), DONE, False),
        (Answer(0, "connection refused"), RETRY, True),
        (Answer(503, "site not set up"), RETRY, True),
        (Answer(502, "bad gateway"), RETRY, True),
        (Answer(504, "gateway timeout"), RETRY, True),
        (Answer(429, "slow down", retry_after_s=20), RETRY, True),
        (Answer(401, "token refused after a fresh login"), RETRY, True),
        (Answer(403, '{"message": "You cannot be authorized"}'), RETRY, True),
        (Answer(500, "Internal Server Error"), RETRY, False),
        (Answer(404, "Not Found"), RETRY, False),
        (Answer(408, "Request Timeout"), RETRY, False),
        (Answer(403, '{"results": "Rejected", "status": "INVALID_REPLACEMENT"}'), DEAD, False),
        (Answer(404, "sensor 'fuzz_rm_hol_power' does not exist", final=True), DEAD, False),
        (Answer(400, "not a JSON object"), DEAD, False),
        (Answer(409, "conflict"), DEAD, False),
        (Answer(413, "too large"), DEAD, False),
        (Answer(415, "unsupported media type"), DEAD, False),
        (Answer(422, "Unit EUR/MWh cannot be converted to kW"), DEAD, False),
    ],
)
def test_each_answer_is_retried_or_refused(answer, action, everyone):
    verdict = classify(answer)
    assert (verdict.action, verdict.everyone) == (action, everyone)


def test_retry_after_is_honoured_within_bounds():
    assert classify(Answer(429, "", retry_after_s=20)).delay_s == 20
    assert classify(Answer(503, "", retry_after_s=0)).delay_s == 0.5  # never a busy loop
    assert classify(Answer(429, "", retry_after_s=86400)).delay_s == 300
    assert classify(Answer(429, "")).delay_s is None  # backoff then
    assert retry_after("120") == 120
    now = datetime(2030, 3, 1, 12, 0, tzinfo=UTC)
    assert retry_after("Fri, 01 Mar 2030 12:01:30 GMT", now) == 90
    assert retry_after("soon") is None and retry_after(None) is None


def test_flexmeasures_unreachable_pauses_the_poster_not_each_group_in_turn(tmp_path):
    box = Outbox(tmp_path)
    box.add("event", "event:a:0", event("a"))
    box.add("event", "event:b:0", event("b"))
    nobody = FlexMeasuresClient(f"http://127.0.0.1:{free_port()}", "ven@cariflex.example", "x", (1, 1))
    poster = Poster(box, nobody)
    assert poster.drain_once() is None  # tried a: connection refused
    wait = poster.drain_once()
    assert wait is not None and 0 < wait <= 0.6  # b is not tried: FlexMeasures is down for everyone
    assert [(e.dedupe_key, e.attempts) for e in box.pending()] == [("event:a:0", 1), ("event:b:0", 0)]
    assert box.status()["head_error"].startswith("0: cannot reach FlexMeasures")


def test_an_unknown_entry_kind_is_a_dead_letter(tmp_path):
    box = Outbox(tmp_path)
    box.add("telepathy", "t1", {})
    box.add("event", "event:a:0", event("a"))
    poster = Poster(box, FlexMeasuresClient("http://127.0.0.1:9", "u", "p"))
    assert poster.drain_once() is None
    assert box.dead_letters()[0]["key"] == "t1" and box.dead_letters()[0]["status_code"] == 400


def test_measurements_of_devices_not_in_the_fleet_are_never_queued(tmp_path, caplog):
    from cariflex.fleet import load_fleet
    from cem.fleet_control import FleetController
    from cem.server import Cem

    cem, box = Cem(), Outbox(tmp_path)
    controller = FleetController(load_fleet(), cem, box)
    minute = datetime(2030, 3, 1, 18, 0, tzinfo=UTC)
    controller._measurements(minute + timedelta(seconds=30))  # starts the clock
    for n in range(2):
        for name in ("bat_01", "fuzz_rm_hol", "x" * 5000):
            state = cem.device(name)
            state.power_samples = [(time.monotonic() - 5, 10_000.0)]
            state.fill_level = 20.0
        with caplog.at_level(logging.WARNING, logger="cariflex.ven.fleet"):
            controller._measurements(minute + timedelta(minutes=n + 1))
    assert {e.payload["sensor"] for e in box.pending()} == {"bat_01_power", "bat_01_soc"}
    assert controller.dropped == 8 and controller.status()["dropped_measurements"] == 8
    dropped = [
        r for r in caplog.records if r.getMessage() == "measurement of a device not in the fleet dropped"
    ]
    assert len(dropped) == 2  # once per device
    assert {len(r.fields["device"]) for r in dropped} == {len("fuzz_rm_hol"), 64}


def test_outbox_commands_show_requeue_and_discard_dead_letters(tmp_path):
    from ven_bridge.cli import cli

    box = Outbox(tmp_path)
    box.add("measurement", "m:fuzz_rm_hol_power:0", measurement("fuzz_rm_hol_power", 0))
    box.add("measurement", "m:bat_01_power:0", measurement("bat_01_power", 0))
    box.add("event", "event:x:0", event("x"))
    box.dead_letter(box.head()[0], 404, "sensor 'fuzz_rm_hol_power' does not exist in FlexMeasures\n(set up)")
    box.dead_letter(box.head()[0], 403, '{"status": "INVALID_REPLACEMENT"}')
    box.retry_later(box.head()[0], 30, "500: Internal Server Error")
    box.close()
    run = CliRunner().invoke
    state = ["--state-dir", str(tmp_path)]

    shown = run(cli, ["outbox", "status", *state])
    assert shown.exit_code == 0, shown.output
    assert "pending: 1 in 1 group(s), 1 waiting for a retry" in shown.output
    assert "retrying event:x:0  1 attempt(s)" in shown.output and "500: Internal Server Error" in shown.output
    assert (
        "m:fuzz_rm_hol_power:0  HTTP 404: sensor 'fuzz_rm_hol_power' does not exist in FlexMeasures (set up)"
        in shown.output
    )
    assert 'm:bat_01_power:0  HTTP 403: {"status": "INVALID_REPLACEMENT"}' in shown.output
    as_json = json.loads(run(cli, ["outbox", "status", "--json", *state]).output)
    assert [d["key"] for d in as_json["dead_letter_entries"]] == ["m:fuzz_rm_hol_power:0", "m:bat_01_power:0"]

    assert run(cli, ["outbox", "requeue", *state]).exit_code == 2  # KEY or --all
    assert run(cli, ["outbox", "requeue", "--all", "k", *state]).exit_code == 2
    missing = run(cli, ["outbox", "discard", "m:nope", *state])
    assert missing.exit_code == 1 and "no dead letter matches m:nope" in missing.output
    requeued = run(cli, ["outbox", "requeue", "m:bat_01_power:0", *state])
    assert requeued.exit_code == 0 and "1 dead letter(s) requeued" in requeued.output
    discarded = run(cli, ["outbox", "discard", "--all", *state])
    assert discarded.exit_code == 0 and "discarded m:fuzz_rm_hol_power:0" in discarded.output
    box = Outbox(tmp_path)
    assert [e.dedupe_key for e in box.pending()] == ["event:x:0", "m:bat_01_power:0"]
    assert box.dead_letters() == []


def test_the_setpoint_command_writes_the_contract_and_refuses_what_is_not_a_number(tmp_path):
    """cariflex-ven setpoint writes Setpoints(...).to_dict(); NaN and infinity were written before
    and are refused now; cariflex-ven status reads the CEM's report through FleetStatus."""
    from ven_bridge.cli import cli

    runner = CliRunner()
    state = ["--state-dir", str(tmp_path)]
    assert runner.invoke(cli, ["setpoint", "bat_01", "20", *state]).output == "bat_01: 20 kW\n"
    assert runner.invoke(cli, ["setpoint", "ev_01", "-7.5", *state]).exit_code == 0
    for bad in ("nan", "inf", "-inf"):
        refused = runner.invoke(cli, ["setpoint", "ev_02", bad, *state])
        assert refused.exit_code == 1 and "Error: setpoints.ev_02: " in refused.output, refused.output
        assert "is not a finite number" in refused.output
    assert runner.invoke(cli, ["setpoint", "ev_01", "--clear", *state]).exit_code == 0
    box = Outbox(tmp_path)
    try:
        assert box.get_state("setpoints") == {"bat_01": 20.0}
        box.set_state("setpoints", {"bat_01": "20"})  # unusable: the CEM ignores it, the command replaces it
        box.set_state("s2", {"connected": -1})
    finally:
        box.close()
    replaced = runner.invoke(cli, ["setpoint", "bat_02", "5", *state])
    assert replaced.exit_code == 0 and "the stored setpoints are unusable" in replaced.output
    status = json.loads(runner.invoke(cli, ["status", "--json", *state]).output)
    assert status["s2"]["error"].startswith("the CEM's report is unusable: s2: missing field(s) under_frbc")
    box = Outbox(tmp_path)
    try:
        assert box.get_state("setpoints") == {"bat_02": 5.0}
    finally:
        box.close()
