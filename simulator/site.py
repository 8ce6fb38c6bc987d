"""The site's metered resources, simulated: each PV site's production and the base load, as meters
would read them (no I/O; ``simulator.runner.MeteredRM`` reports them over S2, NOT_CONTROLABLE).

**PV** (``PvModel``): the "actual" weather is the synthetic forecast weather of the site's weather
station (``cariflex.solar.synthetic_weather``, what FlexMeasures plans with offline) with a seeded
deviation per PV site: irradiance × (1 + ``PV_SPREAD`` · n), n a smooth standard-normal noise
(independent values every ``KNOT_SECONDS``, linear in between), the factor kept within
[``PV_FACTOR_MIN``, ``PV_FACTOR_MAX``], and the air temperature ± ``TEMPERATURE_SPREAD`` · n. That
weather goes through the same pvlib model as the plan (``cariflex.solar``: plane of array from the
site's tilt and azimuth, PVWatts DC with its temperature coefficient, the inverter clipped at its
limit). So the measured production follows the forecast closely but not exactly, as a real
day does. The minutes of the hour are computed once per hour and interpolated in between.

**Base load** (``BaseLoadModel``): the typical daily profile (``cariflex.load_profile.profile_kw``,
the site's ``base_load`` as its peak) × (1 + ``LOAD_SPREAD`` · n).

Deterministic for a seed, a resource and an instant (the noise is drawn from the seed, the
resource's name and the knot's index, never from call order), so that a run can be replayed. The
site's clock (``SiteClock``) is the real UTC time, or a chosen instant moving on in real time
(``cariflex-sim run --site-time``, to see noon at night).

Sign: every model gives kW in S2's sign, consumption positive (a producing PV site is negative).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd

from cariflex.fleet import Fleet, PVSite, WeatherStation
from cariflex.s2.meters import Meter, site_meters

KNOT_SECONDS = 600  # independent noise every 10 minutes, linear in between
PV_SPREAD = 0.08  # irradiance deviation from the forecast, standard deviation
PV_FACTOR_MIN, PV_FACTOR_MAX = 0.5, 1.15
TEMPERATURE_SPREAD = 0.7  # °C
LOAD_SPREAD = 0.05  # base load deviation from its profile, standard deviation
DEFAULT_SEED = 1
MINUTE = pd.Timedelta(minutes=1)


def smooth_noise(
    seed: int, name: str, times: pd.DatetimeIndex, knot_seconds: int = KNOT_SECONDS
) -> np.ndarray:
    """Standard-normal noise at each time, linear between independent values at every knot."""
    position = times.asi8 / 1e9 / knot_seconds
    first = np.floor(position).astype(np.int64)
    knots = np.arange(first.min(), first.max() + 2) if len(first) else np.array([], dtype=np.int64)
    key = zlib.crc32(name.encode())
    values = np.array([np.random.default_rng([seed, key, int(k) + 2**40]).standard_normal() for k in knots])
    return np.interp(position, knots, values) if len(first) else np.array([])


class _Hourly:
    """A model computed for the 61 minutes of an hour at a time and interpolated within it."""

    def __init__(self) -> None:
        self._hour: pd.Timestamp | None = None
        self._minutes: np.ndarray = np.array([])
        self._values: np.ndarray = np.array([])

    def series(self, minutes: pd.DatetimeIndex) -> np.ndarray:
        raise NotImplementedError

    def kw(self, at: datetime) -> float:
        instant = pd.Timestamp(at).tz_convert("UTC")
        hour = instant.floor("h")
        if hour != self._hour:
            minutes = pd.date_range(hour, hour + pd.Timedelta(hours=1), freq=MINUTE)
            self._minutes, self._values = minutes.asi8 / 1e9, self.series(minutes)
            self._hour = hour
        return float(np.interp(instant.value / 1e9, self._minutes, self._values))


class PvModel(_Hourly):
    """A PV site's AC power in "actual" weather (kW, S2 sign: production negative)."""

    def __init__(self, pv: PVSite, station: WeatherStation, timezone: str, seed: int = DEFAULT_SEED) -> None:
        super().__init__()
        self.pv, self.station, self.timezone, self.seed = pv, station, timezone, seed

    def series(self, minutes: pd.DatetimeIndex) -> np.ndarray:
        from cariflex.solar import plane_of_array, pv_power_kw, synthetic_weather

        pv = self.pv
        forecast = synthetic_weather(minutes, self.station.latitude, self.station.longitude, self.timezone)
        factor = np.clip(
            1 + PV_SPREAD * smooth_noise(self.seed, f"{pv.name}|irradiance", minutes),
            PV_FACTOR_MIN,
            PV_FACTOR_MAX,
        )
        ghi = forecast["irradiance"].to_numpy() * factor
        temperature = forecast["temperature"].to_numpy() + TEMPERATURE_SPREAD * smooth_noise(
            self.seed, f"{pv.name}|temperature", minutes
        )
        poa = plane_of_array(minutes, ghi, pv.latitude, pv.longitude, pv.tilt_deg, pv.azimuth_deg)
        power = pv_power_kw(
            poa,
            temperature,
            pv.peak_power_kw,
            pv.temperature_coefficient_pct,
            pv.inverter_limit_kw,
            wind_speed=forecast["wind_speed"].to_numpy(),
        )
        return -np.asarray(power, dtype=float)


