"""The fuzz campaign: every edge that takes input we did not write, with structured mutations.

Edges: the plugin's ingestion API, the VTN admin API, the VTN's OpenADR XML endpoint, the fleet
YAML, price CSV files and Open-Meteo answers (the S2 CEM's campaign lives with its pairing tests
in tests/integration/test_s2_fuzz.py). Invariants for every case: never a 5xx, a crash or a stack trace; a
refusal names the problem; a refusal writes nothing (database rows, VTN store); the process stays
up. ``make test`` runs the ``ci`` profile (fixed seeds, a few dozen cases per edge), ``make fuzz``
the ``full`` one; see tests/helpers/fuzzing.py.

The ingestion API runs in-process (FlexMeasures' Flask app on the test database, the same code
as under gunicorn, thousands of cases in a minute); the VTN is the real ``cariflex-vtn serve``.
"""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import requests
import responses
import yaml
from hypothesis import given
from hypothesis import strategies as st

from cariflex.fleet import FleetError, default_fleet_path, load_fleet
from cariflex.price_file import PriceFileError, read_price_csv
from tests.helpers import raw_ven
from tests.helpers.common import call
from tests.helpers.events import belief_count, lc_event, ledger, price_event
from tests.helpers.fuzzing import campaign, dumps, mutated, raw_variant, tally
from tests.helpers.openadr_harness import ADMIN_TOKEN, VtnProcess
from tests.helpers.raw_ven import SCHEMA, Answer, RawVen
from tests.helpers.vtn_checks import REPORTS_WITHOUT_VEN_ID, TOMORROW, assert_alive, rows

LEAKS = ("Traceback", "UPDATE ", "SELECT ", "INSERT ", "psycopg2", "sqlalchemy", 'File "')


def assert_no_leak(text: str) -> None:
    for leak in LEAKS:
        assert leak not in text, text[:400]


# --- the plugin's ingestion API -------------------------------------------------------------------

EVENTS = "/api/cariflex/v1/openadr/events"


@pytest.mark.fuzz("ingestion_api")
@campaign(1.0)
@given(
    case=st.one_of(mutated(price_event()), mutated(lc_event())),
    content_type=st.sampled_from(
        ["application/json"] * 6 + ["text/plain", "application/json; charset=latin-1"]
    ),
    damage=st.one_of(st.none(), raw_variant(json.dumps(price_event()))),
)
def test_fuzz_ingestion_api(app, fm_db, token, case, content_type, damage):
    document, kind, path = case
    body = damage if damage is not None else dumps(document)
    before, ledger_before = belief_count(fm_db), ledger(fm_db)
    response = call(
        app,
        "POST",
        EVENTS,
        data=body.encode("utf-8", "surrogatepass"),
        headers={"Authorization": token, "Content-Type": content_type},
    )
    text = response.get_data(as_text=True)
    assert response.status_code < 500, text[:500]
    assert_no_leak(text)
    refused = response.status_code >= 400
    tally("ingestion_api", refused)
    if refused:
        assert response.status_code in (400, 413, 422), text[:300]
        message = response.json["message"]
        assert message and len(message) < 2000
        if response.status_code == 422 and damage is None and path and kind not in ("extra",):
            assert str(path[0]) in message, (kind, path, message)  # the refusal names the field
        assert belief_count(fm_db) == before and ledger(fm_db) == ledger_before


# --- the VTN: admin API and OpenADR XML, on one running process ------------------------------------


