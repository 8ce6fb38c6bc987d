"""Mutual TLS: the VTN requires client certificates and checks each VEN's fingerprint."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tests.helpers.openadr_harness import VenFleet, VtnProcess, wait_until
from tests.helpers.pki import Pki
from vtn.events import SITE_TZ


@pytest.fixture
def pki(tmp_path) -> Pki:
    return Pki(tmp_path)


def test_mutual_tls_accepts_the_right_certificate_and_refuses_a_wrong_fingerprint(tmp_path, pki):
    vtn_cert, vtn_key, vtn_fp = pki.issue("vtn", server=True)
    good_cert, good_key, good_fp = pki.issue("ven-good")
    other_cert, other_key, other_fp = pki.issue("ven-other")
    store = f"sqlite:///{tmp_path / 'vtn.sqlite'}"
    vtn = VtnProcess(
        tmp_path,
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
    fleet = VenFleet()
    try:
        assert vtn.url.startswith("https://127.0.0.1:")
        vtn.cli("ven", "add", "ven-good", "--fingerprint", good_fp)
        vtn.cli("ven", "add", "ven-spoof", "--fingerprint", good_fp)  # expects ven-good's certificate

        good = fleet.add(
            "ven-good", vtn.url, cert=good_cert, key=good_key, ca_file=pki.ca_path, vtn_fingerprint=vtn_fp
        )
        assert good.registered
        start = (datetime.now(UTC).astimezone(SITE_TZ) + timedelta(days=1)).replace(
            hour=6, minute=0, second=0, microsecond=0
        )
        created = vtn.admin(
            "POST", "/events/load-control", {"start": start.isoformat(), "duration": "PT1H", "levels": [0.5]}
        ).json()
        got = wait_until(lambda: good.latest(created["event_id"]), 20, "the event over TLS")
        assert got["values"] == [0.5]

        spoof = fleet.add(
            "ven-spoof", vtn.url, cert=other_cert, key=other_key, ca_file=pki.ca_path, vtn_fingerprint=vtn_fp
        )
        assert not spoof.registered
        refusal = wait_until(
            lambda: vtn.logged("refused registration: certificate fingerprint does not match"), 10, "refusal"
        )
        assert refusal[0]["presented"] == other_fp and refusal[0]["provisioned"] == good_fp
    finally:
        fleet.close()
        vtn.stop()


def test_tls_needs_all_three_files(tmp_path, pki):
    vtn_cert, vtn_key, _ = pki.issue("vtn", server=True)
    vtn = VtnProcess(tmp_path, f"sqlite:///{tmp_path / 'v.sqlite'}")
    result = vtn.cli("serve", "--tls-cert", vtn_cert, "--tls-key", vtn_key, check=False)
    assert result.returncode == 2
    assert "mutual TLS needs all three of --tls-cert, --tls-key and --tls-ca" in result.stderr
