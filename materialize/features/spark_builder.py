"""The spark profile's feature build: the five feature-source tables computed by Spark SQL
from the Parquet warehouse, written back to it as Parquet partitioned by day, incrementally.

``spark_sql/*.sql`` are the Spark dialect of ``sql/*.sql``: the same columns, names and
values (``tests/materialize/features/test_spark_builder.py`` builds both on one shop and
compares every value). Two dialects because the PostgreSQL build leans on what a single
server does well (LATERAL index lookups per entity, temp tables, pgvector's mean), which
Spark has no use for.

An incremental build recomputes every table from one day on, ``since_day``, for all
entities, and keeps the stored day partitions before it; the result equals a full build
(tests check it). ``since_day`` is the earliest of:

- the first day of the events loaded since the last build (ingest runs above its
  watermark; late events included), and the day after the last day built (days on which
  an older day leaves a 1/7/30-day window);
- the first event day of an item whose category or text vector changed, or that is new
  (events may arrive before their item: they were left out until now).

It reads the events of the 30 days before ``since_day`` on, and carries over what the
stored rows just before ``since_day`` hold: each user's last recent-sequence row (the
arrays the new events extend, also the interest embedding's last items), and the last
daily snapshot's shift state and last event time. A full build runs when there is no build
state, when ``full=True``, when the pipeline config it used changed, or when a category was
added (every ``category_share`` array grows).

Warehouse layout (``<warehouse>`` is ``Settings.spark.warehouse``):
    events/day=YYYY-MM-DD/*.parquet            validated events (``ingest.parquet_writer``)
    catalog/{items,categories,item_vectors}/   the catalogue (``export_catalogue``)
    features/<table>/day=YYYY-MM-DD/*.parquet  the feature sources Feast's SparkSources read;
                                               ``day`` is the UTC day of ``event_timestamp``
    features/build_state/{state,catalogue}/    what the tables were built from

Run builds one at a time, and not while an ingest run is writing: a run that started
before the last build's highest run id and finished after it is not seen.
"""
from __future__ import annotations

import datetime as dt
import json
import math
import time
from dataclasses import dataclass, field
from importlib import resources

from materialize.settings import PipelineConfig

SPARK_FEATURE_TABLES = (
    "user_daily_features",
    "user_recent_sequence",
    "user_interest_embedding",
    "item_daily_features",
    "category_daily_features",
)
PARTITION_COLUMN = "day"  # UTC day of event_timestamp (Feast's date_partition_column on these sources)
WINDOW_DAYS = 30  # the longest window of the daily tables
_SEQUENCE_CARRY_SCHEMA = ("user_id BIGINT, event_timestamp TIMESTAMP, recent_item_ids ARRAY<BIGINT>, "
                          "recent_category_ids ARRAY<INT>, recent_event_types ARRAY<INT>, recent_gap_seconds ARRAY<FLOAT>")
_DAILY_CARRY_SCHEMA = "user_id BIGINT, previous_changed BOOLEAN, last_shift_day DATE, lifetime ARRAY<INT>, last_event_at TIMESTAMP"


def spark_feature_sql(name: str) -> str:
    """The text of ``materialize/features/spark_sql/<name>``."""
    return resources.files("materialize.features").joinpath("spark_sql", name).read_text()


@dataclass
class SparkFeatureBuildReport:
    mode: str = "full"  # full, incremental or "up to date" (nothing new: nothing written)
    reason: str = ""    # why a build was full, or what an incremental one started from
    since_day: dt.date | None = None  # the first day recomputed
    events: int = 0     # events read (an incremental build reads the 30 days before since_day on)
    duplicates_dropped: int = 0
    rows: dict[str, int] = field(default_factory=dict)  # rows per table after the build
    seconds: dict[str, float] = field(default_factory=dict)


def register_inputs(spark, warehouse: str, read_from: dt.date | None = None) -> dict:
    """Register the views the SQL reads: the catalogue's (``register_catalogue``) and
    ``events`` (``register_events``). Returns what ``register_events`` returns."""
    register_catalogue(spark, warehouse)
    return register_events(spark, warehouse, read_from)


