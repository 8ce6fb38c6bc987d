"""PostgreSQL administration for the demo, the tests, the benchmarks and the backups.

Creating and dropping databases, installing extensions, probing a server. URL handling and the
embedded server live in ``cariflex.database_url`` (the plugin needs them too); they are
re-exported here so that operations code has one module to import.
"""

from __future__ import annotations

import logging

from sqlalchemy.engine import URL, make_url

from cariflex.database_url import _render, embedded_server_url, to_psycopg2

__all__ = ["embedded_server_url", "to_psycopg2"]

log = logging.getLogger("cariflex.database")

# Extensions FlexMeasures uses for distance queries; the embedded server does not ship them,
# and nothing Cariflex does needs them (we resolve the weather station by name, not distance).
OPTIONAL_EXTENSIONS = ("cube", "earthdistance")


def _admin_engine(url: str):
    from sqlalchemy import create_engine

    maintenance = make_url(to_psycopg2(url)).set(database="postgres")
    return create_engine(maintenance, isolation_level="AUTOCOMMIT", pool_pre_ping=True)


def database_exists(url: str) -> bool:
    from sqlalchemy import text

    name = make_url(url).database
    engine = _admin_engine(url)
    try:
        with engine.connect() as conn:
            found = conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name})
            return found.first() is not None
    finally:
        engine.dispose()


def create_database(url: str) -> bool:
    """Create the database the URL names if it does not exist; True when it was created."""
    from sqlalchemy import text

    if database_exists(url):
        return False
    name = make_url(url).database
    engine = _admin_engine(url)
    try:
        with engine.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    finally:
        engine.dispose()
    return True


def drop_database(url: str) -> None:
    from sqlalchemy import text

    name = make_url(url).database
    engine = _admin_engine(url)
    try:
        with engine.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        engine.dispose()


def install_extensions(url: str) -> list[str]:
    """Create the optional extensions where the server has them; return those it lacks."""
    from sqlalchemy import create_engine, text

    engine = create_engine(to_psycopg2(url), isolation_level="AUTOCOMMIT")
    missing = []
    try:
        with engine.connect() as conn:
            available = {row[0] for row in conn.execute(text("SELECT name FROM pg_available_extensions"))}
            for ext in OPTIONAL_EXTENSIONS:
                if ext in available:
                    conn.execute(text(f"CREATE EXTENSION IF NOT EXISTS {ext}"))
                else:
                    missing.append(ext)
    finally:
        engine.dispose()
    return missing


def reachable(url: str, timeout_s: int = 2) -> bool:
    """Whether a server accepts connections at this URL (its maintenance database)."""
    import psycopg2

    parsed = make_url(to_psycopg2(url)).set(database="postgres")
    try:
        psycopg2.connect(_dsn(parsed), connect_timeout=timeout_s).close()
    except psycopg2.OperationalError:
        return False
    return True


def _dsn(url: URL) -> str:
    parts = {
        "host": url.host or url.query.get("host"),
        "port": url.port,
        "user": url.username,
        "password": url.password,
        "dbname": url.database,
    }
    return " ".join(f"{k}={v}" for k, v in parts.items() if v)


def with_database(url: str, database: str) -> str:
    return _render(make_url(to_psycopg2(url)).set(database=database))
