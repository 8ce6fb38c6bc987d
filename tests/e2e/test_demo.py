"""`make demo` end to end: embedded database, its own Redis with an RQ worker, migrations, setup,
admin, server, clean stop."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import requests
from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from rq import Queue
from rq.job import Job

from tests.helpers.common import free_port
from tests.helpers.openadr_harness import wait_until

BIN = Path(sys.executable).parent


def read_lines(stream, into: queue.Queue) -> None:
    for line in stream:
        into.put(line)


def wait_for(lines: queue.Queue, pattern: str, timeout_s: float, seen: list[str]) -> re.Match:
    regex = re.compile(pattern)
    while True:
        try:
            line = lines.get(timeout=timeout_s)
        except queue.Empty:
            raise AssertionError(f"no line matching {pattern!r}; output:\n{''.join(seen[-40:])}") from None
        seen.append(line)
        if match := regex.search(line):
            return match


def test_demo_serves_the_site_and_stops_cleanly(tmp_path):
    port, vtn_port, vtn_admin_port = free_port(), free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CARIFLEX_", "SQLALCHEMY_"))}
    env.update(
        CARIFLEX_VAR_DIR=str(tmp_path / "var"),  # no database URL: the embedded server is used
        CARIFLEX_FM_BIND=f"127.0.0.1:{port}",
        CARIFLEX_VTN_PORT=str(vtn_port),
        CARIFLEX_VTN_ADMIN_PORT=str(vtn_admin_port),
        CARIFLEX_S2_PORT=str(free_port()),
        CARIFLEX_ENV_FILE=str(tmp_path / "no.env"),
    )
    demo = subprocess.Popen(
        [str(BIN / "cariflex-demo")],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=read_lines, args=(demo.stdout, lines), daemon=True).start()
    seen: list[str] = []
    try:
        password = wait_for(lines, r"Admin created: admin@cariflex.example  password: (\S+)", 240, seen)[1]
        assert (tmp_path / "var" / "admin_password").read_text().strip() == password
        wait_for(lines, rf"Cariflex EMS is running: http://127.0.0.1:{port}", 240, seen)
        base = f"http://127.0.0.1:{port}"
        console = wait_for(
            lines, r"Operator console: (\S+)  \(log in as operator, password in (\S+)\)", 30, seen
        )
        assert console[1] == f"http://127.0.0.1:{vtn_admin_port}/console/"
        assert console[2] == str(tmp_path / "var" / "vtn_operator_password")
        ingest_health = wait_for(lines, r"cariflex-ingest health --url (\S+)\)", 30, seen)[1]

        # Its own Redis under var/ (not the machine's 6379), with the compose stack's worker on it,
        # which runs a job put on FlexMeasures' scheduling queue.
        conf = (tmp_path / "var" / "redis" / "redis.conf").read_text()
        assert oct((tmp_path / "var" / "redis" / "redis.conf").stat().st_mode & 0o777) == "0o600"
        redis_port = int(re.search(r"^port (\d+)$", conf, re.M)[1])
        redis_password = re.search(r"^requirepass (\S+)$", conf, re.M)[1]
        redis_url = f"redis://:{redis_password}@127.0.0.1:{redis_port}/0"
        assert redis_port != 6379 and "bind 127.0.0.1" in conf

        def worker_health() -> subprocess.CompletedProcess:
            return subprocess.run(
                [sys.executable, "-m", "operations.launch", "worker-health"],
                env={**env, "CARIFLEX_REDIS_URL": redis_url},
                capture_output=True,
                text=True,
                timeout=60,
            )

        wait_until(lambda: worker_health().returncode == 0, 120, "the demo's RQ worker", interval=1)
        connection = Redis.from_url(redis_url)
        job = Queue("scheduling", connection=connection).enqueue(
            "flexmeasures_cariflex.data.services.replan.replan_job", job_timeout=180
        )
        wait_until(
            lambda: job.get_status(refresh=True) in ("finished", "failed"), 180, "the worker to run the job"
        )
        assert job.get_status() == "finished", job.latest_result()

        token = requests.post(
            f"{base}/api/requestAuthToken",
            json={"email": "admin@cariflex.example", "password": password},
            timeout=30,
        ).json()["auth_token"]
        auth = {"Authorization": token}
        assets = requests.get(
            f"{base}/api/v3_0/assets",
            headers=auth,
            params={"all_accessible": "true"},
            timeout=30,
        ).json()
        site = next(a for a in assets if a["name"] == "Cariflex site")
        children = [a for a in assets if a.get("parent_asset_id") == site["id"]]
        names = sorted(a["name"] for a in children)
        assert sum(n.startswith("pv_") for n in names) == 10
        assert sum(n.startswith("bat_") for n in names) == 10
        assert sum(n.startswith("ev_") for n in names) == 10

        session = requests.Session()
        page = session.get(f"{base}/login", timeout=30).text
        csrf = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page)[1]
        login = session.post(
            f"{base}/login",
            data={"email": "admin@cariflex.example", "password": password, "csrf_token": csrf},
            timeout=30,
        )
        assert login.url.endswith("/dashboard"), login.url

        # The VTN runs beside it, with the bridge's VEN provisioned.
        vtn_admin = f"http://127.0.0.1:{vtn_admin_port}"
        assert requests.get(f"{vtn_admin}/health", timeout=30).json()["status"] == "ok"
        token = (tmp_path / "var" / "vtn_admin_token").read_text().strip()
        vens = requests.get(
            f"{vtn_admin}/vens", headers={"Authorization": f"Bearer {token}"}, timeout=30
        ).json()
        assert [v["ven_name"] for v in vens] == ["cariflex-ven"]

        # The VEN bridge registers with it.
        def ven_registered() -> bool:
            listed = requests.get(
                f"{vtn_admin}/vens", headers={"Authorization": f"Bearer {token}"}, timeout=30
            )
            return listed.json()[0]["registered"]

        wait_until(ven_registered, 60, "the VEN bridge to register")

        # The operator console: the printed login works and shows that VEN with the site's capacity.
        browser = requests.Session()
        form = browser.get(console[1], timeout=30)
        browser.post(
            f"{vtn_admin}/console/login",
            data={
                "csrf_token": re.search(r'name="csrf_token" value="([^"]+)"', form.text)[1],
                "name": "operator",
                "password": (tmp_path / "var" / "vtn_operator_password").read_text().strip(),
            },
            timeout=30,
        )
        page = browser.get(f"{vtn_admin}/console/vens", timeout=30)
        assert page.url.endswith("/console/vens") and "cariflex-ven" in page.text, page.text[:500]
        assert "registered 20" in page.text and "600 kW" in page.text

        # The simulated devices come under the VEN's S2 control.
        def ven_status() -> dict:
            status = subprocess.run(
                [str(BIN / "cariflex-ven"), "status", "--json"],
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            return json.loads(status.stdout)

        wait_until(
            lambda: ven_status().get("s2", {}).get("under_frbc") == 20,
            60,
            "20 simulated devices under FRBC control",
        )
        # ... because the demo paired them: hashes in the VEN's state, tokens for the simulator only
        # (and its meters: 10 PV sites and the base load)
        pairings = json.loads((tmp_path / "var" / "ven" / "s2_pairings.json").read_text())
        assert len(pairings["devices"]) == 31
        assert oct((tmp_path / "var" / "sim" / "s2_tokens.json").stat().st_mode & 0o777) == "0o600"

        # The site's meters report: `cariflex-ven status` shows PV, base load, fleet and net import.
        wait_until(
            lambda: ven_status()["s2"].get("site_source") == "measured", 60, "the site's measured figures"
        )
        shown = subprocess.run(
            [str(BIN / "cariflex-ven"), "status"], env=env, capture_output=True, text=True, timeout=60
        ).stdout
        assert re.search(r"site: net import -?[\d.]+ kW = fleet -?[\d.]+ kW \(measured\) \+ base load", shown)
        assert "(measured by the site's meters)" in shown, shown
        assert re.search(r"metered: PV [\d.]+ kW, base load [\d.]+ kW \(11 of 11 meter\(s\)", shown), shown

        # Today's prices reach FlexMeasures, which plans the fleet; the devices follow the schedule.
        wait_until(lambda: ven_status()["schedule"].get("version"), 120, "a fleet schedule at the VEN")
        wait_until(
            lambda: (
                sum(d.get("setpoint_kw") is not None for d in ven_status()["s2"]["devices"].values()) == 20
            ),
            60,
            "every device following the schedule",
        )

        # Weather (Open-Meteo is unreachable here: the synthetic model, said so) with PV power, and
        # the production price, filled by the demo's hourly refresh.
        for pattern in (r"Weather from (Open-Meteo|Simulator), .*pv_10_power", r"Production price for"):
            if not any(re.search(pattern, line) for line in seen):
                wait_for(lines, pattern, 180, seen)

        # FlexMeasures' own scheduling: a trigger on the site with just a start and a duration is
        # run by the demo's worker, through the Cariflex scheduler (issue 21).
        site_id = site["id"]
        start = datetime.now(UTC).replace(second=0, microsecond=0)
        start = start.replace(minute=start.minute // 15 * 15) + timedelta(minutes=15)
        trigger = requests.post(
            f"{base}/api/v3_0/assets/{site_id}/schedules/trigger",
            headers=auth,
            json={"start": start.isoformat(), "duration": "PT2H"},
            timeout=60,
        )
        assert trigger.status_code in (200, 202), trigger.text
        fm_job = Job.fetch(trigger.json().get("job") or trigger.json()["schedule"], connection=connection)
        wait_until(
            lambda: fm_job.get_status(refresh=True) in ("finished", "failed"), 180, "FlexMeasures' job"
        )
        assert fm_job.get_status() == "finished", fm_job.latest_result()

        # The site's meters publish over MQTT (the demo's own Mosquitto) and the ingestion service
        # stores their readings (issue 22): 11 meters, one reading a second each.
        def ingested() -> int:
            try:
                return requests.get(ingest_health, timeout=5).json().get("accepted", 0)
            except requests.RequestException:
                return 0

        wait_until(lambda: ingested() >= 22, 120, "meter readings stored by the ingestion service")
        assert requests.get(ingest_health, timeout=5).json()["refused"] == 0
    finally:
        demo.send_signal(signal.SIGTERM)
        exit_code = demo.wait(timeout=60)
    assert exit_code == 0, "".join(seen[-40:])
    # The embedded server stopped with the demo, and so did its Redis.
    assert not (tmp_path / "var" / "pgdata" / "postmaster.pid").exists()
    try:
        connection.ping()
        raise AssertionError("the demo's Redis outlived it")
    except RedisConnectionError:
        pass
