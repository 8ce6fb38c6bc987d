"""In-process compute and save time of the fleet schedule, by fleet size.

For fleets of 1, 20 (10 batteries + 10 EVs: the Cariflex site), 50 and 100 devices, each on its own
site in one fresh database (CARIFLEX_TEST_DATABASE_URL, else 127.0.0.1:5432, else an embedded
server): 24 h at 15 min with a day/evening price curve and a 60 % load-control limit 18:00-22:00;
`compute_fleet_schedule` is run ``--repeat`` times (median reported), each run saved and committed.
"compute" is the whole run before saving (reading prices, load control and states of charge, the
flex-model, FlexMeasures' StorageScheduler, reading its results back), "save" the COPY of the
beliefs at the sensors' 1-minute resolution (1,440 per device); the commit is not counted.
For comparison, the 20 devices are also scheduled as 20 separate single-device runs (the way a
per-device trigger would), summed per round.

Prints one JSON line with the goals of issue 20 (point 4), each measured and met or not: 20 devices
<= 0.5 s compute + save, 100 devices <= 2.5 s, and the 20 single-device runs >= 15x the time of one
20-device run. A goal whose size was left out of ``--sizes`` is reported as not measured.

    .venv/bin/python bench/fleet_schedule.py [--repeat 5] [--sizes 1,20,50,100]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pandas as pd  # noqa: E402

from bench.common import Goal, flexmeasures_app, parse_args, print_goals  # noqa: E402
from cariflex.fleet import Fleet, parse_fleet  # noqa: E402

TZ = ZoneInfo("America/Martinique")


def fleet_of(devices: int) -> Fleet:
    """Half batteries, half EV chargers (one battery for a single device), site sized to match."""
    evs = devices // 2
    batteries = devices - evs
    return parse_fleet(
        {
            "site": {
                "name": f"Bench site {devices}",
                "account": "Bench",
                "latitude": 14.6,
                "longitude": -61.0,
                "timezone": "America/Martinique",
                "capacity": f"{30 * devices} kW",
            },
            "weather_station": {"name": "weather_station", "latitude": 14.6, "longitude": -61.0},
            "grid_signals": {"name": "grid_signals"},
            "pv": [],
            "batteries": [
                {
                    "name": f"bat_{i:03d}",
                    "capacity": "100 kWh",
                    "power": "50 kW",
                    "soc_min": "10 %",
                    "soc_max": "95 %",
                    "roundtrip_efficiency": "90 %",
                }
                for i in range(1, batteries + 1)
            ],
            "ev_chargers": [
                {
                    "name": f"ev_{i:03d}",
                    "power": "22 kW",
                    "battery_capacity": "60 kWh",
                    "arrival": "08:00" if i % 2 else "18:00",
                    "departure": "17:00" if i % 2 else "07:00",
                    "departure_soc": "80 %",
                }
                for i in range(1, evs + 1)
            ],
        },
        f"<bench fleet of {devices}>",
    )


def price(hour: int) -> float:
    return 0.30 if 18 <= hour < 21 else (0.08 if hour < 6 else 0.16)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--sizes", default="1,20,50,100")
    args = parse_args(parser, repeat=1, sizes="20")
    sizes = [int(s) for s in args.sizes.split(",")]
    logging.disable(logging.WARNING)

    with flexmeasures_app():
        results = run(sizes, args.repeat)
    print_goals("fleet_schedule", results, goals(results))


def goals(results: dict) -> list[Goal]:
    """Issue 20, point 4: 20 devices <= 0.5 s, 100 devices <= 2.5 s (compute + save), and one fleet
    run >= 15x faster than the same 20 devices as single-device runs."""
    twenty = results.get("20", {}).get("total_s")
    hundred = results.get("100", {}).get("total_s")
    singles = results.get("20_single_device_runs", {}).get("total_s")
    ratio = round(singles / twenty, 2) if singles and twenty else None
    return [
        Goal("20_devices_compute_plus_save_s", 0.5, twenty),
        Goal("100_devices_compute_plus_save_s", 2.5, hundred),
        Goal("20_single_runs_over_one_fleet_run", 15, ratio, at_least=True),
    ]


def run(sizes: list[int], repeat: int) -> dict:
    """Inside ``bench.common.flexmeasures_app``'s app context, on its fresh database."""
    from flexmeasures.data import db

    from flexmeasures_cariflex.data.services.fleet_schedule import compute_fleet_schedule
    from flexmeasures_cariflex.data.services.openadr_ingest import ingest_event
    from flexmeasures_cariflex.data.services.site_setup import setup_site

    results: dict = {}
    start = pd.Timestamp(datetime.now(TZ).date() + timedelta(days=2), tz=TZ)
    for size in sizes:
        fleet = fleet_of(size)
        setup_site(fleet)
        db.session.commit()
        ingest_event(price_event(start), fleet)
        ingest_event(load_control_event(start), fleet)
        db.session.commit()
        results[str(size)] = measure(lambda f=fleet: compute_fleet_schedule(f, start), repeat)
        if size == 20:
            results["20_single_device_runs"] = measure_singles(fleet, start, repeat)
    return results


