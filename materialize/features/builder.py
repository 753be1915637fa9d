"""Computing the feature-source tables in SQL, incrementally.

Watermarks record what the tables were built from: the highest
``interest.events.load_seq`` consumed (and the last event day then), the newest
``interest.items.created_at`` (a catalogue row is stamped when it changes), the newest
``interest.text_embeddings.created_at`` and the highest category id. An incremental run recomputes each affected entity
only from its first changed day on, and keeps its older rows:

- a user or item with new events: from the day of its earliest new event (late events
  included);
- a user or item whose events leave the 1, 7 or 30-day window on a newly covered day:
  from that day (daily tables only);
- a changed catalogue row (category, title, description or price): the users with events
  on that item from their first such event (the user tables use the item's current
  category and text for the whole history), and categories from that day;
- a newly embedded item text: the users with events on an item with that text, from their
  first such event (``user_interest_embedding`` only);
- a new category (the ``category_share`` arrays grow): every user's daily rows.

The SQL reads only the events it needs for those days (a 30-day window before the first
changed day, the last sequence-length events before it) and carries running values over
from the last stored row. The result equals a full recompute (``tests`` check it),
whatever order or lateness the new events had.
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
from materialize.database.tables import share_offline_writes_lock
from materialize.settings import PipelineConfig

WATERMARK = "events"
ITEMS_WATERMARK = "items"
EMBEDDINGS_WATERMARK = "text_embeddings"
CATEGORIES_WATERMARK = "categories"  # load_seq = the highest category_id when built
USERS_PER_BATCH = 10_000  # users per statement of the user steps (bounds its work and temporary files)
ITEMS_PER_BATCH = 500     # items per statement of the item step
WINDOW_EXIT_OFFSETS_DAYS = (1, 7, 30)
BUILD_LOCK = "interest.build_features"  # advisory lock: a build excludes every refresh; refreshes share it
USER_TABLES = ("user_daily_features", "user_recent_sequence", "user_interest_embedding")
ITEM_TABLES = ("item_daily_features",)
# Which affected_users column says from which day each user table is recomputed, and
# whether that day's own stored rows go too: daily rows are stamped at the end of their day
# (a row stamped at from_day 00:00 is the day before's and stays), sequence rows at the
# event time (a row at from_day 00:00 is from_day's and goes).
_USER_TABLE_FROM = {
    "user_daily_features": ("daily_from", ">"),
    "user_recent_sequence": ("sequence_from", ">="),
    "user_interest_embedding": ("embedding_from", ">"),
}

_MEAN_EMBEDDING_PGVECTOR = "SELECT user_id, day, avg(embedding)::real[] AS embedding FROM recent GROUP BY user_id, day"
# item_vectors: each item's text embedding, cast once to pgvector's type where it exists
# (of every item, or of the items in the affected users' events)
_ITEM_VECTORS = """
    CREATE TEMP TABLE item_vectors ON COMMIT DROP AS
    SELECT i.item_id, t.embedding{cast} AS embedding
    FROM interest.items i JOIN interest.text_embeddings t USING (text_sha256)
"""
_AFFECTED_USERS_ITEMS = """
    WHERE i.item_id IN (SELECT DISTINCT e.item_id FROM all_affected_users a JOIN interest.events e USING (user_id))
"""
_MEAN_EMBEDDING_PORTABLE = """
    SELECT user_id, day, array_agg(value ORDER BY dim) AS embedding
    FROM (SELECT user_id, day, dim, avg(value)::real AS value
          FROM recent, unnest(embedding) WITH ORDINALITY AS u(value, dim)
          GROUP BY user_id, day, dim) per_dimension
    GROUP BY user_id, day
"""

# The affected entities of an incremental run and the first day to recompute of each,
# from temp tables new_events, exit_days, changed_items and embedded_items.
_AFFECTED_USERS = """
    INSERT INTO all_affected_users (user_id, daily_from, sequence_from, embedding_from)
    SELECT user_id, min(day) FILTER (WHERE daily), min(day) FILTER (WHERE sequence), min(day) FILTER (WHERE embedding)
    FROM (
        SELECT user_id, min(day) AS day, true AS daily, true AS sequence, true AS embedding
        FROM new_events GROUP BY user_id
        UNION ALL
        SELECT x.user_id, min(x.day + o.offset_days), true, false, false
        FROM exit_days x, unnest(%(offsets)s::int[]) AS o(offset_days)
        WHERE x.day + o.offset_days > %(old_max_day)s AND x.day + o.offset_days <= %(new_max_day)s
        GROUP BY x.user_id
        UNION ALL
        SELECT e.user_id, (min(e.event_timestamp) AT TIME ZONE 'UTC')::date, true, true, true
        FROM changed_items c JOIN interest.events e USING (item_id) GROUP BY e.user_id
        UNION ALL
        SELECT e.user_id, (min(e.event_timestamp) AT TIME ZONE 'UTC')::date, false, false, true
        FROM embedded_items c JOIN interest.events e USING (item_id) GROUP BY e.user_id
    ) changes
    GROUP BY user_id
