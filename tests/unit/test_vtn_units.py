"""The VTN's poll logic and openleadr's gaps it covers, in-process with a real store and time set by hand."""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime, timedelta

import pytest
from openleadr import errors, objects
from openleadr.messaging import create_message
from openleadr.service.event_service import EventService

from vtn import actions
from vtn.events import SITE_TZ, load_control_draft
from vtn.prices import publish_day_ahead, read_price_csv, tariff_prices
from vtn.server import CariflexVtn, VtnOptions, to_openadr
from vtn.store import Event, Store, Ven

T0 = datetime(2030, 3, 1, 18, 0, tzinfo=SITE_TZ).astimezone(UTC)


def registered_ven(store: Store, name: str = "ven-u") -> Ven:
    actions.add_ven(store, name)
    with store.session() as session:
        ven = session.query(Ven).filter(Ven.ven_name == name).one()
        ven.registration_id = "reg-1"
        return ven


def load_control(store: Store, **extra) -> str:
    draft = load_control_draft(start=T0, duration="PT2H", levels="0.5", now=T0 - timedelta(days=1), **extra)
    return actions.create_event(store, draft, now=T0 - timedelta(days=1))["event_id"]


def distribution(vtn: CariflexVtn, ven: Ven, now: datetime, *, answer: bool = True):
    """What a poll at ``now`` sends; by default the VEN then answers, as openleadr VENs do."""
    vtn.view.refresh()
    events = vtn._distribution(vtn.view.vens_by_id[ven.ven_id], now, force=False)
    if events is None:
        return None
    if answer:
        responses = [
            {
                "event_id": e.event_descriptor.event_id,
                "modification_number": e.event_descriptor.modification_number,
                "opt_type": "optIn",
            }
            for e in events
        ]
        asyncio.run(vtn.on_created_event({"ven_id": ven.ven_id, "event_responses": responses}))
    return [(e.event_descriptor.event_id, e.event_descriptor.event_status) for e in events]


def test_status_changes_are_distributed_again_and_nothing_else_is(vtn, store):
    ven = registered_ven(store)
    event_id = load_control(store, ramp_up="PT30M")
    assert distribution(vtn, ven, T0 - timedelta(hours=2)) == [(event_id, "far")]
    assert distribution(vtn, ven, T0 - timedelta(hours=1)) is None  # nothing changed
    assert distribution(vtn, ven, T0 - timedelta(minutes=20)) == [(event_id, "near")]
    assert distribution(vtn, ven, T0 + timedelta(minutes=1)) == [(event_id, "active")]
    assert distribution(vtn, ven, T0 + timedelta(minutes=30)) is None
    assert distribution(vtn, ven, T0 + timedelta(hours=3)) is None  # completed: the VEN knows


def test_a_modification_is_distributed_once(vtn, store):
    ven = registered_ven(store)
    event_id = load_control(store)
    now = T0 - timedelta(hours=2)
    assert distribution(vtn, ven, now) == [(event_id, "far")]
    actions.modify_event(store, event_id, levels="0.1", now=now)
    assert distribution(vtn, ven, now) == [(event_id, "far")]
    assert distribution(vtn, ven, now) is None


def test_distributions_survive_a_new_vtn_on_the_same_store(vtn, store):
    ven = registered_ven(store)
    event_id = load_control(store)
    now = T0 - timedelta(hours=2)
    assert distribution(vtn, ven, now) == [(event_id, "far")]
    fresh = CariflexVtn(store, VtnOptions(insecure=True, day_ahead_time="off"))
    assert distribution(fresh, ven, now) is None  # it knows what was delivered


def test_late_answer_to_an_old_modification_is_kept_with_the_others(vtn, store):
    ven = registered_ven(store)
    first, second = load_control(store), load_control(store)
    now = T0 - timedelta(hours=2)
    distribution(vtn, ven, now, answer=False)  # both sent at modification 0, not answered yet
    actions.modify_event(store, first, levels="0.2", now=now)  # first is now at modification 1
    payload = {
        "ven_id": ven.ven_id,
        "event_responses": [
            {"event_id": first, "modification_number": 0, "opt_type": "optIn"},
            {"event_id": second, "modification_number": 0, "opt_type": "optOut"},
        ],
    }
    assert asyncio.run(vtn.on_created_event(payload)) == ("oadrResponse", {})
    assert [(o["modification_number"], o["opt"]) for o in actions.list_opts(store, first)] == [(0, "optIn")]
    assert [o["opt"] for o in actions.list_opts(store, second)] == ["optOut"]


