"""The PV model and the synthetic weather (cariflex.solar, on pvlib): physics a PV engineer would check."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from pvlib import inverter, irradiance, pvsystem, solarposition, temperature
from pvlib.location import Location

from cariflex.fleet import load_fleet
from cariflex.solar import (
    DC_DERATE,
    INVERTER_EFFICIENCY,
    LINKE_TURBIDITY_BY_MONTH,
    clear_sky_ghi,
    plane_of_array,
    pv_power_kw,
    sun_position,
    synthetic_weather,
)

TZ = "America/Martinique"
DAY = pd.date_range("2026-11-25 04:00", periods=24 * 60, freq="min", tz="UTC")  # one local day
JUNE_DAY = pd.date_range("2026-06-21 04:00", periods=24 * 60, freq="min", tz="UTC")
NIGHT = (DAY.tz_convert(TZ).hour < 5) | (DAY.tz_convert(TZ).hour >= 19)


def local_noon(day: str) -> pd.DatetimeIndex:
    return pd.DatetimeIndex([pd.Timestamp(f"{day} 12:00", tz=TZ).tz_convert("UTC")])


def test_the_sun_is_up_by_day_only_and_highest_near_solar_noon():
    cos_zenith, _ = sun_position(DAY, 14.6, -61.0)
    local = DAY.tz_convert(TZ)
    assert (cos_zenith[NIGHT] < 0).all()
    noon = local[int(np.argmax(cos_zenith))]
    # Solar noon at 61 W in late November: ~12:04 mean time - 13 min equation of time ≈ 11:51 local.
    assert pd.Timestamp("2026-11-25 11:40", tz=TZ) <= noon <= pd.Timestamp("2026-11-25 12:05", tz=TZ)
    assert 800 < clear_sky_ghi(DAY, 14.6, -61.0).max() < 900  # sun 36° from the zenith in late November
    assert 900 < clear_sky_ghi(JUNE_DAY, 14.6, -61.0).max() < 1050  # sun near the zenith in June


def test_the_fast_solar_position_agrees_with_nrel_spa_in_martinique():
    times = pd.DatetimeIndex(
        np.concatenate(
            [
                pd.date_range(f"2026-{m:02d}-10 10:00", periods=120, freq="5min", tz="UTC")
                for m in (1, 4, 7, 10)
            ]
        )
    )
    cos_zenith, azimuth = sun_position(times, 14.6, -61.0)
    spa = solarposition.get_solarposition(times, 14.6, -61.0, method="nrel_numpy")
    up = spa["apparent_zenith"].to_numpy() < 85
    zenith = np.degrees(np.arccos(cos_zenith))
    assert np.abs(zenith - spa["apparent_zenith"].to_numpy())[up].max() < 0.02
    away_from_zenith = up & (spa["apparent_zenith"].to_numpy() > 5)  # azimuth is ill-defined overhead
    assert np.abs(np.degrees(azimuth) - spa["azimuth"].to_numpy())[away_from_zenith].max() < 0.1


def test_the_turbidity_table_is_pvlibs_climatology_for_the_islands_sites():
    pytest.importorskip("h5py")  # pvlib's lookup reads an HDF5 file; the model itself does not
    mid_months = pd.date_range("2026-01-15", periods=12, freq="MS", tz="UTC") + pd.Timedelta(days=14)
    from pvlib.clearsky import lookup_linke_turbidity

    at_the_station = lookup_linke_turbidity(mid_months, 14.6, -61.0, interp_turbidity=False)
    assert at_the_station.to_numpy() == pytest.approx(LINKE_TURBIDITY_BY_MONTH, abs=1e-6)
    for pv in load_fleet().pv:
        at_the_site = lookup_linke_turbidity(mid_months, pv.latitude, pv.longitude, interp_turbidity=False)
        assert at_the_site.to_numpy() == pytest.approx(LINKE_TURBIDITY_BY_MONTH, abs=0.3)


def test_our_pv_chain_is_pvlibs_building_blocks():
    """pv_01 (60 kWp, tilt 10° south, inverter 55 kW) on 25 Nov 2026, hourly, 70 % of clear sky."""
    times = pd.date_range("2026-11-25 11:00", "2026-11-25 21:00", freq="h", tz="UTC")
    latitude, longitude = 14.607, -61.068
    site = Location(latitude, longitude, tz="UTC", altitude=0)
    sun = site.get_solarposition(times, method="ephemeris")
    clear = site.get_clearsky(times, solar_position=sun, linke_turbidity=3.85)  # November, Martinique
    assert clear_sky_ghi(times, latitude, longitude) == pytest.approx(clear["ghi"].to_numpy(), abs=1e-6)

    ghi = 0.7 * clear["ghi"]
    split = irradiance.erbs(ghi, sun["apparent_zenith"], times)
    expected_poa = irradiance.get_total_irradiance(
        10,
        180,
        sun["apparent_zenith"],
        sun["azimuth"],
        split["dni"],
        ghi,
        split["dhi"],
        dni_extra=irradiance.get_extra_radiation(times),
        albedo=0.2,
        model="haydavies",
    )["poa_global"].fillna(0)
    poa = plane_of_array(times, ghi.to_numpy(), latitude, longitude, 10, 180)
    assert poa == pytest.approx(expected_poa.to_numpy(), abs=1e-6)

    air, wind = np.full(len(times), 30.0), np.full(len(times), 3.0)
    cell = temperature.faiman(poa, air, wind)
    dc = pvsystem.pvwatts_dc(poa, cell, 60, -0.004) * (1 - pvsystem.pvwatts_losses(availability=0) / 100)
    expected_ac = inverter.pvwatts(dc, 55 / 0.96, eta_inv_nom=0.96)
    assert pv_power_kw(poa, air, 60, -0.4, 55, wind_speed=wind) == pytest.approx(expected_ac, abs=1e-9)
    assert 0 < expected_ac.max() < 55


def test_the_fleet_at_a_clear_noon_makes_a_plausible_share_of_its_535_kwp():
    fleet = load_fleet()
    noon = local_noon("2026-11-25")
    total = 0.0
    for pv in fleet.pv:
        ghi = clear_sky_ghi(noon, pv.latitude, pv.longitude)
        poa = plane_of_array(noon, ghi, pv.latitude, pv.longitude, pv.tilt_deg, pv.azimuth_deg)
        power = pv_power_kw(
            poa, [30.0], pv.peak_power_kw, pv.temperature_coefficient_pct, pv.inverter_limit_kw
        )[0]
        assert 0.45 * pv.peak_power_kw < power <= pv.inverter_limit_kw, pv.name
        total += power
    assert sum(pv.peak_power_kw for pv in fleet.pv) == 535
    # ~850-900 W/m² on the modules, cells ~58 °C (-13 %), ~11 % DC losses, ~96 % inverter: ~2/3.
    assert 0.55 * 535 < total < 0.8 * 535


def test_pv_is_zero_at_night_and_peaks_near_solar_noon():
    ghi = clear_sky_ghi(DAY, 14.6, -61.0)
    poa = plane_of_array(DAY, ghi, 14.6, -61.0, 15, 180)
    power = pv_power_kw(poa, np.full(len(DAY), 28.0), 60, -0.4, 60)
    local = DAY.tz_convert(TZ)
    assert poa[NIGHT].max() == 0 and power[NIGHT].max() == 0
    assert (power >= 0).all()
    peak = int(np.argmax(power))
    assert abs((local[peak] - local[int(np.argmax(ghi))]).total_seconds()) <= 20 * 60
    assert 35 < power[peak] < 45


def test_at_25_c_cells_power_is_kwp_times_irradiance_less_losses():
    poa = np.array([200.0, 600.0, 900.0])
    air_for_25_c_cells = 25 - poa / (25.0 + 6.84)  # Faiman's default heat loss at 1 m/s
    power = pv_power_kw(poa, air_for_25_c_cells, 60, -0.4, 60)
    assert power == pytest.approx(60 * poa / 1000 * DC_DERATE * INVERTER_EFFICIENCY, rel=0.03)
    assert 0.88 < DC_DERATE < 0.9  # PVWatts' DC losses without availability: ~11.4 %


def test_the_inverter_clips_and_heat_costs_power():
    poa = np.array([1000.0, 1000.0])
    assert pv_power_kw(poa, np.array([25.0, 25.0]), 100, -0.4, 70).tolist() == [70.0, 70.0]
    cool, hot = pv_power_kw(poa, np.array([20.0, 40.0]), 100, -0.4, 100)
    assert hot < cool
    # 20 K warmer cells at -0.4 %/K: 8 % of the DC power at 25 °C, less losses
    assert cool - hot == pytest.approx(100 * 0.004 * 20 * DC_DERATE * INVERTER_EFFICIENCY, rel=0.03)
    flat = pv_power_kw(poa, np.array([40.0, 40.0]), 100, -0.29, 100)[0]
    assert flat > hot  # a smaller coefficient loses less in the heat
    windy = pv_power_kw(poa, np.array([40.0, 40.0]), 100, -0.4, 100, wind_speed=6.0)[0]
    assert windy > hot  # trade winds cool the modules


def test_a_tilted_south_facing_plane_gains_in_winter_and_loses_in_june():
    for day, tilted_wins in (("2026-11-25", True), ("2026-06-21", False)):
        times = pd.date_range(f"{day} 04:00", periods=24 * 60, freq="min", tz="UTC")
        ghi = clear_sky_ghi(times, 14.6, -61.0)
        flat = plane_of_array(times, ghi, 14.6, -61.0, 0, 180)
        assert flat == pytest.approx(ghi, abs=1e-6)  # a horizontal plane sees the GHI
        tilted = plane_of_array(times, ghi, 14.6, -61.0, 20, 180)
        # Winter sun low in the south; in June the noon sun is 9° north of the zenith at 14.6 N.
        assert bool(tilted.sum() > flat.sum()) == tilted_wins, day


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


def test_results_do_not_depend_on_what_was_computed_before():
    first = plane_of_array(DAY, clear_sky_ghi(DAY, 14.6, -61.0), 14.6, -61.0, 15, 180)
    other_site = clear_sky_ghi(DAY, 14.47, -60.87)
    other_day = clear_sky_ghi(JUNE_DAY, 14.6, -61.0)
    assert not np.allclose(other_site, clear_sky_ghi(DAY, 14.6, -61.0))
    assert not np.allclose(other_day, clear_sky_ghi(DAY, 14.6, -61.0))
    assert plane_of_array(DAY, clear_sky_ghi(DAY, 14.6, -61.0), 14.6, -61.0, 15, 180) == pytest.approx(first)


def test_synthetic_weather_is_deterministic_below_clear_sky_and_plausible_for_martinique():
    first = synthetic_weather(DAY, 14.6, -61.0, TZ)
    assert first.equals(synthetic_weather(DAY, 14.6, -61.0, TZ))
    assert first["irradiance"][NIGHT].max() == 0
    clear = clear_sky_ghi(DAY, 14.6, -61.0)
    assert (first["irradiance"].to_numpy() <= clear + 0.005).all()  # clouds only take away (2 decimals)
    assert 0.5 * clear.max() < first["irradiance"].max() <= clear.max()
    assert first["temperature"].min() >= 22.9 and first["temperature"].max() <= 29.1
    warmest = first["temperature"].idxmax().tz_convert(TZ)
    assert abs(warmest - pd.Timestamp("2026-11-25 14:00", tz=TZ)) <= pd.Timedelta(minutes=15)
    assert first["wind_speed"].min() > 3.5 and first["wind_speed"].max() < 8.5
    other_site = synthetic_weather(DAY, 14.47, -60.87, TZ)
    assert not other_site["irradiance"].equals(first["irradiance"])  # its own clouds
