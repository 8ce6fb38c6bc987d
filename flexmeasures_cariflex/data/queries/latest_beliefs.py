"""The latest belief per sensor and event: one definition of "what the database believes now".

Why this module exists: about nine readers (``beliefs.latest_values``, the fleet scheduler's
price/signal/SoC look-ups, the rollup refresh, statistics, alerts, flexibility, the weather
back-fill, Grafana's panels) each wrote their own ``DISTINCT ON`` or timely-beliefs search, with
different rules: some kept only ``cumulative_probability = 0.5``, some any row; some broke ties
between sources by ``source_id DESC``, some not at all (PostgreSQL then returns any of them); one
cut at a belief time, the others did not. Here the rules are written once, as options, and the
same builder renders the SQL for every consumer:

- the plugin: bind parameters, executed with SQLAlchemy ``text()`` (``latest_beliefs`` and the
  shapes below do it);
- Grafana: ``literal=True`` (Grafana has no bind parameters) with :class:`Sql` pieces for what
  Grafana fills in itself, e.g. ``time_filter=GRAFANA_TIME_FILTER`` (``$__timeFilter``) or
  ``start=Sql("$__timeFrom()")``; the rest of the text is the same as the plugin's;
- SQL inside SQL (a CTE of a bigger query, a plpgsql function): :class:`Sql` pieces naming the
  host's parameters or variables, e.g. ``sensor_ids=Sql("p_sensor_ids")``.

The rules, applied in this order:

1. Candidates: the rows of ``timed_belief`` of the sensors (``sensor_ids``) whose *event start*
   is in ``[start, end)`` (``end_inclusive``: ``[start, end]``; either bound may be left open).
   The window is on the event start, not on overlap: an event that began before ``start`` is not
   a candidate even if it lasts past it (align ``start`` to the sensor's resolution).
2. Sources: a belief is kept when its source passes every include list given (``source_ids``,
   ``source_names``, ``source_types``; within one list, any entry) and matches no exclude list.
3. Horizons: ``horizons_at_least <= belief_horizon <= horizons_at_most`` when given
   (``horizons_at_most=timedelta(0)``: measurements, beliefs formed at or after the knowledge time).
4. Known before: ``belief_time <= known_before`` (inclusive, as timely-beliefs' ``beliefs_before``).
   FlexMeasures does not store the belief time: ``belief_time = knowledge_time - belief_horizon``,
   and the knowledge time follows the sensor's knowledge-horizon function:
   ``ex_post`` (FlexMeasures' default, every Cariflex sensor): ``event_start + event_resolution +
   ex_post_horizon``, i.e. the event's end, so a measurement (horizon 0) is believed when the event
   ends and a schedule stored at T for an event at E has horizon ``E + resolution - T``;
   ``ex_ante``: ``event_start - ex_ante_horizon``. Other functions (``x_days_ago_at_y_oclock``,
   ``at_date``, ...) depend on the event start in Python; they are refused
   (:class:`UnsupportedKnowledgeHorizon`) rather than cut wrongly.
5. Probability: only ``cumulative_probability = 0.5`` rows by default: a deterministic belief is
   stored at 0.5 (every write of this plugin), and of a probabilistic belief that is its median.
   No median is interpolated: a distribution without a 0.5 row is no candidate (an older
   deterministic belief then wins). ``cumulative_probability=None``: any row is a candidate, and of
   one belief the row nearest 0.5 wins (then the lower one). Another number: only that quantile.
6. Newest belief wins: per (sensor, event start) the candidate with the latest belief time. For one
   sensor and event start the knowledge time is fixed, so "belief time descending" is exactly
   "belief horizon ascending"; the SQL sorts by the stored horizon (no sensor join, index order).
7. Tie-break, for equal belief times (the same horizon from different sources): the sources in
   ``prefer_sources`` first, in that order; then the higher source id (the later registered source,
   as the raw SQL of rollups, statistics, alerts and Grafana did); then, with
   ``cumulative_probability=None``, the row nearest 0.5. The sort covers ``timed_belief``'s primary
   key (event_start, belief_horizon, cumulative_probability, sensor_id, source_id): the pick never
   depends on the plan or on the physical order of the rows.
8. Shape: one row per sensor and event (``DISTINCT ON``), ordered by sensor and event start; or,
   ``most_recent_event_only``, one row per sensor: its latest candidate event and that event's
   winning belief (``LATERAL ... LIMIT 1``, an index look-up per sensor).

The SQL uses the aliases ``tb`` (``timed_belief``) and ``s`` (``sensor``, joined only when the belief
time is needed, and always in the ``most_recent_event_only`` form); :class:`Sql` pieces may refer
to them. Nothing here imports FlexMeasures: the table and column names are FlexMeasures'
(timely-beliefs') schema, and the module loads without an app.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple, TypeAlias

import pandas as pd
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

BELIEFS_TABLE = "timed_belief"
SENSOR_TABLE = "sensor"
SOURCE_TABLE = "data_source"

SUPPORTED_KNOWLEDGE_HORIZONS = ("ex_post", "ex_ante")
DEFAULT_PREFIX = "lb_"

Executor: TypeAlias = Session | Connection


class Sql(str):
    """SQL text put verbatim where a value would otherwise be bound or written as a literal: a
    Grafana macro (``Sql("$__timeFrom()")``), a host query's parameter (``Sql(":start")``), a plpgsql
    variable (``Sql("p_sensor_ids")``), an expression (``Sql("now()")``).

    For ``sensor_ids``: an ``integer[]`` expression or a subquery (``Sql("SELECT s.id FROM ...")``);
    it is used as ``= ANY (<sql>)``. For ``time_filter``: a condition on ``tb.event_start``.
    Only code writes these (never user input): they are not escaped.
    """


GRAFANA_TIME_FILTER = Sql("$__timeFilter(tb.event_start)")


class UnsupportedKnowledgeHorizon(ValueError):
    """A belief-time cut was asked for a sensor whose knowledge-horizon function SQL cannot follow."""


class RenderedSql(NamedTuple):
    """SQL text and its bind parameters (empty when rendered with ``literal=True``)."""

    text: str
    params: dict[str, Any]


class LastEvent(NamedTuple):
    event_start: datetime  # UTC
    event_value: float


@dataclass(frozen=True)
class BeliefQuery:
    """Which beliefs are candidates and how the latest one is picked (rules in the module docstring).

    Datetimes must be timezone-aware. Lists may be any sequence of ints or strings (not a plain
    string). Anything typed ``... | Sql`` may be given as SQL text instead of a value.
    """

    sensor_ids: Sequence[int] | Sql
    start: datetime | Sql | None = None
    end: datetime | Sql | None = None
    end_inclusive: bool = False
    time_filter: Sql | None = None  # replaces start/end, e.g. GRAFANA_TIME_FILTER
    source_ids: Sequence[int] | None = None
    exclude_source_ids: Sequence[int] | None = None
    source_names: Sequence[str] | None = None
    exclude_source_names: Sequence[str] | None = None
    source_types: Sequence[str] | None = None
    exclude_source_types: Sequence[str] | None = None
    known_before: datetime | Sql | None = None
    horizons_at_least: timedelta | None = None
    horizons_at_most: timedelta | None = None
    cumulative_probability: float | None = 0.5
    prefer_sources: Sequence[int] = ()
    most_recent_event_only: bool = False

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, str) and not isinstance(value, Sql):
                raise TypeError(f"{f.name}: give a list, or Sql(...) for SQL text, not the string {value!r}")
            if isinstance(value, datetime) and value.tzinfo is None:
                raise ValueError(f"{f.name} {value} has no timezone")
        if self.time_filter is not None and (self.start is not None or self.end is not None):
            raise ValueError("give time_filter or start/end, not both")
        if self.cumulative_probability is not None and not 0 <= self.cumulative_probability <= 1:
            raise ValueError(f"cumulative_probability {self.cumulative_probability} is not within 0..1")


# --- SQL ----------------------------------------------------------------------------------------


def _iso_duration(key: str) -> str:
    """The ISO 8601 duration stored under ``key`` in the sensor's knowledge_horizon_par, as an interval
    (PostgreSQL reads 'PT1H' but not '-PT1H', which isodate writes for negative durations)."""
    value = f"s.knowledge_horizon_par ->> '{key}'"
    return (
        f"CASE WHEN left({value}, 1) = '-' THEN -CAST(substr({value}, 2) AS interval) "
        f"ELSE CAST({value} AS interval) END"
    )


# belief_time = knowledge_time - belief_horizon, knowledge_time = event_start - knowledge_horizon.
BELIEF_TIME = (
    "(tb.event_start - tb.belief_horizon + CASE s.knowledge_horizon_fnc"
    f" WHEN 'ex_post' THEN s.event_resolution + {_iso_duration('ex_post_horizon')}"
    f" WHEN 'ex_ante' THEN -({_iso_duration('ex_ante_horizon')}) END)"
)

_COLUMNS = {
    "sensor_id": "tb.sensor_id",
    "event_start": "tb.event_start",
    "event_value": "tb.event_value",
    "belief_horizon": "tb.belief_horizon",
    "source_id": "tb.source_id",
    "cumulative_probability": "tb.cumulative_probability",
    "belief_time": f"{BELIEF_TIME} AS belief_time",
}
SQL_COLUMNS = ("sensor_id", "event_start", "event_value")
FRAME_COLUMNS = tuple(_COLUMNS)


def _literal(value: Any, sql_type: str) -> str:
    """``value`` as an SQL literal of ``sql_type`` (for Grafana and SQL inside SQL)."""
    if sql_type.endswith("[]"):
        items = ", ".join(_literal(v, sql_type[:-2]) for v in value)
        return f"CAST(ARRAY[{items}] AS {sql_type})"
    if sql_type == "integer":
        return str(int(value))
    if sql_type == "float8":
        number = float(value)
        if not math.isfinite(number):
            raise ValueError(f"{value!r} is not a finite number")
        return repr(number)
    if sql_type == "text":
        return "'" + str(value).replace("'", "''") + "'"
    if sql_type == "timestamptz":
        return f"CAST('{value.astimezone(UTC).isoformat()}' AS timestamptz)"
    if sql_type == "interval":
        microseconds = value // timedelta(microseconds=1)
        return f"CAST('{microseconds} microseconds' AS interval)"
    raise ValueError(f"no literal for SQL type {sql_type}")


class _Renderer:
    def __init__(self, literal: bool, prefix: str):
        self.literal, self.prefix = literal, prefix
        self.params: dict[str, Any] = {}

    def __call__(self, name: str, value: Any, sql_type: str) -> str:
        if isinstance(value, Sql):
            return str(value)
        if self.literal:
            return _literal(value, sql_type)
        key = self.prefix + name
        if sql_type.endswith("[]"):
            self.params[key] = list(value)  # psycopg2: a list is an ARRAY, a tuple a record
            return f"CAST(:{key} AS {sql_type})"
        self.params[key] = value
        return f":{key}" if sql_type == "float8" else f"CAST(:{key} AS {sql_type})"


def _window(query: BeliefQuery, r: _Renderer) -> str | None:
    if query.time_filter is not None:
        return str(query.time_filter)
    parts = []
    if query.start is not None:
        parts.append(f"tb.event_start >= {r('start', query.start, 'timestamptz')}")
    if query.end is not None:
        op = "<=" if query.end_inclusive else "<"
        parts.append(f"tb.event_start {op} {r('end', query.end, 'timestamptz')}")
    return " AND ".join(parts) or None


def _conditions(query: BeliefQuery, r: _Renderer) -> list[str]:
    """The candidate rules 1-5 but the sensor, as conditions on ``tb`` (and ``s``)."""
    out = []
    window = _window(query, r)
    if window:
        out.append(window)
    if query.cumulative_probability is not None:
        cp = r("cumulative_probability", query.cumulative_probability, "float8")
        out.append(f"tb.cumulative_probability = {cp}")
    if query.source_ids is not None:
        out.append(f"tb.source_id = ANY ({r('source_ids', query.source_ids, 'integer[]')})")
    if query.exclude_source_ids is not None:
        out.append(f"tb.source_id <> ALL ({r('exclude_source_ids', query.exclude_source_ids, 'integer[]')})")
    for column, include, exclude in (
        ("name", "source_names", "exclude_source_names"),
        ("type", "source_types", "exclude_source_types"),
    ):
        for option, negation in ((include, ""), (exclude, "NOT ")):
            values = getattr(query, option)
            if values is not None:
                out.append(
                    f"tb.source_id {negation}IN (SELECT ds.id FROM {SOURCE_TABLE} ds "
                    f"WHERE ds.{column} = ANY ({r(option, values, 'text[]')}))"
                )
    if query.horizons_at_least is not None:
        out.append(f"tb.belief_horizon >= {r('horizons_at_least', query.horizons_at_least, 'interval')}")
    if query.horizons_at_most is not None:
        out.append(f"tb.belief_horizon <= {r('horizons_at_most', query.horizons_at_most, 'interval')}")
    if query.known_before is not None:
        out.append(f"{BELIEF_TIME} <= {r('known_before', query.known_before, 'timestamptz')}")
    return out


def _tie_break(query: BeliefQuery, r: _Renderer) -> list[str]:
    """Rule 7: what orders beliefs of one event with the same belief time."""
    terms = []
    if query.prefer_sources:
        preferred = r("prefer_sources", query.prefer_sources, "integer[]")
        terms.append(f"array_position({preferred}, tb.source_id) NULLS LAST")
    terms.append("tb.source_id DESC")
    if query.cumulative_probability is None:
        terms += ["abs(tb.cumulative_probability - 0.5)", "tb.cumulative_probability"]
    return terms


def latest_beliefs_sql(
    query: BeliefQuery,
    *,
    columns: Sequence[str] = SQL_COLUMNS,
    literal: bool = False,
    prefix: str = DEFAULT_PREFIX,
) -> RenderedSql:
    """The SQL of the latest beliefs (module docstring), selecting ``columns`` (of ``FRAME_COLUMNS``).

    ``literal``: values written into the text (Grafana, SQL inside SQL), no bind parameters;
    otherwise bind parameters named ``<prefix><option>``, so the text can join a host query's.
    """
    unknown = [c for c in columns if c not in _COLUMNS]
    if unknown or not columns:
        raise ValueError(f"columns {unknown or columns} are not among {', '.join(_COLUMNS)}")
    r = _Renderer(literal, prefix)
    sensors = r("sensor_ids", query.sensor_ids, "integer[]")
    conditions = _conditions(query, r)
    order = ", ".join(_tie_break(query, r))
    selected = ", ".join(_COLUMNS[c] for c in columns)
    if not query.most_recent_event_only:
        joined = query.known_before is not None or "belief_time" in columns
        source = f"{BELIEFS_TABLE} tb" + (f" JOIN {SENSOR_TABLE} s ON s.id = tb.sensor_id" if joined else "")
        where = "\n      AND ".join([f"tb.sensor_id = ANY ({sensors})", *conditions])
        sql = (
            f"SELECT DISTINCT ON (tb.sensor_id, tb.event_start) {selected}\n"
            f"    FROM {source}\n"
            f"    WHERE {where}\n"
            f"    ORDER BY tb.sensor_id, tb.event_start, tb.belief_horizon, {order}"
        )
    else:
        where = "\n          AND ".join(["tb.sensor_id = s.id", *conditions])
        sql = (
            f"SELECT {selected}\n"
            f"    FROM {SENSOR_TABLE} s CROSS JOIN LATERAL (\n"
            f"        SELECT tb.sensor_id, tb.event_start, tb.belief_horizon, tb.cumulative_probability,\n"
            f"            tb.event_value, tb.source_id\n"
            f"        FROM {BELIEFS_TABLE} tb\n"
            f"        WHERE {where}\n"
            f"        ORDER BY tb.event_start DESC, tb.belief_horizon, {order}\n"
            f"        LIMIT 1\n"
            f"    ) tb\n"
            f"    WHERE s.id = ANY ({sensors})\n"
            f"    ORDER BY tb.sensor_id"
        )
    return RenderedSql(sql, r.params)


def grafana_sql(query: BeliefQuery, *, columns: Sequence[str] = SQL_COLUMNS) -> str:
    """The same SQL for a Grafana panel: every value a literal; Grafana's macros come in as Sql
    pieces, e.g. ``time_filter=GRAFANA_TIME_FILTER`` and ``sensor_ids=Sql("SELECT s.id FROM ...")``.

    ``$__timeFilter`` is ``BETWEEN`` (both ends inclusive): the plugin's ``[start, end]``
    (``end_inclusive=True``). ``start=Sql("$__timeFrom()"), end=Sql("$__timeTo()")`` is ``[start, end)``.
    """
    return latest_beliefs_sql(query, columns=columns, literal=True).text


# --- Python -------------------------------------------------------------------------------------


def _check_knowledge_horizons(conn: Executor, query: BeliefQuery, columns: Sequence[str]) -> None:
    """Refuse a belief-time cut (or belief-time column) that SQL cannot compute for these sensors.

    Only for sensor ids given as values; with ``Sql`` sensors such sensors' beliefs have no belief
    time (NULL): never known before anything, NULL in the column."""
    if query.known_before is None and "belief_time" not in columns:
        return
    if isinstance(query.sensor_ids, Sql) or not query.sensor_ids:
        return
    rows = conn.execute(
        text(
            f"SELECT id, name, knowledge_horizon_fnc FROM {SENSOR_TABLE} "
            "WHERE id = ANY (CAST(:ids AS integer[])) AND knowledge_horizon_fnc <> ALL (CAST(:ok AS text[]))"
        ),
        {"ids": list(query.sensor_ids), "ok": list(SUPPORTED_KNOWLEDGE_HORIZONS)},
    ).all()
    if rows:
        names = ", ".join(f"{name} (id {id_}): {fnc}" for id_, name, fnc in rows)
        raise UnsupportedKnowledgeHorizon(
            f"belief times follow {', '.join(SUPPORTED_KNOWLEDGE_HORIZONS)} knowledge horizons only; {names}"
        )


def _rows(conn: Executor, query: BeliefQuery, columns: Sequence[str]) -> list[Any]:
    if not isinstance(query.sensor_ids, Sql) and not query.sensor_ids:
        return []
    if isinstance(conn, Session) and conn.autoflush:
        conn.flush()  # text() does not autoflush: pending ORM beliefs would be missed
    _check_knowledge_horizons(conn, query, columns)
    rendered = latest_beliefs_sql(query, columns=columns)
    return conn.execute(text(rendered.text), rendered.params).all()


def _utc(moment: datetime) -> datetime:
    return moment.astimezone(UTC)


def latest_beliefs(
    conn: Executor, query: BeliefQuery, columns: Sequence[str] = FRAME_COLUMNS
) -> pd.DataFrame:
    """The latest beliefs as a DataFrame, one row per sensor and event (or per sensor), ordered by
    sensor and event start; times in UTC (``event_start``, ``belief_time``), ``belief_horizon`` a
    timedelta."""
    rows = _rows(conn, query, columns)
    frame = pd.DataFrame.from_records(rows, columns=list(columns))
    for column in ("event_start", "belief_time"):
        if column in frame:
            frame[column] = pd.to_datetime(frame[column], utc=True)
    if "belief_horizon" in frame:
        frame["belief_horizon"] = pd.to_timedelta(frame["belief_horizon"])
    for column, dtype in (("sensor_id", "int64"), ("source_id", "int64"), ("event_value", "float64")):
        if column in frame:
            frame[column] = frame[column].astype(dtype)
    if "cumulative_probability" in frame:
        frame["cumulative_probability"] = frame["cumulative_probability"].astype("float64")
    return frame


def values_per_sensor(conn: Executor, query: BeliefQuery) -> dict[int, dict[datetime, float]]:
    """``{sensor id: {event start (UTC datetime): value}}``; every requested sensor is a key (empty
    when it has no belief), as ``beliefs.latest_values`` returned."""
    found: dict[int, dict[datetime, float]] = (
        {} if isinstance(query.sensor_ids, Sql) else {int(i): {} for i in query.sensor_ids}
    )
    for sensor_id, event_start, value in _rows(conn, query, SQL_COLUMNS):
        found.setdefault(sensor_id, {})[_utc(event_start)] = value
    return found


def series_per_sensor(conn: Executor, query: BeliefQuery) -> dict[int, pd.Series]:
    """``{sensor id: Series}`` of float values indexed by UTC event start (sorted; empty when none)."""
    out: dict[int, pd.Series] = {}
    for sensor_id, values in values_per_sensor(conn, query).items():
        index = pd.DatetimeIndex(pd.to_datetime(list(values), utc=True), name="event_start")
        series = pd.Series(list(values.values()), index=index, dtype=float, name=sensor_id)
        out[sensor_id] = series.sort_index()
    return out


def last_event_per_sensor(conn: Executor, query: BeliefQuery) -> dict[int, LastEvent]:
    """Per sensor that has a candidate: its latest event and that event's latest belief (the query
    with ``most_recent_event_only``); sensors without any candidate are left out."""
    rows = _rows(conn, replace(query, most_recent_event_only=True), SQL_COLUMNS)
    return {sensor_id: LastEvent(_utc(event_start), value) for sensor_id, event_start, value in rows}
