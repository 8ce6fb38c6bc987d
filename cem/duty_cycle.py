"""Average powers below a device's least non-zero power, by running it part of the time.

An EV charger cannot charge below 4.14 kW (6 A on three phases), but a schedule made with
FlexMeasures' continuous storage model asks for 1.5 kW in a quarter-hour as readily as for 15 kW.
The translator can only round such a target to 0 or to 4.14 kW, and the energy rounded away is
missing when the car leaves. Here the device runs at its least power while it owes energy and
rests while it is ahead (a sigma-delta on the energy owed), so that over a few minutes it delivers
what was asked on average. It runs as soon as it owes anything, so it is never behind by more than
one control step (a car that leaves now has what it was planned to have), and rests only once it is
ahead by ``2 × HOLD_S`` at the least power, which keeps it from switching more often than about once
a minute.

Used by the fleet controller every control round and by ``bench/site_value.py`` every minute.
"""

from __future__ import annotations

from dataclasses import dataclass, field

HOLD_S = 30.0  # rest once ahead by twice this many seconds at the least power


@dataclass
class DutyCycle:
    owed_kwh: dict[str, float] = field(default_factory=dict)  # per device, signed like its target
    running: dict[str, bool] = field(default_factory=dict)
    sign: dict[str, float] = field(default_factory=dict)

    def deliver(self, name: str, target_kw: float, least_kw: float, seconds: float) -> float:
        """The power to instruct for the next ``seconds`` so that the device's average follows
        ``target_kw``: the target itself when the device can run at it; else its least power or
        0. A target of 0, at or above the least power, or of the other sign starts afresh."""
        if least_kw <= 0 or target_kw == 0 or abs(target_kw) >= least_kw or seconds <= 0:
            for state in (self.owed_kwh, self.running, self.sign):
                state.pop(name, None)
            return target_kw
        sign = 1.0 if target_kw > 0 else -1.0
        if self.sign.get(name, sign) != sign:  # a target of the other sign: start afresh
            self.owed_kwh.pop(name, None)
            self.running.pop(name, None)
        self.sign[name] = sign
        owed = self.owed_kwh.get(name, 0.0) + target_kw * seconds / 3600
        hold = least_kw * HOLD_S / 3600
        running = self.running.get(name, False)
        if not running and owed * sign > 0:
            running = True  # never behind by more than a step: a car may leave at any time
        elif running and owed * sign <= -2 * hold:
            running = False
        power = sign * least_kw if running else 0.0
        self.owed_kwh[name] = owed - power * seconds / 3600
        self.running[name] = running
        return power
