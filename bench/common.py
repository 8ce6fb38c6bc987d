"""What every benchmark shares: the percentile rule and the one JSON line it prints."""

from __future__ import annotations

import json
from typing import Any


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..1) of the samples."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def print_result(bench: str, results: Any, goal: str, measured: float, limit: float, **extra: Any) -> None:
    """The benchmark's single JSON line: its figures and whether the issue's goal was met."""
    print(
        json.dumps(
            {
                "bench": bench,
                "results": results,
                **extra,
                "goal": {goal: limit, "measured": measured, "met": measured <= limit},
            }
        ),
        flush=True,
    )
