"""The operator CLI's client for a VTN's admin API (``cariflex-vtn --remote URL ...``).

Maps each vtn.actions function onto its HTTP route and the API's error statuses back onto
the same exceptions, so the CLI behaves identically against a local store or a remote VTN.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from cariflex import settings
from cariflex.http_retry import RetryAfter
from vtn.events import Conflict, InputError, NotFound


def _open(request: urllib.request.Request) -> Any:
    """The response, or the HTTPError urllib raises for a 4xx/5xx (it carries the status and headers)."""
    try:
        return urllib.request.urlopen(request, timeout=30)
    except urllib.error.HTTPError as exc:
        return exc


def _request(base: str, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    token = settings.get("CARIFLEX_VTN_ADMIN_TOKEN")
    if not token:
        raise InputError("CARIFLEX_VTN_ADMIN_TOKEN must be set to use a remote VTN's admin API")
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        f"{base}{path}",
        data=data,
        method=method,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        # a 429 (or 503 + Retry-After) is waited out as the API says (cariflex.http_retry)
        answer = RetryAfter(name="VTN admin API").send(lambda: _open(request))
        if isinstance(answer, urllib.error.HTTPError):
            raise answer
        with answer as response:
            return json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read()).get("error", exc.reason)
        except (ValueError, AttributeError):
            message = exc.reason
        raise {400: InputError, 404: NotFound, 409: Conflict}.get(exc.code, InputError)(
            f"{message} (HTTP {exc.code} from {base})"
        ) from None
    except urllib.error.URLError as exc:
        raise InputError(f"cannot reach the VTN admin API at {base}: {exc.reason}") from None


def _clean(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in kwargs.items() if v is not None and v is not False}


def call_remote(base: str, name: str, *args: Any, **kwargs: Any) -> Any:
    quote = urllib.parse.quote
    if name == "add_ven":
        capacity = args[2] if len(args) > 2 else None
        return _request(
            base, "POST", "/vens", _clean({"name": args[0], "fingerprint": args[1], "capacity_kw": capacity})
        )
    if name == "list_vens":
        return _request(base, "GET", "/vens")
    if name == "create_price_event":
        return _request(base, "POST", "/events/price", _clean(kwargs))
    if name == "create_load_control_event":
        return _request(base, "POST", "/events/load-control", _clean(kwargs))
    if name == "list_events":
        return _request(base, "GET", "/events" + ("?active=1" if kwargs.get("active") else ""))
    if name == "show_event":
        return _request(base, "GET", f"/events/{quote(args[0])}")
    if name == "modify_event":
        return _request(base, "PATCH", f"/events/{quote(args[0])}", _clean(kwargs))
    if name == "cancel_event":
        return _request(base, "POST", f"/events/{quote(args[0])}/cancel", {})
    if name == "list_opts":
        return _request(base, "GET", f"/events/{quote(args[0])}/opts")
    raise AssertionError(f"no remote route for {name}")
