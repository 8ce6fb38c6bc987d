"""The S2 CEM's edge in the fuzz campaign (tests/helpers/fuzzing.py): frames from a paired device, mutated.

One CEM (our ``cem.server.Cem`` on a real WebSocket over loopback) and one paired raw
client for bat_09, kept open across every case. For each frame: exactly one ReceptionStatus
(none for a ReceptionStatus, which S2 does not acknowledge), the connection stays open (the next
message is answered OK), and a refused frame changes nothing the CEM knows of the device.
"""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st
from s2python.common import (
    CommodityQuantity,
    EnergyManagementRole,
    Handshake,
    PowerMeasurement,
    PowerValue,
)
from s2python.frbc import FRBCActuatorStatus, FRBCStorageStatus
from s2python.version import S2_VERSION
from websockets.asyncio.client import connect

from cariflex.json_input import JsonInputError, load_json
from cem.pairing import PairingStore
from cem.server import Cem
from tests.helpers.fuzzing import campaign, dumps, mutated, raw_variant, tally
from tests.helpers.s2 import CONTROLLABLE, details

DEVICE = "bat_09"
THREE_PHASE = CommodityQuantity.ELECTRIC_POWER_3_PHASE_SYMMETRIC
NOW = datetime(2026, 12, 5, 12, tzinfo=UTC)
VALID = [
    json.loads(FRBCStorageStatus(message_id=uuid.uuid4(), present_fill_level=70.0).to_json()),
    json.loads(
        PowerMeasurement(
            message_id=uuid.uuid4(),
            measurement_timestamp=NOW,
            values=[
                PowerValue(
                    commodity_quantity=CommodityQuantity.ELECTRIC_POWER_3_PHASE_SYMMETRIC, value=1500.0
                )
            ],
        ).to_json()
    ),
    json.loads(
        FRBCActuatorStatus(
            message_id=uuid.uuid4(),
            actuator_id=uuid.uuid4(),
            active_operation_mode_id=uuid.uuid4(),
            operation_mode_factor=0.5,
        ).to_json()
    ),
]


class Link:
    """The CEM and one paired RM connection, on an asyncio loop in a background thread."""

    def __init__(self, folder):
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        self.folder = folder
        self.run(self._open())

    def run(self, coro, timeout: float = 30):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _open(self) -> None:
        store = PairingStore(self.folder)
        token = store.pair(DEVICE)
        self.cem = Cem(port=0, pairings=store, fleet=CONTROLLABLE)
        await self.cem.start()
        self.ws = await connect(self.cem.url, additional_headers={"Authorization": f"Bearer {token}"})
        hello = Handshake(
            message_id=uuid.uuid4(), role=EnergyManagementRole.RM, supported_protocol_versions=[S2_VERSION]
        )
        await self.ws.send(hello.to_json())
        await self.status_for(str(hello.message_id))
        named = details(DEVICE)
        await self.ws.send(named.to_json())
        assert (await self.status_for(str(named.message_id)))["status"] == "OK"

    async def status_for(self, subject: str | None, timeout: float = 10) -> dict:
        """The next ReceptionStatus (for ``subject`` when given); other CEM messages are skipped."""
        async with asyncio.timeout(timeout):
            while True:
                message = json.loads(await self.ws.recv())
                if message.get("message_type") == "ReceptionStatus" and (
                    subject is None or message.get("subject_message_id") == subject
                ):
                    return message

    async def exchange(self, frame: str) -> tuple[list[dict], dict]:
        """Send ``frame`` then a good message; the statuses before the good one's, and the good one's."""
        await self.ws.send(frame)
        sentinel = FRBCStorageStatus(message_id=uuid.uuid4(), present_fill_level=50.0)
        before: list[dict] = []

        async def collect() -> dict:
            while True:
                status = await self.status_for(None)
                if status.get("subject_message_id") == str(sentinel.message_id):
                    return status
                before.append(status)

        task = asyncio.ensure_future(collect())
        await self.ws.send(sentinel.to_json())
        good = await asyncio.wait_for(task, 10)
        return before, good

    def close(self) -> None:
        async def close() -> None:
            await self.ws.close()
            await self.cem.stop()

        self.run(close())
        self.loop.call_soon_threadsafe(self.loop.stop)


@pytest.fixture(scope="module")
def link(tmp_path_factory):
    link = Link(tmp_path_factory.mktemp("s2-fuzz"))
    yield link
    link.close()


def _snapshot(link: Link) -> tuple:
    state = link.cem.devices[DEVICE]
    return state.fill_level, state.power_w, state.active_mode, state.factor, state.connected


@pytest.mark.fuzz("s2_cem")
@campaign(1.0)
@given(
    case=st.one_of(*(mutated(message) for message in VALID)),
    damage=st.one_of(st.none(), st.sampled_from(VALID).map(json.dumps).flatmap(raw_variant)),
)
def test_fuzz_s2_frames(link, case, damage):
    frame = damage if damage is not None else dumps(case[0])
    before_state = link.run(_stable_snapshot(link))
    statuses, good = link.run(link.exchange(frame))
    assert good["status"] == "OK", good  # the connection is open and still works
    try:
        document = load_json(frame)
    except JsonInputError:
        document = None
    is_reception_status = isinstance(document, dict) and document.get("message_type") == "ReceptionStatus"
    assert len(statuses) == (0 if is_reception_status else 1), (frame[:200], statuses)
    refused = bool(statuses) and statuses[0]["status"] != "OK"
    tally("s2_cem", refused or is_reception_status)
    if refused:
        assert statuses[0].get("diagnostic_label"), statuses[0]  # says what is wrong
        # the good message set fill level 50 and nothing else; a refused frame left the rest alone
        after = _snapshot(link)
        assert after[1:] == before_state[1:], (frame[:200], before_state, after)


async def _stable_snapshot(link: Link) -> tuple:
    return _snapshot(link)
