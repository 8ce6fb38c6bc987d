"""Fixtures of the VTN's in-process tests: a store on a fresh SQLite file, and a VTN on it (not serving)."""

from __future__ import annotations

import pytest

from vtn.server import CariflexVtn, VtnOptions
from vtn.store import Store


@pytest.fixture
def store(tmp_path):
    s = Store(f"sqlite:///{tmp_path / 'vtn.sqlite'}")
    yield s
    s.dispose()


@pytest.fixture
def vtn(store):
    return CariflexVtn(store, VtnOptions(insecure=True, day_ahead_time="off"))
