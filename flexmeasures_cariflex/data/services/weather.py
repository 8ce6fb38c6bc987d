"""Weather for the site from Open-Meteo (or the synthetic model offline), and the PV power it implies.

Open-Meteo (https://open-meteo.com/en/docs): no API key; the forecast API serves from a few months
back to 16 days ahead, the archive API the past. We ask for ``hourly=shortwave_radiation,
temperature_2m,wind_speed_10m`` with ``wind_speed_unit=ms`` and ``timezone=GMT``; a response in
another timezone is still read right (its ``utc_offset_seconds`` is applied). Units are checked
against ``hourly_units``. Hourly values become the 15-minute sensors this way:

- ``shortwave_radiation`` is the mean of the *preceding* hour: the value stamped 13:00 holds for
  the four quarters 12:00-13:00;
- ``temperature_2m`` and ``wind_speed_10m`` are instantaneous: quarters are interpolated linearly.

Everything is checked before anything is stored: missing variables, arrays shorter or longer than
``time``, wrong units or misaligned times store nothing (``WeatherError``). ``null`` values (hours
the model does not have) are skipped and filled by a later fetch. Hours already past are stored as
measurements (belief horizon 0), the rest as forecasts formed at the fetch time; a value equal to
what the same source already believes for that slot is not stored again, so re-fetching changes
nothing.

PV (``cariflex.solar``): per PV site, 1-minute production from the 15-minute irradiance (shaped by
the clear-sky curve within each quarter) and temperature, with the site's tilt, azimuth,
temperature coefficient and inverter limit from the fleet description; source "Cariflex PV model".
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
import requests

from cariflex import settings
from cariflex.fleet import Fleet
from cariflex.http_retry import RetryAfter
from cariflex.json_input import JsonInputError, clip, load_json, quote
from cariflex.site_model import SOURCE_OPEN_METEO, SOURCE_SIMULATOR
from cariflex.solar import clear_sky_ghi, plane_of_array, pv_power_kw, synthetic_weather

log = logging.getLogger("cariflex.weather")

# Open-Meteo variable -> (our sensor, the unit Open-Meteo must answer in)
VARIABLES = {
    "shortwave_radiation": ("irradiance", "W/m²"),
    "temperature_2m": ("temperature", "°C"),
    "wind_speed_10m": ("wind_speed", "m/s"),
}
PV_SOURCE = ("Cariflex PV model", "forecaster")
QUARTER = pd.Timedelta(minutes=15)
MINUTE = pd.Timedelta(minutes=1)
MAX_ANSWER_BYTES = 64 * 1024 * 1024  # a year of hourly values is ~1 MB; a generous ceiling
MAX_UTC_OFFSET_S = 14 * 3600  # the widest UTC offsets in use (UTC-12 .. UTC+14)
ARCHIVE_LAG = timedelta(days=5)  # the archive API lags; anything more recent comes from the forecast API


class WeatherError(RuntimeError):
    """Open-Meteo could not be used (refused, unreachable after retries, or an unusable answer)."""


class WeatherUnreachable(WeatherError):
    """No answer at all (connection errors or 5xx after every retry): offline mode may take over."""


@dataclass
class FetchResult:
    source: str
    start: datetime
    end: datetime
    written: dict[str, int] = field(default_factory=dict)
    skipped_nulls: int = 0

    def summary(self) -> str:
        counts = ", ".join(f"{n} on {name}" for name, n in self.written.items()) or "nothing new"
        extra = f"; {self.skipped_nulls} null value(s) skipped" if self.skipped_nulls else ""
        period = f"{self.start:%Y-%m-%d %H:%M} - {self.end:%Y-%m-%d %H:%M} UTC"
        return f"Weather from {self.source}, {period}: {counts}{extra}"


# --- Open-Meteo over HTTP ----------------------------------------------------------------------


def request_open_meteo(
    latitude: float,
    longitude: float,
    start: date,
    end: date,
    *,
    session: requests.Session | None = None,
    retries: int = 3,
    backoff_s: float = 1.0,
    timeout_s: tuple[float, float] = (5, 30),
    rate_limit: RetryAfter | None = None,
) -> dict[str, Any]:
    """The hourly series for [start, end] (dates, UTC) from the forecast or the archive API."""
    archive = end < (datetime.now(UTC) - ARCHIVE_LAG).date()
    url = settings.get("CARIFLEX_OPEN_METEO_ARCHIVE_URL" if archive else "CARIFLEX_OPEN_METEO_URL")
    params = {
        "latitude": latitude,
        "longitude": longitude,
        "hourly": ",".join(VARIABLES),
        "wind_speed_unit": "ms",
        "timezone": "GMT",
        "start_date": start.isoformat(),
        "end_date": end.isoformat(),
    }
    session = session or requests.Session()
    # 429 (or 503 + Retry-After): waited out as Open-Meteo says (cariflex.http_retry)
    patience = rate_limit or RetryAfter(max_wait_s=60.0, name="Open-Meteo")
    problem = ""
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(backoff_s * 2 ** (attempt - 1))
        try:
            response = patience.send(lambda: session.get(url, params=params, timeout=timeout_s))
        except requests.RequestException as exc:
            problem = f"cannot reach {url}: {exc}"
            log.warning(
                "open-meteo unreachable", extra={"fields": {"attempt": attempt + 1, "error": str(exc)}}
            )
            continue
        if response.status_code == 429:
            problem = f"{url} rate-limited us (429)"
            log.warning("open-meteo rate limit", extra={"fields": {"attempt": attempt + 1}})
            if patience.hold_s() > 0:  # asked to stay away longer than we wait: not now
                break
            continue
        if response.status_code >= 500:
            problem = f"{url} answered {response.status_code}"
            log.warning(
                "open-meteo server error",
                extra={"fields": {"attempt": attempt + 1, "status": response.status_code}},
            )
            continue
        if response.status_code != 200:
            try:
                answer = load_json(response.content, max_bytes=MAX_ANSWER_BYTES)
                reason = answer.get("reason") if isinstance(answer, dict) else None
            except JsonInputError:
                reason = None
            reason = clip(reason if isinstance(reason, str) else response.text, 300)
            raise WeatherError(f"Open-Meteo refused the request ({response.status_code}): {reason}")
        try:  # the one JSON reader for outside input: size, depth, finite numbers, clean text
            return load_json(response.content, max_bytes=MAX_ANSWER_BYTES)
        except JsonInputError as exc:
            raise WeatherError(f"Open-Meteo answered with JSON we cannot use: {exc}") from None
    raise WeatherUnreachable(f"Open-Meteo not available after {retries + 1} attempts: {problem}")


def parse_hourly(payload: Any) -> tuple[pd.DataFrame, int]:
    """Hourly values by UTC time, one column per sensor; and how many nulls were dropped.

    Raises WeatherError, naming the problem, when the answer cannot be used as a whole.
    """
    if not isinstance(payload, dict) or not isinstance(payload.get("hourly"), dict):
        raise WeatherError("Open-Meteo answer has no 'hourly' object")
    hourly, units = payload["hourly"], payload.get("hourly_units") or {}
    if not isinstance(units, dict):
        raise WeatherError("Open-Meteo answer: 'hourly_units' is not an object")
    times = hourly.get("time")
    if not isinstance(times, list) or not times:
        raise WeatherError("Open-Meteo answer: 'hourly.time' is missing or empty")
    offset = payload.get("utc_offset_seconds", 0)
    if isinstance(offset, bool) or not isinstance(offset, int) or abs(offset) > MAX_UTC_OFFSET_S:
        raise WeatherError(
            f"Open-Meteo answer: utc_offset_seconds {quote(offset)} is not a UTC offset in seconds (±14 h)"
        )
    try:
        index = pd.DatetimeIndex(pd.to_datetime(times, format="%Y-%m-%dT%H:%M"))
    except (ValueError, TypeError, OverflowError) as exc:
        raise WeatherError(
            f"Open-Meteo answer: 'hourly.time' has a value that is not a time ({quote(str(exc), 120)})"
        ) from None
    index = (index - pd.Timedelta(seconds=offset)).tz_localize("UTC")  # local wall time -> UTC
    if (
        index.has_duplicates
        or not index.is_monotonic_increasing
        or (np.diff(index.asi8) != 3_600_000_000_000).any()
    ):
        raise WeatherError("Open-Meteo answer: 'hourly.time' is not a run of consecutive hours")
    columns = {}
    for variable, (sensor, unit) in VARIABLES.items():
        values = hourly.get(variable)
        if not isinstance(values, list):
            raise WeatherError(f"Open-Meteo answer: 'hourly.{variable}' is missing")
        if len(values) != len(times):
            raise WeatherError(
                f"Open-Meteo answer: 'hourly.{variable}' has {len(values)} values for {len(times)} times"
            )
        if units.get(variable) != unit:
            raise WeatherError(
                f"Open-Meteo answer: {variable} is in {quote(units.get(variable))}, expected {quote(unit)}"
            )
        if any(v is not None and (isinstance(v, bool) or not isinstance(v, int | float)) for v in values):
            raise WeatherError(f"Open-Meteo answer: 'hourly.{variable}' holds a value that is not a number")
        if any(v is not None and not math.isfinite(float(v)) for v in values):
            raise WeatherError(f"Open-Meteo answer: 'hourly.{variable}' holds a value that is not finite")
        columns[sensor] = pd.Series([np.nan if v is None else float(v) for v in values], index=index)
    frame = pd.DataFrame(columns)
    return frame, int(frame.isna().sum().sum())


def to_quarters(hourly: pd.DataFrame) -> pd.DataFrame:
    """15-minute values from Open-Meteo's hourly ones (see the module docstring)."""
    out = {}
    irradiance = hourly["irradiance"].dropna()
    if not irradiance.empty:  # mean over the preceding hour: spread over its four quarters
        starts = irradiance.index - pd.Timedelta(hours=1)
        out["irradiance"] = pd.Series(
            np.repeat(irradiance.to_numpy(), 4),
            index=pd.DatetimeIndex([s + k * QUARTER for s in starts for k in range(4)]),
        )
    for name in ("temperature", "wind_speed"):
        series = hourly[name].dropna()
        if len(series) < 2:
            continue
        grid = pd.date_range(series.index[0], series.index[-1], freq=QUARTER)
        # Only between two known hours: interpolation never bridges a gap of nulls.
        known = series.reindex(grid)
        filled = known.interpolate(method="time", limit=3, limit_area="inside")
        gaps = series.index.to_series().diff() > pd.Timedelta(hours=1)
        for gap_end in series.index[gaps.to_numpy()]:
            previous = series.index[series.index.get_loc(gap_end) - 1]
            filled[(filled.index > previous) & (filled.index < gap_end)] = np.nan
        out[name] = filled.dropna()
    return pd.DataFrame(out).sort_index()


