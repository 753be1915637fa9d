"""Bulk loading of catalogues and events into Postgres with validation and quarantine.

Every row read ends up in exactly one of: loaded (inserted or updated), quarantined (kept
with its reason in ``interest.quarantine``) or duplicate (counted, not stored twice), so
``rows_read == loaded + quarantined + duplicate`` after every load. Rows travel by COPY.
Each chunk commits on its own: a failure later in a file keeps what was loaded, and
loading the same input again changes nothing.
"""
from __future__ import annotations

import hashlib
import io
import logging
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd
import psycopg
from psycopg import sql
from tqdm.auto import tqdm

from materialize.embeddings.item_text import item_text, text_sha256
from materialize.ingest.readers import RawChunk, file_sha256, frames_as_chunks, read_file
from materialize.ingest.schema import EVENTS, ITEMS
from materialize.ingest.validation import Rejection, UnreadableInput, raw_json, validate_events, validate_items

log = logging.getLogger(__name__)

EXAMPLES_KEPT = 20
"""Rejections quoted in a report (all of them are in the quarantine table)."""


@dataclass
class IngestReport:
    """Counts of one load; ``reconciles`` must always hold."""

    kind: str
    source: str
    run_id: int = 0
    rows_read: int = 0
    loaded: int = 0
    updated: int = 0
    quarantined: int = 0
    duplicate: int = 0
    conversions: dict[str, int] = field(default_factory=dict)  # loaded rows changed as documented, per change
    examples: list[str] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)  # of ``store_events`` only: every rejected row
    stored_lines: list[int] = field(default_factory=list)      # of ``store_events`` only: the rows stored (not duplicates)

    @property
    def reconciles(self) -> bool:
        return self.rows_read == self.loaded + self.quarantined + self.duplicate

    def summary(self) -> str:
        converted = "".join(f"; {change}: {rows:,} rows" for change, rows in sorted(self.conversions.items()))
        return (
            f"{self.kind} from {self.source}: read {self.rows_read:,} = loaded {self.loaded:,}"
            f" (updated {self.updated:,}) + quarantined {self.quarantined:,} + duplicate {self.duplicate:,}{converted}"
        )


# ---------------------------------------------------------------------------- loaders


def _copy_frame(cur: psycopg.Cursor, table: str, frame: pd.DataFrame) -> None:
    buffer = io.StringIO()
    frame.to_csv(buffer, index=False, header=False, na_rep="", date_format="%Y-%m-%d %H:%M:%S.%f%z")
    columns = ", ".join(frame.columns)
    with cur.copy(f"COPY {table} ({columns}) FROM STDIN WITH (FORMAT csv, NULL '')") as copy:
        copy.write(buffer.getvalue())


def _quarantine(cur: psycopg.Cursor, report: IngestReport, sha: str, rejections: list[Rejection], unit: str) -> None:
    if not rejections:
        return
    cur.execute("CREATE TEMP TABLE IF NOT EXISTS stage_quarantine (line bigint, field text, reason text, raw jsonb); "
                "TRUNCATE stage_quarantine")  # one round trip: no parameters, so one simple query
    with cur.copy("COPY stage_quarantine (line, field, reason, raw) FROM STDIN") as copy:
        for r in rejections:
            copy.write_row((r.line, r.field, r.reason, raw_json(r.raw)))
    cur.execute(
        """
        INSERT INTO interest.quarantine (kind, source, source_sha256, line, field, reason, raw, run_id)
        SELECT %s, %s, %s, line, field, reason, raw, %s FROM stage_quarantine
        ON CONFLICT (kind, source_sha256, line) DO NOTHING
        """,
        (report.kind, report.source, sha, report.run_id),
    )
    report.quarantined += len(rejections)
    for r in rejections[: max(0, EXAMPLES_KEPT - len(report.examples))]:
        report.examples.append(r.describe(report.source, unit))


# queues each user with a stored event for the online refresh; the lines stored
# The endings of the insert statement: rows (kind, line, item_id), kind "unknown" for a
# line naming an unknown item, "stored" for each stored line (online) or once with the
# number stored in ``line`` (files).
_STORED_LINES = """, queued AS (
            INSERT INTO interest.online_refresh_queue (user_id, first_event_at)
            SELECT user_id, min(event_timestamp) FROM stored GROUP BY user_id)
        SELECT 'unknown', line, item_id FROM unknown
        UNION ALL
        SELECT 'stored', min(s.line), NULL FROM stored JOIN stage_events s USING (user_id, event_timestamp, item_id, event_type)
        GROUP BY user_id, event_timestamp, item_id, event_type"""
_STORED_COUNT = """
        SELECT 'unknown', line, item_id FROM unknown
        UNION ALL
        SELECT 'stored', count(*), NULL FROM stored"""