def test_an_answer_naming_an_event_never_sent_is_refused_whole(vtn, store):
    ven = registered_ven(store)
    sent = load_control(store)
    distribution(vtn, ven, T0 - timedelta(hours=2), answer=False)
    never_sent = load_control(store)
    payload = {
        "ven_id": ven.ven_id,
        "event_responses": [
            {"event_id": sent, "modification_number": 0, "opt_type": "optIn"},
            {"event_id": never_sent, "modification_number": 0, "opt_type": "optIn"},
        ],
    }
    with pytest.raises(errors.InvalidIdError) as refused:
        asyncio.run(vtn.on_created_event(payload))
    assert never_sent in refused.value.response_description and sent not in refused.value.response_description
    assert actions.list_opts(store, sent) == []


def test_openleadr_alone_loses_the_whole_answer_in_that_race():
    """The gap our handler closes: openleadr's own handler refuses the message (452)."""
    service = EventService("vtn")
    event = objects.Event(
        event_descriptor=objects.EventDescriptor(
            event_id="e1", modification_number=1, market_context="http://x", event_status="far"
        ),
        event_signals=[
            objects.EventSignal(
                intervals=[objects.Interval(dtstart=T0, duration=timedelta(hours=1), signal_payload=0.5)],
                signal_name="LOAD_CONTROL",
                signal_type="x-loadControlCapacity",
                signal_id="s",
            )
        ],
        targets=[objects.Target(ven_id="v1")],
    )
    service.events["v1"] = [event]
    payload = {
        "ven_id": "v1",
        "event_responses": [{"event_id": "e1", "modification_number": 0, "opt_type": "optIn"}],
    }
    with pytest.raises(errors.InvalidIdError):
        asyncio.run(service.created_event(payload))


def test_openleadr_overwrites_a_cancelled_status_and_we_restore_it(store):
    ven = registered_ven(store)
    event_id = load_control(store)
    actions.cancel_event(store, event_id, now=T0 - timedelta(days=1))
    with store.session() as session:
        event = session.get(Event, event_id)
        built = to_openadr(event, ven, "cancelled")
    assert built.event_descriptor.event_status == "cancelled"
    raw = objects.Event(
        event_descriptor=built.event_descriptor,
        event_signals=built.event_signals,
        targets=built.targets,
        active_period=built.active_period,
    )
    assert raw.event_descriptor.event_status == "far"  # openleadr's __post_init__ recomputed it


def test_ramp_up_notification_and_recovery_reach_the_xml(store):
    ven = registered_ven(store)
    event_id = load_control(store, ramp_up="PT30M", notification="PT2H", recovery="PT15M")
    with store.session() as session:
        built = to_openadr(session.get(Event, event_id), ven, "far")
    xml = create_message("oadrDistributeEvent", request_id="r1", vtn_id="vtn", events=[built])
    for tag, duration in (("x-eiRampUp", "PT30M"), ("x-eiNotification", "PT2H"), ("x-eiRecovery", "PT15M")):
        fragment = xml.split(f"<ei:{tag}>")[1].split(f"</ei:{tag}>")[0]
        assert f"<duration>{duration}</duration>" in fragment.replace("xcal:", "")


def test_tariff_model_has_cheap_nights_and_a_dear_evening():
    prices = tariff_prices()
    assert len(prices) == 24
    assert prices[3] == 135.0 and prices[12] == 153.0 and prices[19] == 270.0 and prices[8] == 180.0
    assert max(prices) == prices[18] and min(prices) == prices[0]


def test_price_csv_formats(tmp_path):
    plain = tmp_path / "plain.csv"
    plain.write_text("# prices for tomorrow\n" + "\n".join(str(100 + h) for h in range(24)) + "\n")
    assert read_price_csv(plain) == [str(100 + h) for h in range(24)]
    with_hours = tmp_path / "hours.csv"
    with_hours.write_text("hour,price\n" + "\n".join(f"{h},{50 + h}" for h in range(24)))
    assert read_price_csv(with_hours)[23] == "73"