# --- storing -------------------------------------------------------------------------------------


def store_series(
    sensors: dict[str, Any], series_by_name: dict[str, pd.Series], source: Any, now: datetime
) -> dict[str, int]:
    """Past slots as measurements, the rest as forecasts formed now; unchanged values skipped."""
    from flexmeasures_cariflex.data.services.beliefs import insert_beliefs, latest_values

    written: dict[str, int] = {}
    for name, series in series_by_name.items():
        sensor = sensors[name]
        series = series.dropna()
        if series.empty:
            written[name] = 0
            continue
        known = latest_values([sensor], series.index[0], series.index[-1] + sensor.event_resolution, source)
        believed = pd.Series(known[sensor.id], dtype=float)
        if not believed.empty:
            believed.index = pd.DatetimeIndex(believed.index).tz_convert("UTC")
        same = believed.reindex(series.index)
        new = series[~np.isclose(series.to_numpy(), same.to_numpy(), rtol=0, atol=1e-9)]
        ends = new.index + sensor.event_resolution
        past, future = new[ends <= now], new[ends > now]
        written[name] = insert_beliefs({sensor: past}, source, None) + insert_beliefs(
            {sensor: future}, source, now
        )
    return written


def pv_series(fleet: Fleet, weather: pd.DataFrame) -> dict[str, pd.Series]:
    """1-minute PV production (kW) per PV site over the quarters that have irradiance and temperature."""
    both = weather[["irradiance", "temperature"]].dropna()
    if both.empty or not fleet.pv:
        return {}
    minutes = pd.date_range(both.index[0], both.index[-1] + QUARTER, freq=MINUTE, inclusive="left")
    quarter_of = minutes.floor(QUARTER)
    out = {}
    for pv in fleet.pv:
        clear_min = clear_sky_ghi(minutes, pv.latitude, pv.longitude)
        clear_q = pd.Series(clear_min, index=minutes).groupby(quarter_of).mean()
        # The measured quarter-hour mean, shaped within the quarter like the clear-sky curve.
        ratio = (both["irradiance"] / clear_q.reindex(both.index).clip(lower=1.0)).clip(0, 1.5)
        ghi = clear_min * ratio.reindex(quarter_of).to_numpy()
        ghi = np.where(np.isnan(ghi), 0.0, ghi)
        temperature = both["temperature"].reindex(quarter_of).to_numpy()
        poa = plane_of_array(minutes, ghi, pv.latitude, pv.longitude, pv.tilt_deg, pv.azimuth_deg)
        power = pv_power_kw(
            poa, temperature, pv.peak_power_kw, pv.temperature_coefficient_pct, pv.inverter_limit_kw
        )
        present = ~np.isnan(temperature)
        out[f"{pv.name}_power"] = pd.Series(np.round(power[present], 4), index=minutes[present])
    return out


