"""Re-planning: a new fleet schedule whenever the prices or the load-control limit change.

Who asks: whatever writes beliefs on ``consumption_price``, ``production_price`` or
``load_control_signal`` (the OpenADR ingestion endpoint and CLI; later the plugin's own price
commands) calls ``mark_replan_needed`` in its own transaction when a believed value changed (the
same prices sent again change nothing and ask for nothing), then ``request_replan`` after commit.
Writes through FlexMeasures itself (its sensor-data API, ``flexmeasures add beliefs``) are compared,
marked and asked for in the same way by a session listener: ``replan_triggers.py``.

Debounce: the ``Replanner`` of a process waits until no request came for
CARIFLEX_REPLAN_DEBOUNCE_S (at most 10 x that in a continuous burst), then runs once: in its own
thread, or, with CARIFLEX_REDIS_URL, as a job on FlexMeasures' "scheduling" queue for
``flexmeasures jobs run-worker --queue scheduling``.

Across processes (gunicorn workers, RQ workers): requests are numbered in the database (the
grid-signals asset's ``replan_requested`` counter, bumped in the writer's transaction), and a run
records the number it planned for on the site asset (``cariflex_schedule``). A run under the
advisory lock skips when a run already planned for the latest request, so a burst split over two
workers still gives one schedule.

The outcome of every run (ok, breaches by name and amount, notes, version = belief time) is kept in
the site asset attribute ``cariflex_schedule``: the VEN bridge reads its version to know when to
fetch, and the FlexMeasures UI shows it with the asset.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd
from flask import Flask, current_app
from flexmeasures.data import db
from flexmeasures.data.models.generic_assets import GenericAsset
from sqlalchemy import select, text

from cariflex import inputs, settings
from cariflex.contracts.fleet_schedule import FleetSchedule
from cariflex.fleet import Fleet
from cariflex.site_model import SITE_LOAD
from flexmeasures_cariflex.data.queries.latest_beliefs import BeliefQuery, series_per_sensor
from flexmeasures_cariflex.data.queries.site import require_site
from flexmeasures_cariflex.data.services.fleet_schedule import (
    QUARTER,
    FleetScheduleResult,
    ScheduleRefused,
    compute_fleet_schedule,
)

log = logging.getLogger("cariflex.replan")

REPLAN_SENSORS = frozenset({"consumption_price", "production_price", "load_control_signal"})
REQUEST_KEY = "replan_requested"  # on the grid-signals asset: {"number", "at", "because"}
STATUS_KEY = "cariflex_schedule"  # on the site asset: the last run's outcome
_LOCK_KEY = 0x6361726966  # pg_advisory_xact_lock key: one fleet re-plan at a time per database
MAX_WAIT_FACTOR = 10


def mark_replan_needed(asset: GenericAsset, changed: list[str]) -> bool:
    """In the writer's transaction: number a new request if a planning input changed."""
    because = sorted(REPLAN_SENSORS.intersection(changed))
    if not because:
        return False
    previous = (asset.attributes or {}).get(REQUEST_KEY) or {}
    request = {"number": int(previous.get("number", 0)) + 1, "at": _now_iso(), "because": because}
    asset.attributes = {**(asset.attributes or {}), REQUEST_KEY: request}  # reassign: tracked
    return True


def schedule_status(fleet: Fleet) -> dict[str, Any]:
    return dict((require_site(fleet).attributes or {}).get(STATUS_KEY) or {})


def horizon() -> timedelta:
    """CARIFLEX_SCHEDULE_HORIZON (the rule of ``--horizon``: ``cariflex.inputs.duration``, whole
    15-minute periods, at most 7 days); a bad value refuses the run (recorded in the status, logged)."""
    try:
        return inputs.duration(
            settings.get("CARIFLEX_SCHEDULE_HORIZON"), "CARIFLEX_SCHEDULE_HORIZON", step=QUARTER
        )
    except inputs.InputError as exc:
        raise ScheduleRefused(str(exc)) from None


