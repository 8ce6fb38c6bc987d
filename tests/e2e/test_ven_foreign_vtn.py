"""The VEN bridge as a good citizen towards a VTN that is not ours: openleadr's plain OpenADRServer.

The foreign VTN is ``openleadr.OpenADRServer`` itself (not the ``vtn`` package) on an ephemeral
loopback port, in an asyncio loop on its own thread. It accepts every VEN, knows them through its
``ven_lookup`` and polls at 1 s. Our side is the VEN bridge's OpenADR part,
``CariflexVen.serve_openadr`` (the registration loop, the handlers, the durable outbox), in a second
loop thread, over real HTTP. FlexMeasures is not needed: the tests read what the VEN put into its
outbox (what its poster would post) and the opts the VTN got through its own callbacks.

What these tests pin down:
- an event with a price and a load-control signal is opted in; each signal goes to FlexMeasures
  as its own event ``<event id>#<signal name>`` (the plugin keeps one ledger entry per event id);
- an event targeting a resource the VEN does not have is opted out with the reason kept (not left
  unanswered: the VTN asked for an answer);
- 15-minute load control passes as it is; 15-minute prices that make whole hours are averaged per
  hour (FlexMeasures keeps one price per hour); other prices off the hour, or in another currency
  than EUR, are opted out, and the VEN logs and keeps why;
- asked to re-register, the VEN renews its registration (venID and registrationID), through the
  retry loop, and goes on receiving events;
- a VTN whose vtnID is all lowercase gets 200 in the VEN's oadrCreatedEvent (openleadr's client
  answers 452), a message with another VTN's vtnID gets 452;
- when the VTN cancels its registration, the VEN acknowledges (oadrCanceledPartyRegistration, 200)
  and registers again at once (a VTN that meant it refuses; the VEN then retries with capped
  backoff, as while a VTN is down) and goes on receiving events.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from openleadr import OpenADRClient, OpenADRServer, hooks, objects, utils
from openleadr.service import VTNService

from tests.helpers.openadr_harness import wait_until
from ven_bridge.outbox import Outbox
from ven_bridge.ven import CariflexVen, VenOptions

RESOURCES = frozenset({"bat_01", "ev_01", "Cariflex site"})
HOUR, QUARTER = timedelta(hours=1), timedelta(minutes=15)
START = (datetime.now(UTC) + timedelta(days=1)).replace(minute=0, second=0, microsecond=0)
WAIT = 20  # seconds for anything that takes a poll or two (the VTN asks for one every second)


class LoopThread:
    """An asyncio loop on a daemon thread."""

    def __init__(self, name: str):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self.thread.start()

    def submit(self, coro) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro, timeout: float = 30) -> Any:
        return self.submit(coro).result(timeout)

    def call(self, fn: Callable, *args) -> Any:
        """Run a plain function in the loop's thread (openleadr's state is not thread-safe)."""

        async def call():
            return fn(*args)

        return self.run(call())

    def close(self) -> None:
        async def cancel_the_rest():
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        self.run(cancel_the_rest())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


class ForeignVtn:
    """openleadr's own VTN. Records every message it handles and answers, and every opt.

    Internal mode (default): openleadr's event queue, opts through the per-event callback.
    External mode: an ``on_poll`` handler answers each poll with the next message of
    ``outgoing`` (how openleadr sends oadrCancelPartyRegistration and the like), opts through
    ``on_created_event``.
    """

    def __init__(self, *, external: bool = False, vtn_id: str = "FOREIGN_VTN"):
        self.external = external
        self.known: dict[str, dict[str, Any]] = {}  # what ven_lookup answers
        self.ven_ids: dict[str, str] = {}  # by VEN name: a VEN registering afresh gets its id back
        self.registrations: list[dict[str, Any]] = []  # every oadrCreatePartyRegistration
        self.refuse = 0  # how many registrations to refuse before accepting again
        self.opts: dict[str, list[str]] = {}
        self.received: list[tuple[str, dict]] = []  # (message type, payload) the VTN handled
        self.answered: list[tuple[str, Any]] = []  # (message type, payload) it answered with
        self.outgoing: list[tuple[str, dict]] = []
        self._numbers = itertools.count(1)
        # openleadr keeps ven_lookup on the VTNService class: put back what was there
        self._saved_lookup = VTNService.__dict__.get("ven_lookup")
        self.loop = LoopThread("foreign-vtn")
        self.loop.run(self._start(vtn_id))

    async def _start(self, vtn_id: str) -> None:
        hooks.register("before_handle", self._before_handle)
        hooks.register("after_handle", self._after_handle)
        self.server = OpenADRServer(
            vtn_id=vtn_id,
            http_host="127.0.0.1",
            http_port=0,  # aiohttp binds a free port; it is read back below
            requested_poll_freq=timedelta(seconds=1),
            ven_lookup=self._lookup,
        )
        self.server.add_handler("on_create_party_registration", self._register)
        if self.external:
            self.server.add_handler("on_poll", self._poll)
            self.server.add_handler("on_created_event", self._opted)
            self.server.add_handler("on_request_event", self._no_events)
        await self.server.run()
        host, port = self.server.app_runner.addresses[0][:2]
        self.url = f"http://{host}:{port}/OpenADR2/Simple/2.0b"

    # --- handlers -------------------------------------------------------------------------------

    def _lookup(self, ven_id: str) -> dict[str, Any] | None:
        return self.known.get(ven_id)

    def _register(self, payload: dict[str, Any]):
        self.registrations.append(payload)
        if self.refuse:
            self.refuse -= 1
            return False
        name = payload["ven_name"]
        ven_id = payload.get("ven_id") or self.ven_ids.setdefault(name, f"VEN_{next(self._numbers)}")
        registration_id = f"REG_{uuid.uuid4().hex[:8]}"
        self.known[ven_id] = {
            "ven_id": ven_id,
            "ven_name": name,
            "fingerprint": None,
            "registration_id": registration_id,
        }
        return ven_id, registration_id

    def _opted(self, ven_id: str, event_id: str, opt_type: str) -> None:
        self.opts.setdefault(event_id, []).append(opt_type)

    def _poll(self, ven_id: str):
        if not self.outgoing:
            return None
        message = self.outgoing.pop(0)
        return message(ven_id) if callable(message) else message

    def _cancellation(self, ven_id: str) -> tuple[str, dict[str, Any]]:
        registration_id = self.known[ven_id]["registration_id"]
        return "oadrCancelPartyRegistration", {
            "request_id": f"cancel-{registration_id}",
            "registration_id": registration_id,
            "ven_id": ven_id,
        }

    def _no_events(self, ven_id: str):
        return None

    async def _before_handle(self, message_type: str, payload: dict) -> None:
        self.received.append((message_type, payload))
        if message_type == "oadrCanceledPartyRegistration":  # the VEN confirmed: registration ended
            entry = self.known.get(payload.get("ven_id"))
            if entry and entry["registration_id"] == payload.get("registration_id"):
                entry["registration_id"] = None

    async def _after_handle(self, message_type: str, payload: Any) -> None:
        self.answered.append((message_type, payload))

    # --- what a test does -----------------------------------------------------------------------

    def send(self, ven_id: str, *events: objects.Event) -> None:
        """Queue events for the VEN; all of them go out in its next poll's oadrDistributeEvent."""

        def queue() -> None:
            if self.external:
                self.outgoing.append(("oadrDistributeEvent", {"events": list(events)}))
            else:
                for event in events:
                    self.server.add_raw_event(ven_id, event, callback=self._opted)

        self.loop.call(queue)

    def push(self, message_type: str, payload: dict[str, Any]) -> None:
        """External mode: answer the next poll with this message."""
        self.loop.call(self.outgoing.append, (message_type, payload))

    def cancel_registration(self) -> None:
        """External mode: the next poll is answered oadrCancelPartyRegistration (of the polling
        VEN's current registration)."""
        self.loop.call(self.outgoing.append, self._cancellation)

    def cancel_event(self, ven_id: str, event_id: str) -> None:
        self.loop.call(self.server.cancel_event, ven_id, event_id)

    def forget(self, ven_id: str) -> None:
        """As after a restart: the VEN's next message is answered oadrRequestReregistration."""
        self.loop.call(self.known.pop, ven_id)

    def distributions(self) -> list[set[str]]:
        return [
            {utils.getmember(e, "event_descriptor.event_id") for e in payload["events"]}
            for kind, payload in self.answered
            if kind == "oadrDistributeEvent"
        ]

    def created_events(self) -> list[dict[str, tuple[str, int]]]:
        """Each oadrCreatedEvent the VEN sent: event id -> (opt, response code)."""
        return [
            {r["event_id"]: (r["opt_type"], r["response_code"]) for r in payload["event_responses"]}
            for kind, payload in self.received
            if kind == "oadrCreatedEvent"
        ]

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.loop.run(self.server.stop())
        self.loop.close()
        hooks.HOOKS["before_handle"].remove(self._before_handle)
        hooks.HOOKS["after_handle"].remove(self._after_handle)
        if self._saved_lookup is None:
            with contextlib.suppress(AttributeError):
                delattr(VTNService, "ven_lookup")
        else:
            VTNService.ven_lookup = self._saved_lookup


