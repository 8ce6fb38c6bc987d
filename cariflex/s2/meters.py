"""The site's metered S2 resources: each PV site and the base load, measured, never controlled.

Each PV site (``pv_01`` …) and the site's own consumption (``site_load``, when the fleet gives a
base load) is an S2 resource manager of control type NOT_CONTROLABLE: it pairs and connects like
a battery (one access token, one WebSocket, ResourceManagerDetails naming it), the CEM selects
NOT_CONTROLABLE, and from then on the RM only sends PowerMeasurement. No instruction ever goes to
it. The simulator runs them (``simulator.site``), the CEM keeps their values (``cem.server``) and
the fleet controller holds a load-control cap on the net import they give (``cem.fleet_control``).

Sign: S2 power is W, consumption positive, so a PV site producing 40 kW reports −40 000 W and a
base load of 90 kW reports +90 000 W. The FlexMeasures sensors they feed keep their own sign
(``cariflex.site_model``: ``pv_01_power`` production positive, ``site_load`` consumption
positive); the CEM converts at that edge from the sensor's ``consumption_is_positive``.

Plausible range: a value outside ``[low_w, high_w]`` is refused (INVALID_CONTENT, the CEM's
state unchanged), never clipped: a clipped reading would be a made-up one. A PV site may produce
up to 120 % of its inverter limit (meter tolerance, a short overshoot) and draw at most 5 % of its
peak (standby at night); the base load may read from −10 % of its peak (meter noise) to twice
its peak (a hot afternoon above the typical profile).
"""

from __future__ import annotations

from dataclasses import dataclass

from s2python.common import RoleType

from cariflex.fleet import Fleet
from cariflex.site_model import SITE_LOAD

MEASURED_MAX_AGE_S = 60.0  # a meter's reading counts as the site's present for this long after it arrived
PV = "pv"
BASE_LOAD = "base_load"
PV_OVERSHOOT = 1.2  # x the inverter limit (production)
PV_STANDBY = 0.05  # x the peak power (consumption at night)
LOAD_NOISE = 0.1  # x the base load's peak, below zero
LOAD_HIGH = 2.0  # x the base load's peak


@dataclass(frozen=True)
class Meter:
    """One metered resource: its S2 name, kind, the FlexMeasures sensor its averages go to, and
    the range (W, consumption positive) a PowerMeasurement of it must be in."""

    name: str
    kind: str  # PV | BASE_LOAD
    sensor: str
    low_w: float
    high_w: float

    @property
    def role(self) -> RoleType:
        return RoleType.ENERGY_PRODUCER if self.kind == PV else RoleType.ENERGY_CONSUMER

    def plausible(self, watts: float) -> str | None:
        """Why ``watts`` cannot be this meter's reading; None when it can."""
        if watts != watts or watts in (float("inf"), float("-inf")):
            return f"power {watts!r} W is not a finite number"
        if not self.low_w <= watts <= self.high_w:
            return (
                f"power {watts:.6g} W is outside {self.name}'s plausible range "
                f"{self.low_w:.6g} … {self.high_w:.6g} W (S2: consumption positive)"
            )
        return None


def site_meters(fleet: Fleet) -> dict[str, Meter]:
    """The fleet's metered resources by name: every PV site, then the base load if it has one."""
    meters = {
        pv.name: Meter(
            pv.name,
            PV,
            f"{pv.name}_power",
            -PV_OVERSHOOT * pv.inverter_limit_kw * 1000,
            PV_STANDBY * pv.peak_power_kw * 1000,
        )
        for pv in fleet.pv
    }
    peak = fleet.site.base_load_kw
    if peak is not None:
        meters[SITE_LOAD] = Meter(
            SITE_LOAD, BASE_LOAD, SITE_LOAD, -LOAD_NOISE * peak * 1000, LOAD_HIGH * peak * 1000
        )
    return meters


def s2_resources(fleet: Fleet) -> list[str]:
    """Every name that may pair with the CEM: batteries, EV chargers, then the metered resources."""
    return [d.name for d in (*fleet.batteries, *fleet.ev_chargers)] + list(site_meters(fleet))
