"""``flexmeasures cariflex ...``: set up the site from the fleet file, look up its sensors, create
the logins Cariflex needs and ingest OpenADR events by hand."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

import click
from flask.cli import with_appcontext
from flexmeasures.data import db

from cariflex import settings
from cariflex.json_input import JsonInputError, load_json
from flexmeasures_cariflex import cariflex_bp
from flexmeasures_cariflex.cli.utils import echo_replan, fleet_option, load_fleet_or_refuse, refuse, writing
from flexmeasures_cariflex.data.queries.site import site_sensors
from flexmeasures_cariflex.data.services.admin_user import (
    ADMIN_ROLES,
    VEN_ROLES,
    ensure_user,
    missing_roles,
    shared_login,
)
from flexmeasures_cariflex.data.services.openadr_ingest import IngestError, SiteNotReady, ingest_event
from flexmeasures_cariflex.data.services.replan import replan_now
from flexmeasures_cariflex.data.services.site_setup import setup_site


@cariflex_bp.cli.command("setup")
@fleet_option
@with_appcontext
def setup(fleet_file: str | None) -> None:
    """Create (or complete) the Cariflex site: account, assets, sensors and data sources.

    Safe to run again: it adds what the fleet file has and the database lacks, updates changed
    parameters, and reports (never deletes) what the database has and the fleet file lacks.
    """
    fleet = load_fleet_or_refuse(fleet_file)
    try:
        report = setup_site(fleet)
        db.session.commit()
    except Exception:
        db.session.rollback()
        raise
    click.echo(
        f"Cariflex setup from {fleet.source} (site '{fleet.site.name}', account '{fleet.site.account}')"
    )
    for item in report.created:
        click.echo(f"  created  {item}")
    for item in report.updated:
        click.echo(f"  updated  {item}")
    for item in report.conflicts:
        click.secho(f"  conflict {item}", fg="yellow")
    if report.not_deleted:
        click.secho(
            "Not deleted (in the database but not in the fleet file; delete by hand if intended, "
            "e.g. `flexmeasures delete asset --id ID`, which also deletes its data):",
            fg="yellow",
        )
        for item in report.not_deleted:
            click.echo(f"  kept     {item}")
    click.echo(report.summary())


@cariflex_bp.cli.command("sensors")
@fleet_option
@click.option("--json", "as_json", is_flag=True, help="Print {name: id} as JSON, for other programs.")
@with_appcontext
def sensors(fleet_file: str | None, as_json: bool) -> None:
    """Print the site's sensors: name, id, unit and resolution."""
    fleet = load_fleet_or_refuse(fleet_file)
    try:
        found = site_sensors(fleet)
    except LookupError as exc:
        click.secho(f"Error: {exc}", fg="red", err=True)
        sys.exit(1)
    if as_json:
        click.echo(json.dumps({name: s.id for name, s in found.items()}, indent=2))
        return
    width = max((len(n) for n in found), default=4)
    click.echo(f"{'name':<{width}}  {'id':>5}  {'unit':<8}  resolution")
    for name, s in found.items():
        click.echo(f"{name:<{width}}  {s.id:>5}  {s.unit:<8}  {s.event_resolution}")


def _ensure_login(
    label: str,
    email: str,
    roles: Sequence[str],
    fleet_file: str | None,
    password_variable: str,
    password_file: str,
) -> None:
    """Create a login in the fleet's account once; show its password only then."""
    fleet = load_fleet_or_refuse(fleet_file)
    password = settings.secret(password_variable, password_file)
    try:
        created = ensure_user(email, password, fleet.site.account, roles)
        db.session.commit()
    except Exception:
        db.session.rollback()
        raise
    if created:
        if settings.get(password_variable):  # the operator's own: never echoed into logs
            click.echo(f"{label} created: {email}  password: ${password_variable}")
        else:
            click.echo(f"{label} created: {email}  password: {password}")
            click.echo(f"(stored in {settings.var_dir() / password_file}; shown only this once)")
        return
    click.echo(f"{label} exists: {email} (password unchanged)")
    lacking = missing_roles(email, roles)
    if lacking:
        click.secho(f"  warning: {email} lacks the role(s) {', '.join(lacking)}", fg="yellow")