"""
_AFFECTED_ITEMS = """
    INSERT INTO all_affected_items (item_id, from_day)
    SELECT item_id, min(day)
    FROM (
        SELECT item_id, min(day) AS day FROM new_events GROUP BY item_id
        UNION ALL
        SELECT x.item_id, min(x.day + o.offset_days)
        FROM exit_days x, unnest(%(offsets)s::int[]) AS o(offset_days)
        WHERE x.day + o.offset_days > %(old_max_day)s AND x.day + o.offset_days <= %(new_max_day)s
        GROUP BY x.item_id
    ) changes
    GROUP BY item_id
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
    changed_items: int = 0             # catalogue rows changed since the last build
    embedded_items: int = 0            # items whose text got its embedding since the last build
    rows: dict[str, int] = field(default_factory=dict)   # rows now in each feature table
    seconds: dict[str, float] = field(default_factory=dict)  # each table's SQL
    # the rest of the wall time: "changes" (what changed, the affected sets and the deletes
    # or truncates), "commit", "analyze", "row counts"
    other_seconds: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class _Watermarks:
    load_seq: int = 0
    max_event_day: dt.date | None = None
    n_categories: int = 0               # the category_share arrays' length when built
    complete: bool = False             # all four watermarks recorded (else: a full build)


def _watermarks(conn: psycopg.Connection) -> _Watermarks:
    rows = {name: (seq, day) for name, seq, day in conn.execute(
        "SELECT feature_set, load_seq, max_event_day FROM interest.feature_watermarks")}
    seq, day = rows.get(WATERMARK, (0, None))
    complete = day is not None and all(k in rows for k in (ITEMS_WATERMARK, EMBEDDINGS_WATERMARK, CATEGORIES_WATERMARK))
    return _Watermarks(seq, day, rows.get(CATEGORIES_WATERMARK, (0, None))[0], complete)


def _n_categories(conn: psycopg.Connection) -> int:
    return conn.execute("SELECT coalesce(max(category_id), 0) FROM interest.categories").fetchone()[0]


# The catalogue and embedding marks stay in SQL: they can be -infinity (nothing yet), which
# Python's datetime cannot hold. catalogue_marks (temp table) holds them as this build
# found them at its start; the watermarks take them when the build commits.
_CATALOGUE_MARKS = """
    CREATE TEMP TABLE catalogue_marks ON COMMIT DROP AS
    SELECT (SELECT coalesce(max(created_at), '-infinity') FROM interest.items) AS items_at,
           (SELECT coalesce(max(created_at), '-infinity') FROM interest.text_embeddings) AS embeddings_at,
           (SELECT changed_at FROM interest.feature_watermarks WHERE feature_set = %(items)s) AS items_built_at,
           (SELECT changed_at FROM interest.feature_watermarks WHERE feature_set = %(embeddings)s) AS embeddings_built_at
"""


def _save_watermarks(cur: psycopg.Cursor, max_seq: int, max_day: dt.date, n_categories: int) -> None:
    cur.execute(
        """
        INSERT INTO interest.feature_watermarks (feature_set, load_seq, max_event_day, changed_at, computed_at)
        SELECT %(events)s, %(max_seq)s, %(max_day)s, NULL, now()
        UNION ALL SELECT %(items)s, 0, NULL, items_at, now() FROM catalogue_marks
        UNION ALL SELECT %(embeddings)s, 0, NULL, embeddings_at, now() FROM catalogue_marks
        UNION ALL SELECT %(categories)s, %(n_categories)s, NULL, NULL, now()
        ON CONFLICT (feature_set) DO UPDATE
           SET load_seq = excluded.load_seq, max_event_day = excluded.max_event_day,
               changed_at = excluded.changed_at, computed_at = now()
        """,
        {"events": WATERMARK, "items": ITEMS_WATERMARK, "embeddings": EMBEDDINGS_WATERMARK,
         "categories": CATEGORIES_WATERMARK, "n_categories": n_categories, "max_seq": max_seq, "max_day": max_day},
    )


