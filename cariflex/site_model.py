"""The Cariflex site model: which assets and sensors a fleet becomes in FlexMeasures.

This is the only place that knows sensor names, units, resolutions and sign conventions
(ARCHITECTURE.md, "Site model"). Setup creates exactly these; other components resolve sensors
by the names made here (``pv_01_power``, ``bat_01_soc``, ...), never by id.

Sign convention, decided once per sensor and stored as FlexMeasures' own sensor attribute
``consumption_is_positive``:
- battery and EV power: consumption (charging) positive, as in S2 and in FlexMeasures' schedules;
- PV power: production positive, as a PV meter reads;
- the site's own consumption (``site_load``, base load): consumption positive.

The site's net import at the connection = base load + batteries + EV chargers - PV.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any

from cariflex.fleet import EV_CHARGE_EFFICIENCY, Battery, EVCharger, Fleet, as_dict

ONE_SECOND = timedelta(seconds=1)
ONE_MINUTE = timedelta(minutes=1)
QUARTER = timedelta(minutes=15)
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)

# Asset type names as FlexMeasures knows them (its StorageScheduler treats *_evse as storage).
TYPE_SITE = "site"
TYPE_PV = "solar"
TYPE_BATTERY = "battery"
TYPE_EV_ONE_WAY = "one-way_evse"
TYPE_EV_TWO_WAY = "two-way_evse"
TYPE_WEATHER = "weather station"
TYPE_GRID_SIGNALS = "grid signals"
TYPE_INSIGHTS = "insights"
TYPE_LOAD = "building"
SITE_LOAD = "site_load"  # the asset and its one sensor
INSIGHTS_ASSET = "insights"

# Data sources other components write as (setup creates them so the UI can name them).
SOURCE_SIMULATOR = ("Simulator", "demo script")
SOURCE_OPEN_METEO = ("Open-Meteo", "forecaster")
SOURCE_VTN = ("OpenADR VTN", "gateway")
SOURCE_INSIGHTS = ("Cariflex insights", "reporter")
SOURCE_FORECASTER = ("Cariflex forecaster", "forecaster")
DATA_SOURCES = (SOURCE_SIMULATOR, SOURCE_OPEN_METEO, SOURCE_VTN, SOURCE_INSIGHTS, SOURCE_FORECASTER)

# Energy prices any edge accepts (operator input at the VTN, events at the plugin), in EUR/MWh.
# Wholesale markets cap far inside this (EU day-ahead -500..4,000 EUR/MWh): anything outside is a
# typing or unit error, and 1e308 EUR/kWh would be stored as inf.
PRICE_RANGE_EUR_PER_MWH = (-10_000.0, 100_000.0)

# The insights asset's sensors (flexmeasures_cariflex/data/services: statistics.py,
# flexibility.py, dr_verification.py), each with the figure of the result it holds.
DAILY_STATISTICS = {  # daily values in the site's local days
    "site_energy_imported": ("consumed_kwh", "kWh"),
    "site_energy_exported": ("injected_kwh", "kWh"),
    "site_energy_cost": ("cost_eur", "EUR"),
    "site_energy_revenue": ("revenue_eur", "EUR"),
    "site_co2": ("co2_kg", "kg"),
    "site_self_consumption": ("self_consumption_pct", "%"),
    "site_battery_share": ("battery_share_pct", "%"),
    "site_grid_share": ("grid_share_pct", "%"),
}
FLEXIBILITY_SENSORS = {"fleet_flexibility_up": "up_kw", "fleet_flexibility_down": "down_kw"}
DR_SENSORS = {"dr_delivered_energy": ("delivered_kwh", "kWh"), "dr_delivered_share": ("delivered_pct", "%")}


@dataclass(frozen=True)
class SensorSpec:
    name: str
    unit: str
    resolution: timedelta
    attributes: dict[str, Any] = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class AssetSpec:
    name: str
    asset_type: str
    latitude: float
    longitude: float
    attributes: dict[str, Any] = field(default_factory=dict, hash=False)
    sensors: tuple[SensorSpec, ...] = ()


def _power(name: str, consumption_is_positive: bool) -> SensorSpec:
    # Device limits are not sensor attributes: FlexMeasures 1.0.1 moves the legacy
    # "capacity_in_mw" into the asset's flex-model; limits live in the fleet (asset attributes).
    return SensorSpec(f"{name}_power", "kW", ONE_MINUTE, {"consumption_is_positive": consumption_is_positive})


def meter_sensor(name: str) -> str:
    """The 1-second sensor a metered point's readings arrive on over MQTT (``meter_ingest``)."""
    return f"{name}_meter"


