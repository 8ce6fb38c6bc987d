"""Mutual TLS: the VTN requires client certificates and checks each VEN's fingerprint."""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from openleadr.utils import certificate_fingerprint

from tests.openadr_harness import VenFleet, VtnProcess, wait_until
from vtn.events import SITE_TZ


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write(path: Path, key, cert) -> tuple[str, str]:
    path.with_suffix(".key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    path.with_suffix(".pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return str(path.with_suffix(".pem")), str(path.with_suffix(".key"))


class Pki:
    """A throw-away CA issuing the VTN's and the VENs' certificates."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.ca_key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.now(UTC)
        self.ca_cert = (
            x509.CertificateBuilder()
            .subject_name(_name("Cariflex test CA"))
            .issuer_name(_name("Cariflex test CA"))
            .public_key(self.ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.ca_key, hashes.SHA256())
        )
        self.ca_path, _ = _write(folder / "ca", self.ca_key, self.ca_cert)

    def issue(self, cn: str, *, server: bool = False) -> tuple[str, str, str]:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.now(UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(self.ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=1))
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
                ),
                critical=False,
            )
        cert = builder.sign(self.ca_key, hashes.SHA256())
        cert_path, key_path = _write(self.folder / cn, key, cert)
        return cert_path, key_path, certificate_fingerprint(Path(cert_path).read_text())


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
