"""`flexmeasures cariflex setup` / `sensors` / `ensure-admin` against a real PostgreSQL database."""

from __future__ import annotations

import json
import stat
from datetime import timedelta
from pathlib import Path

import pytest
import yaml
from flexmeasures.data.models.data_sources import DataSource
from flexmeasures.data.models.generic_assets import GenericAsset, GenericAssetType
from flexmeasures.data.models.time_series import Sensor
from flexmeasures.data.models.user import Account, User
from sqlalchemy import func, select

SMALL = Path(__file__).parent.parent / "fleets" / "small.yaml"
MINUTE, QUARTER, HOUR = timedelta(minutes=1), timedelta(minutes=15), timedelta(hours=1)

# The site-model table of ARCHITECTURE.md, written out here on purpose (not derived from code).
EXPECTED_SENSORS: dict[str, tuple[str, timedelta]] = {
    **{f"pv_{i:02d}_power": ("kW", MINUTE) for i in range(1, 11)},
    **{f"bat_{i:02d}_power": ("kW", MINUTE) for i in range(1, 11)},
    **{f"bat_{i:02d}_soc": ("kWh", MINUTE) for i in range(1, 11)},
    **{f"ev_{i:02d}_power": ("kW", MINUTE) for i in range(1, 11)},
    **{f"ev_{i:02d}_soc": ("kWh", MINUTE) for i in range(1, 11)},
    "site_load": ("kW", MINUTE),  # the site's own consumption (base load)
    # 1-second readings over MQTT (meter_ingest), beside the 1-minute power sensors
    **{f"pv_{i:02d}_meter": ("kW", timedelta(seconds=1)) for i in range(1, 11)},
    "site_load_meter": ("kW", timedelta(seconds=1)),
    "irradiance": ("W/m²", QUARTER),
    "temperature": ("°C", QUARTER),
    "wind_speed": ("m/s", QUARTER),
    "consumption_price": ("EUR/MWh", HOUR),
    "production_price": ("EUR/MWh", HOUR),
    "load_control_signal": ("%", QUARTER),
    "demand_response_signal": ("dimensionless", QUARTER),
    "grid_carbon_intensity": ("gCO2/kWh", HOUR),
    # the insights asset (statistics, flexibility, DR verification)
    **{
        f"site_{name}": (unit, timedelta(days=1))
        for name, unit in (
            ("energy_imported", "kWh"),
            ("energy_exported", "kWh"),
            ("energy_cost", "EUR"),
            ("energy_revenue", "EUR"),
            ("co2", "kg"),
            ("self_consumption", "%"),
            ("battery_share", "%"),
            ("grid_share", "%"),
        )
    },
    "fleet_flexibility_up": ("kW", QUARTER),
    "fleet_flexibility_down": ("kW", QUARTER),
    "dr_delivered_energy": ("kWh", QUARTER),
    "dr_delivered_share": ("%", QUARTER),
}


def counts(db) -> dict[str, int]:
    return {
        model.__name__: db.session.execute(select(func.count()).select_from(model)).scalar_one()
        for model in (Account, GenericAssetType, GenericAsset, Sensor, DataSource, User)
    }


