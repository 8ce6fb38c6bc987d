"""PostgreSQL URLs, and the embedded server a fresh clone runs when no URL is configured.

Core because both the FlexMeasures plugin's configuration and the operations package need it:
the plugin must not import ``operations``. Imports no other Cariflex package.

Two kinds of server: the one named by a URL (``CARIFLEX_DATABASE_URL``), or an embedded one that
the ``pgserver`` wheel runs from ``var/pgdata`` when no URL is configured, so a fresh clone needs
no PostgreSQL installation at all. The embedded server listens on a Unix socket only, and stops
when the last process that started or joined it exits (pgserver counts the handles).

URLs are always given to FlexMeasures as ``postgresql+psycopg2://``: with a bare
``postgresql://`` a newer SQLAlchemy picks psycopg 3, and FlexMeasures 1.0.1 only catches
psycopg2's exceptions.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from urllib.parse import unquote

from sqlalchemy.engine import URL, make_url


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


def to_libpq(url: str) -> str:
    """The URL as libpq (psycopg2.connect) takes it: ``postgresql://`` without a driver name."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "postgresql":
        raise ValueError(f"database URL {parsed.render_as_string(hide_password=True)!r} is not PostgreSQL")
    return _render(parsed.set(drivername="postgresql"))
