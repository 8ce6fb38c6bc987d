"""What every benchmark shares: the percentile rule and the one JSON line it prints."""

from __future__ import annotations

import argparse
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


def parse_args(parser: argparse.ArgumentParser, **smoke: Any) -> argparse.Namespace:
    """The benchmark's arguments, with ``--smoke``: the smallest run that exercises every step
    (``make test`` runs each benchmark so, checking only that it completes and prints its line)."""
    parser.add_argument(
        "--smoke",
        action="store_true",
        help=f"a smoke run ({', '.join(f'{k}={v}' for k, v in smoke.items())})",
    )
    args = parser.parse_args()
    if args.smoke:
        for name, value in smoke.items():
            setattr(args, name, value)
    return args
