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


def site_schedule(start, site_kw: list[float | None] | None, kw: float = 50.0) -> dict:
    """A schedule as FlexMeasures serves it: every battery at ``kw`` for 4 h from ``start``, and
    the site's base load − PV per quarter-hour (``None``: a schedule without ``site_kw``)."""
    served = {
        "version": "v-site",
        "ok": True,
        "breaches": [],
        "start": start.isoformat(),
        "resolution": "PT15M",
        "unit": "kW",
        "devices": {b.name: [kw] * 16 for b in FLEET.batteries},
    }
    if site_kw is not None:
        served["site_kw"] = site_kw
    return served


def follower_answering(outbox, answers: list[dict]):
    """A ScheduleFollower whose FlexMeasures answers each fetch with the next of ``answers``."""
    import json
    from types import SimpleNamespace

    from cem.schedule_follower import ScheduleFollower

    def get_schedule(hours, etag=None):
        body = answers.pop(0)
        return SimpleNamespace(status=200, text=json.dumps(body), etag=f'"{len(answers)}"', accepted=True)

    return ScheduleFollower(SimpleNamespace(get_schedule=get_schedule), outbox)
