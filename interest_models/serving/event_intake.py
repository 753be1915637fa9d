"""Event intake: events stored by group commit, online features refreshed in micro-batches.

Requests hand their events to the ``EventWriter``, which stores whatever arrived while its
previous transaction ran in one transaction: a request is answered once that transaction
has committed (acknowledged means stored), and concurrent requests share a commit and one
validation pass. The same transaction queues each user with a stored event in
``interest.online_refresh_queue``; the ``OnlineRefresher`` recomputes the queued users'
feature rows (recent sequences every ``refresh_interval_ms``, the other user tables every
``aggregate_refresh_interval_ms``) and pushes their newest rows to the online store
through Feast push sources. Neither holds a lock on the request path; one round of each
tier runs at a time (of any worker process), and a feature build waits for them.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from concurrent.futures import Future
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Callable, Literal

import pandas as pd
import psycopg
from psycopg import sql

from materialize.database.tables import fetch_frame
from materialize.features.builder import refresh_user_sequences, refresh_users
from materialize.ingest.loader import IngestReport, store_events
from materialize.settings import PipelineConfig

log = logging.getLogger(__name__)

REFRESHER_LOCK = "interest.online_refresher"  # advisory locks (.sequence, .aggregate): one round of each tier at a time
AGGREGATE_TABLES = ("user_daily_features", "user_interest_embedding")
PUSHED_TABLES = {
    "user_daily_push": "user_daily_features",
    "user_sequence_push": "user_recent_sequence",
    "user_interest_embedding_push": "user_interest_embedding",
}
"""Feast push source -> the table whose newest row per user it carries online."""

Connection = Callable[[], AbstractContextManager[psycopg.Connection]]
EventStatus = Literal["stored", "duplicate", "rejected"]


@dataclass
class RequestOutcome:
    """What became of each event of one request, in request order."""

    statuses: list[EventStatus]
    reasons: dict[int, str] = field(default_factory=dict)  # position -> why it was rejected (it is quarantined)

    def count(self, status: EventStatus) -> int:
        return sum(s == status for s in self.statuses)


@dataclass
class _Pending:
    events: list[dict]  # in the loader's events schema
    client: str
    future: Future = field(default_factory=Future)


@dataclass
class IntakeCounters:
    """This worker process's intake counts (for ``/metrics``)."""

    stored: int = 0
    duplicate: int = 0
    rejected: int = 0
    commits: int = 0
    sequence_refreshes: int = 0
    sequence_users_refreshed: int = 0
    last_sequence_refresh_s: float = 0.0
    aggregate_refreshes: int = 0
    aggregate_users_refreshed: int = 0
    last_aggregate_refresh_s: float = 0.0
    refresh_failures: int = 0


