"""Cariflex EMS plugin for FlexMeasures: the site model, OpenADR event ingestion, and (later)
weather, scheduling and statistics for the Cariflex fleet.

FlexMeasures registers every Blueprint found at the top of this module: ``cariflex_bp`` carries
the CLI group ``flexmeasures cariflex``, ``cariflex_api_bp`` the HTTP API under /api/cariflex/v1,
``cariflex_ui_bp`` FlexMeasures' web UI assets served locally (``ui/``: the UI works offline).

Layout as in FlexMeasures: ``api/`` (HTTP), ``cli/`` (click commands, shared helpers in
``cli/utils``), ``data/services/`` (what the API and CLI do), ``data/queries/`` (reads, above all
the one "latest belief" reader).

May import: ``cariflex`` and FlexMeasures; never the VTN, the VEN, the CEM, the simulator or
``operations``.

Contract files: ``cariflex/contracts/openadr_event.py`` (what the VEN posts),
``cariflex/contracts/fleet_schedule.py`` (what it serves to the CEM), ``cariflex/inputs.py``.
"""

import logging

from flask import Blueprint

from cariflex import __version__

cariflex_bp = Blueprint("cariflex", __name__, cli_group="cariflex")


@cariflex_bp.record_once
def _keep_our_loggers(state) -> None:
    """FlexMeasures configures logging with ``dictConfig`` (``disable_existing_loggers`` defaults to
    True) when its app is created: every ``cariflex.*`` logger that existed before (a process that
    imported our packages first, e.g. the test suite) went silent. Plugins register after that."""
    for name, logger in logging.Logger.manager.loggerDict.items():
        if name.startswith("cariflex") and isinstance(logger, logging.Logger):
            logger.disabled = False


from flexmeasures_cariflex.api import cariflex_api_bp  # noqa: E402  (registered by FlexMeasures)
from flexmeasures_cariflex.cli import commands, insights, weather  # noqa: E402,F401  (registers the CLI commands)
from flexmeasures_cariflex.compat import warn_about_untested_dependencies  # noqa: E402
from flexmeasures_cariflex.data.services.replan_triggers import install as _install_replan_triggers  # noqa: E402
from flexmeasures_cariflex.fm_speedups import install as _install_fm_speedups  # noqa: E402
from flexmeasures_cariflex.ui.offline import ui_bp as cariflex_ui_bp  # noqa: E402  (registered by FlexMeasures)

warn_about_untested_dependencies()
_install_fm_speedups()
_install_replan_triggers()  # FlexMeasures' own API and CLI writes of prices and limits re-plan too

__all__ = ["__version__", "cariflex_api_bp", "cariflex_bp", "cariflex_ui_bp"]