class BaseLoadModel(_Hourly):
    """The site's own consumption (kW, consumption positive): its profile with seeded noise."""

    def __init__(
        self, peak_kw: float, timezone: str, seed: int = DEFAULT_SEED, name: str = "site_load"
    ) -> None:
        super().__init__()
        self.peak_kw, self.timezone, self.seed, self.name = peak_kw, timezone, seed, name

    def series(self, minutes: pd.DatetimeIndex) -> np.ndarray:
        from cariflex.load_profile import profile_kw

        profile = profile_kw(minutes, self.peak_kw, self.timezone).to_numpy()
        return np.clip(profile * (1 + LOAD_SPREAD * smooth_noise(self.seed, self.name, minutes)), 0, None)


@dataclass
class SiteClock:
    """The site's time: now (UTC), or ``start`` moving on in real time from when it was made."""

    start: datetime | None = None
    _offset: timedelta = field(default=timedelta(0), init=False)

    def __post_init__(self) -> None:
        if self.start is not None:
            self._offset = self.start.astimezone(UTC) - datetime.now(UTC)

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self._offset


@dataclass
class SimMeter:
    """One metered resource: what it is (``cariflex.s2.meters.Meter``), its model, the site clock,
    and the last reading (``power_w``, S2 sign)."""

    meter: Meter
    model: Callable[[datetime], float]  # kW, S2 sign
    clock: Callable[[], datetime] = field(default_factory=SiteClock)
    power_w: float = 0.0

    @property
    def name(self) -> str:
        return self.meter.name

    @property
    def kind(self) -> str:
        return self.meter.kind

    def sample(self) -> float:
        """Read the meter now (W, consumption positive)."""
        self.power_w = round(self.model(self.clock()) * 1000, 1) + 0.0  # (no -0.0 at night)
        return self.power_w


def build_meters(
    fleet: Fleet,
    names: list[str] | None = None,
    *,
    seed: int = DEFAULT_SEED,
    clock: Callable[[], datetime] | None = None,
) -> list[SimMeter]:
    """The fleet's metered resources (every PV site and the base load, or those named)."""
    clock = clock or SiteClock()
    pv_sites = {pv.name: pv for pv in fleet.pv}
    meters = []
    for name, meter in site_meters(fleet).items():
        if names and name not in names:
            continue
        if name in pv_sites:
            model = PvModel(pv_sites[name], fleet.weather_station, fleet.site.timezone, seed)
        else:
            model = BaseLoadModel(fleet.site.base_load_kw or 0.0, fleet.site.timezone, seed, name)
        meters.append(SimMeter(meter, model.kw, clock))
    return meters