def replan_now(fleet: Fleet, *, now: datetime | None = None, force: bool = False) -> dict[str, Any] | None:
    """Schedule from the current 15-minute period on, save it and record the outcome (commits).

    Returns the recorded status, or None when a run already planned for the latest request.
    """
    db.session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEY})
    site = require_site(fleet)
    grid_signals = db.session.execute(
        select(GenericAsset).filter_by(name=fleet.grid_signals.name, parent_asset_id=site.id)
    ).scalar_one_or_none()
    db.session.refresh(site)
    requested = ((grid_signals.attributes or {}).get(REQUEST_KEY) or {}) if grid_signals else {}
    number = int(requested.get("number", 0))
    previous = dict((site.attributes or {}).get(STATUS_KEY) or {})
    if not force and previous and previous.get("request", -1) >= number:
        db.session.rollback()
        return None
    now = now or datetime.now(UTC)
    start = pd.Timestamp(now).floor(QUARTER).to_pydatetime()
    status: dict[str, Any] = {
        "request": number,
        "because": requested.get("because", []),
        "run_at": _now_iso(),
        "runs": int(previous.get("runs", 0)) + 1,
        "version": previous.get("version"),  # unchanged unless this run saves a schedule
    }
    try:
        # MPC: from the current quarter-hour, with each device's state of charge as measured now
        result = compute_fleet_schedule(fleet, start, horizon=horizon(), shorten_to_prices=True, soc_at=now)
    except ScheduleRefused as exc:
        db.session.rollback()
        db.session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEY})
        status.update(ok=False, error=str(exc), breaches=[], notes=[])
        log.error("re-plan refused", extra={"fields": {"error": str(exc), "request": number}})
    else:
        status.update(outcome(result))
        if result.ok:
            log.info(
                "re-planned",
                extra={
                    "fields": {
                        "request": number,
                        "because": status["because"],
                        "start": status["start"],
                        "end": status["end"],
                        "compute_s": status["compute_s"],
                        "save_s": status["save_s"],
                        "breaches": len(result.breaches),
                    }
                },
            )
            for breach in result.breaches:
                log.warning("schedule breach", extra={"fields": {"breach": breach}})
        else:
            db.session.rollback()
            db.session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEY})
            log.error("re-plan failed", extra={"fields": {"error": result.infeasible, "request": number}})
    site = require_site(fleet)
    site.attributes = {**(site.attributes or {}), STATUS_KEY: status}
    db.session.commit()
    return status


def outcome(result: FleetScheduleResult) -> dict[str, Any]:
    """What a run's status records of its result (the version only when a schedule was saved)."""
    status: dict[str, Any] = {
        "ok": result.ok,
        "error": result.infeasible,
        "breaches": result.breaches,
        "notes": result.notes,
        "start": result.start.isoformat(),
        "end": result.end.isoformat(),
        "compute_s": round(result.compute_seconds, 3),
        "save_s": round(result.save_seconds, 3),
    }
    if result.ok and result.belief_time is not None:
        status["version"] = result.belief_time.isoformat()
    return status


def schedule_on_trigger(
    fleet: Fleet, start: datetime, duration: timedelta, resolution: timedelta, because: str
):
    """A schedule FlexMeasures' own trigger asked for (its worker, through the Cariflex scheduler
    class): the same computation and saving as the plugin's own runs, one at a time with them, and
    recorded as the latest schedule (its version tells the VEN bridge to fetch it). The caller
    (FlexMeasures' ``make_schedule``) commits."""
    db.session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEY})
    result = compute_fleet_schedule(fleet, start, horizon=duration, resolution=resolution)
    if not result.ok:
        db.session.rollback()
        return result
    site = require_site(fleet)
    previous = dict((site.attributes or {}).get(STATUS_KEY) or {})
    status = {
        "request": previous.get("request", 0),  # the re-plan requests stay where they were
        "because": [because],
        "run_at": _now_iso(),
        "runs": int(previous.get("runs", 0)) + 1,
        **outcome(result),
    }
    site.attributes = {**(site.attributes or {}), STATUS_KEY: status}
    return result


