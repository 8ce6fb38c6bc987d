"""The console's routes on the admin port: login, sessions, CSRF, and the pages.

Every page but the login form needs a session (an HttpOnly, SameSite=Strict cookie naming a
``vtn_operator_session`` row). Every POST carries the session's CSRF token in a hidden field and is
refused (403, nothing written) without it; the login form carries a double-submit token (cookie +
field), so a foreign page cannot log a browser in either. Operator changes go through
``vtn.actions`` — the CLI's and the admin API's code — and are recorded (``vtn.operators.record``)
and logged with the operator's name, refused ones included.

Pages send a Content-Security-Policy allowing only this server's scripts and styles: the pinned
chart library (uPlot) and the console's own script come from ``/console/static``; nothing loads
from the internet.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import re
import secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import jinja2
from aiohttp import web

from cariflex.json_input import clip
from vtn import actions, operators
from vtn.console import views
from vtn.events import PENDING_OR_ACTIVE, RESOURCE_ID, Conflict, InputError, NotFound

if TYPE_CHECKING:
    from vtn.server import CariflexVtn

PREFIX = "/console"
HERE = Path(__file__).parent
SESSION_COOKIE = "cariflex_vtn_session"
LOGIN_CSRF_COOKIE = "cariflex_vtn_login_csrf"
VTN_KEY = web.AppKey("vtn", object)
LOGINS_KEY = web.AppKey("logins", asyncio.Semaphore)
FLASHES = {"created", "modified", "cancelled"}
OPEN_PATHS = (f"{PREFIX}/login", f"{PREFIX}/static/")
log = logging.getLogger("cariflex.vtn.console")

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
        "connect-src 'self'; font-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

# The form fields of each change, by the names vtn.actions takes (and the CLI option they mirror).
LOAD_CONTROL_FORM = ("start", "duration", "levels", "ramp_up", "notification", "recovery", "targets", "vens")
PRICE_FORM = ("start", "prices", "currency", "unit", "targets", "vens")
KINDS = {"load-control": "load_control", "price": "price"}

_templates = jinja2.Environment(
    loader=jinja2.FileSystemLoader(HERE / "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
_templates.filters["local"] = views.local
_templates.filters["form_time"] = views.form_time
_templates.filters["opt_summary"] = views.opt_summary
_templates.globals["prefix"] = PREFIX


class Refused(Exception):
    """A request the console answers with a page saying why (status, title, message)."""

    def __init__(self, status: int, title: str, message: str):
        super().__init__(message)
        self.status, self.title, self.message = status, title, message


def _vtn(request: web.Request) -> CariflexVtn:
    return request.app[VTN_KEY]


async def _call(request: web.Request, function, *args: Any, **kwargs: Any) -> Any:
    """A store function on the VTN's admin threads (never on the loop that answers the VENs)."""
    vtn = _vtn(request)
    return await vtn.in_admin_thread(function, vtn.store, *args, **kwargs)


def render(request: web.Request, template: str, status: int = 200, **context: Any) -> web.Response:
    session = request.get("session")
    page = _templates.get_template(template).render(
        operator=session.operator if session else None,
        csrf_token=session.csrf_token if session else "",
        zone=views.zone_label(),
        path=request.path,
        **context,
    )
    return web.Response(text=page, status=status, content_type="text/html", charset="utf-8")


def _error_page(request: web.Request, refused: Refused) -> web.Response:
    return render(request, "error.html", refused.status, title=refused.title, message=refused.message)


@web.middleware
async def console_middleware(request: web.Request, handler):
    """Sessions, CSRF and error pages for every console route; security headers on every answer."""
    try:
        response = await _guarded(request, handler)
    except Refused as refused:
        response = _error_page(request, refused)
    except web.HTTPException as exc:
        if exc.status in (404, 405, 413):
            titles = {404: "Not found", 405: "Not allowed", 413: "Too large"}
            response = _error_page(
                request, Refused(exc.status, titles[exc.status], f"{clip(request.path, 80)}: {exc.reason}")
            )
        else:
            raise
    except Exception:  # a fault of ours: logged with its trace, never shown
        log.exception("console request failed", extra={"fields": {"path": clip(request.path, 80)}})
        response = _error_page(
            request, Refused(500, "Internal error", "The VTN could not answer; its log has the details.")
        )
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    if not request.path.startswith(f"{PREFIX}/static/"):
        response.headers["Cache-Control"] = "no-store"
    return response