def measure(run_once, repeat: int) -> dict:
    from flexmeasures.data import db

    compute, save, beliefs = [], [], 0
    for _ in range(repeat):
        result = run_once()
        assert result.ok, result.infeasible
        db.session.commit()
        compute.append(result.compute_seconds)
        save.append(result.save_seconds)
        beliefs = result.beliefs_saved
    return {
        "compute_s": round(statistics.median(compute), 3),
        "save_s": round(statistics.median(save), 3),
        "total_s": round(statistics.median(c + s for c, s in zip(compute, save, strict=True)), 3),
        "beliefs_per_run": beliefs,
    }


def measure_singles(fleet: Fleet, start: pd.Timestamp, repeat: int) -> dict:
    """The same 20 devices, each scheduled alone (no shared site limit), summed per round."""
    from dataclasses import replace

    from flexmeasures.data import db

    from flexmeasures_cariflex.data.services.fleet_schedule import compute_fleet_schedule

    rounds = []
    for _ in range(repeat):
        compute = save = 0.0
        for device in (*fleet.batteries, *fleet.ev_chargers):
            is_battery = device in fleet.batteries
            single = replace(
                fleet,
                batteries=[device] if is_battery else [],
                ev_chargers=[] if is_battery else [device],
            )
            result = compute_fleet_schedule(single, start)
            assert result.ok, result.infeasible
            db.session.commit()
            compute += result.compute_seconds
            save += result.save_seconds
        rounds.append((compute, save))
    return {
        "compute_s": round(statistics.median(c for c, _ in rounds), 3),
        "save_s": round(statistics.median(s for _, s in rounds), 3),
        "total_s": round(statistics.median(c + s for c, s in rounds), 3),
    }


def price_event(start: pd.Timestamp) -> dict:
    return openadr_event("bench-prices", "ELECTRICITY_PRICE", start, [price(h) for h in range(24)], "PT1H")


def load_control_event(start: pd.Timestamp) -> dict:
    return openadr_event("bench-lc", "LOAD_CONTROL", start + pd.Timedelta(hours=18), [0.6], "PT4H")


def openadr_event(event_id: str, signal: str, start: pd.Timestamp, values: list[float], step: str) -> dict:
    """An event as the VEN bridge posts it (ven_bridge.policy's normalised form)."""
    duration = pd.Timedelta(step)
    return {
        "event_id": event_id,
        "modification_number": 0,
        "status": "far",
        "modification_date_time": (pd.Timestamp.now(tz="UTC") - pd.Timedelta(hours=1)).isoformat(),
        "signal_name": signal,
        "signal_type": "price" if signal == "ELECTRICITY_PRICE" else "x-loadControlCapacity",
        "item_base": {"name": "currencyPerKWh", "unit": "EUR", "scale": "none"}
        if signal == "ELECTRICITY_PRICE"
        else None,
        "intervals": [
            {"start": (start + i * duration).isoformat(), "duration": step, "value": value}
            for i, value in enumerate(values)
        ],
    }


if __name__ == "__main__":
    main()
