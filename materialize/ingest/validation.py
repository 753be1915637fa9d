"""Row validation of events and catalogue items against ``materialize.ingest.schema``.

Validation is vectorised over a chunk. Every rejected row becomes a ``Rejection`` naming
its line, the first offending field and all reasons; nothing is dropped silently.
Checks that need the database (unknown item ids, duplicates of loaded rows) run in SQL
during the load.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from materialize.ingest.schema import EVENT_TYPE_CODES, TableSchema

MAX_ID = 2**63 - 1


class SchemaError(ValueError):
    """An input whose column set does not match the documented schema."""


@dataclass(frozen=True)
class Rejection:
    """One quarantined row."""

    line: int
    field: str | None
    reason: str
    raw: dict[str, Any]

    def describe(self, source: str) -> str:
        return f"{source} line {self.line}: {self.reason}"


def check_columns(columns: list[str], schema: TableSchema, source: str) -> None:
    """Raise ``SchemaError`` naming the source and fields when the column set is wrong."""
    missing = [c for c in schema.required if c not in columns]
    unexpected = [c for c in columns if c not in schema.columns]
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
    """Values as stripped strings, missing values as None."""
    out = series.astype("string").str.strip()
    return out.mask(out == "", pd.NA)


def _positive_ids(series: pd.Series, field: str, problems: dict[str, pd.Series]) -> pd.Series:
    if pd.api.types.is_integer_dtype(series):
        values = series.astype("Int64")
        problems[field] = pd.Series(
            np.where(values.isna(), f"{field}: missing", np.where(values <= 0, f"{field}: must be a positive integer", "")),
            index=series.index,
        )
        return values
    text = _text(series)
    is_int = text.str.fullmatch(r"\+?\d{1,19}").fillna(False).astype(bool)
    numbers = pd.to_numeric(text.where(is_int), errors="coerce")
    valid = is_int & numbers.notna() & (numbers > 0) & (numbers <= MAX_ID)
    reason = np.where(
        text.isna(), f"{field}: missing", "",
    )
    bad_value = (~valid) & text.notna()
    shown = text.fillna("").str.slice(0, 40)
    reason = np.where(bad_value, f"{field}: not a positive integer: '" + shown + "'", reason)
    problems[field] = pd.Series(reason, index=series.index)
    return text.where(valid, "0").astype("int64").astype("Int64").where(valid, pd.NA)


def _optional_price(series: pd.Series | None, index: pd.Index, problems: dict[str, pd.Series]) -> pd.Series:
    if series is None:
        return pd.Series(np.nan, index=index, dtype="float64")
    if pd.api.types.is_numeric_dtype(series):
        price = series.astype("float64")
        unparseable = pd.Series(False, index=index)
    else:
        text = _text(series)
        price = pd.to_numeric(text, errors="coerce").astype("float64")
        unparseable = text.notna() & price.isna()
        problems["price_parse"] = pd.Series(
            np.where(unparseable, "price: not a number: '" + text.fillna("").str.slice(0, 40) + "'", ""), index=index
        )
    bad = (price < 0) | np.isinf(price)
    problems["price"] = pd.Series(np.where(bad, "price: must be a finite number >= 0", ""), index=index)
    return price


def _timestamps(series: pd.Series, now: pd.Timestamp, tolerance_s: int, problems: dict[str, pd.Series]) -> pd.Series:
    field = "event_timestamp"
    if pd.api.types.is_datetime64_any_dtype(series):
        ts = series if series.dt.tz is not None else series.dt.tz_localize("UTC")
        ts = ts.dt.tz_convert("UTC")
        text = ts.astype("string")
    else:
        text = _text(series)
        epoch = text.str.fullmatch(r"\d{9,10}(\.\d+)?").fillna(False).astype(bool)
        from_epoch = pd.to_datetime(pd.to_numeric(text.where(epoch), errors="coerce"), unit="s", utc=True)
        iso = pd.to_datetime(text.where(~epoch), errors="coerce", utc=True, format="ISO8601")
        ts = from_epoch.where(epoch, iso)
    future = ts > now + pd.Timedelta(seconds=tolerance_s)
    reason = np.where(text.isna(), f"{field}: missing", "")
    reason = np.where(text.notna() & ts.isna(), f"{field}: unparseable timestamp '" + text.fillna("").str.slice(0, 40) + "'", reason)
    reason = np.where(future.fillna(False), f"{field}: in the future ('" + text.fillna("") + "' is after now)", reason)
    problems[field] = pd.Series(reason, index=series.index)
    return ts


def _collect(frame: pd.DataFrame, lines: np.ndarray, problems: dict[str, pd.Series]) -> tuple[np.ndarray, list[Rejection]]:
    """Combine per-field reasons; returns the good-row mask and rejections in line order."""
    order = list(problems)
    reasons = pd.DataFrame({k: problems[k] for k in order}).fillna("")
    bad = (reasons != "").any(axis=1).to_numpy()
    rejections = []
    if bad.any():
        raw_rows = frame[bad].astype("string").to_dict("records")
        for pos, raw in zip(np.flatnonzero(bad), raw_rows):
            row_reasons = [r for r in reasons.iloc[pos].tolist() if r]
            field = row_reasons[0].split(":", 1)[0]
            rejections.append(
                Rejection(
                    line=int(lines[pos]),
                    field=field,
                    reason="; ".join(row_reasons),
                    raw={k: (None if v is pd.NA else str(v)) for k, v in raw.items()},
                )
            )
    return ~bad, rejections


def validate_events(
    frame: pd.DataFrame, lines: np.ndarray, now: pd.Timestamp, future_tolerance_s: int
) -> tuple[pd.DataFrame, list[Rejection]]:
    """Validate an events chunk.

    Args:
        frame: rows in the ``EVENTS`` schema, as strings (files) or typed (generators).
        lines: (n,) int64 line number of each row in its source.
        now: reference time for the "future timestamp" check (UTC).
        future_tolerance_s: clock skew allowed, in seconds.

    Returns:
        Good rows typed for loading (columns ``line`` + the schema columns) and the
        rejections.
    """
    problems: dict[str, pd.Series] = {}
    user_id = _positive_ids(frame["user_id"], "user_id", problems)
    item_id = _positive_ids(frame["item_id"], "item_id", problems)
    event_text = _text(frame["event_type"]).str.lower()
    event_type = event_text.map(EVENT_TYPE_CODES)
    problems["event_type"] = pd.Series(
        np.where(
            event_text.isna(),
            "event_type: missing",
            np.where(event_type.isna(), "event_type: unknown event type '" + event_text.fillna("").str.slice(0, 40) + "' (expected view, click, cart or purchase)", ""),
        ),
        index=frame.index,
    )
    timestamp = _timestamps(frame["event_timestamp"], now, future_tolerance_s, problems)
    price = _optional_price(frame.get("price"), frame.index, problems)
    session = _text(frame["session_id"]) if "session_id" in frame else pd.Series(pd.NA, index=frame.index, dtype="string")
    good, rejections = _collect(frame, lines, problems)
    clean = pd.DataFrame(
        {
            "line": lines[good],
            "user_id": user_id[good].astype("int64").to_numpy(),
            "item_id": item_id[good].astype("int64").to_numpy(),
            "event_type": event_type[good].astype("int16").to_numpy(),
            "event_timestamp": timestamp[good].to_numpy(),
            "price": price[good].to_numpy(),
            "session_id": session[good].to_numpy(),
        }
    )
    return clean, rejections


def validate_items(frame: pd.DataFrame, lines: np.ndarray) -> tuple[pd.DataFrame, list[Rejection]]:
    """Validate a catalogue chunk; returns typed good rows (with ``line``) and rejections."""
    problems: dict[str, pd.Series] = {}
    item_id = _positive_ids(frame["item_id"], "item_id", problems)
    texts = {}
    for field in ("category", "title"):
        texts[field] = _text(frame[field])
        problems[field] = pd.Series(np.where(texts[field].isna(), f"{field}: missing", ""), index=frame.index)
    description = _text(frame["description"]) if "description" in frame else pd.Series(pd.NA, index=frame.index, dtype="string")
    price = _optional_price(frame.get("price"), frame.index, problems)
    good, rejections = _collect(frame, lines, problems)
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
    return clean, rejections


def raw_json(raw: dict[str, Any]) -> str:
    """A rejected row as JSON text (NaN becomes null)."""
    return json.dumps({k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in raw.items()})