class Ven:
    """Our VEN's OpenADR side (CariflexVen.serve_openadr), no poster, no FlexMeasures."""

    def __init__(self, state_dir: Path, vtn_url: str, name: str = "cariflex-ven"):
        self.outbox = Outbox(state_dir)
        self.bridge = CariflexVen(
            VenOptions(name, vtn_url, RESOURCES, "Cariflex site"), self.outbox, poster=None
        )
        self.clients = []  # every openleadr client the bridge made, in order
        new_client = self.bridge._new_client

        def recording(*args):
            self.clients.append(new_client(*args))
            return self.clients[-1]

        self.bridge._new_client = recording
        self.loop = LoopThread("ven")
        self.serving = self.loop.submit(self.bridge.serve_openadr())

    def registration(self) -> dict[str, Any]:
        state = self.outbox.get_state("registration") or {}
        return state if state.get("registration_id") else {}

    def wait_registered(self, besides: str | None = None) -> dict[str, Any]:
        return wait_until(
            lambda: self.registration().get("registration_id") not in (None, besides) and self.registration(),
            WAIT,
            "the VEN to register",
        )

    def entries(self) -> dict[str, dict[str, Any]]:
        """The outbox: dedupe key -> what the poster would post to FlexMeasures."""
        return {entry.dedupe_key: entry.payload for entry in self.outbox.pending()}

    def decision(self, event_id: str) -> tuple[str, str] | None:
        found = [d for d in self.outbox.decisions() if d["event_id"] == event_id]
        return (found[-1]["opt"], found[-1]["reason"]) if found else None

    def stop(self) -> None:
        self.loop.loop.call_soon_threadsafe(self.bridge.stopping.set)
        self.serving.result(10)
        if self.bridge.client is not None:
            with contextlib.suppress(Exception):
                self.loop.run(self.bridge.client.stop())
        self.loop.close()
        self.outbox.close()


