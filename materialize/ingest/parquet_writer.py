"""The spark profile's ingestion: validated events to Parquet partitioned by day, and the
catalogue exported beside them.

Events go through the same validation, quarantine and counting as ``loader.load``: every
row read is loaded, quarantined (in ``interest.quarantine``, with the same reasons) or a
duplicate, and the counts are kept in ``interest.ingest_runs``. The clean rows are written
to ``<warehouse>/events/day=YYYY-MM-DD/run-<run>-<chunk>.parquet`` instead of
``interest.events``. Differences from the PostgreSQL loader, by design:

- duplicates are counted within one load (same key: user, time, item, type, or the same
  ``event_id``; the first line wins); a key already written by an earlier load is dropped
  by the Spark feature build, which keeps the row of the earliest run (``run_id``, then
  ``line``), as the primary key of ``interest.events`` keeps the first loaded row (an
  ``event_id`` repeated across loads is not checked: the build deduplicates natural keys);
- loading the same input twice records a second run and writes its files again (the build
  drops them as duplicates).

The catalogue stays in PostgreSQL (``loader`` validates and versions it; it is small and
its versions need upserts), and ``export_catalogue`` copies what the Spark build and
Feast read into the warehouse: current items, categories, item text vectors, catalogue
versions (the ``item_catalog`` source) and item embeddings (``item_embeddings``).
"""
from __future__ import annotations

import datetime as dt
import uuid
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd
import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from materialize.ingest.loader import IngestReport, _quarantine, _record, _record_failure
from materialize.ingest.readers import RawChunk, frames_as_chunks
from materialize.ingest.schema import EVENTS
from materialize.ingest.validation import Rejection, validate_events

EVENTS_SCHEMA = pa.schema([
    ("user_id", pa.int64()),
    ("item_id", pa.int64()),
    ("event_type", pa.int16()),
    ("event_timestamp", pa.timestamp("us", tz="UTC")),
    ("price", pa.decimal128(14, 2)),
    ("session_id", pa.string()),
    ("event_id", pa.string()),
    ("recommendation_id", pa.string()),
    ("run_id", pa.int64()),
    ("line", pa.int64()),
])
"""Columns of ``<warehouse>/events`` (plus the partition column ``day``)."""

KEY = ["user_id", "event_timestamp", "item_id", "event_type"]


def _local(warehouse: str) -> Path:
    if "://" in warehouse and not warehouse.startswith("file://"):
        raise ValueError(f"the Parquet writer writes to a local or mounted folder, not {warehouse!r} "
                         "(write there and copy, or run the ingestion where the warehouse is mounted)")
    return Path(warehouse.removeprefix("file://"))


def _prices(values: pd.Series) -> pa.Array:
    """numeric(14, 2) as PostgreSQL stores it: text rounded half away from zero, as the
    loader's COPY has PostgreSQL do; floats rounded the same way."""
    if pd.api.types.is_numeric_dtype(values):
        rounded = pc.round(pa.array(values.astype("float64"), from_pandas=True), 2, round_mode="half_towards_infinity")
        return pc.cast(pc.cast(rounded, pa.string()), pa.decimal128(14, 2))
    cents = Decimal("0.01")
    return pa.array([None if v is None or v is pd.NA or (isinstance(v, float) and np.isnan(v))
                     else Decimal(str(v)).quantize(cents, ROUND_HALF_UP) for v in values], type=pa.decimal128(14, 2))


def _write_events_chunk(conn: psycopg.Connection, report: IngestReport, sha: str, clean: pd.DataFrame,
                        chunk: RawChunk, events_dir: Path, chunk_no: int) -> None:
    """Quarantine unknown items, drop duplicates within the chunk and write the rest."""
    ids = np.unique(clean["item_id"].to_numpy())
    known = {row[0] for row in conn.execute("SELECT item_id FROM interest.items WHERE item_id = ANY(%s)", (ids.tolist(),))}
    unknown = ~clean["item_id"].isin(known)
    if unknown.any():
        bad = clean[unknown].sort_values("line")
        raws = chunk.raw(np.searchsorted(chunk.lines, bad["line"].to_numpy()))
        with conn.cursor() as cur:
            _quarantine(cur, report, sha, [
                Rejection(line=int(line), field="item_id", reason=f"item_id: unknown item {item_id} (not in the catalogue)", raw=raw)
                for line, item_id, raw in zip(bad["line"], bad["item_id"], raws)], chunk.unit)
    staged = clean[~unknown].sort_values("line")
    kept = staged.drop_duplicates(KEY, keep="first")
    kept = kept[kept["event_id"].isna() | ~kept["event_id"].duplicated(keep="first")]  # one row per event_id too
    report.duplicate += len(staged) - len(kept)
    if kept.empty:
        return
    timestamps = pd.to_datetime(kept["event_timestamp"], utc=True)
    table = pa.Table.from_pydict({
        "user_id": pa.array(kept["user_id"].to_numpy(), pa.int64()),
        "item_id": pa.array(kept["item_id"].to_numpy(), pa.int64()),
        "event_type": pa.array(kept["event_type"].to_numpy(), pa.int16()),
        "event_timestamp": pa.array(timestamps.dt.floor("us"), pa.timestamp("us", tz="UTC")),
        "price": _prices(kept["price"]),
        **{field: pa.array(kept[field].astype(object).where(kept[field].notna(), None), pa.string())
           for field in ("session_id", "event_id", "recommendation_id")},
        "run_id": pa.array(np.full(len(kept), report.run_id), pa.int64()),
        "line": pa.array(kept["line"].to_numpy(), pa.int64()),
    }, schema=EVENTS_SCHEMA)
    days = timestamps.dt.strftime("%Y-%m-%d").to_numpy()
    for day in np.unique(days):
        folder = events_dir / f"day={day}"
        folder.mkdir(parents=True, exist_ok=True)
        pq.write_table(table.filter(pa.array(days == day)), folder / f"run-{report.run_id}-{chunk_no:05d}.parquet")
    report.loaded += len(kept)


