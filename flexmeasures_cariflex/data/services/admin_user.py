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


def missing_roles(email: str, roles: Sequence[str]) -> list[str]:
    """Which of ``roles`` the (existing) user lacks."""
    user = find_user(email)
    have = {r.name for r in user.roles} if user is not None else set()
    return [r for r in roles if r not in have]
