"""The fleet description: which devices exist on the site and their parameters.

One YAML file, read by one loader (``load_fleet``), is the source for FlexMeasures setup, the
device simulator and the VEN bridge. The loader validates the whole file before anybody acts on
it and reports every problem at once, each naming the file, the device and the field, so an
operator can fix a file in one go and nothing is ever written from a half-valid fleet.

Quantities carry their unit ("50 kW", "100 kWh", "90 %"), because a bare number in a fleet file
is exactly the kind of thing that is off by a factor of 1000 a year later.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field, fields
from datetime import time
from importlib import resources
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml

from cariflex.json_input import quote as q  # refused values shown short

DEFAULT_FLEET_NAME = "cariflex.yaml"

# Units accepted per kind of quantity, with the factor to the unit we store.
_UNITS: dict[str, dict[str, float]] = {
    "power": {"W": 1e-3, "kW": 1.0, "MW": 1e3},  # -> kW
    "energy": {"Wh": 1e-3, "kWh": 1.0, "MWh": 1e3},  # -> kWh
    "fraction": {"%": 1.0},  # -> percent
}
_EXAMPLES = {"power": "50 kW", "energy": "100 kWh", "fraction": "90 %"}
_QUANTITY = re.compile(r"^\s*([-+]?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)\s*([A-Za-z%]+)\s*$")
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,40}$")
_CLOCK = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")


class FleetError(ValueError):
    """A fleet file that cannot be used; ``problems`` lists every reason."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"fleet file {source} is invalid ({len(problems)} problem(s)):\n{lines}")


@dataclass(frozen=True)
class Site:
    name: str
    account: str
    latitude: float
    longitude: float
    timezone: str
    capacity_kw: float  # grid connection capacity, both directions
    # the site's own consumption at its daily peak (kW); None: no base load is modelled
    base_load_kw: float | None = None


@dataclass(frozen=True)
class PVSite:
    name: str
    peak_power_kw: float
    latitude: float
    longitude: float
    tilt_deg: float = 15.0
    azimuth_deg: float = 180.0  # degrees from north; 180 = facing south
    temperature_coefficient_pct: float = -0.4  # power change per °C of cell temperature above 25 °C
    inverter_kw: float | None = None  # AC limit; None = the peak power (no clipping)

    @property
    def inverter_limit_kw(self) -> float:
        return self.peak_power_kw if self.inverter_kw is None else self.inverter_kw


@dataclass(frozen=True)
class Battery:
    name: str
    capacity_kwh: float
    power_kw: float  # symmetric charge / discharge limit
    soc_min_pct: float
    soc_max_pct: float
    roundtrip_efficiency_pct: float


# An EV charger's losses (on-board charger, cable), each way: the simulator's FRBC model and the
# scheduler's flex-model (round trip = its square) must agree, or every plan misses the departure
# energy by the difference.
EV_CHARGE_EFFICIENCY = 0.92


@dataclass(frozen=True)
class EVCharger:
    name: str
    power_kw: float
    battery_capacity_kwh: float
    arrival: time  # local time the car is usually plugged in
    departure: time  # local time it leaves
    departure_soc_pct: float  # energy it must leave with, as % of battery_capacity
    bidirectional: bool = True
    arrival_soc_pct: float = 40.0  # energy a car usually brings when it plugs in

    @property
    def plugged_hours(self) -> float:
        """Hours from arrival to departure (past midnight when it leaves the next morning)."""
        minutes = (self.departure.hour - self.arrival.hour) * 60 + self.departure.minute - self.arrival.minute
        return (minutes % (24 * 60)) / 60

    @property
    def departure_need_kwh(self) -> float:
        return self.battery_capacity_kwh * self.departure_soc_pct / 100

    @property
    def arrival_kwh(self) -> float:
        return self.battery_capacity_kwh * self.arrival_soc_pct / 100


@dataclass(frozen=True)
class WeatherStation:
    name: str
    latitude: float
    longitude: float


@dataclass(frozen=True)
class GridSignals:
    name: str


@dataclass(frozen=True)
class Fleet:
    source: str
    site: Site
    weather_station: WeatherStation
    grid_signals: GridSignals
    pv: tuple[PVSite, ...] = field(default_factory=tuple)
    batteries: tuple[Battery, ...] = field(default_factory=tuple)
    ev_chargers: tuple[EVCharger, ...] = field(default_factory=tuple)

    @property
    def devices(self) -> tuple[PVSite | Battery | EVCharger, ...]:
        return (*self.pv, *self.batteries, *self.ev_chargers)