def _create_affected_tables(conn: psycopg.Connection) -> None:
    """all_affected_users / all_affected_items: every entity to recompute and its first day;
    affected_users / affected_items (what the SQL files read): the batch being computed."""
    for prefix in ("all_", ""):
        conn.execute(sql.SQL(
            """
            CREATE TEMP TABLE {} (
                user_id bigint PRIMARY KEY, daily_from date, sequence_from date, embedding_from date,
                sequence_from_time timestamptz  -- where set: sequence rows from this instant (not sequence_from's day)
            ) ON COMMIT DROP
            """).format(sql.Identifier(f"{prefix}affected_users")))
        conn.execute(sql.SQL("CREATE TEMP TABLE {} (item_id bigint PRIMARY KEY, from_day date NOT NULL) ON COMMIT DROP")
                     .format(sql.Identifier(f"{prefix}affected_items")))


def _batches(conn: psycopg.Connection, table: str, key: str, size: int) -> list[tuple[int, int]]:
    """(first, last) key ranges of at most ``size`` entities of ``table``."""
    keys = [row[0] for row in conn.execute(sql.SQL("SELECT {} FROM {} ORDER BY 1").format(sql.Identifier(key), sql.Identifier(table)))]
    return [(keys[i], keys[min(i + size, len(keys)) - 1]) for i in range(0, len(keys), size)]


def _fill_batch(conn: psycopg.Connection, kind: str, first: int, last: int) -> None:
    """affected_<kind> := the entities of all_affected_<kind> with keys in [first, last]."""
    key = "user_id" if kind == "users" else "item_id"
    batch, everything = sql.Identifier(f"affected_{kind}"), sql.Identifier(f"all_affected_{kind}")
    conn.execute(sql.SQL("TRUNCATE {}").format(batch))
    conn.execute(sql.SQL("INSERT INTO {} SELECT * FROM {} WHERE {} BETWEEN %s AND %s").format(batch, everything, sql.Identifier(key)),
                 (first, last))
    conn.execute(sql.SQL("ANALYZE {}").format(batch))


def _run_steps(conn: psycopg.Connection, steps: list, report: FeatureBuildReport | None, progress: bool) -> dict[str, int]:
    """Run (table, SQL, parameters, kind) steps; a step of kind "users" or "items" runs once
    per batch of USERS_PER_BATCH users or ITEMS_PER_BATCH items (the work, and the temporary
    files, of one statement stay bounded however many entities a build recomputes).
    Returns the rows inserted into each table."""
    inserted: dict[str, int] = {}
    batches = {
        "users": _batches(conn, "all_affected_users", "user_id", USERS_PER_BATCH),
        "items": _batches(conn, "all_affected_items", "item_id", ITEMS_PER_BATCH),
        None: [None],
    }
    work = [(step, batch) for step in steps for batch in batches[step[3]]]
    with conn.cursor() as cur:
        for (name, query, params, kind), batch in tqdm(work, desc="build features", unit="step", disable=not progress):
            started = time.perf_counter()
            if batch is not None:
                _fill_batch(conn, kind, *batch)
            cur.execute(query, params)
            inserted[name] = inserted.get(name, 0) + cur.rowcount
            if report is not None:
                report.seconds[name] = round(report.seconds.get(name, 0.0) + time.perf_counter() - started, 3)
    return inserted