@pytest.fixture
def vtn():
    server = ForeignVtn()
    yield server
    server.close()


@pytest.fixture
def external_vtn():
    server = ForeignVtn(external=True)
    yield server
    server.close()


@pytest.fixture
def ven(vtn, tmp_path):
    bridge = Ven(tmp_path / "ven", vtn.url)
    bridge.wait_registered()
    yield bridge
    bridge.stop()


def _intervals(values: list[float], start: datetime, step: timedelta) -> list[objects.Interval]:
    return [
        objects.Interval(dtstart=start + i * step, duration=step, uid=i, signal_payload=v)
        for i, v in enumerate(values)
    ]


def price(values, start=START, step=HOUR, currency="EUR", name="ENERGY_PRICE") -> objects.EventSignal:
    return objects.EventSignal(
        signal_name=name,
        signal_type="price",
        signal_id=f"sig-{uuid.uuid4().hex[:6]}",
        intervals=_intervals(values, start, step),
        measurement=objects.Measurement(
            name="currencyPerKWh", description="currencyPerKWh", unit=currency, scale="none"
        ),
    )


def load(values, start=START, step=HOUR) -> objects.EventSignal:
    return objects.EventSignal(
        signal_name="LOAD_CONTROL",
        signal_type="x-loadControlCapacity",
        signal_id=f"sig-{uuid.uuid4().hex[:6]}",
        intervals=_intervals(values, start, step),
    )


