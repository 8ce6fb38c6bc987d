"""OpenADR events, as the VEN bridge normalises them, into FlexMeasures beliefs.

The VEN posts one event (one modification of it) at a time, as the contract
``cariflex.contracts.openadr_event`` (which the VEN builds it with, and ``parse_event`` reads it
with) describes it::

    {"event_id": "evt-20261124-8fc1a133", "modification_number": 1,
     "status": "far|near|active|completed|cancelled",
     "modification_date_time": "2026-11-24T16:00:00+00:00",
     "signal_name": "ENERGY_PRICE" | "LOAD_CONTROL",
     "signal_type": "price" | "x-loadControlCapacity",
     "item_base": {"name": "currencyPerKWh", "unit": "EUR", "scale": "none"} | null,
     "intervals": [{"start": "2026-11-25T04:00:00+00:00", "duration": "PT1H", "value": 0.095}, ...]}

``ingest_event`` checks all of it before writing anything and writes in the caller's
transaction (the caller commits; on an error it rolls back and nothing is written):

- prices (EUR per kWh) go to ``consumption_price`` (EUR/MWh, 1 h) as value x 1000;
- load control (fraction of normal capacity) goes to ``load_control_signal`` (%, 15 min) as
  value x 100 for every slot of every interval, and ``demand_response_signal`` (15 min) is 1 for
  those slots. Every other slot the event touches (the slot starting at its end, slots a
  modification no longer covers, the whole period of a cancelled event) gets the level in force
  there: that of the most recently modified live load-control event covering it, else 100 % / 0.

The belief time of every belief is the event's ``modification_date_time``, so a modification
supersedes earlier beliefs (a newer belief time; nothing is deleted). The source is the data
source "OpenADR VTN" that ``flexmeasures cariflex setup`` creates; sensors are found by name.

Idempotency without a migration: a ledger in the JSON attribute ``openadr_events`` of the
grid-signals asset records, per event id, the last modification ingested, its period and (for
load control) its levels. The asset row is locked (SELECT ... FOR UPDATE) for the transaction,
so concurrent posts are applied one after the other. A modification number not newer than the
ledger's is answered "already-ingested" and writes nothing. Entries whose event ended more than
seven days ago are pruned.

Beliefs are written in bulk (``beliefs.insert_beliefs``: one statement, not ``save_to_db``).
The result names the sensors whose believed values changed (``changed``): re-planning follows
those only, so the same prices sent twice cause one schedule, not two.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import isodate
from flexmeasures.data import db
from flexmeasures.data.models.data_sources import DataSource
from flexmeasures.data.models.generic_assets import GenericAsset
from flexmeasures.data.models.time_series import Sensor
from sqlalchemy import select

from cariflex.contracts.openadr_event import LOAD_CONTROL, PRICE, ContractError, OpenAdrEvent
from cariflex.fleet import Fleet
from cariflex.site_model import SOURCE_VTN
from flexmeasures_cariflex.data.queries.site import SiteNotReady, find_source, require_site, site_sensors
from flexmeasures_cariflex.data.services.beliefs import changed_sensors, insert_beliefs
from flexmeasures_cariflex.data.services.replan import mark_replan_needed

LEDGER_KEY = "openadr_events"
LEDGER_RETENTION = timedelta(days=7)

PRICE_SENSOR = "consumption_price"
LOAD_CONTROL_SENSOR = "load_control_signal"
DR_SENSOR = "demand_response_signal"
SENSORS = {PRICE: (PRICE_SENSOR,), LOAD_CONTROL: (LOAD_CONTROL_SENSOR, DR_SENSOR)}
UNITS = {PRICE_SENSOR: "EUR/MWh", LOAD_CONTROL_SENSOR: "%", DR_SENSOR: "dimensionless"}

NORMAL_LEVEL_PCT = 100.0  # no load-control event: full capacity
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class IngestError(ValueError):
    """The event is refused (bad or unsupported input); nothing was written."""


@dataclass(frozen=True)
class Interval:
    start: datetime  # UTC
    duration: timedelta
    value: float

    @property
    def end(self) -> datetime:
        return self.start + self.duration


@dataclass(frozen=True)
class Event:
    event_id: str
    modification_number: int
    status: str
    modified: datetime  # UTC; the belief time
    signal_name: str
    signal_type: str
    kind: str  # PRICE | LOAD_CONTROL
    intervals: tuple[Interval, ...]

    @property
    def start(self) -> datetime | None:
        return self.intervals[0].start if self.intervals else None

    @property
    def end(self) -> datetime | None:
        return self.intervals[-1].end if self.intervals else None

    @property
    def cancelled(self) -> bool:
        return self.status == "cancelled"


@dataclass
class IngestResult:
    event_id: str
    modification_number: int
    status: str  # "ingested" | "already-ingested"
    written: dict[str, int] = field(default_factory=dict)  # beliefs per sensor name
    ingested_modification_number: int | None = None  # for "already-ingested": what the ledger has
    changed: list[str] = field(default_factory=list)  # sensors whose believed values changed
    replan: bool = False  # a planning input changed: the fleet schedule is to be re-made

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "status": self.status,
            "event_id": self.event_id,
            "modification_number": self.modification_number,
        }
        if self.status == "ingested":
            out["written"] = dict(self.written)
            out["changed"] = list(self.changed)
            out["replan"] = self.replan
        else:
            out["ingested_modification_number"] = self.ingested_modification_number
        return out

    def summary(self) -> str:
        head = f"{self.event_id} modification {self.modification_number}: {self.status}"
        if self.status != "ingested":
            return f"{head} (the database has modification {self.ingested_modification_number})"
        counts = ", ".join(f"{n} on {name}" for name, n in self.written.items())
        return f"{head}, beliefs written: {counts}"


# --- validation (no database) ----------------------------------------------------------------


FUTURE_TOLERANCE = timedelta(minutes=5)


def parse_event(event: Any) -> Event:
    """Check a normalised event completely against its contract
    (``cariflex.contracts.openadr_event``, which the VEN bridge builds it with); raise IngestError
    with the contract's message, naming the first problem. Times come back in UTC."""
    try:
        checked = OpenAdrEvent.from_dict(event)
    except ContractError as exc:
        raise IngestError(str(exc)) from None
    return Event(
        checked.event_id,
        checked.modification_number,
        checked.status,
        checked.modified_utc,
        checked.signal_name,
        checked.signal_type,
        checked.kind,
        tuple(Interval(i.start_utc, i.duration, float(i.value)) for i in checked.intervals),
    )


