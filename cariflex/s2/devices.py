"""FRBC system descriptions of the fleet's devices, built with s2-python's validated models.

Used by the simulated resource managers (which send them) and by tests of the translator. Units
and signs follow S2: power in W, consumption positive; fill level in kWh; fill rates in kWh per
*second* (flexmeasures-client's CEM gets this 3600× wrong).

Battery: modes idle / charge / discharge. Charge has a constant-voltage taper above 90 % fill
(the element boundary is the same float on both sides: s2-python checks contiguity exactly).
Discharge is written −P…0 (s2-python requires PowerRange start ≤ end), so factor 0 = full discharge.
EV charger: modes off / charge (minimum power … P) / discharge (−P … −minimum), as real chargers
cannot run below their minimum current.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime

from s2python.common import CommodityQuantity, NumberRange, PowerRange, Transition
from s2python.frbc import (
    FRBCActuatorDescription,
    FRBCOperationMode,
    FRBCOperationModeElement,
    FRBCStorageDescription,
    FRBCSystemDescription,
)

from cariflex.fleet import EV_CHARGE_EFFICIENCY, Battery, EVCharger

POWER = CommodityQuantity.ELECTRIC_POWER_3_PHASE_SYMMETRIC
TAPER_FROM = 0.9  # fraction of capacity where the CV taper starts
TAPER_POWER = 0.2  # fraction of rated power left in the taper
EV_MIN_KW = 4.14  # 6 A on three phases at 230 V


def _element(low_kwh: float, high_kwh: float, low_w: float, high_w: float, efficiency: float):
    """One element; fill rate per second follows the power range, with losses on the right side."""

    def rate(w: float) -> float:
        kw = w / 1000
        return kw / 3600 * efficiency if kw >= 0 else kw / 3600 / efficiency

    return FRBCOperationModeElement(
        fill_level_range=NumberRange(start_of_range=low_kwh, end_of_range=high_kwh),
        fill_rate=NumberRange(start_of_range=rate(low_w), end_of_range=rate(high_w)),
        power_ranges=[PowerRange(start_of_range=low_w, end_of_range=high_w, commodity_quantity=POWER)],
    )


def _mode(label: str, elements: list[FRBCOperationModeElement]) -> FRBCOperationMode:
    return FRBCOperationMode(
        id=uuid.uuid4(), diagnostic_label=label, elements=elements, abnormal_condition_only=False
    )


def _transitions(modes: list[FRBCOperationMode]) -> list[Transition]:
    return [
        Transition(
            id=uuid.uuid4(),
            from_=a.id,
            to=b.id,
            start_timers=[],
            blocking_timers=[],
            abnormal_condition_only=False,
        )
        for a in modes
        for b in modes
        if a.id != b.id
    ]


@dataclass
class DeviceModel:
    """A device's FRBC description plus the numbers a simulator or translator needs."""

    name: str
    capacity_kwh: float
    power_kw: float
    efficiency: float
    min_kwh: float
    max_kwh: float
    description: FRBCSystemDescription = field(repr=False)

    @property
    def actuator(self) -> FRBCActuatorDescription:
        return self.description.actuators[0]

    def mode(self, label: str) -> FRBCOperationMode:
        return next(m for m in self.actuator.operation_modes if m.diagnostic_label == label)


def _system(
    name: str, modes: list[FRBCOperationMode], capacity_kwh: float, low_kwh: float, high_kwh: float
) -> FRBCSystemDescription:
    actuator = FRBCActuatorDescription(
        id=uuid.uuid4(),
        diagnostic_label=f"{name} inverter",
        supported_commodities=["ELECTRICITY"],
        operation_modes=modes,
        transitions=_transitions(modes),
        timers=[],
    )
    storage = FRBCStorageDescription(
        diagnostic_label=name,
        fill_level_label="kWh",
        provides_leakage_behaviour=False,
        provides_fill_level_target_profile=False,
        provides_usage_forecast=False,
        fill_level_range=NumberRange(start_of_range=low_kwh, end_of_range=high_kwh),
    )
    return FRBCSystemDescription(
        message_id=uuid.uuid4(), valid_from=datetime.now(UTC), actuators=[actuator], storage=storage
    )


def battery_model(battery: Battery) -> DeviceModel:
    capacity, watts = battery.capacity_kwh, battery.power_kw * 1000
    eta = (battery.roundtrip_efficiency_pct / 100) ** 0.5  # split evenly between charge and discharge
    taper = capacity * TAPER_FROM
    modes = [
        _mode("idle", [_element(0.0, capacity, 0.0, 0.0, eta)]),
        _mode(
            "charge",
            [_element(0.0, taper, 0.0, watts, eta), _element(taper, capacity, 0.0, watts * TAPER_POWER, eta)],
        ),
        _mode("discharge", [_element(0.0, capacity, -watts, 0.0, eta)]),
    ]
    low, high = capacity * battery.soc_min_pct / 100, capacity * battery.soc_max_pct / 100
    return DeviceModel(
        battery.name,
        capacity,
        battery.power_kw,
        eta,
        low,
        high,
        _system(battery.name, modes, capacity, low, high),
    )


def ev_model(ev: EVCharger, efficiency: float = EV_CHARGE_EFFICIENCY) -> DeviceModel:
    capacity, watts, minimum = ev.battery_capacity_kwh, ev.power_kw * 1000, EV_MIN_KW * 1000
    modes = [
        _mode("off", [_element(0.0, capacity, 0.0, 0.0, efficiency)]),
        _mode("charge", [_element(0.0, capacity, minimum, watts, efficiency)]),
    ]
    if ev.bidirectional:
        modes.append(_mode("discharge", [_element(0.0, capacity, -watts, -minimum, efficiency)]))
    return DeviceModel(
        ev.name,
        capacity,
        ev.power_kw,
        efficiency,
        capacity * 0.1,
        capacity,
        _system(ev.name, modes, capacity, capacity * 0.1, capacity),
    )
