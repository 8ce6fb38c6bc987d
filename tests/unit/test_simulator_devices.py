"""Physics and instruction checks of the simulated devices (simulator.devices), no network."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, time, timedelta

import pytest
from s2python.common import InstructionStatus, ReceptionStatusValues
from s2python.frbc import FRBCInstruction

from cariflex.fleet import Battery, EVCharger, load_fleet
from cariflex.s2.devices import EV_MIN_KW
from simulator.devices import SimDevice, build_devices, ev_present
from simulator.runner import SimulatedRM

NOW = datetime(2026, 3, 2, 16, 0, tzinfo=UTC)  # 12:00 in Martinique (UTC-4)
BATTERY = Battery("bat_x", 100.0, 50.0, 10.0, 95.0, 90.0)
ETA = 0.9**0.5  # the battery model splits the round trip evenly
LEAK = 0.05  # kW of self-discharge
EV = EVCharger("ev_x", 22.0, 60.0, time(8), time(17), 80.0)


def battery(level: float | None = None, mode: str = "idle", factor: float = 0.0) -> SimDevice:
    device = SimDevice.battery(BATTERY)
    if level is not None:
        device.fill_level = level
    device.apply(device.model.mode(mode).id, factor, NOW)
    return device


def ev(mode: str = "off", factor: float = 0.0, **kwargs) -> SimDevice:
    device = SimDevice.ev_charger(EV, now=NOW, **kwargs)
    device.apply(device.model.mode(mode).id, factor, NOW)
    return device


def instruction(device: SimDevice, mode_id: uuid.UUID, factor: float) -> FRBCInstruction:
    return FRBCInstruction(
        message_id=uuid.uuid4(),
        id=uuid.uuid4(),
        actuator_id=device.actuator_id,
        operation_mode=mode_id,
        operation_mode_factor=factor,
        execution_time=NOW,
        abnormal_condition=False,
    )


def test_initial_state_is_idle_at_half_or_forty_percent():
    bat, car = SimDevice.battery(BATTERY), SimDevice.ev_charger(EV, now=NOW)
    assert (bat.mode_label, bat.factor, bat.power_w, bat.fill_level) == ("idle", 0.0, 0.0, 50.0)
    assert (car.mode_label, car.factor, car.power_w, car.fill_level) == ("off", 0.0, 0.0, 24.0)


def test_charge_integrates_fill_level_with_efficiency_and_self_discharge():
    device = battery(50.0, "charge", 0.6)
    assert device.power_w == pytest.approx(30_000)
    device.step(600)
    assert device.fill_level == pytest.approx(50 + (30 * ETA - LEAK) * 600 / 3600, rel=1e-9)


def test_discharge_draws_more_than_it_delivers():
    device = battery(50.0, "discharge", 0.0)  # discharge is −P…0: factor 0 = full discharge
    assert device.power_w == pytest.approx(-50_000)
    device.step(1800)
    assert device.fill_level == pytest.approx(50 - (50 / ETA + LEAK) * 0.5, rel=1e-9)
    assert 50 - device.fill_level > 25 + 1  # 25 kWh delivered costs ~26.4 kWh of storage


def test_idle_battery_self_discharges_50_w():
    device = battery(50.0)
    device.step(3600)
    assert device.fill_level == pytest.approx(50 - LEAK)
    assert device.power_w == 0.0


@pytest.mark.parametrize(("level", "power"), [(42.0, 50_000), (89.0, 50_000), (90.0, 50_000), (92.0, 10_000)])
def test_taper_above_90_kwh(level, power):
    assert battery(level, "charge", 1.0).power_w == pytest.approx(power)


def test_charging_crosses_into_the_taper_within_one_step():
    device = battery(80.0, "charge", 1.0)
    device.step(3600)
    to_taper = 10 / (50 * ETA - LEAK) * 3600  # seconds from 80 to 90 kWh at full power
    expected = 90 + (10 * ETA - LEAK) * (3600 - to_taper) / 3600
    assert device.fill_level == pytest.approx(expected, rel=1e-9)
    assert device.power_w == pytest.approx(10_000)


def test_thirty_kw_from_80_kwh_reaches_the_taper_after_about_21_minutes():
    device = battery(80.0, "charge", 0.6)
    device.step(20 * 60)
    assert device.fill_level < 90 and device.power_w == pytest.approx(30_000)
    device.step(2 * 60)
    assert device.fill_level > 90 and device.power_w == pytest.approx(6_000)


def test_full_battery_stops_charging_by_itself():
    device = battery(99.9, "charge", 1.0)
    assert device.step(600, NOW) is True
    assert device.mode_label == "idle" and device.factor == 0.0 and device.power_w == 0.0
    assert device.fill_level <= 100.0
    assert device.fill_level == pytest.approx(100 - LEAK * (600 - 0.1 / (10 * ETA - LEAK) * 3600) / 3600)


def test_empty_battery_stops_discharging_by_itself():
    device = battery(0.5, "discharge", 0.0)
    assert device.step(600, NOW) is True
    assert (device.fill_level, device.mode_label, device.power_w) == (0.0, "idle", 0.0)


def test_ev_minimum_power_and_range():
    minimum = EV_MIN_KW * 1000
    assert ev("charge", 0.0).power_w == pytest.approx(minimum)
    assert ev("charge", 1.0).power_w == pytest.approx(22_000)
    assert ev("discharge", 0.0).power_w == pytest.approx(-22_000)
    assert ev("discharge", 1.0).power_w == pytest.approx(-minimum)
    car = ev("charge", 0.0)
    car.step(3600)
    assert car.fill_level == pytest.approx(24 + EV_MIN_KW * 0.92)  # no self-discharge for EVs


def test_check_refuses_factor_out_of_range_and_unknown_mode():
    device = battery(50.0)
    charge = device.model.mode("charge").id
    assert "outside [0, 1]" in device.check(instruction(device, charge, 1.5), NOW)
    assert "unknown operation mode" in device.check(instruction(device, uuid.uuid4(), 0.5), NOW)
    assert device.check(instruction(device, charge, 0.5), NOW) is None


def test_timers_started_by_a_transition_block_the_way_back():
    from s2python.common import Duration, Timer

    device = battery(50.0)
    actuator = device.model.actuator
    timer = Timer(id=uuid.uuid4(), diagnostic_label="reversal", duration=Duration.from_milliseconds(60_000))
    actuator.timers = [timer]
    idle, charge = device.model.mode("idle").id, device.model.mode("charge").id
    for transition in actuator.transitions:
        if transition.from_ == idle and transition.to == charge:
            transition.start_timers = [timer.id]
        if transition.from_ == charge and transition.to == idle:
            transition.blocking_timers = [timer.id]
    assert device.apply(charge, 1.0, NOW) == [(timer.id, NOW + timedelta(seconds=60))]
    assert "blocked by timer" in device.check(instruction(device, idle, 0.0), NOW + timedelta(seconds=30))
    assert device.check(instruction(device, idle, 0.0), NOW + timedelta(seconds=61)) is None


def test_ev_presence_windows():
    assert ev_present(EV, time(8)) and ev_present(EV, time(16, 59))
    assert not ev_present(EV, time(17)) and not ev_present(EV, time(7, 59))
    night = EVCharger("ev_n", 22.0, 60.0, time(18), time(7), 90.0)
    assert ev_present(night, time(23)) and ev_present(night, time(6)) and not ev_present(night, time(12))


def test_absent_car_draws_nothing_and_only_off_is_allowed():
    car = ev(presence="schedule")  # 12:00 local: plugged in
    assert car.present
    car.apply(car.model.mode("charge").id, 1.0, NOW)
    evening = NOW + timedelta(hours=8)  # 20:00 local: gone
    assert car.update_presence(evening) is True
    assert not car.present and car.mode_label == "off" and car.power_w == 0.0
    problem = car.check(instruction(car, car.model.mode("charge").id, 0.5), evening)
    assert problem and "no car is plugged in" in problem
    assert car.check(instruction(car, car.model.mode("off").id, 0.0), evening) is None
    car.fill_level = 55.0
    car.step(3600)
    assert car.fill_level == 55.0
    assert car.update_presence(NOW + timedelta(days=1)) is True  # back next day with 40 %
    assert car.present and car.fill_level == pytest.approx(24.0)


def test_build_devices_from_the_packaged_fleet():
    devices = build_devices(load_fleet())
    assert [d.kind for d in devices].count("battery") == 10 and [d.kind for d in devices].count("ev") == 10
    assert [d.name for d in build_devices(load_fleet(), ["ev_03", "bat_01"])] == ["bat_01", "ev_03"]
    with pytest.raises(ValueError, match="unknown device.*bat_99"):
        build_devices(load_fleet(), ["bat_99"])


class _Reply:
    def __init__(self):
        self.status = None
        self.label = None

    async def __call__(self):
        await self.send(ReceptionStatusValues.OK, "Processed okay.")

    async def send(self, status, label):
        assert self.status is None, "a second ReceptionStatus for one message"
        self.status, self.label = status, label


@pytest.mark.parametrize(
    ("factor", "unknown_mode", "reason"),
    [(1.5, False, "outside [0, 1]"), (-0.2, False, "outside [0, 1]"), (0.5, True, "unknown operation mode")],
)
def test_rm_rejects_invalid_instruction_and_keeps_state(factor, unknown_mode, reason):
    async def scenario():
        device = battery(50.0)
        rm = SimulatedRM(device, "ws://127.0.0.1:9/s2")
        rm.frbc_active = True
        mode = uuid.uuid4() if unknown_mode else device.model.mode("charge").id
        message = instruction(device, mode, factor)
        reply = _Reply()
        await rm.on_instruction(message, reply)
        return rm, message, reply

    rm, message, reply = asyncio.run(scenario())
    assert reply.status == ReceptionStatusValues.INVALID_CONTENT and reason in reply.label
    assert rm.instruction_statuses[message.id] == [InstructionStatus.REJECTED]
    assert reason in rm.rejections[message.id]
    assert (rm.mode_label, rm.factor, rm.power_w) == ("idle", 0.0, 0.0)


def test_rm_executes_valid_instruction():
    async def scenario():
        device = battery(50.0)
        rm = SimulatedRM(device, "ws://127.0.0.1:9/s2")
        rm.frbc_active = True
        message = instruction(device, device.model.mode("charge").id, 0.6)
        reply = _Reply()
        await rm.on_instruction(message, reply)
        return rm, message, reply

    rm, message, reply = asyncio.run(scenario())
    assert reply.status == ReceptionStatusValues.OK
    assert rm.instruction_statuses[message.id] == [
        InstructionStatus.ACCEPTED,
        InstructionStatus.STARTED,
        InstructionStatus.SUCCEEDED,
    ]
    assert (rm.mode_label, rm.factor, rm.power_w) == ("charge", 0.6, pytest.approx(30_000))
