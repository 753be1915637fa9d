"""Row validation of events and catalogue items against ``materialize.ingest.schema``.

Validation is vectorised over a chunk. Every rejected row becomes a ``Rejection`` naming
its line, the first offending field and all reasons; nothing is dropped silently.
Checks that need the database (unknown item ids, duplicates of loaded rows) run in SQL
during the load.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Callable

import numpy as np
import pandas as pd

from materialize.ingest.schema import EVENT_TYPE_CODES, TableSchema

MAX_ID = 2**63 - 1
MAX_PRICE = Decimal("999999999999.99")
"""The largest price ``numeric(14, 2)`` holds."""

_ESCAPED = {c: f"\\x{c:02x}" for c in [*range(0x09), 0x0B, 0x0C, *range(0x0E, 0x20), *range(0x7F, 0xA0)]}
_ESCAPED.update({c: f"\\x{c - 0xDC00:02x}" for c in range(0xDC80, 0xDD00)})  # bytes kept by surrogateescape
_ESCAPED.update({c: f"\\u{c:04x}" for c in range(0xD800, 0xE000) if c not in _ESCAPED})
_CONTROL = "[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]"
_NOT_UTF8 = "[\ud800-\udfff]"


class UnreadableInput(ValueError):
    """An input that cannot be read as a table; the message names it and the cause."""


class SchemaError(UnreadableInput):
    """An input whose column set does not match the documented schema."""


@dataclass(frozen=True)
class Rejection:
    """One quarantined row."""

    line: int
    field: str | None
    reason: str
    raw: dict[str, Any]

    def describe(self, source: str, unit: str = "line") -> str:
        """``source line 12: reason`` (``row`` for Parquet files and frames)."""
        return f"{source} {unit} {self.line}: {self.reason}"


def printable(text: str) -> str:
    """``text`` with control characters and bytes that are not UTF-8 (kept as surrogates)
    written as ``\\xNN``: what PostgreSQL text and JSON can hold, and a terminal can show."""
    return text.translate(_ESCAPED)


def check_columns(columns: list[str], schema: TableSchema, source: str) -> None:
    """Raise ``SchemaError`` naming the source and fields when the column set is wrong."""
    missing = [c for c in schema.required if c not in columns]
    unexpected = [printable(c[:40]) for c in columns if c not in schema.columns][:10]
    duplicated = sorted({c for c in columns if columns.count(c) > 1})
    if missing or unexpected or duplicated:
        parts = []
        if missing:
            parts.append(f"missing required column(s) {missing}")
        if unexpected:
            parts.append(f"unexpected column(s) {unexpected}")
        if duplicated:
            parts.append(f"repeated column(s) {duplicated}")
        raise SchemaError(
            f"{source}: wrong {schema.name} columns: {'; '.join(parts)}. "
            f"Expected {list(schema.required)} plus optional {list(schema.optional)}."
        )


def _text(series: pd.Series) -> pd.Series:
    """Values as strings without surrounding spaces, tabs and line breaks; empty ones missing."""
    out = series.astype("string").str.strip(" \t\r\n")
    return out.mask(out == "", pd.NA)


def _reason(reason: np.ndarray | str, mask: pd.Series, text: pd.Series, template: str) -> np.ndarray:
    """``reason`` with ``template`` where ``mask`` holds, its ``{}`` the row's value
    (the first 40 characters, ``printable``)."""
    out = np.full(len(text), reason, dtype=object) if isinstance(reason, str) else reason.astype(object)
    positions = np.flatnonzero(mask.fillna(False).to_numpy(dtype=bool))
    for pos, value in zip(positions, text.iloc[positions].tolist()):
        out[pos] = template.format(printable(("" if value is pd.NA else str(value))[:40]))
    return out


def _free_text(series: pd.Series, field: str, problems: dict[str, pd.Series]) -> pd.Series:
    """Text kept as it is (trimmed): no control characters, nothing that is not UTF-8."""
    text = _text(series)
    suspect = text.str.contains(_CONTROL[:-1] + _NOT_UTF8[1:]).fillna(False).astype(bool)  # one pass over all rows
    not_utf8 = text[suspect].str.contains(_NOT_UTF8).astype(bool).reindex(text.index, fill_value=False)
    reason = _reason("", suspect & ~not_utf8, text, field + ": control character in '{}'")
    reason = _reason(reason, not_utf8, text, field + ": not UTF-8 text: '{}'")
    problems[field] = pd.Series(reason, index=series.index)
    return text


def _positive_ids(series: pd.Series, field: str, problems: dict[str, pd.Series]) -> pd.Series:
    if pd.api.types.is_signed_integer_dtype(series):
        values = series.astype("Int64")
        problems[field] = pd.Series(
            np.where(values.isna(), f"{field}: missing", np.where(values <= 0, f"{field}: must be a positive integer", "")),
            index=series.index,
        )
        return values
    text = _text(series)
    valid = text.str.fullmatch(r"\+?0*[1-9][0-9]{0,17}").fillna(False).astype(bool)  # below MAX_ID
    nineteen = text.str.fullmatch(r"\+?0*[1-9][0-9]{18}").fillna(False).astype(bool)
    if nineteen.any():  # compared exactly: such numbers do not fit a float
        valid |= nineteen & text.where(nineteen, "0").map(lambda t: int(t) <= MAX_ID).astype(bool)
    reason = np.where(text.isna(), f"{field}: missing", "")
    reason = _reason(reason, ~valid & text.notna(), text, field + ": not a positive integer: '{}'")
    problems[field] = pd.Series(reason, index=series.index)
    return text.where(valid, "0").astype("int64").astype("Int64").where(valid, pd.NA)


def _optional_price(series: pd.Series | None, index: pd.Index, problems: dict[str, pd.Series],
                    conversions: dict[str, int]) -> pd.Series:
    """Prices to load: floats from typed input, else the text itself (so PostgreSQL rounds
    the value written in the file, not a float near it). Rows rounded to whole cents are
    counted in ``conversions``."""
    if series is None or series.isna().all():  # no prices (also the common case of a service's events)
        return pd.Series(np.nan, index=index, dtype="float64")
    if pd.api.types.is_numeric_dtype(series):
        price = series.astype("float64")
        loaded = price
        rounded = price.notna() & (price.round(2) != price)
        cents = price.round(2)
    else:
        loaded = _text(series)
        number = loaded.str.fullmatch(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?").fillna(False).astype(bool)
        problems["price_parse"] = pd.Series(_reason("", loaded.notna() & ~number, loaded, "price: not a number: '{}'"),
                                            index=index)
        price = pd.to_numeric(loaded.where(number), errors="coerce").astype("float64")
        cents = price.round(2)
        exact = loaded.str.fullmatch(r"[+-]?[0-9]*(\.[0-9]{0,2})?").fillna(False).astype(bool)
        check = number & ~exact & (price.abs() < 1e13)  # more decimals, or an exponent: compare exactly
        rounded = pd.Series(False, index=index)
        if check.any():
            rounded[check] = [Decimal(t) != Decimal(t).quantize(Decimal("0.01")) for t in loaded[check]]
    bad = price.notna() & ~((price >= 0) & (cents <= float(MAX_PRICE)))
    problems["price"] = pd.Series(np.where(bad, f"price: must be a number >= 0 and <= {MAX_PRICE}", ""), index=index)
    rounded = int((rounded & ~bad).sum())
    if rounded:
        conversions["price rounded to cents"] = conversions.get("price rounded to cents", 0) + rounded
    return loaded


def _timestamps(series: pd.Series, now: pd.Timestamp, tolerance_s: int, earliest: datetime | None,
                problems: dict[str, pd.Series]) -> pd.Series:
    field = "event_timestamp"
    if pd.api.types.is_datetime64_any_dtype(series):
        ts = series if series.dt.tz is not None else series.dt.tz_localize("UTC")
        ts = ts.dt.tz_convert("UTC")
        text = ts.astype("string")
    else:
        text = _text(series)
        epoch = text.str.fullmatch(r"[0-9]{9,10}(\.[0-9]+)?").fillna(False).astype(bool)
        from_epoch = pd.to_datetime(pd.to_numeric(text.where(epoch), errors="coerce"), unit="s", utc=True)
        # Parsed apart: in one call pandas reads a time without an offset with the offset of
        # the row before it ('09:00' after '10:00+02:00' became 07:00 UTC).
        offset = text.str.contains(r"[Tt ].*(?:[+-]|[zZ]$)").fillna(False).astype(bool)
        with_offset = pd.to_datetime(text.where(~epoch & offset), errors="coerce", utc=True, format="ISO8601")
        in_utc = pd.to_datetime(text.where(~epoch & ~offset), errors="coerce", utc=True, format="ISO8601")
        ts = from_epoch.where(epoch, with_offset.where(offset, in_utc))
    future = ts > now + pd.Timedelta(seconds=tolerance_s)
    reason = np.where(text.isna(), f"{field}: missing", "")
    reason = _reason(reason, text.notna() & ts.isna(), text, field + ": unparseable or out-of-range timestamp '{}'")
    reason = _reason(reason, future, text, field + ": in the future ('{}' is after now)")
    if earliest is not None:
        reason = _reason(reason, ts < pd.Timestamp(earliest), text,
                         f"{field}: before min_event_time {earliest.isoformat()} ('{{}}')")
    problems[field] = pd.Series(reason, index=series.index)
    return ts


RawRows = Callable[[np.ndarray], list[dict[str, Any]]]
"""The rows at some positions of a chunk as they were in the input (see ``RawChunk.raw``)."""


@dataclass
class Validated:
    """One chunk after validation."""

    clean: pd.DataFrame          # good rows typed for loading: ``line`` + the schema columns
    rejections: list[Rejection]  # bad rows in line order
    conversions: dict[str, int]  # good rows whose value was changed as documented, per change


def _collect(lines: np.ndarray, raw: RawRows, problems: dict[str, pd.Series]) -> tuple[np.ndarray, list[Rejection]]:
    """Combine per-field reasons; returns the good-row mask and rejections in line order."""
    reasons = [series.to_numpy(dtype=object) for series in problems.values()]
    flags = [pd.notna(reason) & (reason != "") for reason in reasons]
    bad = np.logical_or.reduce(flags) if flags else np.zeros(len(lines), dtype=bool)
    positions = np.flatnonzero(bad)
    rejections = []
    for pos, row_raw in zip(positions, raw(positions) if len(positions) else []):
        row_reasons = [reason[pos] for reason, flag in zip(reasons, flags) if flag[pos]]
        rejections.append(Rejection(line=int(lines[pos]), field=row_reasons[0].split(":", 1)[0],
                                    reason="; ".join(row_reasons), raw=row_raw))
    return ~bad, rejections


def _count_trimmed(series: pd.Series, text: pd.Series, good: np.ndarray, conversions: dict[str, int]) -> None:
    trimmed = int((text.notna() & (series.astype("string") != text)).to_numpy()[good].sum())
    if trimmed:
        conversions["spaces trimmed from text"] = conversions.get("spaces trimmed from text", 0) + trimmed


EVENT_TEXT_FIELDS = ("session_id", "event_id", "recommendation_id")
"""The events' optional free-text columns (trimmed; empty means absent)."""


