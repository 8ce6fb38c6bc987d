"""Generate ``grafana/dashboards/cariflex.json``, the Cariflex operations dashboard.

    .venv/bin/python grafana/build_dashboard.py          # rewrite the JSON
    .venv/bin/python grafana/build_dashboard.py --check  # exit 1 if the committed JSON is stale

Written as code so every panel's SQL comes from the same few building blocks:

- sensors are chosen by name, through ``sensor`` and the site's assets (``$site``), never by id;
- ``latest(...)``: the most recent belief per sensor and event (``DISTINCT ON``, shortest belief
  horizon first), so a revised value is counted once; measured values exclude the scheduler's
  beliefs on the same power sensors, schedules take only those;
- time series are averaged per ``$__interval`` bucket in an outer query (Grafana macros never get
  an argument with a parenthesis in it).

Sign conventions: PV power is stored production-positive; battery and EV power
consumption-positive (the sensors say so in ``consumption_is_positive``). Net import = battery +
EV power - PV production.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
OUTPUT = HERE / "dashboards" / "cariflex.json"
DATASOURCE = {"type": "grafana-postgresql-datasource", "uid": "cariflex-flexmeasures"}

SITE_SENSORS = """SELECT s.id FROM sensor s JOIN generic_asset ga ON ga.id = s.generic_asset_id
    WHERE ga.parent_asset_id = (SELECT id FROM generic_asset WHERE name = '$site' AND parent_asset_id IS NULL)
      AND ({names})"""
SCHEDULER = "SELECT id FROM data_source WHERE type = 'scheduler'"


def names(*patterns: str) -> str:
    """A sensor-name condition: exact names, or LIKE patterns with ``%`` (``_`` escaped)."""
    parts = []
    for pattern in patterns:
        if "%" in pattern:
            parts.append("s.name LIKE '" + pattern.replace("_", "\\_") + "'")
        else:
            parts.append(f"s.name = '{pattern}'")
    return " OR ".join(parts)


def latest(*patterns: str, values: str = "measured", time_filter: bool = True) -> str:
    """Latest belief per sensor and event of the site's sensors matching the patterns.

    ``values``: "measured" (no scheduler beliefs), "schedule" (only those) or "any".
    """
    source = {
        "measured": f"\n      AND tb.source_id NOT IN ({SCHEDULER})",
        "schedule": f"\n      AND tb.source_id IN ({SCHEDULER})",
        "any": "",
    }[values]
    window = "\n      AND $__timeFilter(tb.event_start)" if time_filter else ""
    return f"""SELECT DISTINCT ON (tb.sensor_id, tb.event_start) tb.sensor_id, tb.event_start, tb.event_value
    FROM timed_belief tb
    WHERE tb.sensor_id IN ({SITE_SENSORS.format(names=names(*patterns))})
      AND tb.cumulative_probability = 0.5{window}{source}
    ORDER BY tb.sensor_id, tb.event_start, tb.belief_horizon, tb.source_id DESC"""


def rollup_rows(*patterns: str) -> str:
    """The site's measured 15-minute rollups (``cariflex_rollup_15min``, kept by the plugin)."""
    return f"""FROM cariflex_rollup_15min r JOIN sensor s ON s.id = r.sensor_id
  WHERE r.sensor_id IN ({SITE_SENSORS.format(names=names(*patterns))})
    AND r.kind = 0 AND $__timeFilter(r.bucket)"""


def per_sensor(*patterns: str, values: str = "measured") -> str:
    """One series per sensor, averaged per interval. Measured values come from the 15-minute rollups
    when the interval is 15 minutes or more, else from the beliefs themselves (only one branch runs:
    PostgreSQL drops the other on its constant condition)."""
    raw = f"""SELECT $__timeGroupAlias(l.event_start, $__interval), s.name AS metric,
  avg(l.event_value) AS value
FROM (
  {latest(*patterns, values=values)}
) l JOIN sensor s ON s.id = l.sensor_id"""
    if values != "measured":
        return raw + "\nGROUP BY 1, 2\nORDER BY 1, 2"
    return f"""SELECT $__timeGroupAlias(r.bucket, $__interval), s.name AS metric, avg(r.value) AS value
{rollup_rows(*patterns)}
    AND $__interval_ms >= 900000
GROUP BY 1, 2
UNION ALL
{raw}
WHERE $__interval_ms < 900000
GROUP BY 1, 2
ORDER BY 1, 2"""


