"""The one "latest belief per event" reader (flexmeasures_cariflex/data/queries/latest_beliefs.py),
against real PostgreSQL: each rule on beliefs written for the purpose, FlexMeasures' own search as
the reference for the belief-time cut, and the Grafana and bind-parameter renderings as one query."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest
from sqlalchemy import text

from flexmeasures_cariflex.data.queries.latest_beliefs import (
    GRAFANA_TIME_FILTER,
    BeliefQuery,
    LastEvent,
    Sql,
    UnsupportedKnowledgeHorizon,
    grafana_sql,
    last_event_per_sensor,
    latest_beliefs,
    latest_beliefs_sql,
    series_per_sensor,
    values_per_sensor,
)
from tests.helpers.grafana_macros import expand

T0 = datetime(2026, 3, 1, tzinfo=UTC)
MIN = timedelta(minutes=1)
QUARTER = timedelta(minutes=15)
HOUR = timedelta(hours=1)


class World:
    """Sensors of each knowledge-horizon kind and three sources (ids in creation order)."""

    def __init__(self, db):
        from flexmeasures.data.models.data_sources import DataSource
        from flexmeasures.data.models.generic_assets import GenericAsset, GenericAssetType
        from flexmeasures.data.models.time_series import Sensor
        from timely_beliefs.sensors.func_store.knowledge_horizons import x_days_ago_at_y_oclock

        self.db = db
        asset = GenericAsset(name="latest-beliefs test", generic_asset_type=GenericAssetType(name="lb-test"))
        # ex_post (FlexMeasures' default, every Cariflex sensor): known at the event's end
        self.power = Sensor("power", generic_asset=asset, unit="kW", event_resolution=QUARTER)
        # ex_ante: known 2 h before the event starts; and one known 1 h after it starts ("-PT1H")
        self.price = Sensor("price", generic_asset=asset, unit="EUR/MWh", event_resolution=HOUR,
                            knowledge_horizon=timedelta(hours=2))  # fmt: skip
        self.late = Sensor("late", generic_asset=asset, unit="%", event_resolution=QUARTER,
                           knowledge_horizon=timedelta(hours=-1))  # fmt: skip
        self.dayahead = Sensor(
            "dayahead", generic_asset=asset, unit="EUR/MWh", event_resolution=HOUR,
            knowledge_horizon=(x_days_ago_at_y_oclock, {"x": 1, "y": 12, "z": "Europe/Amsterdam"}),
        )  # fmt: skip
        self.meter = DataSource(name="meter", type="demo script")
        self.forecaster = DataSource(name="forecaster", type="forecaster")
        self.scheduler = DataSource(name="Cariflex scheduler", type="scheduler")
        db.session.add_all([asset, self.power, self.price, self.late, self.dayahead])
        db.session.add_all([self.meter, self.forecaster, self.scheduler])
        db.session.flush()
        assert self.meter.id < self.forecaster.id < self.scheduler.id

    def put(self, sensor, source, event_start, value, horizon=timedelta(0), cp=0.5) -> None:
        self.db.session.execute(
            text(
                "INSERT INTO timed_belief (event_start, belief_horizon, cumulative_probability, event_value, "
                "sensor_id, source_id) VALUES (:e, :h, :cp, :v, :s, :src)"
            ),
            {"e": event_start, "h": horizon, "cp": cp, "v": value, "s": sensor.id, "src": source.id},
        )

    def values(self, sensor, **options) -> dict[datetime, float]:
        query = BeliefQuery(sensor_ids=[sensor.id], **options)
        return values_per_sensor(self.db.session, query)[sensor.id]


@pytest.fixture
def world(app, fm_db) -> World:
    return World(fm_db)


def test_the_newest_belief_wins_whatever_its_source(world):
    w = world
    w.put(w.power, w.meter, T0, 1.0, horizon=2 * HOUR)  # believed at T0 + 15 min - 2 h
    w.put(w.power, w.forecaster, T0, 2.0, horizon=HOUR)
    w.put(w.power, w.meter, T0, 3.0)  # the measurement, at the event's end
    assert w.values(w.power) == {T0: 3.0}
    w.put(w.power, w.forecaster, T0, 4.0, horizon=-5 * MIN)  # a revision after the measurement
    assert w.values(w.power) == {T0: 4.0}
    frame = latest_beliefs(w.db.session, BeliefQuery(sensor_ids=[w.power.id]))
    row = frame.iloc[0]
    assert (row.source_id, row.belief_horizon, row.belief_time) == (
        w.forecaster.id,
        -5 * MIN,
        pd.Timestamp(T0 + QUARTER + 5 * MIN),
    )


def test_the_window_is_on_the_event_start_half_open_unless_asked(world):
    w = world
    for i in range(5):
        w.put(w.power, w.meter, T0 + i * QUARTER, float(i))
    assert list(w.values(w.power, start=T0 + QUARTER, end=T0 + 4 * QUARTER)) == [
        T0 + QUARTER,
        T0 + 2 * QUARTER,
        T0 + 3 * QUARTER,
    ]
    inclusive = w.values(w.power, start=T0 + QUARTER, end=T0 + 4 * QUARTER, end_inclusive=True)
    assert list(inclusive)[-1] == T0 + 4 * QUARTER
    assert list(w.values(w.power, end=T0 + QUARTER)) == [T0]  # open start


def test_known_before_hides_beliefs_formed_later(world):
    w = world
    w.put(w.power, w.meter, T0, 1.0, horizon=2 * HOUR)  # believed at T0 - 1:45
    w.put(w.power, w.forecaster, T0, 2.0, horizon=HOUR)  # believed at T0 - 0:45
    w.put(w.power, w.meter, T0, 3.0)  # believed at T0 + 0:15
    believed = T0 + QUARTER - HOUR
    assert w.values(w.power, known_before=believed) == {T0: 2.0}  # inclusive
    assert w.values(w.power, known_before=believed - timedelta(microseconds=1)) == {T0: 1.0}
    assert w.values(w.power, known_before=T0 - 2 * HOUR) == {}
    assert w.values(w.power, known_before=T0 + QUARTER) == {T0: 3.0}
    # ex_ante 2 h: a price for 12:00 stored with horizon 30 min was believed at 9:30
    noon = T0 + 12 * HOUR
    w.put(w.price, w.forecaster, noon, 50.0, horizon=30 * MIN)
    assert w.values(w.price, known_before=noon - 2.5 * HOUR) == {noon: 50.0}
    assert w.values(w.price, known_before=noon - 2.5 * HOUR - MIN) == {}


def test_known_before_matches_the_belief_time_the_plugin_writes(world):
    from flexmeasures_cariflex.data.services.beliefs import insert_beliefs

    w = world
    formed = T0 - 3 * HOUR + 7 * MIN
    for sensor in (w.power, w.price, w.late):
        insert_beliefs({sensor: pd.Series({pd.Timestamp(T0): 9.0})}, w.forecaster, formed)
        assert w.values(sensor, known_before=formed) == {T0: 9.0}, sensor.name
        assert w.values(sensor, known_before=formed - timedelta(microseconds=1)) == {}, sensor.name
        frame = latest_beliefs(w.db.session, BeliefQuery(sensor_ids=[sensor.id]))
        assert frame.belief_time.tolist() == [pd.Timestamp(formed)], sensor.name


def test_known_before_agrees_with_flexmeasures_search(world):
    """The reference: timely-beliefs' belief times and FlexMeasures' one belief per event."""
    w = world
    for sensor, step in ((w.power, QUARTER), (w.price, HOUR), (w.late, QUARTER)):
        for i in range(8):
            event = T0 + i * step
            for k, (source, minutes) in enumerate(((w.meter, 0), (w.forecaster, 25), (w.meter, 95))):
                horizon = timedelta(minutes=minutes + 10 * i) - QUARTER  # distinct belief times
                w.put(sensor, source, event, 100.0 * i + k, horizon=horizon)
    for sensor, step in ((w.power, QUARTER), (w.price, HOUR), (w.late, QUARTER)):
        end = T0 + 8 * step
        answers = set()
        for known_before in pd.date_range(T0 - 6 * HOUR, end + 2 * HOUR, freq="10min"):
            bdf = sensor.search_beliefs(
                event_starts_after=T0,
                event_ends_before=end,
                beliefs_before=known_before,
                most_recent_beliefs_only=True,
                one_deterministic_belief_per_event=True,
            )
            expected = {}
            if not bdf.empty:
                flat = bdf.reset_index()
                expected = {
                    pd.Timestamp(t).tz_convert("UTC"): v
                    for t, v in zip(flat.event_start, flat.event_value, strict=True)
                }
            query = BeliefQuery(sensor_ids=[sensor.id], start=T0, end=end, known_before=known_before)
            got = series_per_sensor(w.db.session, query)[sensor.id]
            assert got.to_dict() == expected, (sensor.name, known_before)
            answers.add(tuple(sorted(expected.items())))
        assert len(answers) > 10 and () in answers, sensor.name  # the cut really moved through the beliefs


def test_a_knowledge_horizon_sql_cannot_follow_is_refused_for_a_cut(world):
    w = world
    w.put(w.dayahead, w.forecaster, T0, 40.0, horizon=12 * HOUR)
    assert w.values(w.dayahead) == {T0: 40.0}
    with pytest.raises(UnsupportedKnowledgeHorizon, match="dayahead.*x_days_ago_at_y_oclock"):
        w.values(w.dayahead, known_before=T0)
    with pytest.raises(UnsupportedKnowledgeHorizon):
        latest_beliefs(w.db.session, BeliefQuery(sensor_ids=[w.dayahead.id]))  # has a belief_time column


def test_sources_are_included_and_excluded_by_id_name_and_type(world):
    w = world
    w.put(w.power, w.meter, T0, 1.0)  # newest
    w.put(w.power, w.forecaster, T0, 2.0, horizon=HOUR)
    w.put(w.power, w.scheduler, T0, 3.0, horizon=2 * HOUR)  # oldest
    assert w.values(w.power) == {T0: 1.0}
    assert w.values(w.power, exclude_source_types=["scheduler"]) == {T0: 1.0}
    assert w.values(w.power, source_types=["scheduler"]) == {T0: 3.0}
    assert w.values(w.power, exclude_source_names=["meter"]) == {T0: 2.0}  # filter first, then newest
    assert w.values(w.power, source_names=["meter", "forecaster"], source_types=["forecaster"]) == {T0: 2.0}
    assert w.values(w.power, source_ids=[w.scheduler.id]) == {T0: 3.0}
    assert w.values(w.power, exclude_source_ids=[w.meter.id, w.forecaster.id]) == {T0: 3.0}
    assert w.values(w.power, source_names=["nobody"]) == {}
    with pytest.raises(TypeError, match="not the string"):
        BeliefQuery(sensor_ids=[w.power.id], source_types="scheduler")


def test_probability_rule_is_explicit(world):
    w = world
    w.put(w.power, w.meter, T0, 10.0, horizon=HOUR)  # deterministic, older
    w.put(w.power, w.forecaster, T0, 8.0, cp=0.25)  # probabilistic, newer, no median row
    w.put(w.power, w.forecaster, T0, 12.0, cp=0.75)
    w.put(w.power, w.meter, T0 + QUARTER, 20.0, cp=0.5)
    w.put(w.power, w.meter, T0 + QUARTER, 19.0, cp=0.25)
    # Default: only cumulative_probability 0.5 rows are candidates (the older deterministic belief)
    assert w.values(w.power) == {T0: 10.0, T0 + QUARTER: 20.0}
    # Any row: the newest belief, its row nearest 0.5 (equidistant: the lower one)
    assert w.values(w.power, cumulative_probability=None) == {T0: 8.0, T0 + QUARTER: 20.0}
    # One quantile
    assert w.values(w.power, cumulative_probability=0.75) == {T0: 12.0}


def test_equal_belief_times_are_broken_by_a_fixed_source_order(world):
    w = world
    w.put(w.power, w.meter, T0, 1.0)
    w.put(w.power, w.forecaster, T0, 2.0)  # same belief time, higher source id
    w.put(w.power, w.forecaster, T0 + QUARTER, 2.0)  # the other way round in insertion order
    w.put(w.power, w.meter, T0 + QUARTER, 1.0)
    expected = {T0: 2.0, T0 + QUARTER: 2.0}
    for _ in range(3):
        assert w.values(w.power) == expected
    assert w.values(w.power, prefer_sources=[w.meter.id]) == {T0: 1.0, T0 + QUARTER: 1.0}
    assert w.values(w.power, prefer_sources=[w.scheduler.id, w.meter.id]) == {T0: 1.0, T0 + QUARTER: 1.0}
    # The planner cannot change the pick: same answer without sorts or without index scans
    for setting in ("enable_sort", "enable_indexscan"):
        w.db.session.execute(text(f"SET LOCAL {setting} = off"))
        assert w.values(w.power) == expected
        w.db.session.execute(text(f"RESET {setting}"))


def test_most_recent_event_only_is_the_last_row_of_the_per_event_answer(world):
    w = world
    for i in range(4):
        w.put(w.power, w.meter, T0 + i * QUARTER, float(i))
        w.put(w.power, w.forecaster, T0 + i * QUARTER, 10.0 + i, horizon=HOUR)
    w.put(w.power, w.forecaster, T0 + 4 * QUARTER, 99.0, horizon=HOUR)  # a forecast only
    w.put(w.power, w.scheduler, T0 + 5 * QUARTER, 50.0, horizon=HOUR)
    w.put(w.price, w.forecaster, T0, 70.0, horizon=3 * HOUR)
    query = BeliefQuery(sensor_ids=[w.power.id, w.price.id, w.late.id], exclude_source_types=["scheduler"])
    last = last_event_per_sensor(w.db.session, query)
    assert last == {w.power.id: LastEvent(T0 + 4 * QUARTER, 99.0), w.price.id: LastEvent(T0, 70.0)}
    frame = latest_beliefs(w.db.session, query)
    tail = frame.groupby("sensor_id").tail(1)
    assert {r.sensor_id: LastEvent(r.event_start, r.event_value) for r in tail.itertuples()} == last
    # measurements only (formed at or after the knowledge time), as the weather back-fill asks
    measured = last_event_per_sensor(w.db.session, replace(query, horizons_at_most=timedelta(0)))
    assert measured == {w.power.id: LastEvent(T0 + 3 * QUARTER, 3.0)}
    # "at or before a moment": end inclusive
    at = last_event_per_sensor(w.db.session, replace(query, end=T0 + QUARTER, end_inclusive=True))
    assert at[w.power.id] == LastEvent(T0 + QUARTER, 1.0)


def test_shapes(world):
    w = world
    w.put(w.power, w.meter, T0 + QUARTER, 2.0)
    w.put(w.power, w.meter, T0, 1.0)
    query = BeliefQuery(sensor_ids=[w.power.id, w.price.id])
    assert values_per_sensor(w.db.session, query) == {
        w.power.id: {T0: 1.0, T0 + QUARTER: 2.0},
        w.price.id: {},
    }
    series = series_per_sensor(w.db.session, query)
    assert series[w.power.id].index.tz is not None and series[w.power.id].is_monotonic_increasing
    assert series[w.power.id].tolist() == [1.0, 2.0] and series[w.price.id].empty
    assert str(series[w.price.id].index.tz) == "UTC"
    assert values_per_sensor(w.db.session, BeliefQuery(sensor_ids=[])) == {}
    assert latest_beliefs(w.db.session, BeliefQuery(sensor_ids=[w.price.id])).empty


# --- one query, three renderings -----------------------------------------------------------------


def _rows(session, sql: str, params: dict | None = None) -> list[tuple]:
    if params is None:  # literal SQL as Grafana sends it: no parameter parsing (a LIKE's % stays)
        cursor = session.connection().connection.cursor()
        try:
            cursor.execute(sql)
            return [tuple(r) for r in cursor.fetchall()]
        finally:
            cursor.close()
    return [tuple(r) for r in session.execute(text(sql), params).all()]


def test_grafana_and_bind_parameter_renderings_are_one_query_modulo_the_time_filter(world):
    w = world
    for i in range(5):  # the last event starts exactly at the end of the range
        w.put(w.power, w.meter, T0 + i * QUARTER, float(i))
        w.put(w.power, w.scheduler, T0 + i * QUARTER, 50.0 + i, horizon=-MIN)
        w.put(w.power, w.forecaster, T0 + i * QUARTER, 10.0 + i, horizon=HOUR)
    end = T0 + 4 * QUARTER
    bound = BeliefQuery(sensor_ids=[w.power.id], start=T0, end=end, exclude_source_types=["scheduler"])
    grafana = replace(bound, start=None, end=None, time_filter=GRAFANA_TIME_FILTER)

    # The text: the same lines but the one with the time filter
    plugin_lines = latest_beliefs_sql(bound, literal=True).text.splitlines()
    grafana_lines = grafana_sql(grafana).splitlines()
    assert len(plugin_lines) == len(grafana_lines)
    differing = [(a, b) for a, b in zip(plugin_lines, grafana_lines, strict=True) if a != b]
    assert len(differing) == 1
    ours, theirs = (line.strip() for line in differing[0])
    assert ours.startswith("AND tb.event_start >= CAST(") and " AND tb.event_start < CAST(" in ours
    assert theirs == "AND $__timeFilter(tb.event_start)"
    # Bind parameters and literals differ only in how values are written, not in the rows
    rendered = latest_beliefs_sql(bound)
    assert rendered.params and ":lb_start" in rendered.text
    assert _rows(w.db.session, rendered.text, rendered.params) == _rows(
        w.db.session, latest_beliefs_sql(bound, literal=True).text
    )

    # The rows: $__timeFilter is BETWEEN (end inclusive); $__timeFrom()/$__timeTo() give [start, end)
    expanded = expand(grafana_sql(grafana), start=T0, end=end)
    inclusive = latest_beliefs_sql(replace(bound, end_inclusive=True))
    assert _rows(w.db.session, expanded) == _rows(w.db.session, inclusive.text, inclusive.params)
    half_open = grafana_sql(replace(bound, start=Sql("$__timeFrom()"), end=Sql("$__timeTo()")))
    got = _rows(w.db.session, expand(half_open, start=T0, end=end))
    assert got == _rows(w.db.session, rendered.text, rendered.params)
    assert [r[2] for r in got] == [0.0, 1.0, 2.0, 3.0]  # measured, not scheduled; end excluded

    # Sensors chosen in SQL (as the dashboard does, by name) give the same rows
    by_name = replace(grafana, sensor_ids=Sql("SELECT s.id FROM sensor s WHERE s.name LIKE 'pow%'"))
    assert _rows(w.db.session, expand(grafana_sql(by_name), start=T0, end=end)) == _rows(
        w.db.session, expanded
    )


def test_the_sql_embeds_in_a_host_query_with_its_parameters(world):
    """As statistics' CTE or the rollup function would use it: Sql pieces name the host's values."""
    w = world
    for i in range(4):
        w.put(w.power, w.meter, T0 + i * QUARTER, float(i))
        w.put(w.power, w.forecaster, T0 + i * QUARTER, 10.0 + i, horizon=HOUR)
    inner = latest_beliefs_sql(
        BeliefQuery(sensor_ids=Sql("CAST(:ids AS integer[])"), start=Sql(":a - interval '15 minutes'"),
                    end=Sql(":b")),
        literal=True,
    )  # fmt: skip
    assert not inner.params
    host = f"WITH latest AS ({inner.text}) SELECT count(*), sum(event_value) FROM latest"
    count, total = w.db.session.execute(
        text(host), {"ids": [w.power.id], "a": T0 + QUARTER, "b": T0 + 3 * QUARTER}
    ).one()
    assert (count, total) == (3, 0.0 + 1.0 + 2.0)
