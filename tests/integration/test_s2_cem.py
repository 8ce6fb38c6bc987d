"""The S2 CEM over a real loopback WebSocket, driven message by message like a resource manager.

Each bad message must get exactly one ReceptionStatus with the right status, change nothing, and
leave the connection open (the next good message is answered OK). The RM is paired (bat_07) and
presents its token; pairing itself is tested in test_s2_pairing.py.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import uuid
from datetime import UTC, datetime

import pytest
from s2python.common import (
    Commodity,
    CommodityQuantity,
    ControlType,
    EnergyManagementRole,
    Handshake,
    ResourceManagerDetails,
    Role,
    RoleType,
)
from s2python.frbc import FRBCActuatorStatus, FRBCInstruction, FRBCStorageStatus
from s2python.version import S2_VERSION
from websockets.asyncio.client import connect

from cariflex.fleet import Battery
from cariflex.s2.devices import battery_model
from cem.pairing import PairingStore
from cem.server import Cem

MODEL = battery_model(Battery("bat_07", 100.0, 50.0, 10.0, 95.0, 90.0))


class FakeRm:
    """A bare WebSocket peer: sends what the test says, collects every reply."""

    def __init__(self, ws):
        self.ws = ws
        self.inbox: list[dict] = []

    async def send(self, message) -> None:
        await self.ws.send(message if isinstance(message, str) else message.to_json())

    async def expect(self, message_type: str, timeout: float = 5.0) -> dict:
        async def next_of_type() -> dict:
            while True:
                for item in self.inbox:
                    if item["message_type"] == message_type:
                        self.inbox.remove(item)
                        return item
                self.inbox.append(json.loads(await self.ws.recv()))

        return await asyncio.wait_for(next_of_type(), timeout)

    async def status_for(self, message_id) -> dict:
        status = await self.expect("ReceptionStatus")
        assert status["subject_message_id"] == str(message_id)
        return status


async def connected_rm(cem: Cem) -> tuple[FakeRm, object]:
    token = TOKENS[cem.pairings.path]
    ws = await connect(
        f"ws://127.0.0.1:{cem.port}/s2", additional_headers={"Authorization": f"Bearer {token}"}
    )
    rm = FakeRm(ws)
    hello = Handshake(
        message_id=uuid.uuid4(), role=EnergyManagementRole.RM, supported_protocol_versions=[S2_VERSION]
    )
    await rm.send(hello)
    assert (await rm.status_for(hello.message_id))["status"] == "OK"
    assert (await rm.expect("HandshakeResponse"))["selected_protocol_version"] == S2_VERSION
    details = ResourceManagerDetails(
        message_id=uuid.uuid4(),
        resource_id=uuid.uuid4(),
        name="bat_07",
        roles=[Role(role=RoleType.ENERGY_STORAGE, commodity=Commodity.ELECTRICITY)],
        instruction_processing_delay=100,
        available_control_types=[ControlType.FILL_RATE_BASED_CONTROL],
        provides_forecast=False,
        provides_power_measurement_types=[CommodityQuantity.ELECTRIC_POWER_3_PHASE_SYMMETRIC],
    )
    await rm.send(details)
    assert (await rm.status_for(details.message_id))["status"] == "OK"
    assert (await rm.expect("SelectControlType"))["control_type"] == "FILL_RATE_BASED_CONTROL"
    return rm, ws


def run(coro):
    return asyncio.run(coro)


TOKENS = {}  # pairing file -> bat_07's token


async def with_cem(test):
    with tempfile.TemporaryDirectory() as state:
        store = PairingStore(state)
        TOKENS[store.path] = store.pair("bat_07")
        cem = Cem(port=0, pairings=store)
        await cem.start()
        try:
            await test(cem)
        finally:
            await cem.stop()


def test_handshake_control_type_and_a_setpoint_become_an_instruction():
    async def test(cem: Cem):
        rm, ws = await connected_rm(cem)
        await rm.send(MODEL.description)
        await rm.status_for(MODEL.description.message_id)
        storage = FRBCStorageStatus(message_id=uuid.uuid4(), present_fill_level=42.0)
        await rm.send(storage)
        await rm.status_for(storage.message_id)
        result = await cem.apply_setpoint("bat_07", 30)
        instruction = await rm.expect("FRBC.Instruction")
        assert instruction["operation_mode"] == str(MODEL.mode("charge").id)
        assert instruction["operation_mode_factor"] == pytest.approx(0.6)
        assert result.expected_w == pytest.approx(30000)
        await ws.close()

    run(with_cem(test))


@pytest.mark.parametrize(
    "raw, status",
    [
        ("{not json", "INVALID_DATA"),
        (json.dumps({"message_type": "FRBC.Nonsense", "message_id": str(uuid.uuid4())}), "INVALID_DATA"),
        (
            json.dumps(
                {"message_type": "FRBC.StorageStatus", "message_id": "storage-1", "present_fill_level": 5}
            ),
            "INVALID_DATA",
        ),  # not a UUID
        (
            json.dumps(
                {
                    "message_type": "FRBC.ActuatorStatus",
                    "message_id": str(uuid.uuid4()),
                    "actuator_id": str(uuid.uuid4()),
                    "active_operation_mode_id": str(uuid.uuid4()),
                    "operation_mode_factor": 0.5,
                    "transition_timestamp": "2026-11-24T10:00:00",
                }
            ),
            "INVALID_DATA",
        ),  # naive timestamp
    ],
)
def test_unparsable_messages_get_invalid_data_and_change_nothing(raw, status):
    async def test(cem: Cem):
        rm, ws = await connected_rm(cem)
        await rm.send(MODEL.description)
        await rm.status_for(MODEL.description.message_id)
        before = cem.devices["bat_07"].fill_level
        await rm.send(raw)
        reply = await rm.expect("ReceptionStatus")
        assert reply["status"] == status and reply["diagnostic_label"]
        assert cem.devices["bat_07"].fill_level == before
        good = FRBCStorageStatus(message_id=uuid.uuid4(), present_fill_level=55.0)
        await rm.send(good)  # the connection is still usable
        assert (await rm.status_for(good.message_id))["status"] == "OK"
        await ws.close()

    run(with_cem(test))


def test_overlapping_fill_ranges_and_unknown_actuators_are_refused():
    async def test(cem: Cem):
        rm, ws = await connected_rm(cem)
        description = json.loads(MODEL.description.to_json())
        charge = next(
            m for m in description["actuators"][0]["operation_modes"] if m["diagnostic_label"] == "charge"
        )
        charge["elements"][1]["fill_level_range"]["start_of_range"] = 80.0  # overlaps 0..90
        description["message_id"] = str(uuid.uuid4())
        await rm.send(json.dumps(description))
        reply = await rm.expect("ReceptionStatus")
        assert reply["status"] in ("INVALID_DATA", "INVALID_CONTENT") and reply["diagnostic_label"]
        assert cem.devices["bat_07"].description is None

        await rm.send(MODEL.description)
        await rm.status_for(MODEL.description.message_id)
        wrong = FRBCActuatorStatus(
            message_id=uuid.uuid4(),
            actuator_id=uuid.uuid4(),
            active_operation_mode_id=MODEL.mode("idle").id,
            operation_mode_factor=0.0,
        )
        await rm.send(wrong)
        reply = await rm.status_for(wrong.message_id)
        assert reply["status"] == "INVALID_CONTENT" and "unknown actuator" in reply["diagnostic_label"]
        assert cem.devices["bat_07"].active_mode is None
        await ws.close()

    run(with_cem(test))


def test_messages_only_a_cem_sends_are_refused_from_an_rm():
    async def test(cem: Cem):
        rm, ws = await connected_rm(cem)
        instruction = FRBCInstruction(
            message_id=uuid.uuid4(),
            id=uuid.uuid4(),
            actuator_id=uuid.uuid4(),
            operation_mode=uuid.uuid4(),
            operation_mode_factor=1.5,
            execution_time=datetime.now(UTC),
            abnormal_condition=False,
        )
        await rm.send(instruction)
        reply = await rm.status_for(instruction.message_id)
        assert (
            reply["status"] == "INVALID_CONTENT"
            and "does not accept FRBC.Instruction" in reply["diagnostic_label"]
        )
        await ws.close()

    run(with_cem(test))


def test_state_survives_a_reconnection():
    async def test(cem: Cem):
        rm, ws = await connected_rm(cem)
        await rm.send(MODEL.description)
        await rm.status_for(MODEL.description.message_id)
        await ws.close()
        for _ in range(100):
            if not cem.devices["bat_07"].connected:
                break
            await asyncio.sleep(0.01)
        assert not cem.devices["bat_07"].connected and cem.devices["bat_07"].description is not None
        rm, ws = await connected_rm(cem)
        assert cem.devices["bat_07"].connected
        await ws.close()

    run(with_cem(test))
