"""The broker side of meter ingestion: subscribe (QoS 1), validate, batch, commit, then acknowledge.

Nothing the broker accepted is lost: each message is acknowledged (``manual_ack``) only after its
reading was committed to the database, or after its refusal was published to the dead-letter topic
and the broker confirmed that; while the database is away the batch is kept and retried, and the
unacknowledged messages stay with the broker (a persistent session: ``clean_session`` off and a
stable client id, so a restart gets them again). A reading delivered twice makes the same row,
written once (see ``store``). With ``--share GROUP`` several workers split the topics through an
MQTT shared subscription (``$share/GROUP/...``): each message goes to one of them.

A reading is refused, to ``cariflex/dead-letter/<gateway>/<sensor>`` with the reason, when it
breaks the contract (``cariflex/contracts/meter_reading.py``), names no meter sensor, has a unit
that does not fit the sensor, lies outside the sensor's physical bounds (the alert trigger's,
``cariflex_sensor_bounds``) or lies in the future. A refusal never blocks the readings after it.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import unquote

import paho.mqtt.client as mqtt
import psycopg2

from cariflex.contracts.meter_reading import (
    SUBSCRIPTION,
    ReadingRefused,
    broker_address,
    dead_letter_topic,
    parse_payload,
    parse_topic,
    to_unit,
)
from meter_ingest.store import Row, Store, event_start

log = logging.getLogger("cariflex.ingest")

FUTURE_TOLERANCE = timedelta(seconds=5)  # meters' clocks drift a little
_BOUNDS_EPS = 1e-6
_DB_RETRY_S = (0.5, 1, 2, 5)


@dataclass
class Counters:
    accepted: int = 0  # committed (new or already there)
    written: int = 0  # new rows
    refused: int = 0
    batches: int = 0
    db_errors: int = 0
    last_commit: float | None = None  # time.time()
    connected: bool = False
    # reading time (the meter's stamp) -> committed, of the latest readings: what the load test
    # reports as publish -> committed when its publisher stamps the time it publishes
    lags_ms: deque = field(default_factory=lambda: deque(maxlen=100_000))

    def lag_percentiles(self) -> dict[str, float | int | None]:
        lags = sorted(self.lags_ms)
        if not lags:
            return {"p50": None, "p99": None, "n": 0}
        return {
            "p50": round(lags[len(lags) // 2], 1),
            "p99": round(lags[min(len(lags) - 1, int(len(lags) * 0.99))], 1),
            "n": len(lags),
        }

    def as_dict(self) -> dict[str, Any]:
        return {
            "accepted": self.accepted,
            "written": self.written,
            "refused": self.refused,
            "batches": self.batches,
            "db_errors": self.db_errors,
            "broker_connected": self.connected,
            "lag_ms": self.lag_percentiles(),
            "last_commit": datetime.fromtimestamp(self.last_commit, UTC).isoformat()
            if self.last_commit
            else None,
        }


@dataclass
class Message:
    mid: int
    topic: str
    payload: bytes


class Ingestor:
    def __init__(
        self,
        mqtt_url: str,
        database_url: str,
        *,
        client_id: str = "cariflex-ingest",
        share: str | None = None,
        batch: int = 2000,
        flush_s: float = 0.05,
        now=lambda: datetime.now(UTC),
    ):
        self.url, self.port = broker_address(mqtt_url, "CARIFLEX_MQTT_URL")
        self.store = Store(database_url)
        self.share, self.batch, self.flush_s, self.now = share, batch, flush_s, now
        self.counters = Counters()
        # Unbounded: paho's network thread must never block here (it also reads the broker's
        # confirmations the batch loop waits for); what is in flight is bounded by the broker's
        # max_inflight_messages (10,000 in our configurations) since nothing is acknowledged early.
        self.inbox: queue.Queue[Message] = queue.Queue()
        self.stopping = threading.Event()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=False,
            manual_ack=True,
        )
        if self.url.username:
            self.client.username_pw_set(unquote(self.url.username), unquote(self.url.password or ""))
        self.client.max_inflight_messages_set(1000)
        self.client.reconnect_delay_set(1, 5)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message

    # --- broker callbacks (paho's network thread) ---
    @property
    def subscription(self) -> str:
        return f"$share/{self.share}/{SUBSCRIPTION}" if self.share else SUBSCRIPTION

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.error("broker refused the connection", extra={"fields": {"reason": str(reason_code)}})
            return
        self.counters.connected = True
        client.subscribe(self.subscription, qos=1)
        log.info("connected to the broker", extra={"fields": {"subscription": self.subscription}})

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self.counters.connected = False
        if not self.stopping.is_set():
            log.warning(
                "broker connection lost; reconnecting", extra={"fields": {"reason": str(reason_code)}}
            )

    def _on_message(self, client, userdata, message) -> None:
        # blocks when the inbox is full (the database is slow or away): back-pressure on the broker
        self.inbox.put(Message(message.mid, message.topic, bytes(message.payload)))

    # --- the batch loop (the main thread) ---
    def start(self) -> None:
        self.client.connect_async(self.url.hostname, self.port, keepalive=30)
        self.client.loop_start()

    def stop(self) -> None:
        self.stopping.set()

    def run(self) -> None:
        """Until ``stop``: take what arrived, at most ``batch`` or ``flush_s`` at a time, and store it."""
        pending: list[Message] = []
        while not self.stopping.is_set() or pending:
            if not pending:
                pending = self._collect()
                if not pending:
                    continue
            if self._handle(pending):
                pending = []
            elif self.stopping.is_set():
                break  # unacknowledged: the broker delivers them again after a restart
        self.client.disconnect()
        self.client.loop_stop()
        self.store.close()

    def _collect(self) -> list[Message]:
        messages: list[Message] = []
        try:
            messages.append(self.inbox.get(timeout=0.2))
        except queue.Empty:
            return messages
        deadline = time.monotonic() + self.flush_s
        while len(messages) < self.batch:
            wait = deadline - time.monotonic()
            if wait <= 0:
                break
            try:
                messages.append(self.inbox.get(timeout=wait))
            except queue.Empty:
                break
        return messages

    def _handle(self, messages: list[Message]) -> bool:
        """Store one batch and acknowledge it; False when the database was away (try again)."""
        rows: list[Row] = []
        stamps: list[float] = []
        refused: list[tuple[Message, str, str, str]] = []
        try:
            for message in messages:
                try:
                    row, stamp = self._row(message)
                    rows.append(row)
                    stamps.append(stamp)
                except ReadingRefused as exc:
                    refused.append((message, *self._names(message.topic), str(exc)))
            if rows:
                try:
                    self.counters.written += self.store.write(rows)
                except (psycopg2.OperationalError, psycopg2.InterfaceError):
                    raise
                except psycopg2.Error:
                    # the database refuses the batch itself (not away): find the reading(s) it
                    # refuses, one by one, so that one of them cannot hold up all the others
                    rows, stamps = self._isolate(messages, rows, stamps, refused)
        except psycopg2.Error as exc:
            self.store.close()  # a transaction that failed is not used again
            self.counters.db_errors += 1
            wait = _DB_RETRY_S[min(self.counters.db_errors - 1, len(_DB_RETRY_S) - 1)]
            log.error(
                "database unavailable; the batch is kept and nothing is acknowledged",
                extra={
                    "fields": {"error": str(exc).strip()[:200], "readings": len(messages), "retry_s": wait}
                },
            )
            self.stopping.wait(wait)
            return False
        self.counters.db_errors = 0
        committed = time.time()
        self.counters.accepted += len(rows)
        self.counters.batches += 1
        self.counters.last_commit = committed
        self.counters.lags_ms.extend((committed - stamp) * 1000 for stamp in stamps)
        unconfirmed = self._dead_letters(refused)
        for message in messages:
            if not any(message is m for m in unconfirmed):
                self.client.ack(message.mid, 1)
        return True

    def _isolate(self, messages, rows, stamps, refused):
        """Write the batch's rows one by one; those the database refuses join ``refused``."""
        kept_rows, kept_stamps = [], []
        accepted = [m for m in messages if not any(m is r[0] for r in refused)]
        for message, row, stamp in zip(accepted, rows, stamps, strict=True):
            try:
                self.counters.written += self.store.write([row])
            except (psycopg2.OperationalError, psycopg2.InterfaceError):
                raise
            except psycopg2.Error as exc:
                first = (exc.pgerror or str(exc)).strip().splitlines()[0][:200]
                refused.append((message, *self._names(message.topic), f"the database refused it: {first}"))
                continue
            kept_rows.append(row)
            kept_stamps.append(stamp)
        return kept_rows, kept_stamps

    @staticmethod
    def _names(topic: str) -> tuple[str, str]:
        parts = topic.split("/")
        return (parts[2], parts[3]) if len(parts) == 4 else ("_", "_")

    def _row(self, message: Message) -> tuple[Row, float]:
        """The row to store and the reading's own time (epoch seconds), or ReadingRefused."""
        gateway, sensor = parse_topic(message.topic)
        reading = parse_payload(gateway, sensor, message.payload)
        meter = self.store.meter(sensor)
        if meter is None:
            if self.store.is_ambiguous(sensor):
                raise ReadingRefused(f"sensor {sensor!r} names more than one meter sensor")
            raise ReadingRefused(f"unknown sensor {sensor!r}: no meter sensor of that name")
        value = to_unit(reading, meter.unit)
        if (meter.low is not None and value < meter.low - _BOUNDS_EPS) or (
            meter.high is not None and value > meter.high + _BOUNDS_EPS
        ):
            raise ReadingRefused(
                f"value {value:g} {meter.unit} is outside {sensor}'s physical bounds "
                f"{meter.low:g}..{meter.high:g} {meter.unit}"
            )
        now = self.now()
        try:
            stamp = reading.time.astimezone(UTC)
        except (OverflowError, ValueError):
            raise ReadingRefused(f"time {reading.time.isoformat()} is out of range") from None
        if stamp > now + FUTURE_TOLERANCE:
            raise ReadingRefused(
                f"time {reading.time.isoformat()} is in the future (now {now.isoformat(timespec='seconds')})"
            )
        row = Row(
            event_start(stamp, meter.resolution_s),
            meter.id,
            self.store.source(gateway),
            value,
        )
        return row, reading.time.timestamp()

    def _dead_letters(self, refused: list[tuple[Message, str, str, str]]) -> list[Message]:
        """Publish each refusal (QoS 1) and wait until the broker has it, before the original is
        acknowledged: a refused reading is never just dropped. Returns those not confirmed (a
        stop came first): they stay unacknowledged, and the broker delivers them again."""
        published = []
        for message, gateway, sensor, reason in refused:
            self.counters.refused += 1
            body = {
                "reason": reason,
                "topic": message.topic[:200],
                "payload": message.payload[:500].decode("utf-8", "replace"),
                "at": self.now().isoformat(timespec="seconds"),
            }
            log.warning(
                "reading refused", extra={"fields": {"topic": message.topic[:120], "reason": reason[:200]}}
            )
            published.append(self.client.publish(dead_letter_topic(gateway, sensor), json.dumps(body), qos=1))
        for info in published:
            while not info.is_published() and not self.stopping.is_set():
                try:
                    info.wait_for_publish(timeout=1)
                except RuntimeError:  # not connected: paho keeps it queued and sends it on reconnect
                    self.stopping.wait(0.5)
        return [m for (m, *_), info in zip(refused, published, strict=True) if not info.is_published()]