def fleet_file(tmp_path: Path, edit=None) -> Path:
    data = yaml.safe_load(SMALL.read_text())
    if edit:
        edit(data)
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_setup_creates_exactly_the_cariflex_site(cli, fm_db):
    result = cli("cariflex", "setup")
    assert result.exit_code == 0, result.output

    site = fm_db.session.execute(
        select(GenericAsset).filter(GenericAsset.name == "Cariflex site")
    ).scalar_one()
    assert site.owner.name == "Cariflex"
    assert site.generic_asset_type.name == "site"
    assert (site.latitude, site.longitude) == (14.6, -61.0)
    children = {a.name: a.generic_asset_type.name for a in site.child_assets}
    assert children == {
        **{f"pv_{i:02d}": "solar" for i in range(1, 11)},
        **{f"bat_{i:02d}": "battery" for i in range(1, 11)},
        **{f"ev_{i:02d}": "two-way_evse" for i in range(1, 11)},
        "site_load": "building",
        "weather_station": "weather station",
        "grid_signals": "grid signals",
        "insights": "insights",
    }

    sensors = fm_db.session.execute(select(Sensor)).scalars().all()
    assert {s.name: (s.unit, s.event_resolution) for s in sensors} == EXPECTED_SENSORS
    assert {s.timezone for s in sensors} == {"America/Martinique"}
    assert all(s.generic_asset.parent_asset_id == site.id for s in sensors)
    # Sign convention: devices consumption-positive (like S2), PV production-positive.
    by_name = {s.name: s for s in sensors}
    assert by_name["bat_03_power"].attributes["consumption_is_positive"] is True
    assert by_name["ev_07_power"].attributes["consumption_is_positive"] is True
    assert by_name["pv_05_power"].attributes["consumption_is_positive"] is False
    assert by_name["site_load"].attributes["consumption_is_positive"] is True

    sources = {s.name for s in fm_db.session.execute(select(DataSource)).scalars()}
    assert sources == {"Simulator", "Open-Meteo", "OpenADR VTN", "Cariflex insights", "Cariflex forecaster"}
    assert result.output.strip().endswith("131 created, 0 updated, 0 unchanged")


def test_second_run_changes_nothing(cli, fm_db):
    cli("cariflex", "setup")
    before = counts(fm_db)
    result = cli("cariflex", "setup")
    assert result.exit_code == 0
    assert result.output.strip().endswith("0 created, 0 updated, 131 unchanged")
    assert counts(fm_db) == before


def test_grown_fleet_adds_what_is_new_and_shrunk_fleet_deletes_nothing(cli, fm_db, tmp_path):
    cli("cariflex", "setup", "--fleet", str(fleet_file(tmp_path)))

    def add_pv_03(data):
        data["pv"].append({"name": "pv_03", "peak_power": "5 kW", "latitude": 14.5, "longitude": -61})

    grown = cli("cariflex", "setup", "--fleet", str(fleet_file(tmp_path, add_pv_03)))
    assert "created  asset 'pv_03'" in grown.output
    assert "created  sensor 'pv_03_power'" in grown.output
    assert "created  sensor 'pv_03_meter'" in grown.output
    # ... and the site's flex-context counts the new PV among its inflexible devices
    assert "updated  asset 'Test site' (flex-context)" in grown.output
    assert "3 created, 1 updated" in grown.output
    site = fm_db.session.execute(select(GenericAsset).filter(GenericAsset.name == "Test site")).scalar_one()
    pv_03 = fm_db.session.execute(select(Sensor).filter(Sensor.name == "pv_03_power")).scalar_one()
    assert {"sensor": pv_03.id} in site.flex_context["inflexible-production"]

    shrunk = cli("cariflex", "setup", "--fleet", str(fleet_file(tmp_path)))
    assert shrunk.exit_code == 0
    assert "Not deleted" in shrunk.output
    assert "kept     asset 'pv_03'" in shrunk.output and "2 sensor(s)" in shrunk.output
    assert (
        fm_db.session.execute(select(Sensor).filter(Sensor.name == "pv_03_power")).scalar_one_or_none()
        is not None
    )


def test_changed_parameter_updates_the_asset(cli, fm_db, tmp_path):
    cli("cariflex", "setup", "--fleet", str(fleet_file(tmp_path)))

    def bigger(data):
        data["batteries"][0]["capacity"] = "150 kWh"

    result = cli("cariflex", "setup", "--fleet", str(fleet_file(tmp_path, bigger)))
    assert "updated  asset 'bat_01' (attributes)" in result.output
    assert "updated  asset 'bat_01' (flex-model)" in result.output
    bat = fm_db.session.execute(select(GenericAsset).filter(GenericAsset.name == "bat_01")).scalar_one()
    assert bat.attributes["capacity_kwh"] == 150.0


