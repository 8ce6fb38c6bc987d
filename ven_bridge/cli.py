"""``cariflex-ven``: run the VEN bridge and look at its state.

cariflex-ven run            register with the VTN, poll, post events to FlexMeasures
cariflex-ven status         registration, last VTN contact, outbox depth, dead letters, last post
cariflex-ven outbox status  the outbox and every dead letter with FlexMeasures' answer
cariflex-ven outbox requeue KEY...|--all   dead letters back into the outbox
cariflex-ven outbox discard KEY...|--all   give up on dead letters
cariflex-ven pair DEVICE    pair an S2 resource manager: a new access token, shown once
cariflex-ven unpair DEVICE  revoke a device's S2 pairing; cariflex-ven pairings lists them
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
@click.option(
    "--s2-cert",
    default=lambda: settings.get("CARIFLEX_S2_CERT"),
    help="Certificate (PEM, chain) of the S2 CEM: serve wss:// instead of ws:// ($CARIFLEX_S2_CERT).",
)
@click.option(
    "--s2-key",
    default=lambda: settings.get("CARIFLEX_S2_KEY"),
    help="Its private key (PEM; $CARIFLEX_S2_KEY).",
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
    s2_cert,
    s2_key,
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
    if s2_key and not s2_cert:
        raise click.UsageError("--s2-key needs --s2-cert")
    if s2_cert:
        import ssl

        from cem.server import server_ssl_context

        try:
            server_ssl_context(s2_cert, s2_key)
        except (OSError, ssl.SSLError) as exc:
            raise click.ClickException(f"S2 TLS certificate or key unusable: {exc}") from None
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
        s2_cert=s2_cert,
        s2_key=s2_key,
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


def _s2_report(report: Any) -> dict[str, Any]:
    """The CEM's report (outbox state "s2") through its contract; {} when there is none yet, and
    ``{"error": ...}`` when it is unusable."""
    from cariflex.contracts.s2_device import ContractError, FleetStatus

    if not report:
        return {}
    try:
        return FleetStatus.from_dict(report).to_dict()
    except ContractError as exc:
        return {"error": f"the CEM's report is unusable: {exc}"}


def _kw(value: float | None) -> str:
    return "unknown" if value is None else f"{value:.1f} kW"


def _site_line(s2: dict[str, Any]) -> str:
    """The site at the connection: net import = fleet (measured) + base load − PV, the latter
    measured by the site's meters when they are all fresh, else as the schedule planned it; then
    the metered PV and base load."""
    if not s2 or "error" in s2:
        return ""
    if s2.get("fleet_kw") is None and s2.get("site_kw") is None and not s2.get("meters"):
        return ""
    source = s2.get("site_source") or ("planned" if s2.get("site_kw") is not None else None)
    if source == "measured":
        why = "measured by the site's meters"
    elif source == "planned":
        why = "planned for this quarter-hour, a forecast"
    else:
        why = "not measured nor in the schedule: a cap holds on the fleet alone"
    line = (
        f"\nsite: net import {_kw(s2.get('net_import_kw'))} = fleet {_kw(s2.get('fleet_kw'))} (measured)"
        f" + base load − PV {_kw(s2.get('site_kw'))} ({why})"
    )
    meters = s2.get("meters") or {}
    if meters:
        from cariflex.s2.meters import MEASURED_MAX_AGE_S

        fresh = sum(
            m["age_s"] is not None and m["age_s"] <= MEASURED_MAX_AGE_S and m["power_kw"] is not None
            for m in meters.values()
        )
        line += (
            f"\nmetered: PV {_kw(s2.get('pv_kw'))}, base load {_kw(s2.get('base_load_kw'))}"
            f" ({fresh} of {len(meters)} meter(s) reported within {MEASURED_MAX_AGE_S:.0f} s)"
        )
    return line


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
            "s2": _s2_report(outbox.get_state("s2")),
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
    """Registration state, last VTN contact, outbox depth, dead letters, last FlexMeasures post; the
    S2 fleet, a load-control cap in force and the site's net import (fleet + base load − PV)."""
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
            + (f" ({data['s2']['error']})" if "error" in data["s2"] else "")
            + (
                f", load-control cap {data['s2']['cap_kw']:.0f} kW, shortfall {data['s2']['shortfall_kw']} kW"
                if data["s2"].get("cap_kw") is not None
                else ""
            )
            + _site_line(data["s2"])
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
    from cariflex.contracts.s2_device import ContractError, Setpoints
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
        try:
            setpoints = Setpoints.from_dict(box.get_state("setpoints", {}))
        except ContractError as exc:  # the CEM ignores them all as they are: start afresh
            click.echo(f"Warning: the stored setpoints are unusable ({exc}); they are replaced.", err=True)
            setpoints = Setpoints()
        try:
            setpoints = setpoints.without(device) if clear else setpoints.with_setpoint(device, kw)
        except ContractError as exc:
            raise click.ClickException(str(exc)) from None
        box.set_state("setpoints", setpoints.to_dict())
    finally:
        box.close()
    click.echo(f"{device}: {'no setpoint' if clear else f'{kw:g} kW'}")