async def _guarded(request: web.Request, handler):
    if request.path.startswith(OPEN_PATHS):
        return await handler(request)
    session = await _call(request, operators.session_for, request.cookies.get(SESSION_COOKIE))
    if session is None:
        if request.method == "GET":
            raise web.HTTPSeeOther(f"{PREFIX}/login?next={quote(request.path_qs)}")
        raise Refused(401, "Not logged in", "Your session has ended; log in again. Nothing was changed.")
    request["session"] = session
    if request.method == "POST":
        form = await _form(request)
        sent = form.get("csrf_token", "")
        if not sent or not hmac.compare_digest(sent.encode(), session.csrf_token.encode()):
            await _record(
                request,
                _action_of(request),
                request.match_info.get("event_id"),
                "refused",
                "missing or wrong CSRF token",
            )
            raise Refused(
                403,
                "Refused",
                "The form's CSRF token is missing or wrong, so nothing was changed. "
                "Reload the page and submit it again.",
            )
    return await handler(request)


def _action_of(request: web.Request) -> str:
    """The action a POST asks for, as the record names it."""
    last = request.path.rstrip("/").rsplit("/", 1)[-1]
    return {"load-control": "create load_control", "price": "create price"}.get(last, clip(last, 30))


async def _form(request: web.Request) -> dict[str, str]:
    """The posted fields as text (a file or a repeated field is refused by name)."""
    if "form" in request:
        return request["form"]
    try:
        posted = await request.post()
    except (ValueError, LookupError, RuntimeError) as exc:  # a malformed body, an unknown charset or
        # transfer encoding (aiohttp raises each of these from post())
        raise Refused(400, "Bad request", f"the form could not be read: {clip(str(exc), 80)}") from None
    form: dict[str, str] = {}
    for key, value in posted.items():
        if not isinstance(value, str):
            raise Refused(400, "Bad request", f"field {clip(key, 40)!r} must be text, not a file")
        if key in form:
            raise Refused(400, "Bad request", f"field {clip(key, 40)!r} is given twice")
        if "\x00" in value:
            raise Refused(400, "Bad request", f"field {clip(key, 40)!r} holds a NUL character")
        form[key] = value.strip()
    request["form"] = form
    return form


async def _record(
    request: web.Request,
    action: str,
    target: str | None,
    outcome: str,
    detail: str | None = None,
    who: str | None = None,
) -> None:
    """Log and record an operator's action; ``who``: the session's operator unless given (a login)."""
    session = request.get("session")
    who = who or (session.operator if session else "-")
    log.info(
        "console action",
        extra={
            "fields": {
                "operator": who,
                "action": action,
                "target": None if target is None else clip(target, 80),
                "outcome": outcome,
                "detail": None if detail is None else clip(detail, 200),
            }
        },
    )
    await _call(request, operators.record, who, action, target, outcome, detail)


def _event_id(request: web.Request) -> str:
    event_id = request.match_info["event_id"]
    if not RESOURCE_ID.match(event_id):
        raise Refused(404, "Not found", f"event {clip(repr(event_id), 60)} does not exist")
    return event_id


async def _show(request: web.Request, event_id: str) -> dict[str, Any]:
    try:
        return await _call(request, actions.show_event, event_id)
    except NotFound as exc:
        raise Refused(404, "Not found", str(exc)) from None


# --- login ----------------------------------------------------------------------------------------


