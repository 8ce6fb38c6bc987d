"""The checks s2-python does not make (reference/s2.md §7), on the CEM before it sends an
instruction and on the resource manager when it receives one.

s2-python accepts an operation_mode_factor of 1.5, an instruction for a mode or actuator that does
not exist, a transition that is not allowed or blocked by a running timer, an abnormal-condition
mode in normal operation, and reversed fill-level ranges. Each check returns a sentence naming the
problem (for a ReceptionStatus diagnostic label or a REJECTED status), or None.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from s2python.frbc import FRBCInstruction, FRBCOperationMode, FRBCOperationModeElement, FRBCSystemDescription


def element_at(mode: FRBCOperationMode, fill_level: float) -> FRBCOperationModeElement | None:
    """The element whose fill-level range holds the level; on a shared boundary the first one
    (elements are sorted by range), e.g. exactly 90 kWh still charges at full power."""
    for element in sorted(mode.elements, key=lambda e: e.fill_level_range.start_of_range):
        if element.fill_level_range.start_of_range <= fill_level <= element.fill_level_range.end_of_range:
            return element
    return None


def check_system_description(description: FRBCSystemDescription) -> str | None:
    storage = description.storage.fill_level_range
    if storage.start_of_range > storage.end_of_range:
        return "storage fill_level_range is reversed (start > end)"
    for actuator in description.actuators:
        for mode in actuator.operation_modes:
            ranges = sorted(
                (e.fill_level_range.start_of_range, e.fill_level_range.end_of_range) for e in mode.elements
            )
            for low, high in ranges:
                if low > high:
                    return f"operation mode {mode.id}: an element's fill_level_range is reversed"
            for (_, high), (low, _) in zip(ranges, ranges[1:], strict=False):
                if low < high:
                    return f"operation mode {mode.id}: element fill-level ranges overlap"
    return None


def check_instruction(
    instruction: FRBCInstruction,
    description: FRBCSystemDescription,
    *,
    active_modes: dict[uuid.UUID, uuid.UUID],
    timers_finish: dict[uuid.UUID, datetime],
    now: datetime,
) -> str | None:
    """Whether an instruction may be executed, given the actuators' active modes and timers."""
    factor = instruction.operation_mode_factor
    if not 0.0 <= factor <= 1.0:
        return f"operation_mode_factor {factor} is outside [0, 1]"
    actuator = next((a for a in description.actuators if a.id == instruction.actuator_id), None)
    if actuator is None:
        return f"unknown actuator {instruction.actuator_id}"
    mode = next((m for m in actuator.operation_modes if m.id == instruction.operation_mode), None)
    if mode is None:
        return f"unknown operation mode {instruction.operation_mode} for actuator {actuator.id}"
    if mode.abnormal_condition_only and not instruction.abnormal_condition:
        return f"operation mode {mode.id} is for abnormal conditions only"
    active = active_modes.get(actuator.id)
    if active is not None and active != mode.id:
        transition = next((t for t in actuator.transitions if t.from_ == active and t.to == mode.id), None)
        if transition is None:
            return f"no transition from mode {active} to {mode.id}"
        if transition.abnormal_condition_only and not instruction.abnormal_condition:
            return f"the transition to mode {mode.id} is for abnormal conditions only"
        running = [t for t in transition.blocking_timers if timers_finish.get(t, now) > now]
        if running:
            until = timers_finish[running[0]]
            return f"the transition to mode {mode.id} is blocked by timer {running[0]} until {until}"
    return None
