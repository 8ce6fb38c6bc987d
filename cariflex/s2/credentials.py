"""The resource-manager side of S2 pairing: access tokens to present to the CEM, one per device.

A real device keeps its token in its own configuration (the operator types or pastes it once,
after ``cariflex-ven pair DEVICE``). The simulated devices of ``cariflex-sim`` keep theirs in one
JSON file, written by ``cariflex-ven pair DEVICE… --token-file FILE`` (and by the demo)::

    {"tokens": {"bat_01": "<43 characters, base64url of 32 random bytes>", ...}}

The file holds secrets: it is written atomically with mode 600 in a folder of mode 700, and read
afresh on every connection attempt, so a device paired while the simulator runs is picked up at
its next reconnection. The token goes on the WebSocket upgrade as ``Authorization: Bearer …``
(S2 Connect, "Authentication", RFC 6750), which is also what s2-python's client medium sends.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path

# How the Cariflex CEM closes a WebSocket it refuses (RFC 6455 private range 4000-4999), so that a
# resource manager can tell "not allowed" (do not hammer the CEM, tell the operator) from a network
# failure. Shared by the CEM (cem.server) and the simulated resource managers.
CLOSE_NOT_PAIRED = 4401  # no token, an unknown or revoked one; also a live session's pairing revoked
CLOSE_WRONG_DEVICE = 4403  # a valid token, but ResourceManagerDetails names another device
CLOSE_UNKNOWN_DEVICE = 4404  # the token's device is not (or no longer) in the fleet
CLOSE_REPLACED = 4409  # a newer authenticated connection of the same device took over
REFUSED = frozenset({CLOSE_NOT_PAIRED, CLOSE_WRONG_DEVICE, CLOSE_UNKNOWN_DEVICE})


class TokenFileError(ValueError):
    """The token file exists but cannot be used."""


def read_tokens(path: str | Path) -> dict[str, str]:
    """Device name → access token; an empty mapping when the file does not exist."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise TokenFileError(f"{path}: {exc.strerror}") from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise TokenFileError(f"{path} is not JSON: {exc}") from None
    tokens = data.get("tokens") if isinstance(data, dict) else None
    if not isinstance(tokens, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in tokens.items()
    ):
        raise TokenFileError(f'{path} must be {{"tokens": {{"<device>": "<token>", ...}}}}')
    return dict(tokens)


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically, mode 600 (the folder is created with mode 700)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_tokens(path: str | Path, tokens: dict[str, str]) -> None:
    write_private(Path(path), json.dumps({"tokens": dict(sorted(tokens.items()))}, indent=2) + "\n")


class TokenFile:
    """``get(device)`` reads the file each time (it is small), so new pairings apply at once."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def get(self, device: str) -> str | None:
        return read_tokens(self.path).get(device)

    def __repr__(self) -> str:
        return f"TokenFile({str(self.path)!r})"
