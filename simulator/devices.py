"""Physics of one simulated device: a storage (fill level in kWh) driven by one FRBC actuator.

The device runs exactly the FRBC model it announces (``cariflex.s2.devices``): in the active
operation mode, the element that holds the present fill level (``element_at``; on a shared boundary
the lower element) gives

    power     = start + factor · (end − start)   of its PowerRange (W, consumption positive)
    fill rate = start + factor · (end − start)   of its fill_rate (kWh per *second*)

Batteries also lose a constant self-discharge (50 W by default) in every mode. Integration is
exact per element: within an element the rate is constant, so ``step`` moves to the element
boundary, switches element and carries on (charging at factor 1 from 80 kWh runs at 50 kW up to
90 kWh and at the 10 kW taper above, however long the step).

The fill level stays within [0, capacity]. When the storage is full while the mode charges (or
empty while it discharges), the device's BMS stops: it switches to its idle/"off" mode on its own
(FRBC lets the RM do that; it reports the change in an ActuatorStatus), so the reported power and
mode always agree with the FRBC model.

EV chargers: by default the car is plugged in all the time (``presence="always"``). With
``presence="schedule"`` the car follows the fleet's arrival/departure times (site local time): while
it is away the charger reports 0 W, the fill level it had when it left, and only mode "off" may be
instructed; at departure the charger switches to "off"; each arrival brings a car at the fleet's
arrival_soc (40 % unless set).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

from s2python.frbc import FRBCInstruction, FRBCOperationMode, FRBCOperationModeElement

from cariflex.fleet import Battery, EVCharger, Fleet
from cariflex.s2.devices import POWER, DeviceModel, battery_model, ev_model
from cariflex.s2.validation import check_instruction, element_at

BATTERY_START = 0.5  # initial fill level, fraction of capacity
BATTERY_SELF_DISCHARGE_W = 50.0
PRESENCE_CHOICES = ("always", "schedule")


def ev_present(ev: EVCharger, local: time) -> bool:
    """Whether the car is plugged in at this local time (overnight windows wrap around midnight)."""
    if ev.arrival < ev.departure:
        return ev.arrival <= local < ev.departure
    return local >= ev.arrival or local < ev.departure


def _ranged(start: float, end: float, factor: float) -> float:
    return start + factor * (end - start)


@dataclass
class SimDevice:
    """One battery or EV charger: its FRBC model and its physical state."""

    name: str
    kind: str  # "battery" | "ev"
    model: DeviceModel = field(repr=False)
    fill_level: float  # kWh
    idle_mode_id: uuid.UUID
    self_discharge_w: float = 0.0
    ev: EVCharger | None = field(default=None, repr=False)
    timezone: ZoneInfo | None = field(default=None, repr=False)  # set = EV follows its schedule
    mode_id: uuid.UUID = field(init=False)
    factor: float = 0.0
    previous_mode_id: uuid.UUID | None = None
    transition_at: datetime | None = None
    present: bool = True
    timers_finish: dict[uuid.UUID, datetime] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.mode_id = self.idle_mode_id

    # --- construction -------------------------------------------------------------------------

    @classmethod
    def battery(cls, battery: Battery, *, self_discharge_w: float = BATTERY_SELF_DISCHARGE_W) -> SimDevice:
        model = battery_model(battery)
        return cls(
            name=battery.name,
            kind="battery",
            model=model,
            fill_level=model.capacity_kwh * BATTERY_START,
            idle_mode_id=model.mode("idle").id,
            self_discharge_w=self_discharge_w,
        )

    @classmethod
    def ev_charger(
        cls,
        ev: EVCharger,
        *,
        presence: str = "always",
        timezone: str = "America/Martinique",
        now: datetime | None = None,
    ) -> SimDevice:
        if presence not in PRESENCE_CHOICES:
            raise ValueError(f"presence must be one of {', '.join(PRESENCE_CHOICES)}, not {presence!r}")
        model = ev_model(ev)
        device = cls(
            name=ev.name,
            kind="ev",
            model=model,
            fill_level=ev.arrival_kwh,  # the fleet's arrival_soc
            idle_mode_id=model.mode("off").id,
            ev=ev,
            timezone=ZoneInfo(timezone) if presence == "schedule" else None,
        )
        device.update_presence(now or datetime.now(UTC))
        return device

    # --- what the device is doing -------------------------------------------------------------

    @property
    def capacity(self) -> float:
        return self.model.capacity_kwh

    @property
    def actuator_id(self) -> uuid.UUID:
        return self.model.actuator.id

    def mode(self, mode_id: uuid.UUID | None = None) -> FRBCOperationMode:
        wanted = mode_id or self.mode_id
        return next(m for m in self.model.actuator.operation_modes if m.id == wanted)

    @property
    def mode_label(self) -> str:
        return self.mode().diagnostic_label or str(self.mode_id)

    def element(self) -> FRBCOperationModeElement | None:
        return element_at(self.mode(), self.fill_level)

    @property
    def power_w(self) -> float:
        """Electrical power now, W, consumption positive."""
        element = self.element()
        if element is None or not self.present:
            return 0.0
        power_range = next(r for r in element.power_ranges if r.commodity_quantity == POWER)
        return _ranged(power_range.start_of_range, power_range.end_of_range, self.factor)

    def _fill_rate(self, element: FRBCOperationModeElement | None) -> float:
        """kWh per second the active mode adds to the storage in this element (no self-discharge)."""
        if element is None or not self.present:
            return 0.0
        return _ranged(element.fill_rate.start_of_range, element.fill_rate.end_of_range, self.factor)

    @property
    def fill_rate(self) -> float:
        return self._fill_rate(self.element())

    @property
    def leak_rate(self) -> float:
        """Self-discharge, kWh per second (positive = the level decreases)."""
        return self.self_discharge_w / 1000 / 3600 if self.present else 0.0

    # --- commands -----------------------------------------------------------------------------

    def check(self, instruction: FRBCInstruction, now: datetime) -> str | None:
        """Why this instruction may not be executed now, or None."""
        problem = check_instruction(
            instruction,
            self.model.description,
            active_modes={self.actuator_id: self.mode_id},
            timers_finish=self.timers_finish,
            now=now,
        )
        if problem is None and not self.present and instruction.operation_mode != self.idle_mode_id:
            problem = f"no car is plugged in at {self.name}: only mode 'off' may be used until it arrives"
        return problem

    def apply(self, mode_id: uuid.UUID, factor: float, now: datetime) -> list[tuple[uuid.UUID, datetime]]:
        """Switch to (mode, factor); returns the timers the transition started (id, finished_at)."""
        started: list[tuple[uuid.UUID, datetime]] = []
        if mode_id != self.mode_id:
            actuator = self.model.actuator
            transition = next(
                (t for t in actuator.transitions if t.from_ == self.mode_id and t.to == mode_id), None
            )
            for timer_id in transition.start_timers if transition else []:
                timer = next(t for t in actuator.timers if t.id == timer_id)
                finished = now + timedelta(milliseconds=timer.duration.root)
                self.timers_finish[timer_id] = finished
                started.append((timer_id, finished))
            self.previous_mode_id, self.mode_id, self.transition_at = self.mode_id, mode_id, now
        self.factor = factor
        return started

    def go_idle(self, now: datetime) -> bool:
        """Idle ("off" for EVs) at factor 0; True when that changed anything."""
        if self.mode_id == self.idle_mode_id and self.factor == 0.0:
            return False
        self.apply(self.idle_mode_id, 0.0, now)
        return True

    def update_presence(self, now: datetime) -> bool:
        """Follow the EV's schedule (if any); True when the car arrived or left."""
        if self.ev is None or self.timezone is None:
            return False
        present = ev_present(self.ev, now.astimezone(self.timezone).time().replace(tzinfo=None))
        if present == self.present:
            return False
        self.present = present
        if present:
            self.fill_level = self.ev.arrival_kwh
        else:
            self.go_idle(now)
        return True

    # --- physics ------------------------------------------------------------------------------

    def advance(self, seconds: float, now: datetime) -> tuple[bool, bool]:
        """Bring the device ``seconds`` on, to ``now``: first the EV's schedule (a car that arrived
        brings its arrival level, one that left idles the charger), then the fill level. Returns
        (the car arrived or left, the device stopped itself)."""
        return self.update_presence(now), self.step(seconds, now)

    def _element_for_step(self) -> FRBCOperationModeElement | None:
        """The element that governs the level's movement: on a shared boundary, when the lower
        element would push the level up, the element above takes over."""
        mode = self.mode()
        element = element_at(mode, self.fill_level)
        if element is None:
            return None
        if (
            self._fill_rate(element) - self.leak_rate > 0
            and self.fill_level >= element.fill_level_range.end_of_range
        ):
            above = next(
                (
                    e
                    for e in mode.elements
                    if e.fill_level_range.start_of_range <= self.fill_level < e.fill_level_range.end_of_range
                ),
                None,
            )
            if above is not None:
                return above
        return element

    def step(self, seconds: float, now: datetime | None = None) -> bool:
        """Integrate the fill level over ``seconds``; True when the device stopped itself (full or
        empty) and switched to idle."""
        stopped = False
        remaining = max(0.0, seconds)
        for _ in range(64):  # a few element crossings at most; the bound guards against float ties
            if remaining <= 0:
                break
            element = self._element_for_step()
            rate = self._fill_rate(element)
            net = rate - self.leak_rate
            if net == 0:
                break
            if net > 0:
                limit = self.capacity
                if element is not None:
                    limit = min(limit, element.fill_level_range.end_of_range)
            else:
                limit = 0.0
                if element is not None:
                    limit = max(limit, element.fill_level_range.start_of_range)
            to_limit = (limit - self.fill_level) / net
            if to_limit >= remaining:
                self.fill_level += net * remaining
                break
            self.fill_level = limit
            remaining -= max(0.0, to_limit)
            at_edge = limit >= self.capacity or limit <= 0.0
            if at_edge and ((net > 0 and rate > 0) or (net < 0 and rate < 0)):
                stopped = self.go_idle(now or datetime.now(UTC)) or stopped  # the BMS stops
            elif to_limit <= 0:
                break  # resting on an edge or a boundary both elements push towards
        self.fill_level = min(self.capacity, max(0.0, self.fill_level))
        return stopped


def build_devices(
    fleet: Fleet,
    names: list[str] | None = None,
    *,
    ev_presence: str = "always",
    now: datetime | None = None,
) -> list[SimDevice]:
    """The fleet's batteries and EV chargers (all, or those named, in fleet order)."""
    available = {d.name: d for d in (*fleet.batteries, *fleet.ev_chargers)}
    if names:
        unknown = [n for n in names if n not in available]
        if unknown:
            raise ValueError(
                f"unknown device(s) {', '.join(unknown)}; the fleet has {', '.join(sorted(available))}"
            )
    chosen = [d for name, d in available.items() if not names or name in names]
    return [
        SimDevice.battery(d)
        if isinstance(d, Battery)
        else SimDevice.ev_charger(d, presence=ev_presence, timezone=fleet.site.timezone, now=now)
        for d in chosen
    ]
