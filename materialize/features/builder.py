"""Computing the feature-source tables in SQL, incrementally.

A watermark records the highest ``interest.events.load_seq`` consumed. An incremental run
recomputes only the entities touched since then: users and items with new events, plus
those whose window-exit days fall into the newly covered days; category rows from the
first changed day on. The result equals a full recompute (``tests`` check it), whatever
order or lateness the new events had.
"""
from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass, field
from importlib import resources

import psycopg
from psycopg import sql
from tqdm.auto import tqdm

from materialize.database.server import has_pgvector
from materialize.settings import PipelineConfig

WATERMARK = "events"
WINDOW_EXIT_OFFSETS_DAYS = (1, 7, 30)
USER_TABLES = ("user_daily_features", "user_recent_sequence", "user_interest_embedding")
ITEM_TABLES = ("item_daily_features",)

_MEAN_EMBEDDING_PGVECTOR = "SELECT user_id, day, avg(embedding::vector)::real[] AS embedding FROM recent GROUP BY user_id, day"
_MEAN_EMBEDDING_PORTABLE = """
    SELECT user_id, day, array_agg(value ORDER BY dim) AS embedding
    FROM (SELECT user_id, day, dim, avg(value)::real AS value
          FROM recent, unnest(embedding) WITH ORDINALITY AS u(value, dim)
          GROUP BY user_id, day, dim) per_dimension
    GROUP BY user_id, day
"""


def feature_sql(name: str) -> str:
    """The text of ``materialize/features/sql/<name>``."""
    return resources.files("materialize.features").joinpath("sql", name).read_text()


@dataclass
class FeatureBuildReport:
    mode: str                          # "full", "incremental" or "up to date"
    new_events: int = 0
    users_recomputed: int = 0
    items_recomputed: int = 0
    rows: dict[str, int] = field(default_factory=dict)   # rows now in each feature table
    seconds: dict[str, float] = field(default_factory=dict)


def _watermark(conn: psycopg.Connection) -> tuple[int, dt.date | None]:
    row = conn.execute(
        "SELECT load_seq, max_event_day FROM interest.feature_watermarks WHERE feature_set = %s", (WATERMARK,)
    ).fetchone()
    return (row[0], row[1]) if row else (0, None)


def _select_affected(conn: psycopg.Connection, since_seq: int, old_max_day: dt.date, new_max_day: dt.date) -> None:
    """Fill temp tables affected_users / affected_items for an incremental run: entities
    with new events, and entities whose events leave a window on a newly covered day."""
    params = {
        "since_seq": since_seq,
        "old_max_day": old_max_day,
        "new_max_day": new_max_day,
        "offsets": list(WINDOW_EXIT_OFFSETS_DAYS),
    }
    for affected, key in (("affected_users", "user_id"), ("affected_items", "item_id")):
        query = sql.SQL(
            """
            INSERT INTO {affected}
            SELECT {key} FROM interest.events WHERE load_seq > %(since_seq)s
            UNION
            SELECT e.{key}
            FROM interest.events e, unnest(%(offsets)s::int[]) AS o(offset_days)
            WHERE e.event_timestamp >= (%(old_max_day)s::date - 30)::timestamp AT TIME ZONE 'UTC'
              AND (e.event_timestamp AT TIME ZONE 'UTC')::date + o.offset_days > %(old_max_day)s
              AND (e.event_timestamp AT TIME ZONE 'UTC')::date + o.offset_days <= %(new_max_day)s
            """
        ).format(affected=sql.Identifier(affected), key=sql.Identifier(key))
        conn.execute(query, params)


