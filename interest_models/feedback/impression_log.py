"""The log of served recommendations: ``interest.recommendations`` and ``interest.impressions``.

Each ``/recommend`` answer is one ``LoggedRecommendation``: the candidates the policy chose
from with their blend scores and context matrix, and the items shown with their positions,
scores and propensities (the exact probability that the policy put that item at that
position, ``interest_models.policies.slate``). Rows travel by COPY, in batches; both tables
are partitioned by day on ``served_at`` and a day's partitions are created before its first
row (under an advisory lock, so concurrent writers do not race), and ``prune`` drops whole
days. Events answer a recommendation through their ``recommendation_id``: ``read_feedback``
joins them to the impressions.

``ImpressionLogger`` is the service's writer: requests hand records to a queue and return;
a thread writes them every ``flush_interval_s``. A failed write is retried at the next
flush, logged at ERROR and counted; records over ``max_pending`` are dropped, logged and
counted (``counters``, shown by ``/metrics``): logging never fails a request, and never
fails silently.
"""
from __future__ import annotations

import datetime as dt
import logging
import threading
import uuid
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np
import pandas as pd
import psycopg
from psycopg import sql

log = logging.getLogger(__name__)
LOGGED_TABLES = ("recommendations", "impressions")
PARTITION_LOCK = 0x13_FEED  # advisory lock key of partition creation


def new_recommendation_id() -> str:
    return uuid.uuid4().hex


@dataclass
class LoggedRecommendation:
    """One served list. Arrays over the n candidates, then over the k shown items."""

    recommendation_id: str
    served_at: dt.datetime          # timezone-aware
    user_id: int
    policy: str
    policy_version: str
    model_version: str
    exploration: float
    candidate_item_ids: np.ndarray  # (n,) int64, by blend rank
    candidate_scores: np.ndarray    # (n,) blend scores
    context: np.ndarray             # (n, dim) float32
    shown_rows: np.ndarray          # (k,) int64 rows of the candidates shown, top first
    scores: np.ndarray              # (k,) the policy's scores of the shown items
    propensity: np.ndarray          # (k,) P(that item at that position)
    explored: bool
    ordered_rows: np.ndarray        # (k,) the policy's list before exploration (candidate rows)

    @property
    def item_ids(self) -> np.ndarray:
        return np.asarray(self.candidate_item_ids)[self.shown_rows]


def _day(moment: dt.datetime) -> dt.date:
    return moment.astimezone(dt.timezone.utc).date()


def ensure_partitions(conn: psycopg.Connection, days: Iterable[dt.date]) -> None:
    """Create the day partitions of both tables that do not exist yet (commits)."""
    days = sorted(set(days))
    if not days:
        return
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (PARTITION_LOCK,))
    for day in days:
        start = dt.datetime.combine(day, dt.time(), dt.timezone.utc)
        for table in LOGGED_TABLES:
            conn.execute(sql.SQL("CREATE TABLE IF NOT EXISTS interest.{} PARTITION OF interest.{} FOR VALUES FROM ({}) TO ({})").format(
                sql.Identifier(f"{table}_{day:%Y%m%d}"), sql.Identifier(table),
                sql.Literal(start), sql.Literal(start + dt.timedelta(days=1))))
    conn.commit()


def write(conn: psycopg.Connection, records: list[LoggedRecommendation], known_days: set[dt.date] | None = None) -> int:
    """Write ``records`` in one transaction (COPY); returns the impressions written.

    Args:
        known_days: days whose partitions exist (updated); None checks every day.
    """
    days = {_day(r.served_at) for r in records}
    missing = days - known_days if known_days is not None else days
    ensure_partitions(conn, missing)
    if known_days is not None:
        known_days |= missing
    shown = 0
    with conn.cursor() as cur:
        with cur.copy("COPY interest.recommendations (recommendation_id, served_at, user_id, k, policy, policy_version, "
                      "model_version, exploration, candidate_item_ids, candidate_scores, ordered_rows, context, context_dim) FROM STDIN") as copy:
            for r in records:
                context = np.asarray(r.context, np.float32)
                copy.write_row((r.recommendation_id, r.served_at, int(r.user_id), len(r.shown_rows), r.policy, r.policy_version,
                                r.model_version, float(r.exploration), [int(i) for i in r.candidate_item_ids],
                                [float(s) for s in r.candidate_scores], [int(i) for i in r.ordered_rows],
                                context.ravel().tolist(), int(context.shape[1])))
        with cur.copy("COPY interest.impressions (recommendation_id, served_at, user_id, item_id, position, score, propensity, "
                      "explored) FROM STDIN") as copy:
            for r in records:
                for position, (item, score, propensity) in enumerate(zip(r.item_ids, r.scores, r.propensity), start=1):
                    copy.write_row((r.recommendation_id, r.served_at, int(r.user_id), int(item), position, float(score),
                                    float(propensity), r.explored))
                    shown += 1
    conn.commit()
    return shown