def fetch_weather(
    fleet: Fleet,
    start: datetime,
    end: datetime,
    *,
    source: str = "open-meteo",
    now: datetime | None = None,
    session: requests.Session | None = None,
    backoff_s: float = 1.0,
    retries: int = 3,
) -> FetchResult:
    """Weather for [start, end) (UTC) from Open-Meteo or the synthetic model, stored with the PV
    power it implies, in the caller's transaction (the caller commits)."""
    from flexmeasures_cariflex.data.queries.site import ensure_source, site_sensors

    now = now or datetime.now(UTC)
    start_ts, end_ts = pd.Timestamp(start).tz_convert("UTC"), pd.Timestamp(end).tz_convert("UTC")
    if end_ts <= start_ts:
        raise WeatherError(
            f"the end {end_ts:%Y-%m-%d %H:%M} must come after the start {start_ts:%Y-%m-%d %H:%M}"
        )
    station = fleet.weather_station
    sensors = site_sensors(fleet)
    missing = [s for s, _ in VARIABLES.values() if s not in sensors]
    if missing:
        from flexmeasures_cariflex.data.queries.site import SiteNotReady

        raise SiteNotReady(f"sensor(s) {', '.join(missing)} missing; run `flexmeasures cariflex setup` first")
    nulls = 0
    if source == "synthetic":
        grid = pd.date_range(start_ts.floor(QUARTER), end_ts, freq=QUARTER, inclusive="left")
        quarters = synthetic_weather(grid, station.latitude, station.longitude, fleet.site.timezone)
        data_source = ensure_source(*SOURCE_SIMULATOR)
    elif source == "open-meteo":
        payload = request_open_meteo(
            station.latitude,
            station.longitude,
            start_ts.date(),
            (end_ts - pd.Timedelta(seconds=1)).date(),
            session=session,
            backoff_s=backoff_s,
            retries=retries,
        )
        hourly, nulls = parse_hourly(payload)
        quarters = to_quarters(hourly)
        quarters = quarters[(quarters.index >= start_ts) & (quarters.index < end_ts)]
        data_source = ensure_source(*SOURCE_OPEN_METEO)
    else:
        raise WeatherError(f"source {quote(source)} must be 'open-meteo' or 'synthetic'")
    result = FetchResult(
        data_source.name, start_ts.to_pydatetime(), end_ts.to_pydatetime(), skipped_nulls=nulls
    )
    result.written = store_series(sensors, {c: quarters[c] for c in quarters.columns}, data_source, now)
    pv = pv_series(fleet, quarters)
    result.written.update(store_series(sensors, pv, ensure_source(*PV_SOURCE), now))
    return result
