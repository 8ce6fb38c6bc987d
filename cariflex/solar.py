"""Sun, synthetic weather and PV power on pvlib, with no FlexMeasures import.

Used by the plugin (``flexmeasures cariflex weather fetch --source synthetic`` and the PV power it
derives) and by tests; vectorised over a pandas DatetimeIndex (UTC).

Why pvlib: the solar-position, clear-sky, irradiance and PVWatts models below are the field's
reference implementations (Holmgren, Hansen & Mikofski 2018, *J. Open Source Softw.* 3(29), 884),
tested against their papers and used by PV engineers; formulas written out here were ours to check
and maintain. The functions keep their units and signatures; they work on numpy arrays (pvlib's
functions accept them) to stay fast.

**Solar position**: ``pvlib.solarposition.get_solarposition``, method ``ephemeris``, apparent
(refraction-corrected) zenith. It is several times faster than NREL's SPA (the default) and within
0.02° of it in zenith at Martinique (tests/unit/test_solar.py checks it); the hourly refresh runs it
for every PV site over days of 1-minute times. The last site's sun is cached, so that the clear sky
and the plane-of-array irradiance computed for the same site and times share one computation.

**Clear sky**: Ineichen & Perez (2002), ``pvlib.clearsky.ineichen``, with Kasten & Young (1989)
airmass at sea level (the site's lowlands; the fleet gives no altitude) -- what
``Location.get_clearsky`` does, without its per-call pandas overhead. The Linke turbidity is a
fixed monthly climatology for Martinique (``LINKE_TURBIDITY_BY_MONTH``), read once from pvlib's
``lookup_linke_turbidity`` at 14.6 N, 61.0 W (the fleet's sites differ by at most 0.25, ~1 % of
the clear-sky GHI) and written here: that lookup reads an HDF5 file through h5py on every call,
which this model does not use.

**Synthetic weather** (offline mode; deterministic for a site and time):
- clouds: a cloud cover c in [0, 1] per hour from a hash of the site and the hour, smoothed over
  three hours, with more cloud in the afternoon (trade-wind cumulus): c = 0.15 + 0.5·u·(1 + 0.5·a),
  u a stable pseudo-random number, a = 1 from 12:00 to 17:00 local; irradiance =
  clear sky × (1 − 0.75 c³·⁴) (Kasten & Czeplak 1980);
- temperature: 26 °C ± 3 °C, coolest at 05:00 and warmest at 14:00 local (Martinique lowlands);
- wind: trade winds 6 m/s ± 1.5 m/s, strongest in the early afternoon, plus a stable ±0.5 m/s wobble.

**PV** (PVWatts, Dobos 2014, NREL/TP-6A20-62641, as pvlib implements it):
- plane-of-array irradiance: GHI split into DNI and DHI by Erbs et al. (1982)
  (``pvlib.irradiance.erbs``), transposed to the module (tilt, azimuth from north) with the
  Hay & Davies (1980) sky (circumsolar + isotropic diffuse) and ground reflection, albedo 0.2
  (``pvlib.irradiance.get_total_irradiance``);
- cell temperature: Faiman (2008) (``pvlib.temperature.faiman``, pvlib's default heat-loss factors),
  at 1 m/s wind unless given: ~31 K above the air at 1000 W/m², as the NOCT 45 °C rule;
- DC power: ``pvlib.pvsystem.pvwatts_dc`` with the site's kWp and temperature coefficient, less the
  PVWatts DC losses (``pvlib.pvsystem.pvwatts_losses`` defaults: soiling, shading, mismatch, wiring,
  connections, light-induced degradation, nameplate; ~11.4 %) but not availability: a forecast of a
  running plant, whose outages its telemetry reports;
- AC power: ``pvlib.inverter.pvwatts``, nominal efficiency 96 %, clipped at the site's inverter
  limit (AC), never negative.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import numpy.typing as npt
import pandas as pd
from pvlib import atmosphere, clearsky, inverter, irradiance, pvsystem, solarposition, temperature

FloatArray = npt.NDArray[np.float64]

SOLAR_POSITION_METHOD = "ephemeris"
ALTITUDE_M = 0.0  # the sites are in the lowlands; the fleet description gives no altitude
# pvlib.clearsky.lookup_linke_turbidity(times, 14.6, -61.0, interp_turbidity=False), January..December
LINKE_TURBIDITY_BY_MONTH = (3.2, 3.7, 3.9, 3.95, 3.85, 3.9, 4.05, 3.45, 3.6, 3.4, 3.85, 3.1)
ALBEDO = 0.2  # grass and low vegetation
TRANSPOSITION_MODEL = "haydavies"
DEFAULT_WIND_SPEED = 1.0  # m/s, for the cell temperature when the wind is not given
DC_LOSSES_PCT: float = pvsystem.pvwatts_losses(availability=0)
DC_DERATE = 1 - DC_LOSSES_PCT / 100
INVERTER_EFFICIENCY = 0.96  # PVWatts nominal


class _Instants:
    """A DatetimeIndex as a cache key: its instants and timezone, hashed (the index is not hashable)."""

    __slots__ = ("times", "_digest")

    def __init__(self, times: pd.DatetimeIndex) -> None:
        self.times = times
        digest = hashlib.blake2b(times.asi8.tobytes(), digest_size=16)
        digest.update(str(times.tz).encode())
        self._digest = digest.digest()

    def __hash__(self) -> int:
        return hash(self._digest)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Instants) and self._digest == other._digest


@dataclass(frozen=True)
class _Sun:
    """The sun over a site at a set of times, as read-only arrays (degrees, W/m²)."""

    apparent_zenith: FloatArray
    azimuth: FloatArray  # from north, clockwise
    day_of_year: npt.NDArray[np.int32]
    dni_extra: FloatArray  # extraterrestrial normal irradiance
    airmass_absolute: FloatArray  # at sea level; NaN with the sun below the horizon


# One entry: pv_series asks for each site's sun twice in a row (clear sky, then POA), and a year of
# 1-minute times is ~25 MB of arrays that a long-running process should not keep many of.
@lru_cache(maxsize=1)
def _cached_sun(instants: _Instants, latitude: float, longitude: float) -> _Sun:
    times = instants.times
    position = solarposition.get_solarposition(times, latitude, longitude, method=SOLAR_POSITION_METHOD)
    zenith = position["apparent_zenith"].to_numpy()
    day_of_year = times.dayofyear.to_numpy()
    relative_airmass = atmosphere.get_relative_airmass(zenith)
    sun = _Sun(
        apparent_zenith=zenith,
        azimuth=position["azimuth"].to_numpy(),
        day_of_year=day_of_year,
        dni_extra=irradiance.get_extra_radiation(day_of_year),
        airmass_absolute=atmosphere.get_absolute_airmass(relative_airmass, atmosphere.alt2pres(ALTITUDE_M)),
    )
    for array in vars(sun).values():
        array.setflags(write=False)
    return sun


def _sun(times: pd.DatetimeIndex, latitude: float, longitude: float) -> _Sun:
    """pvlib's solar position for a site, computed once for a given set of times."""
    return _cached_sun(_Instants(times), float(latitude), float(longitude))


