"""Grafana's SQL macro expansion for the PostgreSQL datasource, written from its documented
behaviour (Grafana is AGPL; nothing is copied) so dashboards can be tested without a Grafana server.

Order, as Grafana does it: template variables (``$name``, ``${name}``), then the global
``$__interval``/``$__interval_ms``/``$__unixEpochFrom()``/``$__unixEpochTo()``, then the
datasource macros matched by ``$name(args)`` where args cannot contain ``)``.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

_MACRO = re.compile(r"\$([_a-zA-Z0-9]+)\(([^\)]*)\)")
_DURATION = re.compile(r"^'?\s*(\d+)(ms|s|m|h|d|w|y)\s*'?$")
_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def interval_seconds(text: str) -> float:
    match = _DURATION.match(text.strip())
    if not match:
        raise ValueError(f"not a Grafana interval: {text!r}")
    return int(match[1]) * _SECONDS[match[2]]


def expand(
    sql: str, *, start: datetime, end: datetime, interval: str = "15m", variables: dict | None = None
) -> str:
    for name, value in sorted((variables or {}).items(), key=lambda kv: -len(kv[0])):
        sql = sql.replace("${" + name + "}", value)
        sql = re.sub(r"\$" + re.escape(name) + r"(?![A-Za-z0-9_])", lambda _m, v=value: v, sql)
    sql = sql.replace("$__interval_ms", str(int(interval_seconds(interval) * 1000)))
    sql = sql.replace("$__interval", interval)
    sql = sql.replace("$__unixEpochFrom()", str(int(start.timestamp()))).replace(
        "$__unixEpochTo()", str(int(end.timestamp()))
    )

    def macro(match: re.Match) -> str:
        name, raw = match[1], match[2]
        args = [a.strip() for a in raw.split(",")] if raw.strip() else []
        following = sql[match.end() : match.end() + 1]
        if name == "__timeFilter":
            return f"{args[0]} BETWEEN '{rfc3339(start)}' AND '{rfc3339(end)}'"
        if name == "__timeFrom":
            return f"'{rfc3339(start)}'"
        if name == "__timeTo":
            return f"'{rfc3339(end)}'"
        if name == "__time":
            return f'{args[0]} AS "time"'
        if name == "__timeEpoch":
            return f'extract(epoch from {args[0]}) as "time"'
        if name in ("__timeGroup", "__timeGroupAlias"):
            seconds = interval_seconds(args[1])
            step = f"{seconds:g}"
            grouped = f"floor(extract(epoch from {args[0]})/{step})*{step}"
            if name == "__timeGroupAlias" or following == ",":
                grouped += ' AS "time"'
            return grouped
        if name == "__unixEpochFilter":
            return f"{args[0]} >= {int(start.timestamp())} AND {args[0]} <= {int(end.timestamp())}"
        raise ValueError(f"macro ${name} is not supported by this expander")

    expanded = _MACRO.sub(macro, sql)
    if "$__" in expanded or re.search(r"\$[a-zA-Z{]", expanded):
        raise ValueError(f"unexpanded macro or variable left in:\n{expanded}")
    return expanded
