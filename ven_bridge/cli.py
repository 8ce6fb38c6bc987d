"""``cariflex-ven``: run the VEN bridge and look at its state.

cariflex-ven run            register with the VTN, poll, post events to FlexMeasures
cariflex-ven status         registration, last VTN contact, outbox depth, dead letters, last post
cariflex-ven outbox status  the outbox and every dead letter with FlexMeasures' answer
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
import time
from pathlib import Path
from typing import Any

import click

from cariflex import logs, settings
from cariflex.fleet import FleetError, load_fleet


def state_path(option: str | None) -> Path:
    return Path(option or settings.get("CARIFLEX_VEN_STATE_DIR") or settings.var_dir() / "ven")


state_option = click.option(
    "--state-dir", default=None, help="Outbox and state ($CARIFLEX_VEN_STATE_DIR, var/ven)."
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Cariflex VEN bridge: OpenADR events from the VTN into FlexMeasures, telemetry back."""
    logs.configure()


@cli.command()
@click.option("--vtn-url", default=lambda: settings.get("CARIFLEX_VTN_URL"), show_default="$CARIFLEX_VTN_URL")
@click.option("--ven-name", default=lambda: settings.get("CARIFLEX_VEN_NAME"), show_default="cariflex-ven")
@state_option
@click.option("--fleet", "fleet_file", default=None, help="Fleet description ($CARIFLEX_FLEET_FILE).")
@click.option("--cert", default=None, help="VEN certificate (PEM) for mutual TLS and signing.")
@click.option("--key", default=None, help="VEN private key (PEM).")
@click.option("--ca-file", default=None, help="CA that signed the VTN certificate.")
@click.option(
    "--vtn-fingerprint", default=None, help="Expected fingerprint of the VTN's signing certificate."
)
@click.option(
    "--s2-host",
    default=lambda: settings.get("CARIFLEX_S2_HOST"),
    show_default="127.0.0.1",
    help="Address the S2 CEM binds to; 0.0.0.0 in containers ($CARIFLEX_S2_HOST).",
)
@click.option(
    "--s2-port",
    type=int,
    default=lambda: int(settings.get("CARIFLEX_S2_PORT")),
    show_default="8765",
    help="S2 WebSocket port of the CEM, path /s2; 0 = any free port ($CARIFLEX_S2_PORT).",
)
@click.option(
    "--telemetry-seconds",
    type=click.FloatRange(min=1),
    default=10.0,
    show_default=True,
    help="Sampling period of the fleet TELEMETRY_USAGE report.",
)
@click.option(
    "--schedule-poll-seconds",
    "schedule_poll_s",
    type=click.FloatRange(min=0.2),
    default=lambda: float(settings.get("CARIFLEX_VEN_SCHEDULE_POLL_S")),
    show_default="2",
    help="How often to ask FlexMeasures whether the fleet schedule changed ($CARIFLEX_VEN_SCHEDULE_POLL_S).",
)
@click.option(
    "--dr-poll-seconds",
    "dr_poll_s",
    type=click.FloatRange(min=0.2),
    default=lambda: float(settings.get("CARIFLEX_VEN_DR_POLL_S")),
    show_default="300",
    help="How often to fetch the DR verification for the telemetry report ($CARIFLEX_VEN_DR_POLL_S).",
)
def run(
    vtn_url,
    ven_name,
    state_dir,
    fleet_file,
    cert,
    key,
    ca_file,
    vtn_fingerprint,
    s2_host,
    s2_port,
    telemetry_seconds,
    schedule_poll_s,
    dr_poll_s,
) -> None:
    """Run the VEN until SIGTERM or Ctrl-C."""
    from ven_bridge.fm_client import FlexMeasuresClient
    from ven_bridge.outbox import Outbox
    from ven_bridge.poster import Poster
    from ven_bridge.ven import CariflexVen, VenOptions

    try:
        fleet = load_fleet(fleet_file)
    except FleetError as exc:
        raise click.ClickException(str(exc)) from None
    logging.getLogger("openleadr").setLevel(logging.WARNING)  # it logs every message in full at INFO
    outbox = Outbox(state_path(state_dir))

    def fm_client() -> FlexMeasuresClient:
        return FlexMeasuresClient(
            settings.get("CARIFLEX_FM_URL"),
            settings.get("CARIFLEX_FM_USER"),
            settings.secret("CARIFLEX_FM_PASSWORD", "fm_ven_password"),
        )

    options = VenOptions(
        ven_name=ven_name,
        vtn_url=vtn_url,
        # Resource ids an event may target: our devices and the site itself.
        resources=frozenset({d.name for d in fleet.devices} | {fleet.site.name}),
        report_resource=fleet.site.name,
        cert=cert,
        key=key,
        ca_file=ca_file,
        vtn_fingerprint=vtn_fingerprint,
        telemetry_seconds=telemetry_seconds,
        s2_host=s2_host,
        s2_port=s2_port,
        schedule_poll_s=schedule_poll_s,
    )
    try:
        poster = Poster(outbox, fm_client())
        asyncio.run(
            CariflexVen(
                options,
                outbox,
                poster,
                fleet,
                schedule_client=fm_client(),
                dr_client=fm_client(),
                dr_poll_s=dr_poll_s,
            ).run()
        )
    finally:
        # Shut down already: a second SIGTERM (e.g. a supervisor after Ctrl-C) must not kill the exit.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _age(at: float | None) -> str:
    return "never" if not at else f"{time.time() - at:.1f} s ago"