def summed(label: str, *patterns: str, value: str = "r.value") -> str:
    """Per interval: each sensor's average, summed over the sensors (from the 15-minute rollups)."""
    return f"""SELECT g.time, sum(g.value) AS "{label}"
FROM (
  SELECT $__timeGroupAlias(r.bucket, $__interval), r.sensor_id, avg({value}) AS value
  {rollup_rows(*patterns)}
  GROUP BY 1, 2
) g
GROUP BY 1
ORDER BY 1"""


NET_VALUE = "CASE WHEN s.name LIKE 'pv\\_%' THEN -r.value ELSE r.value END"
DEVICE_POWER = ("bat_%_power", "ev_%_power", "pv_%_power")

CAP = f"""SELECT $__timeGroupAlias(l.event_start, $__interval),
  min(l.event_value) / 100 * (SELECT (attributes::jsonb ->> 'capacity_kw')::float FROM generic_asset
    WHERE name = '$site' AND parent_asset_id IS NULL) AS "load-control cap"
FROM (
  {latest("load_control_signal")}
) l
GROUP BY 1
ORDER BY 1"""

SCHEDULE_VS_ACTUAL = (
    """SELECT $__timeGroupAlias(l.event_start, $__interval), l.kind AS metric, avg(l.event_value) AS value
FROM (
  SELECT DISTINCT ON (ds.type = 'scheduler', tb.event_start)
    CASE WHEN ds.type = 'scheduler' THEN 'schedule' ELSE 'actual' END AS kind, tb.event_start, tb.event_value
  FROM timed_belief tb JOIN data_source ds ON ds.id = tb.source_id
  WHERE tb.sensor_id IN ("""
    + SITE_SENSORS.format(names="s.name = '${device}_power'")
    + """)
    AND tb.cumulative_probability = 0.5
    AND $__timeFilter(tb.event_start)
  ORDER BY ds.type = 'scheduler', tb.event_start, tb.belief_horizon, tb.source_id DESC
) l
GROUP BY 1, 2
ORDER BY 1, 2"""
)

EVENTS = """SELECT e.key AS "event", e.value ->> 'signal' AS "signal", e.value ->> 'status' AS "status",
  (e.value ->> 'modification_number')::int AS "modification",
  (e.value ->> 'start')::timestamptz AS "start", (e.value ->> 'end')::timestamptz AS "end"
FROM generic_asset ga, jsonb_each(ga.attributes::jsonb -> 'openadr_events') e
WHERE ga.name = 'grid_signals'
  AND ga.parent_asset_id = (SELECT id FROM generic_asset WHERE name = '$site' AND parent_asset_id IS NULL)
  AND (e.value ->> 'start')::timestamptz < $__timeTo()
  AND (e.value ->> 'end')::timestamptz > $__timeFrom()
ORDER BY 5, 1"""

FRESHNESS = """SELECT s.name AS "sensor", last.event_start AS "last value",
  round((extract(epoch FROM now() - last.event_start) / 60)::numeric, 1) AS "age (min)"
FROM sensor s
JOIN generic_asset ga ON ga.id = s.generic_asset_id
LEFT JOIN LATERAL (
  SELECT tb.event_start FROM timed_belief tb
  WHERE tb.sensor_id = s.id AND tb.event_start <= now()
    AND tb.source_id NOT IN (SELECT id FROM data_source WHERE type = 'scheduler')
  ORDER BY tb.event_start DESC LIMIT 1
) last ON true
WHERE ga.parent_asset_id = (SELECT id FROM generic_asset WHERE name = '$site' AND parent_asset_id IS NULL)
ORDER BY 3 DESC NULLS FIRST, 1"""

