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
     "devices": {"bat_01": [12.5, 0.0, null, ...], ...},   # charging positive; null: no plan
     "site_kw": [100.0, -212.4, null, ...]}                 # optional: base load - PV, as planned

A reader ignores keys it does not know (the follower's copy adds ``etag``; the plugin may add
fields); ``start`` carries a UTC offset, the resolution is 15 minutes (what the follower
steps by), the unit kW, every device has one value per period (at most 48 h of them,
``cariflex.inputs.HOURS_RANGE``), each a finite number or null.

``site_kw`` (optional; absent for a fleet without PV and base load, and in payloads from before
it existed): what the site imports without being scheduled, per period, kW consumption positive:
the base load minus the PV production (negative when PV exceeds the base load), as the plan
assumed it (forecasts, never a meter). Same periods as the devices, each a finite number or null
(unknown). The fleet controller holds a load-control cap on the net import with it: the fleet
may import ``cap - site_kw``. ``to_dict`` writes it only when there is one, so a payload without
it reads and writes back unchanged.
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
OPTIONAL_FIELDS = ("site_kw",)


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
    site_kw: tuple[float | None, ...] | None = None  # base load - PV per period; None: not given

    def __post_init__(self) -> None:  # frozen, and no dict anyone else may change
        object.__setattr__(self, "devices", MappingProxyType(dict(self.devices)))
        if self.site_kw is not None:
            object.__setattr__(self, "site_kw", tuple(self.site_kw))

    @property
    def periods(self) -> int:
        lengths = [len(values) for values in self.devices.values()]
        if self.site_kw is not None:
            lengths.append(len(self.site_kw))
        return max(lengths, default=0)

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

    def site_kw_at(self, now: datetime) -> float | None:
        """The site's inflexible net import (base load - PV, kW) for the period holding ``now``;
        None when the schedule has none, the period is outside it or its value is unknown."""
        if self.site_kw is None:
            return None
        index = (now - self.start) // PERIOD
        return self.site_kw[index] if 0 <= index < len(self.site_kw) else None

    @classmethod
    def from_dict(cls, data: Any) -> Self:
        schedule = fields(data, "schedule", FIELDS, OPTIONAL_FIELDS, exact=False)
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
        site_kw = None
        if schedule.get("site_kw") is not None:  # absent (or null): no site figures
            site_kw = _values(schedule["site_kw"], "site_kw")
            if lengths and len(site_kw) not in lengths:
                fail("site_kw", f"has {len(site_kw)} periods; the devices have {lengths.pop()}")
        return cls(version, ok, breaches, start, devices, site_kw)

    def to_dict(self) -> dict[str, Any]:
        out = {
            "version": self.version,
            "ok": self.ok,
            "breaches": list(self.breaches),
            "start": self.start.isoformat(),
            "resolution": RESOLUTION,
            "unit": UNIT,
            "devices": {device: list(values) for device, values in self.devices.items()},
        }
        if self.site_kw is not None:
            out["site_kw"] = list(self.site_kw)
        return out