def _load_events_chunk(cur: psycopg.Cursor, report: IngestReport, sha: str, clean: pd.DataFrame, chunk: RawChunk,
                       online: bool = False) -> list[Rejection]:
    """Insert the chunk's good events once each (per natural key, and per event_id where
    given); returns the rejections of unknown items. ``online``: queue each user with a
    stored event for the online refresh, and return the stored lines in ``report.stored_lines``."""
    cur.execute(
        """
        CREATE TEMP TABLE IF NOT EXISTS stage_events (
            line bigint, user_id bigint, item_id bigint, event_type smallint,
            event_timestamp timestamptz, price numeric(14, 2), session_id text, event_id text, recommendation_id text);
        TRUNCATE stage_events
        """  # one round trip: no parameters, so one simple query
    )
    _copy_frame(cur, "stage_events", clean)
    # One statement: the lines naming an unknown item, and the insert of the others. Rows
    # go in line order: the first line of a natural key or an event_id is the one stored; a
    # row repeating a stored key or event_id is a duplicate (DO NOTHING covers the primary
    # key and the event_id index).
    rows = cur.execute(
        sql.SQL("""
        WITH unknown AS (
            SELECT line, item_id FROM stage_events s
            WHERE NOT EXISTS (SELECT 1 FROM interest.items i WHERE i.item_id = s.item_id)
        ), stored AS (
            INSERT INTO interest.events (user_id, item_id, event_type, event_timestamp, price, session_id, event_id,
                                         recommendation_id, run_id)
            SELECT user_id, item_id, event_type, event_timestamp, price, session_id, event_id, recommendation_id, %(run)s
            FROM (SELECT DISTINCT ON (user_id, event_timestamp, item_id, event_type) *
                  FROM stage_events s
                  WHERE EXISTS (SELECT 1 FROM interest.items i WHERE i.item_id = s.item_id)
                  ORDER BY user_id, event_timestamp, item_id, event_type, line) first_of_each_key
            ORDER BY line
            ON CONFLICT DO NOTHING
            RETURNING user_id, event_timestamp, item_id, event_type
        ){result}
        """).format(result=sql.SQL(_STORED_LINES if online else _STORED_COUNT)),
        {"run": report.run_id},
    ).fetchall()
    unknown = sorted((line, item_id) for kind, line, item_id in rows if kind == "unknown")
    rejections = []
    if unknown:
        positions = np.searchsorted(chunk.lines, [line for line, _ in unknown])
        rejections = [
            Rejection(line=line, field="item_id", reason=f"item_id: unknown item {item_id} (not in the catalogue)", raw=raw)
            for (line, item_id), raw in zip(unknown, chunk.raw(positions))
        ]
        _quarantine(cur, report, sha, rejections, chunk.unit)
    staged = len(clean) - len(unknown)
    if online:
        report.stored_lines.extend(line for kind, line, _ in rows if kind == "stored")
        n_stored = sum(kind == "stored" for kind, _, _ in rows)
    else:
        n_stored = next(line for kind, line, _ in rows if kind == "stored")
    report.loaded += n_stored
    report.duplicate += staged - n_stored
    return rejections


def _same(a, b, number: bool = False) -> bool:
    """Both missing, or equal (as numbers when ``number``: a price of '12' is one of '12.00')."""
    if pd.isna(a) or pd.isna(b):
        return pd.isna(a) and pd.isna(b)
    return Decimal(str(a)) == Decimal(str(b)) if number else a == b


