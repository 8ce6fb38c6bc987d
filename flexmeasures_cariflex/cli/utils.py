"""What every ``flexmeasures cariflex`` command shares: the --fleet option, refusing with the
reason, one transaction per command, and how a re-plan is reported.

Public so that the CLI modules (``commands``, ``insights``, ``weather``) use one copy instead of
importing each other's private helpers.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn

import click
from flexmeasures.data import db

from cariflex.fleet import Fleet, FleetError, load_fleet

fleet_option = click.option(
    "--fleet",
    "fleet_file",
    type=click.Path(dir_okay=False),
    default=None,
    help="Fleet description (YAML). Default: $CARIFLEX_FLEET_FILE, else the packaged Cariflex fleet.",
)


def refuse(message: str) -> NoReturn:
    click.secho(f"Error: {message}", fg="red", err=True)
    click.echo("Nothing was written to the database.", err=True)
    sys.exit(1)


@contextmanager
def writing(*refused: type[Exception]) -> Iterator[None]:
    """One transaction for a command: committed at the end; on a refusal rolled back and the command
    exits 1 with the reason ("Nothing was written"); on anything else rolled back and raised."""
    try:
        yield
        db.session.commit()
    except refused as exc:
        db.session.rollback()
        refuse(str(exc))
    except Exception:
        db.session.rollback()
        raise


def load_fleet_or_refuse(fleet_file: str | None) -> Fleet:
    try:
        return load_fleet(fleet_file)
    except FleetError as exc:
        refuse(str(exc))


def echo_replan(status: dict | None) -> None:
    if status is None:
        click.echo("Re-plan: the current schedule already includes this change.")
        return
    if not status.get("ok"):
        click.secho(f"Re-plan failed: {status.get('error')}", fg="red", err=True)
        return
    click.echo(
        f"Re-planned {status['start']} - {status['end']} in {status['compute_s']:.2f} s "
        f"(+{status['save_s']:.2f} s saving), version {status['version']}"
    )
    for note in status.get("notes", []):
        click.echo(f"  note: {note}")
    for breach in status.get("breaches", []):
        click.secho(f"  breach: {breach}", fg="yellow")
