"""Cariflex EMS plugin for FlexMeasures: the site model, and (later) ingestion, weather,
scheduling and statistics for the Cariflex fleet.

FlexMeasures registers every Blueprint found at the top of this module; the CLI group
``flexmeasures cariflex`` hangs off this one.
"""

from flask import Blueprint

from cariflex import __version__

cariflex_bp = Blueprint("cariflex", __name__, cli_group="cariflex")

from flexmeasures_cariflex.cli import commands  # noqa: E402,F401  (registers the CLI commands)
from flexmeasures_cariflex.compat import warn_about_untested_dependencies  # noqa: E402

warn_about_untested_dependencies()

__all__ = ["__version__", "cariflex_bp"]
