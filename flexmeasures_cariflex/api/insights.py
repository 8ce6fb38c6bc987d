"""Insights over HTTP, for any FlexMeasures user (token as for the other Cariflex endpoints):

- ``GET /statistics?day=YYYY-MM-DD|month=YYYY-MM|year=YYYY[&device=bat_01|&group=pv|batteries|evs]``
- ``GET /flexibility?hours=1``
- ``GET /dr-verification?since=P7D`` (ISO time or duration back from now, ``cariflex.inputs.since``)
- ``GET /alerts?since=PT24H[&rule=out_of_bounds|silent|not_following]``

The figures and their methods are those of ``flexmeasures cariflex statistics`` etc. (see
``data/services``). Bad parameters: 400 with a message naming the parameter; a site that is not
set up: 503. Nothing here writes to the database.
"""

from __future__ import annotations

from datetime import UTC, datetime

from flask import jsonify, request
from flask_security import auth_token_required

from cariflex import inputs
from cariflex.fleet import FleetError
from flexmeasures_cariflex.api import cariflex_api_bp
from flexmeasures_cariflex.api.routes import _message, current_fleet
from flexmeasures_cariflex.data.services.openadr_ingest import SiteNotReady


def _since(name: str, default: str) -> datetime:
    return inputs.since(request.args.get(name, default), name)


def _answer(compute):
    try:
        return jsonify(compute())
    except (SiteNotReady, FleetError, LookupError) as exc:
        return _message(503, str(exc))
    except ValueError as exc:
        return _message(400, str(exc))


@cariflex_api_bp.route("/statistics", methods=["GET"])
@auth_token_required
def get_statistics():
    from flexmeasures_cariflex.data.services.statistics import parse_period, statistics

    args = request.args
    return _answer(
        lambda: statistics(
            current_fleet(),
            parse_period(args.get("day"), args.get("month"), args.get("year")),
            device=args.get("device"),
            group=args.get("group"),
        )
    )


@cariflex_api_bp.route("/flexibility", methods=["GET"])
@auth_token_required
def get_flexibility():
    from flexmeasures_cariflex.data.services.flexibility import current

    try:
        hours = inputs.hours(request.args.get("hours", "1"))
    except inputs.InputError as exc:
        return _message(400, str(exc))
    return _answer(lambda: current(current_fleet(), hours=hours).as_dict())


@cariflex_api_bp.route("/dr-verification", methods=["GET"])
@auth_token_required
def get_dr_verification():
    from flexmeasures_cariflex.data.services.dr_verification import verify_events

    return _answer(
        lambda: {"events": verify_events(current_fleet(), _since("since", "P7D"), datetime.now(UTC))}
    )


@cariflex_api_bp.route("/alerts", methods=["GET"])
@auth_token_required
def get_alerts():
    from flexmeasures_cariflex.data.services.alerts import list_alerts

    return _answer(lambda: {"alerts": list_alerts(_since("since", "PT24H"), request.args.get("rule"))})