def register_events(spark, warehouse: str, read_from: dt.date | None = None) -> dict:
    """Register ``events``: one row per key, the earliest loaded, from the day partition
    ``read_from`` on, or all; with the UTC ``day``, the item's current ``category_id`` (from the
    ``items`` view, registered already) and the ``recommendation_id`` that training's decision
    points read. Returns the event count, duplicates dropped and the first and last day."""
    from pyspark.sql import functions as F

    raw = spark.read.parquet(f"{warehouse}/events")
    if read_from is not None:
        raw = raw.where(F.col(PARTITION_COLUMN) >= F.lit(read_from))
    raw.drop(PARTITION_COLUMN).createOrReplaceTempView("raw_events")
    events = spark.sql(
        """
        SELECT e.user_id, e.item_id, CAST(e.event_type AS INT) AS event_type, e.event_timestamp, e.price,
               e.session_id, e.recommendation_id, to_date(e.event_timestamp) AS day, i.category_id
        FROM (
            SELECT *, row_number() OVER (PARTITION BY user_id, event_timestamp, item_id, event_type
                                         ORDER BY run_id, line) AS copy
            FROM raw_events
        ) e
        JOIN items i ON i.item_id = e.item_id
        WHERE e.copy = 1
        """
    ).cache()
    events.createOrReplaceTempView("events")
    stats = spark.sql("SELECT count(*) AS n, min(day) AS first_day, max(day) AS last_day FROM events").first()
    stored = spark.sql("SELECT count(*) FROM raw_events").first()[0]
    return {"events": stats.n, "duplicates": stored - stats.n, "first_day": stats.first_day, "last_day": stats.last_day}


def register_catalogue(spark, warehouse: str) -> None:
    """The views ``items``, ``categories`` and ``item_vectors`` of the exported catalogue."""
    for name in ("items", "categories", "item_vectors"):
        spark.read.parquet(f"{warehouse}/catalog/{name}").createOrReplaceTempView(name)


@dataclass(frozen=True)
class _BuildPlan:
    mode: str
    reason: str
    since_day: dt.date | None = None  # incremental: the first day recomputed
    last_day: dt.date | None = None   # incremental: the last day the stored tables cover
    events_run_id: int | None = None  # the highest ingest run id the build reads


def _config_key(config: PipelineConfig) -> str:
    return json.dumps({"sequence_length": config.sequence_length,
                       "interest_embedding_events": config.interest_embedding_events,
                       "session_gap_minutes": config.session_gap_minutes}, sort_keys=True)


def _readable(spark, path: str, file_format: str = "parquet") -> bool:
    """Whether Spark finds data at ``path`` (a missing folder is an AnalysisException)."""
    from pyspark.errors import AnalysisException

    try:
        spark.read.format(file_format).load(path).schema
    except AnalysisException:
        return False
    return True


def _catalogue_snapshot(spark):
    """(item_id, category_id, vector_hash) of the exported catalogue."""
    return spark.sql("""
        SELECT i.item_id, CAST(i.category_id AS BIGINT) AS category_id, xxhash64(v.embedding) AS vector_hash
        FROM items i LEFT JOIN item_vectors v ON v.item_id = i.item_id""")


def _plan(spark, warehouse: str, config: PipelineConfig, full: bool, n_categories: int, catalogue) -> _BuildPlan:
    """Full or incremental, and from which day (see the module's docstring). ``catalogue`` is
    the current ``_catalogue_snapshot``, compared with the one the last build stored."""
    from pyspark.sql import functions as F

    raw = spark.read.parquet(f"{warehouse}/events")
    latest_run = raw.agg(F.max("run_id")).first()[0]
    if latest_run is None:
        return _BuildPlan("full", "no events")
    state_dir = f"{warehouse}/features/build_state"
    reason = ""
    if full:
        reason = "asked for"
    elif not _readable(spark, f"{state_dir}/state", "text"):
        reason = "no build state (a first build, or tables written before incremental builds)"
    elif not all(_readable(spark, f"{warehouse}/features/{table}") for table in SPARK_FEATURE_TABLES):
        reason = "a feature table is missing"
    elif "category_events_lifetime" not in spark.read.parquet(f"{warehouse}/features/user_daily_features").columns:
        reason = "user_daily_features was written before its lifetime category counts"
    if not reason:
        state = json.loads(spark.read.text(f"{state_dir}/state").first()[0])
        if state["config"] != _config_key(config):
            reason = "the pipeline config changed (sequence length, embedding events or session gap)"
        elif n_categories != state["n_categories"]:
            reason = "the categories changed (every category-share array changes)"
    if reason:
        return _BuildPlan("full", reason, events_run_id=latest_run)

    last_day = dt.date.fromisoformat(state["last_day"])
    first_new = raw.where(F.col("run_id") > state["events_run_id"]).agg(F.min(PARTITION_COLUMN)).first()[0]
    since, why = [], []
    if first_new is not None:
        since += [first_new, last_day + dt.timedelta(days=1)]
        why.append(f"events of ingest runs after {state['events_run_id']} from {first_new}")
    stored = spark.read.parquet(f"{state_dir}/catalogue")
    changed = (catalogue.alias("n").join(stored.alias("o"), "item_id", "full_outer")
               .where(~F.col("n.category_id").eqNullSafe(F.col("o.category_id"))
                      | ~F.col("n.vector_hash").eqNullSafe(F.col("o.vector_hash")))
               .select("item_id")).localCheckpoint(eager=True)
    if changed.limit(1).count():  # the events' item column is read only when some item changed
        first_changed = raw.join(F.broadcast(changed), "item_id").agg(F.min(PARTITION_COLUMN)).first()[0]
        if first_changed is not None:
            since.append(first_changed)
            why.append(f"events of changed or new catalogue items from {first_changed}")
    if not since:
        return _BuildPlan("up to date", f"nothing loaded after ingest run {state['events_run_id']}, no catalogue change")
    return _BuildPlan("incremental", "; ".join(why), min(since), last_day, latest_run)