def test_day_ahead_publication_is_idempotent(store, tmp_path):
    now = datetime(2030, 3, 1, 14, 0, tzinfo=SITE_TZ).astimezone(UTC)
    first = publish_day_ahead(store, price_file=None, now=now)
    assert first["start"] == "2030-03-02T00:00:00-04:00"
    assert first["values"] == pytest.approx(tariff_prices())
    assert publish_day_ahead(store, price_file=None, now=now + timedelta(hours=5)) is None
    assert len(actions.list_events(store, now=now)) == 1

    csv = tmp_path / "p.csv"
    csv.write_text("price\n" + "\n".join(["88.5"] * 24))
    from_file = publish_day_ahead(store, price_file=str(csv), now=now + timedelta(days=1))
    assert from_file["values"] == [88.5] * 24 and from_file["source"] == "day-ahead"


def test_todays_prices_are_caught_up_once_even_though_the_day_has_begun(store):
    now = datetime(2030, 3, 1, 10, 30, tzinfo=SITE_TZ).astimezone(UTC)
    today = publish_day_ahead(store, price_file=None, now=now, day=now.astimezone(SITE_TZ).date())
    assert today["start"] == "2030-03-01T00:00:00-04:00" and len(today["values"]) == 24
    assert publish_day_ahead(store, price_file=None, now=now, day=now.astimezone(SITE_TZ).date()) is None
    tomorrow = publish_day_ahead(store, price_file=None, now=now)
    assert tomorrow["start"] == "2030-03-02T00:00:00-04:00"


def test_an_unanswered_distribution_is_sent_again(vtn, store):
    ven = registered_ven(store)
    event_id = load_control(store)
    now = T0 - timedelta(hours=2)
    assert distribution(vtn, ven, now, answer=False) == [(event_id, "far")]
    assert distribution(vtn, ven, now + timedelta(seconds=2), answer=False) is None  # give it time
    assert distribution(vtn, ven, now + timedelta(minutes=2)) == [(event_id, "far")]  # lost: again
    assert distribution(vtn, ven, now + timedelta(minutes=10)) is None  # answered now


def test_a_ven_taken_off_an_event_is_told_it_is_cancelled(vtn, store):
    ven, other = registered_ven(store, "ven-u"), registered_ven(store, "ven-o")
    event_id = load_control(store)
    now = T0 - timedelta(hours=2)
    assert distribution(vtn, ven, now) == [(event_id, "far")]
    actions.modify_event(store, event_id, vens=["ven-o"], now=now)
    assert distribution(vtn, ven, now) == [(event_id, "cancelled")]
    assert distribution(vtn, ven, now) is None  # it confirmed
    assert distribution(vtn, other, now) == [(event_id, "far")]
    actions.modify_event(store, event_id, vens="all", now=now)
    assert distribution(vtn, ven, now) == [(event_id, "far")]


def test_concurrent_modifications_are_serialised(store):
    from concurrent.futures import ThreadPoolExecutor

    event_id = load_control(store)
    levels = ["0.1", "0.9", "0.3", "0.7"]
    with ThreadPoolExecutor(4) as pool:
        list(
            pool.map(
                lambda lv: actions.modify_event(store, event_id, levels=lv, now=T0 - timedelta(hours=5)),
                levels,
            )
        )
    shown = actions.show_event(store, event_id, now=T0 - timedelta(hours=5))
    assert shown["modification_number"] == 4
    assert len(shown["intervals"]) == 2 and len(set(i["value"] for i in shown["intervals"])) == 1


def test_a_change_that_ends_the_event_in_the_past_is_refused(store):
    event_id = load_control(store)
    with pytest.raises(Exception, match="would end event .* in the past; cancel it instead"):
        actions.modify_event(store, event_id, duration="PT30M", now=T0 + timedelta(hours=1))


def test_event_show_gives_fleet_power_before_and_during_load_control(vtn, store):
    from vtn.store import ReportValue

    ven = registered_ven(store)
    event_id = load_control(store)
    payload = {
        "ven_id": ven.ven_id,
        "reports": [
            {
                "report_specifier_id": "spec-1",
                "report_name": "METADATA_TELEMETRY_USAGE",
                "report_descriptions": [
                    {
                        "r_id": "r-power",
                        "report_data_source": {"resource_id": "Cariflex site"},
                        "measurement": {"description": "RealPower", "unit": "W", "scale": "k"},
                    }
                ],
            }
        ],
    }
    vtn._store_report_registrations(payload)
    with store.session() as session:
        for minutes, kw in ((-50, 300.0), (-20, 320.0), (10, 180.0), (40, 170.0)):
            session.add(
                ReportValue(ven_id=ven.ven_id, r_id="r-power", at=T0 + timedelta(minutes=minutes), value=kw)
            )
    shown = actions.show_event(store, event_id, now=T0 + timedelta(hours=1))
    assert shown["fleet_power_kw"] == {
        "before": 310.0,
        "samples_before": 2,
        "during": 175.0,
        "samples_during": 2,
    }


