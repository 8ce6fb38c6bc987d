"""The S2 side of one simulated resource manager: its identity, the control types it offers (FRBC,
NO_SELECTION for a battery or EV charger; NOT_CONTROLABLE for a metered PV site or base load) and
the messages that report a ``SimDevice``'s or a ``SimMeter``'s state.

Built on s2-python's ``ResourceManagerHandler`` (the handshake: Handshake ["0.0.2-beta"] →
HandshakeResponse → ResourceManagerDetails) and ``FRBCControlType`` (the activation). Where
s2-python 0.11 accepts what an RM must refuse, or has no handler at all, ``RmHandler`` and
``NoSelection`` fill the gap (each method says which). The adapters only route the CEM's messages
to the RM (``RmCallbacks``, implemented by ``simulator.runner.SimulatedRM``); what to do with them
is the runner's.

Message sequence per session, RM → CEM: Handshake, (ReceptionStatus for the CEM's Handshake and
HandshakeResponse), ResourceManagerDetails, (ReceptionStatus for SelectControlType),
FRBC.SystemDescription, FRBC.StorageStatus, FRBC.ActuatorStatus, PowerMeasurement, then every
``measure_seconds`` PowerMeasurement + FRBC.StorageStatus. A metered resource, once the CEM selected
NOT_CONTROLABLE: PowerMeasurement at once and every ``measure_seconds``, nothing else.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Protocol

from s2python.common import (
    Commodity,
    ControlType,
    Duration,
    EnergyManagementRole,
    PowerMeasurement,
    PowerValue,
    ReceptionStatusValues,
    RevokeObject,
    Role,
    RoleType,
    SessionRequest,
)
from s2python.connection.asset_details import AssetDetails
from s2python.connection.async_.connection import S2AsyncConnection
from s2python.connection.async_.control_type.class_based import (
    FRBCControlType,
    NoControlControlType,
    ResourceManagerHandler,
    S2ControlType,
)
from s2python.frbc import (
    FRBCActuatorStatus,
    FRBCInstruction,
    FRBCStorageStatus,
    FRBCSystemDescription,
    FRBCTimerStatus,
)
from s2python.version import S2_VERSION

from cariflex.s2.devices import POWER
from simulator.devices import SimDevice
from simulator.site import SimMeter
from simulator.transport import Reply

INSTRUCTION_PROCESSING_DELAY_MS = 100


class RmCallbacks(Protocol):
    """What the S2 handlers call on the resource manager (``simulator.runner.SimulatedRM``)."""

    async def on_instruction(self, instruction: FRBCInstruction, reply: Reply) -> None: ...

    async def on_revoke(self, revoke: RevokeObject, reply: Reply) -> None: ...

    def on_session_request(self, request: SessionRequest) -> None: ...

    async def on_frbc_activated(self) -> None: ...

    def on_frbc_deactivated(self) -> None: ...

    async def on_no_selection(self) -> None: ...


class MeterCallbacks(Protocol):
    """What NOT_CONTROLABLE's activation calls on a metered RM (``simulator.runner.MeteredRM``)."""

    async def on_metering_activated(self) -> None: ...

    def on_metering_deactivated(self) -> None: ...


# --- identity -------------------------------------------------------------------------------------


def resource_id(name: str) -> uuid.UUID:
    """The device's stable S2 resource id."""
    return uuid.uuid5(uuid.NAMESPACE_URL, "cariflex:" + name)


def asset_details(device: SimDevice) -> AssetDetails:
    """What the RM's ResourceManagerDetails say about the device."""
    return AssetDetails(
        resource_id=resource_id(device.name),
        name=device.name,
        provides_forecast=False,
        provides_power_measurements=[POWER],
        instruction_processing_delay=Duration.from_milliseconds(INSTRUCTION_PROCESSING_DELAY_MS),
        roles=[Role(role=RoleType.ENERGY_STORAGE, commodity=Commodity.ELECTRICITY)],
        manufacturer="Cariflex",
        model="simulated battery" if device.kind == "battery" else "simulated EV charger",
    )


def meter_details(meter: SimMeter) -> AssetDetails:
    """What a metered resource's ResourceManagerDetails say: a producer (PV) or a consumer (base
    load), power measurements only, NOT_CONTROLABLE (the handler adds the control types)."""
    return AssetDetails(
        resource_id=resource_id(meter.name),
        name=meter.name,
        provides_forecast=False,
        provides_power_measurements=[POWER],
        instruction_processing_delay=Duration.from_milliseconds(INSTRUCTION_PROCESSING_DELAY_MS),
        roles=[Role(role=meter.meter.role, commodity=Commodity.ELECTRICITY)],
        manufacturer="Cariflex",
        model="simulated PV meter" if meter.kind == "pv" else "simulated site load meter",
    )


# --- control types and the RM handler -------------------------------------------------------------
# The dispatcher (simulator.transport) passes each handler the message and a ``Reply``, where
# s2-python's signatures say any message and an OK-only callback: hence ``Any`` on the overrides.


class FrbcControl(FRBCControlType):
    def __init__(self, rm: RmCallbacks) -> None:
        self.rm = rm

    async def handle_instruction(self, connection: S2AsyncConnection, msg: Any, send_okay: Any) -> None:
        await self.rm.on_instruction(msg, send_okay)

    async def activate(self, connection: S2AsyncConnection) -> None:
        await self.rm.on_frbc_activated()

    async def deactivate(self, connection: S2AsyncConnection) -> None:
        self.rm.on_frbc_deactivated()


