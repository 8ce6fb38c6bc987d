"""The VTN at its edge: a foreign (non-openleadr) VEN works, hostile input is refused the OpenADR way.

Every VTN here is the real ``cariflex-vtn serve`` process on ephemeral loopback ports. The VEN is
tests/helpers/raw_ven.py (raw 2.0b XML over ``requests``), plus signed messages made with openleadr's
signer where a signature is the point. Each refusal checks the message type, the 2.0b code, that
nothing was stored and that the process still answers ``/health``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import requests
from lxml import etree
from openleadr.messaging import create_message

from tests.helpers import raw_ven
from tests.helpers.openadr_harness import VtnProcess, wait_until
from tests.helpers.pki import Pki
from tests.helpers.raw_ven import SCHEMA, Answer, RawVen
from tests.helpers.vtn_checks import REPORTS_WITHOUT_VEN_ID, TOMORROW, assert_alive, rows

PRICES = [100 + h for h in range(24)]  # EUR/MWh


def assert_valid_openadr(answer: Answer) -> None:
    """Every answer of the VTN is a 2.0b message that validates, with no literal 'None' in it."""
    assert answer.tree is not None, f"HTTP {answer.status} with no OpenADR body: {answer.text[:200]}"
    SCHEMA.assertValid(answer.tree)
    assert ">None<" not in answer.text, answer.text


# --- standard security: mutual TLS, unsigned XML ------------------------------------------------


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    folder = tmp_path_factory.mktemp("edge-tls")
    pki = Pki(folder)
    vtn_cert, vtn_key, _ = pki.issue("vtn", server=True)
    store = f"sqlite:///{folder / 'vtn.sqlite'}"
    vtn = VtnProcess(
        folder,
        store,
        extra=[
            "--tls-cert",
            vtn_cert,
            "--tls-key",
            vtn_key,
            "--tls-ca",
            pki.ca_path,
            "--day-ahead-time",
            "off",
        ],
    ).start()
    certs = {name: pki.issue(name) for name in ("raw-ven", "intruder", "signer")}
    vtn.cli("ven", "add", "raw-ven", "--fingerprint", certs["raw-ven"][2])
    vtn.cli("ven", "add", "signer", "--fingerprint", certs["signer"][2])
    yield vtn, store, pki, certs
    vtn.stop()


def tls_ven(tls, name: str, cert_name: str | None = None) -> RawVen:
    vtn, _, pki, certs = tls
    cert, key, _ = certs[cert_name or name]
    return RawVen(vtn.url, name, cert=(cert, key), ca=pki.ca_path)


def test_a_foreign_unsigned_ven_registers_receives_events_and_its_opts_are_listed(tls):
    vtn, store, _, _ = tls
    ven = tls_ven(tls, "raw-ven")
    answer = ven.register()
    assert_valid_openadr(answer)
    assert answer.code == "200" and ven.ven_id and ven.registration_id, answer.text

    price = vtn.admin("POST", "/events/price", {"start": TOMORROW.isoformat(), "prices": PRICES}).json()
    load = vtn.admin(
        "POST",
        "/events/load-control",
        {
            "start": (TOMORROW + timedelta(hours=18)).isoformat(),
            "duration": "PT2H",
            "levels": [0.5, 0.25],
            "targets": ["site-1"],
        },
    ).json()

    def both_distributed():
        answer = ven.poll()
        assert_valid_openadr(answer)
        ven.take(answer)
        return {price["event_id"], load["event_id"]} <= set(ven.events)

    wait_until(both_distributed, 20, "both events in a poll")
    got_price, got_load = ven.events[price["event_id"]], ven.events[load["event_id"]]
    assert got_price["signal_name"] == "ENERGY_PRICE"
    assert got_price["values"] == pytest.approx([p / 1000 for p in PRICES])  # per kWh on the wire
    assert got_load["signal_name"] == "LOAD_CONTROL" and got_load["values"] == [0.5, 0.25]
    assert got_load["resource_ids"] == ["site-1"]

    # The initial sync of a VEN that starts later: oadrRequestEvent answers with both.
    sync = ven.request_events()
    assert_valid_openadr(sync)
    assert sync.message_type == "oadrDistributeEvent" and sync.code == "200"
    assert {e.text for e in sync.all(".//ei:eventID")} == {price["event_id"], load["event_id"]}

    opted = ven.opt(
        [(price["event_id"], 0, "optIn"), (load["event_id"], got_load["modification_number"], "optIn")]
    )
    assert_valid_openadr(opted)
    assert opted.message_type == "oadrResponse" and opted.code == "200"
    listed = json.loads(vtn.cli("opt", "list", load["event_id"], "--json").stdout)
    assert [(r["ven"], r["opt"]) for r in listed] == [("raw-ven", "optIn")]
    assert_alive(vtn)


def test_refused_registrations_get_463_in_a_created_party_registration_and_store_nothing(tls):
    vtn, store, _, certs = tls
    before = rows(store)
    for ven in (
        tls_ven(tls, "never-provisioned", "raw-ven"),  # unknown name
        tls_ven(tls, "signer", "intruder"),  # provisioned name, another certificate
    ):
        answer = ven.register()
        assert_valid_openadr(answer)
        assert answer.message_type == "oadrCreatedPartyRegistration"
        assert answer.code == "463", answer.text
        assert answer.first(".//ei:venID") is None and answer.first(".//ei:registrationID") is None
        assert not any(fp in answer.text for _, _, fp in certs.values())
    assert rows(store) == before
    assert_alive(vtn)


def test_a_stolen_ven_id_gets_463_without_the_real_certificate(tls):
    vtn, store, _, certs = tls
    owner = tls_ven(tls, "raw-ven")
    owner.register()
    thief = tls_ven(tls, "raw-ven", "intruder")
    thief.ven_id = owner.ven_id
    before = rows(store)
    for answer in (thief.poll(), thief.opt([("evt-x", 0, "optOut")])):
        assert_valid_openadr(answer)
        assert answer.message_type == "oadrResponse" and answer.code == "463", answer.text
        assert not any(fp in answer.text for _, _, fp in certs.values())
    assert rows(store) == before


def signed(message_type: str, cert_paths: tuple[str, str, str], **payload) -> bytes:
    cert, key, _ = cert_paths
    return create_message(
        message_type, cert=Path(cert).read_bytes(), key=Path(key).read_bytes(), **payload
    ).encode()


def test_signed_messages_are_verified_and_a_tampered_one_gets_463(tls):
    vtn, store, _, certs = tls
    ven = tls_ven(tls, "signer")
    assert ven.register().code == "200"
    good = signed("oadrRequestEvent", certs["signer"], request_id="req-1", ven_id=ven.ven_id)
    answer = ven.send("EiEvent", good)
    assert answer.message_type == "oadrDistributeEvent" and answer.code == "200", answer.text
    tampered = signed("oadrRequestEvent", certs["signer"], request_id="req-2", ven_id=ven.ven_id).replace(
        b"req-2", b"req-3"
    )
    before = rows(store)
    answer = ven.send("EiEvent", tampered)
    assert_valid_openadr(answer)
    assert answer.message_type == "oadrDistributeEvent" and answer.code == "463", answer.text
    # Signed by a certificate other than the connection's.
    other = signed("oadrPoll", certs["intruder"], ven_id=ven.ven_id)
    answer = ven.send("OadrPoll", other)
    assert answer.message_type == "oadrResponse" and answer.code == "463", answer.text
    assert rows(store) == before


def test_high_security_refuses_unsigned_messages_with_463(tmp_path):
    pki = Pki(tmp_path)
    vtn_cert, vtn_key, _ = pki.issue("vtn", server=True)
    store = f"sqlite:///{tmp_path / 'vtn.sqlite'}"
    tls_args = ["--tls-cert", vtn_cert, "--tls-key", vtn_key, "--tls-ca", pki.ca_path]
    vtn = VtnProcess(tmp_path, store, extra=[*tls_args, "--require-signatures", "--day-ahead-time", "off"])
    vtn.start()
    try:
        certs = pki.issue("high-ven")
        vtn.cli("ven", "add", "high-ven", "--fingerprint", certs[2])
        ven = RawVen(vtn.url, "high-ven", cert=certs[:2], ca=pki.ca_path)
        before = rows(store)
        answer = ven.send("EiRegisterParty", raw_ven.create_party_registration("r1", "high-ven"))
        assert_valid_openadr(answer)
        assert answer.message_type == "oadrCreatedPartyRegistration" and answer.code == "463"
        assert rows(store) == before
        registration = signed(
            "oadrCreatePartyRegistration",
            certs,
            request_id="r2",
            ven_name="high-ven",
            profile_name="2.0b",
            transport_name="simpleHttp",
            transport_address=None,
            report_only=False,
            xml_signature=True,
            http_pull_model=True,
        )
        answer = ven.send("EiRegisterParty", registration)
        assert answer.code == "200", answer.text
        ven.ven_id = answer.first(".//ei:venID")
        unsigned_poll = ven.poll()
        assert unsigned_poll.message_type == "oadrResponse" and unsigned_poll.code == "463"
        assert ven.send("OadrPoll", signed("oadrPoll", certs, ven_id=ven.ven_id)).code == "200"
    finally:
        vtn.stop()
    refused = subprocess.run(
        [*vtn.command[:2], "--port", "0", "--insecure", "--require-signatures"],
        env=vtn.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 2 and "--require-signatures needs mutual TLS" in refused.stderr


# --- plain HTTP as the demo runs it: hostile packets --------------------------------------------


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    folder = tmp_path_factory.mktemp("edge-plain")
    store = f"sqlite:///{folder / 'vtn.sqlite'}"
    vtn = VtnProcess(folder, store).start()  # --insecure, as `make demo` and the compose stack run it
    vtn.cli("ven", "add", "plain-ven")
    ven = RawVen(vtn.url, "plain-ven")
    assert ven.register().code == "200"
    yield vtn, store, ven
    vtn.stop()


def post(vtn: VtnProcess, service: str, body: bytes, content_type: str | None = "application/xml"):
    headers = {"Content-Type": content_type} if content_type else {}
    return requests.post(f"{vtn.url}/{service}", data=body, headers=headers, timeout=30)


ENTITY_POLL = (
    b'<?xml version="1.0"?><!DOCTYPE oadrPayload [<!ENTITY v "x">]>'
    b'<oadr:oadrPayload xmlns:oadr="http://openadr.org/oadr-2.0b/2012/07"><oadr:oadrSignedObject>'
    b'<oadr:oadrPoll xmlns:ei="http://docs.oasis-open.org/ns/energyinterop/201110" ei:schemaVersion="2.0b">'
    b"<ei:venID>&v;</ei:venID></oadr:oadrPoll></oadr:oadrSignedObject></oadr:oadrPayload>"
)


@pytest.mark.parametrize(
    "body",
    [
        ENTITY_POLL,
        ENTITY_POLL.replace(b'<?xml version="1.0"?>', b""),
        b'<!DOCTYPE a [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;">]><a>&b;</a>',
        b'<!DOCTYPE a SYSTEM "file:///etc/passwd"><a/>',
        ENTITY_POLL.decode().encode("utf-16"),
    ],
    ids=["internal-entity", "no-declaration", "billion-laughs", "external-dtd", "utf-16"],
)
def test_a_doctype_is_refused_and_the_vtn_survives(plain, body):
    vtn, store, _ = plain
    before = rows(store)
    response = post(vtn, "OadrPoll", body)
    answer = Answer.of(response)
    assert response.status_code == 400 and answer.message_type == "oadrResponse", response.text
    assert answer.code == "400" and ("DOCTYPE" in answer.description or "XML" in answer.description)
    assert_valid_openadr(answer)
    assert rows(store) == before
    assert_alive(vtn)


@pytest.mark.parametrize(
    "content_type", [None, "text/plain", "application/json", "application/xmlx", "multipart/form-data"]
)
def test_a_wrong_content_type_gets_415_as_an_openadr_message(plain, content_type):
    vtn, _, ven = plain
    response = post(vtn, "OadrPoll", raw_ven.poll(ven.ven_id), content_type)
    answer = Answer.of(response)
    assert response.status_code == 415 and answer.code == "415", response.text
    assert "Content-Type" in answer.description
    assert_valid_openadr(answer)


def test_content_type_with_parameters_is_accepted(plain):
    vtn, _, ven = plain
    response = post(vtn, "OadrPoll", raw_ven.poll(ven.ven_id), "Application/XML; charset=UTF-8")
    assert response.status_code == 200 and Answer.of(response).message_type in (
        "oadrResponse",
        "oadrDistributeEvent",
    )


def test_a_body_over_the_limit_gets_413(plain):
    vtn, store, ven = plain
    before = rows(store)
    big = raw_ven.poll(ven.ven_id).replace(
        b"</oadr:oadrPayload>", b"<!--" + b"x" * (1024 * 1024) + b"--></oadr:oadrPayload>"
    )
    response = post(vtn, "OadrPoll", big)
    assert response.status_code == 413 and Answer.of(response).code == "413", response.text[:300]

    def chunks():  # no Content-Length: the limit holds while reading
        yield raw_ven.poll(ven.ven_id)[:-20]
        for _ in range(20):
            yield b"y" * 65536

    response = requests.post(
        f"{vtn.url}/OadrPoll", data=chunks(), headers={"Content-Type": "application/xml"}, timeout=30
    )
    assert response.status_code == 413, response.text[:300]
    assert rows(store) == before
    assert_alive(vtn)


@pytest.mark.parametrize("message_type", sorted(REPORTS_WITHOUT_VEN_ID))
def test_report_messages_without_a_ven_id_get_452(plain, message_type):
    vtn, store, ven = plain
    before = rows(store)
    answer = ven.send("EiReport", raw_ven.envelope(REPORTS_WITHOUT_VEN_ID[message_type]))
    assert answer.status == 200 and answer.code == "452", answer.text
    assert "venID" in answer.description
    assert_valid_openadr(answer)
    assert rows(store) == before


def test_unknown_and_missing_ven_ids(plain):
    vtn, store, ven = plain
    before = rows(store)
    stranger = RawVen(vtn.url, "stranger", ven_id="ven-<&>-unknown")
    answer = stranger.poll()
    assert answer.message_type == "oadrRequestReregistration", answer.text
    assert answer.first(".//ei:venID") == "ven-<&>-unknown"  # escaped on the wire, intact when read
    assert_valid_openadr(answer)
    empty = RawVen(vtn.url, "empty", ven_id="")
    answer = empty.poll()
    assert answer.message_type == "oadrResponse" and answer.code == "452", answer.text
    assert_valid_openadr(answer)
    assert rows(store) == before


def test_opt_responses_for_events_the_ven_was_never_sent_get_452_and_store_nothing(plain):
    vtn, store, ven = plain
    before = rows(store)
    answer = ven.opt([("evt-20260101-deadbeef", 0, "optIn")])
    assert answer.message_type == "oadrResponse" and answer.code == "452", answer.text
    assert rows(store) == before


def test_a_poll_distribution_has_no_none_and_a_request_id_is_echoed_escaped(plain):
    vtn, _, ven = plain
    event = vtn.admin("POST", "/events/price", {"start": TOMORROW.isoformat(), "prices": PRICES}).json()
    answer = wait_until(
        lambda: (a := ven.poll()).message_type == "oadrDistributeEvent" and a, 20, "a distribution"
    )
    assert_valid_openadr(answer)
    assert event["event_id"] in answer.text
    sync = ven.send("EiEvent", raw_ven.request_event("a&b<c>", ven.ven_id))
    assert_valid_openadr(sync)
    assert sync.first(".//ei:eiResponse/pyld:requestID") == "a&b<c>"


def test_cancel_party_registration_ends_the_registration(tmp_path):
    store = f"sqlite:///{tmp_path / 'vtn.sqlite'}"
    vtn = VtnProcess(tmp_path, store).start()
    try:
        vtn.cli("ven", "add", "leaving")
        ven = RawVen(vtn.url, "leaving")
        ven.register()
        wrong = ven.send(
            "EiRegisterParty", raw_ven.cancel_party_registration("c0", "reg-not-mine", ven.ven_id)
        )
        assert wrong.message_type == "oadrCanceledPartyRegistration" and wrong.code == "452"
        empty = ven.send("EiRegisterParty", raw_ven.cancel_party_registration("c0", "", ven.ven_id))
        assert_valid_openadr(empty)  # found by the fuzz campaign: registrationID "None" in the answer
        assert empty.code == "452"
        answer = ven.send(
            "EiRegisterParty", raw_ven.cancel_party_registration("c1", ven.registration_id, ven.ven_id)
        )
        assert_valid_openadr(answer)
        assert answer.message_type == "oadrCanceledPartyRegistration" and answer.code == "200", answer.text
        assert ven.poll().message_type == "oadrRequestReregistration"
        assert ven.register().code == "200"  # and it may come back
    finally:
        vtn.stop()


# --- operator input: what reaches the wire ------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ({"targets": ["x</ei:resourceID><ei:resourceID>injected"]}, "not a valid identifier"),
        ({"targets": ["site&co"]}, "not a valid identifier"),
        ({"targets": ["a" * 101]}, "not a valid identifier"),
        ({"vens": ["v<1>"]}, "not a valid identifier"),
        ({"prices": [10**400] * 24}, "digits"),
        ({"prices": [1e305] * 24}, "outside"),
        ({"prices": [1e9] + [100] * 23}, "outside"),
    ],
)
def test_admin_api_refuses_what_would_break_or_distort_the_wire(plain, body, problem):
    vtn, store, _ = plain
    before = rows(store)
    response = vtn.admin("POST", "/events/price", {"start": TOMORROW.isoformat(), "prices": PRICES, **body})
    assert response.status_code == 400, response.text
    assert problem in response.json()["error"]
    assert rows(store) == before


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (b'{"start": "2030-01-01T00:00", "prices": [' + b"9" * 4301 + b"]}", "JSON object"),
        (b'{"a":' * 5000 + b"1" + b"}" * 5000, "JSON"),
        (b"[" * 100000, "JSON"),
    ],
    ids=["4301-digits", "deep-object", "deep-array"],
)
def test_admin_api_refuses_pathological_json_with_400(plain, raw, problem):
    vtn, store, _ = plain
    before = rows(store)
    response = requests.post(
        f"{vtn.admin_url}/events/price",
        data=raw,
        headers={"Authorization": "Bearer test-admin-token", "Content-Type": "application/json"},
        timeout=30,
    )
    assert response.status_code == 400, response.text
    assert problem in response.json()["error"]
    assert rows(store) == before


@pytest.mark.parametrize("field", ["ramp_up", "notification", "recovery"])
def test_admin_api_refuses_periods_beyond_a_week(plain, field):
    vtn, store, _ = plain
    before = rows(store)
    body = {"start": TOMORROW.isoformat(), "duration": "PT1H", "levels": 0.5, field: "P800000D"}
    response = vtn.admin("POST", "/events/load-control", body)
    assert response.status_code == 400 and "longer than 7 days" in response.json()["error"], response.text
    assert rows(store) == before


def test_cli_and_price_file_apply_the_same_checks(plain, tmp_path):
    vtn, store, _ = plain
    before = rows(store)
    result = vtn.cli(
        "event",
        "price",
        "--start",
        TOMORROW.isoformat(),
        "--values",
        ",".join(["100"] * 24),
        "--targets",
        "site&co",
        check=False,
    )
    assert result.returncode == 1 and "not a valid identifier" in result.stderr
    prices = tmp_path / "prices.csv"
    prices.write_text("hour,price\n" + "".join(f"{h},{1e305 if h == 3 else 100}\n" for h in range(24)))
    result = vtn.cli("event", "price", "--start", TOMORROW.isoformat(), "--prices", str(prices), check=False)
    assert result.returncode == 1 and "outside" in result.stderr, result.stderr
    assert rows(store) == before


# --- the process after all of the above (the random campaign is tests/integration/test_fuzz_edges.py) -------


def test_the_vtn_survived_the_campaign_and_logged_refusals_truncated(plain):
    vtn, _, _ = plain
    assert_alive(vtn)
    refusals = vtn.logged("refused OpenADR message")
    assert refusals and all(len(json.dumps(r)) < 1200 for r in refusals)


# --- the edge's own pieces ----------------------------------------------------------------------


def test_every_refusal_message_type_renders_schema_valid():
    from openleadr.messaging import create_message as render

    from vtn.openadr_edge import RESPONSE_TYPES, OpenAdrEdge

    edge = OpenAdrEdge(
        {}, vtn_id="vtn<&>", ven_lookup=lambda _: None, require_signatures=False, create_message=render
    )
    edge.poll_seconds = timedelta(seconds=10)
    for message_type in [*RESPONSE_TYPES, "oadrPoll", "oadrCreatedEvent"]:
        response = edge._error_answer(
            message_type, {"ven_id": "v&1", "request_id": None, "registration_id": "r<1>"}, 452, "x & y"
        )
        tree = etree.fromstring(response.body)
        assert SCHEMA.validate(tree), (message_type, SCHEMA.error_log.last_error, response.text)
        assert "None" not in response.text


# --- every message the VTN sends, from real operations, validates against the 2.0b XSD ---------


def _reports(ven_id: str):
    from openleadr import OpenADRClient, objects

    client = OpenADRClient(ven_name="reporter", vtn_url="http://127.0.0.1:9/unused", show_fingerprint=False)
    client.add_report(
        callback=lambda: 1.0,
        resource_id="site-1",
        measurement="power_real",
        sampling_rate=timedelta(seconds=10),
        unit="W",
        report_duration=timedelta(hours=1),
    )
    report = client.reports[0]
    register = create_message("oadrRegisterReport", request_id="rr-1", ven_id=ven_id, reports=client.reports)
    now = datetime.now(UTC).replace(microsecond=0)

    def update(value: float) -> bytes:
        interval = objects.ReportInterval(
            dtstart=now,
            report_payload=objects.ReportPayload(r_id=report.report_descriptions[0].r_id, value=value),
        )
        return create_message(
            "oadrUpdateReport",
            request_id="up-1",
            ven_id=ven_id,
            reports=[
                objects.Report(
                    report_request_id="req-1",
                    report_specifier_id=report.report_specifier_id,
                    report_name="TELEMETRY_USAGE",
                    created_date_time=now,
                    dtstart=now,
                    duration=timedelta(seconds=10),
                    intervals=[interval],
                )
            ],
        ).encode()

    return register.encode(), update


def test_every_message_the_vtn_sends_validates_against_the_schema(tmp_path):
    store = f"sqlite:///{tmp_path / 'vtn.sqlite'}"
    vtn = VtnProcess(tmp_path, store).start()
    seen: dict[str, int] = {}

    def check(answer: Answer, message_type: str) -> Answer:
        assert_valid_openadr(answer)
        assert answer.message_type == message_type, answer.text
        seen[message_type] = seen.get(message_type, 0) + 1
        return answer

    def distribution(event_ids: set[str], status: str | None = None) -> Answer:
        def arrived():
            answer = ven.poll()
            if answer.message_type != "oadrDistributeEvent":
                return None
            ven.take(answer)
            got = {e.text for e in answer.all(".//ei:eventID")}
            statuses = {ven.events[e]["status"] for e in event_ids}
            return answer if got == event_ids and (status is None or statuses == {status}) else None

        return check(wait_until(arrived, 20, f"a distribution of {event_ids}"), "oadrDistributeEvent")

    try:
        vtn.cli("ven", "add", "all-types")
        ven = RawVen(vtn.url, "all-types")
        check(ven.send("EiRegisterParty", raw_ven.query_registration("q1")), "oadrCreatedPartyRegistration")
        check(ven.register(), "oadrCreatedPartyRegistration")
        price = vtn.admin("POST", "/events/price", {"start": TOMORROW.isoformat(), "prices": PRICES}).json()
        one = distribution({price["event_id"]})
        assert len(one.all(".//ei:eiEvent")) == 1
        check(ven.opt([(price["event_id"], 0, "optIn")]), "oadrResponse")
        load = vtn.admin(
            "POST",
            "/events/load-control",
            {"start": (TOMORROW + timedelta(hours=1)).isoformat(), "duration": "PT1H", "levels": 0.5},
        ).json()
        several = distribution({price["event_id"], load["event_id"]})
        assert len(several.all(".//ei:eiEvent")) == 2
        vtn.admin("POST", f"/events/{load['event_id']}/cancel")
        cancelled = distribution({price["event_id"], load["event_id"]})
        assert ven.events[load["event_id"]]["status"] == "cancelled", cancelled.text
        check(ven.request_events(), "oadrDistributeEvent")
        register, update = _reports(ven.ven_id)
        check(ven.send("EiReport", register), "oadrRegisteredReport")
        check(ven.send("EiReport", update(42.0)), "oadrUpdatedReport")
        before = rows(store)
        nan = update(float("nan")).replace(b">nan<", b">NaN<")  # the XSD's spelling of xs:float NaN
        nan = check(ven.send("EiReport", nan), "oadrUpdatedReport")
        assert nan.code == "454" and rows(store) == before
        check(
            ven.send(
                "EiRegisterParty", raw_ven.cancel_party_registration("c1", ven.registration_id, ven.ven_id)
            ),
            "oadrCanceledPartyRegistration",
        )
        check(ven.poll(), "oadrRequestReregistration")
    finally:
        vtn.stop()
    assert set(seen) == {
        "oadrCreatedPartyRegistration",
        "oadrDistributeEvent",
        "oadrResponse",
        "oadrRegisteredReport",
        "oadrUpdatedReport",
        "oadrCanceledPartyRegistration",
        "oadrRequestReregistration",
    }


# --- the openleadr gaps the edge wraps (each shown on openleadr alone) ----------------------------


def test_openleadr_gap_its_schema_parser_crashes_the_process_on_an_internal_entity(tmp_path):
    """libxml2 segfaults resolving an entity with openleadr's XMLParser(schema=...): the edge refuses
    any DOCTYPE and parses with resolve_entities=False before validating."""
    body = tmp_path / "entity.xml"
    body.write_bytes(ENTITY_POLL)
    script = (
        "import sys; from openleadr.messaging import validate_xml_schema; "
        "validate_xml_schema(open(sys.argv[1], 'rb').read()); print('survived')"
    )
    result = subprocess.run([sys.executable, "-c", script, str(body)], capture_output=True, timeout=60)
    assert result.returncode != 0 and b"survived" not in result.stdout  # killed (SIGSEGV) or raised
    from vtn.openadr_edge import Refusal, parse_safely

    with pytest.raises(Refusal, match="DOCTYPE"):
        parse_safely(ENTITY_POLL)


def test_openleadr_gap_its_templates_do_not_escape_and_write_none():
    from vtn.openadr_edge import escaped

    raw = create_message("oadrRequestReregistration", ven_id="site&co")
    with pytest.raises(etree.XMLSyntaxError):
        etree.fromstring(raw.encode())
    assert "<ei:venID>None</ei:venID>" in create_message("oadrRequestReregistration", ven_id=None)
    fixed = create_message("oadrRequestReregistration", **escaped({"ven_id": "site&co"}))
    assert etree.fromstring(fixed.encode()).findtext(".//{*}venID") == "site&co"


def test_openleadr_gap_its_http_error_cannot_be_raised_as_its_handler_does():
    from openleadr import errors

    with pytest.raises(TypeError):  # VTNService.handler on a wrong Content-Type: a 500 instead of a 400
        errors.HTTPError(response_code=400, response_description="wrong Content-Type")


def test_openleadr_gap_a_refused_registration_is_answered_200_ok():
    import asyncio

    from openleadr.service import RegistrationService

    service = RegistrationService("vtn", poll_freq=timedelta(seconds=10))
    service.on_create_party_registration = lambda payload: False  # "reject", per openleadr's docs
    payload = {"ven_name": "x", "profile_name": "2.0b", "transport_name": "simpleHttp", "request_id": "r"}
    response_type, body = asyncio.run(service.handle_message("oadrCreatePartyRegistration", payload))
    assert response_type == "oadrCreatedPartyRegistration"
    assert body["response"]["response_code"] == 200 and "ven_id" not in body  # 2.0b wants 463


def test_openleadr_gap_it_assumes_a_signature_on_every_message_it_verifies():
    from openleadr import utils

    unsigned = etree.fromstring(raw_ven.poll("ven-1"))
    with pytest.raises(AttributeError):  # what authenticate_message hits for a standard-security VEN
        utils.extract_pem_cert(unsigned)


@pytest.mark.parametrize("event_id", ["evt\x00x", "e" * 5000, "ev%2Ft", "évènement"])
def test_odd_event_ids_in_admin_paths_are_404_not_500(plain, event_id):
    vtn, store, _ = plain
    before = rows(store)
    for method, suffix in (("GET", ""), ("PATCH", ""), ("POST", "/cancel"), ("GET", "/opts")):
        body = {"prices": PRICES} if method == "PATCH" else None
        response = vtn.admin(method, f"/events/{requests.utils.quote(event_id)}{suffix}", body)
        assert response.status_code == 404, (method, suffix, response.text[:200])
        assert len(response.json()["error"]) < 200
    assert rows(store) == before
