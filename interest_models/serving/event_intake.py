"""Event intake: events stored by group commit, online features refreshed in micro-batches.

Requests hand their events to the ``EventWriter``, which stores whatever arrived while its
previous transaction ran in one transaction: a request is answered once that transaction
has committed (acknowledged means stored), and concurrent requests share a commit and one
validation pass. The same transaction queues each user with a stored event in
``interest.online_refresh_queue``; the ``OnlineRefresher`` recomputes the queued users'
feature rows every ``refresh_interval_ms`` and pushes their newest rows to the online store
through Feast push sources. Neither holds a lock on the request path; one refresher (of
one worker process) runs at a time, and a feature build waits for its round.
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
from materialize.features.builder import refresh_users
from materialize.ingest.loader import IngestReport, store_events
from materialize.settings import PipelineConfig

log = logging.getLogger(__name__)

REFRESHER_LOCK = "interest.online_refresher"  # advisory lock: one refresh round at a time, whichever worker runs it
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
    refreshes: int = 0
    users_refreshed: int = 0
    refresh_failures: int = 0
    last_refresh_s: float = 0.0


class EventWriter:
    """One thread that stores queued requests' events together (group commit).

    ``submit`` returns a future: its result is the request's ``RequestOutcome`` once the
    transaction committed; its exception the database error when it did not (an outage:
    nothing of the request is acknowledged, and a retry stores each event once).
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

    def _run(self) -> None:
        while True:
            first = self._pending.get()
            if first is None:
                return
            batch, rows, closing = [first], len(first.events), False
            while rows < self.max_events:
                try:
                    more = self._pending.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    closing = True
                    break
                batch.append(more)
                rows += len(more.events)
            self._store(batch)
            if closing:
                return

    def _store(self, batch: list[_Pending]) -> None:
        try:
            report = self._commit(batch)
        except (psycopg.DataError, psycopg.IntegrityError) as error:
            if len(batch) > 1:  # the database refused a value: find whose, and store the others
                for pending in batch:
                    self._store([pending])
            else:
                batch[0].future.set_exception(error)
            return
        except BaseException as error:  # noqa: BLE001 - an outage or a bug: every waiting request hears of it
            for pending in batch:
                pending.future.set_exception(error)
            return
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

    def _commit(self, batch: list[_Pending]) -> IngestReport:
        frame = pd.DataFrame([event for pending in batch for event in pending.events])
        clients = ",".join(sorted({pending.client for pending in batch}))
        with self.connection() as conn:
            report = store_events(conn, frame, source=f"api:{clients[:200]}:{uuid.uuid4()}",
                                  future_tolerance_s=self.pipeline.future_tolerance_seconds,
                                  min_event_time=self.pipeline.min_event_time)
            conn.commit()
        self.counters.commits += 1
        return report


class OnlineRefresher:
    """A thread that, every ``interval_s``, recomputes the feature rows of the users queued
    by the intake and pushes each one's newest rows online (``PUSHED_TABLES``).

    A round takes at most ``max_queued`` queue rows; they are deleted in the transaction
    that recomputed them, after the push, so a failed round is redone by the next one.
    """

    def __init__(self, connection: Connection, pipeline: PipelineConfig, store: Callable[[], object | None],
                 interval_s: float, max_queued: int, counters: IntakeCounters):
        self.connection, self.pipeline, self.store = connection, pipeline, store
        self.interval_s, self.max_queued, self.counters = interval_s, max_queued, counters
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="interest-online-refresher", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            store = self.store()
            if store is None:  # the database is unreachable: the service reconnects on its own
                continue
            try:
                while self.refresh(store) == self.max_queued and not self._stop.is_set():
                    pass  # a full round: more are waiting
            except Exception as error:  # noqa: BLE001 - the queue keeps the users; the next round retries
                self.counters.refresh_failures += 1
                log.warning("online refresh failed, retrying in %.1f s: %s", self.interval_s, error)

    def refresh(self, store) -> int:
        """One round; returns the queue rows it consumed."""
        started = time.perf_counter()
        with self.connection() as conn:
            if not conn.execute("SELECT pg_try_advisory_xact_lock(hashtext(%s))", (REFRESHER_LOCK,)).fetchone()[0]:
                conn.commit()
                return 0  # another worker's round is running; it takes these users too
            queued = conn.execute(
                "SELECT queue_seq, user_id, first_event_at FROM interest.online_refresh_queue ORDER BY queue_seq LIMIT %s",
                (self.max_queued,),
            ).fetchall()
            if not queued:
                conn.commit()
                return 0
            first_event_at: dict[int, object] = {}
            for _, user, at in queued:
                first_event_at[user] = min(at, first_event_at.get(user, at))
            users = sorted(first_event_at)
            refresh_users(conn, self.pipeline, users, [first_event_at[user] for user in users])
            for push_source, table in PUSHED_TABLES.items():
                newest = fetch_frame(conn, sql.SQL(
                    "SELECT DISTINCT ON (user_id) * FROM interest.{} WHERE user_id = ANY(%s) ORDER BY user_id, event_timestamp DESC"
                ).format(sql.Identifier(table)), (users,))
                if len(newest):
                    push(store, push_source, newest)
            conn.execute("DELETE FROM interest.online_refresh_queue WHERE queue_seq = ANY(%s)", ([seq for seq, *_ in queued],))
            conn.commit()
        self.counters.refreshes += 1
        self.counters.users_refreshed += len(users)
        self.counters.last_refresh_s = round(time.perf_counter() - started, 4)
        return len(queued)


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
