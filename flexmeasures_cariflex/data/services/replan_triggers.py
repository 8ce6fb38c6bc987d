"""Re-plan when prices or limits arrive through FlexMeasures itself, not through the plugin.

The plugin's own writers (the OpenADR endpoint and ``cariflex ingest-event``, ``cariflex
production-price``) compare, mark and ask for a re-plan themselves (``replan.py``). A price or a
load-control limit can also come in through FlexMeasures: ``POST /api/v3_0/sensors/<id>/data``
(run in the web process, or by an RQ ingestion worker when FlexMeasures has one) and
``flexmeasures add beliefs``. Those re-plan too, through this module.

**Why a SQLAlchemy session listener, not a Flask ``after_request`` hook.** One mechanism sees every
way FlexMeasures writes beliefs: its API (in the request, or later in an ingestion job, where an
``after_request`` hook would see only "202 accepted" and never the write), its CLI, and any other
FlexMeasures code that saves beliefs (``save_to_db``, ``TimedBelief.add``). It runs in the writer's
transaction, so a refused or failing write (rolled back) triggers nothing, and only a commit does.

How, per session (``session.info`` keeps what is pending until commit or rollback):

- ``do_orm_execute``: FlexMeasures' bulk path is one ``INSERT INTO timed_belief VALUES (...)``
  statement (``TimedBelief.add_to_session(bulk_save_objects=True)``, used by ``save_to_db`` and
  ``add beliefs``). Before it runs, the rows for a watched sensor are compared with the value
  believed until now (the rule of ``beliefs.changed_sensors``: the latest belief of any source).
- ``before_flush``: the same for ``TimedBelief`` objects added one by one (the ORM path).
- ``before_commit``: a change numbers a request on the grid-signals asset (``mark_replan_needed``,
  in the writer's transaction, as the plugin's writers do).
- ``after_commit``: ask for the run. In a request: ``request_replan`` (debounced, exactly as the
  plugin endpoint). In a CLI command: ``replan_now`` once the command has finished (as
  ``cariflex ingest-event`` re-plans at once; a debounce thread would die with the process). In an
  RQ job (FlexMeasures' ingestion worker forks a process per job, which a debounce thread would not
  outlive): a ``replan_job`` on the "scheduling" queue; ``replan_now`` skips a run when another
  already planned for the latest request, so a burst of jobs still saves one schedule.

Not double-triggered, never triggered by the scheduler: the plugin writes beliefs with its own SQL
(``beliefs.insert_beliefs``: a text ``INSERT ... unnest`` or ``COPY``), which is neither an
``Insert`` construct on ``TimedBelief`` nor an ORM object, so these listeners do not see it; and
only ``consumption_price``, ``production_price`` and ``load_control_signal`` of the Cariflex site
are watched, never a power or state-of-charge sensor the scheduler writes.

Cheap for every other write: the watched sensor ids are resolved once per app and cached (again
after a sensor or asset is added or deleted in this process, after ``WATCH_TTL`` at the latest, and
after ``NOT_READY_TTL`` while the site is not set up). A statement that is no insert, or an insert
into another table, costs two attribute checks; an insert of beliefs for other sensors, a set
lookup per row; no query is made unless a watched sensor is written.

Installed by the plugin at import (``install()``, idempotent), for every session of the process;
acts only in an app that has the plugin registered.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd
from flask import current_app, has_app_context, has_request_context
from flexmeasures.data.models.generic_assets import GenericAsset
from flexmeasures.data.models.time_series import Sensor, TimedBelief
from sqlalchemy import event, select
from sqlalchemy.orm import Session

from cariflex import settings
from flexmeasures_cariflex.data.queries.latest_beliefs import BeliefQuery, values_per_sensor
from flexmeasures_cariflex.data.queries.site import SiteNotReady, require_site, site_sensors
from flexmeasures_cariflex.data.services.replan import REPLAN_SENSORS, mark_replan_needed

log = logging.getLogger("cariflex.replan")

WATCH_TTL = 600.0  # s: the cached sensor ids are looked up again at least this often
NOT_READY_TTL = 30.0  # s: while the site is not set up (no sensor to watch yet)
_WATCH_KEY = "cariflex_replan_watch"  # app.extensions: (expires, {sensor id: (name, resolution)})
_CHANGED = "cariflex_replan_changed"  # session.info: watched sensor names with a changed value
_MARKED = "cariflex_replan_marked"  # session.info: marked in this transaction, ask after commit
_TIMED_BELIEF = TimedBelief.__tablename__


def install() -> None:
    """Listen on every SQLAlchemy session of the process (once)."""
    if not event.contains(Session, "do_orm_execute", _on_execute):
        event.listen(Session, "do_orm_execute", _on_execute)
        event.listen(Session, "before_flush", _on_before_flush)
        event.listen(Session, "before_commit", _on_before_commit)
        event.listen(Session, "after_commit", _on_after_commit)
        event.listen(Session, "after_rollback", _forget_pending)


def forget_watched_sensors() -> None:
    """Resolve the watched sensors again at the next belief write (after a setup, in tests)."""
    if has_app_context():
        current_app.extensions.pop(_WATCH_KEY, None)


def watched_sensors() -> dict[int, tuple[str, timedelta]]:
    """``{sensor id: (name, event resolution)}`` of the Cariflex site's price and limit sensors."""
    app = current_app
    cached = app.extensions.get(_WATCH_KEY)
    now = time.monotonic()
    if cached is not None and cached[0] > now:
        return cached[1]
    from flexmeasures.data import db

    from cariflex.fleet import FleetError, load_fleet

    try:
        with db.session.no_autoflush:  # called from inside the writer's statement or flush
            sensors = site_sensors(load_fleet())
    except (SiteNotReady, FleetError):
        found, ttl = {}, NOT_READY_TTL
    else:
        found = {s.id: (s.name, s.event_resolution) for name, s in sensors.items() if name in REPLAN_SENSORS}
        ttl = WATCH_TTL if found else NOT_READY_TTL
    app.extensions[_WATCH_KEY] = (now + ttl, found)
    return found


