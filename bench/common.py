"""What every benchmark shares: the percentile rule and the one JSON line it prints (one goal:
``print_result``; several: ``print_goals``)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
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


@dataclass(frozen=True)
class Goal:
    """One of several goals of an issue: ``measured`` must stay at or under ``limit`` (a time), or
    with ``at_least`` reach it (a speed-up); ``measured`` None: not measured in this run."""

    name: str
    limit: float
    measured: float | None
    at_least: bool = False

    @property
    def met(self) -> bool | None:
        if self.measured is None:
            return None
        return self.measured >= self.limit if self.at_least else self.measured <= self.limit

    def as_dict(self) -> dict:
        return {
            self.name: self.limit,
            **({"at_least": True} if self.at_least else {}),
            "measured": self.measured,
            "met": self.met,
        }


def print_goals(bench: str, results: Any, goals: list[Goal], **extra: Any) -> None:
    """The single JSON line of a benchmark with several goals: each with its limit, measured value
    and whether it was met, and ``met`` for all of them (false while one was not measured)."""
    print(
        json.dumps(
            {
                "bench": bench,
                "results": results,
                **extra,
                "goal": {
                    "goals": [goal.as_dict() for goal in goals],
                    "measured": {goal.name: goal.measured for goal in goals},
                    "met": all(goal.met is True for goal in goals),
                },
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


@contextlib.contextmanager
def flexmeasures_app(lp_time_limit_s: float | None = None) -> Iterator[Any]:
    """A FlexMeasures app with the plugin on a fresh database (CARIFLEX_TEST_DATABASE_URL, else
    127.0.0.1:5432, else an embedded server), inside its app context; the database is dropped after.

    HiGHS prints its banner on stdout from C++ (output_flag comes too late for it): the process's
    stdout goes to stderr meanwhile, so stdout carries just the benchmark's JSON line."""
    from operations import database
    from tests.helpers.common import database_server_url

    with tempfile.TemporaryDirectory() as folder:
        url = database.with_database(
            database_server_url(Path(folder)), f"cariflex_bench_{uuid.uuid4().hex[:8]}"
        )
        database.create_database(url)
        os.environ["SQLALCHEMY_TEST_DATABASE_URI"] = url
        os.environ["CARIFLEX_VAR_DIR"] = folder
        os.environ.pop("FLEXMEASURES_PLUGINS", None)
        stdout = os.dup(1)
        os.dup2(2, 1)
        try:
            from flexmeasures.app import create
            from flexmeasures.data import db

            from flexmeasures_cariflex.config import LP_SOLVER_OPTIONS, patch_flexmeasures_defaults

            patch_flexmeasures_defaults()
            app = create(env="testing", plugins=["flexmeasures_cariflex"])
            options = dict(LP_SOLVER_OPTIONS)
            if lp_time_limit_s is not None:
                options["time_limit"] = lp_time_limit_s
            app.config["FLEXMEASURES_LP_SOLVER_OPTIONS"] = options
            with app.app_context():
                db.create_all()
                try:
                    yield app
                finally:
                    db.session.remove()
                    db.engine.dispose()
        finally:
            sys.stdout.flush()
            os.dup2(stdout, 1)
            database.drop_database(url)