def event(ven_id: str, *signals: objects.EventSignal, targets=None) -> objects.Event:
    return objects.Event(
        event_descriptor=objects.EventDescriptor(
            event_id=f"evt-{uuid.uuid4().hex[:10]}",
            modification_number=0,
            market_context="http://foreign-vtn.example/programs/dr",
            event_status="far",
            created_date_time=datetime.now(UTC),
        ),
        event_signals=list(signals),
        targets=targets or [objects.Target(ven_id=ven_id)],
    )


def event_id(e: objects.Event) -> str:
    return e.event_descriptor.event_id


def wait_for_opts(vtn: ForeignVtn, ids: list[str]) -> dict[str, list[str]]:
    """The opts the VTN's callbacks got, once every event has one and the answer is recorded."""

    def answered():
        sent = {i for answer in vtn.created_events() for i in answer}
        return all(i in vtn.opts for i in ids) and set(ids) <= sent

    wait_until(answered, WAIT, f"the VEN's answers to {ids}")
    return {i: vtn.opts[i] for i in ids}


def registrations(vtn: ForeignVtn) -> list[tuple[str | None, str | None]]:
    """(venID, registrationID) the VEN offered in each oadrCreatePartyRegistration."""
    return [(r.get("ven_id"), r.get("registration_id")) for r in vtn.registrations]


def lost_reasons(caplog) -> list[str]:
    return [r.fields["reason"] for r in caplog.records if r.getMessage().startswith("registration lost")]


# --- the cases --------------------------------------------------------------------------------


def test_several_events_queued_before_a_poll_arrive_together_and_are_each_answered(vtn, ven):
    ven_id = ven.registration()["ven_id"]
    events = [
        event(ven_id, price([round(0.1 + 0.01 * h, 2) for h in range(24)])),
        event(ven_id, load([0.6, 0.5], start=START + 6 * HOUR)),
        event(ven_id, price([0.2] * 24, start=START + 24 * HOUR, name="ELECTRICITY_PRICE")),
    ]
    ids = [event_id(e) for e in events]
    vtn.send(ven_id, *events)

    assert wait_for_opts(vtn, ids) == {i: ["optIn"] for i in ids}
    assert set(ids) in vtn.distributions()  # one oadrDistributeEvent carried all three
    answers = [a for a in vtn.created_events() if set(a) & set(ids)]
    assert answers == [{i: ("optIn", 200) for i in ids}]  # and one oadrCreatedEvent answered them
    entries = ven.entries()
    assert set(entries) == {f"event:{i}:0" for i in ids}
    assert [len(entries[f"event:{i}:0"]["intervals"]) for i in ids] == [24, 2, 24]
    assert entries[f"event:{ids[1]}:0"]["signal_name"] == "LOAD_CONTROL"


