"""Training frames that never pass through the Spark driver whole (the spark profile).

``RetrievalJob.to_df()`` of Feast's Spark offline store collects the joined frame into the
driver JVM as one Arrow stream and then into pandas: at 1M entity rows of the ranker's
views that exhausted a 6 GB driver heap (docs/scale.md). Feast can instead have the
executors write the result as Parquet files into the offline store's ``staging_location``
(``RetrievalJob.to_remote_storage()``); ``retrieve`` does that and reads the files back
with pyarrow, ``batch_rows`` rows at a time, so the JVM never holds the frame; this
process holds the decoded pandas batches and, for a moment, their concatenation (no Arrow
table of the whole frame beside them).
``collect`` does the same for any Spark DataFrame (the spark profile's raw-event queries),
``write_staged`` is the way back: a pandas frame written in row groups to a folder that
Spark's executors read (the ranker's rows for ``xgboost.spark``).

The entity rows go the same way in (``historical_frame``): written to Parquet and handed
to Feast as a Spark DataFrame over that file. Feast's own upload of a pandas entity frame
(``spark.createDataFrame``) makes a ``LocalRelation``, rows held inside the query plan on
the driver, and Spark's optimizer then evaluates the point-in-time query's projections of
it on the driver, in one thread: measured here, a 1M-row entity frame kept a 6 GB local[2]
JVM in full garbage collection (old generation 100 %, 350 s of full GC) for 10 minutes
without the join starting.

Jobs of stores without a staging location (the postgres profile's plugin) go through
``to_df()`` unchanged.
"""
from __future__ import annotations

import posixpath
import shutil
import uuid
from collections.abc import Iterator

import pandas as pd

BATCH_ROWS = 100_000
"""Rows per Arrow batch read back (about 50 MB for the ranker's five views)."""


def _filesystem(uri: str):
    """(pyarrow filesystem, path in it) of a local path, ``file://`` or object-store URI."""
    from pyarrow import fs

    if uri.startswith("file://"):
        return fs.LocalFileSystem(), uri[len("file://"):]
    if "://" not in uri:
        return fs.LocalFileSystem(), uri
    return fs.FileSystem.from_uri("s3://" + uri[len("s3a://"):] if uri.startswith("s3a://") else uri)


def spark_uri(uri: str) -> str:
    """``uri`` as Spark's Hadoop file systems name it (``s3://`` -> ``s3a://``)."""
    return "s3a://" + uri[len("s3://"):] if uri.startswith("s3://") else uri