def _select_affected(conn: psycopg.Connection, marks: _Watermarks, new_max_day: dt.date) -> tuple[int, int, dt.date | None]:
    """Fill affected_users / affected_items for an incremental run (see the module text).

    Returns the number of changed catalogue rows, of newly embedded items, and the first
    day a catalogue change touches (None if none).
    """
    conn.execute(
        """
        CREATE TEMP TABLE new_events ON COMMIT DROP AS
        SELECT user_id, item_id, (event_timestamp AT TIME ZONE 'UTC')::date AS day
        FROM interest.events WHERE load_seq > %s
        """,
        (marks.load_seq,),
    )
    # (user, item, day) of the events that leave a window on a newly covered day: only the
    # events of the days 1, 7 and 30 days before each new day
    new_days = [marks.max_event_day + dt.timedelta(days=n) for n in range(1, (new_max_day - marks.max_event_day).days + 1)]
    exit_source_days = sorted({day - dt.timedelta(days=o) for day in new_days for o in WINDOW_EXIT_OFFSETS_DAYS})
    conn.execute(
        """
        CREATE TEMP TABLE exit_days ON COMMIT DROP AS
        SELECT DISTINCT user_id, item_id, (event_timestamp AT TIME ZONE 'UTC')::date AS day
        FROM interest.events
        WHERE %(any_day)s AND (event_timestamp AT TIME ZONE 'UTC')::date = ANY(%(days)s::date[])
        """,
        {"any_day": bool(exit_source_days), "days": exit_source_days},
    )
    conn.execute(
        """
        CREATE TEMP TABLE changed_items ON COMMIT DROP AS
        SELECT item_id FROM interest.items, catalogue_marks WHERE created_at > items_built_at
        """
    )
    conn.execute(
        """
        CREATE TEMP TABLE embedded_items ON COMMIT DROP AS
        SELECT i.item_id FROM interest.items i JOIN interest.text_embeddings t USING (text_sha256), catalogue_marks
        WHERE t.created_at > embeddings_built_at
        """
    )
    for table in ("new_events", "exit_days", "changed_items", "embedded_items"):
        conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(table)))
    params = {"offsets": list(WINDOW_EXIT_OFFSETS_DAYS), "old_max_day": marks.max_event_day, "new_max_day": new_max_day}
    conn.execute(_AFFECTED_USERS, params)
    conn.execute(_AFFECTED_ITEMS, params)
    conn.execute("ANALYZE all_affected_users")
    conn.execute("ANALYZE all_affected_items")
    if _n_categories(conn) != marks.n_categories:
        # A new category lengthens every category_share array: all daily user rows again.
        conn.execute(
            """
            INSERT INTO all_affected_users (user_id, daily_from) SELECT DISTINCT user_id, '-infinity'::date FROM interest.events
            ON CONFLICT (user_id) DO UPDATE SET daily_from = excluded.daily_from
            """
        )
    changed, embedded, catalogue_day = conn.execute(
        """
        SELECT (SELECT count(*) FROM changed_items), (SELECT count(*) FROM embedded_items),
               (SELECT (min(e.event_timestamp) AT TIME ZONE 'UTC')::date
                FROM changed_items c JOIN interest.events e USING (item_id))
        """
    ).fetchone()
    return changed, embedded, catalogue_day


def _delete_recomputed_rows(conn: psycopg.Connection, user_tables: tuple[str, ...] = USER_TABLES) -> dict[str, int]:
    """Remove the rows that the steps write again: each affected entity's rows (of
    ``user_tables`` and the item table) from its first recomputed day on. Returns the rows
    deleted from each table."""
    deleted = {}
    for table, (column, comparison) in _USER_TABLE_FROM.items():
        if table not in user_tables:
            continue
        since = sql.SQL("a.{}::timestamp AT TIME ZONE 'UTC'").format(sql.Identifier(column))
        if table == "user_recent_sequence":
            since = sql.SQL("coalesce(a.sequence_from_time, {})").format(since)
        deleted[table] = conn.execute(
            sql.SQL(
                """
                DELETE FROM interest.{table} t USING all_affected_users a
                WHERE t.user_id = a.user_id AND a.{column} IS NOT NULL AND t.event_timestamp {comparison} {since}
                """
            ).format(table=sql.Identifier(table), column=sql.Identifier(column), comparison=sql.SQL(comparison), since=since)
        ).rowcount
    deleted["item_daily_features"] = conn.execute(
        """
        DELETE FROM interest.item_daily_features t USING all_affected_items a
        WHERE t.item_id = a.item_id AND t.event_timestamp > a.from_day::timestamp AT TIME ZONE 'UTC'
        """
    ).rowcount
    return deleted


