"""The VEN process: openleadr's OpenADRClient, made to survive the things it does not.

- The VTN may be down when we start: openleadr then gives up ("No RegistrationID received");
  we retry with a fresh client and capped exponential backoff, logging each try.
- Handlers must not block the poll loop: they decide optIn/optOut from the event alone
  (ven_bridge.policy) and put the event into the durable outbox; the poster thread talks to
  FlexMeasures. No network call happens inside a handler.
- openleadr keeps nothing on disk: the outbox (and its ``done`` keys) makes a restart resume where
  it stopped, without posting anything twice.
- Telemetry: a TELEMETRY_USAGE report (power_real, the fleet's total in kW) from the device powers
  the bridge last posted to FlexMeasures.
- The VTN may take the registration away (oadrRequestReregistration, oadrCancelPartyRegistration):
  the client says so (``_Client.lost``) and ``serve_openadr`` registers again with a fresh client,
  through the same retry loop (tests/e2e/test_ven_foreign_vtn.py runs this against a foreign VTN).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from openleadr import OpenADRClient

from cariflex.contracts.openadr_event import ContractError, OpenAdrEvent
from cariflex.json_input import clip
from ven_bridge.dr_report import DrVerificationFollower
from ven_bridge.outbox import Outbox
from ven_bridge.policy import Decision, belongs_to, decide, part_key
from ven_bridge.poster import Poster

log = logging.getLogger("cariflex.ven")

REGISTER_BACKOFF_CAP_S = 30.0


@dataclass
class VenOptions:
    ven_name: str
    vtn_url: str
    resources: frozenset[str]
    report_resource: str
    cert: str | None = None
    key: str | None = None
    ca_file: str | None = None
    vtn_fingerprint: str | None = None
    telemetry_seconds: float = 10.0
    s2_host: str = "127.0.0.1"
    s2_port: int = 8765
    schedule_poll_s: float = 2.0
    s2_cert: str | None = None  # with s2_key: the CEM serves wss://
    s2_key: str | None = None


class _Answers(dict):
    def __missing__(self, key: str) -> str:
        return "optIn"


class _Client(OpenADRClient):
    """openleadr's client, telling us when the VTN answered and when it took the registration away."""

    def __init__(self, *args, on_contact=None, registration_id=None, **kwargs):
        super().__init__(*args, **kwargs)
        self._on_contact = on_contact
        # openleadr gap: it forgets its answer to a cancelled event, and when the VTN sends that event
        # again (its answer was lost) the lookup raises KeyError and every other event of the message
        # is opted out and never handled. A cancellation is acknowledged, so answer optIn.
        self.responded_events = _Answers()
        # A re-registration names the registration the VTN asked us to renew (2.0b registrationID).
        self._renew_registration_id = registration_id
        self.registered_vtn_id: str | None = None  # the vtnID of the VTN that registered us
        self.lost = asyncio.Event()  # set when this client is no longer registered with the VTN
        self.lost_reason: str | None = None
        self.rejoin_registration_id: str | None = None  # what the next client re-registers with

    async def _perform_request(self, service, message):
        result = await super()._perform_request(service, message)
        if result and result[0] is not None and self._on_contact:
            self._on_contact(service)
        return result

    async def create_party_registration(self, *args, registration_id=None, **kwargs):
        result = await super().create_party_registration(
            *args, registration_id=registration_id or self._renew_registration_id, **kwargs
        )
        if result and self.registration_id:
            self.registered_vtn_id = result[1].get("vtn_id")
        return result

    async def _on_event(self, message):
        # openleadr gap: it answers the whole oadrCreatedEvent with 452 INVALID_ID whenever the
        # vtnID is all lowercase ("myvtn", as in openleadr's own examples; a 2.0b vtnID is any
        # string), so a VTN that checks the code may drop every opt in it; yet it never compares
        # the vtnID with the VTN it registered with. We compare, and raise openleadr's flag (with a
        # lowercase stand-in, nothing else in _on_event reads the vtnID) for another VTN's id only.
        vtn_id = message.get("vtn_id")
        other = self.registered_vtn_id is not None and vtn_id != self.registered_vtn_id
        return await super()._on_event({**message, "vtn_id": "other" if other else "REGISTERED"})

    def _lose(self, reason: str, rejoin_registration_id: str | None) -> None:
        self.lost_reason, self.rejoin_registration_id = reason, rejoin_registration_id
        self.lost.set()

    async def create_party_reregistration(self, registration_id=None):
        # openleadr gap: its re-registration stops the client for good when the VTN does not answer
        # at once (nothing restarts it), and on success starts a second report worker and asks the
        # VTN for reports again while the old report jobs keep running. We hand over to a fresh
        # client instead (CariflexVen.serve_openadr), which re-registers with this registrationID
        # through the usual retry loop. (openleadr has already answered the request with oadrResponse.)
        self._lose("the VTN asked us to re-register", registration_id or self.registration_id)

    async def on_cancel_party_registration(self, message):
        # openleadr gap: after answering oadrCanceledPartyRegistration it removes all its jobs, the
        # poll included, and sits there: the VEN would never hear from the VTN again. We register
        # again (a VTN that meant it refuses that registration, and we retry with capped backoff).
        registered = self.registration_id
        await super().on_cancel_party_registration(message)
        if registered is not None and self.registration_id is None:
            self._lose("the VTN cancelled our registration", None)