def replan_job(fleet_file: str | None = None) -> dict[str, Any] | None:
    """The RQ job (runs in FlexMeasures' worker, inside its app context)."""
    from cariflex.fleet import load_fleet

    return replan_now(load_fleet(fleet_file))


class Replanner:
    """Per-process debouncer: many requests in a burst, one run after it."""

    def __init__(self, app: Flask, fleet: Fleet, debounce_s: float):
        self.app, self.fleet, self.debounce_s = app, fleet, debounce_s
        self.requests = 0  # asked for (this process)
        self.runs = 0  # runs started (this process), whatever their outcome
        self._due: float | None = None
        self._first: float | None = None
        self._busy = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._loop, name="cariflex-replan", daemon=True)
        self._thread.start()

    def request(self) -> None:
        with self._cond:
            now = time.monotonic()
            self.requests += 1
            self._first = self._first or now
            self._due = min(now + self.debounce_s, self._first + MAX_WAIT_FACTOR * self.debounce_s)
            self._cond.notify_all()

    def flush(self) -> None:
        """Run what is pending now rather than after the debounce (tests, shutdown)."""
        with self._cond:
            if self._due is not None:
                self._due = time.monotonic()
                self._cond.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """True once nothing is pending or running (for tests and shutdown)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._due is not None or self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def _loop(self) -> None:
        while True:
            with self._cond:
                while self._due is None or time.monotonic() < self._due:
                    self._cond.wait(None if self._due is None else max(0.0, self._due - time.monotonic()))
                self._due = self._first = None
                self._busy = True
                self.runs += 1
            try:
                self._run()
            except Exception:  # the next request tries again; the server keeps serving
                log.exception("re-plan crashed")
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _run(self) -> None:
        with self.app.app_context():
            queue = (
                getattr(self.app, "queues", {}).get("scheduling")
                if settings.get("CARIFLEX_REDIS_URL")
                else None
            )
            if queue is not None:
                job = queue.enqueue(
                    replan_job, settings.get("CARIFLEX_FLEET_FILE"), job_timeout=180, result_ttl=3600
                )
                log.info("re-plan queued", extra={"fields": {"job": job.id}})
                return
            try:
                replan_now(self.fleet)
            finally:
                db.session.remove()


_lock = threading.Lock()


def request_replan(fleet: Fleet) -> Replanner | None:
    """After the writer committed a marked request: have this process's Replanner run (debounced)."""
    app = current_app._get_current_object()
    debounce = app.config.get("CARIFLEX_REPLAN_DEBOUNCE_S", float(settings.get("CARIFLEX_REPLAN_DEBOUNCE_S")))
    if debounce < 0:  # re-planning switched off (e.g. a test of ingestion alone)
        return None
    with _lock:
        replanner = app.extensions.get("cariflex_replanner")
        if replanner is None:
            replanner = app.extensions["cariflex_replanner"] = Replanner(app, fleet, debounce)
    replanner.request()
    return replanner


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def current_schedule(fleet: Fleet, hours: float, now: datetime | None = None) -> FleetSchedule:
    """The saved fleet schedule from the current 15-minute period on, as the VEN bridge follows it
    (the contract ``cariflex.contracts.fleet_schedule``; GET /schedule serves its ``to_dict()``).

    Per device, kW per 15-minute period, consumption positive (charging > 0), from the most recent
    "Cariflex scheduler" beliefs; ``null`` where no schedule covers a period. With PV or a base load
    in the fleet, ``site_kw``: base load − PV per period as the plan assumed it (``planned_site_kw``).
    """
    from flexmeasures_cariflex.data.queries.site import find_source, site_sensors
    from flexmeasures_cariflex.data.services.beliefs import latest_values
    from flexmeasures_cariflex.data.services.fleet_schedule import SCHEDULER_SOURCE

    start = pd.Timestamp(now or datetime.now(UTC)).floor(QUARTER)
    end = start + pd.Timedelta(hours=hours)
    grid = pd.date_range(start, end, freq=QUARTER, inclusive="left")
    status = schedule_status(fleet)
    devices = [d.name for d in (*fleet.batteries, *fleet.ev_chargers)]
    sensors = site_sensors(fleet)
    power = [sensors[f"{name}_power"] for name in devices if f"{name}_power" in sensors]
    source = find_source(*SCHEDULER_SOURCE)
    found = latest_values(power, start, end, source) if source is not None and power else {}
    out: dict[str, list[float | None]] = {}
    for sensor in power:
        values = pd.Series(found.get(sensor.id, {}), dtype=float)
        if not values.empty:
            values.index = pd.DatetimeIndex(values.index).tz_convert("UTC")
        sign = 1 if sensor.get_attribute("consumption_is_positive", False) else -1
        per_period = (sign * values).resample(QUARTER).mean().reindex(grid) if not values.empty else None
        name = sensor.name.removesuffix("_power")
        out[name] = (
            [None] * len(grid)
            if per_period is None
            else [None if pd.isna(v) else round(float(v), 4) for v in per_period]
        )
    return FleetSchedule(
        version=status.get("version"),
        ok=status.get("ok"),
        breaches=tuple(status.get("breaches", [])),
        start=start.to_pydatetime(),
        devices={name: tuple(values) for name, values in out.items()},
        site_kw=planned_site_kw(fleet, sensors, grid, _version_time(status.get("version"))),
    )