DAILY_COST = f"""SELECT $__timeGroupAlias(q.slot, '1d'),
  sum(CASE WHEN q.kw > 0 THEN q.kw * cp.price ELSE q.kw * coalesce(pp.price, cp.price) END / 4 / 1000)
    AS "energy cost (EUR)"
FROM (
  SELECT r.bucket AS slot, sum({NET_VALUE}) AS kw
  {rollup_rows(*DEVICE_POWER)}
  GROUP BY 1
) q
LEFT JOIN (
  SELECT l.event_start, l.event_value AS price FROM (
    {latest("consumption_price", values="any")}
  ) l
) cp ON cp.event_start = date_trunc('hour', q.slot)
LEFT JOIN (
  SELECT l.event_start, l.event_value AS price FROM (
    {latest("production_price", values="any")}
  ) l
) pp ON pp.event_start = date_trunc('hour', q.slot)
GROUP BY 1
ORDER BY 1"""


ALERTS = f"""SELECT a.event_start AS "time", s.name AS "sensor", a.rule AS "rule",
  a.value AS "value", a.detail AS "detail"
FROM cariflex_alert a JOIN sensor s ON s.id = a.sensor_id
WHERE a.sensor_id IN ({SITE_SENSORS.format(names="true")})
  AND $__timeFilter(a.event_start)
ORDER BY a.event_start DESC, s.name
LIMIT 500"""


def pivot(columns: dict[str, str]) -> str:
    """One row per event start, one column per sensor (latest belief each), for a table panel."""
    picks = ",\n  ".join(
        f"max(CASE WHEN s.name = '{name}' THEN l.event_value END) AS \"{label}\""
        for name, label in columns.items()
    )
    return f"""SELECT l.event_start AS "time",
  {picks}
FROM (
  {latest(*columns, values="any")}
) l JOIN sensor s ON s.id = l.sensor_id
GROUP BY 1
ORDER BY 1 DESC"""


DR_VERIFICATION = pivot(
    {"dr_delivered_energy": "delivered (kWh)", "dr_delivered_share": "of the request (%)"}
)
DAILY_STATISTICS = pivot(
    {
        "site_energy_imported": "imported (kWh)",
        "site_energy_exported": "exported (kWh)",
        "site_energy_cost": "cost (EUR)",
        "site_energy_revenue": "revenue (EUR)",
        "site_co2": "CO2 (kg)",
        "site_self_consumption": "PV self-consumed (%)",
        "site_battery_share": "load from batteries (%)",
        "site_grid_share": "load from the grid (%)",
    }
)


def target(sql: str, ref: str = "A", fmt: str = "time_series") -> dict[str, Any]:
    return {
        "refId": ref,
        "datasource": DATASOURCE,
        "editorMode": "code",
        "rawQuery": True,
        "format": fmt,
        "rawSql": sql,
    }


def panel(
    pid: int,
    title: str,
    grid: tuple[int, int, int, int],
    targets: list[dict],
    unit: str,
    kind: str = "timeseries",
) -> dict[str, Any]:
    x, y, w, h = grid
    out: dict[str, Any] = {
        "id": pid,
        "type": kind,
        "title": title,
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "datasource": DATASOURCE,
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}, "tooltip": {"mode": "multi"}},
        "targets": targets,
    }
    return out