def iter_batches(files: list[str], batch_rows: int = BATCH_ROWS) -> Iterator[pd.DataFrame]:
    """The rows of Parquet ``files`` (paths or URIs) as pandas frames of at most ``batch_rows`` rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    for uri in files:
        filesystem, path = _filesystem(uri)
        with filesystem.open_input_file(path) as handle:
            for batch in pq.ParquetFile(handle).iter_batches(batch_size=batch_rows):
                yield pa.Table.from_batches([batch]).to_pandas()


def remove_staged(files: list[str]) -> None:
    """Delete the folders that hold ``files`` (each retrieval or ``write_staged`` has a folder of its own)."""
    for folder in sorted({posixpath.dirname(uri) for uri in files}):
        filesystem, path = _filesystem(folder)
        if "://" in folder and not folder.startswith("file://"):
            filesystem.delete_dir(path)
        else:
            shutil.rmtree(path, ignore_errors=True)


def retrieve(job, batch_rows: int = BATCH_ROWS) -> pd.DataFrame:
    """``job.to_df()``, through Parquet staged by the executors where the job supports it.

    Args:
        job: a Feast ``RetrievalJob`` without on-demand views (they are applied by
            ``to_df()`` only; the recipe computes its on-demand affinity itself).
        batch_rows: rows per batch read back.

    Returns:
        The frame; timestamps come back tz-aware UTC (``to_df()`` of the Spark store
        returns them tz-naive), row order is the files' (sort by an entity column).
    """
    if not job.supports_remote_storage_export():
        return job.to_df()
    if job.on_demand_feature_views:
        raise ValueError("staged retrieval returns stored views only; request on-demand views through to_df()")
    files = job.to_remote_storage()
    try:
        batches = list(iter_batches([f for f in files if f.endswith(".parquet")], batch_rows))
    finally:
        remove_staged(files)
    if not batches:
        return pd.DataFrame()
    return pd.concat(batches, ignore_index=True)


def collect(frame, staging: str, batch_rows: int = BATCH_ROWS) -> pd.DataFrame:
    """A Spark DataFrame's rows as pandas, written by the executors into a folder of its own
    under ``staging`` and read back in batches (the folder is removed); row order is lost.

    Args:
        staging: a folder or URI that this process and the executors reach (``s3://``
            URIs are handed to Spark as ``s3a://``).
    """
    from pyarrow import fs

    folder = f"{staging.rstrip('/')}/{uuid.uuid4().hex}"
    frame.write.parquet(spark_uri(folder))
    filesystem, path = _filesystem(folder)
    files = sorted(info.path for info in filesystem.get_file_info(fs.FileSelector(path))
                   if info.path.endswith(".parquet"))
    if "://" in folder and not folder.startswith("file://"):
        files = [f"{folder.split('://')[0]}://{f}" for f in files]
    try:
        batches = list(iter_batches(files, batch_rows))
    finally:
        remove_staged([f"{folder}/_SUCCESS"])
    return pd.concat(batches, ignore_index=True) if batches else pd.DataFrame()


def historical_frame(store, entity: pd.DataFrame, refs: list[str], batch_rows: int = BATCH_ROWS) -> pd.DataFrame:
    """``store.get_historical_features(entity_df=entity, features=refs).to_df()``; in the
    spark profile (Feast's Spark offline store with a ``staging_location``) with the entity rows read
    by Spark from staged Parquet and the result staged by the executors (``retrieve``).

    Args:
        entity: the entity rows; ``event_timestamp`` tz-aware (kept to microseconds).

    Raises:
        ValueError: this process's local time zone is not UTC (Feast's Spark store takes
            the entity time range from Spark as local wall-clock times).
    """
    import datetime as dt

    offline = store.config.offline_store
    staging = offline.staging_location if offline.type == "spark" else None
    if not staging:
        return store.get_historical_features(entity_df=entity, features=refs).to_df()
    if dt.datetime.now().astimezone().utcoffset():
        raise ValueError("the spark profile's training driver must run in UTC (TZ=UTC): Feast's Spark store reads "
                         "the entity rows' time range as local times")
    from pyspark.sql import SparkSession

    file = write_staged([entity], f"{staging.rstrip('/')}/{uuid.uuid4().hex}-entity", batch_rows)
    try:
        job = store.get_historical_features(entity_df=SparkSession.getActiveSession().read.parquet(spark_uri(file)),
                                            features=refs)
        return retrieve(job, batch_rows)
    finally:
        remove_staged([file])


def write_staged(frames: list[pd.DataFrame], folder: str, batch_rows: int = BATCH_ROWS) -> str:
    """Write ``frames`` (same columns) one after the other as one Parquet file in ``folder``.

    Row groups of at most ``batch_rows`` rows are converted and written one at a time, so
    this process holds one group's Arrow copy beside the frames.

    Returns:
        The file's path or URI (for ``spark.read.parquet`` and ``remove_staged``).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    filesystem, path = _filesystem(folder)
    filesystem.create_dir(path, recursive=True)
    file = posixpath.join(path, "part-0.parquet")
    with filesystem.open_output_stream(file) as sink:
        writer = None
        for frame in frames:
            for start in range(0, len(frame), batch_rows):
                table = pa.Table.from_pandas(frame.iloc[start:start + batch_rows], preserve_index=False)
                writer = writer or pq.ParquetWriter(sink, table.schema, coerce_timestamps="us",
                                                    allow_truncated_timestamps=True)  # Spark reads no nanoseconds
                writer.write_table(table)
        if writer is None:
            raise ValueError("write_staged: no rows to write")
        writer.close()
    return f"{folder.rstrip('/')}/part-0.parquet"