@cariflex_bp.cli.command("ensure-admin")
@click.option("--email", default=None, help="Default: $CARIFLEX_ADMIN_EMAIL.")
@fleet_option
@with_appcontext
def ensure_admin_command(email: str | None, fleet_file: str | None) -> None:
    """Create the platform admin once; its password comes from $CARIFLEX_ADMIN_PASSWORD or
    var/admin_password (generated on first use, mode 600) and is shown only when created."""
    email = email or settings.get("CARIFLEX_ADMIN_EMAIL")
    _ensure_login("Admin", email, ADMIN_ROLES, fleet_file, "CARIFLEX_ADMIN_PASSWORD", "admin_password")


@cariflex_bp.cli.command("ensure-ven-user")
@click.option("--email", default=None, help="Default: $CARIFLEX_FM_USER.")
@fleet_option
@with_appcontext
def ensure_ven_user_command(email: str | None, fleet_file: str | None) -> None:
    """Create the user the VEN bridge posts OpenADR events as (role cariflex-ven) once; its
    password comes from $CARIFLEX_FM_PASSWORD or var/fm_ven_password (generated on first use,
    mode 600) and is shown only when created."""
    email = email or settings.get("CARIFLEX_FM_USER")
    problem = shared_login(email, settings.get("CARIFLEX_ADMIN_EMAIL"))
    if problem:
        click.secho(f"Error: {problem}", fg="red", err=True)
        sys.exit(1)
    _ensure_login("VEN user", email, VEN_ROLES, fleet_file, "CARIFLEX_FM_PASSWORD", "fm_ven_password")


@cariflex_bp.cli.command("ingest-event")
@click.argument("event_file", type=click.Path(dir_okay=False))
@click.option(
    "--no-replan", is_flag=True, help="Do not re-plan the fleet now, even if prices or limits changed."
)
@fleet_option
@with_appcontext
def ingest_event_command(event_file: str, no_replan: bool, fleet_file: str | None) -> None:
    """Ingest one normalised OpenADR event from a JSON file, exactly as the VEN bridge posts it
    to POST /api/cariflex/v1/openadr/events. A replay (same event id and modification number)
    writes nothing; a refused event writes nothing and exits 1. When prices or the load-control
    limit changed, the fleet is re-planned at once (the next request re-plans if --no-replan)."""
    fleet = load_fleet_or_refuse(fleet_file)
    try:
        event = load_json(Path(event_file).read_bytes())  # the API's JSON rules, for the file too
    except OSError as exc:
        refuse(f"{event_file} cannot be read: {exc.strerror or exc}")
    except JsonInputError as exc:
        refuse(f"{event_file} is not JSON we accept: {exc}")
    with writing(IngestError, SiteNotReady):
        result = ingest_event(event, fleet)
    click.echo(result.summary())
    if result.replan and not no_replan:
        echo_replan(replan_now(fleet))


@cariflex_bp.cli.command("schedule")
@click.option(
    "--start",
    "start_text",
    default=None,
    help="ISO start, e.g. 2026-11-25T00:00-04:00. Default: next local midnight.",
)
@click.option(
    "--horizon",
    "horizon_text",
    default="PT24H",
    show_default=True,
    help="ISO 8601 duration, whole 15-minute periods, at most 7 days.",
)
@click.option("--dry-run", is_flag=True, help="Compute and print, write nothing.")
@click.option(
    "--as-job",
    is_flag=True,
    help="Queue it on FlexMeasures' scheduling queue (needs CARIFLEX_REDIS_URL and a worker: "
    "flexmeasures jobs run-worker --queue scheduling).",
)
@fleet_option
@with_appcontext
def schedule_command(
    start_text: str | None, horizon_text: str, dry_run: bool, as_job: bool, fleet_file: str | None
) -> None:
    """Schedule all batteries and EV chargers of the site in one run (FlexMeasures StorageScheduler)
    and save the result on their power sensors as "Cariflex scheduler", unless --dry-run."""
    from datetime import datetime, timedelta
    from zoneinfo import ZoneInfo

    from cariflex import inputs
    from cariflex.site_model import QUARTER
    from flexmeasures_cariflex.data.services.fleet_schedule import compute_fleet_schedule

    fleet = load_fleet_or_refuse(fleet_file)
    tz = ZoneInfo(fleet.site.timezone)
    try:
        horizon = inputs.duration(horizon_text, "--horizon", step=QUARTER)
    except inputs.InputError as exc:
        refuse(str(exc))
    if start_text:
        try:
            start = datetime.fromisoformat(start_text)
        except ValueError:
            refuse(f"--start {start_text!r} is not an ISO datetime like 2026-11-25T00:00-04:00")
        if start.tzinfo is None:
            start = start.replace(tzinfo=tz)
    else:
        start = datetime.combine(datetime.now(tz).date() + timedelta(days=1), datetime.min.time(), tz)
    if as_job:
        _queue_schedule(start, horizon, dry_run, fleet_file)
        return
    try:
        result = compute_fleet_schedule(fleet, start, horizon=horizon, dry_run=dry_run)
        if result.ok and not dry_run:
            db.session.commit()
        else:
            db.session.rollback()
    except (ValueError, LookupError) as exc:
        db.session.rollback()
        refuse(str(exc))
    except Exception:
        db.session.rollback()
        raise
    click.echo(
        f"Fleet schedule {result.start.astimezone(tz):%Y-%m-%d %H:%M} - "
        f"{result.end.astimezone(tz):%Y-%m-%d %H:%M} "
        f"({fleet.site.timezone}), {result.resolution} steps, {len(result.devices)} devices"
        + (" (dry run: nothing written)" if dry_run else "")
    )
    for note in result.notes:
        click.echo(f"  note: {note}")
    if not result.ok:
        click.secho(f"Error: {result.infeasible}", fg="red", err=True)
        sys.exit(1)
    click.echo(f"  {'device':<8} {'charged kWh':>12} {'discharged kWh':>15} {'peak kW':>8}")
    for name, dev in result.devices.items():
        click.echo(f"  {name:<8} {dev.charged_kwh:>12.1f} {dev.discharged_kwh:>15.1f} {dev.peak_kw:>8.1f}")
    if result.breaches:
        click.secho(f"{len(result.breaches)} breach(es):", fg="yellow")
        for breach in result.breaches:
            click.secho(f"  {breach}", fg="yellow")
    else:
        click.echo("No breaches.")
    click.echo(
        f"compute {result.compute_seconds:.2f} s"
        + ("" if dry_run else f", saved {result.beliefs_saved} beliefs in {result.save_seconds:.2f} s")
    )


