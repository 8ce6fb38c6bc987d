"""Endpoints for the VEN bridge (and other Cariflex components), under /api/cariflex/v1.

Authentication: a FlexMeasures auth token (``POST /api/requestAuthToken``) sent as the raw
``Authorization: <token>`` header; the user needs the role ``cariflex-ven`` or ``admin``.

- ``POST /openadr/events``: one normalised OpenADR event (see ``openadr_ingest``).
  200 ``{"status": "ingested", "event_id", "modification_number", "written": {sensor: n},
  "changed": [sensor, ...], "replan": bool}`` (``replan``: prices or limits changed, so a new
  fleet schedule follows, debounced; see ``replan``)
  200 ``{"status": "already-ingested", "event_id", "modification_number",
  "ingested_modification_number"}``; 400 ``{"message"}`` when the body is not a JSON object;
  422 ``{"message"}`` when the event is refused (nothing written); 503 ``{"message"}`` when the
  site is not set up. 401 / 403 from FlexMeasures' auth handlers.
- ``GET /sensors``: ``{"sensors": {name: id}}`` for every sensor of the site.
- ``GET /schedule?hours=4``: the fleet schedule the VEN bridge follows (see ``get_schedule`` and
  ``cariflex.contracts.fleet_schedule``):
  ``{"version", "ok", "breaches", "start", "resolution": "PT15M", "unit": "kW",
  "devices": {name: [kW per period, charging positive, or null]}}``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from functools import cache
from typing import Any

import pandas as pd
from flask import current_app, jsonify, request
from flask_security import auth_token_required
from flexmeasures.auth.decorators import roles_accepted
from flexmeasures.data import db

from cariflex import inputs
from cariflex.fleet import Fleet, FleetError, load_fleet
from cariflex.json_input import JsonInputError, quote
from flexmeasures_cariflex.api import cariflex_api_bp
from flexmeasures_cariflex.api.guards import json_body
from flexmeasures_cariflex.data.queries.site import site_sensors
from flexmeasures_cariflex.data.services.admin_user import VEN_ROLE
from flexmeasures_cariflex.data.services.openadr_ingest import IngestError, SiteNotReady, ingest_event
from flexmeasures_cariflex.data.services.replan import (
    QUARTER,
    current_schedule,
    request_replan,
    schedule_status,
)


@cache
def current_fleet() -> Fleet:
    """The fleet this server serves ($CARIFLEX_FLEET_FILE or the packaged one), read once."""
    return load_fleet()


def _message(status: int, message: str) -> tuple[Any, int]:
    return jsonify(message=message), status


@cariflex_api_bp.route("/openadr/events", methods=["POST"])
@auth_token_required
@roles_accepted(VEN_ROLE)  # FlexMeasures' version also accepts admin
def post_openadr_event():
    try:
        body = json_body()
    except JsonInputError as exc:
        return _message(400, f"the request body must be a JSON object (an OpenADR event): {exc}")
    if not isinstance(body, dict):
        return _message(
            400,
            f"the request body must be a JSON object (an OpenADR event), got a JSON {type(body).__name__}",
        )
    event_id = quote(body.get("event_id"))
    try:
        result = ingest_event(body, current_fleet())
        db.session.commit()
    except IngestError as exc:
        db.session.rollback()
        current_app.logger.warning(f"OpenADR event {event_id} refused: {quote(str(exc), 300)}")
        return _message(422, str(exc))
    except (SiteNotReady, FleetError) as exc:
        db.session.rollback()
        current_app.logger.error(f"OpenADR event {event_id} not ingested: {exc}")
        return _message(503, str(exc))
    except Exception:
        db.session.rollback()
        raise
    current_app.logger.info(f"OpenADR {result.summary()}")
    if result.replan:
        request_replan(current_fleet())  # debounced: a burst of events gives one schedule
    return jsonify(result.as_dict()), 200


@cariflex_api_bp.route("/sensors", methods=["GET"])
@auth_token_required
@roles_accepted(VEN_ROLE)
def get_sensors():
    try:
        found = site_sensors(current_fleet())
    except (LookupError, FleetError) as exc:
        return _message(503, str(exc))
    return jsonify(sensors={name: sensor.id for name, sensor in found.items()}), 200


@cariflex_api_bp.route("/schedule", methods=["GET"])
@auth_token_required
@roles_accepted(VEN_ROLE)
def get_schedule():
    """The fleet schedule from the current 15-min period for ``hours`` (default 4; 0.25..48,
    ``cariflex.inputs.hours``), as the contract ``cariflex.contracts.fleet_schedule`` has it.

    ETag = schedule version + first period: a VEN asking with If-None-Match gets 304 until a
    re-plan or the next period boundary.
    """
    try:
        hours = inputs.hours(request.args.get("hours", "4"))
    except inputs.InputError as exc:
        return _message(400, str(exc))
    now = datetime.now(UTC)
    start = pd.Timestamp(now).floor(QUARTER).isoformat()
    try:
        fleet = current_fleet()
        # the ETag first (one attribute read): a VEN polling every 2 s mostly gets 304, and
        # building the payload (every device's and the site's beliefs) is then not needed
        etag = f'"{schedule_status(fleet).get("version")}|{start}|{hours:g}"'
        if request.headers.get("If-None-Match") == etag:
            return "", 304, {"ETag": etag}
        schedule = current_schedule(fleet, hours, now).to_dict()
    except (LookupError, FleetError) as exc:
        return _message(503, str(exc))
    response = jsonify(schedule)
    response.headers["ETag"] = etag
    return response
