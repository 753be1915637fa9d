"""PostgreSQL tables written by `interest build` / `interest embed` (schema `interest`), or
in the spark profile (INTEREST_PROFILE=spark) the Parquet folders of the same tables under
INTEREST_WAREHOUSE/features/, written by the Spark build (same names, same columns)."""
import os

from feast import PushSource
from feast.infra.offline_stores.contrib.postgres_offline_store.postgres_source import PostgreSQLSource

SPARK_PROFILE = os.environ.get("INTEREST_PROFILE", "postgres") == "spark"


def _source(table: str, day_partitions: bool = True):
    if SPARK_PROFILE:
        from feast.infra.offline_stores.contrib.spark_offline_store.spark_source import SparkSource

        return SparkSource(
            name=table,
            path=f"{os.environ['INTEREST_WAREHOUSE']}/features/{table}",
            file_format="parquet",
            timestamp_field="event_timestamp",
            created_timestamp_column="created_timestamp",
            # the Spark build's tables: day=YYYY-MM-DD folders, the UTC day of event_timestamp,
            # so Feast reads only the days a materialization window covers
            date_partition_column="day" if day_partitions else None,
        )
    return PostgreSQLSource(
        name=table,
        query=f"SELECT * FROM interest.{table}",
        timestamp_field="event_timestamp",
        created_timestamp_column="created_timestamp",
    )


user_daily_source = _source("user_daily_features")
user_sequence_source = _source("user_recent_sequence")
user_interest_embedding_source = _source("user_interest_embedding")
item_daily_source = _source("item_daily_features")
item_catalog_source = _source("item_catalog", day_partitions=False)  # exported whole
item_embedding_source = _source("item_embeddings", day_partitions=False)
category_daily_source = _source("category_daily_features")
if not SPARK_PROFILE:  # the impression log lives in PostgreSQL: the spark profile has no feedback views (issue 13)
    user_feedback_source = _source("user_feedback_daily")  # impressions joined to events
    item_feedback_source = _source("item_feedback_daily")

# Services push a user's recomputed rows here after new events (online store only; the
# offline tables are written by `interest build`).
user_daily_push = PushSource(name="user_daily_push", batch_source=user_daily_source)
user_sequence_push = PushSource(name="user_sequence_push", batch_source=user_sequence_source)
user_interest_embedding_push = PushSource(name="user_interest_embedding_push", batch_source=user_interest_embedding_source)
