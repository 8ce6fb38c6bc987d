"""What the CEM needs from the process that hosts it, as protocols.

The CEM runs inside the VEN bridge's process (``cariflex-ven run``), which owns the durable local
store (``ven_bridge.outbox.Outbox``) and the FlexMeasures client (``ven_bridge.fm_client``). The CEM
depends on these two shapes only, so that it never imports the VEN package: the VEN hosts the
CEM, not the other way round (import-linter checks it).
"""

from __future__ import annotations

from typing import Any, Protocol


class StateStore(Protocol):
    """Named JSON state and the queue of posts to FlexMeasures (the VEN's outbox)."""

    def get_state(self, key: str, default: Any = None) -> Any: ...

    def set_state(self, key: str, value: Any) -> None: ...

    def add(self, kind: str, dedupe_key: str, payload: dict[str, Any], group: str | None = None) -> bool: ...


class Answer(Protocol):
    """One FlexMeasures answer (``ven_bridge.fm_client.Answer``)."""

    status: int
    text: str
    etag: str | None

    @property
    def accepted(self) -> bool: ...


class ScheduleSource(Protocol):
    """Where the fleet schedule comes from (the plugin's schedule endpoint)."""

    def get_schedule(self, hours: float, etag: str | None = None) -> Answer: ...
