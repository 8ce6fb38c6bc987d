"""``cariflex-vtn``: run the VTN and operate it.

Operator commands work on the local event store (the VTN picks changes up at once), or, with
``--remote URL`` / CARIFLEX_VTN_ADMIN_URL, through a VTN's admin API with its bearer token. Both
paths run the same vtn.actions code, so they accept and refuse exactly the same input.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
from typing import Any, NoReturn

import click

from cariflex import logs, settings
from vtn.events import Conflict, InputError, NotFound

ERRORS = (InputError, NotFound, Conflict)


class Backend:
    """Local store or remote admin API, behind the same method names as vtn.actions."""

    def __init__(self, remote: str | None):
        self.remote = remote.rstrip("/") if remote else None
        self._store = None

    @property
    def store(self):
        if self._store is None:
            from vtn.store import Store, default_url

            self._store = Store(default_url())
        return self._store

    def close(self) -> None:
        if self._store is not None:
            self._store.dispose()

    def call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        if self.remote:
            from vtn.remote import call_remote

            return call_remote(self.remote, name, *args, **kwargs)
        from vtn import actions

        return getattr(actions, name)(self.store, *args, **kwargs)


def _backend(ctx: click.Context) -> Backend:
    return ctx.obj


def _emit(data: Any, as_json: bool, text: str | None = None) -> None:
    if as_json or text is None:
        click.echo(json.dumps(data, indent=2, default=str))
    else:
        click.echo(text)


def _run(func, *args, **kwargs) -> Any:
    try:
        return func(*args, **kwargs)
    except ERRORS as exc:
        _fail(exc)


def _fail(exc: Exception) -> NoReturn:
    click.secho(f"Error: {exc}", fg="red", err=True)
    click.echo("Nothing was changed.", err=True)
    sys.exit(1)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--remote",
    envvar="CARIFLEX_VTN_ADMIN_URL",
    default=None,
    metavar="URL",
    help="Operate a VTN through its admin API (e.g. http://vtn:8081) instead of the local store.",
)
@click.pass_context
def cli(ctx: click.Context, remote: str | None) -> None:
    """Cariflex OpenADR 2.0b VTN: serve it, provision VENs, issue price and load-control events."""
    logs.configure()
    ctx.obj = Backend(remote)
    ctx.call_on_close(ctx.obj.close)


# --- serve --------------------------------------------------------------------------------------


@cli.command()
@click.option(
    "--host",
    default=lambda: settings.get("CARIFLEX_VTN_HOST"),
    show_default="127.0.0.1",
    help="Address for both endpoints ($CARIFLEX_VTN_HOST).",
)
@click.option(
    "--port",
    type=int,
    default=lambda: int(settings.get("CARIFLEX_VTN_PORT")),
    show_default="8080",
    help="OpenADR port, 0 = any free port ($CARIFLEX_VTN_PORT).",
)
@click.option(
    "--admin-port",
    type=int,
    default=lambda: int(settings.get("CARIFLEX_VTN_ADMIN_PORT")),
    show_default="8081",
    help="Admin API port, 0 = any free port ($CARIFLEX_VTN_ADMIN_PORT).",
)
@click.option(
    "--poll-seconds",
    type=click.FloatRange(min=0.2),
    default=lambda: float(settings.get("CARIFLEX_VTN_POLL_SECONDS")),
    show_default="10",
    help="Poll period requested from VENs ($CARIFLEX_VTN_POLL_SECONDS).",
)
@click.option("--tls-cert", type=click.Path(exists=True, dir_okay=False), help="VTN certificate (PEM).")
@click.option("--tls-key", type=click.Path(exists=True, dir_okay=False), help="VTN private key (PEM).")
@click.option(
    "--tls-ca", type=click.Path(exists=True, dir_okay=False), help="CA that signed the VEN certificates."
)
@click.option("--insecure", is_flag=True, help="Serve plain HTTP (local demo and tests only).")
@click.option(
    "--require-signatures/--accept-unsigned",
    default=lambda: settings.get("CARIFLEX_VTN_REQUIRE_SIGNATURES").strip().lower() in ("1", "true", "yes"),
    show_default="accept unsigned",
    help="2.0b high security: refuse unsigned messages with 463; needs TLS "
    "($CARIFLEX_VTN_REQUIRE_SIGNATURES). Signed messages are always checked.",
)
@click.option(
    "--day-ahead-time",
    default=lambda: settings.get("CARIFLEX_VTN_DAY_AHEAD_TIME"),
    show_default="13:00",
    help="Local time to publish tomorrow's prices, or 'off'.",
)
@click.option(
    "--price-file",
    type=click.Path(dir_okay=False),
    default=lambda: settings.get("CARIFLEX_VTN_PRICE_FILE"),
    help="CSV of 24 hourly prices for day-ahead; default: the Martinique tariff model.",
)
def serve(
    host,
    port,
    admin_port,
    poll_seconds,
    tls_cert,
    tls_key,
    tls_ca,
    insecure,
    require_signatures,
    day_ahead_time,
    price_file,
) -> None:
    """Run the VTN (OpenADR 2.0b) and its admin API until SIGTERM or Ctrl-C."""
    from vtn.prices import parse_publish_time
    from vtn.server import CariflexVtn, VtnOptions
    from vtn.store import Store, default_url

    tls_parts = [tls_cert, tls_key, tls_ca]
    if any(tls_parts) and not all(tls_parts):
        raise click.UsageError("mutual TLS needs all three of --tls-cert, --tls-key and --tls-ca")
    if not all(tls_parts) and not insecure:
        raise click.UsageError(
            "refusing to serve OpenADR over plain HTTP: give --tls-cert/--tls-key/--tls-ca, "
            "or --insecure for a local demo"
        )
    if require_signatures and not all(tls_parts):
        raise click.UsageError(
            "--require-signatures needs mutual TLS (--tls-cert/--tls-key/--tls-ca): signatures are checked "
            "against the certificate each VEN was provisioned with"
        )
    _run(parse_publish_time, day_ahead_time)
    options = VtnOptions(
        host=host,
        port=port,
        admin_port=admin_port,
        poll_seconds=poll_seconds,
        tls_cert=tls_cert,
        tls_key=tls_key,
        tls_ca=tls_ca,
        insecure=insecure,
        require_signatures=require_signatures,
        vtn_id=settings.get("CARIFLEX_VTN_ID"),
        admin_token=settings.secret("CARIFLEX_VTN_ADMIN_TOKEN", "vtn_admin_token"),
        day_ahead_time=day_ahead_time,
        price_file=price_file,
    )

    # openleadr logs every message with its whole payload at INFO; keep its warnings.
    logging.getLogger("openleadr").setLevel(logging.WARNING)

    store = Store(default_url())
    _ensure_operator(store)

    async def main() -> None:
        await CariflexVtn(store, options).run()

    try:
        asyncio.run(main())
    finally:
        # Shut down already: a second SIGTERM (e.g. a supervisor after Ctrl-C) must not kill the exit.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _ensure_operator(store) -> None:
    """CARIFLEX_VTN_OPERATOR with CARIFLEX_VTN_OPERATOR_PASSWORD, when that is set (compose, demo)."""
    from vtn import operators

    password = settings.get("CARIFLEX_VTN_OPERATOR_PASSWORD")
    if not password:
        return
    name = settings.get("CARIFLEX_VTN_OPERATOR")
    change = _run(operators.ensure_operator, store, name, password)
    logging.getLogger("cariflex.vtn").info(
        "console operator", extra={"fields": {"operator": name, "change": change}}
    )


@cli.command()
@click.option("--url", default=None, help="Admin API base URL (default: local, $CARIFLEX_VTN_ADMIN_PORT).")
def health(url: str | None) -> None:
    """Exit 0 when the VTN answers its health check (for container health checks)."""
    import urllib.request

    url = url or f"http://127.0.0.1:{settings.get('CARIFLEX_VTN_ADMIN_PORT')}"
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/health", timeout=5) as response:
            click.echo(response.read().decode())
    except OSError as exc:
        click.secho(f"VTN unhealthy: {exc}", fg="red", err=True)
        sys.exit(1)


# --- VENs ---------------------------------------------------------------------------------------


@cli.group()
def ven() -> None:
    """Provision and list VENs (only provisioned VENs may register)."""


@ven.command("add")
@click.argument("name")
@click.option("--fingerprint", default=None, help="Certificate fingerprint the VEN must present (TLS).")
@click.option(
    "--capacity-kw",
    type=float,
    default=None,
    help="The site's contracted import capacity: a load-control level is a fraction of it (console chart).",
)
@click.option("--exist-ok", is_flag=True, help="Succeed, changing nothing, when NAME is provisioned already.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def ven_add(
    ctx, name: str, fingerprint: str | None, capacity_kw: float | None, exist_ok: bool, as_json: bool
) -> None:
    """Provision VEN NAME."""
    backend = _backend(ctx)
    try:
        result = backend.call("add_ven", name, fingerprint, capacity_kw)
        text = f"provisioned VEN {result['ven_name']} (ven_id {result['ven_id']})"
    except Conflict as exc:
        if not exist_ok:  # a container start provisions its VEN every time (docker-compose.yml)
            _fail(exc)
        result = next(v for v in _run(backend.call, "list_vens") if v["ven_name"] == name)
        text = f"VEN {name} was provisioned already (ven_id {result['ven_id']})"
    except ERRORS as exc:
        _fail(exc)
    _emit(result, as_json, text)


@ven.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def ven_list(ctx, as_json: bool) -> None:
    """VENs with registration state and last poll time."""
    rows = _run(_backend(ctx).call, "list_vens")
    text = _table(rows, ["ven_name", "ven_id", "registered", "last_poll_at", "capacity_kw", "fingerprint"])
    _emit(rows, as_json, text)


# --- events -------------------------------------------------------------------------------------


@cli.group()
def event() -> None:
    """Issue, list, modify and cancel events."""


def _prices_input(prices_file: str | None, values: str | None) -> tuple[list, str]:
    from vtn.prices import read_price_csv

    if bool(prices_file) == bool(values):
        raise InputError("give exactly one of --prices FILE.csv or --values v1,...,v24")
    if prices_file:
        return read_price_csv(prices_file), f"price file {prices_file}"
    return values.split(","), "--values"


common_targets = [
    click.option("--targets", default=None, help="Resource ids the event is for (comma-separated)."),
    click.option("--vens", default=None, help="Only these VENs (comma-separated names); default every VEN."),
    click.option("--allow-past", is_flag=True, help="Accept a start in the past."),
    click.option("--json", "as_json", is_flag=True),
]


def _with(options):
    def wrap(func):
        for option in reversed(options):
            func = option(func)
        return func

    return wrap


def _event_text(e: dict[str, Any]) -> str:
    values = e.get("values")
    shown = "" if values is None else f"\n  values ({e['unit']}): {', '.join(f'{v:g}' for v in values)}"
    periods = ", ".join(f"{k} {e[k]}" for k in ("ramp_up", "notification", "recovery") if e.get(k))
    power = e.get("fleet_power_kw")
    if power:
        shown += (
            f"\n  fleet power (TELEMETRY_USAGE): {power['before']} kW in the hour before "
            f"({power['samples_before']} samples), {power['during']} kW during ({power['samples_during']})"
        )
    return (
        f"{e['event_id']}  {e['signal']}  {e['status']}  modification {e['modification_number']}\n"
        f"  {e['start']} → {e['end']}  vens: {e['vens']}  targets: {e['targets'] or '-'}"
        + (f"\n  {periods}" if periods else "")
        + shown
    )


@event.command("price")
@click.option("--start", required=True, help="First hour, ISO 8601 (local time when no offset).")
@click.option("--prices", "prices_file", type=click.Path(dir_okay=False), help="CSV with 24 hourly prices.")
@click.option("--values", default=None, help="24 prices, comma-separated.")
@click.option("--currency", default="EUR", show_default=True)
@click.option("--unit", default="MWh", show_default=True, help="Energy unit of the prices: MWh or kWh.")
@_with(common_targets)
@click.pass_context
def event_price(ctx, start, prices_file, values, currency, unit, targets, vens, allow_past, as_json) -> None:
    """Issue an ENERGY_PRICE event: 24 one-hour prices."""
    prices, prices_name = _run(_prices_input, prices_file, values)
    result = _run(
        _backend(ctx).call,
        "create_price_event",
        start=start,
        prices=prices,
        currency=currency,
        unit=unit,
        targets=targets,
        vens=vens,
        allow_past=allow_past,
        prices_name=prices_name,
    )
    _emit(result, as_json, _event_text(result))


@event.command("load-control")
@click.option(
    "--start", required=True, help="Start, ISO 8601 (local time when no offset), on a quarter hour."
)
@click.option("--duration", required=True, help="ISO 8601 duration, e.g. PT4H.")
@click.option("--levels", required=True, help="Capacity fraction 0..1: one value, or one per hour.")
@click.option("--ramp-up", default=None, help="ISO 8601 ramp-up period (status 'near' before start).")
@click.option("--notification", default=None, help="ISO 8601 notification period.")
@click.option("--recovery", default=None, help="ISO 8601 recovery period.")
@_with(common_targets)
@click.pass_context
def event_load_control(
    ctx, start, duration, levels, ramp_up, notification, recovery, targets, vens, allow_past, as_json
) -> None:
    """Issue a LOAD_CONTROL event (x-loadControlCapacity), one interval per hour."""
    result = _run(
        _backend(ctx).call,
        "create_load_control_event",
        start=start,
        duration=duration,
        levels=levels,
        ramp_up=ramp_up,
        notification=notification,
        recovery=recovery,
        targets=targets,
        vens=vens,
        allow_past=allow_past,
    )
    _emit(result, as_json, _event_text(result))


@event.command("list")
@click.option("--active", is_flag=True, help="Only events not yet completed or cancelled.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def event_list(ctx, active: bool, as_json: bool) -> None:
    """All events, oldest first."""
    rows = _run(_backend(ctx).call, "list_events", active=active)
    _emit(
        rows, as_json, _table(rows, ["event_id", "signal", "status", "modification_number", "start", "end"])
    )


@event.command("show")
@click.argument("event_id")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def event_show(ctx, event_id: str, as_json: bool) -> None:
    """One event with every interval."""
    result = _run(_backend(ctx).call, "show_event", event_id)
    _emit(result, as_json, _event_text(result))


@event.command("modify")
@click.argument("event_id")
@click.option("--start", default=None)
@click.option("--prices", "prices_file", type=click.Path(dir_okay=False), help="Price events: new CSV.")
@click.option("--values", default=None, help="Price events: 24 new prices.")
@click.option("--levels", default=None, help="Load-control events: new levels.")
@click.option("--duration", default=None)
@click.option("--ramp-up", default=None)
@click.option("--notification", default=None)
@click.option("--recovery", default=None)
@click.option("--targets", default=None, help="New resource ids (comma-separated).")
@click.option("--vens", default=None, help="New VEN names (comma-separated), or 'all'.")
@click.option("--allow-past", is_flag=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def event_modify(
    ctx,
    event_id,
    start,
    prices_file,
    values,
    levels,
    duration,
    ramp_up,
    notification,
    recovery,
    targets,
    vens,
    allow_past,
    as_json,
) -> None:
    """Change an event; VENs receive it with the next modification number."""
    changes: dict[str, Any] = {
        "start": start,
        "levels": levels,
        "duration": duration,
        "ramp_up": ramp_up,
        "notification": notification,
        "recovery": recovery,
        "targets": targets,
        "vens": vens,
    }
    if prices_file or values:
        changes["prices"], changes["prices_name"] = _run(_prices_input, prices_file, values)
    if allow_past:
        changes["allow_past"] = True
    result = _run(_backend(ctx).call, "modify_event", event_id, **changes)
    _emit(result, as_json, _event_text(result))


@event.command("cancel")
@click.argument("event_id")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def event_cancel(ctx, event_id: str, as_json: bool) -> None:
    """Cancel an event; VENs receive the cancellation."""
    result = _run(_backend(ctx).call, "cancel_event", event_id)
    _emit(result, as_json, f"cancelled {result['event_id']} (modification {result['modification_number']})")


# --- console operators -------------------------------------------------------------------------


@cli.group()
def operator() -> None:
    """Accounts for the operator console (served by `serve` at /console/ on the admin port)."""


def _local_store(ctx: click.Context):
    if _backend(ctx).remote:
        raise click.UsageError("operator accounts are managed on the VTN's own store, not with --remote")
    return _backend(ctx).store


@operator.command("add")
@click.argument("name")
@click.option(
    "--password-file",
    type=click.File("r"),
    default=None,
    help="Read the password from this file ('-': standard input) instead of asking.",
)
@click.option(
    "--replace", is_flag=True, help="Set a new password for an existing operator (ends their sessions)."
)
@click.pass_context
def operator_add(ctx, name: str, password_file, replace: bool) -> None:
    """Create operator NAME (at least 12 characters of password; it is stored hashed)."""
    from vtn import operators

    if password_file is not None:
        password = password_file.readline().rstrip("\r\n")
    else:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    result = _run(operators.add_operator, _local_store(ctx), name, password, replace=replace)
    click.echo(f"operator {result['operator']}: {result['change']}")


@operator.command("remove")
@click.argument("name")
@click.pass_context
def operator_remove(ctx, name: str) -> None:
    """Remove operator NAME and end their sessions."""
    from vtn import operators

    result = _run(operators.remove_operator, _local_store(ctx), name)
    click.echo(f"operator {result['operator']}: {result['change']}")


@operator.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def operator_list(ctx, as_json: bool) -> None:
    """Operators and their last login."""
    from vtn import operators

    rows = _run(operators.list_operators, _local_store(ctx))
    _emit(rows, as_json, _table(rows, ["operator", "created_at", "last_login_at"]))


@cli.group()
def opt() -> None:
    """Opt responses of the VENs."""


@opt.command("list")
@click.argument("event_id")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def opt_list(ctx, event_id: str, as_json: bool) -> None:
    """Who opted in or out of EVENT_ID, per modification."""
    rows = _run(_backend(ctx).call, "list_opts", event_id)
    _emit(rows, as_json, _table(rows, ["ven", "modification_number", "opt", "received_at"]))


def _table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    if not rows:
        return "(none)"
    widths = {c: max(len(c), *(len(str(r.get(c))) for r in rows)) for c in columns}
    lines = ["  ".join(c.ljust(widths[c]) for c in columns)]
    lines += ["  ".join(str(r.get(c)).ljust(widths[c]) for c in columns) for r in rows]
    return "\n".join(lines)


def main() -> None:
    cli(prog_name="cariflex-vtn")


if __name__ == "__main__":
    main()
