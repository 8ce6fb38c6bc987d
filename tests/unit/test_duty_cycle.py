"""Targets below an EV's least power are delivered on average, and the switching stays slow."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from cariflex.fleet import load_fleet
from cariflex.s2.devices import EV_MIN_KW, battery_model, ev_model
from cariflex.s2.translator import least_power_kw
from cem.duty_cycle import HOLD_S, DutyCycle


def test_least_power_is_the_ev_minimum_and_zero_for_a_battery():
    fleet = load_fleet(None)
    assert least_power_kw(ev_model(fleet.ev_chargers[0]).description) == EV_MIN_KW
    assert least_power_kw(battery_model(fleet.batteries[0]).description) == 0.0


@settings(max_examples=60, deadline=None)
@given(
    target=st.floats(0.05, EV_MIN_KW * 0.999).flatmap(lambda x: st.sampled_from([x, -x])),
    seconds=st.sampled_from([1.0, 2.0, 60.0]),
)
def test_a_target_below_the_least_power_is_met_on_average(target, seconds):
    duty = DutyCycle()
    steps = int(4 * 3600 / seconds)  # four hours
    powers, delivered = [], 0.0
    for step in range(1, steps + 1):
        powers.append(duty.deliver("ev_01", target, EV_MIN_KW, seconds))
        delivered += powers[-1] * seconds / 3600
        asked = target * step * seconds / 3600
        # never behind by more than one step (a car may leave at any moment), ahead by at most the
        # hysteresis band and a step at the least power
        assert -abs(target) * seconds / 3600 - 1e-9 <= (delivered - asked) * (1 if target > 0 else -1)
        assert abs(delivered - asked) <= EV_MIN_KW * (2 * HOLD_S + seconds) / 3600 + 1e-9
    assert set(powers) <= {0.0, EV_MIN_KW if target > 0 else -EV_MIN_KW}
    switches = sum(1 for a, b in zip(powers, powers[1:], strict=False) if a != b)
    assert switches * HOLD_S <= 4 * 3600 * 2  # not more often than about once per HOLD_S either way


def test_targets_the_device_can_run_at_pass_unchanged_and_forget_what_was_owed():
    duty = DutyCycle()
    assert duty.deliver("ev_01", 1.0, EV_MIN_KW, 60) == EV_MIN_KW  # owes 1/60 kWh: runs
    assert duty.deliver("ev_01", 10.0, EV_MIN_KW, 60) == 10.0
    assert duty.deliver("bat_01", 1.0, 0.0, 60) == 1.0  # a battery runs at any power
    assert duty.deliver("ev_01", 0.0, EV_MIN_KW, 60) == 0.0
    assert "ev_01" not in duty.owed_kwh
