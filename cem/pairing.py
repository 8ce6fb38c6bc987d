"""S2 pairing on the CEM side: which access token speaks for which device.

``cariflex-ven pair DEVICE`` draws a 256-bit random access token (S2 Connect: "random binary data
from a cryptographically secure generator, at least 32 bytes, Base64"; here base64url so that it
fits an HTTP header and a shell unquoted), shows it once and keeps only its SHA-256 in
``$CARIFLEX_VEN_STATE_DIR/s2_pairings.json`` (mode 600, written atomically under a lock)::

    {"version": 1,
     "devices": {"bat_01": {"sha256": "<hex>", "token_id": "<first 8 hex>", "paired_at": "<ISO>"}},
     "revoked": {"<sha256 hex>": {"device": "bat_01", "at": "<ISO>", "why": "unpaired"}}}

Why a plain SHA-256 and not scrypt/bcrypt: slow, salted hashes protect *guessable* secrets
(passwords) when the hash file leaks. A 256-bit random token cannot be guessed, so one SHA-256 is
already preimage-resistant beyond reach, and it stays cheap for the CEM to check on every
connection attempt (a flood of attempts cannot turn the key-stretching cost into a CPU
denial of service). The hash is also the lookup key: the token alone says which device it is for.

The running CEM (``PairingStore.refresh``) re-reads the file when it changes, so pairing,
re-pairing (a new token; the old one stops working) and unpairing apply without a restart, and
a live session whose token is no longer current is closed.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cariflex.s2.credentials import CLOSE_NOT_PAIRED, write_private

log = logging.getLogger("cariflex.ven.s2")

PAIRINGS_FILE = "s2_pairings.json"
TOKEN_BYTES = 32  # S2 Connect: an access token has at least 32 random bytes
KEEP_REVOKED = 500  # revoked token hashes remembered (for a clear refusal reason)


def new_token() -> str:
    return secrets.token_urlsafe(TOKEN_BYTES)


def token_hash(token: str) -> str:
    # (surrogateescape: header bytes that are not ASCII reach us as lone surrogates)
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class Pairing:
    device: str
    sha256: str
    paired_at: str

    @property
    def token_id(self) -> str:
        """A short, non-secret name for the token (logs, ``cariflex-ven pairings``)."""
        return self.sha256[:8]


@dataclass(frozen=True)
class Refusal:
    """Why a connection is refused: a WebSocket close code and a reason the peer can read."""

    code: int
    reason: str


class PairingError(ValueError):
    pass


class PairingStore:
    """The pairings of one VEN state folder. Writers (the CLI, the demo) lock; the CEM reads."""

    def __init__(self, state_dir: str | Path):
        self.dir = Path(state_dir)
        self.path = self.dir / PAIRINGS_FILE
        self._devices: dict[str, Pairing] = {}
        self._by_hash: dict[str, Pairing] = {}
        self._revoked: dict[str, dict] = {}
        self._stamp: tuple | None = None
        self.refresh()

    # --- reading (the CEM) ---------------------------------------------------------------

    def _file_stamp(self) -> tuple | None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def refresh(self) -> bool:
        """Re-read the file if it changed; True when the pairings changed."""
        stamp = self._file_stamp()
        if stamp == self._stamp:
            return False
        try:
            data = self._read()
        except PairingError as exc:  # keep the last good pairings; say so loudly
            log.error("s2 pairings unreadable", extra={"fields": {"path": str(self.path), "error": str(exc)}})
            self._stamp = stamp
            return False
        self._stamp = stamp
        self._apply(data)
        return True

    def _apply(self, data: dict) -> None:
        self._devices = {
            name: Pairing(name, entry["sha256"], entry.get("paired_at", ""))
            for name, entry in data["devices"].items()
        }
        self._by_hash = {p.sha256: p for p in self._devices.values()}
        self._revoked = data["revoked"]

    def _read(self) -> dict:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {"version": 1, "devices": {}, "revoked": {}}
        except OSError as exc:
            raise PairingError(f"{self.path}: {exc.strerror}") from None
        try:
            data = json.loads(text)
            devices, revoked = data["devices"], data.get("revoked", {})
            if not isinstance(devices, dict) or not isinstance(revoked, dict):
                raise TypeError("devices and revoked must be objects")
            for name, entry in devices.items():
                if not (isinstance(entry, dict) and isinstance(entry.get("sha256"), str)):
                    raise TypeError(f"pairing of {name!r} has no sha256")
        except (ValueError, KeyError, TypeError) as exc:
            raise PairingError(f"{self.path} is damaged: {exc}") from None
        return {"version": 1, "devices": devices, "revoked": revoked}

    def pairings(self) -> list[Pairing]:
        self.refresh()
        return sorted(self._devices.values(), key=lambda p: p.device)

    def load(self) -> list[Pairing]:
        """The pairings as the file has them now; PairingError when it is damaged (for the CLI)."""
        self._apply(self._read())
        self._stamp = self._file_stamp()
        return sorted(self._devices.values(), key=lambda p: p.device)

    def current(self, device: str) -> Pairing | None:
        return self._devices.get(device)

    def authenticate(self, token: str | None) -> Pairing | Refusal:
        """The pairing a bearer token belongs to, or why it is refused (close code 4401)."""
        self.refresh()
        if not token:
            return Refusal(CLOSE_NOT_PAIRED, "not paired: no access token (Authorization: Bearer)")
        digest = token_hash(token)
        pairing = self._by_hash.get(digest)
        if pairing is not None:
            return pairing
        revoked = self._revoked.get(digest)
        if revoked is not None:
            return Refusal(CLOSE_NOT_PAIRED, f"not paired: token revoked ({revoked.get('why', 'unpaired')})")
        return Refusal(CLOSE_NOT_PAIRED, "not paired: access token not recognised")

    def verify(self, device: str, token: str) -> bool:
        self.refresh()
        pairing = self._devices.get(device)
        return pairing is not None and secrets.compare_digest(pairing.sha256, token_hash(token))

    # --- writing (CLI, demo) -------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict]:
        self.dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.dir / (PAIRINGS_FILE + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            data = self._read()
            yield data
            if len(data["revoked"]) > KEEP_REVOKED:  # forget the oldest revocations
                newest = sorted(data["revoked"].items(), key=lambda item: str(item[1].get("at")))
                data["revoked"] = dict(newest[-KEEP_REVOKED:])
            write_private(self.path, json.dumps(data, indent=2, sort_keys=True) + "\n")
            self._stamp = None
            self.refresh()
        finally:
            os.close(fd)

    def pair(self, device: str) -> str:
        """A new access token for ``device`` (returned, never stored); any previous one is revoked."""
        token = new_token()
        with self._locked() as data:
            old = data["devices"].get(device)
            if old is not None:
                data["revoked"][old["sha256"]] = {"device": device, "at": _now(), "why": "re-paired"}
            digest = token_hash(token)
            data["devices"][device] = {"sha256": digest, "token_id": digest[:8], "paired_at": _now()}
        log.info("s2 device paired", extra={"fields": {"device": device, "token_id": token_hash(token)[:8]}})
        return token

    def unpair(self, device: str) -> bool:
        """Revoke ``device``'s token; False when it was not paired."""
        with self._locked() as data:
            old = data["devices"].pop(device, None)
            if old is not None:
                data["revoked"][old["sha256"]] = {"device": device, "at": _now(), "why": "unpaired"}
        if old is not None:
            log.info("s2 device unpaired", extra={"fields": {"device": device}})
        return old is not None
