"""The VEN's outbox on disk: order, de-duplication, done keys, dead letters, survival of a restart."""

from __future__ import annotations

from ven_bridge.outbox import Outbox


def test_entries_keep_their_order_and_are_queued_once(tmp_path):
    box = Outbox(tmp_path)
    assert box.add("event", "event:a:0", {"n": 1})
    assert box.add("event", "event:a:1", {"n": 2})
    assert not box.add("event", "event:a:0", {"n": 1})  # openleadr repeats events after a restart
    head, _ = box.head()
    assert head.payload == {"n": 1}
    box.mark_done(head)
    assert not box.add("event", "event:a:0", {"n": 1})  # delivered keys stay delivered
    assert box.head()[0].payload == {"n": 2}


def test_a_retried_entry_waits_and_keeps_the_queue_behind_it(tmp_path):
    box = Outbox(tmp_path)
    box.add("event", "k1", {"n": 1})
    box.add("event", "k2", {"n": 2})
    box.retry_later(box.head()[0], 60, "503: down")
    entry, wait = box.head()
    assert entry is None and 55 < wait <= 60
    assert box.status()["head_error"] == "503: down" and box.status()["outbox_depth"] == 2


def test_dead_letters_keep_the_answer_and_free_the_queue(tmp_path):
    box = Outbox(tmp_path)
    box.add("measurement", "m1", {"sensor": "bat_01_power"})
    box.add("event", "k2", {"n": 2})
    box.dead_letter(box.head()[0], 422, "Unit EUR/MWh cannot be converted to kW")
    assert box.head()[0].dedupe_key == "k2"
    assert box.dead_letters()[0]["response"] == "Unit EUR/MWh cannot be converted to kW"
    assert box.status()["dead_letters"] == 1


def test_the_outbox_survives_a_restart(tmp_path):
    first = Outbox(tmp_path)
    first.add("event", "k1", {"n": 1})
    first.set_state("registration", {"ven_id": "ven-1"})
    first.close()
    again = Outbox(tmp_path)
    assert again.head()[0].payload == {"n": 1}
    assert again.get_state("registration") == {"ven_id": "ven-1"}


def test_a_dead_lettered_key_is_not_queued_again(tmp_path):
    box = Outbox(tmp_path)
    box.add("event", "event:x:0", {"n": 1})
    box.dead_letter(box.head()[0], 422, "refused")
    assert not box.add("event", "event:x:0", {"n": 1})  # e.g. openleadr re-sending it after a restart
    assert box.status()["outbox_depth"] == 0