def dashboard() -> dict[str, Any]:
    panels = [
        panel(1, "PV production per site", (0, 0, 12, 8), [target(per_sensor("pv_%_power"))], "kwatt"),
        panel(2, "PV production, total", (12, 0, 12, 8), [target(summed("PV total", "pv_%_power"))], "kwatt"),
        panel(3, "Battery state of charge", (0, 8, 12, 8), [target(per_sensor("bat_%_soc"))], "kwatth"),
        panel(4, "Battery power (charging +)", (12, 8, 12, 8), [target(per_sensor("bat_%_power"))], "kwatt"),
        panel(5, "EV state of charge", (0, 16, 12, 8), [target(per_sensor("ev_%_soc"))], "kwatth"),
        panel(
            6, "EV charger power (charging +)", (12, 16, 12, 8), [target(per_sensor("ev_%_power"))], "kwatt"
        ),
        panel(
            7,
            "Fleet net import against the load-control cap",
            (0, 24, 24, 9),
            [target(summed("net import", *DEVICE_POWER, value=NET_VALUE)), target(CAP, "B")],
            "kwatt",
        ),
        panel(
            8,
            "Consumption and production prices",
            (0, 33, 12, 8),
            [target(per_sensor("consumption_price", "production_price", values="any"))],
            "currencyEUR",
        ),
        panel(
            9,
            "Load-control and demand-response signals",
            (12, 33, 12, 8),
            [target(per_sensor("load_control_signal", "demand_response_signal", values="any"))],
            "none",
        ),
        panel(10, "Irradiance", (0, 41, 8, 8), [target(per_sensor("irradiance", values="any"))], "Wm2"),
        panel(11, "Temperature", (8, 41, 8, 8), [target(per_sensor("temperature", values="any"))], "celsius"),
        panel(
            12, "Wind speed", (16, 41, 8, 8), [target(per_sensor("wind_speed", values="any"))], "velocityms"
        ),
        panel(13, "Schedule vs actual: $device", (0, 49, 24, 9), [target(SCHEDULE_VS_ACTUAL)], "kwatt"),
        panel(
            14, "OpenADR events in the range", (0, 58, 12, 8), [target(EVENTS, fmt="table")], "none", "table"
        ),
        panel(15, "Data freshness", (12, 58, 12, 8), [target(FRESHNESS, fmt="table")], "m", "table"),
        panel(16, "Daily energy cost", (0, 66, 24, 8), [target(DAILY_COST)], "currencyEUR", "barchart"),
        panel(
            17,
            "Fleet flexibility: could add / shed (kW)",
            (0, 74, 12, 8),
            [target(per_sensor("fleet_flexibility_%"))],
            "kwatt",
        ),
        panel(18, "Alerts", (12, 74, 12, 8), [target(ALERTS, fmt="table")], "none", "table"),
        panel(
            19,
            "DR verification per load-control event",
            (0, 82, 12, 8),
            [target(DR_VERIFICATION, fmt="table")],
            "none",
            "table",
        ),
        panel(
            20,
            "Daily statistics (site)",
            (12, 82, 12, 8),
            [target(DAILY_STATISTICS, fmt="table")],
            "none",
            "table",
        ),
    ]
    freshness = panels[14]["fieldConfig"]["defaults"]
    freshness["thresholds"] = {
        "mode": "absolute",
        "steps": [
            {"color": "green", "value": None},
            {"color": "orange", "value": 15},
            {"color": "red", "value": 90},
        ],
    }
    freshness["custom"] = {"cellOptions": {"type": "color-background"}}
    panels[15]["options"] = {"xField": "time", "legend": {"displayMode": "list", "placement": "bottom"}}
    return {
        "uid": "cariflex-operations",
        "title": "Cariflex operations",
        "description": "The Cariflex site: PV, batteries, EVs, grid signals, weather, schedules, events.",
        "schemaVersion": 39,
        "version": 1,
        "editable": False,
        "timezone": "America/Martinique",
        "time": {"from": "now-24h", "to": "now+12h"},
        "refresh": "1m",
        "tags": ["cariflex", "flexmeasures"],
        "annotations": {"list": []},
        "templating": {
            "list": [
                {
                    "name": "site",
                    "label": "Site",
                    "type": "query",
                    "datasource": DATASOURCE,
                    "query": "SELECT ga.name FROM generic_asset ga JOIN generic_asset_type t "
                    "ON t.id = ga.generic_asset_type_id WHERE t.name = 'site' ORDER BY 1",
                    "refresh": 1,
                    "current": {"text": "Cariflex site", "value": "Cariflex site"},
                },
                {
                    "name": "device",
                    "label": "Device",
                    "type": "query",
                    "datasource": DATASOURCE,
                    "query": "SELECT ga.name FROM generic_asset ga JOIN generic_asset_type t "
                    "ON t.id = ga.generic_asset_type_id "
                    "WHERE t.name IN ('battery', 'one-way_evse', 'two-way_evse') "
                    "AND ga.parent_asset_id = (SELECT id FROM generic_asset WHERE name = '$site' "
                    "AND parent_asset_id IS NULL) ORDER BY 1",
                    "refresh": 1,
                    "current": {"text": "bat_01", "value": "bat_01"},
                },
            ]
        },
        "panels": panels,
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2, ensure_ascii=False) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the committed JSON differs")
    args = parser.parse_args()
    text = render()
    if args.check:
        if not OUTPUT.exists() or OUTPUT.read_text(encoding="utf-8") != text:
            print(f"{OUTPUT} is stale: run python grafana/build_dashboard.py", file=sys.stderr)
            return 1
        return 0
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUTPUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