def build_features(conn: psycopg.Connection, config: PipelineConfig, full: bool = False, progress: bool = False) -> FeatureBuildReport:
    """Bring every feature-source table up to date with ``interest.events``.

    Args:
        conn: an open connection; the whole build commits at the end (all or nothing).
        config: sequence length, session gap and interest-embedding size.
        full: recompute everything instead of only what changed.
    """
    # One build at a time per database (services build after every pushed event).
    conn.execute("SELECT pg_advisory_xact_lock(hashtext('interest.build_features'))")
    since_seq, old_max_day = _watermark(conn)
    max_seq, new_max_day, min_new_day, new_events = conn.execute(
        """
        SELECT max(load_seq), (max(event_timestamp) AT TIME ZONE 'UTC')::date,
               (min(event_timestamp) FILTER (WHERE load_seq > %s) AT TIME ZONE 'UTC')::date,
               count(*) FILTER (WHERE load_seq > %s)
        FROM interest.events
        """,
        (since_seq, since_seq),
    ).fetchone()
    if max_seq is None:
        conn.commit()
        return FeatureBuildReport(mode="no events")
    full = full or old_max_day is None
    if not full and new_events == 0:
        conn.commit()
        return FeatureBuildReport(mode="up to date", rows=_row_counts(conn))

    report = FeatureBuildReport(mode="full" if full else "incremental", new_events=new_events)
    conn.execute("CREATE TEMP TABLE affected_users (user_id bigint PRIMARY KEY) ON COMMIT DROP")
    conn.execute("CREATE TEMP TABLE affected_items (item_id bigint PRIMARY KEY) ON COMMIT DROP")
    if full:
        for table in USER_TABLES + ITEM_TABLES + ("category_daily_features",):
            conn.execute(sql.SQL("TRUNCATE interest.{}").format(sql.Identifier(table)))
        conn.execute("INSERT INTO affected_users SELECT DISTINCT user_id FROM interest.events")
        conn.execute("INSERT INTO affected_items SELECT DISTINCT item_id FROM interest.events")
        category_since = conn.execute(
            "SELECT (min(event_timestamp) AT TIME ZONE 'UTC')::date FROM interest.events"
        ).fetchone()[0]
    else:
        _select_affected(conn, since_seq, old_max_day, new_max_day)
        for table in USER_TABLES:
            conn.execute(
                sql.SQL("DELETE FROM interest.{} t USING affected_users a WHERE t.user_id = a.user_id").format(sql.Identifier(table))
            )
        conn.execute("DELETE FROM interest.item_daily_features t USING affected_items a WHERE t.item_id = a.item_id")
        category_since = min(min_new_day, old_max_day + dt.timedelta(days=1))
        conn.execute(
            "DELETE FROM interest.category_daily_features WHERE event_timestamp >= (%s::date + 1)::timestamp AT TIME ZONE 'UTC'",
            (category_since,),
        )
    conn.execute("ANALYZE affected_users")
    conn.execute("ANALYZE affected_items")
    report.users_recomputed = conn.execute("SELECT count(*) FROM affected_users").fetchone()[0]
    report.items_recomputed = conn.execute("SELECT count(*) FROM affected_items").fetchone()[0]

    created = dt.datetime.now(dt.timezone.utc)
    steps = _user_steps(conn, config, new_max_day, created) + [
        ("item_daily_features", feature_sql("item_daily_features.sql"), {"max_day": new_max_day, "created": created}),
        ("category_daily_features", feature_sql("category_daily_features.sql"), {
            "since_day": category_since, "max_day": new_max_day, "created": created}),
    ]
    with conn.cursor() as cur:
        for name, query, params in tqdm(steps, desc="build features", unit="table", disable=not progress):
            started = time.perf_counter()
            cur.execute(query, params)
            report.seconds[name] = round(time.perf_counter() - started, 3)
        cur.execute(
            """
            INSERT INTO interest.feature_watermarks (feature_set, load_seq, max_event_day, computed_at)
            VALUES (%s, %s, %s, now())
            ON CONFLICT (feature_set) DO UPDATE
               SET load_seq = excluded.load_seq, max_event_day = excluded.max_event_day, computed_at = now()
            """,
            (WATERMARK, max_seq, new_max_day),
        )
    conn.commit()
    for table in USER_TABLES + ITEM_TABLES + ("category_daily_features",):
        conn.execute(sql.SQL("ANALYZE interest.{}").format(sql.Identifier(table)))
    conn.commit()
    report.rows = _row_counts(conn)
    return report


def _user_steps(conn: psycopg.Connection, config: PipelineConfig, max_day: dt.date, created: dt.datetime) -> list:
    """(table, SQL, parameters) of the user-level feature tables, for affected_users."""
    mean_embedding = _MEAN_EMBEDDING_PGVECTOR if has_pgvector(conn) else _MEAN_EMBEDDING_PORTABLE
    n_categories = conn.execute("SELECT coalesce(max(category_id), 0) FROM interest.categories").fetchone()[0]
    return [
        ("user_daily_features", feature_sql("user_daily_features.sql"), {
            "max_day": max_day, "created": created, "n_categories": n_categories,
            "session_gap": dt.timedelta(minutes=config.session_gap_minutes)}),
        ("user_recent_sequence", feature_sql("user_recent_sequence.sql"), {
            "preceding": config.sequence_length - 1, "created": created}),
        ("user_interest_embedding", feature_sql("user_interest_embedding.sql").replace("MEAN_EMBEDDING", mean_embedding), {
            "recent_events": config.interest_embedding_events, "created": created}),
    ]


def refresh_users(conn: psycopg.Connection, config: PipelineConfig, user_ids: list[int]) -> None:
    """Recompute the user-level tables of ``user_ids`` now (after events arrive online).

    The rows equal what the next build will write for these users; the watermark does
    not move, so that build still updates items and categories with the same events.
    """
    conn.execute("SELECT pg_advisory_xact_lock(hashtext('interest.build_features'))")
    max_day = conn.execute("SELECT (max(event_timestamp) AT TIME ZONE 'UTC')::date FROM interest.events").fetchone()[0]
    conn.execute("CREATE TEMP TABLE affected_users (user_id bigint PRIMARY KEY) ON COMMIT DROP")
    conn.execute("INSERT INTO affected_users SELECT unnest(%s::bigint[])", (list(user_ids),))
    for table in USER_TABLES:
        conn.execute(sql.SQL("DELETE FROM interest.{} t USING affected_users a WHERE t.user_id = a.user_id").format(sql.Identifier(table)))
    with conn.cursor() as cur:
        for _, query, params in _user_steps(conn, config, max_day, dt.datetime.now(dt.timezone.utc)):
            cur.execute(query, params)
    conn.commit()


def _row_counts(conn: psycopg.Connection) -> dict[str, int]:
    tables = USER_TABLES + ITEM_TABLES + ("category_daily_features", "item_embeddings")
    return {
        t: conn.execute(sql.SQL("SELECT count(*) FROM interest.{}").format(sql.Identifier(t))).fetchone()[0]
        for t in tables
    }
