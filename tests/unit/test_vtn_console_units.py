"""The console's parts in-process: the pinned chart library, site-local times, the load-control
picture (power against the cap, the delivered percentage), operator passwords, and a store from
an older VTN gaining the new column."""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.unit.test_vtn_units import T0, load_control, registered_ven
from vtn import actions, operators
from vtn.console import views
from vtn.events import load_control_draft
from vtn.store import ReportValue, Store

CONSOLE = Path(views.__file__).parent
LOCK = json.loads((CONSOLE / "static" / "vendor" / "vendor.lock.json").read_text())


def test_the_chart_library_is_the_pinned_one():
    for package in LOCK["packages"]:
        for path, digest in package["sha256"].items():
            data = (CONSOLE / "static" / "vendor" / path).read_bytes()
            assert hashlib.sha256(data).hexdigest() == digest, f"{path} differs from its lock"
    served = set()
    for template in (CONSOLE / "templates").glob("*.html"):
        served |= set(re.findall(r"/static/vendor/([^\"']+)", template.read_text()))
    locked = {p for package in LOCK["packages"] for p in package["files"]}
    assert served and served <= locked, served - locked
    # no page names any address but this server's
    for template in (CONSOLE / "templates").glob("*.html"):
        assert not re.search(r"(src|href)=\"(https?:)?//", template.read_text()), template.name


def test_times_are_the_sites_with_their_offset():
    assert views.local("2026-12-06T18:00:00+00:00") == "2026-12-06 14:00 −04:00"
    assert (
        views.local(datetime(2026, 12, 6, 18, 0, 5, tzinfo=UTC), seconds=True) == "2026-12-06 14:00:05 −04:00"
    )
    assert views.local(None) == "—"
    assert views.zone_label() == "America/Martinique (UTC−04:00)"
    assert views.form_time("2026-12-06T18:15:00+00:00") == "2026-12-06T14:15"
    assert views.next_quarter(datetime(2026, 12, 6, 18, 7, tzinfo=UTC)) == "2026-12-06T14:15"


def test_the_calendar_puts_an_event_on_its_local_day():
    # 02:00 UTC on the 7th is 22:00 on the 6th in Martinique
    event = {"event_id": "e", "start": "2026-12-07T02:00:00+00:00", "status": "far", "kind": "price"}
    month = views.month(views.parse_month("2026-12", T0), [event], datetime(2026, 12, 1, tzinfo=UTC))
    days = {d.day.isoformat(): d.events for week in month.weeks for d in week}
    assert days["2026-12-06"] == [event] and days["2026-12-07"] == []
    assert month.weeks[0][0].day.weekday() == 0  # Monday first
    assert (month.previous, month.next) == ("2026-11", "2027-01")
    with pytest.raises(actions.InputError, match="is not YYYY-MM"):
        views.parse_month("12/2026", T0)


def _registrations(vtn, ven_id: str) -> None:
    vtn._store_report_registrations(
        {
            "ven_id": ven_id,
            "reports": [
                {
                    "report_specifier_id": "spec-1",
                    "report_name": "METADATA_TELEMETRY_USAGE",
                    "report_descriptions": [
                        {
                            "r_id": "r-power",
                            "measurement": {"description": "RealPower", "unit": "W", "scale": "k"},
                        },
                        {
                            "r_id": "r-pct",
                            "measurement": {"description": "x-drDeliveredPercent", "scale": "none"},
                        },
                    ],
                }
            ],
        }
    )


