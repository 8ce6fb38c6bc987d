"""The RM's S2 connection: s2-python's ``S2AsyncConnection`` over its ``WebsocketClientMedium``,
with what s2-python 0.11 leaves to the application (reference/s2.md §1). Each class says which gap
it fills:

- exactly one ReceptionStatus per received message (traps 5-7): the dispatcher answers
  INVALID_CONTENT for a type an RM does not handle, and a handler chooses OK or INVALID_CONTENT
  (with the reason) itself (``Reply``);
- a CEM that repeats a ReceptionStatus or never sends one does not end the connection: such
  statuses are logged, and unclaimed ones are kept in a bounded cache only;
- the WebSocket presents the device's access token as ``Authorization: Bearer``, checks a ``wss://``
  CEM against a CA file, and keeps the close code and reason the CEM gave.

Nothing here knows about devices or control types (``simulator.adapters``, ``simulator.runner``).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import uuid
from collections import OrderedDict
from pathlib import Path
from typing import Any

from s2python.common import ReceptionStatus, ReceptionStatusValues
from s2python.connection.async_.connection import S2AsyncConnection
from s2python.connection.async_.medium.s2_medium import MediumCouldNotConnectError
from s2python.connection.async_.medium.websocket import WebsocketClientMedium
from s2python.connection.async_.message_handlers import MessageHandlers
from s2python.connection.connection_events import S2ConnectionEvent
from s2python.connection.types import S2ConnectionEventsAndMessages
from s2python.message import S2MessageWithID
from s2python.reception_status_awaiter import ReceptionStatusAwaiter
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import WebSocketException

log = logging.getLogger("cariflex.sim")

RECEPTION_STATUS_TIMEOUT = 5.0


class Reply:
    """The ``send_okay`` a handler receives: call it for OK, or ``send`` another status. Only the
    first status goes out; the dispatcher sends OK afterwards if the handler sent none.

    s2-python's ``SendOkay`` can only send OK, so a handler could not refuse a message with
    INVALID_CONTENT and its reason without a second, contradicting status."""

    def __init__(self, connection: S2AsyncConnection, subject: uuid.UUID) -> None:
        self.connection, self.subject = connection, subject
        self.status: ReceptionStatusValues | None = None

    async def __call__(self) -> None:
        await self.send(ReceptionStatusValues.OK, "Processed okay.")

    async def send(self, status: ReceptionStatusValues, label: str) -> None:
        if self.status is not None:
            log.warning(
                "second reception status suppressed",
                extra={"fields": {"subject": str(self.subject), "status": status.value}},
            )
            return
        self.status = status
        await self.connection.respond_with_reception_status(self.subject, status, label[:500])


class _Dispatcher(MessageHandlers):
    """Like s2-python's, but a message type without a handler gets INVALID_CONTENT (s2-python only
    logs it and sends no ReceptionStatus at all), and handlers get a ``Reply``."""

    async def handle_event(self, connection: S2AsyncConnection, event: S2ConnectionEventsAndMessages) -> None:
        handler = self.handlers.get(type(event))
        if isinstance(event, S2ConnectionEvent):
            if handler is not None:
                await handler(connection, event, None)
            return
        reply = Reply(connection, event.message_id)
        if handler is None:
            await reply.send(
                ReceptionStatusValues.INVALID_CONTENT,
                f"{event.message_type} is not a message a resource manager accepts",
            )
            return
        try:
            await handler(connection, event, reply)
        except Exception:
            # s2-python's own handlers (handshake, details): their failure ends the session.
            if reply.status is None:
                await reply.send(
                    ReceptionStatusValues.PERMANENT_ERROR, f"could not process {event.message_type}"
                )
            raise
        if reply.status is None:
            await reply()


class _TolerantAwaiter(ReceptionStatusAwaiter):
    """A repeated ReceptionStatus is logged, not fatal (trap 7): s2-python's awaiter raises
    RuntimeError, which ends the connection. Unclaimed statuses are capped (s2-python keeps every
    one it is never asked for)."""

    KEEP = 512

    def __init__(self) -> None:
        super().__init__()
        self.received: OrderedDict[uuid.UUID, ReceptionStatus] = OrderedDict()

    async def receive_reception_status(self, reception_status: ReceptionStatus) -> None:
        subject = reception_status.subject_message_id
        if subject in self.received:
            log.warning(
                "duplicate reception status from the CEM", extra={"fields": {"subject": str(subject)}}
            )
            return
        self.received[subject] = reception_status
        while len(self.received) > self.KEEP:
            self.received.popitem(last=False)
        waiting = self.awaiting.pop(subject, None)
        if waiting is not None:
            waiting.set()


class RmConnection(S2AsyncConnection):
    """s2-python's connection with the dispatcher and awaiter above, and ``send_tracked``: its
    ``send_msg_and_await_reception_status`` blocks the sender and stops the whole connection when
    the CEM's ReceptionStatus is late, and raises on one that is not OK."""

    def __init__(self, medium: WebsocketClientMedium, device: str) -> None:
        super().__init__(medium, asyncio.get_running_loop())
        self._handlers = _Dispatcher()
        self._reception_status_awaiter = _TolerantAwaiter()
        self.device = device
        self._watchers: set[asyncio.Task[None]] = set()

    async def send_tracked(self, message: S2MessageWithID, timeout: float = RECEPTION_STATUS_TIMEOUT) -> None:
        """Send; a watcher logs a missing or non-OK ReceptionStatus without ending the session."""
        await self.send_and_forget(message)
        task = asyncio.create_task(self._watch(message, timeout))
        self._watchers.add(task)
        task.add_done_callback(self._watchers.discard)

    async def _watch(self, message: S2MessageWithID, timeout: float) -> None:
        try:
            status = await self._reception_status_awaiter.wait_for_reception_status(
                message.message_id, timeout
            )
        except TimeoutError:
            log.warning(
                "no reception status from the CEM",
                extra={"fields": {"device": self.device, "type": message.message_type}},
            )
            return
        if status.status != ReceptionStatusValues.OK:
            log.warning(
                "CEM did not accept a message",
                extra={
                    "fields": {
                        "device": self.device,
                        "type": message.message_type,
                        "status": status.status.value,
                        "reason": status.diagnostic_label,
                    }
                },
            )

    def close_watchers(self) -> None:
        for task in list(self._watchers):
            task.cancel()