def _s2_resources(fleet_file: str | None) -> list[str]:
    """What may pair: batteries and EV chargers (FRBC), PV sites and the base load (metered)."""
    from cariflex.s2.meters import s2_resources

    try:
        fleet = load_fleet(fleet_file)
    except FleetError as exc:
        raise click.ClickException(str(exc)) from None
    return s2_resources(fleet)


@cli.command()
@click.argument("devices", nargs=-1)
@click.option(
    "--all",
    "all_devices",
    is_flag=True,
    help="Every S2 resource of the fleet: batteries, EV chargers, PV sites and the base load.",
)
@click.option(
    "--token-file",
    type=click.Path(dir_okay=False),
    default=None,
    help="Write the tokens into this file (JSON, mode 600, as cariflex-sim reads it) instead of showing "
    "them; a device whose token there is still valid keeps it.",
)
@click.option(
    "--rotate", is_flag=True, help="With --token-file: new tokens even where the old ones are valid."
)
@state_option
@click.option("--fleet", "fleet_file", default=None)
def pair(devices, all_devices, token_file, rotate, state_dir, fleet_file) -> None:
    """Pair DEVICE (S2 resource manager) with this CEM: a new access token, shown once.

    Enter the token in the device's S2 settings: it presents it on every connection as
    `Authorization: Bearer TOKEN`. Only the token's SHA-256 is kept (s2_pairings.json in the state
    folder). Pairing a paired device again replaces its token: the old one stops working and a
    running CEM closes the session that used it.
    """
    from cariflex.s2.credentials import TokenFileError, read_tokens, write_tokens
    from cem.pairing import PairingError, PairingStore

    known = _s2_resources(fleet_file)
    names = list(dict.fromkeys([*devices, *(known if all_devices else [])]))
    if not names:
        raise click.UsageError("name at least one DEVICE, or --all")
    unknown = [n for n in names if n not in known]
    if unknown:
        raise click.ClickException(
            f"not a battery, EV charger, PV site or base load of the fleet: {', '.join(unknown)}"
        )
    store = PairingStore(state_path(state_dir))
    try:
        store.load()
    except PairingError as exc:
        raise click.ClickException(str(exc)) from None
    if token_file is None:
        for name in names:
            click.echo(f"{name}  {store.pair(name)}")
        click.echo(f"Shown once: only their SHA-256 is kept, in {store.path}.", err=True)
        return
    try:
        tokens = read_tokens(token_file)
    except TokenFileError as exc:
        raise click.ClickException(str(exc)) from None
    for name in names:
        if not rotate and name in tokens and store.verify(name, tokens[name]):
            click.echo(f"{name}: already paired (token in {token_file})")
            continue
        tokens[name] = store.pair(name)
        write_tokens(token_file, tokens)  # after each: a failure never loses a token already in force
        click.echo(f"{name}: paired (token in {token_file})")


@cli.command()
@click.argument("devices", nargs=-1, required=True)
@state_option
def unpair(devices, state_dir) -> None:
    """Revoke DEVICE's S2 pairing: its token stops working and a running CEM closes its session."""
    from cem.pairing import PairingError, PairingStore

    store = PairingStore(state_path(state_dir))
    try:
        for name in devices:
            click.echo(f"{name}: {'unpaired' if store.unpair(name) else 'was not paired'}")
    except PairingError as exc:
        raise click.ClickException(str(exc)) from None


