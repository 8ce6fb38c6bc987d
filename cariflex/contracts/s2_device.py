"""S2 devices as the VEN process shares them: operator setpoints in, device state out.

Two arrows, both through the VEN's outbox state (JSON in SQLite, read by other processes):

- ``setpoints``: ``cariflex-ven setpoint DEVICE KW`` (another process) writes ``{device: kW}``,
  charging positive; the CEM's fleet controller reads it every round and lets it override the
  fleet schedule's value for that device (an active load-control cap still applies on top)::

      {"bat_01": 20.0, "ev_03": -7.5}

- ``s2``: what the CEM knows of each device, as the resource managers reported it over S2
  (PowerMeasurement, FRBC.StorageStatus, the connection), with the setpoint last applied, and the
  fleet figures; written by the fleet controller every ~2 s, read by ``cariflex-ven status``::

      {"connected": 2, "under_frbc": 2, "cap_kw": 180.0 | null, "shortfall_kw": 0.0,
       "dropped_measurements": 0,
       "devices": {"bat_01": {"power_kw": 12.5 | null, "fill_kwh": 48.2 | null,
                              "setpoint_kw": 12.5 | null, "connected": true}, ...},
       "fleet_kw": 25.0, "site_kw": 100.0, "net_import_kw": 125.0,    # optional, see below
       "site_source": "measured", "pv_kw": 50.0, "base_load_kw": 150.0,
       "meters": {"pv_01": {"power_kw": -12.5 | null, "age_s": 1.2 | null, "connected": true}, ...}}

  The site figures are optional (written only when known; a report without them, as older VENs
  wrote it, stays valid): ``fleet_kw`` the fleet's measured power (the connected devices' last
  measurements, charging positive), ``site_kw`` the site's inflexible net import (base load - PV,
  kW), ``site_source`` where that figure comes from ("measured": every PV site's and the base
  load's meter reported within the last minute; "planned": the fleet schedule's figure for the
  current quarter-hour, a forecast), ``net_import_kw`` = fleet_kw + site_kw, the import at the
  connection a load-control cap holds. ``pv_kw`` (production positive) and ``base_load_kw``
  (consumption positive) are the metered figures, each present only when all its meters are
  fresh; ``meters`` has each metered resource (NOT_CONTROLABLE, cariflex.s2.meters) as the CEM
  knows it: last power in S2's sign (kW, consumption positive: a producing PV site is negative),
  seconds since it arrived, whether its RM is connected. Metered resources are not in ``devices``
  and not in the ``connected`` / ``under_frbc`` counts, which are the fleet's controllable devices.

Inside the VEN process the CEM and the fleet controller share ``cem.server.DeviceState`` objects
(with s2-python models) and call ``Cem.apply_setpoint(name, kW)``; this contract is their JSON
form. There is no validity window on a setpoint today: it holds until cleared (``--clear``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Self

from cariflex.contracts import (
    ContractError,
    boolean,
    fail,
    fields,
    finite_number,
    integer,
    name,
    optional_finite,
)
from cariflex.json_input import clip, quote

__all__ = ["ContractError", "DeviceStatus", "FleetStatus", "MeterStatus", "Setpoints"]

MAX_DEVICES = 1000
COUNT_MAX = 2**53  # counters: any JSON integer a float can hold


def _devices(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        fail(where, f"must be a JSON object of device: ..., got {type(value).__name__}")
    if len(value) > MAX_DEVICES:
        fail(where, f"has {len(value)} devices; at most {MAX_DEVICES}")
    for device in value:
        name(device, where)
    return value


@dataclass(frozen=True)
class Setpoints:
    """The operator's setpoints, kW per device (charging positive); outbox state ``setpoints``."""

    kw: Mapping[str, float] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "kw", MappingProxyType(dict(self.kw)))

    @classmethod
    def from_dict(cls, data: Any) -> Self:
        devices = _devices(data, "setpoints")
        return cls(
            {device: finite_number(kw, f"setpoints.{clip(device, 30)}") for device, kw in devices.items()}
        )

    def to_dict(self) -> dict[str, float]:
        return dict(self.kw)

    def with_setpoint(self, device: str, kw: float) -> Self:
        """These setpoints with ``device`` at ``kw`` (checked: ContractError for NaN, text, ...)."""
        return type(self).from_dict({**self.kw, device: kw})

    def without(self, device: str) -> Self:
        return type(self)({d: kw for d, kw in self.kw.items() if d != device})


DEVICE_FIELDS = ("power_kw", "fill_kwh", "setpoint_kw", "connected")