def build_features(conn: psycopg.Connection, config: PipelineConfig, full: bool = False, progress: bool = False) -> FeatureBuildReport:
    """Bring every feature-source table up to date with ``interest.events``, the catalogue
    and the text embeddings.

    Args:
        conn: an open connection; the whole build commits at the end (all or nothing).
        config: sequence length, session gap and interest-embedding size.
        full: recompute everything instead of only what changed.
    """
    # One build at a time per database (services build after every pushed event).
    conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (BUILD_LOCK,))
    share_offline_writes_lock(conn)
    marks = _watermarks(conn)
    # Through the load_seq index only: the events not consumed yet, not the whole table.
    max_seq, new_events, new_events_max_day = conn.execute(
        """
        SELECT (SELECT max(load_seq) FROM interest.events), count(*), (max(event_timestamp) AT TIME ZONE 'UTC')::date
        FROM interest.events WHERE load_seq > %s
        """,
        (marks.load_seq,),
    ).fetchone()
    if max_seq is None:
        conn.commit()
        return FeatureBuildReport(mode="no events")
    if marks.max_event_day is None or full:
        new_max_day = conn.execute("SELECT (max(event_timestamp) AT TIME ZONE 'UTC')::date FROM interest.events").fetchone()[0]
    else:  # events are never deleted: the last day is the last built one or a new event's
        new_max_day = max(d for d in (marks.max_event_day, new_events_max_day) if d is not None)
    conn.execute(_CATALOGUE_MARKS, {"items": ITEMS_WATERMARK, "embeddings": EMBEDDINGS_WATERMARK})
    catalogue_changed = conn.execute(
        "SELECT items_at > items_built_at OR embeddings_at > embeddings_built_at FROM catalogue_marks"
    ).fetchone()[0]
    full = full or not marks.complete
    if not full and new_events == 0 and not catalogue_changed and _n_categories(conn) == marks.n_categories:
        conn.commit()
        return FeatureBuildReport(mode="up to date", rows=_row_counts(conn))

    report = FeatureBuildReport(mode="full" if full else "incremental", new_events=new_events)
    started = time.perf_counter()
    _create_affected_tables(conn)
    deleted: dict[str, int] = {}
    if full:
        for table in USER_TABLES + ITEM_TABLES + ("category_daily_features",):
            conn.execute(sql.SQL("TRUNCATE interest.{}").format(sql.Identifier(table)))
        conn.execute("INSERT INTO all_affected_users SELECT DISTINCT user_id, '-infinity'::date, '-infinity'::date, '-infinity'::date FROM interest.events")
        conn.execute("INSERT INTO all_affected_items SELECT DISTINCT item_id, '-infinity'::date FROM interest.events")
        category_since = conn.execute(
            "SELECT (min(event_timestamp) AT TIME ZONE 'UTC')::date FROM interest.events"
        ).fetchone()[0]
    else:
        report.changed_items, report.embedded_items, catalogue_day = _select_affected(conn, marks, new_max_day)
        new_day = conn.execute("SELECT min(day) FROM new_events").fetchone()[0]
        starts = [d for d in (new_day, catalogue_day) if d is not None]
        if new_max_day > marks.max_event_day:
            starts.append(marks.max_event_day + dt.timedelta(days=1))
        if _n_categories(conn) != marks.n_categories:  # a new category has a row for every day
            starts.append(conn.execute("SELECT (min(event_timestamp) AT TIME ZONE 'UTC')::date FROM interest.events").fetchone()[0])
        category_since = min(starts) if starts else None
        deleted = _delete_recomputed_rows(conn)
        if category_since is not None:
            deleted["category_daily_features"] = conn.execute(
                "DELETE FROM interest.category_daily_features WHERE event_timestamp > %s::timestamp AT TIME ZONE 'UTC'",
                (category_since,),
            ).rowcount
    report.users_recomputed = conn.execute("SELECT count(*) FROM all_affected_users").fetchone()[0]
    report.items_recomputed = conn.execute("SELECT count(*) FROM all_affected_items").fetchone()[0]
    report.other_seconds["changes"] = round(time.perf_counter() - started, 3)

    created = dt.datetime.now(dt.timezone.utc)
    n_categories = _n_categories(conn)
    steps = _user_steps(conn, config, new_max_day, created, n_categories) + [
        ("item_daily_features", feature_sql("item_daily_features.sql"), {"max_day": new_max_day, "created": created}, "items"),
    ]
    if category_since is not None:
        steps.append(("category_daily_features", feature_sql("category_daily_features.sql"), {
            "since_day": category_since, "max_day": new_max_day, "created": created}, None))
    inserted = _run_steps(conn, steps, report, progress)
    with conn.cursor() as cur:
        _save_watermarks(cur, max_seq, new_max_day, n_categories)
    started = time.perf_counter()
    _save_row_counts(conn, full, inserted, deleted)
    report.other_seconds["row counts"] = round(time.perf_counter() - started, 3)
    started = time.perf_counter()
    conn.commit()
    report.other_seconds["commit"] = round(time.perf_counter() - started, 3)
    if full:  # after an incremental build the statistics are autovacuum's to refresh (a sample of every table costs seconds at 10M events)
        started = time.perf_counter()
        for table in USER_TABLES + ITEM_TABLES + ("category_daily_features",):
            conn.execute(sql.SQL("ANALYZE interest.{}").format(sql.Identifier(table)))
        conn.commit()
        report.other_seconds["analyze"] = round(time.perf_counter() - started, 3)
    report.rows = _row_counts(conn)
    return report