def _active() -> bool:
    return has_app_context() and "cariflex" in current_app.blueprints


# --- seeing the writes ----------------------------------------------------------------------------


def _on_execute(state) -> None:
    if not state.is_insert:
        return
    statement = state.statement  # the ORM hands an annotated copy: compare the table by name
    if getattr(getattr(statement, "table", None), "name", None) != _TIMED_BELIEF or not _active():
        return
    _compare(state.session, _insert_rows(statement, state.parameters))


Row = tuple[Any, Any, Any]  # sensor id, event start, event value


def _insert_rows(statement, parameters) -> Iterable[Row]:
    """The rows of an ``Insert`` on timed_belief: ``insert(...).values([{...}, ...])`` (what
    timely-beliefs builds; keyed by column), ``.values({...})`` (bound parameters), or the
    parameters of ``session.execute(insert(...), {...} or [{...}, ...])`` (keyed by name)."""
    for batch in getattr(statement, "_multi_values", ()) or ():
        yield from _rows_of(batch)
    single = getattr(statement, "_values", None)
    if single:
        yield from _rows_of([{k: getattr(v, "value", v) for k, v in single.items()}])
    if isinstance(parameters, dict) and parameters:
        yield from _rows_of([parameters])
    elif isinstance(parameters, list | tuple):
        yield from _rows_of([p for p in parameters if isinstance(p, dict)])


def _rows_of(batch: list[dict]) -> Iterable[Row]:
    if not batch:
        return
    keys = {getattr(k, "key", k): k for k in batch[0]}  # the same keys in every row of a batch
    sensor, start, value = (keys.get(name) for name in ("sensor_id", "event_start", "event_value"))
    for row in batch:
        yield row.get(sensor), row.get(start), row.get(value)


def _on_before_flush(session: Session, flush_context, instances) -> None:
    if not session.new and not session.deleted:
        return
    beliefs = []
    for obj in session.new:
        if isinstance(obj, TimedBelief):
            beliefs.append(obj)
        elif isinstance(obj, Sensor | GenericAsset):
            forget_watched_sensors()
    if any(isinstance(obj, Sensor | GenericAsset) for obj in session.deleted):
        forget_watched_sensors()
    if not beliefs or not _active():
        return
    rows = [(b.sensor_id or getattr(b.sensor, "id", None), b.event_start, b.event_value) for b in beliefs]
    with session.no_autoflush:
        _compare(session, rows)