def test_an_event_with_a_price_and_a_load_control_signal_becomes_two_flexmeasures_events(vtn, ven):
    ven_id = ven.registration()["ven_id"]
    both = event(ven_id, price([0.12, 0.3, 0.3, 0.12]), load([1.0, 0.5, 0.5, 1.0]))
    eid = event_id(both)
    vtn.send(ven_id, both)

    assert wait_for_opts(vtn, [eid]) == {eid: ["optIn"]}
    assert ven.decision(eid) == (
        "optIn",
        "supported signals ENERGY_PRICE/price, LOAD_CONTROL/x-loadControlCapacity, valid payload",
    )
    entries = ven.entries()
    assert set(entries) == {f"event:{eid}#ENERGY_PRICE:0", f"event:{eid}#LOAD_CONTROL:0"}
    price_part, load_part = entries[f"event:{eid}#ENERGY_PRICE:0"], entries[f"event:{eid}#LOAD_CONTROL:0"]
    assert (price_part["event_id"], price_part["item_base"]["unit"]) == (f"{eid}#ENERGY_PRICE", "EUR")
    assert [i["value"] for i in price_part["intervals"]] == [0.12, 0.3, 0.3, 0.12]
    assert [i["value"] for i in load_part["intervals"]] == [1.0, 0.5, 0.5, 1.0]
    assert set(ven.outbox.get_state("load_control_events")) == {f"{eid}#LOAD_CONTROL"}  # the fleet cap

    # Cancelled: both parts go to FlexMeasures cancelled, and the VTN drops the event.
    vtn.cancel_event(ven_id, eid)
    wait_until(lambda: len(ven.entries()) == 4, WAIT, "the cancellation in the outbox")
    cancelled = {k: v["status"] for k, v in ven.entries().items() if k.endswith(":1")}
    assert cancelled == {
        f"event:{eid}#ENERGY_PRICE:1": "cancelled",
        f"event:{eid}#LOAD_CONTROL:1": "cancelled",
    }
    wait_until(lambda: not vtn.loop.call(lambda: vtn.server.events[ven_id]), WAIT, "the VTN to drop it")


def test_an_event_for_a_resource_the_ven_does_not_have_is_opted_out(vtn, ven):
    ven_id = ven.registration()["ven_id"]
    ours = event(ven_id, load([0.5]), targets=[objects.Target(resource_id="bat_01")])
    theirs = event(ven_id, load([0.5]), targets=[objects.Target(resource_id="pump_7")])
    vtn.send(ven_id, ours, theirs)

    assert wait_for_opts(vtn, [event_id(ours), event_id(theirs)]) == {
        event_id(ours): ["optIn"],
        event_id(theirs): ["optOut"],
    }
    assert ven.decision(event_id(theirs)) == ("optOut", "targets resources this VEN does not have: pump_7")
    assert set(ven.entries()) == {f"event:{event_id(ours)}:0"}  # nothing of the other one


def test_15_minute_intervals(vtn, ven):
    ven_id = ven.registration()["ven_id"]
    levels = [0.9, 0.8, 0.7, 0.6, 0.5, 0.6, 0.7, 0.8]
    quarter_levels = event(ven_id, load(levels, start=START + 2 * HOUR, step=QUARTER))
    quarter_prices = event(ven_id, price([0.1, 0.2, 0.3, 0.4, 0.2, 0.2, 0.2, 0.2], step=QUARTER))
    half_hour_off = event(ven_id, price([0.1, 0.2, 0.3], start=START + QUARTER, step=QUARTER))
    ids = [event_id(e) for e in (quarter_levels, quarter_prices, half_hour_off)]
    vtn.send(ven_id, quarter_levels, quarter_prices, half_hour_off)

    assert wait_for_opts(vtn, ids) == dict(zip(ids, [["optIn"], ["optIn"], ["optOut"]], strict=True))
    entries = ven.entries()
    # load control keeps its quarter hours (the plugin's level sensor is 15-minute)
    assert [(i["duration"], i["value"]) for i in entries[f"event:{ids[0]}:0"]["intervals"]] == [
        ("PT15M", v) for v in levels
    ]
    # prices become hourly means (the plugin keeps one price per hour)
    assert [(i["start"], i["duration"], i["value"]) for i in entries[f"event:{ids[1]}:0"]["intervals"]] == [
        (START.isoformat(), "PT1H", 0.25),
        ((START + HOUR).isoformat(), "PT1H", 0.2),
    ]
    assert ven.decision(ids[1])[1].endswith("8 price intervals averaged into 2 hourly prices")
    assert ven.decision(ids[2]) == (
        "optOut",
        f"price intervals from {(START + QUARTER).isoformat()} to {(START + HOUR).isoformat()} do not "
        "make whole hours (FlexMeasures keeps one price per hour)",
    )
    assert f"event:{ids[2]}:0" not in entries