class CariflexVen:
    def __init__(
        self,
        options: VenOptions,
        outbox: Outbox,
        poster: Poster,
        fleet=None,
        schedule_client=None,
        dr_client=None,
        dr_poll_s: float = 300.0,
    ):
        self.options = options
        self.outbox = outbox
        self.poster = poster
        self.fleet = fleet
        self.schedule_client = schedule_client  # its own FlexMeasuresClient: the poster's is its thread's
        # and the DR verification its own again (each client is used from one thread at a time)
        self.dr = (
            DrVerificationFollower(dr_client, outbox, poll_s=dr_poll_s) if dr_client is not None else None
        )
        self.stopping = asyncio.Event()
        self.client: _Client | None = None
        self._last_contact_write = 0.0
        self.controller = None  # the FleetController, once run() has started it

    # --- handlers (called inside openleadr's poll loop: fast, local only) ------------------------

    async def handle_event(self, event: dict) -> str:
        descriptor = event.get("event_descriptor") or {}
        event_id, number = descriptor.get("event_id"), descriptor.get("modification_number")
        try:
            decision = decide(event, set(self.options.resources))
            if self.controller is not None:
                for part in decision.parts:
                    if part["signal_name"] != "LOAD_CONTROL" or part["status"] == "cancelled":
                        continue
                    feasible, why = self.controller.can_meet(part)
                    if not feasible:  # promising a cap the fleet cannot hold helps no one: say so
                        decision = Decision("optOut", why)
                        break
            self.outbox.record_decision(str(event_id), int(number or 0), decision.opt, decision.reason)
            for part in decision.parts:
                self.outbox.add("event", part_key(part), part)
                if part["signal_name"] == "LOAD_CONTROL":
                    # The fleet controller caps the site import while it is active.
                    events = self.outbox.get_state("load_control_events", {})
                    events[part["event_id"]] = part
                    self.outbox.set_state("load_control_events", events)
            # after the new parts, so that FlexMeasures already knows the levels now in force
            self._withdraw(str(event_id), descriptor, keep={part["event_id"] for part in decision.parts})
        except Exception:  # openleadr would opt out of *every* event in the message on an exception
            log.exception("event handling failed", extra={"fields": {"event_id": event_id}})
            return "optOut"
        log.info(
            "opt decision",
            extra={
                "fields": {
                    "event_id": event_id,
                    "modification_number": number,
                    "status": descriptor.get("event_status"),
                    "opt": decision.opt,
                    "reason": decision.reason,
                }
            },
        )
        return decision.opt

    def _withdraw(self, event_id: str, descriptor: dict, keep: set[str]) -> None:
        """Opting out of a modification of a load-control event we acted on (or a modification
        without its load-control signal) must lift its limit: FlexMeasures gets it as cancelled
        (else the earlier level would stay in force)."""
        events = self.outbox.get_state("load_control_events", {})
        modified = descriptor.get("modification_date_time")
        changed = False
        for part_id, earlier in list(events.items()):
            if part_id in keep or not belongs_to(part_id, event_id):
                continue
            try:
                stored = OpenAdrEvent.from_dict(earlier)
            except ContractError as exc:  # not ours to lift (nor could FlexMeasures take it): say so
                log.error(
                    "stored load-control event unusable; not withdrawn",
                    extra={"fields": {"event_id": clip(part_id, 100), "error": str(exc)}},
                )
                continue
            if stored.cancelled:
                continue
            withdrawn = stored.withdrawn(
                int(descriptor.get("modification_number") or 0),
                modified if isinstance(modified, datetime) else None,
            ).to_dict()
            self.outbox.add("event", part_key(withdrawn), withdrawn)
            events[part_id] = withdrawn
            changed = True
        if changed:
            self.outbox.set_state("load_control_events", events)

    def fleet_power(self) -> list[tuple[datetime, float]]:
        """TELEMETRY_USAGE: total battery + EV power in kW, from what was last posted; nothing if none."""
        powers = self.outbox.get_state("device_power_kw", {})
        if not powers:
            return []
        return [(datetime.now(UTC), round(sum(powers.values()), 3))]

    def _contact(self, service: str) -> None:
        now = time.time()
        if now - self._last_contact_write >= 1.0:  # at most one state write per second
            self._last_contact_write = now
            self.outbox.set_state("last_vtn_contact", {"at": now, "service": service})

    # --- registration with retry ----------------------------------------------------------------

    def _new_client(self, ven_id: str | None = None, registration_id: str | None = None) -> _Client:
        o = self.options
        client = _Client(
            ven_name=o.ven_name,
            vtn_url=o.vtn_url,
            cert=o.cert,
            key=o.key,
            ca_file=o.ca_file,
            vtn_fingerprint=o.vtn_fingerprint,
            show_fingerprint=False,
            on_contact=self._contact,
            ven_id=ven_id,
            registration_id=registration_id,
        )
        client.add_handler("on_event", self.handle_event)
        client.add_handler("on_update_event", self.handle_event)
        client.add_report(
            callback=self.fleet_power,
            resource_id=o.report_resource,
            measurement="power_real",
            unit="W",
            scale="k",
            sampling_rate=timedelta(seconds=o.telemetry_seconds),
            report_duration=timedelta(hours=24),
            power_ac=True,
            power_hertz=50,
            power_voltage=230,
        )
        if self.dr is not None:  # what the fleet delivered in the last verified load-control event
            for callback, measurement, unit, scale in (
                (self.dr.delivered_kwh, "energy_real", "Wh", "k"),
                (self.dr.delivered_pct, "x-drDeliveredPercent", "%", "none"),
            ):
                client.add_report(
                    callback=callback,
                    resource_id=o.report_resource,
                    measurement=measurement,
                    unit=unit,
                    scale=scale,
                    # openleadr gap: a VEN's second report gets its values requested under the
                    # first report's id ("No callback found for r_id"), and one report takes one
                    # sampling period: these streams join the fleet power's report, at its rate
                    sampling_rate=timedelta(seconds=o.telemetry_seconds),
                    report_duration=timedelta(hours=24),
                )
        return client

    async def register(self, ven_id: str | None = None, registration_id: str | None = None) -> _Client | None:
        """A registered client, or None once stopping. ``ven_id``/``registration_id``: the
        registration to renew, offered in the first attempt only (the VTN may have forgotten it)."""
        attempt = 0
        while not self.stopping.is_set():
            attempt += 1
            log.info(
                "registering with the VTN",
                extra={"fields": {"attempt": attempt, "vtn_url": self.options.vtn_url, "ven_id": ven_id}},
            )
            client = self._new_client(*((ven_id, registration_id) if attempt == 1 else ()))
            running = asyncio.create_task(client.run())
            stopping = asyncio.create_task(self.stopping.wait())
            await asyncio.wait({running, stopping}, return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
            if not running.done():  # SIGTERM while registering: do not wait for the VTN
                running.cancel()
                with contextlib.suppress(BaseException):
                    await running
                with contextlib.suppress(Exception):
                    await client.stop()
                return None
            if running.exception() is not None:  # e.g. an empty or garbled answer from the VTN
                log.warning(
                    "registration attempt failed", extra={"fields": {"error": repr(running.exception())}}
                )
            elif client.registration_id:
                self.outbox.set_state(
                    "registration",
                    {
                        "ven_id": client.ven_id,
                        "registration_id": client.registration_id,
                        "at": time.time(),
                        "poll_seconds": client.poll_frequency.total_seconds()
                        if client.poll_frequency
                        else None,
                    },
                )
                log.info(
                    "registered",
                    extra={
                        "fields": {
                            "ven_id": client.ven_id,
                            "attempts": attempt,
                            "poll_s": client.poll_frequency.total_seconds(),
                        }
                    },
                )
                return client
            # (a registration the VTN cancelled in the first poll leaves openleadr's jobs running)
            with contextlib.suppress(Exception):
                await client.stop()
            delay = min(REGISTER_BACKOFF_CAP_S, 2 ** (attempt - 1))
            self.outbox.set_state(
                "registration", {"ven_id": None, "failed_attempts": attempt, "at": time.time()}
            )
            log.warning(
                "registration failed; retrying", extra={"fields": {"attempt": attempt, "retry_in_s": delay}}
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), delay)
        return None

    async def serve_openadr(self) -> None:
        """Registered with the VTN until stopping; registered again whenever the VTN takes the
        registration away (the client is then replaced, see _Client). Leaves ``self.client``
        running for run() to stop."""
        renew: tuple[str | None, str | None] = (None, None)
        while not self.stopping.is_set():
            client = await self.register(*renew)
            self.client = client
            if client is None:
                return
            lost = asyncio.create_task(client.lost.wait())
            stopping = asyncio.create_task(self.stopping.wait())
            await asyncio.wait({lost, stopping}, return_when=asyncio.FIRST_COMPLETED)
            lost.cancel()
            stopping.cancel()
            if self.stopping.is_set():
                return
            log.warning(
                "registration lost; registering again",
                extra={"fields": {"reason": client.lost_reason, "ven_id": client.ven_id}},
            )
            self.outbox.set_state(
                "registration", {"ven_id": None, "lost": client.lost_reason, "at": time.time()}
            )
            with contextlib.suppress(Exception):
                await client.stop()
            self.client = None
            renew = (client.ven_id, client.rejoin_registration_id)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.stopping.set)
        self.poster.start()
        from cariflex.s2.meters import s2_resources, site_meters
        from cem.fleet_control import FleetController
        from cem.pairing import PairingStore
        from cem.server import Cem, server_ssl_context

        # The S2 CEM and the fleet controller run beside the OpenADR client in this loop. Only paired
        # devices of the fleet may connect (`cariflex-ven pair`); pairings live beside the outbox.
        # Batteries and EV chargers come under FRBC; PV sites and the base load are metered only.
        cem = Cem(
            self.options.s2_host,
            self.options.s2_port,
            pairings=PairingStore(self.outbox.path.parent),
            fleet=set(s2_resources(self.fleet)),
            meters=site_meters(self.fleet),
            ssl_context=server_ssl_context(self.options.s2_cert, self.options.s2_key)
            if self.options.s2_cert
            else None,
        )
        await cem.start()
        follower = None
        tasks = []
        if self.schedule_client is not None:
            from cem.schedule_follower import ScheduleFollower

            follower = ScheduleFollower(
                self.schedule_client, self.outbox, poll_s=self.options.schedule_poll_s
            )
            tasks.append(asyncio.create_task(follower.run(self.stopping)))
        if self.dr is not None:
            tasks.append(asyncio.create_task(self.dr.run(self.stopping)))
        controller = FleetController(self.fleet, cem, self.outbox, follower=follower)
        self.controller = controller
        tasks.append(asyncio.create_task(controller.run(self.stopping)))
        log.info(
            "ven started",
            extra={
                "fields": {
                    "ven_name": self.options.ven_name,
                    "state": str(self.outbox.path),
                    "s2_port": cem.port,
                }
            },
        )
        tasks.append(asyncio.create_task(self.serve_openadr()))
        await self.stopping.wait()
        log.info("ven stopping")
        await asyncio.gather(*tasks)
        await cem.stop()
        if self.client is not None:
            await self.client.stop()
        await asyncio.to_thread(self.poster.stop)
        self.outbox.close()
        log.info("ven stopped")
