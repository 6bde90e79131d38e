"""Rendering query results for people: markdown/terminal tables, CSV, JSON."""

from __future__ import annotations

import base64
import datetime as dt
import json
import math
import re
from collections.abc import Mapping
from decimal import Decimal
from typing import Any, Literal

import numpy as np
import pandas as pd

OutputFormat = Literal["table", "csv", "json"]
FORMATS: tuple[OutputFormat, ...] = ("table", "csv", "json")


# C0 and C1 controls and DEL (ESC starts the ANSI sequences that recolour, move the cursor or
# set a terminal's title; 0x9b is an 8-bit CSI), plus the Unicode bidi overrides that reorder
# what follows them on screen. A value from Kafka reaches analysts' terminals through tables.
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def _escape_char(match: re.Match[str]) -> str:
    char = match.group()
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def terminal_text(text: str) -> str:
    """``text`` safe to print on a terminal: control characters shown escaped (ESC as ``\\x1b``, newline as ``\\n``)."""
    return _UNPRINTABLE.sub(_escape_char, text)


def _is_missing(value: Any) -> bool:
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    return isinstance(value, float) and math.isnan(value)


def _cell_text(value: Any, null: str) -> str:
    if _is_missing(value):
        return null
    if isinstance(value, bytes):
        return "\\x" + value.hex()
    if isinstance(value, pd.Timestamp | dt.datetime | dt.date):
        return value.isoformat()
    # A pipe or a line break inside a value would break the table's structure; escapes would reach the terminal.
    return terminal_text(str(value)).replace("|", "\\|")


def markdown_table(df: pd.DataFrame, *, null: str = "NULL", max_rows: int | None = None) -> str:
    """``df`` as a GitHub-flavoured markdown table (no tabulate dependency), columns padded to align."""
    shown = df if max_rows is None else df.head(max_rows)
    headers = [_cell_text(column, null) for column in shown.columns]
    rows = [[_cell_text(value, null) for value in row] for row in shown.itertuples(index=False, name=None)]
    widths = [max([3, len(header), *(len(row[i]) for row in rows)]) for i, header in enumerate(headers)]
    numeric = [pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype) for dtype in shown.dtypes]

    def line(cells: list[str]) -> str:
        padded = [c.rjust(w) if num else c.ljust(w) for c, w, num in zip(cells, widths, numeric, strict=True)]
        return "| " + " | ".join(padded) + " |"

    rules = [("-" * (w + 1) + ":") if num else ("-" * (w + 2)) for w, num in zip(widths, numeric, strict=True)]
    separator = "|" + "|".join(rules) + "|"
    text = "\n".join([line(headers), separator, *(line(row) for row in rows)])
    if max_rows is not None and len(df) > max_rows:
        text += f"\n\n({len(df) - max_rows} more rows)"
    return text


def _json_value(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _json_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple | np.ndarray):
        return [_json_value(v) for v in value]
    if _is_missing(value):
        return None
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isinf(value):
        return str(value)
    if isinstance(value, pd.Timestamp | dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta | pd.Timedelta):
        return str(value)
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, str | int | float | bool):
        return value
    return str(value)


def format_result(df: pd.DataFrame, fmt: OutputFormat = "table", *, terminal: bool = False) -> str:
    """Render a query result: ``table`` (aligned markdown), ``csv`` (header + rows) or ``json`` (array of objects).

    Tables show control characters escaped (``\\x1b``). CSV keeps values exact, for files, unless
    ``terminal`` (it is printed on one): then its text values are escaped as in tables.
    JSON: timestamps and dates in ISO 8601, NULL/NaN as ``null``, BLOBs in base64, MAPs as objects,
    control characters as JSON escapes.
    """
    if fmt == "table":
        return markdown_table(df)
    if fmt == "csv":
        if terminal:
            df = df.apply(lambda column: column.map(lambda v: terminal_text(v) if isinstance(v, str) else v))
        # The caller prints it with a newline of its own (click.echo, print): one, not two.
        return str(df.to_csv(index=False, lineterminator="\n")).removesuffix("\n")
    if fmt == "json":
        records = [
            {str(column): _json_value(value) for column, value in zip(df.columns, row, strict=True)}
            for row in df.itertuples(index=False, name=None)
        ]
        return json.dumps(records, ensure_ascii=False, indent=2)
    raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
