"""S2 as processes: the VEN's CEM and `cariflex-sim` (20 resource managers under FRBC, 11 meters:
the PV sites and the base load, NOT_CONTROLABLE) over loopback WebSockets, with setpoints from
`cariflex-ven setpoint` and a load-control event from the VTN, held on the metered net import. The
devices are paired with `cariflex-ven pair --all --token-file` first, as the demo does; impostors
are refused.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import uuid
from datetime import UTC, datetime

import pytest
from s2python.common import EnergyManagementRole, Handshake
from s2python.version import S2_VERSION
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from cariflex.fleet import load_fleet
from cariflex.s2.credentials import read_tokens
from tests.helpers.openadr_harness import (
    BIN,
    LoggedProcess,
    VenProcess,
    VtnProcess,
    base_env,
    pair_simulator,
    wait_until,
)
from tests.helpers.s2 import details
from vtn.events import SITE_TZ

FLEET = load_fleet()
DEVICES = [d.name for d in (*FLEET.batteries, *FLEET.ev_chargers)]
METERS = [pv.name for pv in FLEET.pv] + ["site_load"]


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    folder = tmp_path_factory.mktemp("s2")
    parts: dict = {"folder": folder}
    try:
        parts["vtn"] = vtn = VtnProcess(folder / "vtn", f"sqlite:///{folder / 'vtn.sqlite'}").start()
        vtn.cli("ven", "add", "cariflex-ven")
        # FlexMeasures is not needed here: measurements simply wait in the VEN's outbox.
        parts["ven"] = ven = VenProcess(folder / "ven", vtn.url, "http://127.0.0.1:9").start()
        started = wait_until(lambda: ven.logged("ven started"), 60, "the VEN")[0]
        parts["url"] = url = f"ws://127.0.0.1:{started['s2_port']}/s2"
        parts["tokens"] = tokens = folder / "sim" / "s2_tokens.json"
        pair_simulator(ven.env, tokens)
        parts["sim"] = LoggedProcess(
            [
                *(str(BIN / "cariflex-sim"), "run", "--s2-url", url, "--measure-seconds", "1"),
                *("--token-file", str(tokens)),
            ],
            base_env(folder / "sim"),
        ).start()
        yield parts
    finally:
        for name in ("sim", "ven", "vtn"):  # the current ones: a test may have replaced the simulator
            if name in parts:
                parts[name].stop()


def s2_status(ven: VenProcess) -> dict:
    return ven.status()["s2"]


def device(ven: VenProcess, name: str) -> dict:
    return s2_status(ven).get("devices", {}).get(name, {})


def setpoint(ven: VenProcess, name: str, kw: float) -> None:
    subprocess.run(
        [str(BIN / "cariflex-ven"), "setpoint", name, str(kw)],
        env=ven.env,
        check=True,
        capture_output=True,
        timeout=60,
    )


def test_twenty_resource_managers_reach_frbc_control(chain):
    status = wait_until(lambda: (s := s2_status(chain["ven"])).get("under_frbc") == 20 and s, 60, "20 RMs")
    assert sorted(status["devices"]) == sorted(DEVICES)


def test_the_pv_sites_and_the_base_load_are_metered(chain):
    """The 11 meters pair and connect like the devices, are not under FRBC, and give the site's
    figure: base load − PV as measured (S2 sign in ``meters``: a producing PV site is negative)."""
    status = wait_until(
        lambda: (s := s2_status(chain["ven"])).get("site_source") == "measured" and s, 60, "the meters"
    )
    assert sorted(status["meters"]) == sorted(METERS) and all(
        m["connected"] for m in status["meters"].values()
    )
    assert all(m["power_kw"] <= 0 for name, m in status["meters"].items() if name != "site_load")
    assert status["base_load_kw"] == status["meters"]["site_load"]["power_kw"] > 0
    assert status["site_kw"] == pytest.approx(status["base_load_kw"] - status["pv_kw"], abs=0.01)
    assert status["under_frbc"] <= 20 and not set(status["devices"]) & set(METERS)


def test_a_setpoint_is_obeyed_within_one_percent(chain):
    ven = chain["ven"]
    wait_until(lambda: s2_status(ven).get("under_frbc") == 20, 60, "20 RMs")
    setpoint(ven, "bat_03", 30)
    setpoint(ven, "ev_04", -15)
    got = wait_until(
        lambda: (p := device(ven, "bat_03").get("power_kw")) is not None and abs(p - 30) <= 0.3 and p,
        30,
        "bat_03 at 30 kW",
    )
    assert got == pytest.approx(30, rel=0.01)
    got = wait_until(
        lambda: (p := device(ven, "ev_04").get("power_kw")) is not None and abs(p + 15) <= 0.15 and p,
        30,
        "ev_04 at -15 kW",
    )
    assert got == pytest.approx(-15, rel=0.01)


def test_load_control_at_60_percent_caps_the_fleet_import(chain):
    ven, vtn = chain["ven"], chain["vtn"]
    wait_until(lambda: s2_status(ven).get("under_frbc") == 20, 60, "20 RMs")
    for name in DEVICES:
        setpoint(ven, name, 50 if name.startswith("bat") else 22)  # 720 kW wanted > 600 kW site capacity
    start = datetime.now(UTC).astimezone(SITE_TZ).replace(minute=0, second=0, microsecond=0)
    response = vtn.admin(
        "POST",
        "/events/load-control",
        {"start": start.isoformat(), "duration": "PT2H", "levels": [0.6], "allow_past": True},
    )
    assert response.status_code == 201, response.text
    cap = 0.6 * FLEET.site.capacity_kw

    status = wait_until(
        lambda: (s := s2_status(ven)).get("cap_kw") == pytest.approx(cap) and s, 30, "the cap"
    )
    # The cap holds on the net import at the connection: fleet + base load − PV, as metered.
    status = wait_until(
        lambda: (
            (s := s2_status(ven)).get("site_source") == "measured"
            and s.get("net_import_kw") is not None
            and s["net_import_kw"] <= cap * 1.01
            and s
        ),
        30,
        f"the net import under {cap} kW",
    )
    assert status["net_import_kw"] == pytest.approx(status["fleet_kw"] + status["site_kw"], abs=0.01)
    assert status["shortfall_kw"] == 0
    vtn.admin("POST", f"/events/{response.json()['event_id']}/cancel")
    wait_until(lambda: s2_status(ven).get("cap_kw") is None, 30, "the cap lifted")


def test_a_resource_manager_that_reconnects_keeps_its_state(chain):
    ven = chain["ven"]
    wait_until(lambda: s2_status(ven).get("under_frbc") == 20, 60, "20 RMs")
    sim = chain["sim"]
    sim.kill()
    wait_until(lambda: s2_status(ven).get("connected") == 0, 30, "all RMs gone")
    assert device(ven, "bat_01").get("fill_kwh") is not None  # the CEM kept what it knew
    chain["sim"] = LoggedProcess(sim.command, sim.env).start()
    wait_until(lambda: s2_status(ven).get("under_frbc") == 20, 60, "all RMs back under control")


def test_status_shows_the_s2_fleet(chain):
    out = subprocess.run(
        [str(BIN / "cariflex-ven"), "status"],
        env=chain["ven"].env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert "device(s) under FRBC control" in out
    assert "site: net import " in out and "metered: PV " in out and "base load " in out
    assert json.loads(
        subprocess.run(
            [str(BIN / "cariflex-ven"), "status", "--json"],
            env=chain["ven"].env,
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout
    )["s2"]["devices"]


def test_impostors_are_refused_and_logged_and_the_real_device_keeps_obeying(chain):
    ven, sim = chain["ven"], chain["sim"]
    wait_until(lambda: s2_status(ven).get("under_frbc") == 20, 60, "20 RMs")
    ev_01_token = read_tokens(chain["tokens"])["ev_01"]

    async def impostor(token: str | None) -> tuple[int, str]:
        headers = {"Authorization": f"Bearer {token}"} if token else None
        async with connect(chain["url"], additional_headers=headers) as ws:
            try:
                await ws.send(
                    Handshake(
                        message_id=uuid.uuid4(),
                        role=EnergyManagementRole.RM,
                        supported_protocol_versions=[S2_VERSION],
                    ).to_json()
                )
                await ws.send(details("bat_01").to_json())
                async with asyncio.timeout(10):
                    while True:
                        await ws.recv()
            except ConnectionClosed:
                pass
            return ws.protocol.close_code, ws.protocol.close_reason

    assert asyncio.run(impostor(None)) == (4401, "not paired: no access token (Authorization: Bearer)")
    code, reason = asyncio.run(impostor(ev_01_token))  # a real token, of another device
    assert code == 4403 and "ev_01" in reason
    logged = wait_until(
        lambda: len(ven.logged("s2 connection refused")) >= 2 and ven.logged("s2 connection refused"),
        10,
        "the refusals in the VEN's log",
    )
    assert [line["code"] for line in logged[-2:]] == [4401, 4403]
    assert logged[-1]["named_device"] == "bat_01" and logged[-1]["token_device"] == "ev_01"
    # the real bat_01 and ev_01 were never disconnected and still obey
    assert not sim.logged("cem refused this device") and not sim.logged(
        "cem took a newer connection of this device"
    )
    setpoint(ven, "bat_01", -20)
    wait_until(
        lambda: (p := device(ven, "bat_01").get("power_kw")) is not None and abs(p + 20) <= 0.2,
        30,
        "bat_01 at -20 kW",
    )
    assert s2_status(ven).get("under_frbc") == 20
