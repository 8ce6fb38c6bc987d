"""The normalised OpenADR event: one signal of one modification of one OpenADR event.

Arrow: VEN bridge -> plugin. ``ven_bridge.policy.decide`` makes it from what openleadr parsed (one
per signal: ``<event_id>#<signal_name>`` when an event has several); the VEN's outbox posts it to
``POST /api/cariflex/v1/openadr/events``, where ``openadr_ingest`` writes it as beliefs. The VEN
also keeps its load-control events (outbox state ``load_control_events``, by event id), which the
CEM's fleet controller reads to cap the site's import, and from which it withdraws a level the VTN
took back (``withdrawn``)::

    {"event_id": "evt-20261124-8fc1a133", "modification_number": 1,
     "status": "far|near|active|completed|cancelled",
     "modification_date_time": "2026-11-24T16:00:00+00:00",
     "signal_name": "ENERGY_PRICE" | "ELECTRICITY_PRICE" | "LOAD_CONTROL",
     "signal_type": "price" | "x-loadControlCapacity",
     "item_base": {"name": "currencyPerKWh", "unit": "EUR", "scale": "none"} | null,
     "intervals": [{"start": "2026-11-25T04:00:00+00:00", "duration": "PT1H", "value": 0.095}, ...]}

Exactly these keys. Prices are EUR per kWh (the plugin stores x 1000 as EUR/MWh), within the
site-wide range (``cariflex.site_model.PRICE_RANGE_EUR_PER_MWH``); load-control levels are
fractions 0..1 of the site's normal capacity. Intervals are sorted and contiguous, each positive
and at most 31 days, the event at most 31 days; a price interval lies on whole hours and a
load-control interval on quarter hours (the resolutions of ``consumption_price`` and
``load_control_signal`` in the site model). A cancellation may have no intervals. Times carry a
UTC offset and lie within 10 years of today. The messages are those the plugin answered with
before this contract (``intervals[3].value: must be a finite number, ...``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Self

from cariflex.contracts import (
    ContractError,
    duration,
    fail,
    fields,
    integer,
    iso_duration,
    moment,
    number,
    text,
)
from cariflex.json_input import quote
from cariflex.site_model import HOUR, PRICE_RANGE_EUR_PER_MWH, QUARTER

__all__ = [
    "ContractError",
    "Interval",
    "ItemBase",
    "OpenAdrEvent",
    "LOAD_CONTROL",
    "PRICE",
    "SIGNALS",
    "STATUSES",
]

PRICE = "price"
LOAD_CONTROL = "load_control"
SIGNALS = {
    ("ENERGY_PRICE", "price"): PRICE,
    ("ELECTRICITY_PRICE", "price"): PRICE,
    ("LOAD_CONTROL", "x-loadControlCapacity"): LOAD_CONTROL,
}
STATUSES = ("far", "near", "active", "completed", "cancelled")
FIELDS = (
    "event_id",
    "modification_number",
    "status",
    "modification_date_time",
    "signal_name",
    "signal_type",
    "item_base",
    "intervals",
)
INTERVAL_FIELDS = ("start", "duration", "value")
ITEM_BASE_FIELDS = ("name", "unit", "scale")
MAX_EVENT_ID = 200
MAX_PERIOD = timedelta(days=31)  # one interval, and the whole event
MAX_INTERVALS = 31 * 24 * 4  # 31 days of quarter hours
# The sensor each kind of signal is stored on, and its resolution (cariflex.site_model).
STORED_ON = {PRICE: ("consumption_price", HOUR), LOAD_CONTROL: ("load_control_signal", QUARTER)}
PRICE_RANGE_EUR_PER_KWH = (PRICE_RANGE_EUR_PER_MWH[0] / 1000, PRICE_RANGE_EUR_PER_MWH[1] / 1000)
LOAD_CONTROL_RANGE = (0.0, 1.0)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class ItemBase:
    """What a price is per: only EUR per kWh, unscaled, can be stored in EUR/MWh."""

    name: str = "currencyPerKWh"
    unit: str = "EUR"
    scale: str = "none"

    @classmethod
    def from_dict(cls, data: Any, signal: str = "ENERGY_PRICE/price") -> Self:
        if data is None:
            fail("item_base", f"{signal} needs one, e.g. {cls().to_dict()}")
        item = fields(data, "item_base", ITEM_BASE_FIELDS)
        if item["name"] != "currencyPerKWh":
            fail(
                "item_base.name",
                f"{quote(item['name'])} is not supported; only 'currencyPerKWh' "
                "(prices per kWh of energy; per-kW (capacity) prices cannot be stored in EUR/MWh)",
            )
        if item["unit"] != "EUR":
            fail(
                "item_base.unit",
                f"currency {quote(item['unit'])} is not supported; only 'EUR' "
                "(prices are stored in EUR/MWh and no exchange rate is known)",
            )
        if item["scale"] != "none":
            fail(
                "item_base.scale",
                f"{quote(item['scale'])} is not supported; only 'none' (values in EUR per kWh)",
            )
        return cls(item["name"], item["unit"], item["scale"])

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, "unit": self.unit, "scale": self.scale}


@dataclass(frozen=True)
class Interval:
    """One interval: ``start`` with its own UTC offset (as sent), a positive fixed ``duration``."""

    start: datetime
    duration: timedelta
    value: float

    @property
    def end(self) -> datetime:
        return self.start + self.duration

    @property
    def start_utc(self) -> datetime:
        return self.start.astimezone(UTC)

    @classmethod
    def from_dict(cls, data: Any, where: str = "interval", kind: str | None = None) -> Self:
        """One interval; with ``kind`` (PRICE or LOAD_CONTROL) its value is checked against the
        range of that kind. (Readers of a single interval, e.g. the fleet controller, use this.)"""
        item = fields(data, where, INTERVAL_FIELDS)
        interval = cls(
            moment(item["start"], f"{where}.start"),
            duration(item["duration"], f"{where}.duration", maximum=MAX_PERIOD),
            number(item["value"], f"{where}.value"),
        )
        if kind == PRICE:
            low, high = PRICE_RANGE_EUR_PER_KWH
            if not low <= interval.value <= high:
                fail(
                    f"{where}.value",
                    f"{interval.value:g} EUR/kWh is outside {low:g}..{high:g} "
                    f"({PRICE_RANGE_EUR_PER_MWH[0]:g}..{PRICE_RANGE_EUR_PER_MWH[1]:g} EUR/MWh)",
                )
        elif kind == LOAD_CONTROL and not LOAD_CONTROL_RANGE[0] <= interval.value <= LOAD_CONTROL_RANGE[1]:
            fail(
                f"{where}.value",
                f"{quote(interval.value)} is outside 0..1 (a load-control level is a fraction of "
                "normal capacity)",
            )
        return interval

    def to_dict(self) -> dict[str, Any]:
        return {"start": self.start.isoformat(), "duration": iso_duration(self.duration), "value": self.value}


def _describe(resolution: timedelta) -> str:
    names = {HOUR: "a whole hour", QUARTER: "a quarter hour"}
    return names.get(resolution, f"a multiple of {iso_duration(resolution)}")


def _intervals(value: Any, kind: str, status: str) -> tuple[Interval, ...]:
    if not isinstance(value, list):
        fail("intervals", f"must be a list, got {type(value).__name__}")
    if not value and status != "cancelled":
        fail("intervals", "at least one interval is needed")
    if len(value) > MAX_INTERVALS:
        fail("intervals", f"{len(value)} intervals; at most {MAX_INTERVALS}")
    sensor, resolution = STORED_ON[kind]
    out: list[Interval] = []
    for i, raw in enumerate(value):
        where = f"intervals[{i}]"
        interval = Interval.from_dict(raw, where, kind)
        if out:
            previous_end = out[-1].end
            if interval.start < previous_end:
                fail(
                    f"{where}.start",
                    f"{interval.start_utc.isoformat()} overlaps intervals[{i - 1}], which "
                    f"ends at {previous_end.astimezone(UTC).isoformat()} (intervals must be sorted and "
                    "contiguous)",
                )
            if interval.start > previous_end:
                fail(
                    f"{where}.start",
                    f"{interval.start_utc.isoformat()} leaves a gap after intervals[{i - 1}], "
                    f"which ends at {previous_end.astimezone(UTC).isoformat()} (intervals must be "
                    "contiguous)",
                )
        out.append(interval)
    if out and out[-1].end - out[0].start > MAX_PERIOD:
        fail("intervals", f"the event lasts longer than {MAX_PERIOD.days} days")
    for i, interval in enumerate(out):  # what the plugin's sensors can hold
        if (interval.start_utc - EPOCH) % resolution:
            fail(
                f"intervals[{i}].start",
                f"{interval.start_utc.isoformat()} is not on {_describe(resolution)} "
                f"(sensor '{sensor}' has a resolution of {iso_duration(resolution)})",
            )
        if interval.duration % resolution:
            fail(
                f"intervals[{i}].duration",
                f"{iso_duration(interval.duration)} is not a multiple of {iso_duration(resolution)}, "
                f"the resolution of sensor '{sensor}'",
            )
    return tuple(out)


@dataclass(frozen=True)
class OpenAdrEvent:
    """One normalised event (one signal of one modification); see the module docstring."""

    event_id: str
    modification_number: int
    status: str
    modification_date_time: datetime  # with its own offset, as sent; the belief time
    signal_name: str
    signal_type: str
    item_base: ItemBase | None
    intervals: tuple[Interval, ...]

    @property
    def kind(self) -> str:
        """PRICE or LOAD_CONTROL."""
        return SIGNALS[(self.signal_name, self.signal_type)]

    @property
    def cancelled(self) -> bool:
        return self.status == "cancelled"

    @property
    def modified_utc(self) -> datetime:
        return self.modification_date_time.astimezone(UTC)

    @property
    def start(self) -> datetime | None:
        return self.intervals[0].start if self.intervals else None

    @property
    def end(self) -> datetime | None:
        return self.intervals[-1].end if self.intervals else None

    @property
    def key(self) -> str:
        """The VEN outbox's dedupe key of this modification (``ven_bridge.policy.part_key``)."""
        return f"event:{self.event_id}:{self.modification_number}"

    def level_at(self, now: datetime) -> float | None:
        """The value of the interval holding ``now``; None when none does or the event is cancelled."""
        if self.cancelled:
            return None
        for interval in self.intervals:
            if interval.start <= now < interval.end:
                return interval.value
        return None

    def withdrawn(self, modification_number: int, modification_date_time: datetime | None = None) -> Self:
        """This event as cancelled by a later modification (its intervals kept: the plugin lifts
        the levels over them); the modification time stays this one's when none is given."""
        return replace(
            self,
            status="cancelled",
            modification_number=modification_number,
            modification_date_time=modification_date_time or self.modification_date_time,
        )

    @classmethod
    def from_dict(cls, data: Any) -> Self:
        """Check a normalised event completely; ContractError naming the first problem."""
        event = fields(data, "event", FIELDS)
        event_id = text(event["event_id"], "event_id", max_length=MAX_EVENT_ID)
        number_ = event["modification_number"]
        if isinstance(number_, bool) or not isinstance(number_, int) or number_ < 0:
            fail("modification_number", f"must be an integer >= 0, got {quote(number_)}")
        number_ = integer(number_, "modification_number")  # xs:unsignedInt in OpenADR 2.0b
        status = event["status"]
        if status not in STATUSES:
            fail("status", f"{quote(status)} is not one of {', '.join(STATUSES)}")
        modified = moment(event["modification_date_time"], "modification_date_time")
        signal_name, signal_type = event["signal_name"], event["signal_type"]
        kind = (
            SIGNALS.get((signal_name, signal_type))
            if isinstance(signal_name, str) and isinstance(signal_type, str)
            else None
        )
        if kind is None:
            supported = ", ".join(f"{n}/{t}" for n, t in SIGNALS)
            fail(
                "signal_name/signal_type",
                f"{quote(signal_name)}/{quote(signal_type)} is not supported (supported: {supported})",
            )
        signal = f"{signal_name}/{signal_type}"
        if kind == LOAD_CONTROL:
            if event["item_base"] is not None:
                fail(
                    "item_base",
                    f"must be null for {signal} (levels are fractions), got {quote(event['item_base'])}",
                )
            item_base = None
        else:
            item_base = ItemBase.from_dict(event["item_base"], signal)
        intervals = _intervals(event["intervals"], kind, status)
        return cls(event_id, number_, status, modified, signal_name, signal_type, item_base, intervals)

    def to_dict(self) -> dict[str, Any]:
        return {
            "event_id": self.event_id,
            "modification_number": self.modification_number,
            "status": self.status,
            "modification_date_time": self.modification_date_time.isoformat(),
            "signal_name": self.signal_name,
            "signal_type": self.signal_type,
            "item_base": None if self.item_base is None else self.item_base.to_dict(),
            "intervals": [interval.to_dict() for interval in self.intervals],
        }