def _secure(request: web.Request) -> bool:
    """Cookies only over HTTPS when the console is reached over HTTPS (directly or through the
    TLS-terminating proxy, which says so in X-Forwarded-Proto)."""
    return request.secure or request.headers.get("X-Forwarded-Proto", "").lower() == "https"


def _safe_next(target: str | None) -> str:
    """Only a console path (never another site) after login."""
    if target and target.startswith(f"{PREFIX}/") and not target.startswith("//") and "\\" not in target:
        return target
    return f"{PREFIX}/"


def _login_page(
    request: web.Request,
    status: int = 200,
    message: str | None = None,
    name: str = "",
    after: str | None = None,
) -> web.Response:
    token = secrets.token_urlsafe(32)
    response = render(
        request,
        "login.html",
        status,
        login_csrf=token,
        message=message,
        name=name,
        next=_safe_next(after or request.query.get("next")),
    )
    response.set_cookie(
        LOGIN_CSRF_COOKIE,
        token,
        httponly=True,
        samesite="Strict",
        path=f"{PREFIX}/login",
        secure=_secure(request),
    )
    return response


async def login_form(request: web.Request) -> web.Response:
    return _login_page(request)


async def login(request: web.Request) -> web.Response:
    form = await _form(request)
    name = form.get("name", "")
    cookie = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    sent = form.get("csrf_token", "")
    if not cookie or not sent or not hmac.compare_digest(cookie.encode(), sent.encode()):
        # not "login": a forged login must not count towards the name's lockout
        await _record(request, "login-csrf", None, "refused", "missing or wrong CSRF token", clip(name, 90))
        return _login_page(
            request,
            403,
            "The login form's CSRF token is missing or wrong. Nothing was changed; try again.",
            name,
        )
    try:
        # One scrypt at a time (~50 ms, 16 MiB each): a flood of logins queues here and leaves the
        # other admin thread to the admin API and the console's pages.
        async with request.app[LOGINS_KEY]:
            session = await _call(request, operators.log_in, name, form.get("password", ""))
    except InputError as exc:
        log.info("console login refused", extra={"fields": {"operator": clip(name, 80), "reason": str(exc)}})
        return _login_page(request, 401, str(exc), name, form.get("next"))
    log.info("console login", extra={"fields": {"operator": session.operator}})
    response = web.HTTPSeeOther(_safe_next(form.get("next")))
    response.set_cookie(
        SESSION_COOKIE,
        session.token,
        httponly=True,
        samesite="Strict",
        path=f"{PREFIX}/",
        secure=_secure(request),
        max_age=int(operators.SESSION_LIFETIME.total_seconds()),
    )
    response.del_cookie(LOGIN_CSRF_COOKIE, path=f"{PREFIX}/login")
    return response


async def logout(request: web.Request) -> web.Response:
    await _call(request, operators.log_out, request["session"])
    log.info("console logout", extra={"fields": {"operator": request["session"].operator}})
    response = web.HTTPSeeOther(f"{PREFIX}/login")
    response.del_cookie(SESSION_COOKIE, path=f"{PREFIX}/")
    return response


# --- events ---------------------------------------------------------------------------------------


async def events(request: web.Request) -> web.Response:
    now = datetime.now(UTC)
    try:
        first = views.parse_month(request.query.get("month"), now)
    except InputError as exc:
        raise Refused(400, "Bad request", str(exc)) from None
    rows = await _call(request, actions.list_events)
    sent = await _call(request, actions.deliveries)
    for row in rows:
        row["vens_sent"] = sent.get(row["event_id"], [])
    upcoming = [r for r in rows if r["status"] in PENDING_OR_ACTIVE]
    past = [r for r in reversed(rows) if r["status"] not in PENDING_OR_ACTIVE][:50]
    return render(
        request,
        "events.html",
        upcoming=upcoming,
        past=past,
        month=views.month(first, rows, now),
        flash=_flash(request),
    )


def _flash(request: web.Request) -> str | None:
    """What the redirect after a change says it did (nothing else a link could put on the page)."""
    done = request.query.get("done")
    return done if done in FLASHES else None


