"""Guards in front of every JSON API of this FlexMeasures server: ours and FlexMeasures' own.

FlexMeasures 1.0.1 answers some bad input with a 500 (each gap has a test in
tests/integration/test_http_edges.py):

- ``POST /api/v3_0/sensors/<id>/data`` with ``"values": []`` raises inside its schema (500);
- a body nested ~1000 levels deep raises RecursionError in ``request.get_json`` (500);
- an unexpected exception (e.g. PostgreSQL refusing a NUL character) is answered by its generic
  error handler with ``str(exception)``: the whole SQL statement and its parameters went out.

So, before any ``/api/`` request reaches a view, a JSON body is read once through
``cariflex.json_input.load_json`` (size, depth, finite numbers, no NUL or lone surrogates) and
refused with a 400 naming the problem; the sensor-data post must carry values; and any exception
that is not an HTTP error is logged with its trace and answered as a plain 500 without details.
"""

from __future__ import annotations

import re
from typing import Any

from flask import Response, current_app, jsonify, request
from werkzeug.exceptions import HTTPException, InternalServerError

from cariflex.json_input import JsonInputError, load_json, quote
from flexmeasures_cariflex.api import cariflex_api_bp

# Ours: one event or a small query. FlexMeasures' sensor data: a week of 1-minute values of one
# sensor is ~200 KB; 16 MiB leaves room for bulk back-fills.
OUR_MAX_BYTES = 1024 * 1024
FLEXMEASURES_MAX_BYTES = 16 * 1024 * 1024
SENSOR_DATA_PATH = re.compile(r"^/api/v3_0/sensors/[^/]+/data/?$")
TRIGGER_PATH = re.compile(r"^/api/v3_0/(assets|sensors)/[^/]+/schedules/trigger/?$")


def _refuse(status: int, message: str) -> Response:
    response = jsonify(message=message, status=status)
    response.status_code = status
    return response


def json_body() -> Any:
    """The request's JSON body (already checked by the guard when it is an /api/ request)."""
    limit = OUR_MAX_BYTES if request.path.startswith(cariflex_api_bp.url_prefix) else FLEXMEASURES_MAX_BYTES
    if request.content_length is not None and request.content_length > limit:
        raise JsonInputError(f"the body has {request.content_length} bytes; the limit is {limit}")
    return load_json(request.get_data(cache=True), max_bytes=limit)


def _is_json_write() -> bool:
    return (
        request.path.startswith("/api/")
        and request.method in ("POST", "PUT", "PATCH", "DELETE")
        and (request.content_length or 0) > 0
        and (request.mimetype or "").endswith("json")
    )


def guard_json_bodies() -> Response | None:
    if not _is_json_write():
        return None
    try:
        body = json_body()
    except JsonInputError as exc:
        current_app.logger.warning(f"refused {request.method} {quote(request.path, 80)}: {exc}")
        return _refuse(400, f"the request body must be a JSON object within limits: {exc}")
    if request.method == "POST" and TRIGGER_PATH.match(request.path) and not _has_job_queue():
        # FlexMeasures would try to enqueue on the port-0 placeholder (config.NO_REDIS) and answer
        # a 500 after redis-py's retries; a 409 (not a 5xx): the request conflicts with how this
        # server is set up, and says how
        return _refuse(
            409,
            "this server has no job queue (CARIFLEX_REDIS_URL is not set), so FlexMeasures' "
            "scheduling jobs cannot run; the Cariflex fleet schedule is planned in-process "
            "(flexmeasures cariflex replan)",
        )
    if request.method == "POST" and SENSOR_DATA_PATH.match(request.path) and isinstance(body, dict):
        values = body.get("values")
        if isinstance(values, list) and not values:
            # FlexMeasures 1.0.1: 500 from its schema on an empty list
            return _refuse(422, "values: the list is empty; send at least one value")
    return None


def _has_job_queue() -> bool:
    from flexmeasures_cariflex.config import NO_REDIS

    return current_app.config.get("FLEXMEASURES_REDIS_PORT") != NO_REDIS["FLEXMEASURES_REDIS_PORT"]


@cariflex_api_bp.record_once
def _guard_first(state) -> None:
    # First of all before-request functions: Flask-Security's token loader (run by FlexMeasures'
    # own before-request hooks through current_user) already parses the body with get_json.
    state.app.before_request_funcs.setdefault(None, []).insert(0, guard_json_bodies)


@cariflex_api_bp.app_errorhandler(Exception)
def no_details_in_errors(error: Exception):
    """HTTP errors as FlexMeasures renders them; anything else a 500 that tells nothing inside."""
    from flexmeasures.utils.error_utils import error_handling_router

    if isinstance(error, HTTPException):
        return error_handling_router(error)
    current_app.logger.exception(f"unhandled error in {request.method} {quote(request.path, 80)}")
    return error_handling_router(
        InternalServerError(description="internal error; the server log has the details")
    )
