"""Energy statistics for a device, a group or the site, per day in the site's local time.

What people ask: what did energy cost today, how much did we inject this month, what was this
year's consumption and CO2 footprint, did the batteries or the grid cover the load.

Method (documented for the people who check the numbers):

- Input is the latest belief per event (``rollups.py``): a revised reading counts once,
  scheduler beliefs are left out, and readings outside their sensor's physical bounds never get
  there (``alerts.py``). Energy counts the minutes actually measured: Σ power x the reading's
  duration (1/60 h for a 1-minute reading), so a quarter-hour with two 1-minute readings of
  5.97 kW holds 0.199 kWh, not the 1.49 kWh of a mean scaled to 15 minutes. Whole quarter-hours
  come from the rollup's ``energy``; the quarter-hour in progress counts the readings whose minute
  has ended by ``now``, read from the beliefs themselves (the rollup also holds forecasts for the
  minutes still to come). Power is taken consumption-positive (PV production counts negative).
- Flows are netted per 15-minute period, the settlement period of the grid: the site imports
  ``max(0, Σ energy)`` and exports ``max(0, -Σ energy)`` in each period. A device or a group
  consumes the positive and injects the negative part of each of its devices' energy.
- Cost = Σ energy consumed x the consumption price of the period's hour; revenue = Σ energy
  injected x the production price (EUR/MWh). Periods without a price add no money and are
  counted in ``periods_without_price``.
- CO2 = Σ energy consumed (site: imported) x the grid carbon intensity of the hour
  (``grid_carbon_intensity``, gCO2/kWh; where it has no value, ``CARIFLEX_CARBON_INTENSITY``,
  default 525 g/kWh, Martinique 2022). PV and battery energy count as free of emissions.
- Self-consumption (site) = the share of PV production not exported; PV is taken to be exported
  first, before battery discharge.
- Load coverage (site): the load is what the EV chargers draw. PV covers it first, then battery
  discharge, then the grid; ``battery_share`` and ``grid_share`` are the parts of the load each
  covered (the rest is PV).
- A day is 00:00-24:00 in the site's timezone (America/Martinique, UTC-4).
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time
from typing import Any
from zoneinfo import ZoneInfo

import pandas as pd
from flexmeasures.data import db
from flexmeasures.data.models.time_series import Sensor
from sqlalchemy import text

from cariflex import inputs
from cariflex.fleet import Fleet
from cariflex.inputs import Period
from cariflex.site_model import DAILY_STATISTICS, SOURCE_INSIGHTS
from flexmeasures_cariflex.data.queries.latest_beliefs import BeliefQuery, Sql, latest_beliefs_sql
from flexmeasures_cariflex.data.queries.site import ensure_source, site_sensors
from flexmeasures_cariflex.data.services.beliefs import insert_beliefs
from flexmeasures_cariflex.data.services.carbon import CarbonError, default_intensity
from flexmeasures_cariflex.data.services.rollups import TABLE as ROLLUP

GROUPS = ("pv", "batteries", "evs")
QUARTER_S = 900


class StatisticsError(ValueError):
    """A request that cannot be answered (unknown device, bad period); nothing was written."""


REFUSED = (StatisticsError, CarbonError)


def parse_period(day: str | None = None, month: str | None = None, year: str | None = None) -> Period:
    """One of --day YYYY-MM-DD, --month YYYY-MM, --year YYYY (``cariflex.inputs.period``)."""
    try:
        return inputs.period(day, month, year)
    except inputs.InputError as exc:
        raise StatisticsError(str(exc)) from None


def _roles(fleet: Fleet, device: str | None, group: str | None) -> tuple[str, dict[str, str]]:
    """(scope label, power sensor name -> role) for the requested scope."""
    everyone = {f"{p.name}_power": "pv" for p in fleet.pv}
    everyone |= {f"{b.name}_power": "battery" for b in fleet.batteries}
    everyone |= {f"{e.name}_power": "ev" for e in fleet.ev_chargers}
    if device and group:
        raise StatisticsError("give a device or a group, not both")
    if device:
        name = f"{device}_power"
        if name not in everyone:
            known = ", ".join(d.name for d in fleet.devices)
            raise StatisticsError(f"device {device!r} is not in the fleet (known: {known})")
        return f"device {device}", {name: everyone[name]}
    if group:
        role = {"pv": "pv", "batteries": "battery", "evs": "ev"}.get(group)
        if role is None:
            raise StatisticsError(f"group {group!r} is not one of {', '.join(GROUPS)}")
        return f"group {group}", {n: r for n, r in everyone.items() if r == role}
    return "site", everyone


# The latest hourly buy/sell price and carbon intensity per hour: the one reader's definition
# (data/queries/latest_beliefs.py), rendered with this query's parameters.
_HOURLY = latest_beliefs_sql(
    BeliefQuery(
        sensor_ids=Sql("ARRAY[:buy, :sell, :carbon]"),
        start=Sql(":start - interval '1 hour'"),
        end=Sql(":end"),
    ),
    literal=True,
).text

# The quarter-hour in progress: the latest measured beliefs of [:live_from, :live_to), as the
# rollup would pick them (same reader, same bounds), of the minutes that have ended by :now.
_LIVE = latest_beliefs_sql(
    BeliefQuery(
        sensor_ids=Sql("CAST(:ids AS integer[])"),
        start=Sql(":live_from"),
        end=Sql(":live_to"),
        exclude_source_types=["scheduler"],
    ),
    literal=True,
).text

_QUERY = f"""
WITH roles AS (
    SELECT * FROM unnest(CAST(:ids AS integer[]), CAST(:roles AS text[]), CAST(:signs AS float8[]))
        AS r(sensor_id, role, sign)
), energies AS (
    SELECT r.sensor_id, r.bucket, r.energy
    FROM {ROLLUP} r
    WHERE r.sensor_id = ANY (CAST(:ids AS integer[])) AND r.kind = 0
      AND r.bucket >= :start AND r.bucket < :live_from
    UNION ALL
    SELECT l.sensor_id, to_timestamp(floor(extract(epoch FROM l.event_start) / {QUARTER_S}) * {QUARTER_S}),
        sum(l.event_value * extract(epoch FROM s.event_resolution) / 3600)
    FROM (
{_LIVE}
    ) l
    JOIN sensor s ON s.id = l.sensor_id
    LEFT JOIN cariflex_sensor_bounds b ON b.sensor_id = l.sensor_id
    WHERE l.event_start + s.event_resolution <= :now
      AND (b.sensor_id IS NULL OR l.event_value BETWEEN b.min_value - 1e-6 AND b.max_value + 1e-6)
    GROUP BY 1, 2
), per AS (
    SELECT r.bucket,
        -- the hour of the period by epoch arithmetic: independent of the session's time zone
        to_timestamp(floor(extract(epoch FROM r.bucket) / 3600) * 3600) AS hour,
        sum(ro.sign * r.energy) AS net,
        sum(greatest(ro.sign * r.energy, 0)) AS consumed,
        sum(greatest(-ro.sign * r.energy, 0)) AS injected,
        sum(CASE WHEN ro.role = 'pv' THEN -ro.sign * r.energy ELSE 0 END) AS pv,
        sum(CASE WHEN ro.role = 'battery' THEN greatest(-ro.sign * r.energy, 0) ELSE 0 END) AS bat_out,
        sum(CASE WHEN ro.role = 'ev' THEN greatest(ro.sign * r.energy, 0) ELSE 0 END) AS load
    FROM energies r JOIN roles ro ON ro.sensor_id = r.sensor_id
    GROUP BY r.bucket, 2
), hourly AS (
{_HOURLY}
), flows AS (
    SELECT p.bucket,
        CASE WHEN :site THEN greatest(p.net, 0) ELSE p.consumed END AS e_in,
        CASE WHEN :site THEN greatest(-p.net, 0) ELSE p.injected END AS e_out,
        greatest(p.pv, 0) AS pv,
        least(greatest(p.pv, 0), greatest(-p.net, 0)) AS pv_exported,
        p.bat_out, p.load,
        buy.event_value AS buy, sell.event_value AS sell,
        coalesce(carbon.event_value, :carbon_default) AS carbon
    FROM per p
    LEFT JOIN hourly buy ON buy.sensor_id = :buy AND buy.event_start = p.hour
    LEFT JOIN hourly sell ON sell.sensor_id = :sell AND sell.event_start = p.hour
    LEFT JOIN hourly carbon
        ON carbon.sensor_id = :carbon AND carbon.event_start = p.hour
), covered AS (
    SELECT *, least(pv, load) AS pv_to_load,
        least(bat_out, load - least(pv, load)) AS bat_to_load
    FROM flows
)
SELECT (bucket AT TIME ZONE :tz)::date AS day,
    count(*) AS periods,
    sum(e_in) AS consumed_kwh,
    sum(e_out) AS injected_kwh,
    sum(e_in * buy) / 1000 AS cost_eur,
    sum(e_out * sell) / 1000 AS revenue_eur,
    count(*) FILTER (WHERE (e_in > 0 AND buy IS NULL) OR (e_out > 0 AND sell IS NULL))
        AS periods_without_price,
    sum(e_in * carbon) / 1000 AS co2_kg,
    sum(pv) AS pv_kwh,
    sum(pv - pv_exported) AS pv_self_kwh,
    sum(load) AS load_kwh,
    sum(bat_to_load) AS battery_to_load_kwh,
    sum(load - pv_to_load - bat_to_load) AS grid_to_load_kwh