class NoSelection(S2ControlType):
    """NO_SELECTION: the CEM does not control the device; the simulator then keeps it idle.
    s2-python has no such control type (its ``NoControlControlType`` is NOT_CONTROLABLE)."""

    def __init__(self, rm: RmCallbacks) -> None:
        self.rm = rm

    def get_protocol_control_type(self) -> ControlType:
        return ControlType.NO_SELECTION

    def register_handlers(self, connection: S2AsyncConnection) -> None:
        pass

    async def activate(self, connection: S2AsyncConnection) -> None:
        await self.rm.on_no_selection()

    async def deactivate(self, connection: S2AsyncConnection) -> None:
        pass


class NotControllable(NoControlControlType):
    """NOT_CONTROLABLE: a metered resource the CEM only reads; activation starts its reports."""

    def __init__(self, rm: MeterCallbacks) -> None:
        self.rm = rm

    async def activate(self, connection: S2AsyncConnection) -> None:
        await self.rm.on_metering_activated()

    async def deactivate(self, connection: S2AsyncConnection) -> None:
        self.rm.on_metering_deactivated()


class RmHandler(ResourceManagerHandler):
    """s2-python's RM handshake and control-type selection, refusing what it lets through: a
    Handshake from another role than CEM, a protocol version other than ours, a control type not
    offered (s2-python answers OK and then controls nothing); plus the handlers it lacks
    (RevokeObject, SessionRequest, and FRBC.Instruction before FRBC is active)."""

    def __init__(self, rm: RmCallbacks, control_types: list[S2ControlType], details: AssetDetails) -> None:
        super().__init__(control_types, details)
        self.rm = rm

    def register_handlers(self, connection: S2AsyncConnection) -> None:
        super().register_handlers(connection)
        # Registered up front: an instruction before FRBC is active must still get its status.
        connection.register_handler(FRBCInstruction, self._on_instruction)
        connection.register_handler(RevokeObject, self._on_revoke)
        connection.register_handler(SessionRequest, self._on_session_request)

    async def _on_handshake(self, connection: S2AsyncConnection, event: Any, send_okay: Any) -> None:
        if event.role != EnergyManagementRole.CEM:
            await send_okay.send(
                ReceptionStatusValues.INVALID_CONTENT, f"expected a CEM, not {event.role.value}"
            )
            return
        await super()._on_handshake(connection, event, send_okay)

    async def _on_handshake_response(self, connection: S2AsyncConnection, event: Any, send_okay: Any) -> None:
        if event.selected_protocol_version != S2_VERSION:
            await send_okay.send(
                ReceptionStatusValues.INVALID_CONTENT,
                f"protocol version {event.selected_protocol_version} not supported (only {S2_VERSION})",
            )
            await connection.stop()
            return
        await super()._on_handshake_response(connection, event, send_okay)

    async def _on_select_control_type(
        self, connection: S2AsyncConnection, event: Any, send_okay: Any
    ) -> None:
        offered = [c.get_protocol_control_type() for c in self._control_types]
        if event.control_type not in offered:
            await send_okay.send(
                ReceptionStatusValues.INVALID_CONTENT,
                f"control type {event.control_type.value} not offered (offered: "
                + ", ".join(c.value for c in offered)
                + ")",
            )
            return
        await super()._on_select_control_type(connection, event, send_okay)

    async def _on_instruction(
        self, connection: S2AsyncConnection, event: FRBCInstruction, send_okay: Reply
    ) -> None:
        await self.rm.on_instruction(event, send_okay)

    async def _on_revoke(self, connection: S2AsyncConnection, event: RevokeObject, send_okay: Reply) -> None:
        await self.rm.on_revoke(event, send_okay)

    async def _on_session_request(
        self, connection: S2AsyncConnection, event: SessionRequest, send_okay: Reply
    ) -> None:
        await send_okay()
        self.rm.on_session_request(event)
        await connection.stop()


# --- FRBC messages from the device's state --------------------------------------------------------


def system_description(device: SimDevice, now: datetime) -> FRBCSystemDescription:
    """The device's FRBC model, valid from ``now``, as a new message."""
    return device.model.description.model_copy(update={"message_id": uuid.uuid4(), "valid_from": now})


def storage_status(device: SimDevice) -> FRBCStorageStatus:
    return FRBCStorageStatus(message_id=uuid.uuid4(), present_fill_level=round(device.fill_level, 6))


def actuator_status(device: SimDevice) -> FRBCActuatorStatus:
    return FRBCActuatorStatus(
        message_id=uuid.uuid4(),
        actuator_id=device.actuator_id,
        active_operation_mode_id=device.mode_id,
        operation_mode_factor=device.factor,
        previous_operation_mode_id=device.previous_mode_id,
        transition_timestamp=device.transition_at,
    )


def power_measurement(device: SimDevice | SimMeter, now: datetime) -> PowerMeasurement:
    return PowerMeasurement(
        message_id=uuid.uuid4(),
        measurement_timestamp=now,
        values=[PowerValue(commodity_quantity=POWER, value=round(device.power_w, 3))],
    )


def timer_status(device: SimDevice, timer_id: uuid.UUID, finished_at: datetime) -> FRBCTimerStatus:
    return FRBCTimerStatus(
        message_id=uuid.uuid4(), timer_id=timer_id, actuator_id=device.actuator_id, finished_at=finished_at
    )
