"""S2 test helpers: the fleet's controllable devices, its metered resources, and a resource
manager's details."""

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
from cariflex.s2.meters import site_meters

FLEET = load_fleet()

CONTROLLABLE = {d.name for d in (*FLEET.batteries, *FLEET.ev_chargers)}
METERED = set(site_meters(FLEET))  # the PV sites and the base load: NOT_CONTROLABLE
S2_RESOURCES = CONTROLLABLE | METERED  # every name that may pair


def details(
    name: str,
    control_types: tuple[ControlType, ...] = (ControlType.FILL_RATE_BASED_CONTROL,),
    role: RoleType = RoleType.ENERGY_STORAGE,
) -> ResourceManagerDetails:
    return ResourceManagerDetails(
        message_id=uuid.uuid4(),
        resource_id=uuid.uuid4(),
        name=name,
        roles=[Role(role=role, commodity=Commodity.ELECTRICITY)],
        instruction_processing_delay=100,
        available_control_types=list(control_types),
        provides_forecast=False,
        provides_power_measurement_types=[CommodityQuantity.ELECTRIC_POWER_3_PHASE_SYMMETRIC],
    )
