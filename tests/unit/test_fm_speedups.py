"""FlexMeasures parses the same unit strings over and over while deserialising a flex-context (the
gap), and the plugin's memo (flexmeasures_cariflex.fm_speedups) gives the very same quantities."""

from __future__ import annotations

import collections
import uuid

import pandas as pd
import pytest

import flexmeasures_cariflex  # noqa: F401  (installs the memo, as the plugin does at import)
from flexmeasures_cariflex.fm_speedups import install


def _price_segments(count: int) -> list[dict]:
    """A flex-context price time series as the fleet schedule passes it: one value per quarter-hour,
    each a hair dearer (values no other test has parsed yet in this process)."""
    base = 100 + uuid.uuid4().int % 10_000 / 10
    start = pd.Timestamp("2026-11-25T04:00Z")
    step = pd.Timedelta(minutes=15)
    return [
        {
            "start": (start + j * step).isoformat(),
            "end": (start + (j + 1) * step).isoformat(),
            "value": f"{base + j * 1e-4:.4f} EUR/MWh",
        }
        for j in range(count)
    ]


@pytest.fixture
def pint_parses(monkeypatch):
    """Counts pint's own (uncached) parses, per string, while the memo stays in front of them."""
    from flexmeasures.utils.unit_utils import ur

    counted: collections.Counter = collections.Counter()
    uncached = ur.parse_expression.uncached

    def parse(input_string, case_sensitive=None, **values):
        counted[input_string] += 1
        return uncached(input_string, case_sensitive, **values)

    return counted, parse


def test_flexmeasures_parses_the_same_strings_again_and_again(pint_parses, monkeypatch):
    """The gap: without a memo, one 96-segment price deserialisation parses a few strings hundreds
    of times (FlexMeasures 1.0.1, FlexContextSchema)."""
    from flexmeasures.data.schemas.scheduling import FlexContextSchema
    from flexmeasures.utils import unit_utils

    counted, parse = pint_parses
    monkeypatch.setattr(unit_utils.ur, "parse_expression", parse)  # the memo bypassed
    for module in ("flexmeasures.data.schemas.sensors", "flexmeasures.data.schemas.scheduling"):
        monkeypatch.setattr(f"{module}.units_are_convertible", unit_utils.units_are_convertible.uncached)
    FlexContextSchema().load(
        {"consumption-price": _price_segments(96), "site-consumption-capacity": "600 kW"}
    )
    assert sum(counted.values()) > 5 * len(counted)
    assert counted.most_common(1)[0][1] >= 96 * 2  # a unit string parsed more than twice per segment


def test_with_the_memo_each_string_is_parsed_once(pint_parses, monkeypatch):
    from flexmeasures.data.schemas.scheduling import FlexContextSchema
    from flexmeasures.utils import unit_utils

    counted, parse = pint_parses
    # a fresh memo in front of the counter, as install() puts one in front of pint
    monkeypatch.setattr(unit_utils.ur, "parse_expression", parse)
    install()
    assert unit_utils.ur.parse_expression is not parse
    loaded = FlexContextSchema().load(
        {"consumption-price": _price_segments(96), "site-consumption-capacity": "600 kW"}
    )
    assert max(counted.values()) == 1
    assert len(loaded["consumption_price"]) == 96


@pytest.mark.parametrize(
    "text", ["160.0005 EUR/MWh", "22 kW", "0 kW", "90%", "EUR/MWh", "dimensionless", "50 kWh", "MWh"]
)
def test_memoised_parse_is_what_pint_builds(text):
    from flexmeasures.utils.unit_utils import ur

    assert getattr(ur.parse_expression, "_cariflex_memo", False)
    expected = ur.parse_expression.uncached(text)
    first, second = ur.Quantity(text), ur.parse_expression(text)
    for got in (first, second):
        assert type(got) is type(expected)
        assert got.units == expected.units
        assert got.magnitude == expected.magnitude
        assert type(got.magnitude) is type(expected.magnitude)
    # every call gets its own quantity: changing one in place leaves the memo intact
    second.ito_base_units()
    again = ur.parse_expression(text)
    assert (again.magnitude, again.units) == (expected.magnitude, expected.units)


def test_memoised_unit_check_agrees_and_reaches_flexmeasures_modules():
    import flexmeasures.data.schemas.scheduling as scheduling
    import flexmeasures.data.schemas.sensors as sensors
    from flexmeasures.utils import unit_utils

    check = unit_utils.units_are_convertible
    assert sensors.units_are_convertible is check
    assert scheduling.units_are_convertible is check
    for pair, kwargs in [
        (("kW", "MW"), {}),
        (("EUR/MWh", "EUR/kWh"), {}),
        (("kWh", "kW"), {}),
        (("kWh", "kW"), {"duration_known": False}),
        (("°C", "W"), {}),
        (("nonsense", "kW"), {}),
    ]:
        assert check(*pair, **kwargs) == check.uncached(*pair, **kwargs)