@dataclass(frozen=True)
class DeviceStatus:
    """One device as the CEM knows it: last measured power (kW, charging positive), fill level
    (kWh, as the RM reports it), the setpoint last applied (kW) and whether its RM is connected."""

    power_kw: float | None
    fill_kwh: float | None
    setpoint_kw: float | None
    connected: bool

    @classmethod
    def of(cls, state: Any) -> Self:
        """From the CEM's device state (anything with ``power_w``, ``fill_level``, ``setpoint_kw``
        and ``connected``, i.e. ``cem.server.DeviceState``), rounded as the status shows it."""
        power_w = state.power_w
        return cls(
            None if power_w is None else round(power_w / 1000, 3),
            state.fill_level,
            state.setpoint_kw,
            bool(state.connected),
        )

    @classmethod
    def from_dict(cls, data: Any, where: str = "device") -> Self:
        item = fields(data, where, DEVICE_FIELDS)
        return cls(
            optional_finite(item["power_kw"], f"{where}.power_kw"),
            optional_finite(item["fill_kwh"], f"{where}.fill_kwh"),
            optional_finite(item["setpoint_kw"], f"{where}.setpoint_kw"),
            boolean(item["connected"], f"{where}.connected"),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "power_kw": self.power_kw,
            "fill_kwh": self.fill_kwh,
            "setpoint_kw": self.setpoint_kw,
            "connected": self.connected,
        }


METER_FIELDS = ("power_kw", "age_s", "connected")


@dataclass(frozen=True)
class MeterStatus:
    """One metered resource (a PV site, the base load) as the CEM knows it: last measured power
    (kW, S2 sign: consumption positive), its age in seconds (None: never measured) and whether
    its RM is connected."""

    power_kw: float | None
    age_s: float | None
    connected: bool

    @classmethod
    def from_dict(cls, data: Any, where: str = "meter") -> Self:
        item = fields(data, where, METER_FIELDS)
        age = optional_finite(item["age_s"], f"{where}.age_s")
        if age is not None and age < 0:
            fail(f"{where}.age_s", f"{age:g} is negative")
        return cls(
            optional_finite(item["power_kw"], f"{where}.power_kw"),
            age,
            boolean(item["connected"], f"{where}.connected"),
        )

    def to_dict(self) -> dict[str, Any]:
        return {"power_kw": self.power_kw, "age_s": self.age_s, "connected": self.connected}


FLEET_FIELDS = ("connected", "under_frbc", "cap_kw", "shortfall_kw", "dropped_measurements", "devices")
SITE_FIELDS = ("fleet_kw", "site_kw", "net_import_kw", "pv_kw", "base_load_kw")  # optional
SITE_SOURCES = ("measured", "planned")
OPTIONAL_FIELDS = (*SITE_FIELDS, "site_source", "meters")


@dataclass(frozen=True)
class FleetStatus:
    """The CEM's report (outbox state ``s2``): devices connected and under FRBC control, the
    load-control cap in force (kW, null: none), what of it the fleet cannot deliver (kW),
    measurements dropped (no such sensor on the site) and each device's status; optionally the
    fleet's measured power, the site's inflexible net import (base load - PV), where it comes from
    ("measured" or "planned") and the sum, the net import at the connection (kW, None: unknown),
    the metered PV and base load, and each metered resource's status."""

    connected: int
    under_frbc: int
    cap_kw: float | None
    shortfall_kw: float
    dropped_measurements: int
    devices: Mapping[str, DeviceStatus] = field(default_factory=dict, hash=False)
    fleet_kw: float | None = None
    site_kw: float | None = None
    net_import_kw: float | None = None
    pv_kw: float | None = None
    base_load_kw: float | None = None
    site_source: str | None = None
    meters: Mapping[str, MeterStatus] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "devices", MappingProxyType(dict(self.devices)))
        object.__setattr__(self, "meters", MappingProxyType(dict(self.meters)))

    @classmethod
    def from_dict(cls, data: Any) -> Self:
        status = fields(data, "s2", FLEET_FIELDS, OPTIONAL_FIELDS)
        devices = _devices(status["devices"], "devices")
        meters = _devices(status.get("meters", {}), "meters")
        source = status.get("site_source")
        if source is not None and source not in SITE_SOURCES:
            fail("site_source", f"{quote(source)} is not one of {', '.join(SITE_SOURCES)}")
        shortfall = finite_number(status["shortfall_kw"], "shortfall_kw")
        if shortfall < 0:
            fail("shortfall_kw", f"{shortfall:g} is negative")
        return cls(
            integer(status["connected"], "connected", high=COUNT_MAX),
            integer(status["under_frbc"], "under_frbc", high=COUNT_MAX),
            optional_finite(status["cap_kw"], "cap_kw"),
            shortfall,
            integer(status["dropped_measurements"], "dropped_measurements", high=COUNT_MAX),
            {
                device: DeviceStatus.from_dict(item, f"devices.{clip(device, 30)}")
                for device, item in devices.items()
            },
            *(optional_finite(status.get(key), key) for key in SITE_FIELDS),
            source,
            {
                meter: MeterStatus.from_dict(item, f"meters.{clip(meter, 30)}")
                for meter, item in meters.items()
            },
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "connected": self.connected,
            "under_frbc": self.under_frbc,
            "cap_kw": self.cap_kw,
            "shortfall_kw": self.shortfall_kw,
            "dropped_measurements": self.dropped_measurements,
            "devices": {device: status.to_dict() for device, status in self.devices.items()},
            **{key: value for key in SITE_FIELDS if (value := getattr(self, key)) is not None},
            **({"site_source": self.site_source} if self.site_source is not None else {}),
            **({"meters": {m: s.to_dict() for m, s in self.meters.items()}} if self.meters else {}),
        }
