"""Test fixtures: a real PostgreSQL database per test run, a FlexMeasures app with the plugin.

The server is CARIFLEX_TEST_DATABASE_URL when set, else the local one at 127.0.0.1:5432 when it
answers, else an embedded one (pgserver) under a temporary directory. Each run creates its own
database there and drops it at the end, so runs never see each other's data.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from cariflex.fleet import load_fleet
from operations import database
from tests.helpers.common import database_server_url, request_token


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory) -> str:
    """URL of a PostgreSQL server on which tests may create databases."""
    return database_server_url(tmp_path_factory.mktemp("pg"))


@pytest.fixture(scope="session")
def new_database(pg_server):
    """Factory: a fresh, empty database on the test server, dropped at the end of the run."""
    made: list[str] = []

    def make(prefix: str = "cariflex_test") -> str:
        url = database.with_database(pg_server, f"{prefix}_{uuid.uuid4().hex[:10]}")
        database.create_database(url)
        database.install_extensions(url)
        made.append(url)
        return url

    yield make
    for url in made:
        database.drop_database(url)


@pytest.fixture(scope="session")
def test_db_url(new_database) -> str:
    return new_database()


@pytest.fixture(scope="session")
def app(test_db_url, tmp_path_factory):
    """FlexMeasures (env 'testing') with the Cariflex plugin, schema created in the test DB."""
    os.environ["SQLALCHEMY_TEST_DATABASE_URI"] = test_db_url
    os.environ.pop("FLEXMEASURES_PLUGINS", None)  # would clash with plugins=[...] below
    os.environ["CARIFLEX_VAR_DIR"] = str(tmp_path_factory.mktemp("var"))

    from flexmeasures.app import create
    from flexmeasures.conftest import CustomFlaskCliRunner
    from flexmeasures.data import db

    from flexmeasures_cariflex.config import patch_flexmeasures_defaults

    patch_flexmeasures_defaults()
    flask_app = create(env="testing", plugins=["flexmeasures_cariflex"])
    flask_app.test_cli_runner_class = CustomFlaskCliRunner
    # Re-planning after ingestion is off unless a test turns it on (tests/integration/test_replan.py).
    flask_app.config["CARIFLEX_REPLAN_DEBOUNCE_S"] = -1
    with flask_app.app_context():
        db.create_all()
        yield flask_app
        db.session.remove()


@pytest.fixture
def fm_db(app) -> Iterator:
    """The FlexMeasures db, emptied after the test (schema kept)."""
    from flexmeasures.data import db

    yield db
    db.session.rollback()
    tables = ", ".join(f'"{t.name}"' for t in db.metadata.sorted_tables)
    db.session.execute(db.text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    db.session.commit()
    db.session.expunge_all()  # ids restart: stale objects must not meet their successors


@pytest.fixture
def cli(app, fm_db):
    """Invoke ``flexmeasures ...`` commands in-process against the test database."""
    runner = app.test_cli_runner()

    def invoke(*args: str):
        return runner.invoke(args=list(args), catch_exceptions=False)

    return invoke


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def vtn_store_url(request, tmp_path_factory, new_database) -> str:
    """A VTN event store on each supported backend (one per test session)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path_factory.mktemp('vtn') / 'vtn.sqlite'}"
    return new_database("cariflex_vtn_test")


# --- the Cariflex site and the VEN's API access (ingestion, re-planning, schedule) ------------


@pytest.fixture
def fleet(cli):
    result = cli("cariflex", "setup")
    assert result.exit_code == 0, result.output
    return load_fleet()


@pytest.fixture
def token(app, fm_db, fleet):
    """An auth token of a user with role cariflex-ven."""
    from flexmeasures_cariflex.data.services.admin_user import ensure_ven_user

    ensure_ven_user("ven@cariflex.example", "ven-secret-1", fleet.site.account)
    fm_db.session.commit()
    return request_token(app, "ven@cariflex.example", "ven-secret-1")


# --- the fuzz campaign's tally (tests/helpers/fuzzing.py; `make fuzz` prints it) -------------------------


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    marker = item.get_closest_marker("fuzz")
    if marker is not None and report.when == "call" and report.failed:
        from tests.helpers import fuzzing

        fuzzing.failed(marker.args[0])


def pytest_sessionfinish(session, exitstatus):
    path = os.environ.get("CARIFLEX_FUZZ_REPORT")
    if path:
        from tests.helpers import fuzzing

        fuzzing.write_report(path)


def pytest_collection_modifyitems(config, items):
    for item in items:  # a full campaign (make fuzz) may take longer than the suite's 600 s per test
        if item.get_closest_marker("fuzz") is not None:
            item.add_marker(pytest.mark.timeout(1500))
