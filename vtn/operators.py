"""Console operators: accounts, login sessions and the record of what each operator did.

Passwords are kept only as salted scrypt hashes (``hashlib.scrypt``, the standard library's
memory-hard KDF; the VTN image carries no FlexMeasures and so no Flask-Security). A login session is
a random token in an HttpOnly cookie; the store keeps its SHA-256 and a per-session CSRF token, so
sessions survive a VTN restart and a stolen copy of the store logs nobody in.

Failed logins are recorded under the name that was tried; after ``MAX_FAILURES`` within
``LOCKOUT`` a name is refused without checking the password (an online guesser gets five tries a
quarter hour, the real operator a message saying when to try again).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, select

from cariflex.json_input import clip
from vtn.events import Conflict, InputError, NotFound
from vtn.store import Operator, OperatorAction, OperatorSession, Store

OPERATOR_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,99}$")
MIN_PASSWORD = 12
MAX_PASSWORD = 1024  # scrypt hashes whatever it is given: a megabyte "password" is an attack
SESSION_LIFETIME = timedelta(hours=12)
MAX_FAILURES = 5
LOCKOUT = timedelta(minutes=15)
# scrypt cost: N=2**14, r=8, p=1 (16 MiB, ~50 ms a check) — the interactive-login parameters of RFC 7914.
_N, _R, _P = 2**14, 8, 1


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=_N, r=_R, p=_P, maxmem=64 * 2**20, dklen=32)
    return f"scrypt${_N}${_R}${_P}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def password_matches(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(digest)
        got = hashlib.scrypt(
            password.encode(),
            salt=base64.b64decode(salt),
            n=int(n),
            r=int(r),
            p=int(p),
            maxmem=64 * 2**20,
            dklen=len(expected),
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, expected)


def check_name(name: str) -> str:
    if not isinstance(name, str) or not OPERATOR_NAME.match(name):
        raise InputError(
            f"operator name {clip(repr(name))} must be 1-100 letters, digits, '.', '_', '@' or '-'"
        )
    return name


def check_password(password: str) -> str:
    if not isinstance(password, str) or not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise InputError(f"the password must have {MIN_PASSWORD} to {MAX_PASSWORD} characters")
    return password


# --- accounts -----------------------------------------------------------------------------------


def add_operator(store: Store, name: str, password: str, *, replace: bool = False) -> dict[str, Any]:
    """A new operator, or (``replace``) a new password for an existing one."""
    check_name(name)
    hashed = hash_password(check_password(password))
    with store.session() as session:
        operator = session.execute(select(Operator).where(Operator.name == name)).scalar_one_or_none()
        if operator is not None and not replace:
            raise Conflict(f"operator {name!r} exists already (--replace sets a new password)")
        if operator is None:
            operator = Operator(name=name, password_hash=hashed)
            session.add(operator)
            changed = "added"
        else:
            operator.password_hash = hashed
            # a new password ends every session of the old one
            session.execute(delete(OperatorSession).where(OperatorSession.operator == name))
            changed = "password replaced"
        session.add(
            OperatorAction(operator=name, action="account", target=name, outcome="done", detail=changed)
        )
        return {"operator": name, "change": changed}


def remove_operator(store: Store, name: str) -> dict[str, Any]:
    with store.session() as session:
        operator = session.execute(select(Operator).where(Operator.name == name)).scalar_one_or_none()
        if operator is None:
            raise NotFound(f"operator {clip(repr(name))} does not exist (see `cariflex-vtn operator list`)")
        session.delete(operator)
        session.execute(delete(OperatorSession).where(OperatorSession.operator == name))
        session.add(
            OperatorAction(operator=name, action="account", target=name, outcome="done", detail="removed")
        )
        return {"operator": name, "change": "removed"}


def list_operators(store: Store) -> list[dict[str, Any]]:
    with store.session() as session:
        return [
            {
                "operator": o.name,
                "created_at": o.created_at.isoformat(),
                "last_login_at": o.last_login_at.isoformat() if o.last_login_at else None,
            }
            for o in session.execute(select(Operator).order_by(Operator.name)).scalars()
        ]


# --- sessions -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Login:
    operator: str
    token: str  # for the cookie; never stored
    csrf_token: str


@dataclass(frozen=True)
class SessionInfo:
    operator: str
    csrf_token: str
    token_hash: str


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def log_in(store: Store, name: str, password: str, *, now: datetime | None = None) -> Login:
    """A new session, or InputError saying why not (the same words for an unknown name and a wrong
    password: the console does not tell a guesser which names exist)."""
    now = now or datetime.now(UTC)
    name = name if isinstance(name, str) else ""
    password = password if isinstance(password, str) else ""
    shown = clip(name, 90)  # fits the 100-character column with its ellipsis
    with store.session() as session:
        failures = session.execute(
            select(func.count())
            .select_from(OperatorAction)
            .where(
                OperatorAction.action == "login",
                OperatorAction.outcome == "refused",
                OperatorAction.operator == shown,
                OperatorAction.at > now - LOCKOUT,
            )
        ).scalar_one()
        if failures >= MAX_FAILURES:
            raise InputError(
                f"too many failed logins for {shown!r}; "
                f"try again in {int(LOCKOUT.total_seconds() // 60)} minutes"
            )
        operator = session.execute(select(Operator).where(Operator.name == name)).scalar_one_or_none()
        # An unknown name still costs one hash: the answer time tells nothing either.
        stored = operator.password_hash if operator else hash_password("x" * MIN_PASSWORD)
        matched = password_matches(password[:MAX_PASSWORD], stored)
        if operator is None or not matched:
            session.add(
                OperatorAction(
                    operator=shown, action="login", outcome="refused", at=now, detail="wrong name or password"
                )
            )
            refused = True
        else:
            refused = False
            token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
            session.add(
                OperatorSession(
                    token_hash=_token_hash(token),
                    operator=name,
                    csrf_token=csrf,
                    created_at=now,
                    expires_at=now + SESSION_LIFETIME,
                )
            )
            operator.last_login_at = now
            session.add(OperatorAction(operator=name, action="login", outcome="done", at=now))
            session.execute(delete(OperatorSession).where(OperatorSession.expires_at < now))
    if refused:
        raise InputError("wrong operator name or password")
    return Login(name, token, csrf)


def session_for(store: Store, token: str | None, *, now: datetime | None = None) -> SessionInfo | None:
    """The live session a cookie names, or None."""
    if not token or len(token) > 200:
        return None
    now = now or datetime.now(UTC)
    with store.session() as session:
        row = session.get(OperatorSession, _token_hash(token))
        if row is None or row.expires_at <= now:
            return None
        return SessionInfo(row.operator, row.csrf_token, row.token_hash)


def log_out(store: Store, info: SessionInfo) -> None:
    with store.session() as session:
        session.execute(delete(OperatorSession).where(OperatorSession.token_hash == info.token_hash))
        session.add(OperatorAction(operator=info.operator, action="logout", outcome="done"))


# --- the record -----------------------------------------------------------------------------------


def record(
    store: Store, operator: str, action: str, target: str | None, outcome: str, detail: str | None = None
) -> None:
    with store.session() as session:
        session.add(
            OperatorAction(
                operator=operator,
                action=action,
                target=None if target is None else clip(target, 90),
                outcome=outcome,
                detail=None if detail is None else clip(detail, 390),
            )
        )


def actions_on(store: Store, target: str) -> list[dict[str, Any]]:
    """What operators did to one event (or VEN), oldest first."""
    with store.session() as session:
        rows = session.execute(
            select(OperatorAction).where(OperatorAction.target == target).order_by(OperatorAction.at)
        ).scalars()
        return [
            {"at": a.at, "operator": a.operator, "action": a.action, "outcome": a.outcome, "detail": a.detail}
            for a in rows
        ]


def ensure_operator(store: Store, name: str, password: str) -> str:
    """The configured operator exists with this password (``serve`` at start, like FlexMeasures'
    ensure-admin): "added", "password replaced" or "unchanged"."""
    check_name(name)
    check_password(password)
    with store.session() as session:
        operator = session.execute(select(Operator).where(Operator.name == name)).scalar_one_or_none()
        if operator is not None and password_matches(password, operator.password_hash):
            return "unchanged"
    return add_operator(store, name, password, replace=True)["change"]
