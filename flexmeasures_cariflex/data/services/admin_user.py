"""The platform admin the demo logs in with: created once, reused afterwards."""

from __future__ import annotations

from flexmeasures.data import db
from flexmeasures.data.models.user import User
from flexmeasures.data.services.users import create_user
from sqlalchemy import select


def ensure_admin(email: str, password: str, account_name: str) -> bool:
    """Create the admin (roles admin + account-admin) unless it exists; True when created.

    An existing user keeps its password: the demo must never reset what an operator changed.
    """
    existing = db.session.execute(select(User).filter(User.email == email)).scalar_one_or_none()
    if existing is not None:
        return False
    create_user(
        email=email,
        username=email.split("@")[0],
        password=password,
        account_name=account_name,
        user_roles=["admin", "account-admin"],
        check_email_deliverability=False,
    )
    return True