def prune(conn: psycopg.Connection, keep_days: int, now: dt.datetime | None = None) -> list[str]:
    """Drop the day partitions that ended more than ``keep_days`` days before ``now``;
    returns their names."""
    now = now or dt.datetime.now(dt.timezone.utc)
    cutoff = _day(now) - dt.timedelta(days=keep_days)
    dropped = []
    for table in LOGGED_TABLES:
        names = [row[0] for row in conn.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "JOIN pg_class p ON p.oid = i.inhparent JOIN pg_namespace n ON n.oid = p.relnamespace "
            "WHERE n.nspname = 'interest' AND p.relname = %s", (table,))]
        for name in sorted(names):
            day = dt.datetime.strptime(name.rsplit("_", 1)[1], "%Y%m%d").date()
            if day < cutoff:
                conn.execute(sql.SQL("DROP TABLE interest.{}").format(sql.Identifier(name)))
                dropped.append(name)
    conn.commit()
    return dropped


def read_feedback(conn: psycopg.Connection, since: dt.datetime, until: dt.datetime) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The recommendations served in ``[since, until)`` and their impressions with feedback.

    Returns:
        recommendations: one row per list (the columns of ``interest.recommendations``).
        impressions: one row per shown item with ``clicked``, ``carted``, ``purchased``
            (bool) from the events carrying its recommendation id, user and item.
    """
    from materialize.database.tables import fetch_frame

    recommendations = fetch_frame(conn, (
        "SELECT recommendation_id, served_at, user_id, k, policy, policy_version, model_version, exploration, "
        "candidate_item_ids, candidate_scores, ordered_rows, context, context_dim FROM interest.recommendations "
        "WHERE served_at >= %(since)s AND served_at < %(until)s ORDER BY served_at, recommendation_id"),
        {"since": since, "until": until})
    impressions = fetch_frame(conn, (
        "SELECT i.recommendation_id, i.served_at, i.user_id, i.item_id, i.position, i.score, i.propensity, i.explored, "
        "       coalesce(f.max_type >= 1, false) AS clicked, coalesce(f.max_type >= 2, false) AS carted, "
        "       coalesce(f.max_type = 3, false) AS purchased "
        "FROM interest.impressions i LEFT JOIN LATERAL ("
        "    SELECT max(e.event_type) AS max_type FROM interest.events e "
        "    WHERE e.recommendation_id = i.recommendation_id AND e.user_id = i.user_id AND e.item_id = i.item_id) f ON true "
        "WHERE i.served_at >= %(since)s AND i.served_at < %(until)s ORDER BY i.served_at, i.recommendation_id, i.position"),
        {"since": since, "until": until})
    conn.commit()
    return recommendations, impressions


class ImpressionLogger:
    """Writes records handed to ``submit`` from a background thread.

    Args:
        connect: opens a new connection (called again after a failure).
        flush_interval_s: how often the thread writes what is queued.
        max_pending: records kept while writes fail; past it new records are dropped.
    """

    def __init__(self, connect: Callable[[], psycopg.Connection], flush_interval_s: float = 0.5, max_pending: int = 10_000):
        self.connect, self.flush_interval_s, self.max_pending = connect, flush_interval_s, max_pending
        self.pending: list[LoggedRecommendation] = []
        self.lock = threading.Lock()
        self.writing = threading.Lock()  # one write at a time (the thread's and an explicit flush)
        self.wake = threading.Event()
        self.stopping = False
        self.conn: psycopg.Connection | None = None
        self.known_days: set[dt.date] = set()
        self.logged = self.impressions = self.dropped = self.failed_writes = 0
        self.last_error: str | None = None
        self.thread = threading.Thread(target=self._run, name="impression-logger", daemon=True)
        self.thread.start()

    def submit(self, record: LoggedRecommendation) -> bool:
        """Queue one record; False (logged and counted) when the queue is full."""
        with self.lock:
            if len(self.pending) >= self.max_pending:
                self.dropped += 1
                drop = True
            else:
                self.pending.append(record)
                drop = False
        if drop:
            log.error("impression log full (%d records pending after failed writes): recommendation %s dropped",
                      self.max_pending, record.recommendation_id)
        return not drop

    def flush(self) -> bool:
        """Write what is queued now; False when the write failed (the records stay queued)."""
        with self.writing:
            return self._flush()

    def _flush(self) -> bool:
        with self.lock:
            batch = list(self.pending)
        if not batch:
            return True
        try:
            if self.conn is None or self.conn.closed:
                self.conn = self.connect()
            shown = write(self.conn, batch, self.known_days)
        except Exception as error:  # noqa: BLE001 - any failure is counted, logged and retried
            self.failed_writes += 1
            self.last_error = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            log.error("impression log write failed (%d records kept for the next try): %s", len(batch), self.last_error)
            self.known_days.clear()
            if self.conn is not None:
                try:
                    self.conn.close()
                finally:
                    self.conn = None
            return False
        with self.lock:
            del self.pending[: len(batch)]
            self.logged += len(batch)
            self.impressions += shown
        return True

    def _run(self) -> None:
        while not self.stopping:
            self.wake.wait(self.flush_interval_s)
            self.wake.clear()
            self.flush()

    def close(self) -> None:
        """Write what is left and stop the thread."""
        self.stopping = True
        self.wake.set()
        self.thread.join(timeout=10)
        self.flush()
        if self.conn is not None:
            self.conn.close()

    def counters(self) -> dict:
        with self.lock:
            pending = len(self.pending)
        return {"recommendations_logged": self.logged, "impressions_logged": self.impressions, "log_pending": pending,
                "log_dropped": self.dropped, "log_failed_writes": self.failed_writes, "log_last_error": self.last_error}
