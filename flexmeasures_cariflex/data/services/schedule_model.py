"""The flex-model and flex-context of the fleet for FlexMeasures' ``StorageScheduler``.

One list flex-model entry per device power sensor (batteries, EV chargers with their presence,
departure needs and driving use), each starting from the device's stored flex-model, and one
flex-context, starting from the site's stored one, with the prices and the site's import capacity,
which the whole fleet shares. Built from ``schedule_inputs.ScheduleInputs``; no I/O
beyond the states of charge at the start (one query for the fleet).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd

from cariflex.fleet import Battery, EVCharger, Fleet
from flexmeasures_cariflex.data.services.schedule_inputs import (
    ScheduleInputs,
    latest_socs,
    soc_at_start,
)

EV_DEPARTURE_MARGIN_KWH = 0.5
# FlexMeasures' default tie-breakers add a cost term per device, doubling the solve time for 20
# devices (1.4 s vs 0.7 s); ``_tie_broken`` prices do the same job at no cost.
NO_TIE_BREAKERS = {"prefer-charging-sooner": False, "prefer-curtailing-later": False}
TIE_BREAK = 1e-4  # price units per period: 0.01 EUR/MWh over a day, far below any real price step


@dataclass
class FleetModel:
    flex_model: list[dict]
    flex_context: dict
    # per device: (its description, state of charge at the start in kWh, round-trip efficiency %)
    kinds: dict[str, tuple[Battery | EVCharger, float, float]]
    usage: dict[str, pd.Series] = field(default_factory=dict)  # kW driven away per EV and period

    def with_soft_minima(self) -> FleetModel:
        """Soft SoC minima, without driving use: for a problem whose hard minima are infeasible.

        A car that cannot leave with what it needs cannot use that much on the road either (it would
        end below empty: infeasible again)."""
        return FleetModel(
            [{k: v for k, v in entry.items() if k != "soc-usage"} for entry in self.flex_model],
            {**self.flex_context, "relax-soc-constraints": True},
            self.kinds,
        )


def end_target_kwh(soc0: float, soc_min: float, soc_max: float) -> float:
    """The least energy a battery must hold at the horizon's end: what it holds at the start,
    within its limits. A target rather than a value per kWh: it needs no guess of tomorrow's
    price, and a battery still cycles within the horizon whenever prices pay for it."""
    return min(max(soc0, soc_min), soc_max)


def _iso(ts: pd.Timestamp) -> str:
    return ts.isoformat()


def _segments(series: pd.Series, step: timedelta, unit: str) -> list[dict]:
    """Merge equal consecutive values into [{start, end, value}] segments (FlexMeasures time series)."""
    segments: list[dict] = []
    for slot, value in series.items():
        if segments and segments[-1]["_value"] == value and segments[-1]["_end"] == slot:
            segments[-1]["_end"] = slot + step
            continue
        segments.append({"_start": slot, "_end": slot + step, "_value": value})
    return [
        {"start": _iso(s["_start"]), "end": _iso(s["_end"]), "value": f"{s['_value']:g} {unit}"}
        for s in segments
    ]


def _ev_presence(ev: EVCharger, grid: pd.DatetimeIndex, tz: ZoneInfo) -> pd.Series:
    """True for the periods the car is plugged in (local arrival <= t < departure, wrapping midnight)."""
    local = grid.tz_convert(tz)
    minutes = local.hour * 60 + local.minute
    arrive = ev.arrival.hour * 60 + ev.arrival.minute
    depart = ev.departure.hour * 60 + ev.departure.minute
    if arrive < depart:
        present = (minutes >= arrive) & (minutes < depart)
    else:
        present = (minutes >= arrive) | (minutes < depart)
    return pd.Series(present, index=grid)


def ev_departures(ev: EVCharger, start: pd.Timestamp, end: pd.Timestamp, tz: ZoneInfo) -> list[pd.Timestamp]:
    local_start = start.tz_convert(tz)
    day = local_start.normalize() - pd.Timedelta(days=1)
    found = []
    while day.tz_convert("UTC") < end:
        moment = pd.Timestamp(datetime.combine(day.date(), ev.departure), tz=tz).tz_convert("UTC")
        if start < moment <= end:
            found.append(moment)
        day = day + pd.Timedelta(days=1)
    return found


def _tie_broken(prices: pd.Series, grid: pd.DatetimeIndex, step: timedelta, unit: str) -> list[dict]:
    """The prices per period, each a little (TIE_BREAK per period) dearer than the one before.

    Of equally priced periods the earliest is then the cheapest to charge in: batteries and EVs
    charge as soon as the price allows, not in an arbitrary one of several equal periods, and a
    re-plan acts in the current period. FlexMeasures' own ``prefer-charging-sooner`` does the same
    with a cost term per device, which doubles the solve time for 20 devices.
    """
    per_period = prices.reindex(grid, method="ffill") + TIE_BREAK * np.arange(len(grid))
    return _segments(per_period.round(9), step, unit)


def _driving_usage(
    ev: EVCharger, departures: list[pd.Timestamp], present: pd.Series, leaves_with: float
) -> pd.Series:
    """kW drawn from the car while it is away, so that it comes back with its usual arrival energy.

    What it uses on the road is taken as what it leaves with minus its arrival energy, spread over
    the whole time away (of which the horizon may hold only a part).
    """
    drawn = pd.Series(0.0, index=present.index)
    away_hours = 24 - ev.plugged_hours
    used = max(0.0, leaves_with - ev.arrival_kwh)
    if not used or not away_hours:
        return drawn
    for moment in departures:
        later = present.index >= moment
        back = present[later & present.to_numpy()]
        until = back.index[0] if len(back) else present.index[-1] + (present.index[1] - present.index[0])
        drawn[(present.index >= moment) & (present.index < until)] = used / away_hours
    return drawn


def build_model(fleet: Fleet, inputs: ScheduleInputs, notes: list) -> FleetModel:
    """The flex-model (one entry per device) and the flex-context (prices, site capacity).

    The limits come from FlexMeasures' stored fields (``inputs.flex``: the site's flex-context,
    each device's flex-model, as setup wrote them from the fleet file or an operator changed them
    in FlexMeasures); what changes per run is added here: the prices per period (tie-broken), the
    import capacity under load control, each device's state of charge at the start, the end-of-
    horizon target, and an EV's presence, departures and driving use from its timetable.
    """
    start_utc, end_utc, grid, tz, resolution = (
        inputs.start,
        inputs.end,
        inputs.grid,
        inputs.tz,
        inputs.resolution,
    )
    sensors, flex = inputs.sensors, inputs.flex
    consumption_prices = _tie_broken(
        inputs.consumption_price, grid, resolution, inputs.consumption_price_unit
    )
    production_prices = (
        None
        if inputs.production_price is None
        else _tie_broken(inputs.production_price, grid, resolution, inputs.production_price_unit)
    )
    capacity_kw = inputs.capacity_kw
    flex_model: list[dict] = []
    kinds: dict[str, tuple[Battery | EVCharger, float, float]] = {}
    # every device's state of charge in one query, not one per device
    soc_sensors = {d.name: sensors.get(f"{d.name}_soc") for d in (*fleet.batteries, *fleet.ev_chargers)}
    socs = latest_socs([s for s in soc_sensors.values() if s is not None], inputs.soc_at)
    for bat in fleet.batteries:
        soc0 = soc_at_start(
            soc_sensors[bat.name],
            bat.capacity_kwh,
            inputs.soc_at,
            bat.name,
            notes,
            fresh=inputs.soc_fresh,
            known=socs,
        )
        stored = flex.models[bat.name]
        soc_min = flex.quantity(bat.name, "soc-min", "kWh")
        soc_max = flex.quantity(bat.name, "soc-max", "kWh")
        rte = flex.quantity(bat.name, "roundtrip-efficiency", "%")
        kinds[bat.name] = (bat, soc0, rte)
        flex_model.append(
            {
                **stored,
                "sensor": sensors[f"{bat.name}_power"].id,
                "soc-at-start": f"{soc0:g} kWh",
                # The end of the horizon is not the end of the world: the battery ends with at
                # least what it started with, so no plan sells stored energy at the last cheap
                # hours for nothing (the next plan, 15 minutes later, moves this target along).
                "soc-minima": [
                    {"datetime": _iso(end_utc), "value": f"{end_target_kwh(soc0, soc_min, soc_max):g} kWh"}
                ],
                **NO_TIE_BREAKERS,
            }
        )
    usage: dict[str, pd.Series] = {}
    for ev in fleet.ev_chargers:
        stored = flex.models[ev.name]
        cap = flex.quantity(ev.name, "soc-max", "kWh")
        power_kw = flex.quantity(ev.name, "power-capacity", "kW")
        rte = flex.quantity(ev.name, "roundtrip-efficiency", "%")
        one_way = "production-capacity" in stored and flex.quantity(ev.name, "production-capacity", "kW") == 0
        present = _ev_presence(ev, grid, tz)
        if present.iloc[0]:
            soc0 = soc_at_start(
                soc_sensors[ev.name],
                ev.battery_capacity_kwh,
                inputs.soc_at,
                ev.name,
                notes,
                fresh=inputs.soc_fresh,
                known=socs,
            )
        else:
            soc0 = ev.arrival_kwh  # away now: the car comes back with what it usually brings
        kinds[ev.name] = (ev, soc0, rte)
        available = _segments(present.astype(float) * power_kw, resolution, "kW")
        departures = ev_departures(ev, start_utc, end_utc, tz)
        # the plan aims a little above the need: executing it through FRBC instructions (a charger's
        # 4.14 kW minimum met by duty cycling, a re-plan's fresh start) may fall short by a few Wh
        aim = min(cap, ev.departure_need_kwh + EV_DEPARTURE_MARGIN_KWH)
        minima = [{"datetime": _iso(moment), "value": f"{aim:g} kWh"} for moment in departures]
        entry = {
            **stored,
            "sensor": sensors[f"{ev.name}_power"].id,
            "soc-at-start": f"{soc0:g} kWh",
            # a car that arrives below the usual minimum is not asked to be above it at once
            "soc-min": f"{min(flex.quantity(ev.name, 'soc-min', 'kWh'), soc0):g} kWh",
            "consumption-capacity": available,
            "production-capacity": "0 kW" if one_way else available,
            **NO_TIE_BREAKERS,
        }
        if minima:
            entry["soc-minima"] = minima
            # ... and not more: a car comes back with its usual arrival energy whatever it left
            # with, while the flex-model would carry any surplus through the trip (departure −
            # driving use) and count on it the next day, charging that much less then. (Above the
            # need at the first departure only if it already holds more now.)
            entry["soc-maxima"] = [
                {"datetime": item["datetime"], "value": f"{max(aim, soc0) if i == 0 else aim:g} kWh"}
                for i, item in enumerate(minima)
            ]
        driving = _driving_usage(ev, departures, present, aim)
        if driving.any():
            usage[ev.name] = driving
            entry["soc-usage"] = [_segments(driving, resolution, "kW")]
        flex_model.append(entry)

    flex_context = {
        **flex.context,
        "consumption-price": consumption_prices,
        "site-consumption-capacity": _segments(capacity_kw, resolution, "kW"),
        "site-production-capacity": f"{flex.context_quantity('site-production-capacity', 'kW'):g} kW",
        # PV and the base load as inflexible devices (as stored): the site capacities (and a
        # load-control cap) then hold for the net import at the connection, and PV surplus is
        # there to be stored.
        "inflexible-production": [{"sensor": i} for i in inputs.inflexible_production],
        "inflexible-consumption": [{"sensor": i} for i in inputs.inflexible_consumption],
    }
    # A production price that does not cover the horizon: the consumption price is used for
    # production too (given explicitly: FlexMeasures would merge the stored sensor back in).
    flex_context["production-price"] = consumption_prices if production_prices is None else production_prices
    for key in ("inflexible-production", "inflexible-consumption"):
        if not flex_context[key]:
            del flex_context[key]
    return FleetModel(flex_model, flex_context, kinds, usage)
