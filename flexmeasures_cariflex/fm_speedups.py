"""Work-arounds for FlexMeasures 1.0.1 slowness that the fleet schedule runs into, same results.

**Unit strings parsed again and again.** Deserialising a flex-context and flex-model parses every
quantity string with pint, and checks every price segment's unit against the first one
(``units_are_convertible``, which parses both unit strings twice more), in two schema validators
each: one 20-device fleet schedule with its 96 quarter-hourly prices made ~3,100 pint parses of a
few hundred distinct strings ('EUR/MWh' alone ~1,500 times), ~1.5 s of a 4.3 s profiled run (the
flex-config deserialisation went from 1.5 s to 0.35 s under the profiler). pint caches unit names
but not ``parse_expression``. ``install()`` gives FlexMeasures' registry ``ur`` a memo of it: each
string is parsed once per process, and every call gets its own copy of the parsed quantity (a
caller may change it in place), exactly what pint would have built. ``units_are_convertible`` (a
pure function of two unit strings) is memoised too, where FlexMeasures' modules hold it.
tests/unit/test_fm_speedups.py shows the gap and the equality.

Installed by the plugin at import; ``install()`` is idempotent.
"""

from __future__ import annotations

import copy
from functools import lru_cache

_MEMO_SIZE = 8192  # distinct strings kept; a day's prices and every flex-model value fit many times


# FlexMeasures modules that import ``units_are_convertible`` by name (those imported later take the
# memoised one from unit_utils itself)
_UNIT_CHECK_USERS = (
    "flexmeasures.utils.unit_utils",
    "flexmeasures.data.schemas.sensors",
    "flexmeasures.data.schemas.scheduling",
    "flexmeasures.data.models.planning.storage",
    "flexmeasures.data.models.forecasting.utils",
    "flexmeasures.api.common.schemas.sensor_data",
)


def install() -> None:
    """Memoise ``parse_expression`` on FlexMeasures' unit registry and ``units_are_convertible``
    (once per process)."""
    from flexmeasures.utils import unit_utils

    if not hasattr(unit_utils.units_are_convertible, "uncached"):
        _memoise_unit_check(unit_utils.units_are_convertible)
    if not getattr(unit_utils.ur.parse_expression, "_cariflex_memo", False):
        _memoise_parse(unit_utils.ur)


def _memoise_parse(ur) -> None:
    parse = ur.parse_expression  # pint's own (bound) method

    @lru_cache(maxsize=_MEMO_SIZE)
    def parsed(input_string: str):
        return parse(input_string)

    def parse_expression(input_string, case_sensitive=None, **values):
        if case_sensitive is not None or values or not isinstance(input_string, str):
            return parse(input_string, case_sensitive, **values)
        return copy.copy(parsed(input_string))

    parse_expression._cariflex_memo = True  # type: ignore[attr-defined]
    parse_expression.cache_info = parsed.cache_info  # type: ignore[attr-defined]
    parse_expression.uncached = parse  # type: ignore[attr-defined]
    ur.parse_expression = parse_expression


def _memoise_unit_check(original) -> None:
    import sys

    @lru_cache(maxsize=_MEMO_SIZE)
    def memo(*args, **kwargs) -> bool:
        return original(*args, **kwargs)

    def units_are_convertible(*args, **kwargs) -> bool:
        try:
            return memo(*args, **kwargs)
        except TypeError:  # an unhashable argument: not a unit string, let FlexMeasures judge it
            return original(*args, **kwargs)

    units_are_convertible.__doc__ = original.__doc__
    units_are_convertible.cache_info = memo.cache_info  # type: ignore[attr-defined]
    units_are_convertible.uncached = original  # type: ignore[attr-defined]
    for name in _UNIT_CHECK_USERS:
        module = sys.modules.get(name)
        if module is not None and getattr(module, "units_are_convertible", None) is original:
            module.units_are_convertible = units_are_convertible