def _version_time(version: Any) -> datetime | None:
    """The belief time a schedule version names (``result.belief_time.isoformat()``); None if none."""
    try:
        moment = datetime.fromisoformat(version) if isinstance(version, str) else None
    except ValueError:
        return None
    return moment if moment is not None and moment.tzinfo is not None else None


def planned_site_kw(
    fleet: Fleet, sensors: dict, grid: pd.DatetimeIndex, known_before: datetime | None
) -> tuple[float | None, ...] | None:
    """The site's inflexible net import per period of ``grid`` (15 min, UTC): base load − PV, kW,
    consumption positive; None for a fleet with neither PV nor a base load.

    What the plan assumed: the latest beliefs of the PV power sensors and ``site_load`` known at the
    schedule's belief time ``known_before`` (its version; what FlexMeasures read for the inflexible
    devices), through the one latest-belief reader; without a saved schedule, the latest ones. The
    1-minute beliefs are averaged per period. A period is unknown (None) when the base load has no
    belief in it, or, without a base load, when no PV site has one; a PV site without a belief
    counts 0 (as the scheduler counts it, and never more room under a cap than PV gives).
    """
    pv = [sensors[f"{p.name}_power"] for p in fleet.pv if f"{p.name}_power" in sensors]
    load = sensors.get(SITE_LOAD) if fleet.site.base_load_kw is not None else None
    if not pv and load is None:
        return None
    chosen = [*pv, *([load] if load is not None else [])]
    if len(grid) == 0:
        return ()
    found = series_per_sensor(
        db.session,
        BeliefQuery(
            sensor_ids=[s.id for s in chosen],
            start=grid[0].to_pydatetime(),
            end=(grid[-1] + QUARTER).to_pydatetime(),
            known_before=known_before,
        ),
    )

    def per_period(sensor) -> pd.Series:
        values = found.get(sensor.id, pd.Series(dtype=float))
        if values.empty:
            return pd.Series(float("nan"), index=grid)
        sign = 1 if sensor.get_attribute("consumption_is_positive", False) else -1  # PV counts negative
        return (sign * values).resample(QUARTER).mean().reindex(grid)

    net = pd.Series(0.0, index=grid)
    known = pd.Series(load is None, index=grid)
    if pv:
        produced = pd.concat([per_period(sensor) for sensor in pv], axis=1)
        net += produced.sum(axis=1, min_count=1).fillna(0.0)
        if load is None:
            known = produced.notna().any(axis=1)
    if load is not None:
        consumed = per_period(load)
        net += consumed.fillna(0.0)
        known = consumed.notna()
    return tuple(round(float(v), 4) if ok else None for v, ok in zip(net, known, strict=True))
