"""Feast operations on the project's repo: apply, materialize, open a store.

Feast is imported lazily (it takes seconds); ``feature_store.yaml`` reads its connection
from environment variables, which ``feast_environment`` sets while Feast reads the file
and restores afterwards (so one process can open stores on several databases).
"""
from __future__ import annotations

import contextlib
import datetime as dt
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from materialize.settings import PostgresSettings, SparkSettings

FIRST_MATERIALIZATION_START = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


class FeatureRepoNotFound(FileNotFoundError):
    """The project folder has no Feast feature repo."""


def _check_repo(repo_dir: Path) -> None:
    if not (Path(repo_dir) / "feature_store.yaml").is_file():
        raise FeatureRepoNotFound(
            f"no Feast feature repo at {repo_dir} (no feature_store.yaml): create a project with "
            f"`interest init DIR` and set INTEREST_HOME=DIR, or set INTEREST_HOME to a folder that has feature_repo/"
        )


def store_yaml(repo_dir: Path, spark: SparkSettings | None = None) -> Path:
    """The profile's Feast config in the repo: ``feature_store.yaml``, or
    ``feature_store.spark.yaml`` for the spark profile."""
    return Path(repo_dir) / ("feature_store.yaml" if spark is None else "feature_store.spark.yaml")


@contextlib.contextmanager
def feast_environment(pg: PostgresSettings, pgvector: bool, spark: SparkSettings | None = None) -> Iterator[dict[str, str]]:
    """The connection variables of ``feature_store.yaml`` (and, with ``spark``, of
    ``feature_store.spark.yaml``) in ``os.environ`` for the duration of the block; the
    previous values are restored after it."""
    variables = pg.feast_environment(pgvector) | (spark.feast_environment() if spark else {"INTEREST_PROFILE": "postgres"})
    previous = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        yield variables
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def open_store(repo_dir: Path, pg: PostgresSettings, pgvector: bool, spark: SparkSettings | None = None):
    """A ``feast.FeatureStore`` on the repo, connected to ``pg`` (and with ``spark``, the
    spark profile's config)."""
    _check_repo(repo_dir)
    from feast import FeatureStore

    with feast_environment(pg, pgvector, spark):
        return FeatureStore(repo_path=str(repo_dir), fs_yaml_file=store_yaml(repo_dir, spark))


def _forget_repo_modules(repo_dir: Path) -> None:
    """Drop the repo's files from ``sys.modules``. Feast imports them as top-level modules
    and Python keeps them: a second apply in one process would register the first apply's
    objects again, which Feast's registry has updated in place (materialization intervals
    of another database included)."""
    root = Path(repo_dir).resolve()
    for name, module in list(sys.modules.items()):
        file = getattr(module, "__file__", None)
        if file and Path(file).resolve().parent == root:
            del sys.modules[name]


def apply_repo(repo_dir: Path, pg: PostgresSettings, pgvector: bool, spark: SparkSettings | None = None) -> None:
    """Run ``feast apply`` on the repo in process (the stock CLI does the same); with
    ``spark``, the spark profile's config and sources."""
    _check_repo(repo_dir)
    _forget_repo_modules(repo_dir)
    from feast.repo_config import load_repo_config
    from feast.repo_operations import apply_total, cli_check_repo

    cwd = Path.cwd()  # Feast's apply changes into the repo folder
    try:
        with feast_environment(pg, pgvector, spark):
            yaml_file = store_yaml(repo_dir, spark)
            cli_check_repo(repo_dir, yaml_file)
            config = load_repo_config(repo_dir, yaml_file)
            apply_total(config, repo_dir, skip_source_validation=False)
    finally:
        os.chdir(cwd)


@dataclass(frozen=True)
class MaterializeReport:
    views: int
    first_time: list[str]
    end: dt.datetime
    online_rows: dict[str, int]   # entities per view in the online store afterwards
    seconds: float


def materialize_online(store, end: dt.datetime | None = None) -> MaterializeReport:
    """Load the latest feature values up to ``end`` into the online store.

    A view never materialized before, or whose online table is empty (a repo that has just
    switched online stores: the registry remembers the old store's runs), starts from 1970
    (historical data such as MovieLens is older than any ttl). A later run starts where the
    last one ended, or earlier where rows were written since then for older times: the
    days an incremental build recomputed after late events, an embedding of a catalogue
    version loaded before the last run, a feedback day written again. Stock
    ``feast materialize-incremental`` misses those: it reads only rows stamped after its
    last run. While the starts are read and the views loaded, writers of feature rows
    (``OFFLINE_WRITES_LOCK``) wait, so no row is written between the two unseen.
    """
    import time

    started = time.perf_counter()
    views = store.list_feature_views()
    empty = set(_empty_online_views(store))
    with offline_writes_excluded(store) as conn, _plain_unless_terminal():
        end = end or dt.datetime.now(dt.timezone.utc)
        starts = {v.name: FIRST_MATERIALIZATION_START if not v.materialization_intervals or v.name in empty
                  else materialization_start(conn, v, v.most_recent_end_time) for v in views}
        for start in sorted(set(starts.values())):  # one Feast run per start, each view listed once
            store.materialize(start_date=start, end_date=end,
                              feature_views=[name for name, s in starts.items() if s == start])
    seconds = time.perf_counter() - started
    fresh = [name for name, start in starts.items() if start == FIRST_MATERIALIZATION_START]
    return MaterializeReport(len(views), fresh, end, online_entity_counts(store), seconds)


