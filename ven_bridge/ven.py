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

from ven_bridge.dr_report import DrVerificationFollower
from ven_bridge.outbox import Outbox
from ven_bridge.policy import Decision, decide
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


class _Answers(dict):
    def __missing__(self, key: str) -> str:
        return "optIn"


class _Client(OpenADRClient):
    """openleadr's client, telling us when the VTN answered."""

    def __init__(self, *args, on_contact=None, **kwargs):
        super().__init__(*args, **kwargs)
        self._on_contact = on_contact
        # openleadr gap: it forgets its answer to a cancelled event, and when the VTN sends that event
        # again (its answer was lost) the lookup raises KeyError and every other event of the message
        # is opted out and never handled. A cancellation is acknowledged, so answer optIn.
        self.responded_events = _Answers()

    async def _perform_request(self, service, message):
        result = await super()._perform_request(service, message)
        if result and result[0] is not None and self._on_contact:
            self._on_contact(service)
        return result


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
            if (
                decision.normalised is not None
                and decision.normalised["signal_name"] == "LOAD_CONTROL"
                and decision.normalised["status"] != "cancelled"
                and self.controller is not None
            ):
                feasible, why = self.controller.can_meet(decision.normalised)
                if not feasible:  # promising a cap the fleet cannot hold helps no one: say so
                    decision = Decision("optOut", why, None)
            self.outbox.record_decision(str(event_id), int(number or 0), decision.opt, decision.reason)
            if decision.normalised is None:
                self._withdraw(str(event_id), descriptor)
            else:
                self.outbox.add("event", decision.key, decision.normalised)
                if decision.normalised["signal_name"] == "LOAD_CONTROL":
                    # The fleet controller caps the site import while it is active.
                    events = self.outbox.get_state("load_control_events", {})
                    events[decision.normalised["event_id"]] = decision.normalised
                    self.outbox.set_state("load_control_events", events)
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

    def _withdraw(self, event_id: str, descriptor: dict) -> None:
        """Opting out of a modification of a load-control event we acted on must lift its limit:
        FlexMeasures gets it as cancelled (else the earlier level would stay in force)."""
        events = self.outbox.get_state("load_control_events", {})
        earlier = events.get(event_id)
        if earlier is None or earlier.get("status") == "cancelled":
            return
        modified = descriptor.get("modification_date_time")
        withdrawn = {
            **earlier,
            "status": "cancelled",
            "modification_number": int(descriptor.get("modification_number") or 0),
            "modification_date_time": modified.isoformat()
            if isinstance(modified, datetime)
            else earlier["modification_date_time"],
        }
        self.outbox.add("event", f"event:{event_id}:{withdrawn['modification_number']}", withdrawn)
        events[event_id] = withdrawn
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

    def _new_client(self) -> _Client:
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

    async def register(self) -> _Client | None:
        attempt = 0
        while not self.stopping.is_set():
            attempt += 1
            log.info(
                "registering with the VTN",
                extra={"fields": {"attempt": attempt, "vtn_url": self.options.vtn_url}},
            )
            client = self._new_client()
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
                with contextlib.suppress(Exception):
                    await client.stop()
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

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.stopping.set)
        self.poster.start()
        from ven_bridge.fleet_control import FleetController
        from ven_bridge.s2_cem import Cem

        # The S2 CEM and the fleet controller run beside the OpenADR client in this loop.
        cem = Cem(self.options.s2_host, self.options.s2_port)
        await cem.start()
        follower = None
        tasks = []
        if self.schedule_client is not None:
            from ven_bridge.schedule_follower import ScheduleFollower

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
        self.client = await self.register()
        await self.stopping.wait()
        log.info("ven stopping")
        await asyncio.gather(*tasks)
        await cem.stop()
        if self.client is not None:
            await self.client.stop()
        await asyncio.to_thread(self.poster.stop)
        self.outbox.close()
        log.info("ven stopped")
