"""Site lookups: the site's root asset, its sensors by name, the data sources.

Apart from setup (``data/services/site_setup.py``) because every service, CLI command and API
view needs them, and setup needs services (rollups, alerts) that need them too: with the lookups
in setup, ``alerts`` and ``site_setup`` imported each other. Sensors are resolved by name here and
nowhere else.
"""

from __future__ import annotations

from flexmeasures.data import db
from flexmeasures.data.models.data_sources import DataSource
from flexmeasures.data.models.generic_assets import GenericAsset
from flexmeasures.data.models.time_series import Sensor
from flexmeasures.data.models.user import Account
from sqlalchemy import select

from cariflex.fleet import Fleet


def find_source(name: str, source_type: str) -> DataSource | None:
    """A data source by name and type (names alone are not unique in FlexMeasures)."""
    return (
        db.session.execute(select(DataSource).filter(DataSource.name == name, DataSource.type == source_type))
        .scalars()
        .first()
    )


def ensure_source(name: str, source_type: str) -> DataSource:
    """The data source, created (in the caller's transaction) if it does not exist yet."""
    source = find_source(name, source_type)
    if source is None:
        source = DataSource(name=name, type=source_type)
        db.session.add(source)
        db.session.flush()
    return source


def find_site(fleet: Fleet) -> GenericAsset | None:
    """The site's root asset, found by the fleet's site and account names."""
    return db.session.execute(
        select(GenericAsset)
        .join(Account, GenericAsset.account_id == Account.id)
        .filter(
            GenericAsset.name == fleet.site.name,
            GenericAsset.parent_asset_id.is_(None),
            Account.name == fleet.site.account,
        )
    ).scalar_one_or_none()


class SiteNotReady(LookupError):
    """The site, a sensor or the VTN data source is missing or differs from the site model:
    a problem of this installation, not of the request (run `flexmeasures cariflex setup`)."""


def require_site(fleet: Fleet) -> GenericAsset:
    site = find_site(fleet)
    if site is None:
        raise SiteNotReady(
            f"site '{fleet.site.name}' of account '{fleet.site.account}' does not exist; "
            "run `flexmeasures cariflex setup` first"
        )
    return site


def site_sensors(fleet: Fleet) -> dict[str, Sensor]:
    """Every sensor below the site, by name (names are unique by construction of the site model)."""
    site = require_site(fleet)
    rows = db.session.execute(
        select(Sensor)
        .join(GenericAsset, Sensor.generic_asset_id == GenericAsset.id)
        .filter((GenericAsset.parent_asset_id == site.id) | (GenericAsset.id == site.id))
        .order_by(Sensor.name)
    ).scalars()
    return {sensor.name: sensor for sensor in rows}