FROM covered
GROUP BY 1
ORDER BY 1
"""

SUMMED = (
    "periods",
    "consumed_kwh",
    "injected_kwh",
    "cost_eur",
    "revenue_eur",
    "periods_without_price",
    "co2_kg",
    "pv_kwh",
    "pv_self_kwh",
    "load_kwh",
    "battery_to_load_kwh",
    "grid_to_load_kwh",
)


def _figures(row: dict[str, Any], site: bool) -> dict[str, Any]:
    """Rounded figures a person reads: kWh to the Wh, EUR to the cent, CO2 to the gram."""

    def pct(part: float, whole: float) -> float | None:
        return round(100 * part / whole, 2) if whole > 1e-9 else None

    out = {
        "consumed_kwh": round(row["consumed_kwh"] or 0.0, 3),
        "injected_kwh": round(row["injected_kwh"] or 0.0, 3),
        "cost_eur": round(row["cost_eur"] or 0.0, 2),
        "revenue_eur": round(row["revenue_eur"] or 0.0, 2),
        "co2_kg": round(row["co2_kg"] or 0.0, 3),
        "periods": int(row["periods"] or 0),
        "periods_without_price": int(row["periods_without_price"] or 0),
    }
    if site:
        out |= {
            "pv_production_kwh": round(row["pv_kwh"] or 0.0, 3),
            "load_kwh": round(row["load_kwh"] or 0.0, 3),
            "self_consumption_pct": pct(row["pv_self_kwh"] or 0.0, row["pv_kwh"] or 0.0),
            "battery_share_pct": pct(row["battery_to_load_kwh"] or 0.0, row["load_kwh"] or 0.0),
            "grid_share_pct": pct(row["grid_to_load_kwh"] or 0.0, row["load_kwh"] or 0.0),
        }
    return out


def statistics(
    fleet: Fleet,
    period: Period,
    *,
    device: str | None = None,
    group: str | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """The figures per local day and in total for the scope (default the whole site).

    Only readings whose period has ended by ``now`` count: PV power is also stored as a forecast
    ahead of time, and a forecast is not energy anybody used or sold (yet). The quarter-hour in
    progress counts with what was measured of it so far."""
    scope, roles = _roles(fleet, device, group)
    sensors = site_sensors(fleet)
    missing = [
        n
        for n in (*roles, "consumption_price", "production_price", "grid_carbon_intensity")
        if n not in sensors
    ]
    if missing:
        raise StatisticsError(f"sensors {', '.join(missing)} missing; run `flexmeasures cariflex setup`")
    tz = ZoneInfo(fleet.site.timezone)
    start, end = period.bounds(tz)
    ids = [sensors[n].id for n in roles]
    signs = [1.0 if (sensors[n].attributes or {}).get("consumption_is_positive") else -1.0 for n in roles]
    site = scope == "site"
    now = now or datetime.now(UTC)
    # whole quarter-hours [start, live_from) from the rollup, the one in progress [live_from, live_to)
    # from the beliefs; both empty outside the period
    current = datetime.fromtimestamp(now.timestamp() // QUARTER_S * QUARTER_S, UTC)
    live_from = min(max(current, start), end)
    live_to = min(max(now, live_from), end)
    rows = db.session.execute(
        text(_QUERY),
        {
            "ids": ids,
            "roles": list(roles.values()),
            "signs": signs,
            "start": start,
            "end": end,
            "live_from": live_from,
            "live_to": live_to,
            "now": now,
            "buy": sensors["consumption_price"].id,
            "sell": sensors["production_price"].id,
            "carbon": sensors["grid_carbon_intensity"].id,
            "carbon_default": default_intensity(),
            "site": site,
            "tz": fleet.site.timezone,
        },
    ).mappings()
    days = {row["day"]: dict(row) for row in rows}
    total = {k: sum(float(d[k] or 0.0) for d in days.values()) for k in SUMMED}
    return {
        "scope": scope,
        "period": period.label,
        "timezone": fleet.site.timezone,
        "start": start.isoformat(),
        "end": end.isoformat(),
        "total": _figures(total, site),
        "days": [{"date": day.isoformat(), **_figures(row, site)} for day, row in sorted(days.items())],
    }


def store_daily(fleet: Fleet, result: dict[str, Any], now: datetime | None = None) -> int:
    """Write a site result's daily figures to the daily statistics sensors (caller commits)."""
    if result["scope"] != "site":
        raise StatisticsError("only site statistics are stored as sensors")
    sensors = site_sensors(fleet)
    tz = ZoneInfo(fleet.site.timezone)
    values: dict[Sensor, pd.Series] = {}
    for sensor_name, (figure, _) in DAILY_STATISTICS.items():
        if sensor_name not in sensors:
            raise StatisticsError(f"sensor {sensor_name} missing; run `flexmeasures cariflex setup`")
        points = {
            pd.Timestamp(datetime.combine(date.fromisoformat(d["date"]), time(0), tz)): d[figure]
            for d in result["days"]
            if d[figure] is not None
        }
        values[sensors[sensor_name]] = pd.Series(points, dtype=float)
    return insert_beliefs(values, ensure_source(*SOURCE_INSIGHTS), now or datetime.now(UTC))
