"""Helpers shared by the tests (unit, integration, e2e) and the benchmarks.

Fixtures stay in ``tests/conftest.py``; anything a test module or a benchmark imports lives here,
so that nothing imports ``conftest`` or another test module.
"""
