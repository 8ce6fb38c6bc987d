"""Open-Meteo weather into FlexMeasures (recorded response shapes, `responses`), the offline
synthetic weather, the PV power derived from it, and the production price command."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
import requests
import responses
from flexmeasures.data.models.data_sources import DataSource
from flexmeasures.data.models.time_series import TimedBelief
from sqlalchemy import func, select

from flexmeasures_cariflex.data.queries.site import site_sensors
from flexmeasures_cariflex.data.services.weather import WeatherError, WeatherUnreachable, fetch_weather

FIXTURES = Path(__file__).parent.parent / "fixtures" / "open_meteo"
FORECAST = "https://api.open-meteo.com/v1/forecast"
ARCHIVE = "https://archive-api.open-meteo.com/v1/archive"
JAN_10 = datetime(2030, 1, 10, tzinfo=UTC)


def recorded(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text(encoding="utf-8"))


def stored(fm_db, fleet, sensor_name: str) -> pd.DataFrame:
    """Every belief on the sensor: event start (UTC), horizon, value and source name."""
    sensor = site_sensors(fleet)[sensor_name]
    rows = fm_db.session.execute(
        select(TimedBelief.event_start, TimedBelief.belief_horizon, TimedBelief.event_value, DataSource.name)
        .join(DataSource, TimedBelief.source_id == DataSource.id)
        .where(TimedBelief.sensor_id == sensor.id)
        .order_by(TimedBelief.event_start)
    ).all()
    frame = pd.DataFrame(rows, columns=["start", "horizon", "value", "source"])
    frame["start"] = pd.to_datetime(frame["start"], utc=True)
    return frame.set_index("start")


def belief_count(fm_db) -> int:
    return fm_db.session.execute(select(func.count()).select_from(TimedBelief)).scalar_one()


def fetch(fleet, fm_db, start=JAN_10, end=JAN_10 + timedelta(days=2), **kwargs):
    kwargs.setdefault("now", JAN_10 - timedelta(days=1))
    result = fetch_weather(fleet, start, end, backoff_s=0, **kwargs)
    fm_db.session.commit()
    return result


@responses.activate
def test_forecast_is_parsed_into_quarters_in_utc_and_stored_as_forecasts(fleet, fm_db):
    payload = recorded("forecast_gmt.json")
    responses.get(FORECAST, json=payload)
    result = fetch(fleet, fm_db)
    request = responses.calls[0].request
    assert "wind_speed_unit=ms" in request.url and "timezone=GMT" in request.url
    assert "shortwave_radiation%2Ctemperature_2m%2Cwind_speed_10m" in request.url
    assert "start_date=2030-01-10" in request.url and "end_date=2030-01-11" in request.url

    hourly = payload["hourly"]
    irradiance = stored(fm_db, fleet, "irradiance")
    # Radiation is the mean of the preceding hour: the value stamped 16:00 UTC holds 15:00-16:00.
    at_16 = hourly["shortwave_radiation"][16]
    assert at_16 > 100
    for quarter in ("15:00", "15:15", "15:30", "15:45"):
        assert irradiance.loc[pd.Timestamp(f"2030-01-10 {quarter}", tz="UTC"), "value"] == at_16
    # Temperature is instantaneous: quarters in between are interpolated.
    temperature = stored(fm_db, fleet, "temperature")
    t16, t17 = hourly["temperature_2m"][16], hourly["temperature_2m"][17]
    assert temperature.loc[pd.Timestamp("2030-01-10 16:15", tz="UTC"), "value"] == pytest.approx(
        t16 + (t17 - t16) / 4
    )
    wind = stored(fm_db, fleet, "wind_speed")
    assert (
        wind.loc[pd.Timestamp("2030-01-10 17:00", tz="UTC"), "value"] == hourly["wind_speed_10m"][17]
    )  # m/s
    assert wind["value"].min() > 3 and wind["value"].max() < 10  # m/s, not km/h
    assert set(irradiance["source"]) == {"Open-Meteo"}
    assert (irradiance["horizon"] > timedelta(0)).all()  # forecasts: known before the events
    assert result.written["irradiance"] == len(irradiance) == 47 * 4  # 00:00 covers the day before
    assert result.written["temperature"] == 47 * 4 + 1


@responses.activate
def test_a_response_in_local_time_lands_on_the_same_utc_slots(fleet, fm_db):
    responses.get(FORECAST, json=recorded("forecast_martinique.json"))
    fetch(fleet, fm_db)
    local = stored(fm_db, fleet, "irradiance")["value"]
    gmt = recorded("forecast_gmt.json")["hourly"]
    assert local.loc[pd.Timestamp("2030-01-10 15:15", tz="UTC")] == gmt["shortwave_radiation"][16]
    # Night in Martinique (UTC-4) is night in the data: 02:00-06:00 UTC = 22:00-02:00 local.
    assert local[(local.index.hour >= 2) & (local.index.hour < 6)].max() == 0


@responses.activate
def test_past_ranges_come_from_the_archive_as_measurements(fleet, fm_db):
    responses.get(ARCHIVE, json=recorded("archive_gmt.json"))
    june = datetime(2026, 6, 1, tzinfo=UTC)
    fetch(fleet, fm_db, start=june, end=june + timedelta(days=1), now=datetime.now(UTC))
    assert responses.calls[0].request.url.startswith(ARCHIVE)
    temperature = stored(fm_db, fleet, "temperature")
    assert len(temperature) == 23 * 4 + 1
    assert (temperature["horizon"] == timedelta(0)).all()  # measured, not forecast


@responses.activate
def test_server_errors_are_retried_then_the_answer_is_used(fleet, fm_db):
    responses.get(FORECAST, status=503, body="upstream timeout")
    responses.get(FORECAST, body=requests.ConnectionError("connection reset"))
    responses.get(FORECAST, json=recorded("forecast_gmt.json"))
    result = fetch(fleet, fm_db)
    assert len(responses.calls) == 3
    assert result.written["irradiance"] == 47 * 4


@responses.activate
def test_unreachable_after_every_retry_is_said_and_stores_nothing(fleet, fm_db):
    for _ in range(4):
        responses.get(FORECAST, status=502)
    with pytest.raises(WeatherUnreachable, match="after 4 attempts.*502"):
        fetch(fleet, fm_db)
    assert belief_count(fm_db) == 0


@responses.activate
def test_a_refused_request_is_a_clear_error_and_stores_nothing(fleet, fm_db):
    responses.get(FORECAST, status=400, json=recorded("error_400.json"))
    with pytest.raises(WeatherError, match=r"refused the request \(400\): Cannot initialize WeatherVariable"):
        fetch(fleet, fm_db)
    assert len(responses.calls) == 1  # 4xx: not retried
    assert belief_count(fm_db) == 0


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda h: h["temperature_2m"].pop(), "'hourly.temperature_2m' has 47 values for 48 times"),
        (lambda h: h.pop("wind_speed_10m"), "'hourly.wind_speed_10m' is missing"),
        (lambda h: h["time"].pop(), "has 48 values for 47 times"),
        (lambda h: h["time"].__setitem__(5, h["time"][4]), "not a run of consecutive hours"),
        (lambda h: h["shortwave_radiation"].__setitem__(3, "bright"), "not a number"),
    ],
)
@responses.activate
def test_truncated_or_misaligned_answers_store_nothing(fleet, fm_db, damage, message):
    payload = recorded("forecast_gmt.json")
    damage(payload["hourly"])
    responses.get(FORECAST, json=payload)
    with pytest.raises(WeatherError, match=message):
        fetch(fleet, fm_db)
    assert belief_count(fm_db) == 0


@responses.activate
def test_wrong_units_are_refused(fleet, fm_db):
    payload = recorded("forecast_gmt.json")
    payload["hourly_units"]["wind_speed_10m"] = "km/h"
    responses.get(FORECAST, json=payload)
    with pytest.raises(WeatherError, match="wind_speed_10m is in 'km/h', expected 'm/s'"):
        fetch(fleet, fm_db)
    assert belief_count(fm_db) == 0


@responses.activate
def test_nulls_are_skipped_and_a_refetch_stores_nothing_twice(fleet, fm_db):
    payload = recorded("forecast_gmt.json")
    payload["hourly"]["temperature_2m"][20] = None
    responses.get(FORECAST, json=payload)
    first = fetch(fleet, fm_db)
    assert first.skipped_nulls == 1
    before = belief_count(fm_db)
    responses.get(FORECAST, json=recorded("forecast_gmt.json"))  # the hour is known now
    again = fetch(fleet, fm_db, now=JAN_10 - timedelta(hours=12))
    assert again.written["irradiance"] == again.written["wind_speed"] == 0  # unchanged: not re-stored
    assert 0 < again.written["temperature"] <= 7  # only the quarters around the filled hour
    assert 0 < again.written["pv_01_power"] <= 7 * 15  # PV for those quarters' minutes, nothing else
    assert belief_count(fm_db) == before + sum(again.written.values())


def test_synthetic_weather_and_pv_power_are_stored_by_the_simulator_and_the_pv_model(fleet, fm_db):
    result = fetch(fleet, fm_db, source="synthetic")
    assert result.source == "Simulator"
    irradiance = stored(fm_db, fleet, "irradiance")
    assert len(irradiance) == 2 * 96 and set(irradiance["source"]) == {"Simulator"}
    pv = stored(fm_db, fleet, "pv_02_power")
    assert len(pv) == 2 * 24 * 60 and set(pv["source"]) == {"Cariflex PV model"}
    power = pv["value"]
    night = power[(power.index.hour >= 23) | (power.index.hour < 9)]  # 19:00-05:00 local
    assert night.max() == 0
    assert 30 < pv["value"].max() <= 90  # pv_02: 100 kWp, inverter 90 kW
    again = fetch(fleet, fm_db, source="synthetic")
    assert sum(again.written.values()) == 0  # deterministic: nothing new


def test_cli_fetch_offline_falls_back_to_synthetic_and_says_so(cli, fleet, fm_db, monkeypatch):
    monkeypatch.setenv("CARIFLEX_OPEN_METEO_URL", "http://127.0.0.1:9/v1/forecast")  # nothing listens
    monkeypatch.setattr("flexmeasures_cariflex.data.services.weather.time.sleep", lambda s: None)
    out = cli(
        "cariflex", "weather", "fetch", "--start", "2030-01-10", "--end", "2030-01-11", "--source", "auto"
    )
    assert out.exit_code == 0, out.output
    assert "Open-Meteo cannot be reached" in out.output and "synthetic weather model" in out.output
    assert "Weather from Simulator" in out.output
    strict = cli("cariflex", "weather", "fetch", "--start", "2030-01-12", "--end", "2030-01-13")
    assert strict.exit_code == 1 and "Open-Meteo not available" in strict.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["--start", "2030-01-11", "--end", "2030-01-10"], "must come after --start"),
        (["--start", "2030-01-10"], "--start and --end go together"),
        (["--start", "2030-01-10", "--end", "2030-01-11", "--forecast-days", "2"], "not both"),
        (["--start", "soon", "--end", "2030-01-11"], "is not an ISO date"),
    ],
)
def test_cli_fetch_refuses_bad_ranges(cli, fleet, fm_db, args, message):
    out = cli("cariflex", "weather", "fetch", *args, "--source", "synthetic")
    assert out.exit_code != 0 and message in out.output
    assert belief_count(fm_db) == 0


def test_production_price_from_the_tariff_or_a_csv(cli, fleet, fm_db, tmp_path):
    day = date(2030, 1, 10)
    out = cli("cariflex", "production-price", "--day", day.isoformat(), "--tariff", "65", "--no-replan")
    assert out.exit_code == 0, out.output
    prices = stored(fm_db, fleet, "production_price")
    assert list(prices["value"]) == [65.0] * 24
    assert prices.index[0] == pd.Timestamp("2030-01-10 04:00", tz="UTC")  # local midnight
    assert set(prices["source"]) == {"Feed-in tariff"}
    same = cli("cariflex", "production-price", "--day", day.isoformat(), "--tariff", "65", "--no-replan")
    assert "(unchanged)" in same.output

    csv = tmp_path / "feed_in.csv"
    csv.write_text("hour,price\n" + "\n".join(f"{h},{40 + h}" for h in range(24)))
    out = cli("cariflex", "production-price", "--day", "2030-01-11", "--csv", str(csv), "--no-replan")
    assert out.exit_code == 0, out.output
    assert "40-63 EUR/MWh" in out.output

    short = tmp_path / "short.csv"
    short.write_text("price\n" + "\n".join(["50"] * 23))
    before = belief_count(fm_db)
    refused = cli("cariflex", "production-price", "--csv", str(short))
    assert refused.exit_code == 1 and "23 prices" in refused.output
    bad_day = cli("cariflex", "production-price", "--day", "2030-13-01")
    assert bad_day.exit_code == 1 and "is not a date" in bad_day.output
    assert belief_count(fm_db) == before


@pytest.mark.parametrize(
    ("tariff", "message"),
    [
        ("-1", "--tariff -1 EUR/MWh is outside 0..10000"),
        ("nan", "--tariff 'nan' is not a number (EUR/MWh)"),
        ("1_000", "--tariff '1_000' is not a number (EUR/MWh)"),
        ("20000", "--tariff 20000 EUR/MWh is outside 0..10000"),
    ],
)
def test_a_tariff_follows_the_one_rule_on_the_command_line_and_in_the_setting(
    cli, fleet, fm_db, monkeypatch, tariff, message
):
    """cariflex.inputs.tariff for --tariff (a usage error now, exit 2, as a non-number always was;
    out of range was exit 1) and for CARIFLEX_FEED_IN_TARIFF."""
    refused = cli("cariflex", "production-price", "--day", "2030-01-10", "--tariff", tariff)
    assert refused.exit_code == 2 and f"Error: {message}" in refused.output, refused.output
    monkeypatch.setenv("CARIFLEX_FEED_IN_TARIFF", tariff)
    configured = cli("cariflex", "production-price", "--day", "2030-01-10")
    assert configured.exit_code == 1
    assert f"Error: {message.replace('--tariff', 'CARIFLEX_FEED_IN_TARIFF')}" in configured.output
    assert belief_count(fm_db) == 0


def test_the_default_fetch_back_fills_from_the_last_measurement(cli, fleet, fm_db):
    now = pd.Timestamp.now(tz="UTC")
    start = (now - pd.Timedelta(hours=30)).floor("h")
    first = cli(
        "cariflex", "weather", "fetch", "--source", "synthetic",
        "--start", start.isoformat(), "--end", (now - pd.Timedelta(hours=20)).floor("h").isoformat(),
    )  # fmt: skip
    assert first.exit_code == 0, first.output
    last = stored(fm_db, fleet, "irradiance").index.max()
    out = cli("cariflex", "weather", "fetch", "--source", "synthetic", "--json")
    assert out.exit_code == 0, out.output
    result = json.loads(out.output.strip().splitlines()[-1])
    # The missed hours since the last measurement are fetched, then two days ahead.
    assert pd.Timestamp(result["start"]) == last.floor("h")
    assert pd.Timestamp(result["end"]) >= now + pd.Timedelta(days=2)
    irradiance = stored(fm_db, fleet, "irradiance")
    assert not irradiance.index.duplicated().any()
    gap = pd.date_range(start, now.floor("15min"), freq="15min", inclusive="left")
    assert gap.isin(irradiance.index).all()  # no hole between the two fetches