def validate_events(frame: pd.DataFrame, lines: np.ndarray, raw: RawRows, now: pd.Timestamp, future_tolerance_s: int,
                    min_event_time: datetime | None = None) -> Validated:
    """Validate an events chunk.

    Args:
        frame: rows in the ``EVENTS`` schema, as strings (files) or typed (generators).
        lines: (n,) int64 line (or row) number of each row in its source.
        raw: the rows as they were in the input, kept with rejections.
        now: reference time for the "future timestamp" check (UTC).
        future_tolerance_s: clock skew allowed, in seconds.
        min_event_time: earlier timestamps are rejected (None: no lower bound).
    """
    plain = _plainly_valid_events(frame, now, future_tolerance_s, min_event_time)
    if plain is not None:
        return Validated(_clean_events(lines, None, *plain), [], {})
    return _checked_events(frame, lines, raw, now, future_tolerance_s, min_event_time)


def _checked_events(frame: pd.DataFrame, lines: np.ndarray, raw: RawRows, now: pd.Timestamp, future_tolerance_s: int,
                    min_event_time: datetime | None) -> Validated:
    """``validate_events`` by vectorised checks that name every problem of every row."""
    problems: dict[str, pd.Series] = {}
    conversions: dict[str, int] = {}
    user_id = _positive_ids(frame["user_id"], "user_id", problems)
    item_id = _positive_ids(frame["item_id"], "item_id", problems)
    event_text = _text(frame["event_type"]).str.lower()
    event_type = event_text.map(EVENT_TYPE_CODES)
    problems["event_type"] = pd.Series(
        np.where(
            event_text.isna(),
            "event_type: missing",
            _reason("", event_type.isna(), event_text, "event_type: unknown event type '{}' (expected view, click, cart or purchase)"),
        ),
        index=frame.index,
    )
    timestamp = _timestamps(frame["event_timestamp"], now, future_tolerance_s, min_event_time, problems)
    price = _optional_price(frame.get("price"), frame.index, problems, conversions)
    given = [field for field in EVENT_TEXT_FIELDS if field in frame and not frame[field].isna().all()]
    texts = {field: _free_text(frame[field], field, problems) if field in given
             else pd.Series(pd.NA, index=frame.index, dtype="string") for field in EVENT_TEXT_FIELDS}
    good, rejections = _collect(lines, raw, problems)
    for field in given:
        _count_trimmed(frame[field], texts[field], good, conversions)
    return Validated(_clean_events(lines, good, user_id, item_id, event_type, timestamp, price, texts), rejections, conversions)