def test_sensor_unit_conflict_is_reported_not_applied(cli, fm_db, tmp_path):
    path = str(fleet_file(tmp_path))
    cli("cariflex", "setup", "--fleet", path)
    soc = fm_db.session.execute(select(Sensor).filter(Sensor.name == "bat_01_soc")).scalar_one()
    soc.unit = "MWh"
    fm_db.session.commit()
    result = cli("cariflex", "setup", "--fleet", path)
    assert "conflict sensor 'bat_01_soc' exists with unit 'MWh'" in result.output
    fm_db.session.refresh(soc)
    assert soc.unit == "MWh"


def _add_pv_03(data):
    data["pv"].append({"name": "pv_03", "peak_power": "5 kW", "latitude": 14.5, "longitude": -61})


def _duplicate(data):
    _add_pv_03(data)
    data["batteries"][1]["name"] = "bat_01"


def _negative(data):
    _add_pv_03(data)
    data["batteries"][0]["capacity"] = "-100 kWh"


def _unknown_unit(data):
    _add_pv_03(data)
    data["ev_chargers"][0]["power"] = "22 kVAR"


def _missing(data):
    _add_pv_03(data)
    del data["ev_chargers"][1]["battery_capacity"]


@pytest.mark.parametrize(
    "edit, device, field",
    [
        (_duplicate, "bat_01", "name"),
        (_negative, "bat_01", "capacity"),
        (_unknown_unit, "ev_01", "power"),
        (_missing, "ev_02", "battery_capacity"),
    ],
)
def test_bad_fleet_is_refused_and_nothing_is_written(cli, fm_db, tmp_path, edit, device, field):
    cli("cariflex", "setup", "--fleet", str(fleet_file(tmp_path)))
    before = counts(fm_db)
    bad = fleet_file(tmp_path, edit)  # also adds pv_03, which must not appear
    result = cli("cariflex", "setup", "--fleet", str(bad))
    assert result.exit_code == 1
    assert str(bad) in result.output
    assert f"device '{device}', field '{field}'" in result.output
    assert "Nothing was written to the database." in result.output
    assert counts(fm_db) == before


def test_bad_fleet_on_empty_database_writes_nothing(cli, fm_db, tmp_path):
    result = cli("cariflex", "setup", "--fleet", str(fleet_file(tmp_path, _negative)))
    assert result.exit_code == 1
    assert set(counts(fm_db).values()) == {0}


def test_sensors_json_maps_every_name_to_its_id(cli, fm_db):
    cli("cariflex", "setup")
    result = cli("cariflex", "sensors", "--json")
    assert result.exit_code == 0
    mapping = json.loads(result.output)
    in_db = {s.name: s.id for s in fm_db.session.execute(select(Sensor)).scalars()}
    assert mapping == in_db
    assert set(mapping) == set(EXPECTED_SENSORS)


def test_sensors_table_lists_units(cli, fm_db):
    cli("cariflex", "setup")
    lines = cli("cariflex", "sensors").output.splitlines()
    assert lines[0].split() == ["name", "id", "unit", "resolution"]
    assert any(line.split()[0] == "irradiance" and "W/m²" in line for line in lines)


def test_sensors_before_setup_tells_what_to_do(cli):
    result = cli("cariflex", "sensors")
    assert result.exit_code == 1
    assert "run `flexmeasures cariflex setup` first" in result.output


def test_ensure_admin_creates_once_and_keeps_the_password(cli, fm_db, monkeypatch, tmp_path):
    monkeypatch.setenv("CARIFLEX_VAR_DIR", str(tmp_path / "var"))
    monkeypatch.delenv("CARIFLEX_ADMIN_PASSWORD", raising=False)
    first = cli("cariflex", "ensure-admin", "--email", "ops@cariflex.example")
    password_file = tmp_path / "var" / "admin_password"
    password = password_file.read_text().strip()
    assert f"password: {password}" in first.output
    assert stat.S_IMODE(password_file.stat().st_mode) == 0o600
    user = fm_db.session.execute(select(User).filter(User.email == "ops@cariflex.example")).scalar_one()
    assert {r.name for r in user.roles} == {"admin", "account-admin"}
    assert user.account.name == "Cariflex"

    second = cli("cariflex", "ensure-admin", "--email", "ops@cariflex.example")
    assert "Admin exists" in second.output
    assert password not in second.output
