"""The fuzz campaign's shared parts: profiles, mutation strategies, and the per-edge tally.

Two hypothesis profiles:

- ``ci`` (default; what ``make test`` runs): a few dozen cases per edge, derandomized, so every
  run of the suite tries the same inputs (fixed seeds) and a failure is reproducible;
- ``full`` (``make fuzz``): :data:`FULL_CASES` cases per edge, random, ≥ 10,000 in all.

Every edge test calls :func:`tally` once per case; with ``CARIFLEX_FUZZ_REPORT`` set the totals
(cases, refusals, failures per edge) are written there at the end of the session, and
``python -m tests.helpers.fuzzing FILE`` prints them as one JSON line.
"""

from __future__ import annotations

import copy
import json
import math
import os
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

CI_CASES = 40
FULL_CASES = 1600
PROFILE = os.environ.get("CARIFLEX_FUZZ_PROFILE", "ci")

settings.register_profile(
    "ci",
    max_examples=CI_CASES,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
settings.register_profile(
    "full",
    max_examples=FULL_CASES,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)


def campaign(cases_share: float = 1.0):
    """The hypothesis settings of one edge test under the active profile."""
    base = settings.get_profile(PROFILE)
    return settings(base, max_examples=max(10, int(base.max_examples * cases_share)))


# --- the tally -------------------------------------------------------------------------------------

TALLY: dict[str, dict[str, int]] = defaultdict(lambda: {"cases": 0, "refusals": 0, "failures": 0})


def tally(edge: str, refused: bool) -> None:
    TALLY[edge]["cases"] += 1
    TALLY[edge]["refusals"] += int(refused)


def failed(edge: str) -> None:
    TALLY[edge]["failures"] += 1


def write_report(path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps({"profile": PROFILE, "edges": dict(TALLY)}))


def summary(report: dict[str, Any]) -> dict[str, Any]:
    edges = report["edges"]
    return {
        "bench": "fuzz",
        "profile": report["profile"],
        "cases": sum(e["cases"] for e in edges.values()),
        "refusals": sum(e["refusals"] for e in edges.values()),
        "failures": sum(e["failures"] for e in edges.values()),
        "edges": edges,
    }


# --- mutation strategies ---------------------------------------------------------------------------

NASTY_TEXT = st.one_of(
    st.just(""),
    st.just(" "),
    st.text(min_size=1, max_size=30),
    st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=20),
    st.sampled_from(
        ["\x00", "\ud800", "a\udc00b", "NaN", "Infinity", "-0", "1e999", "null", "<x>&amp;", "'; --"]
    ),
    st.integers(1000, 20000).map(lambda n: "x" * n),
    st.sampled_from(
        [
            "2026-13-01T00:00:00+00:00",
            "2026-06-01T00:00:00",
            "2026-06-01T00:00:00+14:00",
            "2026-06-01T00:00:00-04:00",
            "9999-12-31T23:59:59+00:00",
            "0001-01-01T00:00:00+00:00",
            "P3000000D",
            "PT0S",
            "-PT1H",
            "P1Y",
            "PT15M",
            "PT1H",
        ]
    ),
)
NASTY_NUMBER = st.one_of(
    st.sampled_from(
        [
            0,
            -1,
            1,
            0.0,
            -0.0,
            1e308,
            -1e308,
            1e-320,
            2**63,
            -(2**63),
            10**30,
            math.nan,
            math.inf,
            -math.inf,
            0.5,
            1.0000001,
            100,
            101,
        ]
    ),
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=True, allow_infinity=True),
)
NASTY_VALUE = st.recursive(
    st.one_of(st.none(), st.booleans(), NASTY_NUMBER, NASTY_TEXT),
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=8,
)


DEEP = "__cariflex_deep_{}__"  # a placeholder dumps() expands: hypothesis cannot print 3000 levels


def deep(depth: int) -> str:
    return DEEP.format(depth)


def paths(document: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path into a JSON-like document (the root too)."""
    found = [prefix]
    if isinstance(document, dict):
        for key, value in document.items():
            found += paths(value, (*prefix, key))
    elif isinstance(document, list):
        for index, value in enumerate(document):
            found += paths(value, (*prefix, index))
    return found


def get(document: Any, path: tuple) -> Any:
    for step in path:
        document = document[step]
    return document


@st.composite
def mutated(draw, valid: Any) -> tuple[Any, str, tuple]:
    """``valid`` with one thing wrong: (document, kind of mutation, path it touched)."""
    document = copy.deepcopy(valid)
    path = draw(st.sampled_from(paths(document)))
    kind = draw(
        st.sampled_from(["replace", "delete", "extra", "swap", "duplicate", "deep", "timezone", "empty"])
    )
    parent_path, key = path[:-1], path[-1] if path else None
    if not path:
        kind = "replace"
    parent = get(document, parent_path) if path else None
    if kind == "replace":
        value = draw(NASTY_VALUE)
        if not path:
            return value, kind, path
        parent[key] = value
    elif kind == "delete":
        del parent[key]
    elif kind == "extra":
        target = get(document, path)
        if isinstance(target, dict):
            target[draw(st.text(min_size=1, max_size=12))] = draw(NASTY_VALUE)
        elif isinstance(target, list):
            target.append(draw(NASTY_VALUE))
        else:
            parent[key] = [target, target]
    elif kind in ("swap", "duplicate"):
        target = get(document, path)
        if isinstance(target, list) and len(target) >= 2:
            i, j = draw(st.integers(0, len(target) - 1)), draw(st.integers(0, len(target) - 1))
            if kind == "swap":
                target[i], target[j] = target[j], target[i]
            else:
                target.insert(i, copy.deepcopy(target[j]))
        else:
            parent[key] = draw(NASTY_VALUE)
    elif kind == "deep":
        parent[key] = deep(draw(st.sampled_from([40, 200, 3000])))
    elif kind == "timezone":
        target = get(document, path)
        if isinstance(target, str) and len(target) >= 19 and target[10:11] == "T":
            parent[key] = target[:19] + draw(
                st.sampled_from(["", "Z", "+14:00", "-04:00", "+99:00", "+00:00:01"])
            )
        else:
            parent[key] = draw(NASTY_TEXT)
    elif kind == "empty":
        parent[key] = draw(st.sampled_from([[], {}, "", None]))
    return document, kind, path


def dumps(document: Any) -> str:
    """JSON as a careless client writes it: NaN and Infinity literals, lone surrogates kept, and
    the deep-nesting placeholders expanded into brackets."""
    text = json.dumps(document, allow_nan=True)
    for depth in (40, 200, 3000):
        text = text.replace(json.dumps(DEEP.format(depth)), "[" * depth + "1" + "]" * depth)
    return text


@st.composite
def raw_variant(draw, text: str) -> str:
    """Damage at the text level: truncation, splicing, junk."""
    kind = draw(st.sampled_from(["cut", "insert", "junk"]))
    if kind == "junk":
        return draw(st.text(max_size=200))
    at = draw(st.integers(0, len(text)))
    if kind == "cut":
        return text[:at] + text[at + draw(st.integers(1, 50)) :]
    return text[:at] + draw(st.text(max_size=30)) + text[at:]


if __name__ == "__main__":
    report = json.loads(Path(sys.argv[1]).read_text())
    print(json.dumps(summary(report)))