def _clean_events(lines: np.ndarray, good: np.ndarray | None, user_id, item_id, event_type, timestamp, price,
                  texts: dict) -> pd.DataFrame:
    """The ``good`` rows (None: all) typed for loading: ``line`` + the schema columns."""
    def picked(values, dtype=None) -> np.ndarray:
        values = values if good is None else values[good]
        return np.asarray(values.to_numpy() if isinstance(values, pd.Series) else values, dtype=dtype)

    return pd.DataFrame(
        {
            "line": picked(lines),
            "user_id": picked(user_id, "int64"),
            "item_id": picked(item_id, "int64"),
            "event_type": picked(event_type, "int16"),
            "event_timestamp": picked(timestamp),
            "price": picked(price),
            **{field: picked(text) for field, text in texts.items()},
        }
    )


_PLAIN_TEXT = re.compile(_CONTROL[:-1] + _NOT_UTF8[1:] + "|^[ \t\r\n]|[ \t\r\n]$|^$")
"""A text value the vectorised checks would reject, trim or blank: not plain."""


def _plainly_valid_events(frame: pd.DataFrame, now: pd.Timestamp, future_tolerance_s: int,
                          min_event_time: datetime | None) -> tuple | None:
    """The typed columns of a chunk whose every row is valid as it is (typed ids > 0, a
    known event type, a time-zone-aware time in range, prices in whole cents, text fields
    needing no trim), which is what a service sends; None for any other chunk, which the
    vectorised checks then read (they name every problem). The same values either way
    (tests compare the two); this costs microseconds per row where pandas' fixed cost per
    operation is milliseconds per chunk."""
    ids = [frame[field] for field in ("user_id", "item_id")]
    if not all(pd.api.types.is_signed_integer_dtype(values) and (values.to_numpy() > 0).all() for values in ids):
        return None
    codes = [EVENT_TYPE_CODES.get(value.strip(" \t\r\n").lower()) if isinstance(value, str) else None
             for value in frame["event_type"].tolist()]
    timestamps = frame["event_timestamp"]
    if None in codes or not isinstance(timestamps.dtype, pd.DatetimeTZDtype) or timestamps.isna().any():
        return None
    timestamps = timestamps.dt.tz_convert("UTC")
    if (timestamps > now + pd.Timedelta(seconds=future_tolerance_s)).any() or (
            min_event_time is not None and (timestamps < pd.Timestamp(min_event_time)).any()):
        return None
    price = frame.get("price")
    if price is None or price.isna().all():
        price = pd.Series(np.nan, index=frame.index, dtype="float64")
    elif not pd.api.types.is_float_dtype(price):
        return None
    else:
        known = price.dropna()
        if not ((known >= 0) & (known.round(2) == known) & (known <= float(MAX_PRICE))).all():
            return None
    texts = {}
    for field in EVENT_TEXT_FIELDS:
        values = frame[field].tolist() if field in frame else [None] * len(frame)
        if not all(value is None or (isinstance(value, float) and math.isnan(value))
                   or (isinstance(value, str) and not _PLAIN_TEXT.search(value)) for value in values):
            return None
        texts[field] = np.array([value if isinstance(value, str) else pd.NA for value in values], dtype=object)
    return ids[0], ids[1], codes, timestamps, price, texts


