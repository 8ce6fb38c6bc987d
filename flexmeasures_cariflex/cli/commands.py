"""``flexmeasures cariflex ...``: set up the site from the fleet file and look up its sensors."""

from __future__ import annotations

import json
import sys

import click
from flask.cli import with_appcontext
from flexmeasures.data import db

from cariflex import settings
from cariflex.fleet import Fleet, FleetError, load_fleet
from flexmeasures_cariflex import cariflex_bp
from flexmeasures_cariflex.data.services.admin_user import ensure_admin
from flexmeasures_cariflex.data.services.site_setup import setup_site, site_sensors

fleet_option = click.option(
    "--fleet",
    "fleet_file",
    type=click.Path(dir_okay=False),
    default=None,
    help="Fleet description (YAML). Default: $CARIFLEX_FLEET_FILE, else the packaged Cariflex fleet.",
)


def _load(fleet_file: str | None) -> Fleet:
    try:
        return load_fleet(fleet_file)
    except FleetError as exc:
        click.secho(f"Error: {exc}", fg="red", err=True)
        click.echo("Nothing was written to the database.", err=True)
        sys.exit(1)


@cariflex_bp.cli.command("setup")
@fleet_option
@with_appcontext
def setup(fleet_file: str | None) -> None:
    """Create (or complete) the Cariflex site: account, assets, sensors and data sources.

    Safe to run again: it adds what the fleet file has and the database lacks, updates changed
    parameters, and reports (never deletes) what the database has and the fleet file lacks.
    """
    fleet = _load(fleet_file)
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
    fleet = _load(fleet_file)
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


@cariflex_bp.cli.command("ensure-admin")
@click.option("--email", default=None, help="Default: $CARIFLEX_ADMIN_EMAIL.")
@fleet_option
@with_appcontext
def ensure_admin_command(email: str | None, fleet_file: str | None) -> None:
    """Create the platform admin once; its password comes from $CARIFLEX_ADMIN_PASSWORD or
    var/admin_password (generated on first use, mode 600) and is shown only when created."""
    fleet = _load(fleet_file)
    email = email or settings.get("CARIFLEX_ADMIN_EMAIL")
    password = settings.secret("CARIFLEX_ADMIN_PASSWORD", "admin_password")
    try:
        created = ensure_admin(email, password, fleet.site.account)
        db.session.commit()
    except Exception:
        db.session.rollback()
        raise
    if created:
        click.echo(f"Admin created: {email}  password: {password}")
        if not settings.get("CARIFLEX_ADMIN_PASSWORD"):
            click.echo(f"(stored in {settings.var_dir() / 'admin_password'}; shown only this once)")
    else:
        click.echo(f"Admin exists: {email} (password unchanged)")
