"""Guards against dependency releases FlexMeasures 1.0.1 does not run on.

constraints.txt pins the tested versions. Someone who installs without it gets these releases
and, without this module, obscure failures much later (a 500 on a duplicate belief, a crashing
``jobs run-job``). We name the problem and the fix at start instead.
"""

from __future__ import annotations

import logging
from importlib.metadata import PackageNotFoundError, version

log = logging.getLogger(__name__)

# package -> (first release known to break FlexMeasures 1.0.1, what breaks)
KNOWN_BREAKING = {
    "Flask-Security-Too": ("5.9", "'1 week' login validity crash and GET logout 405"),
    "SQLAlchemy": ("2.1", "psycopg 3 chosen for postgresql:// URLs; 500s instead of 4xx"),
    "rq": ("3", "`flexmeasures jobs run-job` crashes"),
    "pandas": ("3", "timely-beliefs does not support pandas 3"),
}


def _release(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def untested_dependencies() -> list[str]:
    """Installed releases at or beyond a known breaking release, described for a person."""
    found = []
    for package, (breaking, effect) in KNOWN_BREAKING.items():
        try:
            installed = version(package)
        except PackageNotFoundError:
            continue
        if _release(installed) >= _release(breaking):
            found.append(f"{package} {installed} (>= {breaking}: {effect})")
    return found


def warn_about_untested_dependencies() -> None:
    problems = untested_dependencies()
    if problems:
        log.warning(
            "Cariflex runs FlexMeasures 1.0.1 on untested releases: %s. Reinstall with "
            "`pip install -c constraints.txt -e '.[all]'` (or `make install`).",
            "; ".join(problems),
        )
