"""Every benchmark runs as the README says, in its smoke mode, and prints its one JSON line.

No timing is asserted here (speed is what the full runs measure, on a quiet machine); what a
user would notice is a benchmark that no longer runs, or prints something a script cannot read.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.common import ROOT

BENCHMARKS = sorted(
    p.name for p in (ROOT / "bench").glob("*.py") if p.name not in ("__init__.py", "common.py")
)


def test_every_benchmark_is_covered():
    assert len(BENCHMARKS) == 9, BENCHMARKS


@pytest.mark.parametrize("script", BENCHMARKS)
def test_benchmark_smoke_run_prints_one_json_line(script):
    # exactly as the README runs them: .venv/bin/python bench/NAME.py, from the repository root
    run = subprocess.run(
        [sys.executable, f"bench/{script}", "--smoke"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    lines = [line for line in run.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, run.stdout[-3000:]
    result = json.loads(lines[0])
    assert result["bench"] == script.removesuffix(".py")
    assert result["results"]
    assert set(result["goal"]) >= {"measured", "met"}
    if script == "site_value.py":  # what the EMS is worth: its table and plot, and a saving
        out = Path(result["out"])
        try:
            assert (out / "site_value.md").read_text().startswith("| 1 day | No EMS | Cariflex MPC |")
            assert (out / "site_value.png").read_bytes().startswith(b"\x89PNG")
        finally:
            shutil.rmtree(out, ignore_errors=True)
        kpis = result["results"]
        assert set(kpis) == {"no_ems", "mpc", "perfect_foresight"}
        assert kpis["mpc"]["grid_cost_eur"] < kpis["no_ems"]["grid_cost_eur"]
        assert kpis["mpc"]["over_cap_kwh"] == 0 and kpis["mpc"]["pv_self_consumption_pct"] > 80
