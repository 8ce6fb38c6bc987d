"""Every bad operator input is refused with a message that names it, and the store is unchanged."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from vtn.cli import cli
from vtn.events import SITE_TZ
from vtn.store import Base, Store

TOMORROW = (datetime.now(UTC).astimezone(SITE_TZ) + timedelta(days=1)).replace(
    hour=0, minute=0, second=0, microsecond=0
)
START = TOMORROW.isoformat()


def snapshot(url: str) -> dict[str, list]:
    store = Store(url)
    try:
        with store.session() as session:
            return {
                table.name: sorted(map(tuple, session.execute(select(table)).all()), key=repr)
                for table in Base.metadata.sorted_tables
            }
    finally:
        store.dispose()


@pytest.fixture
def vtn_cli(vtn_store_url, monkeypatch, tmp_path):
    monkeypatch.setenv("CARIFLEX_VTN_DATABASE_URL", vtn_store_url)
    monkeypatch.setenv("CARIFLEX_VAR_DIR", str(tmp_path))
    monkeypatch.delenv("CARIFLEX_VTN_ADMIN_URL", raising=False)
    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(cli, list(args), catch_exceptions=False)

    return invoke


def refused(vtn_cli, vtn_store_url, *args: str) -> str:
    before = snapshot(vtn_store_url)
    result = vtn_cli(*args)
    assert result.exit_code == 1, result.output
    assert "Nothing was changed." in result.output
    assert snapshot(vtn_store_url) == before
    return result.output


def price_file(tmp_path: Path, rows: list[str], name: str = "prices.csv") -> str:
    path = tmp_path / name
    path.write_text("\n".join(rows) + "\n")
    return str(path)


@pytest.mark.parametrize("count", [23, 25])
def test_price_file_with_wrong_count_is_refused(vtn_cli, vtn_store_url, tmp_path, count):
    path = price_file(tmp_path, ["price"] + [str(100 + i) for i in range(count)])
    output = refused(vtn_cli, vtn_store_url, "event", "price", "--start", START, "--prices", path)
    assert f"price file {path} has {count} prices; a price event needs exactly 24" in output


def test_price_file_with_nan_is_refused(vtn_cli, vtn_store_url, tmp_path):
    rows = ["hour,price"] + [f"{h},{'NaN' if h == 7 else 100}" for h in range(24)]
    output = refused(
        vtn_cli, vtn_store_url, "event", "price", "--start", START, "--prices", price_file(tmp_path, rows)
    )
    assert "value 8 ('NaN') is not a finite number" in output


def test_non_numeric_price_is_refused(vtn_cli, vtn_store_url):
    values = ",".join(["100"] * 5 + ["cheap"] + ["100"] * 18)
    output = refused(vtn_cli, vtn_store_url, "event", "price", "--start", START, "--values", values)
    assert "--values: value 6 ('cheap') is not a number" in output


def test_price_file_with_missing_hour_is_refused(vtn_cli, vtn_store_url, tmp_path):
    rows = ["hour,price"] + [f"{h},100" for h in range(24) if h != 13] + ["24,100"]
    output = refused(
        vtn_cli, vtn_store_url, "event", "price", "--start", START, "--prices", price_file(tmp_path, rows)
    )
    assert "hour '14' where 13 was expected" in output


def test_start_in_the_past_is_refused(vtn_cli, vtn_store_url):
    past = (TOMORROW - timedelta(days=3)).isoformat()
    output = refused(
        vtn_cli,
        vtn_store_url,
        "event",
        "load-control",
        "--start",
        past,
        "--duration",
        "PT4H",
        "--levels",
        "0.5",
    )
    assert "is in the past; pass --allow-past" in output


def test_start_in_the_past_is_accepted_with_allow_past(vtn_cli):
    past = (TOMORROW - timedelta(days=3)).isoformat()
    result = vtn_cli(
        "event",
        "load-control",
        "--start",
        past,
        "--duration",
        "PT4H",
        "--levels",
        "0.5",
        "--allow-past",
        "--json",
    )
    assert result.exit_code == 0, result.output
    assert '"status": "completed"' in result.output


@pytest.mark.parametrize("level", ["1.2", "-0.1"])
def test_level_outside_0_1_is_refused(vtn_cli, vtn_store_url, level):
    output = refused(
        vtn_cli,
        vtn_store_url,
        "event",
        "load-control",
        "--start",
        START,
        "--duration",
        "PT4H",
        "--levels",
        f"0.5,{level},0.5,0.5",
    )
    assert f"--levels: value 2 ({float(level):g}) is outside 0..1" in output


@pytest.mark.parametrize(
    "duration, problem",
    [
        ("PT0H", "must be a positive duration"),
        ("-PT1H", "must be a positive duration"),
        ("4 hours", "is not an ISO 8601 duration"),
        ("P1M", "not months or years"),
    ],
)
def test_bad_duration_is_refused(vtn_cli, vtn_store_url, duration, problem):
    output = refused(
        vtn_cli,
        vtn_store_url,
        "event",
        "load-control",
        "--start",
        START,
        "--duration",
        duration,
        "--levels",
        "0.5",
    )
    assert f"--duration {duration!r} {problem}" in output or problem in output


def test_bad_ramp_up_is_refused(vtn_cli, vtn_store_url):
    output = refused(
        vtn_cli,
        vtn_store_url,
        "event",
        "load-control",
        "--start",
        START,
        "--duration",
        "PT4H",
        "--levels",
        "0.5",
        "--ramp-up",
        "30min",
    )
    assert "--ramp-up '30min' is not an ISO 8601 duration" in output


def test_wrong_number_of_levels_is_refused(vtn_cli, vtn_store_url):
    output = refused(
        vtn_cli,
        vtn_store_url,
        "event",
        "load-control",
        "--start",
        START,
        "--duration",
        "PT4H",
        "--levels",
        "0.5,0.6",
    )
    assert "--levels has 2 values; give 1 (for the whole event) or 4 (one per hour)" in output


@pytest.mark.parametrize(
    "command",
    [["event", "show"], ["event", "cancel"], ["opt", "list"], ["event", "modify", "--levels", "0.5"]],
)
def test_unknown_event_id_is_refused(vtn_cli, vtn_store_url, command):
    args = [*command[:2], "evt-nope", *command[2:]]
    output = refused(vtn_cli, vtn_store_url, *args)
    assert "event 'evt-nope' does not exist" in output


def _new_load_control(vtn_cli, start: str = START, *extra: str) -> str:
    import json

    result = vtn_cli(
        "event", "load-control", "--start", start, "--duration", "PT2H", "--levels", "0.5", "--json", *extra
    )
    assert result.exit_code == 0, result.output
    return json.loads(result.output)["event_id"]


def test_modifying_a_cancelled_event_is_refused(vtn_cli, vtn_store_url):
    event_id = _new_load_control(vtn_cli)
    assert vtn_cli("event", "cancel", event_id).exit_code == 0
    output = refused(vtn_cli, vtn_store_url, "event", "modify", event_id, "--levels", "0.3")
    assert f"event {event_id} is cancelled; it can no longer be modified" in output
    output = refused(vtn_cli, vtn_store_url, "event", "cancel", event_id)
    assert "is already cancelled" in output


def test_modifying_a_completed_event_is_refused(vtn_cli, vtn_store_url):
    past = (TOMORROW - timedelta(days=3)).isoformat()
    event_id = _new_load_control(vtn_cli, past, "--allow-past")
    output = refused(vtn_cli, vtn_store_url, "event", "modify", event_id, "--levels", "0.3")
    assert f"event {event_id} is completed; it can no longer be modified" in output


def test_modifying_a_price_event_with_levels_is_refused(vtn_cli, vtn_store_url):
    import json

    created = vtn_cli("event", "price", "--start", START, "--values", ",".join(["90"] * 24), "--json")
    event_id = json.loads(created.output)["event_id"]
    output = refused(vtn_cli, vtn_store_url, "event", "modify", event_id, "--levels", "0.3")
    assert "a price event has no levels to modify" in output


def test_unknown_ven_in_vens_is_refused(vtn_cli, vtn_store_url):
    output = refused(
        vtn_cli,
        vtn_store_url,
        "event",
        "load-control",
        "--start",
        START,
        "--duration",
        "PT1H",
        "--levels",
        "0.5",
        "--vens",
        "ghost-ven",
    )
    assert "--vens: ghost-ven not provisioned" in output


def test_bad_fingerprint_and_duplicate_ven_are_refused(vtn_cli, vtn_store_url):
    output = refused(vtn_cli, vtn_store_url, "ven", "add", "ven-fp", "--fingerprint", "not-a-fingerprint")
    assert "--fingerprint 'not-a-fingerprint' is not an OpenADR certificate fingerprint" in output
    assert vtn_cli("ven", "add", "ven-twice").exit_code == 0
    assert "VEN 'ven-twice' is already provisioned" in refused(
        vtn_cli, vtn_store_url, "ven", "add", "ven-twice"
    )


def test_valid_price_event_is_stored_with_every_interval(vtn_cli):
    import json

    values = [round(80 + 3.5 * h, 2) for h in range(24)]
    created = json.loads(
        vtn_cli("event", "price", "--start", START, "--values", ",".join(map(str, values)), "--json").output
    )
    shown = json.loads(vtn_cli("event", "show", created["event_id"], "--json").output)
    assert [i["value"] for i in shown["intervals"]] == pytest.approx(values)
    assert [i["uid"] for i in shown["intervals"]] == list(range(24))
    assert shown["unit"] == "EUR/MWh" and shown["signal"] == "ENERGY_PRICE/price"
    assert shown["start"] == START


def test_start_too_far_away_is_refused(vtn_cli, vtn_store_url):
    output = refused(
        vtn_cli,
        vtn_store_url,
        "event",
        "load-control",
        "--start",
        "9999-12-31T23:00",
        "--duration",
        "PT1H",
        "--levels",
        "0.5",
    )
    assert "is more than 10 years from today" in output or "out of range" in output


def test_overlong_load_control_is_refused(vtn_cli, vtn_store_url):
    output = refused(
        vtn_cli,
        vtn_store_url,
        "event",
        "load-control",
        "--start",
        START,
        "--duration",
        "P30D",
        "--levels",
        "0.5",
    )
    assert "--duration 'P30D' is longer than 7 days" in output


def test_price_file_with_bom_and_swapped_hours_is_refused(vtn_cli, vtn_store_url, tmp_path):
    hours = list(range(24))
    hours[4], hours[5] = 5, 4
    path = tmp_path / "bom.csv"
    path.write_text("\ufeffhour,price\n" + "\n".join(f"{h},100" for h in hours) + "\n", encoding="utf-8")
    output = refused(vtn_cli, vtn_store_url, "event", "price", "--start", START, "--prices", str(path))
    assert "hour '5' where 4 was expected" in output


def test_price_file_that_is_not_utf8_is_refused(vtn_cli, vtn_store_url, tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes(b"prix\n" + b"\xe9\xe9\n" * 24)
    assert "not UTF-8 text" in refused(
        vtn_cli, vtn_store_url, "event", "price", "--start", START, "--prices", str(path)
    )


def test_modify_with_only_allow_past_is_refused(vtn_cli, vtn_store_url):
    event_id = _new_load_control(vtn_cli)
    assert "nothing to modify" in refused(vtn_cli, vtn_store_url, "event", "modify", event_id, "--allow-past")


def test_modify_duration_of_per_hour_levels_needs_levels(vtn_cli, vtn_store_url):
    import json

    created = vtn_cli(
        "event", "load-control", "--start", START, "--duration", "PT2H", "--levels", "0.5,0.6", "--json"
    )
    event_id = json.loads(created.output)["event_id"]
    output = refused(vtn_cli, vtn_store_url, "event", "modify", event_id, "--duration", "PT3H")
    assert "give --levels for the new hours too" in output


def test_exist_ok_provisioning_is_idempotent_and_still_refuses_bad_names(vtn_cli, vtn_store_url):
    """What the VTN container runs at every start (docker-compose.yml)."""
    import json

    first = json.loads(vtn_cli("ven", "add", "ven-container", "--exist-ok", "--json").output)
    again = vtn_cli("ven", "add", "ven-container", "--exist-ok")
    assert again.exit_code == 0, again.output
    assert f"VEN ven-container was provisioned already (ven_id {first['ven_id']})" in again.output
    assert [v["ven_name"] for v in json.loads(vtn_cli("ven", "list", "--json").output)].count(
        "ven-container"
    ) == 1
    output = refused(vtn_cli, vtn_store_url, "ven", "add", "bad name!", "--exist-ok")
    assert "VEN name 'bad name!' must be" in output
