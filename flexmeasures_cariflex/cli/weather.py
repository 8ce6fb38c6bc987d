"""``flexmeasures cariflex weather fetch`` and ``flexmeasures cariflex production-price``."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta

import click
import pandas as pd
from flask.cli import with_appcontext
from flexmeasures.data import db

from cariflex import inputs
from flexmeasures_cariflex import cariflex_bp
from flexmeasures_cariflex.cli.utils import echo_replan, fleet_option, load_fleet_or_refuse, refuse, writing

BACKFILL_LIMIT = timedelta(days=7)
DEFAULT_BACKFILL = timedelta(days=2)


@cariflex_bp.cli.group("weather")
def weather() -> None:
    """Weather for the site (Open-Meteo, or the synthetic model offline) and the PV power it implies."""


def _utc(text: str, option: str, tz: str) -> datetime:
    try:
        moment = pd.Timestamp(text)
    except ValueError:
        refuse(f"{option} {text!r} is not an ISO date or time like 2026-11-25 or 2026-11-25T06:00-04:00")
    if moment.tzinfo is None:
        moment = moment.tz_localize(tz)
    return moment.tz_convert("UTC").to_pydatetime()


def _backfill_start(fleet, now: datetime) -> datetime:
    """From the last irradiance measurement stored (at most 7 days back), else 2 days back."""
    from flexmeasures_cariflex.data.queries.latest_beliefs import BeliefQuery, last_event_per_sensor
    from flexmeasures_cariflex.data.queries.site import site_sensors

    sensor = site_sensors(fleet).get("irradiance")
    last = None
    if sensor is not None:
        measured = BeliefQuery(  # measurements only: beliefs formed at or after their event
            sensor_ids=[sensor.id], horizons_at_most=timedelta(0), cumulative_probability=None
        )
        found = last_event_per_sensor(db.session, measured).get(sensor.id)
        last = found.event_start if found else None
    if last is None:
        return now - DEFAULT_BACKFILL
    return max(pd.Timestamp(last).tz_convert("UTC").to_pydatetime(), now - BACKFILL_LIMIT)


@weather.command("fetch")
@click.option("--start", "start_text", default=None, help="ISO date/time (site time when no offset).")
@click.option("--end", "end_text", default=None, help="ISO date/time, exclusive.")
@click.option(
    "--forecast-days",
    type=click.IntRange(1, 16),
    default=None,
    help="From the last stored measurement (back-filling missed hours, at most 7 days) to N days ahead. "
    "The default when no --start/--end: 2.",
)
@click.option(
    "--source",
    type=click.Choice(["open-meteo", "synthetic", "auto"]),
    default="open-meteo",
    show_default=True,
    help="auto: Open-Meteo, and the synthetic model when Open-Meteo cannot be reached (said so).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@fleet_option
@with_appcontext
def fetch(start_text, end_text, forecast_days, source, as_json, fleet_file) -> None:
    """Fetch irradiance, temperature and wind speed for the site and store them (with the PV power
    of the 10 sites) on the weather station's sensors; past hours as measurements, the rest as
    forecasts. Re-fetching stores only what changed."""
    from flexmeasures_cariflex.data.queries.site import SiteNotReady
    from flexmeasures_cariflex.data.services.weather import WeatherError, WeatherUnreachable, fetch_weather

    fleet = load_fleet_or_refuse(fleet_file)
    tz = fleet.site.timezone
    now = datetime.now(UTC)
    if (start_text or end_text) and forecast_days:
        refuse("give either --start/--end or --forecast-days, not both")
    if bool(start_text) != bool(end_text):
        refuse("--start and --end go together")
    if start_text:
        start, end = _utc(start_text, "--start", tz), _utc(end_text, "--end", tz)
        if end <= start:
            refuse(f"--end {end_text} must come after --start {start_text}")
        if end - start > timedelta(days=93):
            refuse("at most 93 days per fetch; fetch longer ranges in parts")
    else:
        start = pd.Timestamp(_backfill_start(fleet, now)).floor("h").to_pydatetime()
        end = pd.Timestamp(now + timedelta(days=forecast_days or 2)).ceil("D").to_pydatetime()
    with writing(WeatherError, SiteNotReady):
        try:
            # auto (the demo, island sites without internet): one retry, not three, before going offline.
            kind = "synthetic" if source == "synthetic" else "open-meteo"
            result = fetch_weather(
                fleet, start, end, source=kind, now=now, retries=1 if source == "auto" else 3
            )
        except WeatherUnreachable as exc:
            if source != "auto":
                raise
            click.secho(
                f"Open-Meteo cannot be reached ({exc}); using the synthetic weather model.", fg="yellow"
            )
            db.session.rollback()
            result = fetch_weather(fleet, start, end, source="synthetic", now=now)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "source": result.source,
                    "start": result.start.isoformat(),
                    "end": result.end.isoformat(),
                    "written": result.written,
                }
            )
        )
    else:
        click.echo(result.summary())


@cariflex_bp.cli.command("production-price")
@click.option("--day", "day_text", default=None, help="Local day (YYYY-MM-DD). Default: tomorrow.")
@click.option(
    "--tariff",
    default=None,
    callback=inputs.click_callback(inputs.tariff),
    help="Flat EUR/MWh, 0..10000. Default: $CARIFLEX_FEED_IN_TARIFF.",
)
@click.option(
    "--csv", "csv_file", type=click.Path(dir_okay=False), default=None, help="24 hourly prices (EUR/MWh)."
)
@click.option("--no-replan", is_flag=True, help="Do not re-plan the fleet now, even if the price changed.")
@fleet_option
@with_appcontext
def production_price(day_text, tariff, csv_file, no_replan, fleet_file) -> None:
    """Store the production price (what the grid pays for injected energy) for one local day."""
    from flexmeasures_cariflex.data.queries.site import SiteNotReady
    from flexmeasures_cariflex.data.services.production_price import (
        PriceRefused,
        default_day,
        hourly_prices,
        store_production_prices,
    )
    from flexmeasures_cariflex.data.services.replan import replan_now

    fleet = load_fleet_or_refuse(fleet_file)
    if tariff is not None and csv_file:
        refuse("give either --tariff or --csv, not both")
    try:
        day = date.fromisoformat(day_text) if day_text else default_day(fleet)
    except ValueError:
        refuse(f"--day {day_text!r} is not a date like 2026-11-25")
    with writing(PriceRefused, SiteNotReady):
        prices = hourly_prices(csv_file, tariff)
        outcome = store_production_prices(fleet, day, prices)
    click.echo(
        f"Production price for {outcome['day']}: {min(prices):g}-{max(prices):g} EUR/MWh, "
        f"{outcome['written']} beliefs" + ("" if outcome["changed"] else " (unchanged)")
    )
    if outcome["replan"] and not no_replan:
        echo_replan(replan_now(fleet))


@cariflex_bp.cli.command("forecast-load")
@click.option(
    "--hours",
    default="36",
    show_default=True,
    callback=inputs.click_callback(inputs.hours),
    help="How far ahead, from the next quarter-hour.",
)
@fleet_option
@with_appcontext
def forecast_load(hours: float, fleet_file: str | None) -> None:
    """Forecast the site's base load (``site_load``) from its last two weeks of measurements
    (the fleet's daily profile until there are three days) and store it as beliefs made now."""
    from flexmeasures_cariflex.data.queries.site import SiteNotReady
    from flexmeasures_cariflex.data.services.load_forecast import forecast_base_load

    fleet = load_fleet_or_refuse(fleet_file)
    with writing(SiteNotReady):
        result = forecast_base_load(fleet, hours)
    if result.method == "none":
        click.echo("The fleet models no base load (site: base_load); nothing to forecast.")
        return
    click.echo(
        f"Base load forecast {result.start:%Y-%m-%d %H:%M} - {result.end:%Y-%m-%d %H:%M} UTC "
        f"from the {result.method}: {result.beliefs_saved} beliefs"
    )