@contextlib.contextmanager
def offline_writes_excluded(store) -> Iterator:
    """A connection to the PostgreSQL offline store holding ``OFFLINE_WRITES_LOCK``
    exclusively for the block (writers hold it shared); None for another offline store."""
    from feast.infra.offline_stores.contrib.postgres_offline_store.postgres import PostgreSQLOfflineStoreConfig

    offline = store.config.offline_store
    if not isinstance(offline, PostgreSQLOfflineStoreConfig):
        yield None
        return
    import psycopg

    from materialize.database.tables import OFFLINE_WRITES_LOCK

    with psycopg.connect(host=offline.host, port=offline.port, dbname=offline.database, user=offline.user,
                         password=offline.password, sslmode=offline.sslmode, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(hashtext(%s))", (OFFLINE_WRITES_LOCK,))
        try:
            yield conn
        finally:
            conn.execute("SELECT pg_advisory_unlock(hashtext(%s))", (OFFLINE_WRITES_LOCK,))


def materialization_start(conn, view, last_end: dt.datetime) -> dt.datetime:
    """Where the next run of ``view`` starts: ``last_end``, or the oldest event timestamp of
    a row of its source created after ``last_end`` when that is older (read through ``conn``,
    the PostgreSQL offline store's, or from Parquet when it is None)."""
    source = view.batch_source
    event_ts, created = source.timestamp_field, source.created_timestamp_column
    if not created:
        return last_end
    if conn is not None:
        from psycopg import sql

        oldest = conn.execute(sql.SQL("SELECT min({}) FROM {} AS s WHERE {} > %s").format(
            sql.Identifier(event_ts), sql.SQL(source.get_table_query_string()), sql.Identifier(created)),
            (last_end,)).fetchone()[0]
    else:  # a file source of the spark profile (its build rewrites every row)
        import pyarrow.compute as pc
        import pyarrow.dataset as ds

        rows = ds.dataset(source.path, format="parquet", partitioning="hive").to_table(
            columns=[event_ts], filter=ds.field(created) > last_end)
        oldest = pc.min(rows[event_ts]).as_py() if rows.num_rows else None
    return min(last_end, oldest) if oldest is not None else last_end


@contextlib.contextmanager
def _plain_unless_terminal() -> Iterator[None]:
    """Feast colours its materialization lines with ANSI codes; a log file or a pipe gets
    them without."""
    if sys.stdout.isatty():
        yield
        return
    from colorama import AnsiToWin32

    with contextlib.redirect_stdout(AnsiToWin32(sys.stdout, strip=True).stream):
        yield


def _online_tables(store):
    """(view name, the view's online table or None when missing, connection) per view of
    the Postgres online store (the plugin's or stock's)."""
    import psycopg
    from psycopg import sql

    from materialize.feature_store.online_store import PostgresFastOnlineStoreConfig, online_table_name

    online = store.config.online_store
    packed = isinstance(online, PostgresFastOnlineStoreConfig)
    with psycopg.connect(
        host=online.host, port=online.port, dbname=online.database, user=online.user,
        password=online.password, sslmode=online.sslmode,
    ) as conn:
        for view in store.list_feature_views():
            name = online_table_name(store.project, view.name) if packed else f"{store.project}_{view.name}"
            exists = conn.execute("SELECT to_regclass(%s)", (f"{online.db_schema}.{name}",)).fetchone()[0]
            yield view.name, sql.Identifier(online.db_schema, name) if exists else None, conn


def _empty_online_views(store) -> list[str]:
    """Views whose online table is missing or holds no row."""
    from psycopg import sql

    return [view for view, table, conn in _online_tables(store)
            if table is None or not conn.execute(sql.SQL("SELECT EXISTS (SELECT 1 FROM {})").format(table)).fetchone()[0]]


def online_entity_counts(store) -> dict[str, int]:
    """Entities per feature view in the Postgres online store (the plugin's or stock's)."""
    from psycopg import sql

    from materialize.feature_store.online_store import PostgresFastOnlineStoreConfig

    # the plugin keeps one row per entity, stock one per (entity, feature)
    packed = isinstance(store.config.online_store, PostgresFastOnlineStoreConfig)
    count = sql.SQL("SELECT count(*) FROM {}" if packed else "SELECT count(DISTINCT entity_key) FROM {}")
    return {view: conn.execute(count.format(table)).fetchone()[0] if table is not None else 0
            for view, table, conn in _online_tables(store)}