@pytest.fixture(scope="module")
def vtn(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz-vtn")
    store = f"sqlite:///{folder / 'vtn.sqlite'}"
    process = VtnProcess(folder, store).start()
    process.cli("ven", "add", "fuzz-ven")
    ven = RawVen(process.url, "fuzz-ven")
    assert ven.register().code == "200"
    event = process.admin("POST", "/events/price", {"start": TOMORROW.isoformat(), "prices": [100] * 24})
    assert event.status_code == 201
    yield process, store, ven, event.json()["event_id"]
    assert_alive(process)
    process.stop()


VALID_ADMIN = {
    "/events/price": {
        "start": TOMORROW.isoformat(),
        "prices": [100.0 + h for h in range(24)],
        "targets": ["site-1"],
    },
    "/events/load-control": {
        "start": (TOMORROW + timedelta(hours=18)).isoformat(),
        "duration": "PT2H",
        "levels": [0.5, 0.4],
        "ramp_up": "PT30M",
        "vens": ["fuzz-ven"],
    },
    "/vens": {"name": "another-ven", "fingerprint": "AB:CD:EF:01:23:45:67:89:AB:CD"},
}


@pytest.mark.fuzz("vtn_admin_api")
@campaign(1.0)
@given(
    route=st.sampled_from([*VALID_ADMIN, "PATCH"]),
    case=st.data(),
    raw=st.booleans(),
)
def test_fuzz_vtn_admin_api(vtn, route, case, raw):
    process, store, _, event_id = vtn
    valid = VALID_ADMIN.get(route, {"prices": [90.0] * 24})
    body = case.draw(raw_variant(json.dumps(valid))) if raw else dumps(case.draw(mutated(valid))[0])
    method, url = ("PATCH", f"/events/{event_id}") if route == "PATCH" else ("POST", route)
    before = rows(store)
    response = requests.request(
        method,
        f"{process.admin_url}{url}",
        data=body.encode("utf-8", "surrogatepass"),
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": "application/json"},
        timeout=30,
    )
    assert response.status_code < 500, response.text[:500]
    assert_no_leak(response.text)
    refused = response.status_code >= 400
    tally("vtn_admin_api", refused)
    if refused:
        assert response.status_code in (400, 404, 409, 413), response.text[:300]
        assert response.json()["error"]
        assert rows(store) == before


MESSAGES = [
    raw_ven.query_registration("q"),
    raw_ven.create_party_registration("r", "fuzz-ven"),
    raw_ven.poll("VEN"),
    raw_ven.request_event("q", "VEN"),
    raw_ven.created_event("VEN", [("EVENT", 0, "optIn")]),
    raw_ven.envelope(REPORTS_WITHOUT_VEN_ID["oadrUpdateReport"]),
    raw_ven.cancel_party_registration("c", "reg-x", "VEN"),
]
SERVICES = ["EiRegisterParty", "EiEvent", "EiReport", "OadrPoll"]
PIECES = [b"VEN", b"EVENT", b"2.0b", b"simpleHttp", b"optIn", b"fuzz-ven", b">0<", b">q<", b"reg-x", b"200"]


@st.composite
def hostile_message(draw) -> tuple[bytes, bool]:
    """A valid message with a piece cut, spliced, or replaced; or plain junk. (bytes, still valid?)"""
    base = draw(st.sampled_from(MESSAGES))
    kind = draw(st.sampled_from(["as-is", "cut", "insert", "replace-text", "junk", "doctype"]))
    if kind == "as-is":
        return base, True
    if kind == "junk":
        return draw(st.binary(max_size=300)), False
    if kind == "doctype":
        return b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e "v">]>' + base.split(b"?>", 1)[1], False
    if kind == "cut":
        start = draw(st.integers(0, len(base)))
        return base[:start] + base[start + draw(st.integers(1, 40)) :], False
    if kind == "insert":
        at = draw(st.integers(0, len(base)))
        return base[:at] + draw(st.text(max_size=40)).encode("utf-8", "surrogatepass") + base[at:], False
    target = draw(st.sampled_from(PIECES))
    value = draw(
        st.one_of(
            st.text(max_size=60).map(lambda s: s.encode("utf-8", "surrogatepass")),
            st.sampled_from(
                [b"&amp;", b"&lt;x&gt;", b"\x00", b"-1", b"99999999999999999999", b"NaN", b"INF"]
            ),
        )
    )
    return base.replace(target, value), False


@pytest.mark.fuzz("openadr_xml")
@campaign(1.0)
@given(message=hostile_message(), service=st.sampled_from(SERVICES))
def test_fuzz_openadr_xml(vtn, message, service):
    process, store, ven, event_id = vtn
    body, _ = message
    body = body.replace(b"VEN", ven.ven_id.encode()).replace(b"EVENT", event_id.encode())
    registrations_before = rows(store)["registrations"]
    response = requests.post(
        f"{process.url}/{service}", data=body, headers={"Content-Type": "application/xml"}, timeout=30
    )
    assert response.status_code < 500, response.text[:500]
    assert_no_leak(response.text)
    answer = Answer.of(response) if response.content else None
    if answer is not None:
        SCHEMA.assertValid(answer.tree)
        assert ">None<" not in response.text
    refused = response.status_code >= 400 or (answer is not None and answer.code not in (None, "200"))
    tally("openadr_xml", refused)
    if refused and answer is not None:
        assert answer.description  # the refusal says what is wrong
    if refused:
        assert rows(store)["registrations"] == registrations_before
    if rows(store)["registrations"] != registrations_before:  # a valid re-registration: keep polling
        ven.register()


# --- files: the fleet description and price CSVs ----------------------------------------------------

FLEET = yaml.safe_load(default_fleet_path().read_text(encoding="utf-8"))
FLEET_TEXT = default_fleet_path().read_text(encoding="utf-8")


@pytest.mark.fuzz("fleet_yaml")
@campaign(1.0)
@given(case=mutated(FLEET), damage=st.one_of(st.none(), raw_variant(FLEET_TEXT)))
def test_fuzz_fleet_yaml(tmp_path, case, damage):
    path = tmp_path / "fleet.yaml"
    if damage is not None:
        path.write_text(damage, encoding="utf-8", errors="surrogatepass")
    else:
        try:
            path.write_text(
                yaml.safe_dump(case[0], allow_unicode=True), encoding="utf-8", errors="surrogatepass"
            )
        except yaml.YAMLError:
            path.write_bytes(b"\xff\xfe not yaml")
    try:
        load_fleet(path)
        refused = False
    except FleetError as exc:
        refused = True
        assert str(path) in str(exc) and len(str(exc)) > len(str(path)) + 5  # names the file and the problem
    tally("fleet_yaml", refused)


