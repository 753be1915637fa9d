"""The Spark session of the spark profile (issue 12).

One session per process, shared by the Parquet feature build, Feast's Spark offline store
and compute engine (both take the active session) and ``xgboost.spark``. pyspark is
imported inside the functions: the postgres profile never loads it.

Settings that the results depend on are fixed here, not left to a cluster's defaults:
the session time zone is UTC (days are UTC days, as in the PostgreSQL SQL) and Parquet
timestamps are written as microseconds (what pandas, pyarrow and Feast read back alike).

Driver memory: nothing of the training frames is collected into the driver (Feast writes
them to Parquet from the executors, ``interest_models.data.frame_staging``), so the driver
holds plans, small aggregates and the entity frames the recipe uploads. ``spark.driver.memory``
(``INTEREST_SPARK_DRIVER_MEMORY``, default 4g) applies to a JVM this process starts; in
``local[N]`` the executors' tasks run inside it, so it also bounds the joins' in-memory
state. ``spark.driver.maxResultSize`` stays at Spark's 1g, written out: a result collected
by mistake fails fast with Spark's error naming that setting instead of an
``OutOfMemoryError`` after minutes.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from materialize.settings import SparkSettings

_FIXED_CONF = {
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
}


def spark_conf(spark: SparkSettings) -> dict[str, str]:
    """The configuration the project's code needs, for ``SparkSession.builder`` or
    ``spark-submit --conf``."""
    return {
        "spark.master": spark.master,
        "spark.app.name": "interest-shift",
        "spark.sql.shuffle.partitions": str(spark.shuffle_partitions),
        "spark.driver.memory": spark.driver_memory,
        "spark.driver.maxResultSize": "1g",
        **_FIXED_CONF,
    }


def get_spark(spark: SparkSettings, extra_conf: dict[str, str] | None = None):
    """The active ``SparkSession``, or a new one configured from ``spark``.

    Python workers run the interpreter of this process (``PYSPARK_PYTHON``), with this
    checkout on their path, so that Feast's engine and ``xgboost.spark`` import the same
    code on the executors in local mode. On a cluster, ship the wheel instead
    (see README, "Spark profile on a cluster").
    """
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    root = str(Path(__file__).resolve().parent.parent)
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if root not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([root, *paths])
    # Under spark-submit (which hands Python its JVM through PYSPARK_GATEWAY_PORT) the
    # master, resources and partitions are the submit command's; only what the results
    # depend on is set here.
    conf = dict(_FIXED_CONF) if os.environ.get("PYSPARK_GATEWAY_PORT") else spark_conf(spark)
    builder = SparkSession.builder
    for key, value in {**conf, **(extra_conf or {})}.items():
        builder = builder.config(key, value)
    return builder.getOrCreate()
