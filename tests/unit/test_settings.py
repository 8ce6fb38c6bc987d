"""CARIFLEX_* settings: documented, overridable, and secrets generated safely."""

from __future__ import annotations

import re
import stat
from pathlib import Path

import pytest

from cariflex import settings

ROOT = Path(__file__).resolve().parent.parent.parent


def test_env_example_documents_every_variable():
    text = (ROOT / ".env.example").read_text()
    documented = set(re.findall(r"^#?\s*(CARIFLEX_[A-Z0-9_]+)=", text, flags=re.M))
    assert documented == {v.name for v in settings.VARIABLES}
    assert text == settings.env_example(), "regenerate: python -m cariflex.settings > .env.example"


def test_environment_beats_dotenv_beats_default(tmp_path, monkeypatch):
    env_file = tmp_path / ".env"
    env_file.write_text("CARIFLEX_FM_BIND=127.0.0.1:6001\nCARIFLEX_LOG_LEVEL=DEBUG\n")
    monkeypatch.setenv("CARIFLEX_ENV_FILE", str(env_file))
    monkeypatch.delenv("CARIFLEX_FM_BIND", raising=False)
    monkeypatch.delenv("CARIFLEX_ADMIN_EMAIL", raising=False)
    monkeypatch.setenv("CARIFLEX_LOG_LEVEL", "WARNING")
    assert settings.get("CARIFLEX_FM_BIND") == "127.0.0.1:6001"
    assert settings.get("CARIFLEX_LOG_LEVEL") == "WARNING"
    assert settings.get("CARIFLEX_ADMIN_EMAIL") == "admin@cariflex.example"


def test_empty_value_means_default(monkeypatch):
    monkeypatch.setenv("CARIFLEX_ADMIN_EMAIL", "")
    assert settings.get("CARIFLEX_ADMIN_EMAIL") == "admin@cariflex.example"


def test_secret_is_generated_once_with_mode_600(tmp_path, monkeypatch):
    monkeypatch.setenv("CARIFLEX_VAR_DIR", str(tmp_path / "var"))
    monkeypatch.delenv("CARIFLEX_SECRET_KEY", raising=False)
    first = settings.secret("CARIFLEX_SECRET_KEY", "secret_key")
    assert len(first) >= 32
    assert settings.secret("CARIFLEX_SECRET_KEY", "secret_key") == first
    assert stat.S_IMODE((tmp_path / "var" / "secret_key").stat().st_mode) == 0o600
    monkeypatch.setenv("CARIFLEX_SECRET_KEY", "from-the-environment")
    assert settings.secret("CARIFLEX_SECRET_KEY", "secret_key") == "from-the-environment"


def test_a_numeric_setting_names_the_variable_when_it_is_unusable(monkeypatch):
    from cariflex import settings

    monkeypatch.setenv("CARIFLEX_CARBON_INTENSITY", "lots")
    with pytest.raises(ValueError, match=r"CARIFLEX_CARBON_INTENSITY 'lots' is not a number \(gCO2/kWh\)"):
        settings.number("CARIFLEX_CARBON_INTENSITY", 0, 2000, "gCO2/kWh")
    monkeypatch.setenv("CARIFLEX_CARBON_INTENSITY", "2500")
    with pytest.raises(ValueError, match=r"CARIFLEX_CARBON_INTENSITY 2500 gCO2/kWh is outside 0..2000"):
        settings.number("CARIFLEX_CARBON_INTENSITY", 0, 2000, "gCO2/kWh")
    monkeypatch.setenv("CARIFLEX_CARBON_INTENSITY", "600")
    assert settings.number("CARIFLEX_CARBON_INTENSITY", 0, 2000, "gCO2/kWh") == 600.0