# How each YAML field maps onto a dataclass field, and what kind of value it holds.
# (yaml key, dataclass attribute, kind, required)
_Spec = tuple[str, str, str, bool]
_SITE: list[_Spec] = [
    ("name", "name", "name_text", True),
    ("account", "account", "text", True),
    ("latitude", "latitude", "latitude", True),
    ("longitude", "longitude", "longitude", True),
    ("timezone", "timezone", "timezone", True),
    ("capacity", "capacity_kw", "power", True),
    ("base_load", "base_load_kw", "power", False),
]
_PV: list[_Spec] = [
    ("name", "name", "name", True),
    ("peak_power", "peak_power_kw", "power", True),
    ("latitude", "latitude", "latitude", True),
    ("longitude", "longitude", "longitude", True),
    ("tilt", "tilt_deg", "tilt", False),
    ("azimuth", "azimuth_deg", "azimuth", False),
    ("temperature_coefficient", "temperature_coefficient_pct", "temperature_coefficient", False),
    ("inverter", "inverter_kw", "power", False),
]
_BATTERY: list[_Spec] = [
    ("name", "name", "name", True),
    ("capacity", "capacity_kwh", "energy", True),
    ("power", "power_kw", "power", True),
    ("soc_min", "soc_min_pct", "fraction", True),
    ("soc_max", "soc_max_pct", "fraction", True),
    ("roundtrip_efficiency", "roundtrip_efficiency_pct", "fraction", True),
]
_EV: list[_Spec] = [
    ("name", "name", "name", True),
    ("power", "power_kw", "power", True),
    ("battery_capacity", "battery_capacity_kwh", "energy", True),
    ("arrival", "arrival", "clock", True),
    ("departure", "departure", "clock", True),
    ("departure_soc", "departure_soc_pct", "fraction", True),
    ("bidirectional", "bidirectional", "bool", False),
    ("arrival_soc", "arrival_soc_pct", "fraction", False),
]
_WEATHER: list[_Spec] = [
    ("name", "name", "name", True),
    ("latitude", "latitude", "latitude", True),
    ("longitude", "longitude", "longitude", True),
]
_GRID: list[_Spec] = [("name", "name", "name", True)]

_SECTIONS = ("site", "weather_station", "grid_signals", "pv", "batteries", "ev_chargers")