def _status(state: str | None) -> dict[str, Any]:
    from ven_bridge.outbox import Outbox

    outbox = Outbox(state_path(state))
    try:
        registration = outbox.get_state("registration") or {}
        contact = outbox.get_state("last_vtn_contact") or {}
        post = outbox.get_state("last_post") or {}
        return {
            "registered": bool(registration.get("ven_id")),
            "ven_id": registration.get("ven_id"),
            "poll_seconds": registration.get("poll_seconds"),
            "last_vtn_contact_at": contact.get("at"),
            "last_post_at": post.get("at"),
            "s2": outbox.get_state("s2") or {},
            "schedule": {
                k: v
                for k, v in (outbox.get_state("schedule") or {}).items()
                if k in ("version", "start", "breaches")
            },
            **outbox.status(),
        }
    finally:
        outbox.close()


@cli.command()
@state_option
@click.option("--json", "as_json", is_flag=True)
@click.option(
    "--check", is_flag=True, help="Exit 1 unless registered and in contact with the VTN (health check)."
)
def status(state_dir, as_json, check) -> None:
    """Registration state, last VTN contact, outbox depth, dead letters, last FlexMeasures post."""
    data = _status(state_dir)
    if as_json:
        click.echo(json.dumps(data, indent=2))
    else:
        click.echo(
            f"registered: {'yes, ven_id ' + data['ven_id'] if data['registered'] else 'no'}\n"
            f"last VTN contact: {_age(data['last_vtn_contact_at'])}\n"
            f"outbox: {data['outbox_depth']} pending"
            + (
                f" (oldest {data['oldest_pending_age_s']} s, last error: {data['head_error']})"
                if data["outbox_depth"]
                else ""
            )
            + f"\ndead letters: {data['dead_letters']}\n"
            f"last FlexMeasures post: {_age(data['last_post_at'])}\n"
            f"delivered: {data['delivered']}\n"
            f"S2: {data['s2'].get('under_frbc', 0)} device(s) under FRBC control"
            + (
                f", load-control cap {data['s2']['cap_kw']:.0f} kW, shortfall {data['s2']['shortfall_kw']} kW"
                if data["s2"].get("cap_kw") is not None
                else ""
            )
        )
    if check:
        poll = data["poll_seconds"] or 10
        fresh = data["last_vtn_contact_at"] and time.time() - data["last_vtn_contact_at"] < 3 * poll + 5
        sys.exit(0 if data["registered"] and fresh else 1)


@cli.command(context_settings={"ignore_unknown_options": True})  # so that "-15" is a number, not an option
@click.argument("device")
@click.argument("kw", type=float, required=False)
@click.option("--clear", is_flag=True, help="Remove the device's setpoint (it is left alone again).")
@state_option
@click.option("--fleet", "fleet_file", default=None)
def setpoint(device, kw, clear, state_dir, fleet_file) -> None:
    """Set DEVICE's power in kW (charging positive); the running VEN's CEM applies it within a second."""
    from ven_bridge.outbox import Outbox

    try:
        fleet = load_fleet(fleet_file)
    except FleetError as exc:
        raise click.ClickException(str(exc)) from None
    names = {d.name for d in (*fleet.batteries, *fleet.ev_chargers)}
    if device not in names:
        raise click.ClickException(f"device {device!r} is not a battery or EV charger of the fleet")
    if kw is None and not clear:
        raise click.UsageError("give KW, or --clear")
    box = Outbox(state_path(state_dir))
    try:
        setpoints = box.get_state("setpoints", {})
        if clear:
            setpoints.pop(device, None)
        else:
            setpoints[device] = kw
        box.set_state("setpoints", setpoints)
    finally:
        box.close()
    click.echo(f"{device}: {'no setpoint' if clear else f'{kw:g} kW'}")


@cli.group()
def outbox() -> None:
    """The queue towards FlexMeasures."""


@outbox.command("status")
@state_option
@click.option("--json", "as_json", is_flag=True)
def outbox_status(state_dir, as_json) -> None:
    """Depth, the head entry's last error, and each dead letter with FlexMeasures' answer."""
    from ven_bridge.outbox import Outbox

    box = Outbox(state_path(state_dir))
    try:
        data = {**box.status(), "dead_letter_entries": box.dead_letters(), "decisions": box.decisions()[-20:]}
    finally:
        box.close()
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    click.echo(
        f"pending: {data['outbox_depth']}  delivered: {data['delivered']}  "
        f"dead letters: {data['dead_letters']}"
    )
    if data["head_error"]:
        click.echo(f"head entry: {data['head_attempts']} attempt(s), last error: {data['head_error']}")
    for dead in data["dead_letter_entries"]:
        click.echo(
            f"  dead #{dead['id']} {dead['key']}  HTTP {dead['status_code']}: {dead['response'][:300]}"
        )


def main() -> None:
    cli(prog_name="cariflex-ven")


if __name__ == "__main__":
    main()
