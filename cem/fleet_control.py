"""Fleet control: from setpoints and load-control limits to per-device targets for the S2 CEM.

Setpoints come from the FlexMeasures fleet schedule (``ScheduleFollower``: the current period's
value per device), overridden per device by an operator's ``cariflex-ven setpoint DEVICE KW``
(outbox state). While a load-control event is active, the site's net import at the connection is
capped at level × the site's normal capacity: the fleet may import the cap minus the site's
inflexible net import (base load − PV). That figure is *measured* when every PV site and the base
load (the metered S2 resources, NOT_CONTROLABLE: cariflex.s2.meters) reported within the last
``MEASURED_MAX_AGE_S`` (by the CEM's own clock, whatever the RM's timestamps say); otherwise it is
what the fleet schedule planned for the current quarter-hour (``ScheduleFollower.site_kw``, a
forecast); without either (no schedule, a fleet without PV and base load, an unknown period) the
cap holds on the fleet's own import, as before. The allowance is above the cap when PV exceeds the
base load (noon), below it when the base load takes its share (night), and negative when the base
load alone is over the cap: the batteries then discharge. A measured figure is held with a small
deadband (``SITE_DEADBAND_KW``): it tightens the allowance at once but loosens it only by whole
steps, so that a figure moving by watts does not re-instruct every device every round. Charging is
lowered and discharging raised, the effort shared in proportion to what each device can still
give without going below its minimum fill level (an EV never below the energy its departure
needs). What cannot be delivered is reported as the shortfall. Metered resources never get a
setpoint: only batteries and EV chargers take part.

Measurements from the resource managers leave as 1-minute averages through the outbox (one entry
per sensor per minute, never a request per S2 message), and only for sensors the site model has:
a resource manager that is not a device of the fleet (or a value the site has no sensor for) is
logged once and dropped here, never queued for a sensor FlexMeasures does not have. A metered
resource's average goes to its sensor (``pv_01_power``, ``site_load``) in that sensor's sign
(``consumption_is_positive`` in cariflex.site_model): S2's consumption-positive watts of a PV site
become production-positive kW.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from cariflex.contracts.openadr_event import LOAD_CONTROL, ContractError, Interval
from cariflex.contracts.s2_device import DeviceStatus, FleetStatus, MeterStatus, Setpoints
from cariflex.fleet import Battery, EVCharger, Fleet
from cariflex.json_input import clip, quote
from cariflex.s2.meters import BASE_LOAD, MEASURED_MAX_AGE_S, PV, site_meters
from cariflex.s2.translator import least_power_kw
from cariflex.site_model import child_assets
from cem.duty_cycle import DutyCycle
from cem.ports import StateStore
from cem.schedule_follower import ScheduleFollower, period_start
from cem.server import Cem

log = logging.getLogger("cariflex.ven.fleet")

QUARTER = timedelta(minutes=15)
UNKNOWN_LOGGED_MAX = 100  # devices whose dropped measurements are logged (once each)
SITE_DEADBAND_KW = 1.0  # a held measured site figure is loosened only once it is this much lower
SITE_STEP_KW = 0.25  # and is held on this grid (rounded up: never less import than measured)


@dataclass(frozen=True)
class Flex:
    name: str
    wanted_kw: float  # what the schedule or operator asks
    min_kw: float  # most negative (discharging) power allowed now


def discharge_floor_kw(device: Battery | EVCharger, fill_kwh: float | None) -> float:
    """The most negative power a device may be given now: a battery discharges only above its
    minimum fill level, a bidirectional EV only above the energy its departure needs; an unknown
    fill level allows no discharge."""
    if isinstance(device, Battery):
        floor = device.capacity_kwh * device.soc_min_pct / 100
    elif device.bidirectional:
        floor = device.departure_need_kwh
    else:
        return 0.0
    return 0.0 if fill_kwh is None or fill_kwh <= floor else -device.power_kw


def charge_room_kw(device: Battery, fill_kwh: float | None, target_kw: float) -> float:
    """How much more a battery could charge than ``target_kw`` now: up to its power, while it is
    below its maximum fill level (none with an unknown fill level)."""
    ceiling = device.capacity_kwh * device.soc_max_pct / 100
    if fill_kwh is None or fill_kwh >= ceiling:
        return 0.0
    return max(0.0, device.power_kw - target_kw)


def unplanned_surplus_kw(fleet_kw: float, site_kw: float | None, planned_site_kw: float | None) -> float:
    """What the site would export that the plan did not expect: the part of an export
    (fleet + base load − PV below zero) that comes from more PV, or less base load, than planned.
    0 when either figure is unknown or the site imports."""
    if site_kw is None or planned_site_kw is None:
        return 0.0
    return max(0.0, min(planned_site_kw - site_kw, -(fleet_kw + site_kw)))


def absorb(targets: dict[str, float], room_kw: dict[str, float], surplus_kw: float) -> dict[str, float]:
    """``surplus_kw`` more charging, shared among the devices in proportion to their room.

    Why: PV the forecast missed is otherwise exported at the feed-in tariff, while stored it
    displaces an import later (the next re-plan, within 15 minutes, plans with it). Only an export
    is absorbed, so the net import stays at or below zero and no cap can be breached by it."""
    total = sum(room_kw.values())
    if surplus_kw <= 0 or total <= 0:
        return targets
    share = min(1.0, surplus_kw / total)
    return {name: kw + room_kw.get(name, 0.0) * share for name, kw in targets.items()}


def allocate(devices: list[Flex], cap_kw: float | None) -> tuple[dict[str, float], float]:
    """Targets that keep Σ power ≤ cap; the reduction is shared in proportion to each device's room.

    ``cap_kw`` is what the fleet may import: it may be negative (the fleet must export, each device
    down to its ``min_kw`` at most); what even that cannot deliver is the shortfall."""
    targets = {d.name: d.wanted_kw for d in devices}
    if cap_kw is None:
        return targets, 0.0
    excess = sum(targets.values()) - cap_kw
    if excess <= 0:
        return targets, 0.0
    room = {d.name: max(0.0, d.wanted_kw - d.min_kw) for d in devices}
    total_room = sum(room.values())
    if total_room <= 0:
        return targets, excess
    share = min(1.0, excess / total_room)
    for name, r in room.items():
        targets[name] -= r * share
    return targets, max(0.0, excess - total_room)


_logged_problems: set[str] = set()


def _unusable(what: str, problem: str) -> None:
    """A bad stored entry is skipped, never stops a control round; logged once per problem."""
    key = f"{what}: {problem}"
    if key in _logged_problems or len(_logged_problems) >= UNKNOWN_LOGGED_MAX:
        return
    _logged_problems.add(key)
    log.error("stored entry unusable; ignored", extra={"fields": {"what": what, "error": clip(problem, 300)}})


def _intervals(event: Any, where: str = "load_control_events") -> list[Interval]:
    """The load-control intervals of an event (outbox state ``load_control_events``, or a part the
    VEN is about to answer), each read through the contract; an unusable one is logged and
    skipped."""
    raw = event.get("intervals") if isinstance(event, dict) else None
    if not isinstance(raw, list):
        _unusable(where, f"{quote(event)} has no list of intervals")
        return []
    out = []
    for index, item in enumerate(raw):
        try:
            out.append(Interval.from_dict(item, f"intervals[{index}]", LOAD_CONTROL))
        except ContractError as exc:
            _unusable(where, str(exc))
    return out


def load_control_level(events: dict[str, dict], now: datetime) -> float | None:
    """The lowest capacity fraction any active, not cancelled load-control event sets now."""
    levels = []
    for event_id, event in events.items():
        if isinstance(event, dict) and event.get("status") == "cancelled":
            continue
        for interval in _intervals(event, f"load-control event {clip(str(event_id), 100)}"):
            if interval.start <= now < interval.end:
                levels.append(float(interval.value))
    return min(levels) if levels else None


class FleetController:
    def __init__(
        self,
        fleet: Fleet,
        cem: Cem,
        outbox: StateStore,
        *,
        period_s: float = 1.0,
        follower: ScheduleFollower | None = None,
    ):
        self.fleet, self.cem, self.outbox, self.period_s = fleet, cem, outbox, period_s
        self.follower = follower
        self.capacity_kw = fleet.site.capacity_kw
        self.limits = {d.name: d for d in (*fleet.batteries, *fleet.ev_chargers)}
        self.shortfall_kw = 0.0
        self.cap_kw: float | None = None
        self.site_kw: float | None = None  # base load - PV in force (measured, else planned)
        self.site_source: str | None = None  # "measured" | "planned" | None
        self.pv_kw: float | None = None  # metered PV production (kW, production positive)
        self.base_load_kw: float | None = None  # metered base load (kW)
        self.meters = site_meters(fleet)
        self._held_site_kw: float | None = None  # the measured figure in force (deadband)
        self._minute: datetime | None = None
        specs = [spec for asset in child_assets(fleet) for spec in asset.sensors]
        self.sensors = frozenset(spec.name for spec in specs)  # what measurements may be queued for
        # kW in a sensor's own sign from S2's consumption-positive W
        self._sign = {
            spec.name: 1 if spec.attributes.get("consumption_is_positive", True) else -1 for spec in specs
        }
        self.dropped = 0  # measurements dropped: no such sensor in the site model
        self.duty = DutyCycle()
        self._last_step: datetime | None = None
        self._dropped_devices: set[str] = set()

    def _min_kw(self, name: str) -> float:
        state = self.cem.devices.get(name)
        return discharge_floor_kw(self.limits[name], state.fill_level if state else None)

    def _least_kw(self, name: str) -> float:
        state = self.cem.devices.get(name)
        return least_power_kw(state.description) if state is not None and state.description else 0.0

    def can_meet(self, event: dict, now: datetime | None = None) -> tuple[bool, str]:
        """Whether the fleet can keep its import under a load-control event's caps, and why not.

        Each interval not yet over, against the lowest average import the devices can reach in it
        (cariflex.flexibility: batteries discharge down to their minimum, EVs still reach their
        departure energy), from their present fill levels; before a later interval a battery may
        first charge (at most its power x the lead time, up to its ceiling). Devices the CEM does
        not know yet count as offering nothing and needing nothing."""
        from cariflex.flexibility import can_meet_cap, fleet_flexibility

        now = now or datetime.now(UTC)
        fills = {n: s.fill_level for n, s in self.cem.devices.items() if s.fill_level is not None}
        powers = {n: (s.power_w or 0.0) / 1000 for n, s in self.cem.devices.items()}
        batteries = {b.name: b for b in self.fleet.batteries}
        for interval in _intervals(event, "load-control event to answer"):
            begin, end = interval.start, interval.end
            if end <= now:
                continue
            start = max(begin, now)
            lead_h = (start - now).total_seconds() / 3600
            projected = {
                n: min(b.capacity_kwh * b.soc_max_pct / 100, fills[n] + b.power_kw * lead_h)
                if n in batteries and n in fills
                else fill
                for n, fill in fills.items()
                for b in [batteries.get(n)]
            }
            flex = fleet_flexibility(
                self.fleet, projected, powers, start, (end - start).total_seconds() / 3600
            )
            cap = float(interval.value) * self.capacity_kw
            site = self.planned_site_peak_kw(start, end)
            feasible, why = can_meet_cap(flex, cap if site is None else cap - site)
            if not feasible:
                on_site = (
                    "" if site is None else f" (the cap {cap:.1f} kW less the site's planned {site:.1f} kW)"
                )
                return False, f"from {start:%Y-%m-%d %H:%M} UTC {why}{on_site}"
        return True, "the fleet can hold every cap of the event"

    def planned_site_peak_kw(self, start: datetime, end: datetime) -> float | None:
        """The highest base load − PV the schedule plans in [start, end) (a cap on the net import
        binds hardest there); None when the schedule knows none of it (then the cap is judged on
        the fleet alone, as before)."""
        if self.follower is None:
            return None
        moment, known = period_start(start), []
        while moment < end:
            value = self.follower.site_kw(moment)
            if value is not None:
                known.append(value)
            moment += QUARTER
        return max(known) if known else None

    def planned_site_kw(self, now: datetime) -> float | None:
        """The site's inflexible net import (base load − PV, kW) for the period holding ``now``, as
        the fleet schedule carries it; None when unknown."""
        return self.follower.site_kw(now) if self.follower is not None else None

    def measured(self) -> tuple[float | None, float | None]:
        """Metered PV production and base load (kW, each in its sensor's sign), each None unless
        every meter of its kind has a fresh reading; a fleet without such meters gives None."""
        clock = time.monotonic()
        totals: dict[str, float | None] = {}
        for meter in self.meters.values():
            state = self.cem.devices.get(meter.name)
            fresh = (
                state is not None
                and state.metered
                and state.power_w is not None
                and state.power_at is not None
                and clock - state.power_at <= MEASURED_MAX_AGE_S
            )
            if meter.kind not in totals:
                totals[meter.kind] = 0.0
            if totals[meter.kind] is None or not fresh:
                totals[meter.kind] = None
            else:
                totals[meter.kind] += state.power_w / 1000
        pv, load = totals.get(PV), totals.get(BASE_LOAD)
        return (None if pv is None else -pv), load

    def measured_site_kw(self) -> float | None:
        """Base load − PV (kW) from the meters, when every one of them is fresh; None otherwise."""
        if not self.meters:
            return None
        pv_kw, load_kw = self.measured()
        kinds = {m.kind for m in self.meters.values()}
        if (PV in kinds and pv_kw is None) or (BASE_LOAD in kinds and load_kw is None):
            return None
        return (load_kw or 0.0) - (pv_kw or 0.0)

    def site(self, now: datetime) -> tuple[float | None, str | None]:
        """The site's inflexible net import in force and where it comes from: measured (held with
        the deadband), else planned, else (None, None)."""
        measured = self.measured_site_kw()
        if measured is not None:
            stepped = math.ceil(measured / SITE_STEP_KW - 1e-9) * SITE_STEP_KW
            held = self._held_site_kw
            if held is None or stepped > held or stepped <= held - SITE_DEADBAND_KW:
                self._held_site_kw = held = stepped
            return held, "measured"
        self._held_site_kw = None
        planned = self.planned_site_kw(now)
        return (planned, "planned") if planned is not None else (None, None)

    def allowance(self, cap_kw: float | None, site_kw: float | None) -> float | None:
        """What the fleet may import under a cap on the site's net import: cap − site_kw (above the
        cap when PV exceeds the base load, negative when the base load alone is over it); the cap
        itself when the site's figure is unknown; None without a cap."""
        if cap_kw is None:
            return None
        return cap_kw if site_kw is None else cap_kw - site_kw

    def targets(self, now: datetime) -> tuple[dict[str, float], float, float | None]:
        """Per device kW, the shortfall (kW the fleet cannot shed) and the cap in force (on the
        site's net import; None: none)."""
        scheduled = self.follower.setpoints(now) if self.follower else {}
        operator = self.operator_setpoints()
        setpoints = {**scheduled, **operator}  # the operator's win
        level = load_control_level(self.outbox.get_state("load_control_events", {}), now)
        cap = None if level is None else level * self.capacity_kw
        site_kw, source = self.site(now)
        allowance = self.allowance(cap, site_kw)
        flex = []
        for name in self.limits:
            state = self.cem.devices.get(name)
            if state is None or not state.controllable:
                continue
            if name in setpoints:
                wanted = float(setpoints[name])
            elif cap is not None:
                wanted = (state.power_w or 0.0) / 1000  # under a limit every device takes part
            else:
                continue
            flex.append(Flex(name, wanted, self._min_kw(name)))
        targets, shortfall = allocate(flex, allowance)
        if source == "measured":  # a PV surplus the plan did not see goes into the batteries
            surplus = unplanned_surplus_kw(sum(targets.values()), site_kw, self.planned_site_kw(now))
            room = {
                name: charge_room_kw(self.limits[name], self.cem.devices[name].fill_level, kw)
                for name, kw in targets.items()
                if isinstance(self.limits[name], Battery) and name not in operator
            }
            targets = absorb(targets, room, surplus)
        return targets, shortfall, cap

    def operator_setpoints(self) -> dict[str, float]:
        """``cariflex-ven setpoint``'s (outbox state ``setpoints``); unusable ones are logged and
        ignored (the schedule and the caps still apply)."""
        try:
            return dict(Setpoints.from_dict(self.outbox.get_state("setpoints", {})).kw)
        except ContractError as exc:
            _unusable("operator setpoints", str(exc))
            return {}

    async def step(self) -> None:
        now = datetime.now(UTC)
        targets, shortfall, cap = self.targets(now)
        site_kw, source = self.site(now)
        if source == "measured":  # shown as the meters read it (the cap holds on the held figure)
            site_kw = self.measured_site_kw()
        elapsed = min(5.0, (now - self._last_step).total_seconds()) if self._last_step else 0.0
        self._last_step = now
        for name, kw in targets.items():
            # Targets below an EV's least power are delivered on average (cem.duty_cycle); not
            # under a cap, where running at the least power could breach it.
            least = 0.0 if cap is not None else self._least_kw(name)
            await self.cem.apply_setpoint(name, self.duty.deliver(name, kw, least, elapsed))
        if shortfall > 0 and shortfall != self.shortfall_kw:
            log.warning(
                "load-control cap cannot be met",
                extra={
                    "fields": {
                        "cap_kw": cap,
                        "site_kw": site_kw,
                        "site_source": source,
                        "fleet_allowance_kw": self.allowance(cap, site_kw),
                        "shortfall_kw": round(shortfall, 2),
                    }
                },
            )
        self.shortfall_kw, self.cap_kw, self.site_kw, self.site_source = shortfall, cap, site_kw, source
        self.pv_kw, self.base_load_kw = self.measured()
        self._measurements(now)

    def _measurements(self, now: datetime) -> None:
        """At each new minute: the last minute's average power and last fill level per device."""
        minute = now.replace(second=0, microsecond=0)
        if self._minute is None:
            self._minute = minute
            return
        if minute == self._minute:
            return
        start, self._minute = self._minute, minute
        cutoff = time.monotonic() - (now - start).total_seconds()
        for name, state in self.cem.devices.items():
            samples = [w for t, w in state.power_samples if t >= cutoff]
            state.power_samples = [(t, w) for t, w in state.power_samples if t >= cutoff - 60]
            meter = self.meters.get(name) if state.metered else None
            sensor = meter.sensor if meter is not None else f"{name}_power"
            if samples and self._known(name, sensor):
                kw = self._sign.get(sensor, 1) * sum(samples) / len(samples) / 1000
                self.outbox.add(
                    "measurement",
                    f"m:{sensor}:{start.isoformat()}",
                    {
                        "sensor": sensor,
                        "start": start.isoformat(),
                        "duration": "PT1M",
                        "values": [round(kw, 4) + 0.0],  # (+ 0.0: no -0.0 for a PV site at night)
                        "unit": "kW",
                    },
                )
            if state.fill_level is not None and self._known(name, f"{name}_soc"):
                self.outbox.add(
                    "measurement",
                    f"m:{name}_soc:{start.isoformat()}",
                    {
                        "sensor": f"{name}_soc",
                        "start": start.isoformat(),
                        "duration": "PT1M",
                        "values": [round(state.fill_level, 4)],
                        "unit": "kWh",
                    },
                )

    def _known(self, device: str, sensor: str) -> bool:
        """Whether the site model has ``sensor``; if not, the measurement is dropped (logged once per
        device, its name clipped: a resource manager chooses it)."""
        if sensor in self.sensors:
            return True
        self.dropped += 1
        if device not in self._dropped_devices and len(self._dropped_devices) < UNKNOWN_LOGGED_MAX:
            self._dropped_devices.add(device)
            log.warning(
                "measurement of a device not in the fleet dropped",
                extra={"fields": {"device": device[:64], "sensor": sensor[:80]}},
            )
        return False

    def fleet_kw(self) -> float | None:
        """The fleet's measured power (kW, charging positive): the last measurement of each connected
        device of the fleet; None when none has one."""
        measured = [
            state.power_w
            for name, state in self.cem.devices.items()
            if name in self.limits and state.connected and state.power_w is not None
        ]
        return round(sum(measured) / 1000, 3) if measured else None

    def status(self) -> dict:
        """The report ``cariflex-ven status`` shows (outbox state ``s2``; contract ``FleetStatus``),
        with the site's figures: the fleet's measured power, the base load − PV in force (measured,
        else planned for the current quarter-hour) and their sum, the net import a load-control
        cap holds; the metered PV and base load, and each metered resource."""
        fleet_kw = self.fleet_kw()
        site_kw = None if self.site_kw is None else round(self.site_kw, 3)
        devices = {n: d for n, d in sorted(self.cem.devices.items()) if not d.metered}
        clock = time.monotonic()
        meters = {
            n: MeterStatus(
                None if d.power_w is None else round(d.power_w / 1000, 3),
                None if d.power_at is None else round(max(0.0, clock - d.power_at), 1),
                bool(d.connected),
            )
            for n, d in sorted(self.cem.devices.items())
            if d.metered
        }
        return FleetStatus(
            connected=sum(d.connected for d in devices.values()),
            under_frbc=sum(d.controllable for d in devices.values()),
            cap_kw=self.cap_kw,
            shortfall_kw=round(self.shortfall_kw, 3),
            dropped_measurements=self.dropped,
            devices={n: DeviceStatus.of(d) for n, d in devices.items()},
            fleet_kw=fleet_kw,
            site_kw=site_kw,
            net_import_kw=None if fleet_kw is None or site_kw is None else round(fleet_kw + site_kw, 3),
            pv_kw=None if self.pv_kw is None else round(self.pv_kw, 3) + 0.0,
            base_load_kw=None if self.base_load_kw is None else round(self.base_load_kw, 3),
            site_source=self.site_source,
            meters=meters,
        ).to_dict()

    async def run(self, stopping: asyncio.Event) -> None:
        last_status = 0.0
        while not stopping.is_set():
            try:
                await self.step()
                if time.monotonic() - last_status > 2:
                    self.outbox.set_state("s2", self.status())
                    last_status = time.monotonic()
            except Exception:  # keep controlling the fleet whatever one round hit
                log.exception("fleet control round failed")
            self.cem.on_change.clear()
            waits = [asyncio.ensure_future(self.cem.on_change.wait())]
            if self.follower is not None:
                self.follower.changed.clear()
                waits.append(asyncio.ensure_future(self.follower.changed.wait()))
            _, pending = await asyncio.wait(waits, timeout=self.period_s, return_when=asyncio.FIRST_COMPLETED)
            for task in pending:
                task.cancel()
