"""The spark profile's feature build: the five feature-source tables computed by Spark SQL
from the Parquet warehouse, written back to it as Parquet.

``spark_sql/*.sql`` are the Spark dialect of ``sql/*.sql``: the same columns, names and
values (``tests/materialize/features/test_spark_builder.py`` builds both on one shop and
compares every value). Two dialects because the PostgreSQL build is incremental and leans
on what a single server does well (LATERAL index lookups, temp tables, pgvector's mean),
which Spark has no use for; the Spark build recomputes everything from the events (a full
build), which is how a cluster job over a day-partitioned history usually runs.

Warehouse layout (``<warehouse>`` is ``Settings.spark.warehouse``):
    events/day=YYYY-MM-DD/*.parquet       validated events (``ingest.parquet_writer``)
    catalog/{items,categories,item_vectors}/   the catalogue (``export_catalogue``)
    features/<table>/*.parquet            the feature sources Feast's SparkSources read
"""
from __future__ import annotations

import datetime as dt
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


def spark_feature_sql(name: str) -> str:
    """The text of ``materialize/features/spark_sql/<name>``."""
    return resources.files("materialize.features").joinpath("spark_sql", name).read_text()


@dataclass
class SparkFeatureBuildReport:
    events: int = 0
    duplicates_dropped: int = 0
    rows: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


def register_inputs(spark, warehouse: str) -> dict:
    """Register the views the SQL reads: ``events`` (one row per key, the earliest loaded;
    with the UTC ``day``, the item's current ``category_id`` and the ``recommendation_id``
    that training's decision points read), ``categories`` and
    ``item_vectors``. Returns the event count, duplicates dropped and the first and last day."""
    raw = spark.read.parquet(f"{warehouse}/events").drop("day")
    raw.createOrReplaceTempView("raw_events")
    spark.read.parquet(f"{warehouse}/catalog/items").createOrReplaceTempView("items")
    spark.read.parquet(f"{warehouse}/catalog/categories").createOrReplaceTempView("categories")
    spark.read.parquet(f"{warehouse}/catalog/item_vectors").createOrReplaceTempView("item_vectors")
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


def build_features_spark(spark, warehouse: str, config: PipelineConfig, created: dt.datetime | None = None,
                         tables: tuple[str, ...] = SPARK_FEATURE_TABLES) -> SparkFeatureBuildReport:
    """Recompute the feature tables from the warehouse's events and catalogue.

    Args:
        spark: the session (``materialize.spark_session.get_spark``); its time zone must be UTC.
        warehouse: the warehouse folder or URI.
        config: sequence length, session gap and interest-embedding size, as the PostgreSQL build.
        created: the ``created_timestamp`` of every row (default: now).
        tables: which tables to build.

    Returns:
        Events read, rows written per table and seconds per step.
    """
    if spark.conf.get("spark.sql.session.timeZone") != "UTC":
        raise ValueError("the feature build needs spark.sql.session.timeZone=UTC (days are UTC days)")
    created = created or dt.datetime.now(dt.timezone.utc)
    report = SparkFeatureBuildReport()
    started = time.perf_counter()
    inputs = register_inputs(spark, warehouse)
    report.events, report.duplicates_dropped = inputs["events"], inputs["duplicates"]
    report.seconds["read events"] = round(time.perf_counter() - started, 3)
    if inputs["events"] == 0:
        return report
    n_categories = spark.sql("SELECT max(category_id) FROM categories").first()[0]
    max_day = inputs["last_day"]
    steps = {
        "user_daily_features": ({}, {"max_day": max_day, "created": created, "n_categories": n_categories,
                                     "session_gap_micros": config.session_gap_minutes * 60 * 1_000_000}),
        "user_recent_sequence": ({"PRECEDING_ROWS": config.sequence_length - 1}, {"created": created}),
        "user_interest_embedding": ({"PRECEDING_ROWS": config.interest_embedding_events - 1}, {"created": created}),
        "item_daily_features": ({}, {"max_day": max_day, "created": created}),
        "category_daily_features": ({}, {"since_day": inputs["first_day"], "max_day": max_day, "created": created}),
    }
    try:
        for table in tables:
            literals, args = steps[table]
            text = spark_feature_sql(f"{table}.sql")
            for name, value in literals.items():  # integers from the pipeline config only
                text = text.replace(name, str(int(value)))
            started = time.perf_counter()
            path = f"{warehouse}/features/{table}"
            spark.sql(text, args=args).write.mode("overwrite").parquet(path)
            report.seconds[table] = round(time.perf_counter() - started, 3)
            report.rows[table] = spark.read.parquet(path).count()
    finally:
        spark.catalog.dropTempView("events")
        spark.catalog.clearCache()
    return report
