"""The fleet loader: the packaged fleet, units, and every kind of bad file an operator writes."""

from __future__ import annotations

import copy
from datetime import time
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from cariflex.fleet import FleetError, load_fleet, parse_fleet

SMALL = Path(__file__).parent.parent / "fleets" / "small.yaml"


def small_data() -> dict:
    return yaml.safe_load(SMALL.read_text())


def write(tmp_path: Path, data: dict, name: str = "fleet.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_packaged_fleet_is_the_cariflex_site():
    fleet = load_fleet()
    assert fleet.site.timezone == "America/Martinique"
    assert (fleet.site.latitude, fleet.site.longitude) == (14.6, -61.0)
    assert [d.name for d in fleet.pv] == [f"pv_{i:02d}" for i in range(1, 11)]
    assert [d.name for d in fleet.batteries] == [f"bat_{i:02d}" for i in range(1, 11)]
    assert [d.name for d in fleet.ev_chargers] == [f"ev_{i:02d}" for i in range(1, 11)]
    # YAML merge keys give every battery the first one's parameters: ±50 kW, 100 kWh.
    assert {(b.power_kw, b.capacity_kwh) for b in fleet.batteries} == {(50.0, 100.0)}
    assert {e.power_kw for e in fleet.ev_chargers} == {22.0}


def test_env_variable_selects_the_fleet_file(monkeypatch):
    monkeypatch.setenv("CARIFLEX_FLEET_FILE", str(SMALL))
    assert load_fleet().site.name == "Test site"


def test_units_are_converted_to_kw_and_kwh():
    fleet = load_fleet(SMALL)
    bat_02 = fleet.batteries[1]
    assert bat_02.capacity_kwh == pytest.approx(200.0)  # 0.2 MWh
    assert bat_02.power_kw == pytest.approx(50.0)  # 50000 W
    ev_02 = fleet.ev_chargers[1]
    assert (ev_02.arrival, ev_02.departure, ev_02.bidirectional) == (time(18), time(7), False)


@given(st.floats(min_value=0.001, max_value=1e6, allow_nan=False), st.sampled_from(["W", "kW", "MW"]))
def test_any_power_with_a_known_unit_is_read_in_kw(value, unit):
    data = small_data()
    data["pv"][0]["peak_power"] = f"{value!r} {unit}"
    factor = {"W": 1e-3, "kW": 1.0, "MW": 1e3}[unit]
    assert parse_fleet(data, "x.yaml").pv[0].peak_power_kw == pytest.approx(value * factor)


def refused(tmp_path: Path, data: dict) -> FleetError:
    path = write(tmp_path, data)
    with pytest.raises(FleetError) as info:
        load_fleet(path)
    assert str(path) in str(info.value), "the message must name the file"
    return info.value


def test_duplicate_device_name_is_refused(tmp_path):
    data = small_data()
    data["batteries"][1]["name"] = "bat_01"
    error = refused(tmp_path, data)
    assert "batteries[1] device 'bat_01', field 'name': duplicate device name" in str(error)


def test_duplicate_name_across_device_kinds_is_refused(tmp_path):
    data = small_data()
    data["ev_chargers"][0]["name"] = "pv_02"
    assert "device 'pv_02', field 'name': duplicate" in str(refused(tmp_path, data))


def test_negative_capacity_is_refused(tmp_path):
    data = small_data()
    data["batteries"][0]["capacity"] = "-100 kWh"
    error = refused(tmp_path, data)
    assert "device 'bat_01', field 'capacity': '-100 kWh' is negative" in str(error)


def test_unknown_unit_is_refused(tmp_path):
    data = small_data()
    data["ev_chargers"][1]["power"] = "11 kVAR"
    error = refused(tmp_path, data)
    assert "device 'ev_02', field 'power': unknown unit 'kVAR'" in str(error)
    assert "use one of W, kW, MW" in str(error)


def test_energy_unit_for_a_power_is_refused(tmp_path):
    data = small_data()
    data["batteries"][0]["power"] = "50 kWh"
    assert "device 'bat_01', field 'power': unknown unit 'kWh'" in str(refused(tmp_path, data))


def test_missing_field_is_refused(tmp_path):
    data = small_data()
    del data["ev_chargers"][0]["departure_soc"]
    error = refused(tmp_path, data)
    assert "device 'ev_01', field 'departure_soc': missing (required)" in str(error)


def test_bare_number_without_unit_is_refused(tmp_path):
    data = small_data()
    data["pv"][1]["peak_power"] = 100
    assert "device 'pv_02', field 'peak_power': 100 must be a quantity with a unit" in str(
        refused(tmp_path, data)
    )


def test_misspelt_field_gets_a_suggestion(tmp_path):
    data = small_data()
    data["batteries"][0]["capcity"] = data["batteries"][0].pop("capacity")
    error = str(refused(tmp_path, data))
    assert "field 'capcity': unknown field (did you mean 'capacity'?)" in error
    assert "field 'capacity': missing (required)" in error


def test_every_problem_is_reported_at_once(tmp_path):
    data = small_data()
    data["batteries"][0]["capacity"] = "-1 kWh"
    data["pv"][0]["peak_power"] = "3 furlongs"
    data["site"]["timezone"] = "Mars/Olympus"
    error = refused(tmp_path, data)
    assert len(error.problems) == 3
    assert any("section 'site', field 'timezone'" in p for p in error.problems)


def test_soc_min_above_soc_max_is_refused(tmp_path):
    data = small_data()
    data["batteries"][0]["soc_min"] = "96 %"
    assert "field 'soc_min': 96.0 % must be below soc_max" in str(refused(tmp_path, data))


def test_invalid_yaml_names_the_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("site:\n  name: [unclosed\n")
    with pytest.raises(FleetError, match=r"(?s)broken.yaml .*line \d+, column \d+: not valid YAML"):
        load_fleet(path)


def test_missing_file_is_refused(tmp_path):
    with pytest.raises(FleetError, match="cannot be read"):
        load_fleet(tmp_path / "nope.yaml")


def test_loader_does_not_mutate_its_input():
    data = small_data()
    before = copy.deepcopy(data)
    parse_fleet(data, "x.yaml")
    assert data == before


def test_ev_need_beyond_what_its_charger_delivers_before_departure_is_refused(tmp_path):
    data = small_data()
    # ev_02: 40 kWh car, 90 % by 07:00, arrives with 40 %: 20 kWh to add; a 2 kW charger from 05:00
    # delivers at most 4 kWh.
    data["ev_chargers"][1].update({"power": "2 kW", "arrival": "05:00"})
    with pytest.raises(FleetError) as refused:
        load_fleet(write(tmp_path, data))
    message = str(refused.value)
    assert "ev_chargers[1] device 'ev_02', field 'departure_soc'" in message
    assert "needs 20 kWh more" in message and "delivers at most 4 kWh between 05:00 and 07:00" in message


def test_ev_arrival_soc_defaults_to_40_percent_and_can_be_set(tmp_path):
    data = small_data()
    data["ev_chargers"][0]["arrival_soc"] = "25 %"
    fleet = load_fleet(write(tmp_path, data))
    assert fleet.ev_chargers[0].arrival_kwh == 15.0  # 25 % of 60 kWh
    assert fleet.ev_chargers[1].arrival_soc_pct == 40.0
    assert fleet.ev_chargers[1].plugged_hours == 13.0  # 18:00 -> 07:00