def test_a_price_in_another_currency_is_opted_out_saying_why(vtn, ven, caplog):
    caplog.set_level(logging.INFO, logger="cariflex.ven")
    ven_id = ven.registration()["ven_id"]
    dollars = event(ven_id, price([0.15] * 24, currency="USD"))
    east_caribbean = event(ven_id, price([0.4] * 4, currency="XCD"), load([0.5] * 4))
    ids = [event_id(dollars), event_id(east_caribbean)]
    vtn.send(ven_id, dollars, east_caribbean)

    assert wait_for_opts(vtn, ids) == {i: ["optOut"] for i in ids}
    reasons = {
        ids[0]: "price currency 'USD' is not supported (need EUR)",
        ids[1]: "signal ENERGY_PRICE: price currency 'XCD' is not supported (need EUR)",
    }
    assert {i: ven.decision(i) for i in ids} == {i: ("optOut", r) for i, r in reasons.items()}
    logged = {
        r.fields["event_id"]: r.fields["reason"]
        for r in caplog.records
        if r.getMessage() == "opt decision" and r.fields["event_id"] in ids
    }
    assert logged == reasons
    assert ven.entries() == {}  # nothing for FlexMeasures, not even the load-control signal


def test_asked_to_re_register_the_ven_renews_its_registration_and_goes_on(vtn, ven, caplog):
    caplog.set_level(logging.INFO, logger="cariflex.ven")
    before = ven.registration()
    ven_id, first = before["ven_id"], before["registration_id"]
    vtn.refuse = 1  # the VTN turns the first attempt down: the VEN retries (after 1 s)
    vtn.forget(ven_id)  # as after a VTN restart: the next poll gets oadrRequestReregistration

    after = ven.wait_registered(besides=first)
    assert after["ven_id"] == ven_id
    # a renewal first, then (turned down) as a VEN that starts afresh
    assert registrations(vtn)[1:] == [(ven_id, first), (None, None)]
    assert lost_reasons(caplog) == ["the VTN asked us to re-register"]
    assert len(ven.clients) == 3 and ven.bridge.client is ven.clients[-1]  # one per registration
    assert [c.scheduler.running for c in ven.clients] == [False, False, True]  # and one polling

    later = event(ven_id, price([0.1] * 24))
    vtn.send(ven_id, later)
    assert wait_for_opts(vtn, [event_id(later)]) == {event_id(later): ["optIn"]}
    assert f"event:{event_id(later)}:0" in ven.entries()


