"""Create the Cariflex site in FlexMeasures from the fleet description, idempotently.

Setup only ever adds and updates: what exists in the database but not in the fleet file is
reported, never deleted, because deleting an asset deletes its sensors and all their data.
Everything happens in the caller's transaction; the CLI commits only when setup succeeded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from flexmeasures.data import db
from flexmeasures.data.models.data_sources import DataSource
from flexmeasures.data.models.generic_assets import GenericAsset, GenericAssetType
from flexmeasures.data.models.time_series import Sensor
from flexmeasures.data.models.user import Account
from sqlalchemy import select

from cariflex.fleet import Fleet
from cariflex.site_model import (
    DATA_SOURCES,
    TYPE_SITE,
    AssetSpec,
    SensorSpec,
    child_assets,
    device_flex_model,
    site_attributes,
    site_flex_context,
)
from flexmeasures_cariflex.data.queries.site import find_source


@dataclass
class SetupReport:
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    not_deleted: list[str] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return f"{len(self.created)} created, {len(self.updated)} updated, {len(self.unchanged)} unchanged"


def _merged(current: dict[str, Any] | None, wanted: dict[str, Any]) -> dict[str, Any]:
    """Fleet values win; keys others added (later components, operators) are kept."""
    return {**(current or {}), **wanted}


def _account(name: str, report: SetupReport) -> Account:
    account = db.session.execute(select(Account).filter(Account.name == name)).scalar_one_or_none()
    if account is None:
        account = Account(name=name)
        db.session.add(account)
        report.created.append(f"account '{name}'")
    else:
        report.unchanged.append(f"account '{name}'")
    return account


def _data_source(name: str, source_type: str, report: SetupReport) -> None:
    if find_source(name, source_type) is None:
        db.session.add(DataSource(name=name, type=source_type))
        report.created.append(f"data source '{name}'")
    else:
        report.unchanged.append(f"data source '{name}'")


def _asset_type(name: str, cache: dict[str, GenericAssetType], report: SetupReport) -> GenericAssetType:
    if name not in cache:
        found = db.session.execute(
            select(GenericAssetType).filter(GenericAssetType.name == name)
        ).scalar_one_or_none()
        if found is None:
            found = GenericAssetType(name=name)
            db.session.add(found)
            report.created.append(f"asset type '{name}'")
        else:
            report.unchanged.append(f"asset type '{name}'")
        cache[name] = found
    return cache[name]


def _asset(
    spec: AssetSpec,
    *,
    account: Account,
    parent: GenericAsset | None,
    asset_type: GenericAssetType,
    report: SetupReport,
) -> GenericAsset:
    query = select(GenericAsset).filter(GenericAsset.name == spec.name)
    if parent is None:
        query = query.filter(GenericAsset.parent_asset_id.is_(None), GenericAsset.account_id == account.id)
    else:
        query = query.filter(GenericAsset.parent_asset_id == parent.id)
    asset = db.session.execute(query).scalar_one_or_none()
    label = f"asset '{spec.name}'"
    if asset is None:
        asset = GenericAsset(
            name=spec.name,
            generic_asset_type=asset_type,
            owner=account,
            parent_asset=parent,
            latitude=spec.latitude,
            longitude=spec.longitude,
            attributes=dict(spec.attributes),
        )
        db.session.add(asset)
        db.session.flush()  # children need its id
        report.created.append(label)
        return asset
    if asset.generic_asset_type_id != asset_type.id and asset_type.id is not None:
        report.conflicts.append(
            f"{label} is of type '{asset.generic_asset_type.name}', the fleet says "
            f"'{asset_type.name}': left as it is"
        )
    changed = []
    if (asset.latitude, asset.longitude) != (spec.latitude, spec.longitude):
        asset.latitude, asset.longitude = spec.latitude, spec.longitude
        changed.append("location")
    attributes = _merged(asset.attributes, spec.attributes)
    if attributes != asset.attributes:
        asset.attributes = attributes  # reassign: nested changes are not tracked
        changed.append("attributes")
    (report.updated if changed else report.unchanged).append(
        label + (f" ({', '.join(changed)})" if changed else "")
    )
    return asset


def _sensor(spec: SensorSpec, asset: GenericAsset, timezone: str, report: SetupReport) -> Sensor:
    sensor = db.session.execute(
        select(Sensor).filter(Sensor.generic_asset_id == asset.id, Sensor.name == spec.name)
    ).scalar_one_or_none()
    label = f"sensor '{spec.name}'"
    if sensor is None:
        sensor = Sensor(
            name=spec.name,
            generic_asset=asset,
            unit=spec.unit,
            event_resolution=spec.resolution,
            timezone=timezone,
            attributes=dict(spec.attributes),
        )
        db.session.add(sensor)
        report.created.append(label)
        return sensor
    if sensor.unit != spec.unit or sensor.event_resolution != spec.resolution:
        # Changing either would silently reinterpret every value already stored.
        report.conflicts.append(
            f"{label} exists with unit '{sensor.unit}' and resolution {sensor.event_resolution}, "
            f"the site model says '{spec.unit}' and {spec.resolution}: left as it is"
        )
    changed = []
    if sensor.timezone != timezone:
        sensor.timezone = timezone
        changed.append("timezone")
    attributes = _merged(sensor.attributes, spec.attributes)
    if attributes != sensor.attributes:
        sensor.attributes = attributes
        changed.append("attributes")
    (report.updated if changed else report.unchanged).append(
        label + (f" ({', '.join(changed)})" if changed else "")
    )
    return sensor


def _flex_field(asset: GenericAsset, column: str, wanted: dict[str, Any], report: SetupReport) -> None:
    """Write the fleet's flex-context or flex-model fields; fields others added (an operator in
    FlexMeasures' UI, e.g. a breach price) are kept, the fleet's own win."""
    current = dict(getattr(asset, column) or {})
    merged = _merged(current, wanted)
    if merged != current:
        setattr(asset, column, merged)
        if f"asset '{asset.name}'" not in report.created:  # a new asset is reported as created
            report.updated.append(f"asset '{asset.name}' ({column.replace('_', '-')})")


def setup_site(fleet: Fleet) -> SetupReport:
    """Bring the database in line with the fleet (adds and updates; never deletes)."""
    report = SetupReport()
    site_spec = AssetSpec(
        fleet.site.name,
        TYPE_SITE,
        fleet.site.latitude,
        fleet.site.longitude,
        site_attributes(fleet),
    )
    children = child_assets(fleet)
    timezone = fleet.site.timezone

    account = _account(fleet.site.account, report)
    for name, source_type in DATA_SOURCES:
        _data_source(name, source_type, report)
    types: dict[str, GenericAssetType] = {}
    for spec in (site_spec, *children):
        _asset_type(spec.asset_type, types, report)
    db.session.flush()

    site = _asset(site_spec, account=account, parent=None, asset_type=types[TYPE_SITE], report=report)
    wanted_children = {spec.name for spec in children}
    assets: dict[str, GenericAsset] = {}
    sensors: dict[str, Sensor] = {}
    for spec in children:
        asset = _asset(spec, account=account, parent=site, asset_type=types[spec.asset_type], report=report)
        assets[spec.name] = asset
        wanted_sensors = {s.name for s in spec.sensors}
        for sensor_spec in spec.sensors:
            sensors[sensor_spec.name] = _sensor(sensor_spec, asset, timezone, report)
        for extra in db.session.execute(
            select(Sensor.name).filter(Sensor.generic_asset_id == asset.id)
        ).scalars():
            if extra not in wanted_sensors:
                report.not_deleted.append(f"sensor '{extra}' of asset '{spec.name}'")
    for extra in db.session.execute(
        select(GenericAsset).filter(GenericAsset.parent_asset_id == site.id)
    ).scalars():
        if extra.name not in wanted_children:
            count = len(extra.sensors)
            report.not_deleted.append(f"asset '{extra.name}' (id {extra.id}, {count} sensor(s))")
    db.session.flush()  # sensor ids for the flex-context and flex-models
    ids = {name: sensor.id for name, sensor in sensors.items()}
    _flex_field(site, "flex_context", site_flex_context(fleet, ids), report)
    for device in (*fleet.batteries, *fleet.ev_chargers):
        _flex_field(assets[device.name], "flex_model", device_flex_model(device), report)
    db.session.flush()
    from flexmeasures_cariflex.data.services.rollups import ensure_rollups

    ensure_rollups()  # 15-minute rollups for Grafana, kept by triggers (database-wide, not per site)
    from flexmeasures_cariflex.data.services.alerts import ensure_alerts

    ensure_alerts(fleet)  # physical bounds (derived from the fleet), alert table and trigger
    return report