def _user_steps(conn: psycopg.Connection, config: PipelineConfig, max_day: dt.date | None, created: dt.datetime,
                n_categories: int, few_users: bool = False, tables: tuple[str, ...] = USER_TABLES) -> list:
    """(table, SQL, parameters, "users") of the user-level feature tables in ``tables``, for
    affected_users. ``few_users``: take only their items' text embeddings (not the whole
    catalogue's)."""
    pgvector = has_pgvector(conn)
    mean_embedding = _MEAN_EMBEDDING_PGVECTOR if pgvector else _MEAN_EMBEDDING_PORTABLE
    if "user_interest_embedding" in tables:
        conn.execute("DROP TABLE IF EXISTS item_vectors")
        conn.execute(sql.SQL(_ITEM_VECTORS.format(cast="::vector" if pgvector else "")
                             + (_AFFECTED_USERS_ITEMS if few_users else "")))
        conn.execute("ALTER TABLE item_vectors ADD PRIMARY KEY (item_id)")
        conn.execute("ANALYZE item_vectors")
    steps = [
        ("user_daily_features", feature_sql("user_daily_features.sql"), {
            "max_day": max_day, "created": created, "n_categories": n_categories,
            "session_gap": dt.timedelta(minutes=config.session_gap_minutes)}, "users"),
        ("user_recent_sequence", feature_sql("user_recent_sequence.sql"), {
            "preceding": config.sequence_length - 1, "created": created}, "users"),
        ("user_interest_embedding", feature_sql("user_interest_embedding.sql").replace("MEAN_EMBEDDING", mean_embedding), {
            "recent_events": config.interest_embedding_events, "created": created}, "users"),
    ]
    return [step for step in steps if step[0] in tables]


def _lock_user_tables(conn: psycopg.Connection, tables: tuple[str, ...]) -> None:
    """Wait for a running build, then take ``tables`` for this transaction: refreshes of
    other tables run beside it, a build waits for it."""
    conn.execute("SELECT pg_advisory_xact_lock_shared(hashtext(%s))", (BUILD_LOCK,))
    for table in sorted(tables):
        conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"{BUILD_LOCK}.{table}",))


def refresh_users(conn: psycopg.Connection, config: PipelineConfig, user_ids: list[int],
                  new_since: list[dt.datetime] | None = None, tables: tuple[str, ...] = USER_TABLES) -> None:
    """Recompute the user-level tables of ``user_ids`` in the caller's transaction (after
    events arrive online; the caller commits).

    Each user is recomputed from the day of its earliest event not yet consumed by a build,
    or from the day after the last built day when it has none (its window exits), or
    wholly before any build. ``new_since`` (one per user): the time of its earliest event
    since its rows were last refreshed; its recent sequences are recomputed from then on
    only (a sequence row depends on no later event). ``tables``: the user tables to
    recompute. The rows equal what the next build will write for these users; the
    watermarks do not move, so that build still updates items and categories with the
    same events.
    """
    _lock_user_tables(conn, tables)
    marks = _watermarks(conn)
    if marks.max_event_day is None:
        max_day = conn.execute("SELECT (max(event_timestamp) AT TIME ZONE 'UTC')::date FROM interest.events").fetchone()[0]
    else:  # as the next build will find it, through the load_seq index
        new_max_day = conn.execute(
            "SELECT (max(event_timestamp) AT TIME ZONE 'UTC')::date FROM interest.events WHERE load_seq > %s",
            (marks.load_seq,),
        ).fetchone()[0]
        max_day = max(d for d in (marks.max_event_day, new_max_day) if d is not None)
    _create_affected_tables(conn)
    conn.execute(
        """
        INSERT INTO all_affected_users
        SELECT u.user_id, f.from_day, f.from_day, f.from_day,
               CASE WHEN %(old_max_day)s::date IS NOT NULL AND u.new_since > f.from_day::timestamp AT TIME ZONE 'UTC'
                    THEN u.new_since END
        FROM unnest(%(users)s::bigint[], %(new_since)s::timestamptz[]) AS u(user_id, new_since)
        CROSS JOIN LATERAL (
            SELECT CASE WHEN %(old_max_day)s::date IS NULL THEN '-infinity'::date
                        ELSE least((min(e.event_timestamp) AT TIME ZONE 'UTC')::date, %(old_max_day)s::date + 1)
                   END AS from_day
            FROM interest.events e WHERE e.user_id = u.user_id AND e.load_seq > %(since_seq)s
        ) f
        ON CONFLICT DO NOTHING
        """,
        {"users": list(user_ids), "new_since": list(new_since) if new_since is not None else [None] * len(user_ids),
         "old_max_day": marks.max_event_day, "since_seq": marks.load_seq},
    )
    conn.execute("ANALYZE all_affected_users")  # else the deletes below guess it large and scan whole tables
    deleted = _delete_recomputed_rows(conn, tables)
    steps = _user_steps(conn, config, max_day, dt.datetime.now(dt.timezone.utc), _n_categories(conn), few_users=True,
                        tables=tables)
    inserted = _run_steps(conn, steps, None, False)
    _save_row_counts(conn, False, inserted, deleted)


