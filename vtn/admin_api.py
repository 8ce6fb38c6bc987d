"""The operator's JSON API, next to the OpenADR endpoint in the VTN process.

The same operations as the CLI (vtn.actions), behind a bearer token
(CARIFLEX_VTN_ADMIN_TOKEN). ``GET /health`` needs no token; ``/console/`` is the operator console
(vtn.console: logins and sessions instead of the token). Errors are JSON
``{"error": "..."}`` with 400 (bad input), 401, 404 (unknown id) or 409 (state conflict).

Every store call runs on the VTN's admin threads (``CariflexVtn.in_admin_thread``), never on the
event loop the VENs' polls are answered on.
"""

from __future__ import annotations

import hmac
import json
import logging
from typing import TYPE_CHECKING, Any

from aiohttp import web

from cariflex.json_input import JsonInputError, load_json
from vtn import actions
from vtn.console import web as console
from vtn.console.web import PREFIX as CONSOLE_PREFIX
from vtn.events import Conflict, InputError, NotFound

if TYPE_CHECKING:
    from vtn.server import CariflexVtn

VTN_KEY = web.AppKey("vtn", object)
log = logging.getLogger("cariflex.vtn.admin")


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=lambda d: json.dumps(d, default=str))


@web.middleware
async def errors_and_auth(request: web.Request, handler):
    vtn: CariflexVtn = request.app[VTN_KEY]
    # The console (its own sessions and CSRF, vtn.console.web) and the way to it need no token.
    if request.path not in ("/health", "/", CONSOLE_PREFIX) and not request.path.startswith(
        f"{CONSOLE_PREFIX}/"
    ):
        sent = request.headers.get("Authorization", "")
        expected = f"Bearer {vtn.options.admin_token}"
        if not hmac.compare_digest(sent.encode(), expected.encode()):
            return _json({"error": "missing or wrong bearer token (CARIFLEX_VTN_ADMIN_TOKEN)"}, 401)
    try:
        return await handler(request)
    except InputError as exc:
        return _json({"error": str(exc)}, 400)
    except NotFound as exc:
        return _json({"error": str(exc)}, 404)
    except Conflict as exc:
        return _json({"error": str(exc)}, 409)
    except web.HTTPException:
        raise  # aiohttp's own answers (404 route, 405 method, 413 body too large)
    except Exception:  # a fault of ours: logged with its trace, never shown to the caller
        log.exception("admin API request failed", extra={"fields": {"path": request.path[:80]}})
        return _json({"error": "internal error; the VTN log has the details"}, 500)


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        body = load_json(await request.read())  # size, depth, finite numbers, no NUL (cariflex.json_input)
    except JsonInputError as exc:
        raise InputError(f"request body must be a JSON object: {exc}") from None
    if not isinstance(body, dict):
        raise InputError("request body must be a JSON object")
    return body


# JSON types each field may have (a string where a list belongs would be read character by character).
FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "start": (str,),
    "prices": (list,),
    "prices_name": (str,),
    "currency": (str,),
    "unit": (str,),
    "targets": (list, str),
    "vens": (list, str),
    "allow_past": (bool,),
    "duration": (str,),
    "levels": (list, str, int, float),
    "ramp_up": (str,),
    "notification": (str,),
    "recovery": (str,),
    "name": (str,),
    "fingerprint": (str,),
    "capacity_kw": (int, float),
}