def _describe(resolution: timedelta) -> str:
    names = {timedelta(hours=1): "a whole hour", timedelta(minutes=15): "a quarter hour"}
    return names.get(resolution, f"a multiple of {isodate.duration_isoformat(resolution)}")


def _check_alignment(event: Event, sensor: Sensor) -> None:
    """The intervals on the grid of ``sensor`` as the database has it (the contract checks the
    site model's resolutions; a site set up otherwise is caught here)."""
    resolution = sensor.event_resolution
    for i, interval in enumerate(event.intervals):
        if (interval.start - EPOCH) % resolution:
            raise IngestError(
                f"intervals[{i}].start: {interval.start.isoformat()} is not on {_describe(resolution)} "
                f"(sensor '{sensor.name}' has a resolution of {isodate.duration_isoformat(resolution)})"
            )
        if interval.duration % resolution:
            raise IngestError(
                f"intervals[{i}].duration: {isodate.duration_isoformat(interval.duration)} is not a "
                f"multiple of {isodate.duration_isoformat(resolution)}, the resolution of sensor "
                f"'{sensor.name}'"
            )


# --- database ------------------------------------------------------------------------------


def _lock_grid_signals(fleet: Fleet) -> GenericAsset:
    site = require_site(fleet)
    asset = db.session.execute(
        select(GenericAsset)
        .filter(GenericAsset.parent_asset_id == site.id, GenericAsset.name == fleet.grid_signals.name)
        .with_for_update()
        .execution_options(populate_existing=True)  # the ledger as committed, after the lock
    ).scalar_one_or_none()
    if asset is None:
        raise SiteNotReady(
            f"asset '{fleet.grid_signals.name}' of site '{fleet.site.name}' does not exist; "
            "run `flexmeasures cariflex setup` first"
        )
    return asset