def refresh_user_sequences(conn: psycopg.Connection, config: PipelineConfig, user_ids: list[int],
                           new_since: list[dt.datetime]) -> None:
    """Recompute the recent sequences of ``user_ids`` in the caller's transaction, each from
    its ``new_since`` on (the time of its earliest event since its sequences were last
    written): the quick half of ``refresh_users``. A sequence row depends on no later event,
    so the rows equal what the next build will write."""
    _lock_user_tables(conn, ("user_recent_sequence",))
    _create_affected_tables(conn)
    conn.execute(
        """
        INSERT INTO all_affected_users (user_id, sequence_from, sequence_from_time)
        SELECT user_id, (new_since AT TIME ZONE 'UTC')::date, new_since
        FROM unnest(%s::bigint[], %s::timestamptz[]) AS u(user_id, new_since)
        """,
        (list(user_ids), list(new_since)),
    )
    conn.execute("ANALYZE all_affected_users")
    deleted = _delete_recomputed_rows(conn, ("user_recent_sequence",))
    steps = _user_steps(conn, config, None, dt.datetime.now(dt.timezone.utc), 0, tables=("user_recent_sequence",))
    _save_row_counts(conn, False, _run_steps(conn, steps, None, False), deleted)


FEATURE_TABLES = USER_TABLES + ITEM_TABLES + ("category_daily_features",)


def _save_row_counts(conn: psycopg.Connection, full: bool, inserted: dict[str, int], deleted: dict[str, int]) -> None:
    """Keep interest.feature_table_rows: after a full build the rows inserted, after an
    incremental one the stored count plus inserted minus deleted (counted once where
    missing), so the report needs no count(*) of tables that grow with the history. A
    table an incremental run left as it was keeps its row (concurrent refreshes of
    different tables never wait for each other here)."""
    for table in FEATURE_TABLES:
        if not full and not inserted.get(table) and not deleted.get(table):
            continue
        if full:
            count = inserted.get(table, 0)
        else:
            stored = conn.execute("SELECT row_count FROM interest.feature_table_rows WHERE table_name = %s", (table,)).fetchone()
            if stored is None:
                count = conn.execute(sql.SQL("SELECT count(*) FROM interest.{}").format(sql.Identifier(table))).fetchone()[0]
            else:
                count = stored[0] + inserted.get(table, 0) - deleted.get(table, 0)
        conn.execute(
            """
            INSERT INTO interest.feature_table_rows (table_name, row_count) VALUES (%s, %s)
            ON CONFLICT (table_name) DO UPDATE SET row_count = excluded.row_count
            """,
            (table, count),
        )


def _row_counts(conn: psycopg.Connection) -> dict[str, int]:
    """Rows in each feature table (as kept by the builds) and in item_embeddings."""
    stored = dict(conn.execute("SELECT table_name, row_count FROM interest.feature_table_rows"))
    return {
        t: stored[t] if t in stored else
        conn.execute(sql.SQL("SELECT count(*) FROM interest.{}").format(sql.Identifier(t))).fetchone()[0]
        for t in FEATURE_TABLES + ("item_embeddings",)
    }
