"""What the console's pages show, from what ``vtn.actions`` returns: site-local times with their
offset, the month calendar, the VENs' delivery state per event. No store access here."""

from __future__ import annotations

import calendar
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from vtn.events import SITE_TZ, InputError


def local(moment: str | datetime | None, *, seconds: bool = False) -> str:
    """``2026-12-06 14:00 −04:00``: the site's wall clock and its offset from UTC, whatever the
    browser's time zone."""
    if moment is None or moment == "":
        return "—"
    value = datetime.fromisoformat(moment) if isinstance(moment, str) else moment
    value = value.astimezone(SITE_TZ)
    offset = value.strftime("%z")
    sign = "−" if offset.startswith("-") else "+"
    return (
        value.strftime("%Y-%m-%d %H:%M" + (":%S" if seconds else "")) + f" {sign}{offset[1:3]}:{offset[3:]}"
    )


def zone_label(now: datetime | None = None) -> str:
    """``Martinique time (America/Martinique, UTC−04:00)``, for page headers and form hints."""
    value = (now or datetime.now(UTC)).astimezone(SITE_TZ)
    offset = value.strftime("%z")
    sign = "−" if offset.startswith("-") else "+"
    return f"{SITE_TZ.key} (UTC{sign}{offset[1:3]}:{offset[3:]})"


def ago(moment: str | None, now: datetime) -> str:
    if not moment:
        return "never"
    seconds = int((now - datetime.fromisoformat(moment)).total_seconds())
    if seconds < 120:
        return f"{seconds} s ago"
    if seconds < 7200:
        return f"{seconds // 60} min ago"
    return f"{seconds // 3600} h ago"


def silent(ven: dict[str, Any], now: datetime, poll_seconds: float) -> bool:
    """A registered VEN that has not polled for three poll periods and a minute."""
    if not ven["registered"]:
        return False
    if ven["last_poll_at"] is None:
        return True
    return (now - datetime.fromisoformat(ven["last_poll_at"])).total_seconds() > 3 * poll_seconds + 60


def form_time(moment: str | None) -> str:
    """An ISO time as an ``<input type=datetime-local>`` value, in site time."""
    if not moment:
        return ""
    return datetime.fromisoformat(moment).astimezone(SITE_TZ).strftime("%Y-%m-%dT%H:%M")


def next_quarter(now: datetime) -> str:
    local_now = now.astimezone(SITE_TZ).replace(second=0, microsecond=0)
    step = 15 - local_now.minute % 15
    return (local_now + timedelta(minutes=step)).strftime("%Y-%m-%dT%H:%M")


def next_day(now: datetime) -> str:
    tomorrow = now.astimezone(SITE_TZ).date() + timedelta(days=1)
    return f"{tomorrow.isoformat()}T00:00"


@dataclass
class Day:
    day: date
    in_month: bool
    today: bool
    events: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Month:
    first: date
    weeks: list[list[Day]]

    @property
    def title(self) -> str:
        return self.first.strftime("%B %Y")

    @property
    def previous(self) -> str:
        return (self.first - timedelta(days=1)).strftime("%Y-%m")

    @property
    def next(self) -> str:
        return (self.first + timedelta(days=32)).strftime("%Y-%m")


def parse_month(text: str | None, now: datetime) -> date:
    if not text:
        return now.astimezone(SITE_TZ).date().replace(day=1)
    try:
        year, month = (int(part) for part in text.split("-"))
        first = date(year, month, 1)
    except (ValueError, TypeError):
        raise InputError(f"month {text[:20]!r} is not YYYY-MM") from None
    if abs(first.year - now.year) > 10:
        raise InputError(f"month {text[:20]!r} is more than 10 years away")
    return first


def month(first: date, events: list[dict[str, Any]], now: datetime) -> Month:
    """The month's weeks (Monday first), each event on the site-local day it starts."""
    today = now.astimezone(SITE_TZ).date()
    by_day: dict[date, list[dict[str, Any]]] = {}
    for event in events:
        by_day.setdefault(datetime.fromisoformat(event["start"]).astimezone(SITE_TZ).date(), []).append(event)
    weeks = [
        [Day(d, d.month == first.month, d == today, by_day.get(d, [])) for d in week]
        for week in calendar.Calendar(firstweekday=0).monthdatescalendar(first.year, first.month)
    ]
    return Month(first, weeks)


def opt_summary(row: dict[str, Any]) -> str:
    """``optIn (modification 2)``: the VEN's answer to the newest modification it answered."""
    opts = row.get("opts") or {}
    if not opts:
        return "no answer yet"
    number = max(opts, key=int)
    return f"{opts[number]} (modification {number})"