async def event_page(request: web.Request) -> web.Response:
    event_id = _event_id(request)
    event = await _show(request, event_id)
    history = await _call(request, operators.actions_on, event_id)
    return render(
        request,
        "event.html",
        event=event,
        history=history,
        picture=event["picture"],
        flash=_flash(request),
    )


async def event_vens(request: web.Request) -> web.Response:
    """The per-VEN table alone: the event page's script swaps it in every few seconds."""
    event = await _show(request, _event_id(request))
    return render(request, "_vens_sent.html", event=event)


async def event_data(request: web.Request) -> web.Response:
    """What the event page's chart draws (JSON)."""
    event_id = _event_id(request)
    event = await _show(request, event_id)
    picture = event["picture"]
    return web.json_response(
        {
            "kind": event["kind"],
            "unit": event["unit"],
            "intervals": event["intervals"],
            "picture": picture,
            "timezone": views.SITE_TZ.key,
        }
    )


def _inputs(form: dict[str, str], names: tuple[str, ...]) -> dict[str, Any]:
    """The form's fields as vtn.actions takes them; empty fields are left out."""
    out: dict[str, Any] = {}
    for name in names:
        value = form.get(name, "")
        if value == "":
            continue
        if name == "prices":  # pasted from a spreadsheet: commas, spaces or lines between the values
            out[name] = [v for v in re.split(r"[,;\s]+", value) if v]
        else:
            out[name] = value
    if form.get("allow_past") == "on":
        out["allow_past"] = True
    return out


async def new_event_form(request: web.Request) -> web.Response:
    kind = KINDS.get(request.match_info["kind"])
    if kind is None:
        raise Refused(404, "Not found", "events are price or load-control")
    return _event_form(request, kind, {})


def _event_form(
    request: web.Request, kind: str, values: dict[str, str], status: int = 200, message: str | None = None
) -> web.Response:
    now = datetime.now(UTC)
    return render(
        request,
        "event_form.html",
        status,
        kind=kind,
        values=values,
        message=message,
        default_start=views.next_quarter(now) if kind == "load_control" else views.next_day(now),
        event=None,
    )


async def create_event(request: web.Request) -> web.Response:
    kind = KINDS.get(request.match_info["kind"])
    if kind is None:
        raise Refused(404, "Not found", "events are price or load-control")
    form = await _form(request)
    names = LOAD_CONTROL_FORM if kind == "load_control" else PRICE_FORM
    inputs = _inputs(form, names)
    action = actions.create_load_control_event if kind == "load_control" else actions.create_price_event
    if kind == "price":
        inputs["prices_name"] = "--values"
    try:
        for required in ("start", "duration", "levels") if kind == "load_control" else ("start", "prices"):
            if required not in inputs:
                raise InputError(f"missing --{required.replace('_', '-')}")
        created = await _call(request, action, **inputs)
    except (InputError, Conflict) as exc:
        await _record(request, f"create {kind}", None, "refused", str(exc))
        return _event_form(request, kind, form, 400, str(exc))
    await _record(request, f"create {kind}", created["event_id"], "done", "modification 0")
    raise web.HTTPSeeOther(f"{PREFIX}/events/{created['event_id']}?done=created")


async def modify_form(request: web.Request) -> web.Response:
    event = await _show(request, _event_id(request))
    return _modify_page(request, event, {})


def _modify_page(
    request: web.Request,
    event: dict[str, Any],
    values: dict[str, str],
    status: int = 200,
    message: str | None = None,
) -> web.Response:
    return render(
        request,
        "event_form.html",
        status,
        kind=event["kind"],
        values=values,
        message=message,
        event=event,
        default_start="",
    )