PRICE_ROWS = [f"{h},{100 + h}" for h in range(24)]


@st.composite
def price_csv(draw) -> str:
    rows_ = list(PRICE_ROWS)
    kind = draw(st.sampled_from(["cell", "drop", "swap", "header", "raw", "bom"]))
    if kind == "cell":
        index = draw(st.integers(0, 23))
        cell = draw(
            st.one_of(
                st.sampled_from(
                    ["nan", "inf", "-inf", "1e308", "1e999", "-1e6", "", " ", "1,5", "0x10", "١٢"]
                ),
                st.floats(allow_nan=True, allow_infinity=True).map(repr),
                st.text(max_size=20),
            )
        )
        rows_[index] = f"{index},{cell}"
    elif kind == "drop":
        rows_.pop(draw(st.integers(0, 23)))
    elif kind == "swap":
        i, j = draw(st.integers(0, 23)), draw(st.integers(0, 23))
        rows_[i], rows_[j] = rows_[j], rows_[i]
    elif kind == "header":
        rows_.insert(0, draw(st.sampled_from(["hour,price", "price", "hour,cost", "a,b,c", "#comment"])))
    elif kind == "raw":
        return draw(raw_variant("\n".join(rows_)))
    else:
        return "\ufeff" + "\n".join(rows_)
    return "\n".join(rows_)


@pytest.fixture
def vtn_store(tmp_path):
    from vtn.store import Store

    store = Store(f"sqlite:///{tmp_path / 'vtn.sqlite'}")
    yield store
    store.dispose()


def event_rows(store) -> int:
    from sqlalchemy import func, select

    from vtn.store import Event, Interval

    with store.session() as session:
        return sum(
            session.execute(select(func.count()).select_from(t)).scalar_one() for t in (Event, Interval)
        )


@pytest.mark.fuzz("price_csv")
@campaign(1.0)
@given(text=price_csv())
def test_fuzz_price_csv(tmp_path, vtn_store, text):
    """A price file through the whole operator path: the reader, the event checks, the VTN store."""
    from vtn import actions
    from vtn.events import InputError

    path = tmp_path / "prices.csv"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    before = event_rows(vtn_store)
    try:
        prices = read_price_csv(path)
        actions.create_price_event(vtn_store, start=TOMORROW, prices=prices, prices_name=str(path))
        refused = False
    except (PriceFileError, InputError) as exc:
        refused = True
        assert str(path) in str(exc) or "prices" in str(exc) or "value" in str(exc), str(exc)
        assert event_rows(vtn_store) == before  # nothing stored
    tally("price_csv", refused)


# --- Open-Meteo answers ------------------------------------------------------------------------------

OPEN_METEO = Path(__file__).parent.parent / "fixtures" / "open_meteo"
FORECAST_URL = "https://api.open-meteo.com/v1/forecast"
RECORDED = json.loads((OPEN_METEO / "forecast_gmt.json").read_text(encoding="utf-8"))
SHORT = copy.deepcopy(RECORDED)  # 6 hours keep each case cheap
for _name in ("time", *[k for k in SHORT["hourly"] if k != "time"]):
    SHORT["hourly"][_name] = SHORT["hourly"][_name][:6]


@pytest.mark.fuzz("open_meteo")
@campaign(0.5)
@given(
    case=mutated(SHORT),
    damage=st.one_of(st.none(), raw_variant(json.dumps(SHORT))),
    status=st.sampled_from([200] * 8 + [400, 404, 429, 503]),
    content_type=st.sampled_from(["application/json", "text/html"]),
)
def test_fuzz_open_meteo_answers(fleet, fm_db, case, damage, status, content_type):
    from flexmeasures_cariflex.data.services.weather import WeatherError, fetch_weather

    start = datetime.fromisoformat(SHORT["hourly"]["time"][0]).replace(tzinfo=UTC)
    body = damage if damage is not None else dumps(case[0])
    before = belief_count(fm_db)
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.get(
            FORECAST_URL, body=body.encode("utf-8", "surrogatepass"), status=status, content_type=content_type
        )
        try:
            fetch_weather(
                fleet,
                start,
                start + timedelta(hours=6),
                now=start - timedelta(days=1),
                retries=0,
                backoff_s=0,
            )
            refused = False
        except WeatherError as exc:
            refused = True
            assert str(exc) and len(str(exc)) < 2000
            assert_no_leak(str(exc))
            assert belief_count(fm_db) == before  # nothing written
        finally:
            fm_db.session.rollback()
    tally("open_meteo", refused)
