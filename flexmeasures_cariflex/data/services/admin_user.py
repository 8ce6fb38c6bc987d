"""The logins Cariflex needs (the platform admin, the VEN bridge): created once, reused afterwards."""

from __future__ import annotations

from collections.abc import Sequence

from flexmeasures.data import db
from flexmeasures.data.models.user import User
from flexmeasures.data.services.users import create_user
from sqlalchemy import select

ADMIN_ROLES = ("admin", "account-admin")
# The role the plugin's ingestion endpoints accept (besides admin); the VEN bridge posts with it.
VEN_ROLE = "cariflex-ven"
VEN_ROLES = (VEN_ROLE,)


def find_user(email: str) -> User | None:
    return db.session.execute(select(User).filter(User.email == email)).scalar_one_or_none()


def ensure_user(email: str, password: str, account_name: str, roles: Sequence[str]) -> bool:
    """Create the user (in the account, with the roles) unless it exists; True when created.

    An existing user keeps its password and roles: the demo must never reset what an operator
    changed. Callers can compare ``find_user(email).roles`` with what they need.
    """
    if find_user(email) is not None:
        return False
    create_user(
        email=email,
        username=email.split("@")[0],
        password=password,
        account_name=account_name,
        user_roles=list(roles),
        check_email_deliverability=False,
    )
    return True


def ensure_admin(email: str, password: str, account_name: str) -> bool:
    """The platform admin (roles admin + account-admin)."""
    return ensure_user(email, password, account_name, ADMIN_ROLES)


def ensure_ven_user(email: str, password: str, account_name: str) -> bool:
    """The user the VEN bridge posts OpenADR events as (role cariflex-ven)."""
    return ensure_user(email, password, account_name, VEN_ROLES)


def shared_login(ven_email: str, admin_email: str | None) -> str | None:
    """Why ``ven_email`` may not be the VEN's login, or None.

    FlexMeasures counts its API rate limit (``FLEXMEASURES_API_DEFAULT_RATE_LIMIT``, 500 requests a
    minute by default) per login: the VEN on the admin's login would share one budget with the
    operators and API users, and a busy dashboard or script would hold back its measurements."""
    why = (
        "FlexMeasures counts its rate limit per login, so the VEN would share one budget with the "
        "operators and API users; set CARIFLEX_FM_USER to its own address (default ven@cariflex.example)"
    )
    if admin_email and ven_email.strip().lower() == admin_email.strip().lower():
        return f"the VEN needs a login of its own, not the admin's ({ven_email}): {why}"
    user = find_user(ven_email)
    held = {r.name for r in user.roles} if user is not None else set()
    for role in ADMIN_ROLES:
        if role in held:
            return f"{ven_email} has the role {role}: the VEN needs a login of its own: {why}"
    return None


def missing_roles(email: str, roles: Sequence[str]) -> list[str]:
    """Which of ``roles`` the (existing) user lacks."""
    user = find_user(email)
    have = {r.name for r in user.roles} if user is not None else set()
    return [r for r in roles if r not in have]