def _register_carries(spark, warehouse: str, since_day: dt.date | None) -> None:
    """``sequence_carry`` and ``user_daily_carry`` from the stored rows before ``since_day``
    (empty for a full build), checkpointed: the build then overwrites the tables they read."""
    if since_day is None:
        spark.createDataFrame([], _SEQUENCE_CARRY_SCHEMA).createOrReplaceTempView("sequence_carry")
        spark.createDataFrame([], _DAILY_CARRY_SCHEMA).createOrReplaceTempView("user_daily_carry")
        return
    spark.read.parquet(f"{warehouse}/features/user_recent_sequence").createOrReplaceTempView("stored_sequences")
    spark.sql(f"""
        SELECT user_id, last.* FROM (
            SELECT user_id, max_by(struct(event_timestamp, recent_item_ids, recent_category_ids, recent_event_types,
                                          recent_gap_seconds), event_timestamp) AS last
            FROM stored_sequences WHERE {PARTITION_COLUMN} < :since_day GROUP BY user_id)
        """, args={"since_day": since_day}).localCheckpoint(eager=True).createOrReplaceTempView("sequence_carry")
    spark.read.parquet(f"{warehouse}/features/user_daily_features").createOrReplaceTempView("stored_daily")
    # daily rows are stamped at the end of their day: those up to since_day 00:00 come before it.
    # days_since_last_event is (stamp - last event) in microseconds / 86,400e6, a double that
    # rounds back to the exact microsecond count at any span this data has
    spark.sql(f"""
        SELECT user_id, last.dominant_category_changed AS previous_changed,
               date_sub(date_sub(to_date(last.event_timestamp), 1), CAST(last.days_since_interest_shift AS INT))
                   AS last_shift_day,
               last.category_events_lifetime AS lifetime,
               timestamp_micros(unix_micros(last.event_timestamp)
                                - CAST(round(last.days_since_last_event * 86400000000D) AS BIGINT)) AS last_event_at
        FROM (
            SELECT user_id, max_by(struct(event_timestamp, dominant_category_changed, days_since_interest_shift,
                                          category_events_lifetime, days_since_last_event), event_timestamp) AS last
            FROM stored_daily WHERE {PARTITION_COLUMN} <= :since_day GROUP BY user_id)
        """, args={"since_day": since_day}).localCheckpoint(eager=True).createOrReplaceTempView("user_daily_carry")