def _meter(name: str, consumption_is_positive: bool, minutes: str) -> SensorSpec:
    # Raw readings at 1 s, apart from the 1-minute power sensor (whose statistics and schedules
    # count one row per minute); "mqtt_meter" marks the sensors the ingestion service accepts,
    # "downsample_to" the 1-minute sensor their means go to once the raw days are over.
    attributes = {
        "consumption_is_positive": consumption_is_positive,
        "mqtt_meter": True,
        "downsample_to": minutes,
    }
    return SensorSpec(meter_sensor(name), "kW", ONE_SECOND, attributes)


def _soc(name: str) -> SensorSpec:
    return SensorSpec(f"{name}_soc", "kWh", ONE_MINUTE)


# FlexMeasures runs this scheduler (a registered plugin class, see
# flexmeasures_cariflex/data/models/planning.py) for any trigger on the site or one of its assets:
# the site is scheduled as one fleet, so a trigger on a single device is refused with a reason.
CUSTOM_SCHEDULER = "CariflexFleetScheduler"
# An EV's usable battery range, and its round trip as the devices' own model loses it (each way)
EV_SOC_MIN_PCT = 10.0
EV_SOC_MAX_PCT = 100.0
EV_ROUNDTRIP_EFFICIENCY_PCT = round(100 * EV_CHARGE_EFFICIENCY**2, 2)


def site_attributes(fleet: Fleet) -> dict[str, Any]:
    site = fleet.site
    # Not FlexMeasures' legacy "capacity_in_mw": on an asset it gets moved into the flex-model.
    return {"timezone": site.timezone, "capacity_kw": site.capacity_kw, "custom-scheduler": CUSTOM_SCHEDULER}


def site_flex_context(fleet: Fleet, sensor_ids: dict[str, int]) -> dict[str, Any]:
    """The site's flex-context in FlexMeasures' own fields (``generic_asset.flex_context``).

    What FlexMeasures' UI and API show for the site, and what the Cariflex scheduler reads: the
    price sensors, the connection's capacities, and PV and the base load as inflexible devices
    (the capacities hold for the net import at the connection). The load-control signal is not a
    flex-context field: the Cariflex scheduler scales ``site-consumption-capacity`` by it per period.
    """
    context: dict[str, Any] = {
        "consumption-price": {"sensor": sensor_ids["consumption_price"]},
        "production-price": {"sensor": sensor_ids["production_price"]},
        "site-consumption-capacity": f"{fleet.site.capacity_kw:g} kW",
        "site-production-capacity": f"{fleet.site.capacity_kw:g} kW",
        # Site limits and SoC limits are hard: a load-control cap is an obligation.
        "relax-site-capacity-constraints": False,
        "relax-soc-constraints": False,
    }
    pv = [{"sensor": sensor_ids[f"{p.name}_power"]} for p in fleet.pv if f"{p.name}_power" in sensor_ids]
    if pv:
        context["inflexible-production"] = pv
    if fleet.site.base_load_kw is not None and SITE_LOAD in sensor_ids:
        context["inflexible-consumption"] = [{"sensor": sensor_ids[SITE_LOAD]}]
    return context


def device_flex_model(device: Battery | EVCharger) -> dict[str, Any]:
    """A battery's or EV charger's flex-model in FlexMeasures' own fields (``generic_asset.flex_model``):
    its physical limits. What changes per run (the state of charge at the start, an EV's presence
    and departures, the end-of-horizon target) the Cariflex scheduler adds to these.

    No ``state-of-charge`` reference: FlexMeasures accepts only an instantaneous sensor there, and
    ``<name>_soc`` holds one-minute readings; the scheduler reads it by name (``soc-at-start``).
    """
    if isinstance(device, Battery):
        return {
            "soc-min": f"{device.capacity_kwh * device.soc_min_pct / 100:g} kWh",
            "soc-max": f"{device.capacity_kwh * device.soc_max_pct / 100:g} kWh",
            "power-capacity": f"{device.power_kw:g} kW",
            "roundtrip-efficiency": f"{device.roundtrip_efficiency_pct:g}%",
        }
    cap = device.battery_capacity_kwh
    model = {
        "soc-min": f"{cap * EV_SOC_MIN_PCT / 100:g} kWh",
        "soc-max": f"{cap * EV_SOC_MAX_PCT / 100:g} kWh",
        "power-capacity": f"{device.power_kw:g} kW",
        "roundtrip-efficiency": f"{EV_ROUNDTRIP_EFFICIENCY_PCT:g}%",
    }
    if not device.bidirectional:
        model["production-capacity"] = "0 kW"
    return model


