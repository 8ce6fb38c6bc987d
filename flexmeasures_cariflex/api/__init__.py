"""The plugin's HTTP API under /api/cariflex/v1 (FlexMeasures auth tokens; see ``routes``)."""

from flask import Blueprint

cariflex_api_bp = Blueprint("cariflex_api", __name__, url_prefix="/api/cariflex/v1")

from flexmeasures_cariflex.api import guards, insights, routes  # noqa: E402,F401  (registers the routes)

__all__ = ["cariflex_api_bp"]
