"""The plugin as a user meets it: the real `flexmeasures` command in a fresh process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent


def test_flexmeasures_help_lists_the_cariflex_group(test_db_url, tmp_path):
    env = {
        **os.environ,
        "CARIFLEX_DATABASE_URL": test_db_url,
        "CARIFLEX_VAR_DIR": str(tmp_path),
    }
    env.pop("FLEXMEASURES_PLUGINS", None)
    env.pop("SQLALCHEMY_TEST_DATABASE_URI", None)
    result = subprocess.run(
        [str(BIN / "flexmeasures"), "--help"], env=env, capture_output=True, text=True, timeout=180
    )
    assert result.returncode == 0, result.stderr[-2000:]
    commands = [line.split()[0] for line in result.stdout.splitlines() if line.startswith("  ")]
    assert "cariflex" in commands


def test_cariflex_group_offers_its_commands(app):
    result = app.test_cli_runner().invoke(args=["cariflex", "--help"])
    assert result.exit_code == 0
    for command in ("setup", "sensors", "ensure-admin"):
        assert f"  {command}" in result.output
