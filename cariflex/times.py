"""Times people type: an ISO time, or an ISO 8601 duration back from now (``--since PT24H``)."""

from __future__ import annotations

from datetime import UTC, datetime

import isodate
import pandas as pd


def parse_since(text: str | None, name: str = "since", now: datetime | None = None) -> datetime:
    """``text`` as a UTC moment; ValueError naming ``name`` and the problem."""
    now = now or datetime.now(UTC)
    raw = (text or "").strip()
    problem = f"{name}: {text!r} is not an ISO time (2026-11-24T06:00-04:00) or an ISO 8601 duration (PT24H)"
    if not raw:
        raise ValueError(problem)
    try:
        if raw.upper().startswith("P"):
            return now - isodate.parse_duration(raw)
        moment = pd.Timestamp(raw)
    except (ValueError, OverflowError, isodate.ISO8601Error):
        raise ValueError(problem) from None
    if pd.isna(moment):
        raise ValueError(problem)
    return (moment.tz_localize("UTC") if moment.tzinfo is None else moment).to_pydatetime()