def test_the_load_control_picture_draws_power_against_the_cap_and_the_delivered_share(vtn, store):
    ven = registered_ven(store)
    actions.set_ven_capacity(store, "ven-u", 600)
    event_id = load_control(store)  # T0 .. T0 + 2 h at 0.5
    _registrations(vtn, ven.ven_id)
    with store.session() as session:
        for minutes, kw in ((-90, 999.0), (-30, 400.0), (30, 290.0), (90, 280.0)):
            session.add(
                ReportValue(ven_id=ven.ven_id, r_id="r-power", at=T0 + timedelta(minutes=minutes), value=kw)
            )
        # the VEN's DR verification, reported after the event
        session.add(ReportValue(ven_id=ven.ven_id, r_id="r-pct", at=T0 + timedelta(hours=3), value=96.5))
    during = actions.show_event(store, event_id, now=T0 + timedelta(hours=1))["picture"]
    assert during["cap"][0]["cap_kw"] == 300.0 and during["capacity_kw"] == 600
    assert during["series"]["ven-u"] == [
        ((T0 - timedelta(minutes=30)).isoformat(), 400.0),
        ((T0 + timedelta(minutes=30)).isoformat(), 290.0),
    ]  # from an hour before to now: the reading 90 minutes before is outside
    assert (during["before"], during["during"], during["delivered"]) == (400.0, 290.0, [])
    after = actions.show_event(store, event_id, now=T0 + timedelta(hours=4))["picture"]
    assert after["during"] == 285.0
    assert after["delivered"] == [
        {"ven": "ven-u", "at": (T0 + timedelta(hours=3)).isoformat(), "delivered_pct": 96.5}
    ]
    shown = actions.show_event(store, event_id, now=T0 + timedelta(hours=4))
    assert shown["fleet_power_kw"]["during"] == 285.0


def test_without_a_provisioned_capacity_there_is_no_cap_to_draw(vtn, store):
    registered_ven(store)
    picture = actions.show_event(store, load_control(store), now=T0)["picture"]
    assert picture["cap"] == [] and picture["vens_without_capacity"] == ["ven-u"]
    with pytest.raises(actions.InputError, match="--capacity-kw -5 must be above 0"):
        actions.set_ven_capacity(store, "ven-u", -5)


def test_passwords_are_kept_as_scrypt_hashes(store):
    hashed = operators.hash_password("a-long-password")
    assert hashed.startswith("scrypt$16384$8$1$") and "a-long-password" not in hashed
    assert operators.password_matches("a-long-password", hashed)
    assert not operators.password_matches("a-long-passwore", hashed)
    assert operators.hash_password("a-long-password") != hashed  # salted
    for broken in ("", "scrypt$x", "md5$1$2$3$4$5", "scrypt$16384$8$1$%%%$%%%"):
        assert not operators.password_matches("a-long-password", broken)
    assert operators.ensure_operator(store, "op", "a-long-password") == "added"
    assert operators.ensure_operator(store, "op", "a-long-password") == "unchanged"
    assert operators.ensure_operator(store, "op", "another-password") == "password replaced"
    login = operators.log_in(store, "op", "another-password")
    assert operators.session_for(store, login.token).operator == "op"
    assert operators.session_for(store, login.token, now=datetime.now(UTC) + timedelta(hours=13)) is None
    assert operators.session_for(store, "x" * 500) is None


def test_a_store_from_an_older_vtn_gains_the_capacity_column(tmp_path):
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as old:
        old.execute(
            "CREATE TABLE vtn_ven (id INTEGER PRIMARY KEY, ven_name VARCHAR(100) UNIQUE,"
            " ven_id VARCHAR(100) UNIQUE,"
            " fingerprint VARCHAR(100), registration_id VARCHAR(100), registered_at DATETIME,"
            " last_poll_at DATETIME, created_at DATETIME)"
        )
        old.execute("INSERT INTO vtn_ven (ven_name, ven_id) VALUES ('old-ven', 'ven-old')")
    upgraded = Store(f"sqlite:///{path}")
    try:
        assert actions.set_ven_capacity(upgraded, "old-ven", 250)["capacity_kw"] == 250
        assert actions.list_vens(upgraded)[0]["ven_name"] == "old-ven"
    finally:
        upgraded.dispose()


def _power(store, ven_id: str, *readings: tuple[int, float], r_id: str = "r-power") -> None:
    with store.session() as session:
        for minutes, value in readings:
            session.add(
                ReportValue(ven_id=ven_id, r_id=r_id, at=T0 + timedelta(minutes=minutes), value=value)
            )


