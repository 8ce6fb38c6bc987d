"""kW setpoint → FRBC instruction (operation mode, factor), reference/s2.md §6.

For the device's present fill level, every mode the actuator may use now (not abnormal-only, the
active one or reachable by an unblocked transition) offers one element and its power range. The
target is met by the mode whose range contains it, the narrowest such range first (so 0 W means
idle, not discharge at factor 1). When no range contains the target, the mode whose range comes
closest wins and the result says how far short it falls. factor = (P − start) / (end − start).
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from s2python.frbc import FRBCSystemDescription

from cariflex.s2.devices import POWER
from cariflex.s2.validation import element_at


@dataclass(frozen=True)
class Translation:
    actuator_id: uuid.UUID
    mode_id: uuid.UUID
    mode_label: str | None
    factor: float
    target_w: float
    expected_w: float

    @property
    def reachable(self) -> bool:
        return abs(self.expected_w - self.target_w) < 1e-6

    @property
    def shortfall_w(self) -> float:
        """How much of the target the device cannot deliver (signed like the target)."""
        return self.target_w - self.expected_w


class NoUsableMode(ValueError):
    """No operation mode can run at this fill level (e.g. every transition blocked)."""


def translate(
    description: FRBCSystemDescription,
    fill_level: float,
    target_kw: float,
    *,
    active_mode: uuid.UUID | None = None,
    timers_finish: dict[uuid.UUID, datetime] | None = None,
    now: datetime | None = None,
) -> Translation:
    now = now or datetime.now(UTC)
    timers_finish = timers_finish or {}
    actuator = description.actuators[0]
    target_w = target_kw * 1000
    reachable_modes = set()
    for mode in actuator.operation_modes:
        if mode.abnormal_condition_only:
            continue
        if active_mode is None or mode.id == active_mode:
            reachable_modes.add(mode.id)
            continue
        for t in actuator.transitions:
            if (
                t.from_ == active_mode
                and t.to == mode.id
                and not t.abnormal_condition_only
                and all(timers_finish.get(timer, now) <= now for timer in t.blocking_timers)
            ):
                reachable_modes.add(mode.id)
    candidates = []
    for mode in actuator.operation_modes:
        element = element_at(mode, fill_level) if mode.id in reachable_modes else None
        if element is None:
            continue
        power = next(p for p in element.power_ranges if p.commodity_quantity == POWER)
        low, high = power.start_of_range, power.end_of_range
        reached = min(max(target_w, low), high)
        candidates.append((abs(target_w - reached), high - low, mode, low, high, reached))
    if not candidates:
        raise NoUsableMode(f"no operation mode usable at fill level {fill_level}")
    _, _, mode, low, high, reached = min(candidates, key=lambda c: (c[0], c[1]))
    factor = 0.0 if high == low else (reached - low) / (high - low)
    return Translation(actuator.id, mode.id, mode.diagnostic_label, factor, target_w, reached)


def least_power_kw(description: FRBCSystemDescription) -> float:
    """The smallest non-zero power (kW, magnitude) any mode of the device can run at: an EV
    charger's 4.14 kW, 0 for a device that can run at any power (a battery's inverter)."""
    least = math.inf
    for mode in description.actuators[0].operation_modes:
        for element in mode.elements:
            for power in element.power_ranges:
                if power.commodity_quantity != POWER:
                    continue
                if power.start_of_range == power.end_of_range == 0:
                    continue  # an idle mode
                low, high = sorted((abs(power.start_of_range), abs(power.end_of_range)))
                crosses_zero = (power.start_of_range <= 0 <= power.end_of_range) or (
                    power.end_of_range <= 0 <= power.start_of_range
                )
                if crosses_zero:
                    return 0.0
                if high > 0:
                    least = min(least, low)
    return 0.0 if math.isinf(least) else least / 1000
