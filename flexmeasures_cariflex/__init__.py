"""Cariflex EMS plugin for FlexMeasures: the site model, OpenADR event ingestion, and (later)
weather, scheduling and statistics for the Cariflex fleet.

FlexMeasures registers every Blueprint found at the top of this module: ``cariflex_bp`` carries
the CLI group ``flexmeasures cariflex``, ``cariflex_api_bp`` the HTTP API under /api/cariflex/v1.
"""

from flask import Blueprint

from cariflex import __version__

cariflex_bp = Blueprint("cariflex", __name__, cli_group="cariflex")

from flexmeasures_cariflex.api import cariflex_api_bp  # noqa: E402  (registered by FlexMeasures)
from flexmeasures_cariflex.cli import commands, insights, weather  # noqa: E402,F401  (registers the CLI commands)
from flexmeasures_cariflex.compat import warn_about_untested_dependencies  # noqa: E402

warn_about_untested_dependencies()

__all__ = ["__version__", "cariflex_api_bp", "cariflex_bp"]
