"""PostgreSQL helpers shared by the demo, the plugin configuration, the tests and the backups.

Two kinds of server: the one named by a URL (``CARIFLEX_DATABASE_URL``), or an embedded one that
the ``pgserver`` wheel runs from ``var/pgdata`` when no URL is configured, so a fresh clone needs
no PostgreSQL installation at all. The embedded server listens on a Unix socket only, and stops
when the last process that started or joined it exits (pgserver counts the handles).

URLs are always given to FlexMeasures as ``postgresql+psycopg2://``: with a bare
``postgresql://`` a newer SQLAlchemy picks psycopg 3, and FlexMeasures 1.0.1 only catches
psycopg2's exceptions (reference/flexmeasures.md §1.1).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from urllib.parse import unquote

from sqlalchemy.engine import URL, make_url

log = logging.getLogger(__name__)

# Extensions FlexMeasures uses for distance queries; the embedded server does not ship them,
# and nothing Cariflex does needs them (we resolve the weather station by name, not distance).
OPTIONAL_EXTENSIONS = ("cube", "earthdistance")


def _render(url: URL) -> str:
    """URL as text with its query unescaped.

    FlexMeasures hands the URL to Alembic's configparser, for which the '%' of an escaped
    socket path ('?host=%2Fwork%2F...') is interpolation syntax and a crash.
    """
    text = url.render_as_string(hide_password=False)
    base, sep, query = text.partition("?")
    return base + sep + unquote(query)


def to_psycopg2(url: str) -> str:
    """The same URL with the psycopg2 driver named explicitly."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "postgresql":
        raise ValueError(f"database URL {parsed.render_as_string(hide_password=True)!r} is not PostgreSQL")
    return _render(parsed.set(drivername="postgresql+psycopg2"))


def embedded_server_url(pgdata: Path, database: str = "postgres") -> str:
    """Start (or join) the embedded PostgreSQL under ``pgdata`` and return a URL for ``database``.

    The handle stays alive for the life of this process (pgserver keeps it), after which the
    server stops unless another process still holds it.
    """
    pgdata.mkdir(parents=True, exist_ok=True)
    # pgserver keeps its lock file in the user runtime dir, which containers often lack.
    runtime = pgdata.parent / "run"
    runtime.mkdir(mode=0o700, exist_ok=True)
    os.environ.setdefault("XDG_RUNTIME_DIR", str(runtime))
    import pgserver  # only needed when running embedded

    # pgserver narrates every start and stop at INFO (also from atexit, after test runners
    # closed their streams); its warnings are what matter.
    logging.getLogger("pgserver").setLevel(logging.WARNING)

    server = pgserver.get_server(pgdata, cleanup_mode="stop")
    return to_psycopg2(server.get_uri(database))


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