def _sensors(fleet: Fleet, kind: str) -> dict[str, Sensor]:
    found = site_sensors(fleet)
    out = {}
    for name in SENSORS[kind]:
        sensor = found.get(name)
        if sensor is None:
            raise SiteNotReady(f"sensor '{name}' does not exist; run `flexmeasures cariflex setup` first")
        if sensor.unit != UNITS[name]:
            raise SiteNotReady(
                f"sensor '{name}' has unit '{sensor.unit}', the site model says '{UNITS[name]}'; "
                "refusing to store values in the wrong unit"
            )
        out[name] = sensor
    return out


def _vtn_source() -> DataSource:
    name, source_type = SOURCE_VTN
    source = find_source(name, source_type)
    if source is None:
        raise SiteNotReady(f"data source '{name}' does not exist; run `flexmeasures cariflex setup` first")
    return source


def _slots(start: datetime, end: datetime, resolution: timedelta) -> Iterator[datetime]:
    slot = start
    while slot < end:
        yield slot
        slot += resolution


def _price_values(event: Event, sensor: Sensor) -> dict[datetime, float]:
    if event.cancelled:
        return {}  # a withdrawn price has no replacement: the earlier beliefs stay as they are
    return {
        slot: round(interval.value * 1000, 9)  # EUR/kWh -> EUR/MWh
        for interval in event.intervals
        for slot in _slots(interval.start, interval.end, sensor.event_resolution)
    }


def _ledger_entry(event: Event, previous: dict[str, Any] | None) -> dict[str, Any]:
    start, end = event.start, event.end
    if start is None and previous is not None:  # a cancellation without intervals
        return {
            **previous,
            "modification_number": event.modification_number,
            "modification_date_time": event.modified.isoformat(),
            "status": event.status,
            "intervals": [],
        }
    entry = {
        "signal": event.signal_name,
        "kind": event.kind,
        "modification_number": event.modification_number,
        "modification_date_time": event.modified.isoformat(),
        "status": event.status,
        "start": start.isoformat() if start else None,
        "end": end.isoformat() if end else None,
    }
    if event.kind == LOAD_CONTROL:
        entry["intervals"] = (
            []
            if event.cancelled
            else [[i.start.isoformat(), int(i.duration.total_seconds()), i.value] for i in event.intervals]
        )
    return entry


def _live_levels(ledger: dict[str, dict[str, Any]]) -> list[tuple[datetime, datetime, float]]:
    """(start, end, level) of every live load-control interval, most recently modified first."""
    live = []
    for event_id, entry in ledger.items():
        if entry.get("kind") != LOAD_CONTROL or entry.get("status") == "cancelled":
            continue
        modified = datetime.fromisoformat(entry["modification_date_time"])
        for start, seconds, level in entry.get("intervals") or []:
            begin = datetime.fromisoformat(start)
            live.append((modified, event_id, begin, begin + timedelta(seconds=seconds), level))
    live.sort(key=lambda row: (row[0], row[1]), reverse=True)
    return [(begin, end, level) for _, _, begin, end, level in live]


def _load_control_values(
    event: Event,
    previous: dict[str, Any] | None,
    ledger: dict[str, dict[str, Any]],
    sensors: dict[str, Sensor],
) -> dict[str, dict[datetime, float]]:
    """Level (%) and DR flag for every slot this event (or its previous version) touches."""
    resolution = sensors[LOAD_CONTROL_SENSOR].event_resolution
    periods = []
    if event.start is not None:
        periods.append((event.start, event.end))
    if previous is not None and previous.get("start") and previous.get("end"):
        periods.append((datetime.fromisoformat(previous["start"]), datetime.fromisoformat(previous["end"])))
    touched: set[datetime] = set()
    for start, end in periods:
        touched.update(_slots(start, end + resolution, resolution))  # + the slot starting at the end
    in_force: dict[datetime, float] = {}
    if touched:
        low, high = min(touched), max(touched) + resolution
        # Most recently modified first, so the first level set for a slot is the one in force.
        # (Live intervals include this event's new version, unless it is cancelled.)
        for begin, end, level in _live_levels(ledger):
            for slot in _slots(max(begin, low), min(end, high), resolution):
                if slot in touched:
                    in_force.setdefault(slot, level)
    levels: dict[datetime, float] = {}
    flags: dict[datetime, float] = {}
    for slot in sorted(touched):
        level = in_force.get(slot)
        levels[slot] = NORMAL_LEVEL_PCT if level is None else round(level * 100, 9)
        flags[slot] = 0.0 if level is None else 1.0
    return {LOAD_CONTROL_SENSOR: levels, DR_SENSOR: flags}