@cli.command()
@state_option
@click.option("--fleet", "fleet_file", default=None)
@click.option("--json", "as_json", is_flag=True)
def pairings(state_dir, fleet_file, as_json) -> None:
    """Each fleet device's S2 pairing: when it was paired and its token id (never the token)."""
    from cem.pairing import PairingError, PairingStore

    known = _s2_resources(fleet_file)
    try:
        paired = {p.device: p for p in PairingStore(state_path(state_dir)).load()}
    except PairingError as exc:
        raise click.ClickException(str(exc)) from None
    rows = [
        {
            "device": name,
            "paired": name in paired,
            "paired_at": paired[name].paired_at if name in paired else None,
            "token_id": paired[name].token_id if name in paired else None,
            "in_fleet": name in known,
        }
        for name in [*known, *sorted(set(paired) - set(known))]
    ]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        state = f"paired {row['paired_at']}  token {row['token_id']}" if row["paired"] else "not paired"
        click.echo(
            f"{row['device']:<10} {state}" + ("" if row["in_fleet"] else "  (not in the fleet: refused)")
        )


@cli.group()
def outbox() -> None:
    """The queue towards FlexMeasures."""


@outbox.command("status")
@state_option
@click.option("--json", "as_json", is_flag=True)
def outbox_status(state_dir, as_json) -> None:
    """Depth, entries waiting for a retry, and each dead letter with FlexMeasures' answer."""
    from ven_bridge.outbox import Outbox

    box = Outbox(state_path(state_dir))
    try:
        data = {
            **box.status(),
            "retrying_entries": box.retrying(),
            "dead_letter_entries": box.dead_letters(),
            "decisions": box.decisions()[-20:],
        }
    finally:
        box.close()
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    click.echo(
        f"pending: {data['outbox_depth']} in {data['groups']} group(s), "
        f"{data['retrying']} waiting for a retry  delivered: {data['delivered']}  "
        f"dead letters: {data['dead_letters']}"
    )
    for entry in data["retrying_entries"]:
        click.echo(
            f"  retrying {entry['key']}  {entry['attempts']} attempt(s), next in {entry['retry_in_s']} s: "
            + _one_line(entry["last_error"])
        )
    if data["dead_letter_entries"]:
        click.echo("dead letters (cariflex-ven outbox requeue|discard KEY... or --all):")
    for dead in data["dead_letter_entries"]:
        reason = _one_line(dead["response"])
        click.echo(f"  #{dead['id']} {dead['key']}  HTTP {dead['status_code']}: {reason}")


def _one_line(text: str | None, limit: int = 300) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= limit else text[:limit] + "…"


def _dead_letters(action: str, keys: tuple[str, ...], all_keys: bool, state_dir: str | None) -> None:
    from ven_bridge.outbox import Outbox

    if bool(keys) == all_keys:
        raise click.UsageError("give the KEY of each dead letter (as `outbox status` shows it), or --all")
    box = Outbox(state_path(state_dir))
    try:
        done = getattr(box, action)(None if all_keys else list(keys))
    finally:
        box.close()
    if keys and not done:
        raise click.ClickException(f"no dead letter matches {' '.join(keys)}")
    past = action.rstrip("e") + "ed"  # requeued, discarded
    for key in done:
        click.echo(f"{past} {key}")
    click.echo(f"{len(done)} dead letter(s) {past}")


@outbox.command("requeue")
@click.argument("keys", nargs=-1)
@click.option("--all", "all_keys", is_flag=True, help="Every dead letter.")
@state_option
def outbox_requeue(keys, all_keys, state_dir) -> None:
    """Put dead letters back into the outbox, each at the end of its group, attempts reset.

    KEY: a dead letter's key or #number, as `outbox status` shows it; * and ? match any text
    (e.g. 'm:bat_11_*' after `flexmeasures cariflex setup` added bat_11). A running VEN posts them
    within seconds.
    """
    _dead_letters("requeue", keys, all_keys, state_dir)


@outbox.command("discard")
@click.argument("keys", nargs=-1)
@click.option("--all", "all_keys", is_flag=True, help="Every dead letter.")
@state_option
def outbox_discard(keys, all_keys, state_dir) -> None:
    """Give up on dead letters (KEY as for requeue). Their keys are remembered for 8 days, so that
    the VTN sending the same event again does not queue it again."""
    _dead_letters("discard", keys, all_keys, state_dir)


def main() -> None:
    cli(prog_name="cariflex-ven")


if __name__ == "__main__":
    main()