def _blocking(function, entered: threading.Event, release: threading.Event):
    """``function``, made slow: it says it has started, then waits until the test lets it go on."""

    def slow(*args, **kwargs):
        entered.set()
        assert release.wait(60), "the test never released the slow store call"
        return function(*args, **kwargs)

    return slow


async def _wait(flag: threading.Event) -> None:
    assert await asyncio.get_running_loop().run_in_executor(None, flag.wait, 30)


def test_the_admin_api_answers_while_a_store_call_of_a_poll_is_slow(vtn, store):
    """A poll whose store call hangs (say the CLI holds SQLite's write lock) holds up that poll
    only: the loop is free, so the operator's health check is answered meanwhile."""
    from aiohttp import ClientSession

    from vtn import admin_api

    ven = registered_ven(store)
    vtn.view.refresh(force=True)
    entered, release = threading.Event(), threading.Event()
    store.generation = _blocking(store.generation, entered, release)  # the poll's first store call

    async def scenario():
        runner = await admin_api.start(vtn, "127.0.0.1", 0)
        port = runner.addresses[0][1]
        try:
            poll = asyncio.ensure_future(vtn.on_poll(ven.ven_id))
            await _wait(entered)
            async with ClientSession() as client, client.get(f"http://127.0.0.1:{port}/health") as answer:
                assert answer.status == 200
                assert (await answer.json())["vens_registered"] == 1
            assert not poll.done()  # still waiting on the store, and nobody else waited for it
            release.set()
            assert await poll is None  # nothing to distribute: an answer all the same
        finally:
            release.set()
            await runner.cleanup()

    asyncio.run(scenario())


def test_a_slow_admin_write_does_not_hold_up_the_polls_or_a_health_check(vtn, store, monkeypatch):
    from aiohttp import ClientSession

    from vtn import admin_api

    ven = registered_ven(store)
    vtn.view.refresh(force=True)
    entered, release = threading.Event(), threading.Event()
    monkeypatch.setattr(actions, "add_ven", _blocking(actions.add_ven, entered, release))
    vtn.options.admin_token = "unit-token"

    async def scenario():
        runner = await admin_api.start(vtn, "127.0.0.1", 0)
        url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        headers = {"Authorization": f"Bearer {vtn.options.admin_token}"}
        try:
            async with ClientSession(headers=headers) as client:
                adding = asyncio.ensure_future(client.post(f"{url}/vens", json={"name": "ven-slow"}))
                await _wait(entered)
                async with client.get(f"{url}/health") as answer:
                    assert answer.status == 200
                assert await vtn.on_poll(ven.ven_id) is None  # a VEN's poll is answered too
                assert not adding.done()
                release.set()
                added = await adding
                assert added.status == 201 and (await added.json())["ven_name"] == "ven-slow"
        finally:
            release.set()
            await runner.cleanup()

    asyncio.run(scenario())


def test_an_older_store_gets_the_poll_paths_indices(tmp_path):
    import sqlite3

    path = tmp_path / "old.sqlite"
    Store(f"sqlite:///{path}").dispose()
    with sqlite3.connect(path) as conn:  # as an older VTN made it: without the newer indices
        conn.execute("DROP INDEX ix_vtn_event_start")
        conn.execute("DROP INDEX ix_vtn_report_value_at")
    Store(f"sqlite:///{path}").dispose()
    Store(f"sqlite:///{path}").dispose()  # and again: nothing to add, no error
    with sqlite3.connect(path) as conn:
        names = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert {"ix_vtn_event_start", "ix_vtn_report_value_at"} <= names


def test_last_poll_times_are_stored_in_one_go(store):
    actions.add_ven(store, "ven-a")
    ven_id = actions.list_vens(store)[0]["ven_id"]
    store.record_polls({ven_id: T0, "ven-unknown": T0})  # an id removed meanwhile changes nothing
    assert actions.list_vens(store)[0]["last_poll_at"] == T0.isoformat()