def child_assets(fleet: Fleet) -> list[AssetSpec]:
    """Every asset below the site, with its sensors, in a stable order."""
    site = fleet.site
    assets: list[AssetSpec] = []
    for pv in fleet.pv:
        assets.append(
            AssetSpec(
                pv.name,
                TYPE_PV,
                pv.latitude,
                pv.longitude,
                as_dict(pv),
                (
                    _power(pv.name, consumption_is_positive=False),
                    _meter(pv.name, False, f"{pv.name}_power"),
                ),
            )
        )
    for bat in fleet.batteries:
        assets.append(
            AssetSpec(
                bat.name,
                TYPE_BATTERY,
                site.latitude,
                site.longitude,
                as_dict(bat),
                (_power(bat.name, True), _soc(bat.name)),
            )
        )
    for ev in fleet.ev_chargers:
        kind = TYPE_EV_TWO_WAY if ev.bidirectional else TYPE_EV_ONE_WAY
        assets.append(
            AssetSpec(
                ev.name,
                kind,
                site.latitude,
                site.longitude,
                as_dict(ev),
                (_power(ev.name, True), _soc(ev.name)),
            )
        )
    if site.base_load_kw is not None:
        assets.append(
            AssetSpec(
                SITE_LOAD,
                TYPE_LOAD,
                site.latitude,
                site.longitude,
                {"peak_kw": site.base_load_kw},
                (
                    SensorSpec(SITE_LOAD, "kW", ONE_MINUTE, {"consumption_is_positive": True}),
                    _meter(SITE_LOAD, True, SITE_LOAD),
                ),
            )
        )
    ws = fleet.weather_station
    assets.append(
        AssetSpec(
            ws.name,
            TYPE_WEATHER,
            ws.latitude,
            ws.longitude,
            {},
            (
                SensorSpec("irradiance", "W/m²", QUARTER),
                SensorSpec("temperature", "°C", QUARTER),
                SensorSpec("wind_speed", "m/s", QUARTER),
            ),
        )
    )
    assets.append(
        AssetSpec(
            fleet.grid_signals.name,
            TYPE_GRID_SIGNALS,
            site.latitude,
            site.longitude,
            {},
            (
                SensorSpec("consumption_price", "EUR/MWh", HOUR),
                SensorSpec("production_price", "EUR/MWh", HOUR),
                SensorSpec("load_control_signal", "%", QUARTER),
                SensorSpec("demand_response_signal", "dimensionless", QUARTER),
                SensorSpec("grid_carbon_intensity", "gCO2/kWh", HOUR),
            ),
        )
    )
    assets.append(
        AssetSpec(
            INSIGHTS_ASSET,
            TYPE_INSIGHTS,
            site.latitude,
            site.longitude,
            {},
            (
                *(
                    SensorSpec(name, unit, DAY, {"timezone": site.timezone})
                    for name, (_, unit) in DAILY_STATISTICS.items()
                ),
                *(SensorSpec(name, "kW", QUARTER) for name in FLEXIBILITY_SENSORS),
                *(SensorSpec(name, unit, QUARTER) for name, (_, unit) in DR_SENSORS.items()),
            ),
        )
    )
    # Every asset names the Cariflex scheduler, so that a trigger on any of them is answered by it
    # (with a refusal that names the site to trigger instead) and never by a plain StorageScheduler
    # that would ignore load control, the EVs' timetables and the rest of the fleet.
    # Sensors too: FlexMeasures' (deprecated) sensor trigger looks at the sensor's attributes.
    return [
        replace(
            a,
            attributes={**a.attributes, "custom-scheduler": CUSTOM_SCHEDULER},
            sensors=tuple(
                replace(s, attributes={**s.attributes, "custom-scheduler": CUSTOM_SCHEDULER})
                for s in a.sensors
            ),
        )
        for a in assets
    ]


def sensor_names(fleet: Fleet) -> list[str]:
    """All sensor names of the site, e.g. for a component checking its lookups."""
    return [s.name for a in child_assets(fleet) for s in a.sensors]
