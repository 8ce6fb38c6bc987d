"""The VTN's OpenADR 2.0b HTTP edge: every request a VEN sends passes here before openleadr sees it.

openleadr's ``VTNService.handler`` is the right dispatcher but the wrong gatekeeper for a grid
operator's VTN (each gap has a test in tests/integration/test_vtn_edge.py):

- it parses with an lxml parser that carries the schema, and libxml2 segfaults when that parser
  resolves an internal DTD entity: one 0.5 KB unauthenticated request killed the process;
- with ``verify_message_signatures=True`` it dereferences the signature of every message, so a
  VEN on 2.0b *standard* security (TLS, unsigned XML) gets HTTP 500 for everything after
  registering; with ``False`` a *signed* message is not checked at all;
- refusals come back as plain-text 400/403/500 bodies, as ``oadrCreatedPartyRegistration`` 200
  with empty ids, or as a 463 that names the fingerprint the real VEN has;
- a wrong Content-Type raises a TypeError (``HTTPError(response_code=...)``), an oversized body
  and report messages without a venID end in 500;
- its templates do not escape: a ``None`` or any VEN- or operator-supplied text reaches the wire
  as it is (``<requestID>None</requestID>``, ``&`` breaking the XML).

So the routes of openleadr's services are served by :class:`OpenAdrEdge` instead. It reads the
body within :data:`MAX_BODY_BYTES`, refuses any DOCTYPE, parses without entities, DTDs or network
access, validates against openleadr's 2.0b XSD, checks vtnID, venID, the registration, the TLS
client certificate and (when present, or always when required) the XML signature, then hands the
message to openleadr's ``handle_message`` and renders the answer with every string escaped.
Every refusal is the OpenADR message the spec expects for that request, with the 2.0b response
code; only transport-level problems (413, 415, 400 for what is not an OpenADR message) also change
the HTTP status.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import inspect
import logging
import re
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from datetime import timedelta
from http import HTTPStatus
from typing import Any
from xml.sax.saxutils import escape

from aiohttp import web
from lxml import etree
from openleadr import errors, utils
from openleadr.messaging import XML_SCHEMA, parse_message, validate_xml_signature
from openleadr.service import VTNService

log = logging.getLogger("cariflex.vtn.edge")

# The largest request a VEN may send. A 24-interval distribution is ~11 KB and a day of one-minute
# telemetry in one oadrUpdateReport ~600 KB, so 1 MiB leaves room and bounds what one request costs.
MAX_BODY_BYTES = 1024 * 1024
LOGGED_INPUT_CHARS = 200

# No entities, no DTD, no network, no huge trees: the parser that cannot be turned against us.
SAFE_PARSER = etree.XMLParser(
    resolve_entities=False,
    load_dtd=False,
    dtd_validation=False,
    no_network=True,
    huge_tree=False,
    remove_pis=True,
)
DS_SIGNATURE = "{http://www.w3.org/2000/09/xmldsig#}Signature"

# Messages a VEN sends without a venID of its own yet.
REGISTRATION_MESSAGES = frozenset({"oadrQueryRegistration", "oadrCreatePartyRegistration"})

# The message a VEN expects back for each request; a refusal uses the same one with its code.
RESPONSE_TYPES = {
    "oadrQueryRegistration": "oadrCreatedPartyRegistration",
    "oadrCreatePartyRegistration": "oadrCreatedPartyRegistration",
    "oadrCancelPartyRegistration": "oadrCanceledPartyRegistration",
    "oadrRequestEvent": "oadrDistributeEvent",
    "oadrRegisterReport": "oadrRegisteredReport",
    "oadrUpdateReport": "oadrUpdatedReport",
    "oadrCreateReport": "oadrCreatedReport",
    "oadrCancelReport": "oadrCanceledReport",
}

INVALID_ID = errors.InvalidIdError
NOT_AUTHORIZED = errors.NotRegisteredOrAuthorizedError


class Refusal(Exception):
    """A transport-level refusal: HTTP status and the same code in an oadrResponse."""

    def __init__(self, status: HTTPStatus, description: str):
        super().__init__(description)
        self.status = status
        self.description = description


def clip(text: Any, limit: int = LOGGED_INPUT_CHARS) -> str:
    """Refused input as it may appear in a log line or an answer: bounded, printable."""
    value = text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text)
    value = "".join(c if c.isprintable() else "?" for c in value[: limit + 1])
    return value if len(value) <= limit else value[:limit] + "…"


_SPECIAL = re.compile(r"[&<>\"']")
_ENTITIES = {'"': "&quot;", "'": "&apos;"}


def escaped(value: Any) -> Any:
    """``value`` with every string XML-escaped, for openleadr's non-escaping templates.

    Returns the very object when nothing in it needs escaping (the common case: a distribution
    is rendered for every VEN at every change, and copying it cost more than the check).
    Dataclasses (openleadr's Event, Interval, ...) are copied field by field without running
    ``__post_init__`` again (Event's would overwrite a cancelled status).
    """
    if isinstance(value, str):
        return escape(value, _ENTITIES) if _SPECIAL.search(value) else value
    if isinstance(value, dict):
        items = {k: escaped(v) for k, v in value.items()}
        return value if all(items[k] is value[k] for k in value) else items
    if isinstance(value, list | tuple):
        items = [escaped(v) for v in value]
        return value if all(a is b for a, b in zip(items, value, strict=True)) else type(value)(items)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        changed = {}
        for field in dataclasses.fields(value):
            original = getattr(value, field.name)
            new = escaped(original)
            if new is not original:
                changed[field.name] = new
        if not changed:
            return value
        clone = copy.copy(value)
        for name, new in changed.items():
            object.__setattr__(clone, name, new)
        return clone
    return value


def parse_safely(content: bytes) -> etree._Element:
    """The XML tree of a request, or a Refusal; never resolves an entity or loads a DTD."""
    if not content.strip():
        raise Refusal(HTTPStatus.BAD_REQUEST, "the request body is empty; send an oadrPayload")
    head = content[:4096].lower()
    if b"<!doctype" in head or b"<!entity" in content.lower():
        raise Refusal(HTTPStatus.BAD_REQUEST, "a DOCTYPE or ENTITY declaration is not allowed")
    try:
        tree = etree.fromstring(content, SAFE_PARSER)
    except etree.XMLSyntaxError as exc:
        raise Refusal(HTTPStatus.BAD_REQUEST, f"not well-formed XML: {clip(exc, 120)}") from None
    docinfo = tree.getroottree().docinfo
    if docinfo.doctype or docinfo.internalDTD is not None:  # e.g. a DOCTYPE hidden by another encoding
        raise Refusal(HTTPStatus.BAD_REQUEST, "a DOCTYPE or ENTITY declaration is not allowed")
    if not XML_SCHEMA.validate(tree):
        error = XML_SCHEMA.error_log.last_error
        where = f"line {error.line}: " if error is not None else ""
        message = error.message if error is not None else "invalid"
        raise Refusal(
            HTTPStatus.BAD_REQUEST,
            f"the message does not validate against the OpenADR 2.0b schema: {where}{clip(message, 160)}",
        )
    return tree


# Synchronous, or a coroutine function (the VTN runs its lookups off the event loop).
VenLookup = Callable[[str], dict[str, Any] | None | Awaitable[dict[str, Any] | None]]


class OpenAdrEdge:
    """Serves openleadr's VTN services with the checks above. One instance per VTN."""

    def __init__(
        self,
        services: dict[str, VTNService],
        *,
        vtn_id: str,
        ven_lookup: VenLookup,
        require_signatures: bool,
        create_message: Callable[..., str],
    ):
        self.services = services
        self.vtn_id = vtn_id
        self.ven_lookup = ven_lookup
        self.require_signatures = require_signatures
        self.create_message = create_message
        self.poll_seconds: timedelta | None = None
        # Where parsing and rendering run (the VTN gives a thread, so the loop only moves bytes and
        # stays free for other connections); None: right here on the loop.
        self.cpu_executor: Executor | None = None

    def routes(self, prefix: str) -> list[web.RouteDef]:
        return [
            web.post(f"{prefix}/{service.__service_name__}", self._handler_for(service))
            for service in self.services.values()
        ]

    def _handler_for(self, service: VTNService) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handle(request: web.Request) -> web.Response:
            return await self.handle(service, request)

        return handle

    # --- the request, step by step ---------------------------------------------------------------

    async def handle(self, service: VTNService, request: web.Request) -> web.Response:
        message_type: str | None = None
        payload: dict[str, Any] = {}
        try:
            content = await self._read(request)
            tree, message_type, payload = await self._off_loop(self._parse, content)
            ven = await self._check_ids(message_type, payload)
            if message_type == "oadrResponse":  # an acknowledgement needs no answer (as openleadr does)
                return web.Response(status=200, content_type="application/xml")
            self._authenticate(request, tree, message_type, payload, ven)
            if request.secure and message_type == "oadrCreatePartyRegistration":
                payload["fingerprint"] = utils.get_cert_fingerprint_from_request(request)
            response_type, response_payload = await service.handle_message(message_type, payload)
        except Refusal as refusal:
            self._log_refusal(request, message_type, payload, refusal.description, int(refusal.status))
            return self._answer(
                "oadrResponse",
                {"response": self._response(int(refusal.status), refusal.description, None)},
                status=refusal.status,
            )
        except errors.RequestReregistration as exc:
            return self._answer("oadrRequestReregistration", {"ven_id": exc.ven_id})
        except errors.ProtocolError as exc:
            self._log_refusal(request, message_type, payload, exc.response_description, exc.response_code)
            return self._error_answer(message_type, payload, exc.response_code, exc.response_description)
        except Exception:
            # A fault of ours, not of the input: say so in OpenADR terms so the VEN retries later.
            log.exception("could not handle an OpenADR message", extra={"fields": {"type": message_type}})
            return self._error_answer(
                message_type,
                payload,
                500,
                "the VTN could not handle this message; try again later",
                status=HTTPStatus.INTERNAL_SERVER_ERROR,
            )
        text = await self._off_loop(self._render, response_type, message_type, payload, response_payload)
        return web.Response(text=text, status=200, content_type="application/xml")

    async def _off_loop(self, function: Callable[..., Any], *args: Any) -> Any:
        if self.cpu_executor is None:
            return function(*args)
        return await asyncio.get_running_loop().run_in_executor(self.cpu_executor, function, *args)

    @staticmethod
    def _parse(content: bytes) -> tuple[etree._Element, str, dict[str, Any]]:
        tree = parse_safely(content)
        try:
            message_type, payload = parse_message(content)
        except Exception as exc:  # xmltodict on a schema-valid tree: should not happen
            raise Refusal(HTTPStatus.BAD_REQUEST, f"unreadable message: {clip(exc, 120)}") from None
        return tree, message_type, payload if isinstance(payload, dict) else {}

    def _render(
        self, response_type: str, message_type: str, request: dict[str, Any], payload: dict[str, Any]
    ) -> str:
        return self.create_message(response_type, **escaped(self._complete(message_type, request, payload)))

    async def _read(self, request: web.Request) -> bytes:
        content_type = request.headers.get("Content-Type", "")
        if content_type.split(";")[0].strip().lower() not in ("application/xml", "text/xml"):
            raise Refusal(
                HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
                f"Content-Type must be application/xml, not {clip(content_type, 60) or 'missing'}",
            )
        if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
            raise Refusal(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                f"the body has {request.content_length} bytes; the limit is {MAX_BODY_BYTES}",
            )
        chunks, size = [], 0
        async for chunk in request.content.iter_chunked(64 * 1024):
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                raise Refusal(
                    HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                    f"the body exceeds the limit of {MAX_BODY_BYTES} bytes",
                )
            chunks.append(chunk)
        return b"".join(chunks)

    async def _check_ids(self, message_type: str, payload: dict[str, Any]) -> dict[str, Any] | None:
        """The registered VEN the message is from (None for registration messages), or a refusal."""
        vtn_id = payload.get("vtn_id")
        if vtn_id is not None and vtn_id != self.vtn_id:
            raise INVALID_ID(f"vtnID {clip(vtn_id, 60)!r} is not this VTN's ({self.vtn_id})")
        if message_type == "oadrResponse" or message_type in REGISTRATION_MESSAGES:
            return None
        ven_id = payload.get("ven_id")
        if not ven_id:
            raise INVALID_ID(f"{message_type} carries no venID; register first and send the venID you got")
        ven = self.ven_lookup(ven_id)
        if inspect.isawaitable(ven):  # the VTN looks VENs up off the event loop
            ven = await ven
        if ven is None or ven.get("registration_id") is None:
            # Known to the spec as the way back in: the VEN registers again (provisioning decides).
            raise errors.RequestReregistration(ven_id)
        return ven

    def _authenticate(
        self,
        request: web.Request,
        tree: etree._Element,
        message_type: str,
        payload: dict[str, Any],
        ven: dict[str, Any] | None,
    ) -> None:
        """TLS client certificate and XML signature; standard security = TLS alone is enough."""
        signature = tree.find(DS_SIGNATURE)
        if signature is None and self.require_signatures and message_type != "oadrResponse":
            raise NOT_AUTHORIZED("this VTN requires signed messages (2.0b high security)")
        unsigned_declared = str(payload.get("xml_signature")).lower() in ("false", "0", "none")
        if message_type == "oadrCreatePartyRegistration" and self.require_signatures and unsigned_declared:
            raise NOT_AUTHORIZED("this VTN requires oadrXmlSignature true (2.0b high security)")
        expected: str | None = None
        if ven is not None:
            expected = ven.get("fingerprint")
            if request.secure:
                presented = utils.get_cert_fingerprint_from_request(request)
                if presented is None or expected is None or presented != expected:
                    # Never say which certificate the venID belongs to.
                    raise NOT_AUTHORIZED("the client certificate is not the one provisioned for this venID")
        if signature is None:
            return
        if request.secure:
            expected = utils.get_cert_fingerprint_from_request(request)
        try:
            cert = utils.extract_pem_cert(tree)
            if expected is not None and utils.certificate_fingerprint(cert) != expected:
                raise ValueError("signed with another certificate")
            validate_xml_signature(tree)
        except Exception as exc:
            log.info("signature check failed", extra={"fields": {"reason": clip(exc, 120)}})
            raise NOT_AUTHORIZED("the XML signature is not valid for this VEN") from None

    # --- the answer -----------------------------------------------------------------------------

    @staticmethod
    def _response(code: int, description: str, request_id: Any) -> dict[str, Any]:
        return {
            "response_code": code,
            "response_description": description,
            "request_id": "" if request_id is None else str(request_id),
        }

    def _complete(
        self, message_type: str, request: dict[str, Any], payload: dict[str, Any]
    ) -> dict[str, Any]:
        payload = dict(payload)
        payload["vtn_id"] = self.vtn_id
        if not payload.get("ven_id"):
            payload["ven_id"] = request.get("ven_id") or ""
        if message_type == "oadrPoll" and "events" in payload:
            # A distribution answering a poll answers no request: its eiResponse is optional in the XSD
            # and openleadr would fill it with requestID "None".
            payload["response"] = None
        else:
            response = payload.get("response") or {}
            payload["response"] = self._response(
                response.get("response_code", 200),
                response.get("response_description", "OK"),
                request.get("request_id"),
            )
        if payload.get("request_id") is None:
            payload["request_id"] = utils.generate_id()
        return payload

    def _error_answer(
        self,
        message_type: str | None,
        request: dict[str, Any],
        code: int,
        description: str,
        status: HTTPStatus = HTTPStatus.OK,
    ) -> web.Response:
        response_type = RESPONSE_TYPES.get(message_type or "", "oadrResponse")
        payload: dict[str, Any] = {
            "response": self._response(code, description, request.get("request_id")),
            "vtn_id": self.vtn_id,
            "ven_id": request.get("ven_id") if message_type not in REGISTRATION_MESSAGES else None,
            "request_id": utils.generate_id(),
        }
        if response_type == "oadrCreatedPartyRegistration":
            payload["profiles"] = [{"profile_name": "2.0b", "transports": [{"transport_name": "simpleHttp"}]}]
            payload["requested_oadr_poll_freq"] = self.poll_seconds
        elif response_type == "oadrDistributeEvent":
            payload["events"] = []
        elif response_type in ("oadrCreatedReport", "oadrRegisteredReport"):
            payload["pending_reports"] = []
            payload["report_requests"] = []
        elif response_type == "oadrCanceledPartyRegistration":
            payload["registration_id"] = request.get("registration_id") or ""  # never "None"
        elif response_type == "oadrCanceledReport":
            payload["pending_reports"] = []
        payload["ven_id"] = payload["ven_id"] or ""
        return self._answer(response_type, payload, status=status)

    def _answer(
        self, response_type: str, payload: dict[str, Any], status: HTTPStatus = HTTPStatus.OK
    ) -> web.Response:
        text = self.create_message(response_type, **escaped(payload))
        return web.Response(text=text, status=int(status), content_type="application/xml")

    @staticmethod
    def _log_refusal(request: web.Request, message_type, payload, description, code) -> None:
        log.warning(
            "refused OpenADR message",
            extra={
                "fields": {
                    "path": clip(request.path, 80),
                    "type": clip(message_type, 60) if message_type else None,
                    "ven_id": clip(payload.get("ven_id"), 60) if payload.get("ven_id") else None,
                    "code": code,
                    "reason": clip(description),
                    "peer": request.remote,
                }
            },
        )