async def modify(request: web.Request) -> web.Response:
    event_id = _event_id(request)
    event = await _show(request, event_id)
    form = await _form(request)
    names = LOAD_CONTROL_FORM if event["kind"] == "load_control" else ("start", "prices", "targets", "vens")
    changes = _inputs(form, names)
    if "prices" in changes:
        changes["prices_name"] = "--values"
    try:
        changed = await _call(request, actions.modify_event, event_id, **changes)
    except (InputError, Conflict) as exc:
        await _record(request, "modify", event_id, "refused", str(exc))
        return _modify_page(request, event, form, 409 if isinstance(exc, Conflict) else 400, str(exc))
    except NotFound as exc:
        raise Refused(404, "Not found", str(exc)) from None
    await _record(request, "modify", event_id, "done", f"modification {changed['modification_number']}")
    raise web.HTTPSeeOther(f"{PREFIX}/events/{event_id}?done=modified")


async def cancel_form(request: web.Request) -> web.Response:
    event = await _show(request, _event_id(request))
    return render(request, "cancel.html", event=event, message=None)


async def cancel(request: web.Request) -> web.Response:
    event_id = _event_id(request)
    try:
        done = await _call(request, actions.cancel_event, event_id)
    except Conflict as exc:
        await _record(request, "cancel", event_id, "refused", str(exc))
        event = await _show(request, event_id)
        return render(request, "cancel.html", 409, event=event, message=str(exc))
    except NotFound as exc:
        raise Refused(404, "Not found", str(exc)) from None
    await _record(request, "cancel", event_id, "done", f"modification {done['modification_number']}")
    raise web.HTTPSeeOther(f"{PREFIX}/events/{event_id}?done=cancelled")


# --- VENs and health ------------------------------------------------------------------------------


async def vens(request: web.Request) -> web.Response:
    now = datetime.now(UTC)
    rows = await _call(request, actions.list_vens)
    for row in rows:
        row["last_poll_ago"] = views.ago(row["last_poll_at"], now)
        row["silent"] = views.silent(row, now, _vtn(request).options.poll_seconds)
    return render(request, "vens.html", vens=rows)


async def health(request: web.Request) -> web.Response:
    vtn = _vtn(request)
    now = datetime.now(UTC)
    try:
        figures = await _call(request, actions.counts)
        store_ok, store_error = True, None
    except Exception as exc:  # shown as the store's state, like GET /health
        figures, store_ok, store_error = {}, False, clip(str(exc), 200)
    rows = await _call(request, actions.list_vens) if store_ok else []
    silent = [r["ven_name"] for r in rows if views.silent(r, now, vtn.options.poll_seconds)]
    return render(
        request,
        "health.html",
        figures=figures,
        store_ok=store_ok,
        store_error=store_error,
        store=vtn.store.engine.url.render_as_string(hide_password=True),
        silent=silent,
        security=vtn.security_mode(),
        poll_seconds=vtn.options.poll_seconds,
        openadr_port=vtn.port,
        uptime=str(now - vtn.started_at).split(".")[0],
        started_at=vtn.started_at,
    )


async def root(request: web.Request) -> web.Response:
    raise web.HTTPFound(f"{PREFIX}/")


def make_app(vtn: CariflexVtn) -> web.Application:
    app = web.Application(middlewares=[console_middleware], client_max_size=256 * 1024)
    app[VTN_KEY] = vtn
    app[LOGINS_KEY] = asyncio.Semaphore(1)
    app.add_routes(
        [
            web.get("/login", login_form),
            web.post("/login", login),
            web.post("/logout", logout),
            web.get("/", events),
            web.get("/events/new/{kind}", new_event_form),
            web.post("/events/new/{kind}", create_event),
            web.get("/events/{event_id}", event_page),
            web.get("/events/{event_id}/vens", event_vens),
            web.get("/events/{event_id}/data.json", event_data),
            web.get("/events/{event_id}/modify", modify_form),
            web.post("/events/{event_id}/modify", modify),
            web.get("/events/{event_id}/cancel", cancel_form),
            web.post("/events/{event_id}/cancel", cancel),
            web.get("/vens", vens),
            web.get("/health", health),
            web.static("/static", HERE / "static", append_version=False),
        ]
    )
    return app