class _Checker:
    """Collects problems while converting raw YAML values, so all are reported together."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def fail(self, where: str, key: str, message: str) -> None:
        self.problems.append(f"{where}, field '{key}': {message}")

    def value(self, where: str, key: str, kind: str, raw: Any) -> Any:
        """Convert one raw value; on a problem, record it and return None."""
        if kind in _UNITS:
            return self._quantity(where, key, kind, raw)
        if kind in ("name", "name_text", "text"):
            if not isinstance(raw, str) or not raw.strip():
                return self.fail(where, key, f"{q(raw)} must be a non-empty text")
            if kind == "name" and not _NAME.match(raw):
                return self.fail(
                    where,
                    key,
                    f"{q(raw)} must be lower-case letters, digits and '_' (e.g. 'bat_01')",
                )
            return raw.strip()
        if kind in ("latitude", "longitude", "tilt", "azimuth"):
            limits = {"latitude": 90, "longitude": 180, "tilt": 90, "azimuth": 360}[kind]
            low = 0 if kind in ("tilt", "azimuth") else -limits
            if isinstance(raw, bool) or not isinstance(raw, int | float) or not low <= raw <= limits:
                return self.fail(where, key, f"{q(raw)} must be a number from {low} to {limits}")
            return float(raw)
        if kind == "temperature_coefficient":  # %/°C, e.g. -0.40 for crystalline silicon
            if isinstance(raw, bool) or not isinstance(raw, int | float) or not -2 <= raw <= 0:
                return self.fail(where, key, f"{q(raw)} must be a number from -2 to 0 (% per °C, e.g. -0.4)")
            return float(raw)
        if kind == "timezone":
            try:
                ZoneInfo(str(raw))
            except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: a name too long for a file
                return self.fail(where, key, f"{q(raw)} is not an IANA timezone (e.g. 'America/Martinique')")
            return str(raw)
        if kind == "clock":
            match = _CLOCK.match(str(raw)) if isinstance(raw, str) else None
            if not match:
                return self.fail(where, key, f"{q(raw)} must be a local time as 'HH:MM' in quotes")
            return time(int(match[1]), int(match[2]))
        if kind == "bool":
            if not isinstance(raw, bool):
                return self.fail(where, key, f"{q(raw)} must be true or false")
            return raw
        raise AssertionError(kind)

    def _quantity(self, where: str, key: str, kind: str, raw: Any) -> float | None:
        units = _UNITS[kind]
        example = _EXAMPLES[kind]
        match = _QUANTITY.match(raw) if isinstance(raw, str) else None
        if not match:
            return self.fail(where, key, f"{q(raw)} must be a quantity with a unit, e.g. '{example}'")
        number, unit = float(match[1]), match[2]
        if unit not in units:
            return self.fail(where, key, f"unknown unit {unit!r} in {q(raw)}; use one of {', '.join(units)}")
        if number < 0:
            return self.fail(where, key, f"{q(raw)} is negative; it must be at least 0 (e.g. '{example}')")
        if kind == "fraction" and number > 100:
            return self.fail(where, key, f"{q(raw)} is more than 100 %")
        return number * units[unit]


def _convert(checker: _Checker, where: str, raw: Any, specs: list[_Spec], cls: type) -> Any:
    """Build one dataclass from a YAML mapping, or None when it has problems."""
    if not isinstance(raw, dict):
        checker.problems.append(f"{where}: must be a mapping of fields, got {type(raw).__name__}")
        return None
    before = len(checker.problems)
    known = {key for key, *_ in specs}
    for key in raw:
        if key not in known:
            hint = difflib.get_close_matches(str(key), known, n=1)
            suffix = (
                f" (did you mean '{hint[0]}'?)" if hint else f"; known fields: {', '.join(sorted(known))}"
            )
            checker.fail(where, str(key), f"unknown field{suffix}")
    values: dict[str, Any] = {}
    for key, attr, kind, required in specs:
        if key not in raw or raw[key] is None:
            if required:
                checker.fail(where, key, "missing (required)")
            continue
        values[attr] = checker.value(where, key, kind, raw[key])
    if len(checker.problems) > before:
        return None
    return cls(**values)


def _device_label(section: str, index: int, raw: Any) -> str:
    name = raw.get("name") if isinstance(raw, dict) else None
    return f"{section}[{index}] device '{name}'" if isinstance(name, str) else f"{section}[{index}]"


def _cross_checks(checker: _Checker, fleet_parts: dict[str, Any]) -> None:
    """Rules that span fields or devices: unique names, sensible ranges."""
    seen: dict[str, str] = {}
    for section in ("pv", "batteries", "ev_chargers", "weather_station", "grid_signals"):
        items = fleet_parts.get(section)
        items = items if isinstance(items, list | tuple) else [items]
        for index, item in enumerate(items):
            if item is None:
                continue
            label = f"{section}[{index}]" if section in ("pv", "batteries", "ev_chargers") else section
            if item.name in seen:
                checker.problems.append(
                    f"{label} device '{item.name}', field 'name': duplicate device name "
                    f"(already used by {seen[item.name]})"
                )
            else:
                seen[item.name] = label
    for index, bat in enumerate(fleet_parts.get("batteries") or []):
        if bat is None:
            continue
        where = f"batteries[{index}] device '{bat.name}'"
        if bat.capacity_kwh == 0:
            checker.fail(where, "capacity", "must be more than 0 kWh")
        if bat.power_kw == 0:
            checker.fail(where, "power", "must be more than 0 kW")
        if bat.soc_min_pct >= bat.soc_max_pct:
            checker.fail(where, "soc_min", f"{bat.soc_min_pct} % must be below soc_max ({bat.soc_max_pct} %)")
        if bat.roundtrip_efficiency_pct == 0:
            checker.fail(where, "roundtrip_efficiency", "must be more than 0 %")
    for index, ev in enumerate(fleet_parts.get("ev_chargers") or []):
        if ev is None:
            continue
        where = f"ev_chargers[{index}] device '{ev.name}'"
        for key, value in (("power", ev.power_kw), ("battery_capacity", ev.battery_capacity_kwh)):
            if value == 0:
                checker.fail(where, key, "must be more than 0")
        if ev.arrival == ev.departure:
            checker.fail(where, "departure", "must differ from arrival")
        elif ev.power_kw and ev.battery_capacity_kwh:
            gap = ev.departure_need_kwh - ev.arrival_kwh
            deliverable = ev.power_kw * ev.plugged_hours
            if gap > deliverable + 1e-9:
                checker.fail(
                    where,
                    "departure_soc",
                    f"{ev.departure_soc_pct:g} % of {ev.battery_capacity_kwh:g} kWh needs {gap:g} kWh more "
                    f"than the car arrives with ({ev.arrival_soc_pct:g} %), but its {ev.power_kw:g} kW "
                    f"charger delivers at most {deliverable:g} kWh between {ev.arrival:%H:%M} and "
                    f"{ev.departure:%H:%M}",
                )
    for index, pv in enumerate(fleet_parts.get("pv") or []):
        if pv is not None and pv.peak_power_kw == 0:
            checker.fail(f"pv[{index}] device '{pv.name}'", "peak_power", "must be more than 0 kW")


def parse_fleet(data: Any, source: str) -> Fleet:
    """Validate raw YAML data into a Fleet; raise FleetError listing every problem."""
    checker = _Checker()
    if not isinstance(data, dict):
        raise FleetError(source, ["the file must hold a mapping with the sections " + ", ".join(_SECTIONS)])
    for key in data:
        if key not in _SECTIONS:
            hint = difflib.get_close_matches(str(key), _SECTIONS, n=1)
            checker.problems.append(
                f"unknown section '{key}'" + (f" (did you mean '{hint[0]}'?)" if hint else "")
            )
    parts: dict[str, Any] = {}
    for section, specs, cls in (
        ("site", _SITE, Site),
        ("weather_station", _WEATHER, WeatherStation),
        ("grid_signals", _GRID, GridSignals),
    ):
        if section not in data:
            checker.problems.append(f"section '{section}': missing (required)")
            continue
        parts[section] = _convert(checker, f"section '{section}'", data[section], specs, cls)
    for section, specs, cls in (
        ("pv", _PV, PVSite),
        ("batteries", _BATTERY, Battery),
        ("ev_chargers", _EV, EVCharger),
    ):
        raw_list = data.get(section) or []
        if not isinstance(raw_list, list):
            checker.problems.append(f"section '{section}': must be a list of devices")
            continue
        parts[section] = [
            _convert(checker, _device_label(section, i, raw), raw, specs, cls)
            for i, raw in enumerate(raw_list)
        ]
    _cross_checks(checker, parts)
    if checker.problems:
        raise FleetError(source, checker.problems)
    return Fleet(
        source=source,
        site=parts["site"],
        weather_station=parts["weather_station"],
        grid_signals=parts["grid_signals"],
        pv=tuple(parts["pv"]),
        batteries=tuple(parts["batteries"]),
        ev_chargers=tuple(parts["ev_chargers"]),
    )


def default_fleet_path() -> Path:
    """The Cariflex fleet that ships inside the package."""
    return Path(str(resources.files("cariflex") / "fleets" / DEFAULT_FLEET_NAME))


def load_fleet(path: str | Path | None = None) -> Fleet:
    """Load and validate a fleet file: the given path, else $CARIFLEX_FLEET_FILE, else the default."""
    from cariflex import settings

    chosen = Path(path or settings.get("CARIFLEX_FLEET_FILE") or default_fleet_path())
    source = str(chosen)
    try:
        text = chosen.read_text(encoding="utf-8")
    except OSError as exc:
        raise FleetError(source, [f"cannot be read: {exc.strerror or exc}"]) from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise FleetError(source, [f"{where}not valid YAML ({getattr(exc, 'problem', exc)})"]) from exc
    return parse_fleet(data, source)


def as_dict(obj: Any) -> dict[str, Any]:
    """Plain-JSON view of a fleet dataclass (times as 'HH:MM'), e.g. for asset attributes."""
    out: dict[str, Any] = {}
    for f in fields(obj):
        value = getattr(obj, f.name)
        out[f.name] = value.strftime("%H:%M") if isinstance(value, time) else value
    return out
