"""FlexMeasures configuration built from ``CARIFLEX_*`` settings.

FlexMeasures reads a Python config file from its Flask instance folder. ``install_config_file``
writes a two-line one there (inside the virtualenv, so it belongs to this checkout) that calls
``flexmeasures_config()`` at every start. That way ``flexmeasures ...`` commands, gunicorn and the
demo all run on the same settings, and changing ``.env`` needs no regeneration step.

Run ``python -m flexmeasures_cariflex.config`` to (re)write the file; ``make`` does it after
installing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cariflex import settings
from cariflex.database_url import embedded_server_url, to_psycopg2

CONFIG_FILE_TEXT = """\
# Written by `python -m flexmeasures_cariflex.config` (make does it). Do not edit: every value
# comes from CARIFLEX_* variables or .env, see .env.example.
FLEXMEASURES_ENV = "production"
from flexmeasures_cariflex.config import flexmeasures_config as _cariflex_config
globals().update(_cariflex_config())
"""

# Flask-Security-Too >= 5.9 parses FlexMeasures 1.0.1's default "1 week" as timedelta(week=1)
# and crashes with a TypeError at start, and only allows logout by POST while FlexMeasures' UI
# logs out with a link (GET). These values work on 5.8 and 5.9 alike.
SAFE_SECURITY_SETTINGS: dict[str, Any] = {
    "SECURITY_TWO_FACTOR_LOGIN_VALIDITY": "7 days",
    "SECURITY_LOGOUT_METHODS": ["GET", "POST"],
}

# HiGHS without limits can outlive the job timeout on a 20-device MIP (FlexMeasures #2504).
# FlexMeasures' binaries only forbid a battery to charge and discharge at once, which the LP
# relaxation of the fleet's problem already avoids at positive prices (the round-trip losses cost
# money), so its optimum is the MIP's. HiGHS' ZI-round heuristic (off by default) rounds that root
# solution at once; without it HiGHS spent ~1.2 s of a 1.4 s 20-device solve in its RINS and sub-MIP
# heuristics to close the 1 % gap (0.2 s with it, same objective; degenerate optima may be picked
# differently). It only adds a heuristic: the gap, the time limit and the constraints stay.
LP_SOLVER_OPTIONS = {
    "time_limit": 15.0,
    "mip_rel_gap": 0.01,
    "output_flag": "false",
    "mip_heuristic_run_zi_round": True,
}


def database_url() -> str:
    """The FlexMeasures database: CARIFLEX_DATABASE_URL, else the embedded server's 'cariflex'."""
    url = settings.get("CARIFLEX_DATABASE_URL")
    if url:
        return to_psycopg2(url)
    return embedded_server_url(settings.var_dir() / "pgdata", database="cariflex")


# Without CARIFLEX_REDIS_URL FlexMeasures would use whatever Redis listens on localhost:6379 db 0
# for its job queues and rate-limit counters. Port 0 is never a server: a queued job fails at once
# (connection refused) instead of waiting for a worker that does not exist, and the rate limits
# count in each process's memory. Re-plans then run in-process (see data/services/replan.py).
NO_REDIS: dict[str, Any] = {
    "FLEXMEASURES_REDIS_URL": "127.0.0.1",
    "FLEXMEASURES_REDIS_PORT": 0,
    "FLEXMEASURES_REDIS_DB_NR": 0,
    "RATELIMIT_STORAGE_URI": "memory://",
}


def redis_settings() -> dict[str, Any]:
    """FlexMeasures wants host, port and db number apart (its REDIS_URL is a host name); without
    CARIFLEX_REDIS_URL, ``NO_REDIS``."""
    from urllib.parse import urlparse

    url = settings.get("CARIFLEX_REDIS_URL")
    if not url:
        return dict(NO_REDIS)
    parsed = urlparse(url)
    if parsed.scheme != "redis" or not parsed.hostname:
        raise ValueError(f"CARIFLEX_REDIS_URL {url!r} must look like redis://host:port/db")
    db_nr = parsed.path.strip("/") or "0"
    if not db_nr.isdigit():
        raise ValueError(f"CARIFLEX_REDIS_URL {url!r}: the database '{db_nr}' must be a number")
    out = {
        "FLEXMEASURES_REDIS_URL": parsed.hostname,
        "FLEXMEASURES_REDIS_PORT": parsed.port or 6379,
        "FLEXMEASURES_REDIS_DB_NR": int(db_nr),
    }
    if parsed.password:
        out["FLEXMEASURES_REDIS_PASSWORD"] = parsed.password
    return out


def flexmeasures_config() -> dict[str, Any]:
    """Every FlexMeasures setting Cariflex decides, from the CARIFLEX_* variables."""
    level = (settings.get("CARIFLEX_LOG_LEVEL") or "INFO").upper()
    return {
        "SQLALCHEMY_DATABASE_URI": database_url(),
        "SECRET_KEY": settings.secret("CARIFLEX_SECRET_KEY", "secret_key"),
        "FLEXMEASURES_PLUGINS": ["flexmeasures_cariflex"],
        "LOGGING_LEVEL": level,
        # Only Cariflex's own assets on this platform, not FlexMeasures' starter templates.
        "FLEXMEASURES_CREATE_TEMPLATE_ASSETS_ON_STARTUP": False,
        "FLEXMEASURES_LP_SOLVER_OPTIONS": LP_SOLVER_OPTIONS,
        "FLEXMEASURES_PLATFORM_NAME": "Cariflex EMS",
        "TRUSTED_HOSTS": settings.get("CARIFLEX_FM_TRUSTED_HOSTS"),
        **SAFE_SECURITY_SETTINGS,
        **redis_settings(),
    }


def instance_config_path() -> Path:
    """Where FlexMeasures looks for flexmeasures.cfg in this Python environment."""
    from flask import Flask

    return Path(Flask("flexmeasures").instance_path) / "flexmeasures.cfg"


def install_config_file() -> Path:
    path = instance_config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.is_file() or path.read_text() != CONFIG_FILE_TEXT:
        path.write_text(CONFIG_FILE_TEXT)
    return path


def patch_flexmeasures_defaults() -> None:
    """Make FlexMeasures' own defaults safe, for apps that skip the config file (env 'testing')."""
    from flexmeasures.utils import config_defaults

    for key, value in SAFE_SECURITY_SETTINGS.items():
        setattr(config_defaults.Config, key, value)


if __name__ == "__main__":
    print(f"FlexMeasures config file: {install_config_file()}")