class RmMedium(WebsocketClientMedium):
    """s2-python's WebSocket client medium (bearer token on the upgrade), plus what it lacks: a CA
    file for a CEM with its own certificate (it only offers verify on/off) and the close code and
    reason the CEM gave (to tell a refusal from a network failure)."""

    def __init__(self, url: str, token: str | None, ssl_context: ssl.SSLContext | None) -> None:
        super().__init__(url, bearer_token=token)
        self._ssl_context = ssl_context

    async def connect(self) -> None:
        options: dict[str, Any] = {"open_timeout": 10}
        if self._ssl_context is not None and self.url.startswith("wss://"):
            options["ssl"] = self._ssl_context
        if self._bearer_token:
            options["additional_headers"] = {"Authorization": f"Bearer {self._bearer_token}"}
        try:
            self._ws = await ws_connect(self.url, **options)
        except (EOFError, OSError, WebSocketException, TimeoutError) as exc:
            self._closed = True
            raise MediumCouldNotConnectError(f"Could not connect due to: {exc}") from exc

    @property
    def close_code(self) -> int | None:
        return self._ws.protocol.close_code if self._ws is not None else None

    @property
    def close_reason(self) -> str | None:
        return self._ws.protocol.close_reason if self._ws is not None else None


def client_ssl_context(ca_file: str | Path | None) -> ssl.SSLContext:
    """Verify the CEM's certificate against ``ca_file`` (else the system's CAs)."""
    return ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