def build_features_spark(spark, warehouse: str, config: PipelineConfig, created: dt.datetime | None = None,
                         full: bool = False) -> SparkFeatureBuildReport:
    """Compute the feature tables from the warehouse's events and catalogue, incrementally
    where the build state allows it (see the module's docstring).

    Args:
        spark: the session (``materialize.spark_session.get_spark``); its time zone must be UTC.
        warehouse: the warehouse folder or URI.
        config: sequence length, session gap and interest-embedding size, as the PostgreSQL build.
        created: the ``created_timestamp`` of every row written (default: now).
        full: recompute everything even where an incremental build would do.

    Returns:
        The mode and first day recomputed, events read, rows per table and seconds per step.
    """
    from pyspark.sql import functions as F

    if spark.conf.get("spark.sql.session.timeZone") != "UTC":
        raise ValueError("the feature build needs spark.sql.session.timeZone=UTC (days are UTC days)")
    if config.interest_embedding_events > config.sequence_length:
        raise ValueError(f"interest_embedding_events ({config.interest_embedding_events}) must not exceed "
                         f"sequence_length ({config.sequence_length}): the incremental build takes the embedding's "
                         "last events from the stored sequences")
    created = created or dt.datetime.now(dt.timezone.utc)
    started = time.perf_counter()
    register_catalogue(spark, warehouse)
    n_categories = spark.sql("SELECT max(category_id) FROM categories").first()[0]
    catalogue = _catalogue_snapshot(spark).localCheckpoint(eager=False)  # computed once: compared, then stored
    plan = _plan(spark, warehouse, config, full, n_categories, catalogue)
    report = SparkFeatureBuildReport(mode=plan.mode, reason=plan.reason, since_day=plan.since_day)
    report.seconds["plan"] = round(time.perf_counter() - started, 3)
    if plan.mode == "up to date" or plan.events_run_id is None:
        return report
    incremental = plan.mode == "incremental"
    gap_days = math.ceil(config.session_gap_minutes / (24 * 60))  # a session start needs its predecessor's time
    read_from = plan.since_day - dt.timedelta(days=WINDOW_DAYS + gap_days) if incremental else None
    started = time.perf_counter()
    inputs = register_events(spark, warehouse, read_from)
    report.events, report.duplicates_dropped = inputs["events"], inputs["duplicates"]
    report.seconds["read events"] = round(time.perf_counter() - started, 3)
    if inputs["events"] == 0:
        return report
    if incremental:
        since_day, max_day = plan.since_day, max(plan.last_day, inputs["last_day"])
    else:
        since_day, max_day = inputs["first_day"], inputs["last_day"]
        report.since_day = since_day
    steps = {
        "user_daily_features": ({}, {"max_day": max_day, "n_categories": n_categories,
                                     "session_gap_micros": config.session_gap_minutes * 60 * 1_000_000}),
        "user_recent_sequence": ({"PRECEDING_ROWS": config.sequence_length - 1}, {}),
        "user_interest_embedding": ({"PRECEDING_ROWS": config.interest_embedding_events - 1}, {}),
        "item_daily_features": ({}, {"max_day": max_day}),
        "category_daily_features": ({}, {"max_day": max_day}),
    }
    try:
        started = time.perf_counter()
        _register_carries(spark, warehouse, since_day if incremental else None)
        report.seconds["carry over"] = round(time.perf_counter() - started, 3)
        for table in SPARK_FEATURE_TABLES:
            literals, args = steps[table]
            text = spark_feature_sql(f"{table}.sql")
            for name, value in literals.items():  # integers from the pipeline config only
                text = text.replace(name, str(int(value)))
            started = time.perf_counter()
            path = f"{warehouse}/features/{table}"
            rows = spark.sql(text, args={**args, "since_day": since_day, "created": created})
            writer = (rows.withColumn(PARTITION_COLUMN, F.to_date("event_timestamp"))
                      .write.mode("overwrite").partitionBy(PARTITION_COLUMN))
            if incremental:  # replace the day partitions written now, keep the others
                writer = writer.option("partitionOverwriteMode", "dynamic")
            writer.parquet(path)
            report.seconds[table] = round(time.perf_counter() - started, 3)
            report.rows[table] = spark.read.parquet(path).count()
        _write_state(spark, warehouse, plan.events_run_id, max_day, config, n_categories, catalogue)
    finally:
        for view in ("events", "sequence_carry", "user_daily_carry"):
            spark.catalog.dropTempView(view)
        spark.catalog.clearCache()
    return report


def _write_state(spark, warehouse: str, events_run_id: int, last_day: dt.date, config: PipelineConfig,
                 n_categories: int, catalogue) -> None:
    """Record what the tables now hold: the highest ingest run read, the last day, the
    config and the catalogue snapshot (item categories and text vector hashes)."""
    state_dir = f"{warehouse}/features/build_state"
    catalogue.write.mode("overwrite").parquet(f"{state_dir}/catalogue")
    state = {"events_run_id": int(events_run_id), "last_day": last_day.isoformat(),
             "n_categories": int(n_categories), "config": _config_key(config)}
    spark.createDataFrame([(json.dumps(state),)], "value STRING").coalesce(1).write.mode("overwrite").text(
        f"{state_dir}/state")
