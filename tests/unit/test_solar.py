"""The PV model and the synthetic weather (cariflex.solar): physics a PV engineer would check."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cariflex.fleet import load_fleet
from cariflex.solar import (
    DERATING,
    NOCT_C,
    clear_sky_ghi,
    plane_of_array,
    pv_power_kw,
    sun_position,
    synthetic_weather,
)

TZ = "America/Martinique"
DAY = pd.date_range("2026-11-25 04:00", periods=24 * 60, freq="min", tz="UTC")  # one local day


def test_the_sun_is_up_by_day_only_and_highest_near_solar_noon():
    cos_zenith, _ = sun_position(DAY, 14.6, -61.0)
    local = DAY.tz_convert(TZ)
    assert (cos_zenith[(local.hour < 5) | (local.hour >= 19)] < 0).all()
    noon = local[int(np.argmax(cos_zenith))]
    # Solar noon at 61 W in late November: ~12:04 mean time - 13 min equation of time ≈ 11:51 local.
    assert pd.Timestamp("2026-11-25 11:40", tz=TZ) <= noon <= pd.Timestamp("2026-11-25 12:05", tz=TZ)
    assert 800 < clear_sky_ghi(DAY, 14.6, -61.0).max() < 900  # sun 36° from the zenith in late November


def test_pv_is_zero_at_night_and_peaks_near_kwp_times_irradiance_times_derating():
    ghi = clear_sky_ghi(DAY, 14.6, -61.0)
    poa = plane_of_array(DAY, ghi, 14.6, -61.0, 15, 180)
    cool = 25 - poa * (NOCT_C - 20) / 800  # air temperature that keeps the cell at 25 °C
    power = pv_power_kw(poa, cool, 60, -0.4, 1000)
    local = DAY.tz_convert(TZ)
    assert power[(local.hour < 5) | (local.hour >= 19)].max() == 0
    peak = int(np.argmax(power))
    assert abs((local[peak] - local[int(np.argmax(ghi))]).total_seconds()) <= 20 * 60
    assert power[peak] == pytest.approx(60 * poa[peak] / 1000 * DERATING)
    assert 40 < power[peak] < 60


def test_the_inverter_clips_and_heat_costs_power():
    poa = np.array([1000.0, 1000.0])
    assert pv_power_kw(poa, np.array([25.0, 25.0]), 100, -0.4, 70).tolist() == [70.0, 70.0]
    cool, hot = pv_power_kw(poa, np.array([20.0, 40.0]), 100, -0.4, 1000)
    cell_difference = 20
    assert hot / cool == pytest.approx(
        (1 - 0.004 * (40 + 31.25 - 25)) / (1 - 0.004 * (20 + 31.25 - 25)), rel=1e-9
    )
    assert hot < cool and cool - hot == pytest.approx(100 * DERATING * 0.004 * cell_difference)
    flat = pv_power_kw(poa, np.array([40.0, 40.0]), 100, -0.29, 1000)[0]
    assert flat > hot  # a smaller coefficient loses less in the heat


def test_the_ten_sites_differ_by_their_parameters():
    fleet = load_fleet()
    weather = synthetic_weather(DAY, 14.6, -61.0, TZ)
    energy, peak_time = {}, {}
    for pv in fleet.pv:
        poa = plane_of_array(
            DAY, weather["irradiance"].to_numpy(), pv.latitude, pv.longitude, pv.tilt_deg, pv.azimuth_deg
        )
        power = pv_power_kw(
            poa,
            weather["temperature"].to_numpy(),
            pv.peak_power_kw,
            pv.temperature_coefficient_pct,
            pv.inverter_limit_kw,
        )
        energy[pv.name] = power.sum() / 60
        peak_time[pv.name] = DAY[int(np.argmax(power))]
        assert power.max() <= pv.inverter_limit_kw
    assert len({round(e, 3) for e in energy.values()}) == 10
    assert energy["pv_02"] > energy["pv_01"] > energy["pv_05"]  # 100 kWp > 60 kWp > 30 kWp
    per_kwp = {p.name: energy[p.name] / p.peak_power_kw for p in fleet.pv}
    assert per_kwp["pv_04"] != pytest.approx(per_kwp["pv_05"], rel=1e-3)  # east vs west facing
    clear = clear_sky_ghi(DAY, 14.6, -61.0)
    east = plane_of_array(DAY, clear, 14.6, -61.0, 30, 90)
    west = plane_of_array(DAY, clear, 14.6, -61.0, 30, 270)
    assert DAY[int(np.argmax(east))] < DAY[int(np.argmax(west))]  # east-facing peaks earlier


def test_synthetic_weather_is_deterministic_and_plausible_for_martinique():
    first = synthetic_weather(DAY, 14.6, -61.0, TZ)
    assert first.equals(synthetic_weather(DAY, 14.6, -61.0, TZ))
    local = DAY.tz_convert(TZ)
    assert first["irradiance"][(local.hour < 5) | (local.hour >= 19)].max() == 0
    assert 0 < first["irradiance"].max() <= clear_sky_ghi(DAY, 14.6, -61.0).max()
    assert first["temperature"].min() >= 22.9 and first["temperature"].max() <= 29.1
    warmest = first["temperature"].idxmax().tz_convert(TZ)
    assert abs(warmest - pd.Timestamp("2026-11-25 14:00", tz=TZ)) <= pd.Timedelta(minutes=15)
    assert first["wind_speed"].min() > 3.5 and first["wind_speed"].max() < 8.5
    other_site = synthetic_weather(DAY, 14.47, -60.87, TZ)
    assert not other_site["irradiance"].equals(first["irradiance"])  # its own clouds
