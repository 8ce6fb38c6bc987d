"""S2 test helpers: the fleet's controllable devices and a refusal's details."""

from __future__ import annotations

import uuid

from s2python.common import (
    Commodity,
    CommodityQuantity,
    ControlType,
    ResourceManagerDetails,
    Role,
    RoleType,
)

from cariflex.fleet import load_fleet

FLEET = load_fleet()

CONTROLLABLE = {d.name for d in (*FLEET.batteries, *FLEET.ev_chargers)}


def details(name: str) -> ResourceManagerDetails:
    return ResourceManagerDetails(
        message_id=uuid.uuid4(),
        resource_id=uuid.uuid4(),
        name=name,
        roles=[Role(role=RoleType.ENERGY_STORAGE, commodity=Commodity.ELECTRICITY)],
        instruction_processing_delay=100,
        available_control_types=[ControlType.FILL_RATE_BASED_CONTROL],
        provides_forecast=False,
        provides_power_measurement_types=[CommodityQuantity.ELECTRIC_POWER_3_PHASE_SYMMETRIC],
    )
