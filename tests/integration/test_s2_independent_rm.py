"""An independent check of the CEM: a resource manager made only of s2-python's own RM machinery
(ResourceManagerHandler, FRBCControlType, S2AsyncConnection, WebsocketClientMedium), none of our
simulator's code, connects, reaches FRBC control, receives an instruction, and every message it
sends gets exactly one ReceptionStatus. It is paired like any device and presents its access token
through s2-python's own ``bearer_token`` (``Authorization: Bearer`` on the WebSocket upgrade).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import Counter

import pytest
from s2python.common import Commodity, CommodityQuantity, Duration, Role, RoleType
from s2python.connection.asset_details import AssetDetails
from s2python.connection.async_.connection import S2AsyncConnection
from s2python.connection.async_.control_type.class_based import FRBCControlType, ResourceManagerHandler
from s2python.connection.async_.medium.websocket import WebsocketClientMedium
from s2python.frbc import FRBCActuatorStatus, FRBCStorageStatus

from cariflex.fleet import Battery
from cariflex.s2.devices import battery_model
from cem.pairing import PairingStore
from cem.server import Cem

MODEL = battery_model(Battery("bat_09", 100.0, 50.0, 10.0, 95.0, 90.0))


class RecordingMedium(WebsocketClientMedium):
    """s2-python's websocket medium, keeping a copy of every frame in both directions."""

    def __init__(self, url: str, token: str):
        super().__init__(url, bearer_token=token)
        self.sent: list[dict] = []
        self.received: list[dict] = []

    async def send(self, message: str) -> None:
        self.sent.append(json.loads(message))
        await super().send(message)

    async def messages(self):
        async for message in super().messages():
            self.received.append(json.loads(message))
            yield message


class Frbc(FRBCControlType):
    """Only what s2-python asks of an FRBC resource manager."""

    def __init__(self) -> None:
        self.instructions: list = []

    async def handle_instruction(self, connection, msg, send_okay) -> None:
        self.instructions.append(msg)
        await send_okay()

    async def activate(self, connection) -> None:
        await connection.send_msg_and_await_reception_status(MODEL.description)
        await connection.send_msg_and_await_reception_status(
            FRBCStorageStatus(message_id=uuid.uuid4(), present_fill_level=42.0)
        )
        await connection.send_msg_and_await_reception_status(
            FRBCActuatorStatus(
                message_id=uuid.uuid4(),
                actuator_id=MODEL.actuator.id,
                active_operation_mode_id=MODEL.mode("idle").id,
                operation_mode_factor=0.0,
            )
        )

    async def deactivate(self, connection) -> None:
        return None


async def wait_for(predicate, timeout: float = 10.0) -> None:
    async def poll() -> None:
        while not predicate():
            await asyncio.sleep(0.02)

    await asyncio.wait_for(poll(), timeout)


def test_an_s2_python_resource_manager_is_controlled_by_the_cem(tmp_path):
    async def scenario() -> None:
        pairings = PairingStore(tmp_path)
        token = pairings.pair("bat_09")
        cem = Cem(port=0, pairings=pairings)
        await cem.start()
        medium = RecordingMedium(f"ws://127.0.0.1:{cem.port}/s2", token)
        control = Frbc()
        handler = ResourceManagerHandler(
            control_types=[control],
            asset_details=AssetDetails(
                resource_id=uuid.uuid4(),
                name="bat_09",
                provides_forecast=False,
                provides_power_measurements=[CommodityQuantity.ELECTRIC_POWER_3_PHASE_SYMMETRIC],
                instruction_processing_delay=Duration(100),
                roles=[Role(role=RoleType.ENERGY_STORAGE, commodity=Commodity.ELECTRICITY)],
            ),
        )
        await medium.connect()
        connection = S2AsyncConnection(medium=medium)
        handler.register_handlers(connection)
        running = asyncio.create_task(connection.run())
        try:
            await wait_for(lambda: "bat_09" in cem.devices and cem.devices["bat_09"].controllable)
            result = await cem.apply_setpoint("bat_09", -20)
            await wait_for(lambda: control.instructions)
            instruction = control.instructions[0]
            assert instruction.operation_mode == MODEL.mode("discharge").id
            assert instruction.operation_mode_factor == pytest.approx(0.6)
            assert result.expected_w == pytest.approx(-20000)

            sent_ids = [m["message_id"] for m in medium.sent if m["message_type"] != "ReceptionStatus"]
            await wait_for(
                lambda: all(any(r.get("subject_message_id") == i for r in medium.received) for i in sent_ids)
            )
            statuses = Counter(
                r["subject_message_id"] for r in medium.received if r["message_type"] == "ReceptionStatus"
            )
            assert {i: statuses[i] for i in sent_ids} == {i: 1 for i in sent_ids}
            assert all(r["status"] == "OK" for r in medium.received if r["message_type"] == "ReceptionStatus")
            assert len(sent_ids) >= 5  # handshake, details, description, storage and actuator status
        finally:
            await connection.stop()
            await asyncio.wait_for(running, 10)
            await medium.disconnect()
            await cem.stop()

    asyncio.run(scenario())
