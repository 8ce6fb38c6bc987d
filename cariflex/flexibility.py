"""How much the fleet could add or shed: per battery and EV, and for the fleet, over a window.

Shared by the plugin (fill levels from the database: ``flexmeasures cariflex flexibility``, the
API, Grafana) and by the VEN (fill levels from the devices' S2 status: it opts out of a
load-control event the fleet cannot meet). Nothing here imports FlexMeasures.

The method, for a window of ``hours`` from ``now`` (power consumption-positive, kW):

- Each device has a feasible *average* power over the window, ``[p_min, p_max]``:
  - battery: ``p_max = min(power, (max_fill - fill) / hours)``,
    ``p_min = -min(power, (fill - min_fill) / hours)``;
  - EV charger with the car plugged in, window cut at its departure: ``p_max = min(power,
    (capacity - fill) / hours)``; the car must still reach its departure energy, so the window has
    to take whatever cannot be charged after it: ``must = max(0, need - fill - power * hours_after)
    / hours`` where ``hours_after`` is the plugged time between the window's end and departure;
    ``p_min = must`` when that is positive, else ``-min(power, (fill - need) / hours)`` for a
    bidirectional charger (it keeps the departure energy) and 0 for a one-way one;
  - a car away, or a device with no known fill level: ``p_min = p_max = 0`` (nothing to offer, and
    nothing promised).
- *Add* (up) = ``p_max - baseline`` and *shed* (down) = ``baseline - p_min``, where the baseline
  is the present power held for as long as the device is there, within ``[p_min, p_max]``; the
  energy is that power times the window. The fleet figures are the sums, and the fleet's lowest
  possible import over the window is ``Σ p_min`` (what a load-control cap must leave room for).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from cariflex.fleet import Battery, EVCharger, Fleet


@dataclass(frozen=True)
class DeviceFlexibility:
    name: str
    kind: str  # "battery" | "ev"
    current_kw: float
    min_kw: float  # lowest feasible average power over the window
    max_kw: float  # highest
    up_kw: float  # could be added
    down_kw: float  # could be shed
    up_kwh: float
    down_kwh: float
    note: str  # why the range is what it is, for people


@dataclass(frozen=True)
class FleetFlexibility:
    start: datetime
    hours: float
    devices: tuple[DeviceFlexibility, ...]

    @property
    def up_kw(self) -> float:
        return sum(d.up_kw for d in self.devices)

    @property
    def down_kw(self) -> float:
        return sum(d.down_kw for d in self.devices)

    @property
    def up_kwh(self) -> float:
        return sum(d.up_kwh for d in self.devices)

    @property
    def down_kwh(self) -> float:
        return sum(d.down_kwh for d in self.devices)

    @property
    def min_import_kw(self) -> float:
        """The lowest average fleet import the devices can reach over the window."""
        return sum(d.min_kw for d in self.devices)

    @property
    def current_kw(self) -> float:
        return sum(d.current_kw for d in self.devices)

    def as_dict(self) -> dict:
        def r(x: float) -> float:
            return round(x, 3)

        return {
            "start": self.start.isoformat(),
            "hours": self.hours,
            "fleet": {
                "current_kw": r(self.current_kw),
                "min_import_kw": r(self.min_import_kw),
                "up_kw": r(self.up_kw),
                "down_kw": r(self.down_kw),
                "up_kwh": r(self.up_kwh),
                "down_kwh": r(self.down_kwh),
            },
            "devices": [
                {
                    "name": d.name,
                    "kind": d.kind,
                    "current_kw": r(d.current_kw),
                    "min_kw": r(d.min_kw),
                    "max_kw": r(d.max_kw),
                    "up_kw": r(d.up_kw),
                    "down_kw": r(d.down_kw),
                    "up_kwh": r(d.up_kwh),
                    "down_kwh": r(d.down_kwh),
                    "note": d.note,
                }
                for d in self.devices
            ],
        }


def plugged_until(ev: EVCharger, moment_local: datetime) -> datetime | None:
    """The departure ending the plug-in window the car is in at ``moment_local``; None when away."""
    local = moment_local.time()
    if ev.arrival < ev.departure:
        present = ev.arrival <= local < ev.departure
    else:  # overnight window
        present = local >= ev.arrival or local < ev.departure
    if not present:
        return None
    departure = datetime.combine(moment_local.date(), ev.departure, tzinfo=moment_local.tzinfo)
    return departure if departure > moment_local else departure + timedelta(days=1)


def _battery(bat: Battery, fill: float | None, current: float, hours: float) -> tuple[float, float, str]:
    if fill is None:
        return 0.0, 0.0, "fill level unknown"
    floor = bat.capacity_kwh * bat.soc_min_pct / 100
    ceiling = bat.capacity_kwh * bat.soc_max_pct / 100
    p_max = max(0.0, min(bat.power_kw, (ceiling - fill) / hours))
    p_min = -max(0.0, min(bat.power_kw, (fill - floor) / hours))
    return p_min, p_max, f"fill {fill:.1f} kWh within {floor:.1f}..{ceiling:.1f} kWh"


def _ev(
    ev: EVCharger, fill: float | None, current: float, start: datetime, hours: float
) -> tuple[float, float, float, str]:
    """(p_min, p_max, the share of the window the car is plugged in, note)."""
    departure = plugged_until(ev, start)
    if departure is None:
        return 0.0, 0.0, 0.0, "car away"
    if fill is None:
        return 0.0, 0.0, 1.0, "fill level unknown"
    plugged = min(hours, (departure - start).total_seconds() / 3600)
    if plugged <= 0:
        return 0.0, 0.0, 0.0, "car leaving"
    need = ev.departure_need_kwh
    after = max(0.0, (departure - start).total_seconds() / 3600 - hours)
    p_max = max(0.0, min(ev.power_kw, (ev.battery_capacity_kwh - fill) / plugged))
    must = max(0.0, need - fill - ev.power_kw * after) / plugged
    if must > 0:
        p_min = min(must, ev.power_kw)
        note = f"needs {need - fill:.1f} kWh more by {departure:%H:%M}"
    elif ev.bidirectional:
        p_min = -max(0.0, min(ev.power_kw, (fill - need) / plugged))
        note = f"departure energy {need:.1f} kWh kept"
    else:
        p_min = 0.0
        note = "one-way charger"
    # Energy over the whole window: the car is only there for `plugged` of it.
    scale = plugged / hours
    return p_min * scale, p_max * scale, scale, note


def fleet_flexibility(
    fleet: Fleet,
    fills: dict[str, float | None],
    powers: dict[str, float],
    start: datetime,
    hours: float,
) -> FleetFlexibility:
    """Flexibility of every battery and EV charger over ``[start, start + hours]``.

    ``fills``: fill level (kWh) per device, None/missing = unknown; ``powers``: current power (kW,
    consumption positive) per device, missing = 0. ``start`` must be timezone-aware.
    """
    if hours <= 0:
        raise ValueError(f"hours must be positive, got {hours}")
    if start.tzinfo is None:
        raise ValueError("start must be timezone-aware")
    local = start.astimezone(ZoneInfo(fleet.site.timezone))
    devices = []
    for bat in fleet.batteries:
        current = powers.get(bat.name, 0.0)
        p_min, p_max, note = _battery(bat, fills.get(bat.name), current, hours)
        devices.append(_device(bat.name, "battery", current, p_min, p_max, hours, note))
    for ev in fleet.ev_chargers:
        current = powers.get(ev.name, 0.0)
        p_min, p_max, share, note = _ev(ev, fills.get(ev.name), current, local, hours)
        devices.append(_device(ev.name, "ev", current, p_min, p_max, hours, note, share))
    return FleetFlexibility(start, hours, tuple(devices))


def _device(
    name: str,
    kind: str,
    current: float,
    p_min: float,
    p_max: float,
    hours: float,
    note: str,
    plugged_share: float = 1.0,
) -> DeviceFlexibility:
    # What the device would do over the window if left alone: its present power for the time it is
    # there, and never beyond what its fill level allows (a battery nearly full stops charging).
    baseline = min(max(current * plugged_share, p_min), p_max)
    up = max(0.0, p_max - baseline)
    down = max(0.0, baseline - p_min)
    return DeviceFlexibility(name, kind, current, p_min, p_max, up, down, up * hours, down * hours, note)


def can_meet_cap(flex: FleetFlexibility, cap_kw: float) -> tuple[bool, str]:
    """Whether the fleet can keep its import at or below ``cap_kw`` over the window, and why not."""
    lowest = flex.min_import_kw
    if lowest <= cap_kw + 1e-9:
        return True, f"fleet can go down to {lowest:.1f} kW, cap {cap_kw:.1f} kW"
    blocking = [f"{d.name} must take {d.min_kw:.1f} kW ({d.note})" for d in flex.devices if d.min_kw > 1e-9]
    return False, (
        f"the fleet cannot stay under {cap_kw:.1f} kW for {flex.hours:g} h: its lowest possible import "
        f"is {lowest:.1f} kW" + (f"; {'; '.join(blocking)}" if blocking else "")
    )