def validate_items(frame: pd.DataFrame, lines: np.ndarray, raw: RawRows) -> Validated:
    """Validate a catalogue chunk (arguments as for ``validate_events``)."""
    problems: dict[str, pd.Series] = {}
    conversions: dict[str, int] = {}
    item_id = _positive_ids(frame["item_id"], "item_id", problems)
    fields = [f for f in ("category", "title", "description") if f in frame]
    texts = {field: _free_text(frame[field], field, problems) for field in fields}
    for field in ("category", "title"):
        problems[field] = problems[field].where(texts[field].notna(), f"{field}: missing")
    description = texts.get("description", pd.Series(pd.NA, index=frame.index, dtype="string"))
    price = _optional_price(frame.get("price"), frame.index, problems, conversions)
    good, rejections = _collect(lines, raw, problems)
    for field in fields:
        _count_trimmed(frame[field], texts[field], good, conversions)
    clean = pd.DataFrame(
        {
            "line": lines[good],
            "item_id": item_id[good].astype("int64").to_numpy(),
            "category": texts["category"][good].to_numpy(),
            "title": texts["title"][good].to_numpy(),
            "description": description[good].to_numpy(),
            "price": price[good].to_numpy(),
        }
    )
    return Validated(clean, rejections, conversions)


def raw_json(raw: dict[str, Any]) -> str:
    """A rejected row as JSON text (NaN becomes null, text made ``printable``)."""
    return json.dumps({k: (None if isinstance(v, float) and math.isnan(v) else printable(v) if isinstance(v, str) else v)
                       for k, v in raw.items()})