def test_a_cancelled_registration_is_acknowledged_and_the_ven_registers_again(external_vtn, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="cariflex.ven")
    vtn = external_vtn
    ven = Ven(tmp_path / "ven", vtn.url)
    try:
        first = ven.wait_registered()
        ven_id = first["ven_id"]
        vtn.cancel_registration()

        after = ven.wait_registered(besides=first["registration_id"])
        assert [c.scheduler.running for c in ven.clients] == [False, True]
        acks = [p for kind, p in vtn.received if kind == "oadrCanceledPartyRegistration"]
        assert [(a["registration_id"], a["response"]["response_code"]) for a in acks] == [
            (first["registration_id"], 200)
        ]
        assert after["ven_id"] == ven_id
        assert registrations(vtn)[-1] == (ven_id, None)  # a new registration, not a renewal
        assert lost_reasons(caplog) == ["the VTN cancelled our registration"]

        later = event(ven_id, load([0.5, 0.4]))
        vtn.send(ven_id, later)
        assert wait_for_opts(vtn, [event_id(later)]) == {event_id(later): ["optIn"]}
        assert f"event:{event_id(later)}:0" in ven.entries()
    finally:
        ven.stop()


def test_a_registration_cancelled_in_its_first_poll_leaves_no_client_behind(external_vtn, tmp_path):
    external_vtn.cancel_registration()  # answers the VEN's very first poll, inside openleadr's run()
    ven = Ven(tmp_path / "ven", external_vtn.url)
    try:
        ven.wait_registered()  # at the second attempt, a second later
        assert [c.scheduler.running for c in ven.clients] == [False, True]
    finally:
        ven.stop()


def test_a_lowercase_vtn_id_is_answered_ok_and_another_vtns_id_is_not(tmp_path):
    vtn = ForeignVtn(vtn_id="foreign-vtn")  # like openleadr's own examples ("myvtn")
    ven = Ven(tmp_path / "ven", vtn.url)
    try:
        ven_id = ven.wait_registered()["ven_id"]
        first = event(ven_id, price([0.1] * 24))
        vtn.send(ven_id, first)
        assert wait_for_opts(vtn, [event_id(first)]) == {event_id(first): ["optIn"]}

        def codes() -> list[int]:
            return [p["response"]["response_code"] for kind, p in vtn.received if kind == "oadrCreatedEvent"]

        assert codes() == [200]
        # The same event in a message from a VTN that did not register us: 452 INVALID_ID.
        client = ven.bridge.client
        received = ven.loop.call(lambda: dict(client.received_events[-1]))
        ven.loop.run(client._on_event({"vtn_id": "OTHER_VTN", "request_id": "r-1", "events": [received]}))
        wait_until(lambda: len(codes()) == 2, WAIT, "the second answer")
        assert codes() == [200, 452]
    finally:
        ven.stop()
        vtn.close()


def test_the_openleadr_gaps_our_client_covers(external_vtn):
    """Why ven_bridge.ven._Client overrides openleadr's client: its plain client, once the VTN
    cancels its registration, answers and then drops every job, the poll included (it never hears
    from the VTN again); asked to re-register and turned down once, it stops itself for good. (Its
    452 for a lowercase vtnID: test_a_lowercase_vtn_id_is_answered_ok_and_another_vtns_id_is_not.)"""
    vtn = external_vtn
    loop = LoopThread("plain-vens")
    clients = []
    try:

        async def start(name: str) -> OpenADRClient:
            client = OpenADRClient(ven_name=name, vtn_url=vtn.url, show_fingerprint=False)
            client.add_handler("on_event", lambda event: "optIn")
            clients.append(client)
            await client.run()
            return client

        cancelled = loop.run(start("plain-1"))
        vtn.cancel_registration()
        wait_until(lambda: cancelled.registration_id is None, WAIT, "the plain VEN to accept the cancel")
        assert loop.call(cancelled.scheduler.get_jobs) == []  # no poll job any more: deaf for good

        asked = loop.run(start("plain-2"))
        vtn.refuse = 1
        vtn.push("oadrRequestReregistration", {"ven_id": asked.ven_id})
        wait_until(lambda: not asked.scheduler.running, WAIT, "the plain VEN to stop")
        assert asked.registration_id is None  # and nothing will start it again
    finally:
        for client in clients:
            with contextlib.suppress(Exception):
                loop.run(client.stop())
        loop.close()