def sun_position(times: pd.DatetimeIndex, latitude: float, longitude: float) -> tuple[FloatArray, FloatArray]:
    """cos(zenith) and solar azimuth (radians from north, clockwise) at the given UTC times."""
    sun = _sun(times, latitude, longitude)
    return np.cos(np.radians(sun.apparent_zenith)), np.radians(sun.azimuth)


def clear_sky_ghi(times: pd.DatetimeIndex, latitude: float, longitude: float) -> FloatArray:
    """Clear-sky global horizontal irradiance (W/m²), Ineichen with Martinique's Linke turbidity."""
    sun = _sun(times, latitude, longitude)
    turbidity = np.asarray(LINKE_TURBIDITY_BY_MONTH)[times.month.to_numpy() - 1]
    with np.errstate(divide="ignore", invalid="ignore"):  # DNI's 1/cos(zenith) at night; GHI is 0 there
        clear = clearsky.ineichen(
            sun.apparent_zenith, sun.airmass_absolute, turbidity, altitude=ALTITUDE_M, dni_extra=sun.dni_extra
        )
    return clear["ghi"]


def _stable_uniform(key: str) -> float:
    """A number in [0, 1) that depends on ``key`` only (same on every machine and run)."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64


def synthetic_weather(
    times: pd.DatetimeIndex, latitude: float, longitude: float, timezone: str
) -> pd.DataFrame:
    """Irradiance (W/m²), temperature (°C) and wind speed (m/s) at the given UTC times."""
    local = times.tz_convert(timezone)
    local_hours = local.hour.to_numpy() + local.minute.to_numpy() / 60
    site = f"{latitude:.3f},{longitude:.3f}"
    hour_starts = times.floor("h")

    def cover(offset: int) -> FloatArray:
        keys = hour_starts + pd.Timedelta(hours=offset)
        return np.array([_stable_uniform(f"{site}|clouds|{k.isoformat()}") for k in keys])

    u = (cover(-1) + cover(0) + cover(1)) / 3
    afternoon = ((local_hours >= 12) & (local_hours < 17)).astype(float)
    clouds = np.clip(0.15 + 0.5 * u * (1 + 0.5 * afternoon), 0, 1)
    irradiance_ghi = clear_sky_ghi(times, latitude, longitude) * (1 - 0.75 * clouds**3.4)
    # Warmest at 14:00; the cosine's trough at 02:00 is moved towards 05:00 by warping the night.
    phase = np.where(local_hours < 5, local_hours + 24, local_hours)  # 05:00..29:00
    warmed = np.interp(phase, [5, 14, 29], [0, 0.5, 1])  # coolest at 05:00, warmest at 14:00
    temperature_c = 26 - 3 * np.cos(2 * np.pi * warmed)
    wobble = np.array([_stable_uniform(f"{site}|wind|{k.isoformat()}") for k in hour_starts]) - 0.5
    wind = 6 + 1.5 * np.cos(2 * np.pi * (local_hours - 13) / 24) + wobble
    return pd.DataFrame(
        {
            "irradiance": irradiance_ghi.round(2),
            "temperature": temperature_c.round(2),
            "wind_speed": wind.round(2),
        },
        index=times,
    )


def plane_of_array(
    times: pd.DatetimeIndex,
    ghi: npt.ArrayLike,
    latitude: float,
    longitude: float,
    tilt: float,
    azimuth: float,
) -> FloatArray:
    """Irradiance on the module plane (W/m²) from global horizontal irradiance (W/m²).

    ``tilt`` in degrees from horizontal, ``azimuth`` in degrees from north (180 = south).
    """
    sun = _sun(times, latitude, longitude)
    ghi = np.asarray(ghi, dtype=float)
    split = irradiance.erbs(ghi, sun.apparent_zenith, sun.day_of_year)
    poa = irradiance.get_total_irradiance(
        tilt,
        azimuth,
        sun.apparent_zenith,
        sun.azimuth,
        split["dni"],
        ghi,
        split["dhi"],
        dni_extra=sun.dni_extra,
        albedo=ALBEDO,
        model=TRANSPOSITION_MODEL,
    )
    return np.clip(np.nan_to_num(poa["poa_global"]), 0, None)


def pv_power_kw(
    irradiance_poa: npt.ArrayLike,
    temperature_c: npt.ArrayLike,
    peak_kw: float,
    temperature_coefficient_pct: float,
    inverter_kw: float,
    *,
    wind_speed: npt.ArrayLike = DEFAULT_WIND_SPEED,
) -> FloatArray:
    """AC power (kW, production positive) from plane-of-array irradiance (W/m²), air temperature
    (°C) and, if known, wind speed (m/s): PVWatts DC and inverter models."""
    poa = np.clip(np.asarray(irradiance_poa, dtype=float), 0, None)
    cell = temperature.faiman(
        poa, np.asarray(temperature_c, dtype=float), np.asarray(wind_speed, dtype=float)
    )
    dc = pvsystem.pvwatts_dc(poa, cell, peak_kw, temperature_coefficient_pct / 100) * DC_DERATE
    ac = inverter.pvwatts(dc, inverter_kw / INVERTER_EFFICIENCY, INVERTER_EFFICIENCY)
    # pvlib clips at efficiency × (limit / efficiency), which can miss the limit by a rounding error
    return np.clip(ac, 0, inverter_kw)