def _compare(session: Session, rows: Iterable[Row]) -> None:
    """Note the watched sensors whose written value differs from the one believed until now."""
    watched = watched_sensors()
    if not watched:
        return
    written: dict[int, dict[datetime, float]] = {}
    for sensor_id, event_start, value in rows:
        if sensor_id in watched and event_start is not None and value is not None:
            moment = pd.Timestamp(event_start)
            moment = moment.tz_localize(UTC) if moment.tzinfo is None else moment.tz_convert(UTC)
            start = moment.to_pydatetime()
            written.setdefault(sensor_id, {})[start] = float(value)
    changed = set(session.info.get(_CHANGED, ()))
    written = {i: v for i, v in written.items() if watched[i][0] not in changed}
    if not written:
        return
    low = min(min(v) for v in written.values())
    high = max(max(v) for v in written.values()) + max(watched[i][1] for i in written)
    # On the connection, not the session: no flush in the middle of the writer's statement or flush
    # (the beliefs being written are not stored yet, which is the point: the state before them).
    query = BeliefQuery(sensor_ids=list(written), start=low, end=high)
    before = values_per_sensor(session.connection(), query)
    for sensor_id, by_slot in written.items():
        if any(before.get(sensor_id, {}).get(slot) != value for slot, value in by_slot.items()):
            changed.add(watched[sensor_id][0])
    if changed:
        session.info[_CHANGED] = changed


# --- marking and asking -----------------------------------------------------------------------------


def _on_before_commit(session: Session) -> None:
    changed = session.info.pop(_CHANGED, None)
    if not changed or not _active():
        return
    from cariflex.fleet import FleetError, load_fleet

    try:
        with session.no_autoflush:  # the commit flushes next
            fleet = load_fleet()
            site = require_site(fleet)
            grid_signals = session.execute(
                select(GenericAsset)
                .filter_by(name=fleet.grid_signals.name, parent_asset_id=site.id)
                .with_for_update()
            ).scalar_one()
    except (SiteNotReady, FleetError, LookupError) as exc:  # never fail the writer's commit for it
        log.error("re-plan not requested after a FlexMeasures write", extra={"fields": {"error": str(exc)}})
        return
    if mark_replan_needed(grid_signals, sorted(changed)):
        session.info[_MARKED] = sorted(changed)
        log.info("re-plan requested by a FlexMeasures write", extra={"fields": {"because": sorted(changed)}})


def _forget_pending(session: Session) -> None:
    session.info.pop(_CHANGED, None)
    session.info.pop(_MARKED, None)


def _on_after_commit(session: Session) -> None:
    if not session.info.pop(_MARKED, None) or not _active():
        return
    try:
        _ask_for_replan()
    except Exception:  # the write is committed and numbered: the next request re-plans for it
        log.exception("could not ask for a re-plan after a FlexMeasures write")


def _ask_for_replan() -> None:
    from cariflex.fleet import load_fleet
    from flexmeasures_cariflex.data.services.replan import replan_job, request_replan

    if has_request_context():
        request_replan(load_fleet())  # as the plugin's endpoint: debounced
        return
    job = _current_rq_job()
    if job is not None:
        queue = getattr(current_app, "queues", {}).get("scheduling")
        if queue is not None:
            queue.enqueue(replan_job, settings.get("CARIFLEX_FLEET_FILE"), job_timeout=180, result_ttl=3600)
            return
    import click

    ctx = click.get_current_context(silent=True)
    if ctx is not None:  # a command (flexmeasures add beliefs): re-plan once it is done
        ctx.call_on_close(_replan_after_command)
        return
    request_replan(load_fleet())


def _current_rq_job():
    try:
        from rq import get_current_job
    except ImportError:  # pragma: no cover - FlexMeasures depends on rq
        return None
    return get_current_job()


def _replan_after_command() -> None:
    """Run by the command's click context on close, while its app context is still pushed."""
    import click

    from cariflex.fleet import load_fleet
    from flexmeasures_cariflex.data.services.replan import replan_now

    try:
        status = replan_now(load_fleet())
    except Exception as exc:  # the beliefs are stored and the request numbered: the next run plans for it
        log.exception("re-plan after a FlexMeasures command failed")
        click.secho(f"Cariflex: re-plan failed: {exc}", fg="red", err=True)
        return
    if status is None:
        click.echo("Cariflex: the current schedule already includes this change.")
    elif status.get("ok"):
        click.echo(f"Cariflex: re-planned {status['start']} - {status['end']}, version {status['version']}")
    else:
        click.secho(f"Cariflex: re-plan failed: {status.get('error')}", fg="red", err=True)
