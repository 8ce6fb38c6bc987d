"""The kW → (mode, factor) translator and the semantic checks, as tables (reference/s2.md §6)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from s2python.common import NumberRange
from s2python.frbc import FRBCInstruction

from cariflex.fleet import Battery, EVCharger
from cariflex.s2.devices import battery_model, ev_model
from cariflex.s2.translator import translate
from cariflex.s2.validation import check_instruction, check_system_description

BATTERY = battery_model(Battery("bat_01", 100.0, 50.0, 10.0, 95.0, 90.0))
EV = ev_model(EVCharger("ev_01", 22.0, 60.0, datetime.min.time(), datetime.min.time(), 80.0))
ONE_WAY = ev_model(
    EVCharger("ev_02", 11.0, 40.0, datetime.min.time(), datetime.min.time(), 80.0, bidirectional=False)
)


@pytest.mark.parametrize(
    "target_kw, fill_kwh, mode, factor, expected_kw",
    [
        (30, 42, "charge", 0.6, 30),
        (-20, 42, "discharge", 0.6, -20),
        (0, 42, "idle", 0.0, 0),
        (-50, 42, "discharge", 0.0, -50),
        (30, 93, "charge", 1.0, 10),  # the CV taper above 90 kWh: clamped to 10 kW
        (5, 93, "charge", 0.5, 5),
        (30, 90, "charge", 0.6, 30),  # on the boundary the first element applies
        (70, 42, "charge", 1.0, 50),  # beyond rated power: clamped
        (-80, 42, "discharge", 0.0, -50),
    ],
)
def test_battery(target_kw, fill_kwh, mode, factor, expected_kw):
    result = translate(BATTERY.description, fill_kwh, target_kw)
    assert (result.mode_label, result.factor, result.expected_w / 1000) == (
        mode,
        pytest.approx(factor),
        pytest.approx(expected_kw),
    )
    assert result.reachable == (target_kw == expected_kw)
    assert result.shortfall_w == pytest.approx((target_kw - expected_kw) * 1000)


@pytest.mark.parametrize(
    "model, target_kw, mode, factor, expected_kw",
    [
        (EV, 11, "charge", (11 - 4.14) / (22 - 4.14), 11),
        (EV, -15, "discharge", (-15 + 22) / (22 - 4.14), -15),
        (EV, 2, "off", 0.0, 0),  # below the charger's minimum power: off, and reported short
        (EV, 3, "charge", 0.0, 4.14),  # closer to the minimum than to zero
        (EV, 30, "charge", 1.0, 22),
        (ONE_WAY, -5, "off", 0.0, 0),  # a one-way charger cannot discharge
    ],
)
def test_ev_charger(model, target_kw, mode, factor, expected_kw):
    result = translate(model.description, 30.0, target_kw)
    assert (result.mode_label, result.factor, result.expected_w / 1000) == (
        mode,
        pytest.approx(factor),
        pytest.approx(expected_kw),
    )


def instruction(mode_id, factor=0.5, actuator_id=None, abnormal=False) -> FRBCInstruction:
    return FRBCInstruction(
        message_id=uuid.uuid4(),
        id=uuid.uuid4(),
        actuator_id=actuator_id or BATTERY.actuator.id,
        operation_mode=mode_id,
        operation_mode_factor=factor,
        execution_time=datetime.now(UTC),
        abnormal_condition=abnormal,
    )


def check(instr, active=None, timers=None):
    return check_instruction(
        instr,
        BATTERY.description,
        active_modes={BATTERY.actuator.id: active} if active else {},
        timers_finish=timers or {},
        now=datetime.now(UTC),
    )


def test_a_valid_instruction_passes():
    assert check(instruction(BATTERY.mode("charge").id), active=BATTERY.mode("idle").id) is None


@pytest.mark.parametrize("factor", [1.5, -0.2])
def test_factor_outside_0_1_is_refused(factor):
    assert (
        check(instruction(BATTERY.mode("charge").id, factor))
        == f"operation_mode_factor {factor} is outside [0, 1]"
    )


def test_unknown_mode_and_actuator_are_refused():
    assert check(instruction(uuid.uuid4())).startswith("unknown operation mode")
    assert check(instruction(BATTERY.mode("idle").id, actuator_id=uuid.uuid4())).startswith(
        "unknown actuator"
    )


def test_blocking_timer_and_abnormal_mode_are_refused():
    actuator = BATTERY.actuator.model_copy(deep=True)
    timer = uuid.uuid4()
    idle, charge = actuator.operation_modes[0], actuator.operation_modes[1]
    transition = next(t for t in actuator.transitions if t.from_ == idle.id and t.to == charge.id)
    transition.blocking_timers = [timer]
    description = BATTERY.description.model_copy(update={"actuators": [actuator]})
    now = datetime.now(UTC)
    blocked = check_instruction(
        instruction(charge.id),
        description,
        active_modes={actuator.id: idle.id},
        timers_finish={timer: now + timedelta(seconds=30)},
        now=now,
    )
    assert blocked.startswith(f"the transition to mode {charge.id} is blocked by timer {timer}")
    # and the translator does not pick the blocked mode: it stays idle and reports the shortfall
    result = translate(
        description, 42, 30, active_mode=idle.id, timers_finish={timer: now + timedelta(seconds=30)}, now=now
    )
    assert (result.mode_label, result.shortfall_w) == ("idle", 30000)
    charge.abnormal_condition_only = True
    assert (
        check_instruction(instruction(charge.id), description, active_modes={}, timers_finish={}, now=now)
        == f"operation mode {charge.id} is for abnormal conditions only"
    )


def test_overlapping_or_reversed_fill_ranges_are_found():
    assert check_system_description(BATTERY.description) is None
    description = BATTERY.description.model_copy(deep=True)
    description.storage.fill_level_range = NumberRange(start_of_range=95, end_of_range=10)
    assert check_system_description(description) == "storage fill_level_range is reversed (start > end)"
