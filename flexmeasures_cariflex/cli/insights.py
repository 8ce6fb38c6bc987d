"""``flexmeasures cariflex statistics | flexibility | dr-verification | alerts | carbon-intensity``.

The answers to the questions people on the grid ask; the same figures as the JSON API
(``/api/cariflex/v1/statistics`` ...), computed by ``data/services`` and explained there.
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta

import click
import pandas as pd
from flask.cli import with_appcontext

from cariflex import inputs
from flexmeasures_cariflex import cariflex_bp
from flexmeasures_cariflex.cli.utils import fleet_option, load_fleet_or_refuse, refuse, writing


def _json(data) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def _since(text: str) -> datetime:
    try:
        return inputs.since(text, "--since")
    except inputs.InputError as exc:
        refuse(str(exc))


@cariflex_bp.cli.command("statistics")
@click.option("--day", default=None, help="A local day, YYYY-MM-DD.")
@click.option("--month", default=None, help="A month, YYYY-MM.")
@click.option("--year", default=None, help="A year, YYYY.")
@click.option("--device", default=None, help="One device, e.g. bat_01 (default: the whole site).")
@click.option("--group", type=click.Choice(["pv", "batteries", "evs"]), default=None)
@click.option(
    "--store/--no-store",
    default=None,
    help="Write the site's daily figures to its sensors (default: site only).",
)
@click.option("--json", "as_json", is_flag=True)
@fleet_option
@with_appcontext
def statistics_command(day, month, year, device, group, store, as_json, fleet_file) -> None:
    """Energy consumed and injected, cost and revenue, CO2, self-consumption and load coverage,
    per local day and in total. Without a period: today (site time)."""
    from flexmeasures_cariflex.data.services.statistics import (
        StatisticsError,
        parse_period,
        statistics,
        store_daily,
    )

    fleet = load_fleet_or_refuse(fleet_file)
    if store and (device or group):
        refuse("--store writes the site's daily figures; it cannot be combined with --device or --group")
    if not (day or month or year):
        day = datetime.now(UTC).astimezone(pd.Timestamp.now(tz=fleet.site.timezone).tzinfo).date().isoformat()
    with writing(StatisticsError):
        result = statistics(fleet, parse_period(day, month, year), device=device, group=group)
        stored = 0
        if store is not False and result["scope"] == "site":
            stored = store_daily(fleet, result)
    if as_json:
        _json(result | {"stored": stored})
        return
    t = result["total"]
    click.echo(
        f"{result['scope']}, {result['period']} ({result['timezone']}): "
        f"{t['periods']} quarter-hours with data"
    )
    click.echo(f"  consumed {t['consumed_kwh']:.3f} kWh, injected {t['injected_kwh']:.3f} kWh")
    click.echo(
        f"  cost {t['cost_eur']:.2f} EUR, revenue {t['revenue_eur']:.2f} EUR, CO2 {t['co2_kg']:.3f} kg"
    )
    if "self_consumption_pct" in t:

        def pct(v):
            return "n/a" if v is None else f"{v:.1f} %"

        click.echo(
            f"  PV {t['pv_production_kwh']:.3f} kWh, self-consumed {pct(t['self_consumption_pct'])}; "
            f"load {t['load_kwh']:.3f} kWh: batteries {pct(t['battery_share_pct'])}, "
            f"grid {pct(t['grid_share_pct'])}"
        )
    if t["periods_without_price"]:
        click.secho(
            f"  note: {t['periods_without_price']} quarter-hours had no price (no money counted)", fg="yellow"
        )
    if stored:
        click.echo(f"  stored {stored} daily value(s) on the site's statistics sensors")


@cariflex_bp.cli.command("flexibility")
@click.option(
    "--hours",
    type=str,  # the text as typed: the rule reads it
    default="1",
    show_default=True,
    callback=inputs.click_callback(inputs.hours),
    help="Look-ahead, 0.25..48 h.",
)
@click.option("--store", is_flag=True, help="Write the fleet figures to fleet_flexibility_up/down (Grafana).")
@click.option("--json", "as_json", is_flag=True)
@fleet_option
@with_appcontext
def flexibility_command(hours, store, as_json, fleet_file) -> None:
    """How much power and energy each battery and EV, and the fleet, could add or shed from now."""
    from flexmeasures_cariflex.data.services.flexibility import FlexibilityError, current, store_fleet

    fleet = load_fleet_or_refuse(fleet_file)
    with writing(FlexibilityError):
        flex = current(fleet, hours=hours)
        if store:
            store_fleet(fleet, flex)
    if as_json:
        _json(flex.as_dict())
        return
    click.echo(
        f"next {hours:g} h from {flex.start:%Y-%m-%d %H:%M} UTC: fleet now {flex.current_kw:.1f} kW, "
        f"could add {flex.up_kw:.1f} kW ({flex.up_kwh:.1f} kWh), shed {flex.down_kw:.1f} kW "
        f"({flex.down_kwh:.1f} kWh); lowest possible import {flex.min_import_kw:.1f} kW"
    )
    for d in flex.devices:
        click.echo(f"  {d.name:<8} up {d.up_kw:6.1f} kW  down {d.down_kw:6.1f} kW  ({d.note})")


@cariflex_bp.cli.command("dr-verification")
@click.option("--since", "since_text", default="P7D", show_default=True, help="ISO time or duration back.")
@click.option(
    "--store", is_flag=True, help="Write delivered kWh and % per event to the DR sensors (Grafana)."
)
@click.option("--json", "as_json", is_flag=True)
@fleet_option
@with_appcontext
def dr_verification_command(since_text, store, as_json, fleet_file) -> None:
    """For every load-control event: baseline, measured fleet import, delivered kWh, % of the request."""
    from flexmeasures_cariflex.data.services.dr_verification import (
        VerificationError,
        store_verifications,
        verify_events,
    )

    fleet = load_fleet_or_refuse(fleet_file)
    since = _since(since_text)
    with writing(VerificationError):
        results = verify_events(fleet, since, datetime.now(UTC))
        if store and results:
            store_verifications(fleet, results)
    if as_json:
        _json(results)
        return
    if not results:
        click.echo(f"no load-control event since {since:%Y-%m-%d %H:%M} UTC")
    for r in results:
        pct = "n/a" if r["delivered_pct"] is None else f"{r['delivered_pct']:.0f} %"
        click.echo(
            f"{r['start']} - {r['end']}: cap {r['cap_kw']:.0f} kW, baseline {r['baseline_kwh']:.1f} kWh, "
            f"measured {r['measured_kwh']:.1f} kWh, delivered {r['delivered_kwh']:.1f} of "
            f"{r['requested_kwh']:.1f} kWh requested ({pct}); "
            f"baseline days: {', '.join(r['baseline_days']) or 'none'}"
        )


@cariflex_bp.cli.group("alerts", invoke_without_command=True)
@click.option("--since", "since_text", default="PT24H", show_default=True, help="ISO time or duration back.")
@click.option("--rule", type=click.Choice(["out_of_bounds", "silent", "not_following"]), default=None)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
@with_appcontext
def alerts(ctx, since_text, rule, as_json) -> None:
    """List alerts recorded since --since (newest first); `alerts check` looks for new ones."""
    if ctx.invoked_subcommand is not None:
        return
    from flexmeasures_cariflex.data.services.alerts import list_alerts

    rows = list_alerts(_since(since_text), rule)
    if as_json:
        _json(rows)
        return
    if not rows:
        click.echo("no alerts")
    for r in rows:
        click.echo(f"{r['time']}  {r['rule']:<14} {r['sensor']:<16} {r['detail']}")


@alerts.command("check")
@fleet_option
@with_appcontext
def alerts_check(fleet_file) -> None:
    """Record silent sensors and devices not following their schedule, as of now."""
    from flexmeasures_cariflex.data.services.alerts import check

    fleet = load_fleet_or_refuse(fleet_file)
    with writing(ValueError):
        found = check(fleet)
    click.echo(
        f"alerts check: {found['silent']} silent sensor(s), {found['not_following']} period(s) not followed"
    )


@cariflex_bp.cli.command("carbon-intensity")
@click.option("--day", default=None, help="Local day YYYY-MM-DD (default: today and tomorrow).")
@click.option(
    "--csv", "csv_file", type=click.Path(dir_okay=False), default=None, help="24 hourly values, gCO2/kWh."
)
@fleet_option
@with_appcontext
def carbon_intensity_command(day, csv_file, fleet_file) -> None:
    """Store the grid's carbon intensity (gCO2/kWh) for a day: from a CSV of 24 hourly values
    (or $CARIFLEX_CARBON_INTENSITY_FILE), else the flat $CARIFLEX_CARBON_INTENSITY."""
    from flexmeasures_cariflex.data.services.carbon import CarbonError, store_carbon_intensity

    fleet = load_fleet_or_refuse(fleet_file)
    tz = pd.Timestamp.now(tz=fleet.site.timezone)
    try:
        days = [date.fromisoformat(day)] if day else [tz.date(), (tz + timedelta(days=1)).date()]
    except ValueError:
        refuse(f"--day {day!r} is not a day like 2026-11-24")
    with writing(CarbonError, ValueError):
        for d in days:
            result = store_carbon_intensity(fleet, d, csv_file)
            click.echo(
                f"carbon intensity {d}: {result['written']} hourly value(s) written ({result['source']})"
            )