def _load_items_chunk(cur: psycopg.Cursor, report: IngestReport, sha: str, clean: pd.DataFrame, chunk: RawChunk) -> None:
    # Within a file the first row of an item wins; a later identical row is a duplicate,
    # a later conflicting row is quarantined.
    first = ~clean.duplicated("item_id", keep="first")
    repeats = clean[~first]
    kept = clean[first].copy()
    if len(repeats):
        originals = kept.set_index("item_id")
        conflicts: list[tuple[int, str]] = []
        for row in repeats.itertuples(index=False):
            original = originals.loc[row.item_id]
            same = all(_same(getattr(row, c), original[c], number=c == "price")
                       for c in ("category", "title", "description", "price"))
            if same:
                report.duplicate += 1
            else:
                conflicts.append((int(row.line), f"item_id: item {row.item_id} repeats {chunk.unit} "
                                                 f"{int(original['line'])} with different values"))
        raws = chunk.raw(np.searchsorted(chunk.lines, [line for line, _ in conflicts]))
        _quarantine(cur, report, sha, [Rejection(line, "item_id", reason, raw)
                                       for (line, reason), raw in zip(conflicts, raws)], chunk.unit)
    descriptions = kept["description"].astype(object).where(kept["description"].notna(), None)
    kept["text_sha256"] = [text_sha256(item_text(t, d)) for t, d in zip(kept["title"], descriptions)]
    cur.execute(
        """
        CREATE TEMP TABLE IF NOT EXISTS stage_items (
            line bigint, item_id bigint, category text, title text, description text,
            price numeric(14, 2), text_sha256 text)
        """
    )
    cur.execute("TRUNCATE stage_items")
    _copy_frame(cur, "stage_items", kept)
    cur.execute(
        "INSERT INTO interest.categories (category) SELECT DISTINCT category FROM stage_items ORDER BY 1 ON CONFLICT DO NOTHING"
    )
    # The current row goes to interest.items; each new or changed row is also a new
    # version in interest.item_versions, and a change closes the item's previous version.
    rows = cur.execute(
        """
        WITH upserted AS (
            INSERT INTO interest.items AS i (item_id, category_id, title, description, price, text_sha256, valid_from)
            SELECT s.item_id, c.category_id, s.title, s.description, s.price, s.text_sha256,
                   CASE WHEN EXISTS (SELECT 1 FROM interest.items o WHERE o.item_id = s.item_id)
                        THEN now() ELSE 'epoch'::timestamptz END
            FROM stage_items s JOIN interest.categories c USING (category)
            ON CONFLICT (item_id) DO UPDATE
               SET category_id = excluded.category_id, title = excluded.title,
                   description = excluded.description, price = excluded.price,
                   text_sha256 = excluded.text_sha256, valid_from = now(), created_at = now()
             WHERE (i.category_id, i.title, i.description, i.price)
                   IS DISTINCT FROM (excluded.category_id, excluded.title, excluded.description, excluded.price)
            RETURNING (xmax = 0) AS inserted, i.*
        ),
        closed AS (
            UPDATE interest.item_versions v SET valid_to = u.valid_from
            FROM upserted u
            WHERE v.item_id = u.item_id AND v.valid_to IS NULL AND v.valid_from < u.valid_from
        ),
        versions AS (
            INSERT INTO interest.item_versions
                (item_id, valid_from, category_id, title, description, price, text_sha256, created_at)
            SELECT item_id, valid_from, category_id, title, description, price, text_sha256, created_at
            FROM upserted
        )
        SELECT inserted FROM upserted
        """
    ).fetchall()
    inserted = sum(1 for (was_insert,) in rows if was_insert)
    report.loaded += len(rows)
    report.updated += len(rows) - inserted
    report.duplicate += len(kept) - len(rows)


def load(
    conn: psycopg.Connection,
    kind: str,
    chunks: Iterable[RawChunk],
    source: str,
    source_sha256: str,
    now: pd.Timestamp | None = None,
    future_tolerance_s: int = 300,
    min_event_time: datetime | None = None,
    progress: bool = False,
    total_rows: int | None = None,
) -> IngestReport:
    """Validate and load chunks of ``kind`` ('items' or 'events').

    Args:
        conn: an open connection (not in autocommit); each chunk commits.
        source: a name for the input, kept with every quarantined row.
        source_sha256: content hash of the input; quarantine rows are unique per (hash, line).
        now: reference time for future timestamps (default: current UTC time).
        min_event_time: events stamped earlier are quarantined (None: no lower bound).

    Returns:
        The reconciled counts; also stored in ``interest.ingest_runs``.
    """
    if kind not in (ITEMS.name, EVENTS.name):
        raise ValueError(f"unknown kind {kind!r}")
    now = now or pd.Timestamp.now(tz="UTC")
    report = IngestReport(kind=kind, source=source)
    with conn.cursor() as cur:
        report.run_id = cur.execute(
            "INSERT INTO interest.ingest_runs (kind, source, source_sha256) VALUES (%s, %s, %s) RETURNING run_id",
            (kind, source, source_sha256),
        ).fetchone()[0]
        conn.commit()
        bar = tqdm(total=total_rows, unit="rows", desc=f"load {kind}", disable=not progress)
        try:
            for chunk in chunks:
                _load_chunk(cur, report, kind, chunk, source_sha256, now, future_tolerance_s, min_event_time)
                chunk_rows = len(chunk.frame) + len(chunk.malformed)
                report.rows_read += chunk_rows
                _record(cur, report, status="running")
                conn.commit()
                bar.update(chunk_rows)
            if not report.reconciles:  # a bug, never bad input
                raise AssertionError(f"counts do not reconcile: {report.summary()}")
        except BaseException as error:
            _record_failure(conn, report, error)
            raise
        finally:
            bar.close()
        _record(cur, report, status="done")
        conn.commit()
    if report.quarantined:
        log.warning("%s quarantined %d rows; first: %s", source, report.quarantined, report.examples[0])
    return report