def _queue_schedule(start, horizon, dry_run: bool, fleet_file: str | None) -> None:
    from flask import current_app

    from cariflex import settings
    from flexmeasures_cariflex.data.services.fleet_schedule import schedule_job

    if dry_run:
        refuse("--as-job and --dry-run do not go together: a job's result is its saved schedule")
    if not settings.get("CARIFLEX_REDIS_URL"):
        refuse("--as-job needs CARIFLEX_REDIS_URL (the Redis of FlexMeasures' job queues)")
    job = current_app.queues["scheduling"].enqueue(
        schedule_job,
        start.isoformat(),
        horizon.total_seconds(),
        fleet_file,
        job_timeout=180,
        result_ttl=86400,
    )
    click.echo(f"Queued fleet schedule job {job.id}; run by: flexmeasures jobs run-worker --queue scheduling")


@cariflex_bp.cli.command("replan")
@fleet_option
@with_appcontext
def replan_command(fleet_file: str | None) -> None:
    """Re-plan the fleet now (one MPC step): from the current quarter-hour, with each device's
    latest measured state of charge, up to where prices are known (the worker and `make demo`
    run this every 15 minutes, besides the re-plans that price and limit changes trigger)."""
    fleet = load_fleet_or_refuse(fleet_file)
    echo_replan(replan_now(fleet, force=True))


@cariflex_bp.cli.command("grafana-role")
@click.option(
    "--password-env",
    default="CARIFLEX_GRAFANA_DB_PASSWORD",
    show_default=True,
    help="Environment variable holding the role's password (unset: generated under var/ for the default).",
)
@with_appcontext
def grafana_role(password_env: str) -> None:
    """Create or update the SELECT-only role `grafana_reader` that Grafana reads FlexMeasures through
    (SELECT on the five tables the dashboard reads, read-only transactions). Safe to run again."""
    import os

    from flexmeasures_cariflex.data.services.grafana_role import ROLE, TABLES, ensure_grafana_role

    if password_env == "CARIFLEX_GRAFANA_DB_PASSWORD":
        password = settings.secret("CARIFLEX_GRAFANA_DB_PASSWORD", "grafana_db_password")
    else:
        password = os.environ.get(password_env)
        if not password:
            refuse(f"{password_env} is not set; it must hold the password for {ROLE}")
    try:
        outcome = ensure_grafana_role(password)
        db.session.commit()
    except Exception as exc:
        db.session.rollback()
        refuse(f"cannot create or update the role {ROLE}: {exc}")
    click.echo(f"Role {ROLE} {outcome}: SELECT on {', '.join(TABLES)}; read-only transactions.")
