"""Configuration shared by every Cariflex process.

Every setting comes from a ``CARIFLEX_*`` environment variable or, failing that, from a ``.env``
file in the working directory (real environment variables win). ``VARIABLES`` is the single
list of them; ``.env.example`` documents the same list and a test keeps the two in step.

Secrets that are not given are generated once under the var directory (mode 600), so a fresh
clone works without anybody inventing a password, and nothing secret is ever committed.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Variable:
    name: str
    default: str | None
    meaning: str


VARIABLES: tuple[Variable, ...] = (
    Variable("CARIFLEX_VAR_DIR", "var", "where generated secrets, embedded databases and state live"),
    Variable(
        "CARIFLEX_DATABASE_URL",
        None,
        "FlexMeasures database; unset = embedded PostgreSQL under $CARIFLEX_VAR_DIR/pgdata",
    ),
    Variable(
        "CARIFLEX_TEST_DATABASE_URL",
        None,
        "server on which tests create (and drop) their own databases; unset = 127.0.0.1:5432 "
        "when reachable, else embedded",
    ),
    Variable(
        "CARIFLEX_REDIS_URL",
        None,
        "redis://host:port/db for the job queue; unset: make demo starts its own under var/redis",
    ),
    Variable(
        "CARIFLEX_REPLAN_DEBOUNCE_S",
        "2",
        "seconds without new prices or limits before a re-plan runs (a burst gives one run); -1 = off",
    ),
    Variable(
        "CARIFLEX_SCHEDULE_HORIZON", "PT24H", "fleet schedule horizon on re-plans (cut to known prices)"
    ),
    Variable("CARIFLEX_SECRET_KEY", None, "Flask secret key; unset = generated under var/"),
    Variable("CARIFLEX_FLEET_FILE", None, "fleet description YAML; unset = the packaged Cariflex fleet"),
    Variable("CARIFLEX_FM_BIND", "127.0.0.1:5000", "address the FlexMeasures server listens on"),
    Variable(
        "CARIFLEX_MQTT_URL",
        None,
        "the MQTT broker meters publish to (mqtt://user:password@host:port); unset = make demo runs its own",
    ),
    Variable(
        "CARIFLEX_MQTT_PASSWORD", None, "compose: the MQTT broker's password for meters and the ingestion"
    ),
    Variable(
        "CARIFLEX_INGEST_HEALTH_BIND", "127.0.0.1:5071", "the meter ingestion service's health endpoint"
    ),
    Variable(
        "CARIFLEX_INGEST_SHARE_GROUP",
        None,
        "MQTT shared-subscription group of the ingestion workers; unset = one worker takes all",
    ),
    Variable(
        "CARIFLEX_INGEST_CLIENT_ID",
        "cariflex-ingest",
        "the ingestion worker's MQTT client id (its persistent session); one per worker",
    ),
    Variable("CARIFLEX_METER_RAW_DAYS", "7", "days of 1 Hz meter readings kept before 1-minute means"),
    Variable(
        "CARIFLEX_UI_VENDOR_DIR",
        None,
        "FlexMeasures' web UI assets (fetched at install); unset = flexmeasures_cariflex/ui/vendor",
    ),
    Variable(
        "CARIFLEX_FM_TRUSTED_HOSTS",
        "127.0.0.1,localhost",
        "host names FlexMeasures answers to (comma-separated); add your public name in production",
    ),
    Variable("CARIFLEX_ADMIN_EMAIL", "admin@cariflex.example", "the demo's admin login"),
    Variable("CARIFLEX_ADMIN_PASSWORD", None, "the demo admin's password; unset = generated under var/"),
    Variable("CARIFLEX_LOG_LEVEL", "INFO", "log level of every Cariflex process"),
    # --- OpenADR VTN (vtn/) ---
    Variable("CARIFLEX_VTN_DATABASE_URL", None, "VTN event store; unset = SQLite file var/vtn.sqlite"),
    Variable(
        "CARIFLEX_VTN_HOST", "127.0.0.1", "address the VTN and its admin API bind to (0.0.0.0 in containers)"
    ),
    Variable("CARIFLEX_VTN_PORT", "8080", "OpenADR 2.0b port (--port)"),
    Variable("CARIFLEX_VTN_ADMIN_PORT", "8081", "operator admin API port (--admin-port)"),
    Variable("CARIFLEX_VTN_POLL_SECONDS", "10", "poll period the VTN asks VENs to use (--poll-seconds)"),
    Variable("CARIFLEX_VTN_ID", "cariflex-vtn", "the VTN's OpenADR vtnID"),
    Variable(
        "CARIFLEX_VTN_REQUIRE_SIGNATURES",
        "false",
        "true = 2.0b high security: unsigned messages get 463 (needs TLS; --require-signatures)",
    ),
    Variable(
        "CARIFLEX_VTN_ADMIN_TOKEN",
        None,
        "bearer token of the admin API; unset = generated var/vtn_admin_token",
    ),
    Variable("CARIFLEX_VTN_OPERATOR", "operator", "console operator `serve` creates when a password is set"),
    Variable(
        "CARIFLEX_VTN_OPERATOR_PASSWORD",
        None,
        "that operator's password (12+ characters; `serve` sets it at start); the demo generates "
        "var/vtn_operator_password",
    ),
    Variable(
        "CARIFLEX_VTN_ADMIN_URL", None, "operator CLI: talk to this admin API instead of the local store"
    ),
    Variable(
        "CARIFLEX_VTN_DAY_AHEAD_TIME",
        "13:00",
        "local time (America/Martinique) the VTN publishes tomorrow's prices; 'off' disables",
    ),
    # --- VEN bridge (ven_bridge/) ---
    Variable("CARIFLEX_VEN_NAME", "cariflex-ven", "the VEN's name; the demo provisions it on the VTN"),
    Variable(
        "CARIFLEX_VTN_URL",
        "http://127.0.0.1:8080/OpenADR2/Simple/2.0b",
        "the VTN the VEN registers with (--vtn-url)",
    ),
    Variable("CARIFLEX_VEN_STATE_DIR", None, "VEN outbox and state (--state-dir); unset = var/ven"),
    Variable("CARIFLEX_S2_HOST", "127.0.0.1", "address the VEN's S2 CEM binds to (0.0.0.0 in containers)"),
    Variable("CARIFLEX_S2_PORT", "8765", "S2 WebSocket port of the VEN's CEM, path /s2 (--s2-port)"),
    Variable(
        "CARIFLEX_S2_CERT",
        None,
        "certificate (PEM, chain) of the VEN's S2 CEM: it then serves wss:// (--s2-cert); unset = ws://",
    ),
    Variable("CARIFLEX_S2_KEY", None, "the S2 CEM certificate's private key, PEM file (--s2-key)"),
    Variable(
        "CARIFLEX_S2_CA_FILE",
        None,
        "simulator: CA (PEM) that signed the CEM's certificate, for wss:// (--s2-ca-file); unset = system CA",
    ),
    Variable(
        "CARIFLEX_S2_TOKEN_FILE",
        None,
        "simulator: the simulated devices' S2 access tokens, JSON, mode 600 (--token-file; written by "
        "`cariflex-ven pair --token-file`); unset = $CARIFLEX_VAR_DIR/sim/s2_tokens.json",
    ),
    Variable("CARIFLEX_FM_URL", "http://127.0.0.1:5000", "FlexMeasures the VEN posts to"),
    Variable(
        "CARIFLEX_VEN_SCHEDULE_POLL_S",
        "2",
        "how often the VEN asks FlexMeasures whether the fleet schedule changed (--schedule-poll-seconds)",
    ),
    Variable(
        "CARIFLEX_VEN_DR_POLL_S",
        "300",
        "how often the VEN fetches the DR verification for its telemetry report (--dr-poll-seconds)",
    ),
    Variable(
        "CARIFLEX_FM_USER",
        "ven@cariflex.example",
        "FlexMeasures account the VEN posts as (role cariflex-ven)",
    ),
    Variable(
        "CARIFLEX_FM_PASSWORD",
        None,
        "its password; unset = generated var/fm_ven_password (demo creates the user)",
    ),
    Variable("CARIFLEX_OPEN_METEO_URL", "https://api.open-meteo.com/v1/forecast", "Open-Meteo forecast API"),
    Variable(
        "CARIFLEX_OPEN_METEO_ARCHIVE_URL",
        "https://archive-api.open-meteo.com/v1/archive",
        "Open-Meteo archive API (past ranges)",
    ),
    Variable(
        "CARIFLEX_FEED_IN_TARIFF",
        "70",
        "what the grid pays for injected energy (EUR/MWh), flat; see --csv for hourly prices",
    ),
    Variable("CARIFLEX_GRAFANA_DB_HOST", "127.0.0.1:5432", "database host:port Grafana's datasource reads"),
    Variable("CARIFLEX_GRAFANA_DB_NAME", "cariflex", "database Grafana reads (the FlexMeasures one)"),
    Variable("CARIFLEX_GRAFANA_DB_USER", "grafana_reader", "the SELECT-only role Grafana reads as"),
    Variable(
        "CARIFLEX_GRAFANA_DB_PASSWORD",
        None,
        "its password; unset = generated var/grafana_db_password (flexmeasures cariflex grafana-role)",
    ),
    Variable(
        "CARIFLEX_BACKUP_PG_DUMP",
        "pg_dump",
        "pg_dump command for backups (compose: docker compose exec -T db pg_dump, to match the server)",
    ),
    Variable(
        "CARIFLEX_VTN_PRICE_FILE",
        None,
        "CSV of 24 hourly prices (EUR/MWh) for day-ahead; unset = tariff model",
    ),
    # --- insights (flexmeasures cariflex statistics, alerts, carbon-intensity) ---
    Variable(
        "CARIFLEX_CARBON_INTENSITY",
        "525",
        "grid carbon intensity (gCO2/kWh) where no hourly value is stored; 525 = Martinique 2022",
    ),
    Variable(
        "CARIFLEX_CARBON_INTENSITY_FILE", None, "CSV of 24 hourly carbon intensities (gCO2/kWh); unset = flat"
    ),
    Variable(
        "CARIFLEX_ALERT_SILENT_PERIODS",
        "15",
        "a device sensor without a reading for this many of its periods raises a 'silent' alert",
    ),
    # --- the compose deployment (docker-compose.yml refuses to start without these) ---
    Variable(
        "CARIFLEX_DOMAIN",
        None,
        "compose: public domain; FlexMeasures at ems.<domain>, Grafana at grafana.<domain>",
    ),
    Variable("CARIFLEX_ACME_EMAIL", None, "compose: contact e-mail for the Let's Encrypt certificates"),
    Variable("CARIFLEX_DB_PASSWORD", None, "compose: password of the database owner in flexmeasures-db"),
    Variable("CARIFLEX_REDIS_PASSWORD", None, "compose: password flexmeasures-redis requires"),
    Variable("CARIFLEX_GRAFANA_ADMIN_PASSWORD", None, "compose: Grafana's own admin password"),
    Variable(
        "CARIFLEX_BACKUP_DIR",
        "var/backups",
        "compose: host folder the backup container writes to (scripts/*.sh --compose; uid 10001)",
    ),
)
# What a compose deployment must be given (`python -m cariflex.settings --new-secrets` makes them).
SECRETS: tuple[str, ...] = (
    "CARIFLEX_SECRET_KEY",
    "CARIFLEX_ADMIN_PASSWORD",
    "CARIFLEX_FM_PASSWORD",
    "CARIFLEX_VTN_ADMIN_TOKEN",
    "CARIFLEX_VTN_OPERATOR_PASSWORD",
    "CARIFLEX_GRAFANA_DB_PASSWORD",
    "CARIFLEX_DB_PASSWORD",
    "CARIFLEX_REDIS_PASSWORD",
    "CARIFLEX_GRAFANA_ADMIN_PASSWORD",
    "CARIFLEX_MQTT_PASSWORD",
)
_BY_NAME = {v.name: v for v in VARIABLES}


def _dotenv() -> dict[str, str | None]:
    # Imported here: `python3 -m cariflex.settings --new-secrets` then runs on a bare server.
    from dotenv import dotenv_values

    path = Path(os.environ.get("CARIFLEX_ENV_FILE", ".env"))
    return dotenv_values(path) if path.is_file() else {}


def get(name: str) -> str | None:
    """The value of a documented variable: environment, then ``.env``, then its default.

    An empty string counts as unset, so ``CARIFLEX_DATABASE_URL=`` in ``.env`` means "embedded".
    """
    if name not in _BY_NAME:
        raise KeyError(f"{name} is not a documented Cariflex variable (see cariflex/settings.py)")
    value = os.environ.get(name)
    if value is None:
        value = _dotenv().get(name)
    return value if value else _BY_NAME[name].default


def number(name: str, low: float, high: float, unit: str) -> float:
    """A numeric setting within ``low..high``; ValueError naming the variable and the problem."""
    raw = get(name)
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise ValueError(f"{name} {raw!r} is not a number ({unit})") from None
    if not low <= value <= high:
        raise ValueError(f"{name} {value:g} {unit} is outside {low:g}..{high:g}")
    return value


def var_dir() -> Path:
    """The var directory, created on first use (git ignores it)."""
    path = Path(get("CARIFLEX_VAR_DIR") or "var").resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def generated_secret(filename: str, *, nbytes: int = 32) -> str:
    """Read a secret from var/<filename>, generating it (mode 600) the first time."""
    path = var_dir() / filename
    if path.is_file():
        return path.read_text().strip()
    value = secrets.token_urlsafe(nbytes)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(value + "\n")
    return value


def secret(variable: str, filename: str) -> str:
    """A secret from its variable, else from (or newly generated under) var/."""
    return get(variable) or generated_secret(filename)


def env_example() -> str:
    """The text of .env.example, generated from VARIABLES (``python -m cariflex.settings``)."""
    lines = [
        "# Cariflex EMS configuration. Copy to .env and uncomment what you change; real environment",
        "# variables win over .env. Unset secrets are generated under $CARIFLEX_VAR_DIR (mode 600).",
        "# Generated by `python -m cariflex.settings > .env.example` from cariflex/settings.py.",
        "",
    ]
    for variable in VARIABLES:
        lines += [f"# {variable.meaning}", f"# {variable.name}={variable.default or ''}", ""]
    return "\n".join(lines)


def new_secrets() -> str:
    """``.env`` lines with a fresh random value for every secret in ``SECRETS``.

    URL-safe characters only: the values end up inside database and Redis URLs."""
    return "".join(f"{name}={secrets.token_urlsafe(32)}\n" for name in SECRETS)


if __name__ == "__main__":
    import sys

    if sys.argv[1:] == ["--new-secrets"]:
        print(new_secrets(), end="")
    elif sys.argv[1:]:
        sys.exit("usage: python -m cariflex.settings [--new-secrets]  (no argument: .env.example)")
    else:
        print(env_example(), end="")
