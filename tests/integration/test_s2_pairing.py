"""S2 pairing and frame limits of the CEM, over real loopback WebSockets (ephemeral ports).

- only a paired device's access token (``Authorization: Bearer``) opens a session, and only for the
  device it was paired as: an impostor naming bat_01 is closed (4401 without a valid token, 4403
  with another device's token) and logged, while the real bat_01 keeps its session and obeys;
- a paired device that reconnects is accepted; an authenticated newer connection replaces the old
  session (4409), which is how a device coming back after a network drop is handled;
- tokens of devices outside the fleet (4404), wrong and revoked tokens (4401) are refused; unpairing
  closes a live session; re-pairing rotates the token;
- every readable frame gets exactly one ReceptionStatus (INVALID_DATA for non-objects, over-deep
  JSON, non-finite numbers, non-UTF-8) and the connection stays open; an over-limit frame is closed
  with 1009;
- TLS: the simulator reaches a ``wss://`` CEM whose certificate it checks against a CA file;
- the operator commands ``cariflex-ven pair / pairings / unpair``.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import json
import logging
import stat
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from s2python.common import (
    EnergyManagementRole,
    Handshake,
    SessionRequest,
    SessionRequestType,
)
from s2python.frbc import FRBCStorageStatus
from s2python.s2_parser import S2Parser
from s2python.version import S2_VERSION
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, WebSocketException

from cariflex.s2.credentials import read_tokens
from cem.pairing import PairingStore
from cem.server import MAX_FRAME_BYTES, Cem, server_ssl_context
from simulator import build_devices, start_fleet
from tests.helpers.s2 import CONTROLLABLE, FLEET, S2_RESOURCES, details

BIN = Path(sys.executable).parent
WAIT = 10.0  # upper bound for conditions that normally hold within milliseconds


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


async def wait_for(predicate, timeout: float = WAIT):
    async def poll():
        while not (result := predicate()):
            await asyncio.sleep(0.01)
        return result

    return await asyncio.wait_for(poll(), timeout)


async def paired_cem(folder: Path, *names: str, **options) -> tuple[Cem, dict[str, str]]:
    store = PairingStore(folder)
    tokens = {name: store.pair(name) for name in names}
    cem = Cem(port=0, pairings=store, fleet=CONTROLLABLE, **options)
    await cem.start()
    return cem, tokens


def devices(*names: str):
    return build_devices(FLEET, list(names))


class RawRm:
    """A bare WebSocket peer that says what the test wants and keeps every frame it receives."""

    def __init__(self, ws):
        self.ws = ws
        self.inbox: list[dict] = []

    @classmethod
    async def open(cls, cem: Cem, token: str | None = None, header: str | None = None) -> RawRm:
        headers = {"Authorization": header or f"Bearer {token}"} if (token or header) else None
        return cls(await connect(cem.url, additional_headers=headers))

    async def send(self, message) -> None:
        await self.ws.send(message if isinstance(message, str | bytes) else message.to_json())

    async def next(self, message_type: str, timeout: float = 5.0) -> dict:
        async def find() -> dict:
            while True:
                for item in self.inbox:
                    if item["message_type"] == message_type:
                        self.inbox.remove(item)
                        return item
                self.inbox.append(json.loads(await self.ws.recv()))

        return await asyncio.wait_for(find(), timeout)

    async def status_for(self, message_id) -> dict:
        status = await self.next("ReceptionStatus")
        assert status["subject_message_id"] == str(message_id), status
        return status

    async def hello(self, name: str) -> dict:
        """Handshake, then ResourceManagerDetails naming ``name``; the status of the details."""
        handshake = Handshake(
            message_id=uuid.uuid4(), role=EnergyManagementRole.RM, supported_protocol_versions=[S2_VERSION]
        )
        await self.send(handshake)
        assert (await self.status_for(handshake.message_id))["status"] == "OK"
        await self.next("HandshakeResponse")
        named = details(name)
        await self.send(named)
        return await self.status_for(named.message_id)

    async def closed(self, timeout: float = 5.0) -> tuple[int, str]:
        """Wait for the CEM to close the connection: (code, reason)."""
        with pytest.raises(ConnectionClosed):  # noqa: PT012  (reads until the close arrives)
            async with asyncio.timeout(timeout):
                while True:
                    await self.ws.recv()
        return self.ws.protocol.close_code, self.ws.protocol.close_reason


def refusals(caplog) -> list[dict]:
    return [r.fields for r in caplog.records if r.getMessage() == "s2 connection refused"]


# --- (a) impostors do not displace or control the real device ----------------------------


def test_an_impostor_naming_bat_01_cannot_displace_or_control_it(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="cariflex.ven.s2")

    async def scenario():
        cem, tokens = await paired_cem(tmp_path, "bat_01", "bat_02")
        try:
            async with await start_fleet(
                cem.url, devices("bat_01"), tokens=tokens, measure_seconds=30, backoff_min_seconds=0.05
            ) as fleet:
                rm = fleet["bat_01"]
                await wait_for(lambda: "bat_01" in cem.devices and cem.devices["bat_01"].controllable)
                real = cem.sessions["bat_01"]
                outcomes = {}
                # no token at all: closed as soon as it connects, before any S2 message counts
                anonymous = await RawRm.open(cem)
                with pytest.raises(ConnectionClosed):
                    await anonymous.hello("bat_01")
                outcomes["no token"] = anonymous.ws.protocol.close_code, anonymous.ws.protocol.close_reason
                # a made-up token
                guessed = await RawRm.open(cem, token="x" * 43)
                outcomes["guessed"] = await guessed.closed()
                # a real token, of another device (bat_02), naming bat_01: the status, then closed
                other = await RawRm.open(cem, token=tokens["bat_02"])
                status = await other.hello("bat_01")
                outcomes["other device's token"] = await other.closed()
                # the real session is untouched and still takes instructions
                untouched = cem.sessions["bat_01"] is real and rm.sessions == 1 and rm.connected
                result = await cem.apply_setpoint("bat_01", 30)
                await rm.wait_until(lambda: abs(rm.power_w - 30_000) < 1, WAIT)
                # the real device reconnecting (as after a network drop) is accepted
                await real.send(SessionRequest(message_id=uuid.uuid4(), request=SessionRequestType.RECONNECT))
                await rm.wait_until(lambda: rm.sessions == 2 and rm.frbc_active, WAIT)
                await wait_for(lambda: cem.sessions.get("bat_01") not in (None, real))
                await wait_for(lambda: cem.devices["bat_01"].controllable)
                return outcomes, status, untouched, result, rm.closes, cem.refused
        finally:
            await cem.stop()

    outcomes, status, untouched, result, closes, refused = run(scenario())
    assert outcomes["no token"][0] == 4401 and "no access token" in outcomes["no token"][1]
    assert outcomes["guessed"] == (4401, "not paired: access token not recognised")
    assert status["status"] == "INVALID_CONTENT" and "wrong device" in status["diagnostic_label"]
    assert outcomes["other device's token"][0] == 4403
    assert "bat_02" in outcomes["other device's token"][1] and "bat_01" in outcomes["other device's token"][1]
    assert untouched and result is not None and result.expected_w == pytest.approx(30_000)
    assert 4401 not in [code for code, _ in closes]  # the real device was never refused
    assert refused == 3
    logged = refusals(caplog)
    assert [line["code"] for line in logged] == [4401, 4401, 4403]
    assert logged[2]["token_device"] == "bat_02" and logged[2]["named_device"] == "bat_01"
    assert all(line["peer"].startswith("127.0.0.1:") for line in logged)


def test_an_authenticated_newer_connection_replaces_the_session(tmp_path, caplog):
    """The documented policy: the same device's token wins over the older connection (a device back
    after a network drop finds its old session half-open). A cloned token therefore fights the
    device, and each takeover is logged."""
    caplog.set_level(logging.INFO, logger="cariflex.ven.s2")

    async def scenario():
        cem, tokens = await paired_cem(tmp_path, "bat_03")
        try:
            async with await start_fleet(
                cem.url,
                devices("bat_03"),
                tokens=tokens,
                measure_seconds=30,
                backoff_min_seconds=0.05,
                backoff_max_seconds=0.2,
            ) as fleet:
                rm = fleet["bat_03"]
                await wait_for(lambda: "bat_03" in cem.devices and cem.devices["bat_03"].controllable)
                clone = await RawRm.open(cem, token=tokens["bat_03"])
                assert (await clone.hello("bat_03"))["status"] == "OK"
                await rm.wait_until(lambda: rm.closes and rm.closes[-1][0] == 4409, WAIT)
                # the device reconnects with its token and takes its session back
                clone_closed = await clone.closed()
                await rm.wait_until(lambda: rm.frbc_active, WAIT)
                await wait_for(lambda: cem.devices["bat_03"].controllable)
                return clone_closed, rm.refused
        finally:
            await cem.stop()

    clone_closed, refused = run(scenario())
    assert clone_closed[0] == 4409 and "replaced" in clone_closed[1]
    assert refused is None
    replaced = [r for r in caplog.records if r.getMessage() == "s2 session replaced"]
    assert len(replaced) >= 2 and all(r.fields["device"] == "bat_03" for r in replaced)


# --- (b) devices outside the fleet ---------------------------------------------------------


def test_devices_outside_the_fleet_are_refused(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="cariflex.ven.s2")

    async def scenario():
        cem, tokens = await paired_cem(tmp_path, "bat_01", "bat_99")  # bat_99 written behind the CLI
        try:
            stranger = await RawRm.open(cem, token=tokens["bat_99"])
            unknown = await stranger.closed()
            renamed = await RawRm.open(cem, token=tokens["bat_01"])
            status = await renamed.hello("bat_99")
            return unknown, status, await renamed.closed(), dict(cem.devices)
        finally:
            await cem.stop()

    unknown, status, renamed, known = run(scenario())
    assert unknown == (4404, "unknown device: bat_99 is not in the fleet")
    assert status["status"] == "INVALID_CONTENT"
    assert renamed[0] == 4403
    assert "bat_99" not in known
    assert [line["code"] for line in refusals(caplog)] == [4404, 4403]


def test_the_pair_command_refuses_names_outside_the_fleet(tmp_path):
    done = cli("pair", "bat_99", "--state-dir", str(tmp_path))
    assert done.returncode == 1
    assert "not a battery, EV charger, PV site or base load of the fleet: bat_99" in done.stderr
    assert PairingStore(tmp_path).pairings() == []


# --- (c) wrong and revoked tokens ----------------------------------------------------------


def test_wrong_and_revoked_tokens_are_refused(tmp_path):
    async def scenario():
        cem, tokens = await paired_cem(tmp_path, "ev_02")
        old_token = tokens["ev_02"]
        try:
            results = {}
            basic = await RawRm.open(cem, header="Basic ZXZfMDI6c2VjcmV0")
            results["basic"] = await basic.closed()
            async with await start_fleet(
                cem.url,
                devices("ev_02"),
                tokens=tokens,
                measure_seconds=30,
                backoff_min_seconds=0.05,
                backoff_max_seconds=0.2,
            ) as fleet:
                rm = fleet["ev_02"]
                await wait_for(lambda: "ev_02" in cem.devices and cem.devices["ev_02"].controllable)
                # the operator unpairs it (another process: `cariflex-ven unpair ev_02`)
                PairingStore(tmp_path).unpair("ev_02")
                await rm.wait_until(lambda: rm.refused is not None, WAIT)
                results["revoked live"] = rm.refused
                await wait_for(lambda: not cem.devices["ev_02"].connected)
                # its old token keeps being refused on every retry
                await rm.wait_until(lambda: rm.closes[-1][1] and "token revoked" in rm.closes[-1][1], WAIT)
                results["retry"] = rm.closes[-1]
                # paired again: a new token (read from the same place) works, the old one does not
                tokens["ev_02"] = PairingStore(tmp_path).pair("ev_02")
                await rm.wait_until(lambda: rm.refused is None and rm.frbc_active, WAIT)
                replayed = await RawRm.open(cem, token=old_token)
                results["old token"] = await replayed.closed()
                await wait_for(lambda: cem.devices["ev_02"].controllable)
            return results
        finally:
            await cem.stop()

    results = run(scenario())
    assert results["basic"] == (4401, "not paired: no access token (Authorization: Bearer)")
    assert results["revoked live"] == (4401, "not paired: pairing revoked (unpaired)")
    assert results["retry"] == (4401, "not paired: token revoked (unpaired)")
    assert results["old token"] == (4401, "not paired: token revoked (unpaired)")


def test_re_pairing_rotates_the_token_and_closes_the_old_session(tmp_path):
    async def scenario():
        cem, tokens = await paired_cem(tmp_path, "bat_05")
        try:
            rm = await RawRm.open(cem, token=tokens["bat_05"])
            assert (await rm.hello("bat_05"))["status"] == "OK"
            PairingStore(tmp_path).pair("bat_05")
            # a connection attempt right away re-reads the pairings before the CEM's watcher does:
            # the live session must be closed all the same
            again = await RawRm.open(cem, token=tokens["bat_05"])
            return await rm.closed(), await again.closed()
        finally:
            await cem.stop()

    closed, again = run(scenario())
    assert closed == (4401, "not paired: pairing revoked (re-paired)")
    assert again == (4401, "not paired: token revoked (re-paired)")


def test_a_cem_without_pairings_refuses_everyone():
    async def scenario():
        cem = Cem(port=0)
        await cem.start()
        try:
            return await (await RawRm.open(cem, token="anything")).closed()
        finally:
            await cem.stop()

    assert run(scenario()) == (4401, "not paired: this CEM has no pairings")


# --- (d) frames: one ReceptionStatus each, or a close when over the limit ------------------

NAN_ID = uuid.uuid4()
STORAGE = '{"message_type": "FRBC.StorageStatus", "message_id": "%s", "present_fill_level": %s}'


@pytest.mark.parametrize(
    ("frame", "subject", "label"),
    [
        ("[]", None, "not an array"),
        ('[{"message_type": "Handshake"}]', None, "not an array"),
        ("null", None, "not None"),
        ("42", None, "not 42"),
        ("true", None, "not True"),
        ('"FRBC.StorageStatus"', None, "not 'FRBC.StorageStatus'"),
        ("[" * 1000 + "]" * 1000, None, "nested more than 32 levels"),
        ('{"a": ' * 1000 + "1" + "}" * 1000, None, "nested more than 32 levels"),
        (
            STORAGE % (NAN_ID, "NaN"),
            NAN_ID,
            "NaN is not a JSON number",
        ),
        (
            STORAGE % (NAN_ID, "1e999"),
            NAN_ID,
            "not a finite number",
        ),
        (b'{"message_type": "\xff\xfe"}', None, "not UTF-8"),
        ("{not json", None, "not valid JSON"),
    ],
    ids=[
        "empty-array",
        "array",
        "null",
        "number",
        "bool",
        "string",
        "deep-array",
        "deep-object",
        "nan",
        "infinity",
        "not-utf8",
        "broken",
    ],
)
def test_every_readable_frame_gets_exactly_one_invalid_data(tmp_path, frame, subject, label):
    async def scenario():
        cem, tokens = await paired_cem(tmp_path, "bat_07")
        try:
            rm = await RawRm.open(cem, token=tokens["bat_07"])
            assert (await rm.hello("bat_07"))["status"] == "OK"
            await rm.send(frame)
            good = FRBCStorageStatus(message_id=uuid.uuid4(), present_fill_level=55.0)
            await rm.send(good)  # the connection is still usable
            statuses = []
            while not statuses or statuses[-1]["subject_message_id"] != str(good.message_id):
                statuses.append(await rm.next("ReceptionStatus"))
            open_after = rm.ws.protocol.close_code is None
            await rm.ws.close()
            return statuses, open_after
        finally:
            await cem.stop()

    statuses, open_after = run(scenario())
    assert len(statuses) == 2, statuses  # exactly one for the bad frame, one for the good message
    bad, good = statuses
    assert bad["status"] == "INVALID_DATA" and label in bad["diagnostic_label"], bad
    assert bad["subject_message_id"] == str(subject or uuid.UUID(int=0))
    assert good["status"] == "OK" and open_after


def test_frames_up_to_the_limit_are_read_and_larger_ones_close_with_1009(tmp_path):
    async def scenario():
        cem, tokens = await paired_cem(tmp_path, "bat_08")
        try:
            rm = await RawRm.open(cem, token=tokens["bat_08"])
            assert (await rm.hello("bat_08"))["status"] == "OK"
            message_id = uuid.uuid4()
            head = f'{{"message_type": "PowerMeasurement", "message_id": "{message_id}", "pad": "'
            at_limit = head + "x" * (MAX_FRAME_BYTES - len(head) - 2) + '"}'
            assert len(at_limit) == MAX_FRAME_BYTES
            await rm.send(at_limit)
            status = await rm.status_for(message_id)
            await rm.send("x" * (MAX_FRAME_BYTES + 1))
            return status, await rm.closed()
        finally:
            await cem.stop()

    status, closed = run(scenario())
    assert status["status"] == "INVALID_DATA"  # read (and refused: "pad" is no field of it)
    assert closed[0] == 1009


def test_s2_python_parser_gaps():
    """Why the CEM parses frames itself first: for JSON that is not an object, or is nested deeply,
    s2-python 0.11.1 raises neither S2ValidationError nor JSONDecodeError, and its own connection
    core then lets the receive task die: no ReceptionStatus, connection gone."""
    for frame in ("[]", "null", "1", "true"):
        with pytest.raises(AttributeError):  # it calls .get() on whatever json.loads returned
            S2Parser.parse_as_any_message(frame)
    with pytest.raises(RecursionError):
        S2Parser.parse_as_any_message("[" * 1000 + "]" * 1000)
    with pytest.raises(json.JSONDecodeError):  # a JSON string is decoded twice: '"x"' -> 'x' -> error
        S2Parser.parse_as_any_message('"x"')


# --- TLS ------------------------------------------------------------------------------------


def _certificates(folder: Path) -> tuple[Path, Path, Path]:
    """A throw-away CA and a server certificate for 127.0.0.1 signed by it."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    now = datetime.now(UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("cariflex test CA"))
        .issuer_name(name("cariflex test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    server = (
        x509.CertificateBuilder()
        .subject_name(name("127.0.0.1"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = folder / "ca.pem", folder / "cem.pem", folder / "cem.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(server.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return paths


def test_the_simulator_pairs_with_a_tls_cem(tmp_path):
    ca, cert, key = _certificates(tmp_path)

    async def scenario():
        context = server_ssl_context(str(cert), str(key))
        cem, tokens = await paired_cem(tmp_path / "state", "ev_04", ssl_context=context)
        try:
            assert cem.url.startswith("wss://127.0.0.1:")
            async with await start_fleet(
                cem.url, devices("ev_04"), tokens=tokens, ca_file=ca, measure_seconds=30
            ) as fleet:
                await fleet.wait_until(lambda rm: rm.frbc_active, WAIT)
                await wait_for(lambda: "ev_04" in cem.devices and cem.devices["ev_04"].controllable)
            with pytest.raises((OSError, EOFError, WebSocketException)):  # ws:// to the TLS port
                async with connect(cem.url.replace("wss://", "ws://"), open_timeout=5) as ws:
                    await ws.recv()
        finally:
            await cem.stop()

    run(scenario())


# --- operator commands -----------------------------------------------------------------------


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "cariflex-ven"), *args], capture_output=True, text=True, timeout=60)


def test_pair_shows_the_token_once_and_keeps_only_its_hash(tmp_path):
    done = cli("pair", "bat_01", "ev_10", "--state-dir", str(tmp_path))
    assert done.returncode == 0, done.stderr
    tokens = dict(line.split() for line in done.stdout.splitlines())
    assert set(tokens) == {"bat_01", "ev_10"} and all(len(t) == 43 for t in tokens.values())  # 32 bytes
    assert "Shown once" in done.stderr
    stored = (tmp_path / "s2_pairings.json").read_text()
    assert stat.S_IMODE((tmp_path / "s2_pairings.json").stat().st_mode) == 0o600
    for name, token in tokens.items():
        assert token not in stored and hashlib.sha256(token.encode()).hexdigest() in stored
        assert PairingStore(tmp_path).verify(name, token)
    listed = {
        r["device"]: r for r in json.loads(cli("pairings", "--json", "--state-dir", str(tmp_path)).stdout)
    }
    assert set(listed) == S2_RESOURCES  # batteries, EV chargers, PV sites and the base load
    assert (
        listed["bat_01"]["paired"]
        and listed["bat_01"]["token_id"] == hashlib.sha256(tokens["bat_01"].encode()).hexdigest()[:8]
    )
    assert not listed["bat_02"]["paired"]
    assert cli("unpair", "bat_01", "bat_02", "--state-dir", str(tmp_path)).stdout.splitlines() == [
        "bat_01: unpaired",
        "bat_02: was not paired",
    ]
    assert not PairingStore(tmp_path).verify("bat_01", tokens["bat_01"])
    text = cli("pairings", "--state-dir", str(tmp_path)).stdout
    assert "bat_01     not paired" in text and "ev_10      paired " in text


def test_pair_into_a_token_file_is_idempotent(tmp_path):
    token_file = tmp_path / "sim" / "s2_tokens.json"
    state = ["--state-dir", str(tmp_path / "ven"), "--token-file", str(token_file)]
    first = cli("pair", "--all", *state)
    assert first.returncode == 0, first.stderr
    tokens = read_tokens(token_file)
    assert set(tokens) == S2_RESOURCES and first.stdout.count(": paired") == len(S2_RESOURCES) == 31
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(token_file.parent.stat().st_mode) == 0o700
    second = cli("pair", "--all", *state)
    assert second.stdout.count(": already paired") == 31 and read_tokens(token_file) == tokens
    rotated = cli("pair", "bat_04", "--rotate", *state)
    assert "bat_04: paired" in rotated.stdout
    after = read_tokens(token_file)
    assert after["bat_04"] != tokens["bat_04"] and after["bat_05"] == tokens["bat_05"]
    store = PairingStore(tmp_path / "ven")
    assert all(store.verify(name, token) for name, token in after.items())


def test_run_refuses_unusable_s2_tls_files(tmp_path):
    done = cli("run", "--state-dir", str(tmp_path), "--s2-cert", str(tmp_path / "missing.pem"))
    assert done.returncode == 1 and "S2 TLS certificate or key unusable" in done.stderr
    done = cli("run", "--state-dir", str(tmp_path), "--s2-key", str(tmp_path / "key.pem"))
    assert done.returncode == 2 and "--s2-key needs --s2-cert" in done.stderr


def test_a_damaged_pairing_file_is_reported_not_guessed(tmp_path):
    (tmp_path / "s2_pairings.json").write_text("{not json")
    done = cli("pairings", "--state-dir", str(tmp_path))
    assert done.returncode == 1 and "s2_pairings.json is damaged" in done.stderr
    assert cli("pair", "bat_01", "--state-dir", str(tmp_path)).returncode == 1
    store = PairingStore(tmp_path)  # the CEM: nobody is let in on a file it cannot read
    assert store.authenticate("x" * 43).code == 4401 and store.pairings() == []
