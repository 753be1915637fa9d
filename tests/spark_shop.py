"""One small synthetic shop loaded through both profiles, for the spark profile's tests.

The postgres profile: ``Pipeline.load_synthetic`` into database A, embed, full build.
The spark profile: the catalogue through the same loader into database B (bookkeeping and
online store), events through ``ingest.parquet_writer`` into a Parquet warehouse, embed,
export the catalogue, and the Spark feature build. Both get the same frames of the same
seeded generator.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

import pytest

from materialize.features.spark_builder import build_features_spark
from materialize.ingest import loader
from materialize.ingest.parquet_writer import export_catalogue, load_event_frames_parquet
from materialize.ingest.sources.synthetic import SyntheticConfig, SyntheticShop
from materialize.pipeline import Pipeline
from materialize.settings import SparkSettings

SHOP = SyntheticConfig(n_users=1000, n_items=120, n_categories=6, days=60, sessions_per_user_mean=5.0, seed=12)


def spark_settings(warehouse: Path) -> SparkSettings:
    """``local[2]``, few shuffle partitions, 1 GB driver: small data, a shared 2-core machine."""
    return SparkSettings(warehouse=str(warehouse), master="local[2]", shuffle_partitions=4, driver_memory="1g")


def start_spark(warehouse: Path):
    """The test session's SparkSession (one per pytest process)."""
    if os.environ.get("CI"):
        import pyspark  # noqa: F401  CI installs the spark extra: a missing pyspark is a failure there
    else:
        pytest.importorskip("pyspark", reason="the spark extra is not installed (pip install -e '.[spark]')")
    from materialize.spark_session import get_spark

    spark = get_spark(spark_settings(warehouse))
    spark.sparkContext.setLogLevel("ERROR")
    return spark


@dataclasses.dataclass
class TwoProfiles:
    postgres: Pipeline      # database A, the postgres profile
    spark: Pipeline         # database B, bookkeeping and online store of the spark profile
    warehouse: Path
    reports: dict


def load_both(settings, pg_a, pg_b, warehouse: Path, spark, shop: SyntheticConfig = SHOP) -> TwoProfiles:
    """Load, embed and build ``shop`` in both profiles (the caller closes the pipelines)."""
    reports = {}
    postgres = Pipeline(dataclasses.replace(settings, postgres=pg_a, spark=None), progress=False)
    reports["postgres load"] = postgres.load_synthetic(shop)
    postgres.embed()
    reports["postgres build"] = postgres.build(full=True)

    shutil.rmtree(warehouse, ignore_errors=True)
    sp = Pipeline(dataclasses.replace(settings, postgres=pg_b, spark=spark_settings(warehouse)), progress=False)
    generator = SyntheticShop(shop)
    kwargs = {"future_tolerance_s": settings.pipeline.future_tolerance_seconds,
              "min_event_time": settings.pipeline.min_event_time}
    reports["spark items"] = loader.load_frames(sp.conn, "items", [generator.items()], source="shop:items", **kwargs)
    reports["spark events"] = load_event_frames_parquet(sp.conn, generator.events(), str(warehouse), source="shop:events", **kwargs)
    sp.embed()
    reports["catalogue"] = export_catalogue(sp.conn, str(warehouse))
    reports["spark build"] = build_features_spark(spark, str(warehouse), settings.pipeline)
    return TwoProfiles(postgres, sp, warehouse, reports)
