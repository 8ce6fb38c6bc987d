"""Sun, synthetic weather and PV power: the models, with no FlexMeasures import.

Used by the plugin (``flexmeasures cariflex weather fetch --source synthetic`` and the PV power it
derives) and by tests; vectorised over a pandas DatetimeIndex (UTC).

**Solar geometry** (Spencer 1971 declination and equation of time, as in Duffie & Beckman,
*Solar Engineering of Thermal Processes*, ch. 1): cos(zenith) = sin φ sin δ + cos φ cos δ cos ω.

**Clear sky**: Haurwitz, GHI = 1098 · cos z · exp(−0.057 / cos z) W/m², good for the tropics and
needing no atmospheric inputs.

**Synthetic weather** (offline mode; deterministic for a site and time):
- clouds: a cloud cover c in [0, 1] per hour from a hash of the site and the hour, smoothed over
  three hours, with more cloud in the afternoon (trade-wind cumulus): c = 0.15 + 0.5·u·(1 + 0.5·a),
  u a stable pseudo-random number, a = 1 from 12:00 to 17:00 local; irradiance =
  clear sky × (1 − 0.75 c³·⁴) (Kasten & Czeplak 1980);
- temperature: 26 °C ± 3 °C, coolest at 05:00 and warmest at 14:00 local (Martinique lowlands);
- wind: trade winds 6 m/s ± 1.5 m/s, strongest in the early afternoon, plus a stable ±0.5 m/s wobble.

**PV** (a PVWatts-style model; Dobos 2014, NREL/TP-6A20-62641):
- plane-of-array irradiance: GHI split into beam and diffuse with the Erbs et al. (1982)
  correlation, beam projected on the module (tilt β, azimuth γ from north), diffuse isotropic
  ((1 + cos β)/2), ground reflection with albedo 0.2;
- cell temperature: T_air + POA × (NOCT − 20) / 800, NOCT 45 °C;
- DC power: kWp × POA/1000 × (1 + coefficient/100 × (T_cell − 25));
- AC power: DC × (1 − 14 % system losses: soiling, wiring, mismatch, inverter), clipped at the
  inverter limit, never negative.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pandas as pd

SOLAR_CONSTANT = 1367.0  # W/m²
ALBEDO = 0.2
NOCT_C = 45.0
SYSTEM_LOSSES = 0.14
DERATING = 1 - SYSTEM_LOSSES


def _day_angle(times: pd.DatetimeIndex) -> np.ndarray:
    return 2 * np.pi * (times.dayofyear.to_numpy() - 1) / 365


def sun_position(times: pd.DatetimeIndex, latitude: float, longitude: float) -> tuple[np.ndarray, np.ndarray]:
    """cos(zenith) and solar azimuth (radians from north, clockwise) at the given UTC times."""
    b = _day_angle(times)
    declination = (
        0.006918
        - 0.399912 * np.cos(b)
        + 0.070257 * np.sin(b)
        - 0.006758 * np.cos(2 * b)
        + 0.000907 * np.sin(2 * b)
        - 0.002697 * np.cos(3 * b)
        + 0.00148 * np.sin(3 * b)
    )
    equation_of_time_min = 229.18 * (
        0.000075
        + 0.001868 * np.cos(b)
        - 0.032077 * np.sin(b)
        - 0.014615 * np.cos(2 * b)
        - 0.04089 * np.sin(2 * b)
    )
    utc_hours = times.hour.to_numpy() + times.minute.to_numpy() / 60 + times.second.to_numpy() / 3600
    solar_time = utc_hours + longitude / 15 + equation_of_time_min / 60
    hour_angle = np.radians(15 * (solar_time - 12))
    phi = math.radians(latitude)
    cos_zenith = np.sin(phi) * np.sin(declination) + np.cos(phi) * np.cos(declination) * np.cos(hour_angle)
    cos_zenith = np.clip(cos_zenith, -1, 1)
    sin_zenith = np.sqrt(1 - cos_zenith**2)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos_azimuth = (np.sin(declination) - np.sin(phi) * cos_zenith) / (np.cos(phi) * sin_zenith)
    azimuth = np.arccos(np.clip(np.nan_to_num(cos_azimuth), -1, 1))
    azimuth = np.where(hour_angle > 0, 2 * np.pi - azimuth, azimuth)  # afternoon: west of south
    return cos_zenith, azimuth


def clear_sky_ghi(times: pd.DatetimeIndex, latitude: float, longitude: float) -> np.ndarray:
    cos_zenith, _ = sun_position(times, latitude, longitude)
    with np.errstate(divide="ignore", over="ignore"):
        ghi = 1098 * cos_zenith * np.exp(-0.057 / cos_zenith)
    return np.where(cos_zenith > 0.01, ghi, 0.0)


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

    def cover(offset: int) -> np.ndarray:
        keys = hour_starts + pd.Timedelta(hours=offset)
        return np.array([_stable_uniform(f"{site}|clouds|{k.isoformat()}") for k in keys])

    u = (cover(-1) + cover(0) + cover(1)) / 3
    afternoon = ((local_hours >= 12) & (local_hours < 17)).astype(float)
    clouds = np.clip(0.15 + 0.5 * u * (1 + 0.5 * afternoon), 0, 1)
    irradiance = clear_sky_ghi(times, latitude, longitude) * (1 - 0.75 * clouds**3.4)
    # Warmest at 14:00; the cosine's trough at 02:00 is moved towards 05:00 by warping the night.
    phase = np.where(local_hours < 5, local_hours + 24, local_hours)  # 05:00..29:00
    warmed = np.interp(phase, [5, 14, 29], [0, 0.5, 1])  # coolest at 05:00, warmest at 14:00
    temperature = 26 - 3 * np.cos(2 * np.pi * warmed)
    wobble = np.array([_stable_uniform(f"{site}|wind|{k.isoformat()}") for k in hour_starts]) - 0.5
    wind = 6 + 1.5 * np.cos(2 * np.pi * (local_hours - 13) / 24) + wobble
    return pd.DataFrame(
        {"irradiance": irradiance.round(2), "temperature": temperature.round(2), "wind_speed": wind.round(2)},
        index=times,
    )


def plane_of_array(
    times: pd.DatetimeIndex, ghi: np.ndarray, latitude: float, longitude: float, tilt: float, azimuth: float
) -> np.ndarray:
    """Irradiance on the module plane (W/m²) from global horizontal irradiance."""
    cos_zenith, sun_azimuth = sun_position(times, latitude, longitude)
    ghi = np.asarray(ghi, dtype=float)
    up = cos_zenith > 0.01
    extraterrestrial = SOLAR_CONSTANT * (1 + 0.033 * np.cos(2 * np.pi * times.dayofyear.to_numpy() / 365))
    with np.errstate(divide="ignore", invalid="ignore"):
        kt = np.where(up, ghi / (extraterrestrial * cos_zenith), 0.0)
    kt = np.clip(kt, 0, 1)
    diffuse_fraction = np.where(  # Erbs et al. 1982
        kt <= 0.22,
        1 - 0.09 * kt,
        np.where(kt <= 0.8, 0.9511 - 0.1604 * kt + 4.388 * kt**2 - 16.638 * kt**3 + 12.336 * kt**4, 0.165),
    )
    dhi = ghi * diffuse_fraction
    beam_horizontal = ghi - dhi
    beta, gamma = math.radians(tilt), math.radians(azimuth)
    sin_zenith = np.sqrt(1 - cos_zenith**2)
    cos_incidence = cos_zenith * math.cos(beta) + sin_zenith * math.sin(beta) * np.cos(sun_azimuth - gamma)
    with np.errstate(divide="ignore", invalid="ignore"):
        beam = np.where(up, beam_horizontal * np.clip(cos_incidence, 0, None) / cos_zenith, 0.0)
    beam = np.minimum(beam, 1100.0)  # guard the division at low sun
    diffuse = dhi * (1 + math.cos(beta)) / 2
    reflected = ghi * ALBEDO * (1 - math.cos(beta)) / 2
    return np.where(up, beam + diffuse + reflected, 0.0)


def pv_power_kw(
    irradiance_poa: np.ndarray,
    temperature_c: np.ndarray,
    peak_kw: float,
    temperature_coefficient_pct: float,
    inverter_kw: float,
) -> np.ndarray:
    """AC power (kW, production positive) from plane-of-array irradiance and air temperature."""
    poa = np.clip(np.asarray(irradiance_poa, dtype=float), 0, None)
    cell = np.asarray(temperature_c, dtype=float) + poa * (NOCT_C - 20) / 800
    dc = peak_kw * poa / 1000 * (1 + temperature_coefficient_pct / 100 * (cell - 25))
    return np.clip(dc * DERATING, 0, inverter_kw)
