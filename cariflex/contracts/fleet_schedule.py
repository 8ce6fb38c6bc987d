"""The fleet schedule: what each battery and EV charger should draw, per 15-minute period.

Arrow: plugin -> VEN bridge. ``replan.current_schedule`` reads the latest "Cariflex scheduler"
beliefs and the outcome of the last re-plan; ``GET /api/cariflex/v1/schedule?hours=H`` serves it
(ETag = version + start + hours); the VEN's schedule follower fetches it, keeps a copy in its
outbox state ``schedule`` (plus the ``etag`` it came with) and gives the fleet controller the
current period's values::

    {"version": "2026-11-24T16:00:03.123456+00:00" | null,   # belief time of the last saved run
     "ok": true | false | null,                             # outcome of the last run (null: none yet)
     "breaches": ["ev_03: leaves at ... 4.2 kWh short", ...],
     "start": "2026-11-24T16:00:00+00:00",                  # the current 15-minute period
     "resolution": "PT15M", "unit": "kW",
     "devices": {"bat_01": [12.5, 0.0, null, ...], ...}}    # charging positive; null: no plan

A reader ignores keys it does not know (the follower's copy adds ``etag``; the plugin may add
fields); ``start`` carries a UTC offset, the resolution is 15 minutes (what the follower
steps by), the unit kW, every device has one value per period (at most 48 h of them,
``cariflex.inputs.HOURS_RANGE``), each a finite number or null.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Any, Self

from cariflex.contracts import (
    ContractError,
    boolean,
    fail,
    fields,
    finite_number,
    iso_duration,
    moment,
    name,
    strings,
    text,
)
from cariflex.inputs import HOURS_RANGE
from cariflex.json_input import clip, quote
from cariflex.site_model import QUARTER

__all__ = ["ContractError", "FleetSchedule", "PERIOD", "RESOLUTION", "UNIT"]

PERIOD = QUARTER
RESOLUTION = iso_duration(PERIOD)  # "PT15M"
UNIT = "kW"
MAX_PERIODS = int(HOURS_RANGE[1] * (timedelta(hours=1) / PERIOD))  # 48 h: 192
MAX_DEVICES = 1000
FIELDS = ("version", "ok", "breaches", "start", "resolution", "unit", "devices")


def _values(value: Any, where: str) -> tuple[float | None, ...]:
    if not isinstance(value, list):
        fail(where, f"must be a list of kW per period, got {type(value).__name__}")
    if len(value) > MAX_PERIODS:
        fail(where, f"has {len(value)} periods; at most {MAX_PERIODS} ({HOURS_RANGE[1]:g} h)")
    out: list[float | None] = []
    for index, item in enumerate(value):
        if item is None:
            out.append(None)
            continue
        out.append(finite_number(item, f"{where}[{index}]"))
    return tuple(out)


@dataclass(frozen=True)
class FleetSchedule:
    version: str | None
    ok: bool | None
    breaches: tuple[str, ...]
    start: datetime  # aware, the first period's start
    devices: Mapping[str, tuple[float | None, ...]] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:  # frozen, and no dict anyone else may change
        object.__setattr__(self, "devices", MappingProxyType(dict(self.devices)))

    @property
    def periods(self) -> int:
        return max((len(values) for values in self.devices.values()), default=0)

    @property
    def end(self) -> datetime:
        return self.start + self.periods * PERIOD

    def setpoints(self, now: datetime) -> dict[str, float]:
        """kW per device for the period holding ``now`` (charging positive); none outside the plan."""
        index = (now - self.start) // PERIOD
        return {
            device: values[index]
            for device, values in self.devices.items()
            if 0 <= index < len(values) and values[index] is not None
        }

    @classmethod
    def from_dict(cls, data: Any) -> Self:
        schedule = fields(data, "schedule", FIELDS, exact=False)
        version = schedule["version"]
        if version is not None:
            version = text(version, "version", max_length=100, printable=True)
        ok = None if schedule["ok"] is None else boolean(schedule["ok"], "ok")
        breaches = strings(schedule["breaches"], "breaches")
        start = moment(schedule["start"], "start")
        if schedule["resolution"] != RESOLUTION:
            fail("resolution", f"{quote(schedule['resolution'])} is not {RESOLUTION!r}, the follower's step")
        if schedule["unit"] != UNIT:
            fail("unit", f"{quote(schedule['unit'])} is not {UNIT!r}")
        raw = schedule["devices"]
        if not isinstance(raw, dict):
            fail("devices", f"must be a JSON object of device: [kW, ...], got {type(raw).__name__}")
        if len(raw) > MAX_DEVICES:
            fail("devices", f"has {len(raw)} devices; at most {MAX_DEVICES}")
        devices: dict[str, tuple[float | None, ...]] = {}
        for device, values in raw.items():
            device = name(device, "devices")
            devices[device] = _values(values, f"devices.{clip(device, 30)}")
        lengths = {len(v) for v in devices.values()}
        if len(lengths) > 1:
            fail("devices", f"the devices have different numbers of periods ({sorted(lengths)})")
        return cls(version, ok, breaches, start, devices)

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "ok": self.ok,
            "breaches": list(self.breaches),
            "start": self.start.isoformat(),
            "resolution": RESOLUTION,
            "unit": UNIT,
            "devices": {device: list(values) for device, values in self.devices.items()},
        }