def _pruned(ledger: dict[str, dict[str, Any]], now: datetime, keep: str) -> dict[str, dict[str, Any]]:
    cutoff = now - LEDGER_RETENTION
    out = {}
    for event_id, entry in ledger.items():
        last = entry.get("end") or entry.get("modification_date_time")
        if event_id == keep or datetime.fromisoformat(last) >= cutoff:
            out[event_id] = entry
    return out


def ingest_event(event: Any, fleet: Fleet, *, now: datetime | None = None) -> IngestResult:
    """Validate the event and write its beliefs and the ledger in the caller's transaction.

    Raises IngestError (refused input) or SiteNotReady before anything is written.
    """
    parsed = parse_event(event)
    if parsed.modified > (now or datetime.now(UTC)) + FUTURE_TOLERANCE:
        # A belief time in the future would hide these beliefs from every query made today and
        # override every later modification: a clock is wrong somewhere.
        raise IngestError(
            f"modification_date_time: {parsed.modified.isoformat()} lies in the future "
            f"(more than {int(FUTURE_TOLERANCE.total_seconds() // 60)} minutes ahead of this server)"
        )
    asset = _lock_grid_signals(fleet)
    sensors = _sensors(fleet, parsed.kind)
    for sensor in sensors.values():
        _check_alignment(parsed, sensor)
    source = _vtn_source()

    ledger: dict[str, dict[str, Any]] = dict((asset.attributes or {}).get(LEDGER_KEY) or {})
    previous = ledger.get(parsed.event_id)
    if previous is not None:
        if previous["modification_number"] >= parsed.modification_number:
            return IngestResult(
                parsed.event_id,
                parsed.modification_number,
                "already-ingested",
                ingested_modification_number=previous["modification_number"],
            )
        if previous.get("kind") != parsed.kind:
            raise IngestError(
                f"signal_name/signal_type: event {parsed.event_id} was ingested as {previous.get('signal')}, "
                f"it cannot become {parsed.signal_name}/{parsed.signal_type}"
            )
        previous_time = datetime.fromisoformat(previous["modification_date_time"])
        if parsed.modified < previous_time:
            # Its beliefs would be older than those they should supersede, and silently lose.
            raise IngestError(
                f"modification_date_time: {parsed.modified.isoformat()} is earlier than that of "
                f"modification {previous['modification_number']} ({previous_time.isoformat()}), "
                f"which is already ingested; modification {parsed.modification_number} must be later"
            )
    ledger[parsed.event_id] = _ledger_entry(parsed, previous)

    if parsed.kind == PRICE:
        by_name = {PRICE_SENSOR: _price_values(parsed, sensors[PRICE_SENSOR])}
    else:
        by_name = _load_control_values(parsed, previous, ledger, sensors)
    by_sensor = {sensors[name]: values for name, values in by_name.items()}
    changed = changed_sensors(by_sensor)
    insert_beliefs(by_sensor, source, parsed.modified)

    ledger = _pruned(ledger, now or datetime.now(UTC), keep=parsed.event_id)
    asset.attributes = {**(asset.attributes or {}), LEDGER_KEY: ledger}  # reassign: tracked
    replan = mark_replan_needed(asset, changed)
    db.session.flush()
    return IngestResult(
        parsed.event_id,
        parsed.modification_number,
        "ingested",
        written={name: len(values) for name, values in by_name.items()},
        changed=changed,
        replan=replan,
    )