def test_two_vens_are_one_fleet_against_their_summed_cap(vtn, store):
    first, second = registered_ven(store, "ven-a"), registered_ven(store, "ven-b")
    for ven in (first, second):
        actions.set_ven_capacity(store, ven.ven_name, 400)
        _registrations(vtn, ven.ven_id)
    event_id = load_control(store)
    _power(store, first.ven_id, (-30, 300.0), (-10, 300.0), (30, 250.0))
    _power(store, second.ven_id, (-20, 300.0), (30, 230.0), (40, 250.0))
    picture = actions.show_event(store, event_id, now=T0 + timedelta(hours=1))["picture"]
    # each VEN's mean, summed: 300 + 300 before; 250 + 240 during, against 0.5 x 800 kW
    assert (picture["before"], picture["during"], picture["cap"][0]["cap_kw"]) == (600.0, 490.0, 400.0)
    assert set(picture["series"]) == {"ven-a", "ven-b"}


def test_only_real_power_is_drawn(vtn, store):
    ven = registered_ven(store)
    vtn._store_report_registrations(
        {
            "ven_id": ven.ven_id,
            "reports": [
                {
                    "report_specifier_id": "spec-2",
                    "report_descriptions": [
                        {"r_id": "r-q", "measurement": {"description": "ReactivePower", "scale": "k"}},
                        {"r_id": "x" * 101, "measurement": {"description": "RealPower", "scale": "k"}},
                    ],
                }
            ],
        }
    )
    _registrations(vtn, ven.ven_id)
    event_id = load_control(store)
    _power(store, ven.ven_id, (10, 900.0), r_id="r-q")
    _power(store, ven.ven_id, (10, 200.0))
    picture = actions.show_event(store, event_id, now=T0 + timedelta(hours=1))["picture"]
    assert picture["during"] == 200.0 and picture["samples_during"] == 1


def test_a_cancelled_event_ends_at_its_cancellation(vtn, store):
    ven = registered_ven(store)
    actions.set_ven_capacity(store, "ven-u", 600)
    _registrations(vtn, ven.ven_id)
    event_id = load_control(store)
    actions.cancel_event(store, event_id, now=T0 + timedelta(minutes=30))
    _power(store, ven.ven_id, (10, 250.0), (50, 590.0))
    picture = actions.show_event(store, event_id, now=T0 + timedelta(hours=3))["picture"]
    assert picture["during"] == 250.0
    assert [c["end"] for c in picture["cap"]] == [(T0 + timedelta(minutes=30)).isoformat()]


def test_the_delivered_share_is_the_one_reported_for_this_event(vtn, store):
    ven = registered_ven(store)
    _registrations(vtn, ven.ven_id)
    first = load_control(store)  # T0 .. T0 + 2 h
    second = actions.create_event(
        store,
        load_control_draft(
            start=T0 + timedelta(hours=4), duration="PT1H", levels="0.5", now=T0 - timedelta(days=1)
        ),
        now=T0 - timedelta(days=1),
    )["event_id"]
    # before the first ends: the previous event's 80 %; then the first's 95 %, then the second's 60 %
    for minutes, pct in ((60, 80.0), (125, 80.0), (180, 95.0), (270, 95.0), (310, 60.0)):
        _power(store, ven.ven_id, (minutes, pct), r_id="r-pct")
    now = T0 + timedelta(hours=6)
    (first_pct,) = actions.show_event(store, first, now=now)["picture"]["delivered"]
    (second_pct,) = actions.show_event(store, second, now=now)["picture"]["delivered"]
    assert (first_pct["delivered_pct"], second_pct["delivered_pct"]) == (95.0, 60.0)


def test_a_long_event_at_a_fast_telemetry_rate_is_drawn_per_minute(vtn, store):
    ven = registered_ven(store)
    _registrations(vtn, ven.ven_id)
    event_id = load_control(store)
    with store.session() as session:
        session.add_all(
            ReportValue(ven_id=ven.ven_id, r_id="r-power", at=T0 + timedelta(seconds=s), value=float(s % 60))
            for s in range(0, 7200, 2)
        )
    picture = actions.show_event(store, event_id, now=T0 + timedelta(hours=3))["picture"]
    points = picture["series"]["ven-u"]
    assert len(points) == 120 and points[0] == (T0.isoformat(), 29.0)  # the mean of 0, 2, .., 58
    assert picture["samples_during"] == 3600 and picture["during"] == 29.0