class EventWriter:
    """One thread that stores queued requests' events together (group commit).

    ``submit`` returns a future: its result is the request's ``RequestOutcome`` once the
    transaction committed; its exception the database error when it did not (an outage:
    nothing of the request is acknowledged, and a retry stores each event once). The
    writer keeps one pooled connection while requests keep coming and gives it back when
    the queue runs dry or the connection fails.
    """

    def __init__(self, connection: Connection, pipeline: PipelineConfig, max_events: int, counters: IntakeCounters):
        self.connection, self.pipeline, self.max_events, self.counters = connection, pipeline, max_events, counters
        self._pending: queue.SimpleQueue[_Pending | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="interest-event-writer", daemon=True)
        self._thread.start()

    def submit(self, events: list[dict], client: str) -> Future:
        """Queue ``events`` (dicts in the loader's events schema) of ``client`` (its address)."""
        pending = _Pending(events, client)
        self._pending.put(pending)
        return pending.future

    def close(self) -> None:
        self._pending.put(None)
        self._thread.join(timeout=30)

    def _next_batch(self, wait: bool) -> tuple[list[_Pending], bool]:
        """The requests queued now, up to ``max_events`` events (waiting for one when
        ``wait``), and whether ``close`` was called."""
        try:
            first = self._pending.get() if wait else self._pending.get_nowait()
        except queue.Empty:
            return [], False
        if first is None:
            return [], True
        batch, rows = [first], len(first.events)
        while rows < self.max_events:
            try:
                more = self._pending.get_nowait()
            except queue.Empty:
                break
            if more is None:
                return batch, True
            batch.append(more)
            rows += len(more.events)
        return batch, False

    def _run(self) -> None:
        closing = False
        while not closing:
            batch, closing = self._next_batch(wait=True)
            try:
                with self.connection() as conn:
                    while batch:
                        self._store(conn, batch)
                        if closing:
                            break
                        batch, closing = self._next_batch(wait=False)
            except BaseException as error:  # noqa: BLE001 - no connection, or it broke: the waiting requests hear of it
                for pending in batch:
                    if not pending.future.done():
                        pending.future.set_exception(error)

    def _store(self, conn: psycopg.Connection, batch: list[_Pending]) -> None:
        """Store ``batch`` in one transaction and answer its requests. Raises (after
        answering them) when the connection may be unusable."""
        try:
            report = self._commit(conn, batch)
        except (psycopg.DataError, psycopg.IntegrityError) as error:
            conn.rollback()
            if len(batch) > 1:  # the database refused a value: find whose, and store the others
                for pending in batch:
                    self._store(conn, [pending])
            else:
                batch[0].future.set_exception(error)
            return
        except BaseException as error:  # an outage or a bug: every waiting request hears of it
            for pending in batch:
                pending.future.set_exception(error)
            raise
        stored = set(report.stored_lines)
        rejected = {r.line: r.reason for r in report.rejections}
        first_line = 1
        for pending in batch:
            lines = range(first_line, first_line + len(pending.events))
            outcome = RequestOutcome(
                statuses=["stored" if line in stored else "rejected" if line in rejected else "duplicate" for line in lines],
                reasons={i: rejected[line] for i, line in enumerate(lines) if line in rejected})
            first_line += len(pending.events)
            self.counters.stored += outcome.count("stored")
            self.counters.duplicate += outcome.count("duplicate")
            self.counters.rejected += outcome.count("rejected")
            pending.future.set_result(outcome)

    def _commit(self, conn: psycopg.Connection, batch: list[_Pending]) -> IngestReport:
        frame = pd.DataFrame([event for pending in batch for event in pending.events])
        clients = ",".join(sorted({pending.client for pending in batch}))
        report = store_events(conn, frame, source=f"api:{clients[:200]}:{uuid.uuid4()}",
                              future_tolerance_s=self.pipeline.future_tolerance_seconds,
                              min_event_time=self.pipeline.min_event_time)
        conn.commit()
        self.counters.commits += 1
        return report


