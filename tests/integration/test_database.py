"""Database URLs and the embedded PostgreSQL the demo uses when no server is configured."""

from __future__ import annotations

import configparser

import pytest
from sqlalchemy import create_engine, text

from operations import database


def test_plain_postgresql_url_gets_the_psycopg2_driver():
    assert database.to_psycopg2("postgresql://u:p@db:5432/fm") == "postgresql+psycopg2://u:p@db:5432/fm"


def test_non_postgresql_url_is_refused():
    with pytest.raises(ValueError, match="is not PostgreSQL"):
        database.to_psycopg2("mysql://u@db/fm")


def test_socket_url_survives_alembic_configparser():
    # FlexMeasures' migrations put the URL into a configparser; '%2F' would crash it.
    url = database.with_database("postgresql://postgres:@/postgres?host=/srv/var/pgdata", "fm")
    assert url == "postgresql+psycopg2://postgres:@/fm?host=/srv/var/pgdata"
    parser = configparser.ConfigParser()
    parser.add_section("alembic")
    parser.set("alembic", "sqlalchemy.url", url)


def test_embedded_server_runs_a_database(tmp_path):
    server = database.embedded_server_url(tmp_path / "pgdata")
    url = database.with_database(server, "cariflex_embedded")
    assert database.create_database(url) is True
    assert database.create_database(url) is False
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SELECT current_database()")).scalar() == "cariflex_embedded"
    finally:
        engine.dispose()
    database.drop_database(url)
    assert not database.database_exists(url)