def load_events_parquet(conn: psycopg.Connection, chunks: Iterable[RawChunk], warehouse: str, source: str,
                        source_sha256: str, now: pd.Timestamp | None = None, future_tolerance_s: int = 300,
                        min_event_time: dt.datetime | None = None) -> IngestReport:
    """Validate event chunks and write the clean rows to ``<warehouse>/events``.

    Args:
        conn: bookkeeping database (ingest runs, quarantine, the catalogue to check item ids).
        warehouse: local or mounted folder of the Parquet warehouse.
        source, source_sha256, now, future_tolerance_s, min_event_time: as ``loader.load``.

    Returns:
        The reconciled counts, also stored in ``interest.ingest_runs``.
    """
    now = now or pd.Timestamp.now(tz="UTC")
    events_dir = _local(warehouse) / "events"
    report = IngestReport(kind=EVENTS.name, source=source)
    with conn.cursor() as cur:
        report.run_id = cur.execute(
            "INSERT INTO interest.ingest_runs (kind, source, source_sha256) VALUES (%s, %s, %s) RETURNING run_id",
            (EVENTS.name, source, source_sha256),
        ).fetchone()[0]
        conn.commit()
        try:
            for number, chunk in enumerate(chunks):
                _quarantine(cur, report, source_sha256, chunk.malformed, chunk.unit)
                checked = validate_events(chunk.frame, chunk.lines, chunk.raw, now, future_tolerance_s, min_event_time)
                _quarantine(cur, report, source_sha256, checked.rejections, chunk.unit)
                if len(checked.clean):
                    _write_events_chunk(conn, report, source_sha256, checked.clean, chunk, events_dir, number)
                for change, rows in checked.conversions.items():
                    report.conversions[change] = report.conversions.get(change, 0) + rows
                report.rows_read += len(chunk.frame) + len(chunk.malformed)
                _record(cur, report, status="running")
                conn.commit()
            if not report.reconciles:
                raise AssertionError(f"counts do not reconcile: {report.summary()}")
        except BaseException as error:
            _record_failure(conn, report, error)
            raise
        _record(cur, report, status="done")
        conn.commit()
    return report


def load_event_frames_parquet(conn: psycopg.Connection, frames: Iterable[pd.DataFrame], warehouse: str, source: str,
                              **kwargs) -> IngestReport:
    """``load_events_parquet`` of in-memory frames (a generator's output)."""
    import hashlib

    sha = hashlib.sha256(source.encode()).hexdigest()
    return load_events_parquet(conn, frames_as_chunks(frames, EVENTS, source), warehouse, source, sha, **kwargs)


_CATALOGUE_EXPORTS = {
    # folder under the warehouse -> query (constants)
    "catalog/items": "SELECT item_id, category_id FROM interest.items",
    "catalog/categories": "SELECT category_id FROM interest.categories",
    "catalog/item_vectors": (
        "SELECT i.item_id, t.embedding FROM interest.items i JOIN interest.text_embeddings t USING (text_sha256)"
    ),
    "features/item_catalog": (
        "SELECT item_id, item_category_id, item_price, event_timestamp, created_timestamp FROM interest.item_catalog"
    ),
    "features/item_embeddings": (
        "SELECT item_id, event_timestamp, created_timestamp, text_sha256, embedding FROM interest.item_embeddings"
    ),
}
_TYPES = {
    "item_id": pa.int64(), "category_id": pa.int32(), "item_category_id": pa.int32(), "item_price": pa.float64(),
    "event_timestamp": pa.timestamp("us", tz="UTC"), "created_timestamp": pa.timestamp("us", tz="UTC"),
    "text_sha256": pa.string(), "embedding": pa.list_(pa.float32()),
}


def export_catalogue(conn: psycopg.Connection, warehouse: str) -> dict[str, int]:
    """Write the catalogue tables the Spark build and Feast read (each folder's content
    replaced: the new file is written first, then the older files are removed).

    Returns:
        Rows written per folder.
    """
    root = _local(warehouse)
    counts = {}
    for folder, query in _CATALOGUE_EXPORTS.items():
        with conn.cursor() as cur:
            cur.execute(query)
            names = [d.name for d in cur.description]
            rows = cur.fetchall()
        columns = list(zip(*rows)) if rows else [[] for _ in names]
        table = pa.Table.from_arrays([pa.array(list(col), _TYPES[name]) for name, col in zip(names, columns)], names=names)
        target = root / folder
        target.mkdir(parents=True, exist_ok=True)
        new = target / f"part-{uuid.uuid4().hex[:8]}.parquet"
        pq.write_table(table, new)
        for old in target.glob("*.parquet"):
            if old != new:
                old.unlink()
        counts[folder] = table.num_rows
    return counts