def _fields(
    body: dict[str, Any], allowed: set[str] | frozenset[str], required: tuple[str, ...] = ()
) -> dict[str, Any]:
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        raise InputError(f"unknown field(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")
    missing = [key for key in required if body.get(key) is None]
    if missing:
        raise InputError(f"missing field(s) {', '.join(missing)}")
    for key, value in body.items():
        if value is None:
            continue
        expected = FIELD_TYPES[key]
        if (isinstance(value, bool) and bool not in expected) or not isinstance(value, expected):
            names = " or ".join(
                {
                    "str": "a string",
                    "list": "a list",
                    "bool": "true/false",
                    "int": "a number",
                    "float": "a number",
                }[t.__name__]
                for t in expected
            )
            raise InputError(f"field {key!r} must be {names}, not {json.dumps(value)[:60]}")
        if (
            key in ("targets", "vens")
            and isinstance(value, list)
            and not all(isinstance(v, str) for v in value)
        ):
            raise InputError(f"field {key!r} must be a list of strings")
    if isinstance(body.get("levels"), int | float):
        body = {**body, "levels": [body["levels"]]}
    return body


async def _store(request: web.Request, action, *args: Any, **kwargs: Any) -> Any:
    """``action(store, ...)`` on an admin thread: the loop goes on serving while the store works."""
    vtn: CariflexVtn = request.app[VTN_KEY]
    return await vtn.in_admin_thread(action, vtn.store, *args, **kwargs)


async def health(request: web.Request) -> web.Response:
    vtn: CariflexVtn = request.app[VTN_KEY]
    try:
        figures = await _store(request, actions.counts)
    except Exception as exc:  # the store is what the VTN is for: unreachable = unhealthy
        return _json({"status": "error", "store": str(exc)}, 503)
    return _json({"status": "ok", "port": vtn.port, **figures})


async def list_events(request: web.Request) -> web.Response:
    active = request.query.get("active", "").lower() in ("1", "true", "yes")
    return _json(await _store(request, actions.list_events, active=active))


async def show_event(request: web.Request) -> web.Response:
    return _json(await _store(request, actions.show_event, request.match_info["event_id"]))


async def create_price(request: web.Request) -> web.Response:
    body = _fields(await _body(request), actions.PRICE_FIELDS, ("start", "prices"))
    return _json(await _store(request, actions.create_price_event, **body), 201)


async def create_load_control(request: web.Request) -> web.Response:
    body = _fields(await _body(request), actions.LOAD_CONTROL_FIELDS, ("start", "duration", "levels"))
    return _json(await _store(request, actions.create_load_control_event, **body), 201)


async def modify_event(request: web.Request) -> web.Response:
    body = _fields(await _body(request), actions.PRICE_FIELDS | actions.LOAD_CONTROL_FIELDS)
    return _json(await _store(request, actions.modify_event, request.match_info["event_id"], **body))


async def cancel_event(request: web.Request) -> web.Response:
    return _json(await _store(request, actions.cancel_event, request.match_info["event_id"]))


async def list_opts(request: web.Request) -> web.Response:
    return _json(await _store(request, actions.list_opts, request.match_info["event_id"]))


async def list_vens(request: web.Request) -> web.Response:
    return _json(await _store(request, actions.list_vens))


async def add_ven(request: web.Request) -> web.Response:
    body = _fields(await _body(request), {"name", "fingerprint", "capacity_kw"}, ("name",))
    return _json(
        await _store(
            request, actions.add_ven, body.get("name", ""), body.get("fingerprint"), body.get("capacity_kw")
        ),
        201,
    )


def make_app(vtn: CariflexVtn) -> web.Application:
    app = web.Application(middlewares=[errors_and_auth])
    app[VTN_KEY] = vtn
    app.add_routes(
        [
            web.get("/health", health),
            web.get("/events", list_events),
            web.post("/events/price", create_price),
            web.post("/events/load-control", create_load_control),
            web.get("/events/{event_id}", show_event),
            web.patch("/events/{event_id}", modify_event),
            web.post("/events/{event_id}/cancel", cancel_event),
            web.get("/events/{event_id}/opts", list_opts),
            web.get("/vens", list_vens),
            web.post("/vens", add_ven),
            web.get("/", console.root),
        ]
    )
    app.add_subapp(CONSOLE_PREFIX, console.make_app(vtn))
    return app


async def start(vtn: CariflexVtn, host: str, port: int) -> web.AppRunner:
    runner = web.AppRunner(make_app(vtn), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
