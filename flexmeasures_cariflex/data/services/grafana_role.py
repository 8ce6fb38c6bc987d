"""The SELECT-only database role Grafana reads FlexMeasures through (Grafana does not check what
its SQL does: the role is the safety). Created or brought in line idempotently; the statements are
built by PostgreSQL's own ``format(%I, %L)`` so a name or password can never inject SQL."""

from __future__ import annotations

from flexmeasures.data import db
from sqlalchemy import text

ROLE = "grafana_reader"
# What the Cariflex dashboard reads, and nothing else (no users, no tokens, no secrets).
TABLES = (
    "timed_belief",
    "sensor",
    "generic_asset",
    "generic_asset_type",
    "data_source",
    "cariflex_rollup_15min",
    "cariflex_alert",
)


def _run(template: str, **args: str) -> None:
    statement = db.session.execute(text(f"SELECT format({template})"), args).scalar_one()
    db.session.execute(text(statement))


def ensure_grafana_role(password: str, role: str = ROLE) -> str:
    """Create or update the role (caller commits); says which."""
    if not password:
        raise ValueError("the grafana role needs a password")
    exists = db.session.execute(text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": role}).first()
    verb = "ALTER" if exists else "CREATE"
    _run(
        f"'{verb} ROLE %I LOGIN PASSWORD %L NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT', :role, :pw",
        role=role,
        pw=password,
    )
    _run("'ALTER ROLE %I SET default_transaction_read_only = on', :role", role=role)
    _run("'ALTER ROLE %I SET statement_timeout = %L', :role, '30s'", role=role)
    _run("'REVOKE ALL ON ALL TABLES IN SCHEMA public FROM %I', :role", role=role)
    _run("'GRANT CONNECT ON DATABASE %I TO %I', current_database(), :role", role=role)
    _run("'GRANT USAGE ON SCHEMA public TO %I', :role", role=role)
    for table in TABLES:
        _run("'GRANT SELECT ON TABLE %I TO %I', :table, :role", table=table, role=role)
    return "updated" if exists else "created"