class OnlineRefresher:
    """Two threads that bring the online features of the users queued by the intake up to
    date, each pushing its users' newest rows (``PUSHED_TABLES``):

    - sequences, every ``interval_s``: the recent sequences of the users whose queue rows
      are not ``sequence_pushed`` yet, from their first new event (cheap: only the new
      events are read); marks those rows;
    - aggregates, every ``aggregate_interval_s``: the daily activity, shift indicators and
      interest embedding of at most ``max_aggregate_rows`` rows already marked, oldest
      first; deletes them.

    The two write different tables, so neither waits for the other: sequences stay fresh
    at any rate their round keeps up with, and the aggregates follow as fast as their
    costlier recomputation allows (``/metrics`` shows the queue's age when they fall
    behind). Queue rows change only in the transaction that pushed them, so a failed round
    is redone by the next one. One round of each tier runs at a time, whichever worker
    process runs it.
    """

    def __init__(self, connection: Connection, pipeline: PipelineConfig, store: Callable[[], object | None],
                 config: dict, counters: IntakeCounters):
        self.connection, self.pipeline, self.store, self.counters = connection, pipeline, store, counters
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(False, config["refresh_interval_ms"] / 1000, config["max_refresh_rows"]),
                             name="interest-sequence-refresher", daemon=True),
            threading.Thread(target=self._run, args=(True, config["aggregate_refresh_interval_ms"] / 1000,
                                                     config["max_aggregate_refresh_rows"]),
                             name="interest-aggregate-refresher", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)

    def _run(self, aggregates: bool, interval_s: float, max_rows: int) -> None:
        while not self._stop.wait(interval_s):
            store = self.store()
            if store is None:  # the database is unreachable: the service reconnects on its own
                continue
            try:
                while self.refresh(store, aggregates, max_rows) == max_rows and not self._stop.is_set():
                    pass  # a full round: more are waiting
            except Exception as error:  # noqa: BLE001 - the queue keeps the users; the next round retries
                self.counters.refresh_failures += 1
                log.warning("online refresh failed, retrying in %.1f s: %s", interval_s, error)

    def refresh(self, store, aggregates: bool, max_rows: int) -> int:
        """One round of either tier; returns the queue rows it consumed."""
        tier = "aggregate" if aggregates else "sequence"
        started = time.perf_counter()
        with self.connection() as conn:
            if not conn.execute("SELECT pg_try_advisory_xact_lock(hashtext(%s))", (f"{REFRESHER_LOCK}.{tier}",)).fetchone()[0]:
                conn.commit()
                return 0  # another worker's round is running; it takes these users too
            queued = conn.execute(
                "SELECT queue_seq, user_id, first_event_at FROM interest.online_refresh_queue "
                "WHERE sequence_pushed = %s ORDER BY queue_seq LIMIT %s",
                (aggregates, max_rows),
            ).fetchall()
            if not queued:
                conn.commit()
                return 0
            first_event_at: dict[int, object] = {}
            for _, user, at in queued:
                first_event_at[user] = min(at, first_event_at.get(user, at))
            users = sorted(first_event_at)
            tables = AGGREGATE_TABLES if aggregates else ("user_recent_sequence",)
            if aggregates:
                refresh_users(conn, self.pipeline, users, tables=tables)
            else:
                refresh_user_sequences(conn, self.pipeline, users, [first_event_at[user] for user in users])
            for push_source, table in PUSHED_TABLES.items():
                if table in tables:
                    newest = fetch_frame(conn, sql.SQL(
                        "SELECT t.* FROM unnest(%s::bigint[]) AS u(user_id) CROSS JOIN LATERAL ("
                        " SELECT * FROM interest.{} x WHERE x.user_id = u.user_id ORDER BY x.event_timestamp DESC LIMIT 1) t"
                    ).format(sql.Identifier(table)), (users,))
                    if len(newest):
                        push(store, push_source, newest)
            seqs = [seq for seq, *_ in queued]
            if aggregates:
                conn.execute("DELETE FROM interest.online_refresh_queue WHERE queue_seq = ANY(%s)", (seqs,))
            else:
                conn.execute("UPDATE interest.online_refresh_queue SET sequence_pushed = true WHERE queue_seq = ANY(%s)", (seqs,))
            conn.commit()
        setattr(self.counters, f"{tier}_refreshes", getattr(self.counters, f"{tier}_refreshes") + 1)
        setattr(self.counters, f"{tier}_users_refreshed", getattr(self.counters, f"{tier}_users_refreshed") + len(users))
        setattr(self.counters, f"last_{tier}_refresh_s", round(time.perf_counter() - started, 4))
        return len(queued)


def refresh_queue_status(conn: psycopg.Connection) -> dict:
    """The online refresh's backlog: queued rows, those whose sequences are not online yet,
    and the age of the oldest row in seconds."""
    rows, sequences_behind, oldest_s = conn.execute(
        """
        SELECT count(*), count(*) FILTER (WHERE NOT sequence_pushed),
               coalesce(extract(epoch FROM clock_timestamp() - min(queued_at)), 0)::float8
        FROM interest.online_refresh_queue
        """
    ).fetchone()
    conn.commit()
    return {"refresh_queue_rows": rows, "refresh_queue_sequences_behind": sequences_behind,
            "refresh_queue_oldest_s": round(oldest_s, 3)}


def push(store, push_source: str, frame: pd.DataFrame) -> None:
    """``store.push(push_source, frame)`` to the online store. Feast's ``push`` ends by
    re-reading every feature service from the registry, uncached (15-50 ms a call here), to
    recompute services with ``precompute_online``; without such services the views of the
    push source are written directly, as ``push`` writes them."""
    from feast.data_source import PushMode

    if any(service.precompute_online for service in store.registry.list_feature_services(store.project, allow_cache=True)):
        store.push(push_source, frame, to=PushMode.ONLINE)
        return
    for view in store.list_feature_views(allow_cache=True):
        if view.stream_source is not None and view.stream_source.name == push_source:
            store.write_to_online_store(view.name, frame)
