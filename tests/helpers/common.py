"""Shared by tests and benchmarks: the repository root, free ports, the test PostgreSQL server, API calls."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from operations import database

LOCAL_SERVER = "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"


ROOT = Path(__file__).resolve().parent.parent.parent
TESTS = ROOT / "tests"


def free_port() -> int:
    """An ephemeral port on loopback for a server under test."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def database_server_url(scratch: Path) -> str:
    """A PostgreSQL server to create databases on (tests and benchmarks): CARIFLEX_TEST_DATABASE_URL,
    else 127.0.0.1:5432 when it answers, else an embedded server with its data under ``scratch``."""
    configured = os.environ.get("CARIFLEX_TEST_DATABASE_URL")
    if configured:
        return database.to_psycopg2(configured)
    if database.reachable(LOCAL_SERVER):
        return LOCAL_SERVER
    return database.embedded_server_url(scratch / "pgdata")


def call(app, method: str, url: str, **kwargs):
    """One HTTP request in its own app context, as in a server: the fixture's app context (and its
    `g`, where Flask-Login caches the current user) must not leak from one request into the next."""
    with app.app_context():
        return app.test_client().open(url, method=method, **kwargs)


def assert_clean(response) -> None:
    """No 5xx, no SQL and no stack trace in what went out."""
    text = response.get_data(as_text=True)
    assert response.status_code < 500, text[:500]
    for leak in ("UPDATE ", "SELECT ", "INSERT ", "Traceback", "psycopg2", "sqlalchemy"):
        assert leak not in text, text[:500]


def request_token(app, email: str, password: str) -> str:
    response = call(app, "POST", "/api/requestAuthToken", json={"email": email, "password": password})
    assert response.status_code == 200, response.json
    return response.json["auth_token"]
