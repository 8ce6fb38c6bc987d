"""Price files (CSV): 24 hourly prices, read the same way by the VTN (day-ahead events) and the
plugin (production prices)."""

from __future__ import annotations

import csv
from pathlib import Path


class PriceFileError(ValueError):
    """The price file cannot be used; the message names the file, the line and the problem."""


def read_price_csv(path: str | Path, column: str = "price", what: str = "price file") -> list[str]:
    """The price column of a price file, as text (checked as numbers by the event draft).

    Format: one row per hour, either ``price`` or ``hour,price``, an optional header row naming
    the columns, '#' comments and blank lines ignored. With an ``hour`` column the hours must run
    0..23 in order, which catches a missing or repeated row.
    """
    name = f"{what} {path}"
    try:
        text = Path(path).read_text(encoding="utf-8-sig")  # spreadsheets often add a BOM
    except OSError as exc:
        raise PriceFileError(f"{name}: cannot be read ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise PriceFileError(f"{name}: not UTF-8 text (save it as CSV UTF-8)") from None
    rows = [
        (number, [cell.strip() for cell in row])
        for number, row in enumerate(csv.reader(text.splitlines()), start=1)
        if row and any(c.strip() for c in row) and not row[0].strip().startswith("#")
    ]
    if rows and any(column in cell.lower() for cell in rows[0][1]):
        header = [c.lower() for c in rows[0][1]]
        rows = rows[1:]
    else:
        header = ["hour", column] if rows and len(rows[0][1]) == 2 else [column]
    if column not in header:
        raise PriceFileError(f"{name}: no '{column}' column in header {header}")
    price_col = header.index(column)
    hour_col = header.index("hour") if "hour" in header else None
    prices = []
    for expected_hour, (number, cells) in enumerate(rows):
        if len(cells) != len(header):
            raise PriceFileError(f"{name}, line {number}: expected {len(header)} column(s), got {len(cells)}")
        if hour_col is not None and cells[hour_col] != str(expected_hour):
            raise PriceFileError(
                f"{name}, line {number}: hour {cells[hour_col]!r} where {expected_hour} was expected"
            )
        prices.append(cells[price_col])
    return prices