def _load_chunk(cur: psycopg.Cursor, report: IngestReport, kind: str, chunk: RawChunk, sha: str,
                now: pd.Timestamp, future_tolerance_s: int, min_event_time: datetime | None,
                online: bool = False) -> list[Rejection]:
    """Quarantine the chunk's bad rows and load its good ones (not committed); returns the rejections."""
    _quarantine(cur, report, sha, chunk.malformed, chunk.unit)
    if kind == EVENTS.name:
        checked = validate_events(chunk.frame, chunk.lines, chunk.raw, now, future_tolerance_s, min_event_time)
    else:
        checked = validate_items(chunk.frame, chunk.lines, chunk.raw)
    _quarantine(cur, report, sha, checked.rejections, chunk.unit)
    rejections = chunk.malformed + checked.rejections
    if len(checked.clean) and kind == EVENTS.name:
        rejections += _load_events_chunk(cur, report, sha, checked.clean, chunk, online)
    elif len(checked.clean):
        _load_items_chunk(cur, report, sha, checked.clean, chunk)
    for change, rows in checked.conversions.items():
        report.conversions[change] = report.conversions.get(change, 0) + rows
    return rejections


def _record(cur: psycopg.Cursor, report: IngestReport, status: str, error: str | None = None) -> None:
    cur.execute(
        """
        UPDATE interest.ingest_runs
           SET status = %s, rows_read = %s, loaded = %s, updated = %s, quarantined = %s, duplicate = %s,
               error = %s, finished_at = CASE WHEN %s IN ('done', 'failed') THEN now() END
         WHERE run_id = %s
        """,
        (status, report.rows_read, report.loaded, report.updated, report.quarantined, report.duplicate, error, status,
         report.run_id),
    )


def _record_failure(conn: psycopg.Connection, report: IngestReport, error: BaseException) -> None:
    """Mark the run failed: the chunk in flight is rolled back, the committed ones (counted
    in the run's row) stay. Nothing is recorded when the database itself is gone."""
    message = f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"[:1000]
    try:
        conn.rollback()
        with conn.cursor() as cur:
            _record(cur, report, status="failed", error=message)
        conn.commit()
    except psycopg.Error as recording:  # an outage: the run stays 'running'
        log.warning("could not mark load run %s failed: %s", report.run_id, recording)


def load_file(conn: psycopg.Connection, kind: str, path: Path, chunk_rows: int, **kwargs) -> IngestReport:
    """Load a CSV or Parquet file of ``kind`` (see ``load`` for the keyword arguments)."""
    path = Path(path)
    schema = EVENTS if kind == EVENTS.name else ITEMS
    chunks = read_file(path, schema, chunk_rows)
    try:
        sha = file_sha256(path)
    except OSError as error:
        raise UnreadableInput(f"{path}: cannot be read ({error.strerror})") from None
    return load(conn, kind, chunks, source=str(path), source_sha256=sha, **kwargs)


def load_frames(
    conn: psycopg.Connection, kind: str, frames: Iterable[pd.DataFrame], source: str, **kwargs
) -> IngestReport:
    """Load in-memory frames (a generator's output); ``source`` should identify them exactly."""
    schema = EVENTS if kind == EVENTS.name else ITEMS
    sha = hashlib.sha256(source.encode()).hexdigest()
    return load(conn, kind, frames_as_chunks(frames, schema, source), source=source, source_sha256=sha, **kwargs)



def store_events(conn: psycopg.Connection, frame: pd.DataFrame, source: str, now: pd.Timestamp | None = None,
                 future_tolerance_s: int = 300, min_event_time: datetime | None = None) -> IngestReport:
    """Validate and store events from a service in the caller's transaction (the caller
    commits: that is when they are stored).

    As ``load_frames`` in one transaction: good rows are stored once, bad ones quarantined,
    the run recorded; besides, each user with a stored event is queued for the online
    refresh (``interest.online_refresh_queue``). Row ``i`` of ``frame`` is line ``i + 1`` of
    ``report.rejections`` and ``report.stored_lines``; rows in neither are duplicates.
    """
    report = IngestReport(kind=EVENTS.name, source=source)
    sha = hashlib.sha256(source.encode()).hexdigest()
    with conn.cursor() as cur:
        report.run_id = cur.execute(
            "INSERT INTO interest.ingest_runs (kind, source, source_sha256) VALUES (%s, %s, %s) RETURNING run_id",
            (report.kind, source, sha),
        ).fetchone()[0]
        for chunk in frames_as_chunks([frame], EVENTS, source):
            report.rejections += _load_chunk(cur, report, EVENTS.name, chunk, sha, now or pd.Timestamp.now(tz="UTC"),
                                             future_tolerance_s, min_event_time, online=True)
            report.rows_read += len(chunk.frame) + len(chunk.malformed)
        if not report.reconciles:  # a bug, never bad input
            raise AssertionError(f"counts do not reconcile: {report.summary()}")
        _record(cur, report, status="done")
    return report
