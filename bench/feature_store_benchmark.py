"""End-to-end figures of the feature store on a fresh PostgreSQL database.

Steps, each timed and printed with a timestamp as it finishes:

1. generate a synthetic shop and ingest it (items, then events: validation + COPY);
2. embed the item texts (all-MiniLM-L6-v2);
3. build the feature-source tables in full, then incrementally after one more day of events;
4. ``feast apply``, then materialize every feature view into the online store;
5. point-in-time training frames for sampled entity rows, with the ``user_item_training``
   service (on-demand view included) and with a plain feature list (Postgres only), through
   ``materialize.retrieval.training_frame`` and through stock
   ``FeatureStore.get_historical_features`` (in a child process with a time limit);
6. a table of all figures with machine info, also written as JSON.

Usage (from the project root)::

    .venv/bin/python bench/feature_store_benchmark.py --events 1000000 --entity-rows 10000 100000

Nothing here asserts on time; the stock/ours value check is reported, not raised.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import io
import json
import math
import os
import platform
import sys
import tempfile
import time
import uuid
import warnings
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parents[1]
if str(PROJECT_DIR) not in sys.path:
    sys.path.insert(0, str(PROJECT_DIR))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import psycopg  # noqa: E402
from psycopg import sql  # noqa: E402

from materialize.ingest import loader as ingest  # noqa: E402
from materialize.pipeline import Pipeline  # noqa: E402
from materialize.database.server import drop_database  # noqa: E402
from materialize.settings import PostgresSettings, load_settings  # noqa: E402
from materialize.ingest.sources.synthetic import SyntheticConfig, SyntheticShop  # noqa: E402

TRAINING_SERVICE = "user_item_training"
PLAIN_VIEWS = ("user_activity", "user_interest_shift", "user_recent_sequence", "item_popularity", "item_catalog",
               "category_trends")
"""The service's feature views without its on-demand view (and so without the two embedding
views that the on-demand view pulls in): the Postgres point-in-time join in isolation."""
ENTITY_KEYS = ["user_id", "item_id", "category_id", "event_timestamp"]
STOCK_APPLICATION_NAME = "feature_store_benchmark_stock"
STOCK_STARTUP_TIMEOUT_S = 600  # child process: imports and store opening, not timed
NEXT_DAY_SESSIONS_PER_USER = 1.5  # sessions per user in the one extra day of events
NEXT_DAY_SESSION_SUFFIX = "-next-day"  # keeps the extra day's session ids apart from the first load's

_STARTED = time.perf_counter()



def silence_known_warnings() -> None:
    """Hide two harmless warnings Feast prints on every apply and retrieval (they would bury
    the progress lines). Called again after ``import feast``, which puts its own
    ``simplefilter("once", RuntimeWarning)`` in front of ours."""
    warnings.filterwarnings("ignore", message="pandas only supports SQLAlchemy connectable")
    warnings.filterwarnings("ignore", message="On demand feature view is an experimental feature")


silence_known_warnings()


# ----------------------------------------------------------------------------- output


def progress(message: str) -> None:
    """One timestamped progress line: wall clock, seconds since start, 1-minute load."""
    load_1m = os.getloadavg()[0]
    print(f"[{dt.datetime.now():%H:%M:%S} +{time.perf_counter() - _STARTED:7.1f}s load {load_1m:4.2f}] {message}",
          flush=True)


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def rate(count: float, seconds: float) -> float | None:
    return round(count / seconds, 1) if seconds > 0 else None


def _version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def machine_info(conn: psycopg.Connection) -> dict:
    """CPU, memory, library and server versions."""
    cpu_model = None
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    mem_total_gib = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_total_gib = round(int(line.split()[1]) / 2**20, 1)
    settings = dict(
        conn.execute(
            "SELECT name, setting || coalesce(unit, '') FROM pg_settings "
            "WHERE name IN ('shared_buffers', 'work_mem', 'max_parallel_workers_per_gather', 'effective_cache_size')"
        ).fetchall()
    )
    return {
        "cpu_model": cpu_model,
        "cpu_cores": os.cpu_count(),
        "ram_gib": mem_total_gib,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": _version("torch"),
        "feast": _version("feast"),
        "pandas": _version("pandas"),
        "pyarrow": _version("pyarrow"),
        "psycopg": _version("psycopg"),
        "postgres": conn.execute("SELECT version()").fetchone()[0],
        "postgres_settings": settings,
    }


# ----------------------------------------------------------------------------- ingestion


class TimedFrames:
    """Iterates frames from a generator and adds up the time spent generating them."""

    def __init__(self, frames, transform=None):
        self._frames = iter(frames)
        self._transform = transform
        self.seconds = 0.0
        self.rows = 0

    def __iter__(self):
        return self

    def __next__(self) -> pd.DataFrame:
        started = time.perf_counter()
        try:
            frame = next(self._frames)
            if self._transform is not None:
                frame = self._transform(frame)
        finally:
            self.seconds += time.perf_counter() - started
        self.rows += len(frame)
        return frame


def _shop_source(config: SyntheticConfig) -> str:
    return f"bench-synthetic(users={config.n_users}, items={config.n_items}, seed={config.seed}, end={config.end}, days={config.days})"


def ingest_shop(pipeline: Pipeline, config: SyntheticConfig) -> dict:
    """Catalogue and events of a synthetic shop, each load timed on its own.

    The same loads as ``Pipeline.load_synthetic`` minus the planted-shift ground truth (an
    evaluation table that no feature reads).
    """
    kwargs = pipeline._load_kwargs()
    started = time.perf_counter()
    shop = SyntheticShop(config)
    items = shop.items()
    catalogue_s = time.perf_counter() - started
    progress(f"catalogue of {len(items):,} items generated in {catalogue_s:.2f} s")

    started = time.perf_counter()
    items_report = ingest.load_frames(pipeline.conn, "items", [items], source=f"{_shop_source(config)}:items", **kwargs)
    items_s = time.perf_counter() - started
    progress(f"items loaded: {items_report.summary()} in {items_s:.2f} s")

    frames = TimedFrames(shop.events())
    started = time.perf_counter()
    events_report = ingest.load_frames(
        pipeline.conn, "events", frames, source=f"{_shop_source(config)}:events",
        total_rows=int(config.n_users * config.expected_events_per_user), **kwargs,
    )
    events_total_s = time.perf_counter() - started
    events_load_s = events_total_s - frames.seconds
    progress(f"events loaded: {events_report.summary()} in {events_total_s:.2f} s "
             f"({frames.seconds:.2f} s of it generating)")
    return {
        "config": {"n_users": config.n_users, "n_items": config.n_items, "n_categories": config.n_categories,
                   "days": config.days, "end": str(config.end), "seed": config.seed},
        "catalogue_generation_s": round(catalogue_s, 3),
        "items": {"rows_read": items_report.rows_read, "loaded": items_report.loaded,
                  "quarantined": items_report.quarantined, "seconds": round(items_s, 3),
                  "rows_per_s": rate(items_report.loaded, items_s)},
        "events": {
            "rows_read": events_report.rows_read, "loaded": events_report.loaded,
            "quarantined": events_report.quarantined, "duplicate": events_report.duplicate,
            "generation_s": round(frames.seconds, 3),
            "load_s": round(events_load_s, 3),
            "total_s": round(events_total_s, 3),
            "rows_per_s": rate(events_report.loaded, events_load_s),
            "rows_per_s_with_generation": rate(events_report.loaded, events_total_s),
        },
    }


def next_day_config(config: SyntheticConfig, target_events: int) -> SyntheticConfig:
    """One more day of events by the first ``n`` shoppers of ``config``.

    Same seed, so the catalogue (ids, categories, prices) and each user's preferences are
    the ones already loaded; a one-day span right after the first one, so every new event
    is later than all loaded ones.
    """
    base = dataclasses.replace(
        config, end=config.end + pd.Timedelta(days=1), days=1,
        sessions_per_user_mean=NEXT_DAY_SESSIONS_PER_USER, drift_days=0.5,
    )
    n_users = max(1, min(config.n_users, round(target_events / base.expected_events_per_user)))
    return dataclasses.replace(base, n_users=n_users)


def ingest_next_day(pipeline: Pipeline, config: SyntheticConfig) -> dict:
    """Events only (the catalogue is unchanged); session ids get a suffix so that they
    cannot merge with sessions of the first load."""

    def rename_sessions(frame: pd.DataFrame) -> pd.DataFrame:
        frame["session_id"] = frame["session_id"] + NEXT_DAY_SESSION_SUFFIX
        return frame

    frames = TimedFrames(SyntheticShop(config).events(), transform=rename_sessions)
    started = time.perf_counter()
    report = ingest.load_frames(pipeline.conn, "events", frames, source=f"{_shop_source(config)}:events",
                                **pipeline._load_kwargs())
    total_s = time.perf_counter() - started
    progress(f"next-day events loaded: {report.summary()} in {total_s:.2f} s")
    return {"users": config.n_users, "rows_read": report.rows_read, "loaded": report.loaded,
            "quarantined": report.quarantined, "duplicate": report.duplicate,
            "generation_s": round(frames.seconds, 3), "load_s": round(total_s - frames.seconds, 3)}


# ----------------------------------------------------------------------------- build


def build_summary(report, wall_s: float) -> dict:
    return {
        "mode": report.mode,
        "new_events": report.new_events,
        "users_recomputed": report.users_recomputed,
        "items_recomputed": report.items_recomputed,
        "table_seconds": report.seconds,
        "tables_s": round(sum(report.seconds.values()), 3),
        "wall_s": round(wall_s, 3),
        "rows": report.rows,
    }


# ----------------------------------------------------------------------------- feast


@contextlib.contextmanager
def quiet(enabled: bool):
    """Swallow what Feast prints to stdout (apply and materialize banners)."""
    if not enabled:
        yield
        return
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def materialize_views(pipeline: Pipeline, quiet_output: bool) -> dict:
    """``store.materialize`` from 1970 to now, one view at a time (what
    ``materialize.feast_store.materialize_online`` does in one call for fresh views)."""
    from materialize.feature_store.repo import FIRST_MATERIALIZATION_START, online_entity_counts

    store = pipeline.store
    end = dt.datetime.now(dt.timezone.utc)
    online = store.config.online_store
    views = {}
    for view in sorted(store.list_feature_views(), key=lambda v: v.name):
        source_table = view.batch_source.name  # data_sources.py: source name == table in schema interest
        source_rows = pipeline.conn.execute(
            sql.SQL("SELECT count(*) FROM interest.{}").format(sql.Identifier(source_table))
        ).fetchone()[0]
        pipeline.conn.commit()
        started = time.perf_counter()
        with quiet(quiet_output):
            store.materialize(start_date=FIRST_MATERIALIZATION_START, end_date=end, feature_views=[view.name])
        seconds = time.perf_counter() - started
        views[view.name] = {"source_table": source_table, "source_rows": source_rows, "seconds": round(seconds, 3),
                            "features": len(view.features)}
        progress(f"materialized {view.name}: {source_rows:,} source rows in {seconds:.2f} s")
    entities = online_entity_counts(store)
    for name, figures in views.items():
        table = f"{store.project}_{name}"
        online_rows = pipeline.conn.execute(
            sql.SQL("SELECT count(*) FROM {}.{}").format(sql.Identifier(online.db_schema), sql.Identifier(table))
        ).fetchone()[0]
        figures["online_entities"] = entities[name]
        figures["online_rows"] = online_rows  # one row per (entity, feature)
        figures["entities_per_s"] = rate(entities[name], figures["seconds"])
        figures["online_rows_per_s"] = rate(online_rows, figures["seconds"])
        figures["source_rows_per_s"] = rate(figures["source_rows"], figures["seconds"])
    pipeline.conn.commit()
    total_s = sum(v["seconds"] for v in views.values())
    return {
        "end": end.isoformat(),
        "views": views,
        "total_s": round(total_s, 3),
        "online_entities": sum(v["online_entities"] for v in views.values()),
        "online_rows": sum(v["online_rows"] for v in views.values()),
        "source_rows": sum(v["source_rows"] for v in views.values()),
    }


# ----------------------------------------------------------------------------- retrieval


def sample_entity_rows(conn: psycopg.Connection, n_rows: int, seed: int) -> pd.DataFrame:
    """``n_rows`` entity rows: the user and time of a random event, and a random catalogue
    item with its category (the candidate)."""
    conn.execute("SELECT setseed(%s)", (((seed % 1000) / 1000.0),))
    events = pd.DataFrame(
        conn.execute("SELECT user_id, event_timestamp FROM interest.events ORDER BY random() LIMIT %s",
                     (n_rows,)).fetchall(),
        columns=["user_id", "event_timestamp"],
    )
    items = pd.DataFrame(conn.execute("SELECT item_id, category_id FROM interest.items ORDER BY item_id").fetchall(),
                         columns=["item_id", "category_id"])
    conn.commit()
    picked = items.iloc[np.random.default_rng(seed).integers(0, len(items), len(events))].reset_index(drop=True)
    return pd.DataFrame(
        {
            "user_id": events["user_id"].astype("int64"),
            "item_id": picked["item_id"].astype("int64"),
            "category_id": picked["category_id"].astype("int64"),
            "event_timestamp": pd.to_datetime(events["event_timestamp"], utc=True),
        }
    )


def resolve_features(store, features):
    """A service name ("service:NAME") becomes the FeatureService; a list stays a list."""
    if isinstance(features, str) and features.startswith("service:"):
        return store.get_feature_service(features.split(":", 1)[1])
    return features


def plain_feature_refs(store) -> list[str]:
    return [f"{name}:{feature.name}" for name in PLAIN_VIEWS for feature in store.get_feature_view(name).features]


def _stock_worker(pg: PostgresSettings, pgvector: bool, repo_dir: str, entity_path: str, features,
                  result_path: str, channel) -> None:
    """Child process: stock ``get_historical_features(...).to_df()``, timed after imports."""
    os.environ["PGAPPNAME"] = STOCK_APPLICATION_NAME  # lets the parent cancel our query
    try:
        from materialize.feature_store.repo import open_store

        store = open_store(Path(repo_dir), pg, pgvector)
        silence_known_warnings()
        resolved = resolve_features(store, features)
        store.list_feature_views()  # registry loaded before the clock starts, as in the parent
        entity_df = pd.read_pickle(entity_path)
        channel.send(("ready", None))
        started = time.perf_counter()
        frame = store.get_historical_features(entity_df=entity_df, features=resolved).to_df()
        seconds = time.perf_counter() - started
        frame.to_pickle(result_path)
        channel.send(("done", seconds))
    except BaseException as error:  # reported by the parent
        channel.send(("error", f"{type(error).__name__}: {error}"))


def _cancel_stock_queries(conn: psycopg.Connection, database: str) -> int:
    rows = conn.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND application_name = %s",
        (database, STOCK_APPLICATION_NAME),
    ).fetchall()
    return len(rows)


def run_stock(pipeline: Pipeline, entity_df: pd.DataFrame, features, timeout_s: float, workdir: Path) -> dict:
    """Stock Feast in a spawned child process, killed after ``timeout_s`` of the timed call."""
    import multiprocessing

    entity_path = workdir / f"entities_{uuid.uuid4().hex}.pkl"
    result_path = workdir / f"stock_{uuid.uuid4().hex}.pkl"
    entity_df.to_pickle(entity_path)
    context = multiprocessing.get_context("spawn")
    parent_end, child_end = context.Pipe(duplex=False)
    process = context.Process(
        target=_stock_worker,
        args=(pipeline.settings.postgres, pipeline.pgvector, str(pipeline.settings.feature_repo_dir),
              str(entity_path), features, str(result_path), child_end),
        daemon=True,
    )
    process.start()
    child_end.close()
    outcome: dict = {"status": None, "seconds": None, "frame": None}
    try:
        if not parent_end.poll(STOCK_STARTUP_TIMEOUT_S):
            outcome.update(status="error", error="child did not start in time")
            return outcome
        kind, payload = parent_end.recv()
        if kind != "ready":
            outcome.update(status="error", error=payload)
            return outcome
        started = time.perf_counter()
        if not parent_end.poll(timeout_s):
            outcome.update(status="timeout", seconds=round(time.perf_counter() - started, 3))
            return outcome
        kind, payload = parent_end.recv()
        if kind == "done":
            outcome.update(status="done", seconds=round(payload, 3), frame=pd.read_pickle(result_path))
        else:
            outcome.update(status="error", error=payload)
        return outcome
    except EOFError:
        outcome.update(status="error", error=f"child exited with code {process.exitcode}")
        return outcome
    finally:
        if process.is_alive():
            process.kill()
        process.join(30)
        with psycopg.connect(pipeline.settings.postgres.conninfo(), autocommit=True) as admin:
            cancelled = _cancel_stock_queries(admin, pipeline.settings.postgres.database)
        if cancelled:
            progress(f"terminated {cancelled} stock Feast backend(s) left running")
        for path in (entity_path, result_path):
            path.unlink(missing_ok=True)


def _cell(value):
    """A comparable form of one frame cell: float array, float, or the value itself."""
    if value is None or value is pd.NA or value is pd.NaT:
        return math.nan
    if isinstance(value, (list, tuple, np.ndarray)):
        return np.asarray(value, dtype=np.float64)
    if isinstance(value, (bool, np.bool_, int, float, np.integer, np.floating)):
        return float(value)
    return value


def _same_cell(a, b) -> bool:
    a, b = _cell(a), _cell(b)
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        if not (isinstance(a, np.ndarray) and isinstance(b, np.ndarray)) or a.shape != b.shape:
            return False
        return bool(np.allclose(a, b, rtol=1e-6, atol=1e-9, equal_nan=True))
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)
    return a == b


def _sorted_by_keys(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.copy()
    timestamps = frame["event_timestamp"]
    frame["event_timestamp"] = (timestamps.dt.tz_convert("UTC") if isinstance(timestamps.dtype, pd.DatetimeTZDtype)
                                else timestamps.dt.tz_localize("UTC"))
    return frame.sort_values(ENTITY_KEYS, kind="stable").reset_index(drop=True)


def compare_frames(ours: pd.DataFrame, stock: pd.DataFrame, sample_rows: int, seed: int) -> dict:
    """Same rows (keys over the whole frame, non-null counts per column) and same values on a
    sample of rows, both frames sorted by the entity keys."""
    result = {"rows_ours": len(ours), "rows_stock": len(stock)}
    if len(ours) != len(stock):
        result.update(same_rows=False, same_values=False)
        return result
    ours, stock = _sorted_by_keys(ours), _sorted_by_keys(stock)
    keys_equal = all(
        np.array_equal(ours[k].to_numpy(dtype="int64" if k != "event_timestamp" else None),
                       stock[k].to_numpy(dtype="int64" if k != "event_timestamp" else None))
        for k in ENTITY_KEYS
    )
    columns = sorted((set(ours.columns) & set(stock.columns)) - set(ENTITY_KEYS))
    null_counts_differ = [c for c in columns if ours[c].isna().sum() != stock[c].isna().sum()]
    sample = np.sort(np.random.default_rng(seed).choice(len(ours), min(sample_rows, len(ours)), replace=False))
    mismatches = []
    for column in columns:
        a, b = ours[column].to_numpy()[sample], stock[column].to_numpy()[sample]
        for row, x, y in zip(sample.tolist(), a, b):
            if not _same_cell(x, y):
                mismatches.append(f"{column}@{row}: ours={x!r:.60} stock={y!r:.60}")
    result.update(
        same_rows=keys_equal,
        columns_compared=len(columns),
        columns_only_ours=sorted(set(ours.columns) - set(stock.columns)),
        columns_only_stock=sorted(set(stock.columns) - set(ours.columns)),
        null_counts_differ=null_counts_differ,
        sample_rows=len(sample),
        cells_compared=len(sample) * len(columns),
        mismatches=len(mismatches),
        mismatch_examples=mismatches[:5],
        same_values=keys_equal and not mismatches and not null_counts_differ,
    )
    return result


def measure_retrieval(pipeline: Pipeline, n_rows: int, feature_set: str, features, args, workdir: Path) -> dict:
    """Ours (``training_frame``) then stock Feast, on the same entity rows."""
    from materialize.feature_store.retrieval import training_frame

    store = pipeline.store
    entity_df = sample_entity_rows(pipeline.conn, n_rows, seed=args.seed + n_rows)
    resolved = resolve_features(store, features)
    record = {"features": feature_set, "entity_rows": len(entity_df), "load_before": load_average()}
    ours_seconds, ours = [], None
    with psycopg.connect(pipeline.settings.postgres.conninfo(), autocommit=True) as conn:
        for _ in range(args.repeats):
            started = time.perf_counter()
            ours = training_frame(store, conn, entity_df, resolved)
            ours_seconds.append(round(time.perf_counter() - started, 3))
    best = min(ours_seconds)
    record.update(ours_s=best, ours_runs_s=ours_seconds, ours_rows_per_s=rate(len(entity_df), best),
                  result_rows=len(ours), result_columns=len(ours.columns))
    progress(f"{feature_set} x {n_rows:,} rows: ours {best:.2f} s ({len(ours):,} rows, {len(ours.columns)} columns)")

    if args.skip_stock:
        record.update(stock_status="skipped")
        return record
    progress(f"{feature_set} x {n_rows:,} rows: stock Feast (time limit {args.stock_timeout_s:.0f} s) ...")
    stock = run_stock(pipeline, entity_df, features, args.stock_timeout_s, workdir)
    record["stock_status"] = stock["status"]
    record["load_after"] = load_average()
    if stock["status"] == "done":
        record.update(stock_s=stock["seconds"], stock_rows_per_s=rate(len(entity_df), stock["seconds"]),
                      ratio_stock_over_ours=round(stock["seconds"] / best, 2))
        record["check"] = compare_frames(ours, stock["frame"], args.check_rows, seed=args.seed)
        progress(f"{feature_set} x {n_rows:,} rows: stock {stock['seconds']:.2f} s, "
                 f"ratio {record['ratio_stock_over_ours']}x, same values: {record['check']['same_values']}")
    elif stock["status"] == "timeout":
        record.update(stock_s=None, stock_lower_bound_s=args.stock_timeout_s,
                      ratio_lower_bound=round(args.stock_timeout_s / best, 1))
        progress(f"{feature_set} x {n_rows:,} rows: stock > {args.stock_timeout_s:.0f} s (killed), "
                 f"ratio > {record['ratio_lower_bound']}x")
    else:
        record["stock_error"] = stock.get("error")
        progress(f"{feature_set} x {n_rows:,} rows: stock failed: {stock.get('error')}")
    return record


# ----------------------------------------------------------------------------- report


def _fmt(value, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _table(headers: list[str], rows: list[list]) -> str:
    cells = [[str(h) for h in headers]] + [[c if isinstance(c, str) else _fmt(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for n, row in enumerate(cells):
        lines.append("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def render(results: dict) -> str:
    m, s, ing = results["machine"], results["sizes"], results["ingestion"]
    out = [
        "",
        "=" * 100,
        f"Feature store benchmark, {results['date']}",
        f"command: {results['command']}",
        f"machine: {m['cpu_model']}, {m['cpu_cores']} cores, {m['ram_gib']} GiB RAM; {m['platform']}",
        f"software: Python {m['python']}, torch {m['torch']}, feast {m['feast']}, pandas {m['pandas']}, "
        f"pyarrow {m['pyarrow']}, psycopg {m['psycopg']}",
        f"postgres: {m['postgres']}",
        f"postgres settings: {m['postgres_settings']}",
        f"load average (1/5/15 min): start {results['load_average']['start']}, end {results['load_average']['end']}"
        " (2 cores; other work ran concurrently)",
        "",
        "Sizes",
        _table(["what", "rows"], [["events", s["events"]], ["users", s["users"]], ["items", s["items"]],
                                  *[[f"feature table {k}", v] for k, v in s["feature_tables"].items()],
                                  ["online store rows (entity x feature)", s["online_rows"]]]),
        "",
        "Ingestion (validation + COPY + insert; generation of the synthetic frames timed apart)",
        _table(
            ["load", "rows loaded", "seconds", "rows/s", "generation s", "rows/s incl. generation"],
            [["items", ing["items"]["loaded"], ing["items"]["seconds"], ing["items"]["rows_per_s"], "-", "-"],
             ["events", ing["events"]["loaded"], ing["events"]["load_s"], ing["events"]["rows_per_s"],
              ing["events"]["generation_s"], ing["events"]["rows_per_s_with_generation"]]],
        ),
    ]
    e = results["embedding"]
    out += [
        "",
        "Embedding (pipeline.embed: all-MiniLM-L6-v2 on CPU)",
        _table(["texts", "seconds in model", "texts/s in model", "wall s (model load, DB writes)", "texts/s wall",
                "torch threads"],
               [[e["texts_embedded"], e["seconds_in_model"], e["texts_per_s_in_model"], e["wall_s"],
                 e["texts_per_s_wall"], e["torch_threads"]]]),
    ]
    full, inc = results["build"]["full"], results["build"]["incremental"]
    tables = list(full["table_seconds"])
    out += [
        "",
        f"Feature build (pipeline.build); incremental after {inc['next_day_events']['loaded']:,} next-day events "
        f"({inc['next_day_events']['users']:,} users, {inc['next_day_events']['loaded'] / max(1, ing['events']['loaded']):.1%}"
        " of the first load)",
        _table(
            ["table", "full s", "incremental s", "rows after full", "rows after incremental"],
            [[t, full["table_seconds"][t], inc["table_seconds"].get(t), full["rows"].get(t), inc["rows"].get(t)]
             for t in tables]
            + [["sum of tables", full["tables_s"], inc["tables_s"], "", ""],
               ["wall (incl. affected sets, ANALYZE, counts)", full["wall_s"], inc["wall_s"], "", ""]],
        ),
        f"incremental: {inc['users_recomputed']:,} users and {inc['items_recomputed']:,} items recomputed; "
        f"wall {inc['wall_s'] / full['wall_s']:.1%} of the full build",
    ]
    f = results["feast"]
    mat = f["materialize"]
    out += [
        "",
        f"Feast: import {f['import_s']:.2f} s, apply {f['apply_s']:.2f} s; materialize (1970 -> now, one view at a time, "
        f"total {mat['total_s']:.2f} s)",
        "  source rows = rows of the view's feature table (all read by the 'latest per entity' query);",
        "  entities = online entities written (latest row each); online rows = entities x features",
        _table(
            ["view", "source table", "source rows", "seconds", "entities", "online rows", "entities/s",
             "online rows/s", "source rows/s"],
            [[name, v["source_table"], v["source_rows"], v["seconds"], v["online_entities"], v["online_rows"],
              v["entities_per_s"], v["online_rows_per_s"], v["source_rows_per_s"]] for name, v in mat["views"].items()]
            + [["total", "", mat["source_rows"], mat["total_s"], mat["online_entities"], mat["online_rows"],
                rate(mat["online_entities"], mat["total_s"]), rate(mat["online_rows"], mat["total_s"]),
                rate(mat["source_rows"], mat["total_s"])]],
        ),
        "",
        "Historical retrieval (point in time), ours = training_frame, stock = get_historical_features(...).to_df()",
    ]
    rows = []
    for r in results["retrieval"]:
        if r["stock_status"] == "done":
            stock, ratio = r["stock_s"], f"{r['ratio_stock_over_ours']:.1f}x"
            check = r["check"]
            same = (f"rows {'yes' if check['same_rows'] else 'NO'}, values "
                    f"{'yes' if check['same_values'] else 'NO'} ({check['cells_compared']:,} cells)")
        elif r["stock_status"] == "timeout":
            stock, ratio, same = f"> {r['stock_lower_bound_s']:.0f}", f"> {r['ratio_lower_bound']:.1f}x", "-"
        else:
            stock, ratio, same = r["stock_status"], "-", r.get("stock_error") or "-"
        rows.append([r["features"], r["entity_rows"], r["result_columns"], r["ours_s"], r["ours_rows_per_s"], stock,
                     ratio, same, f"{r['load_before'][0]:.2f}"])
    out += [
        _table(["features", "entity rows", "columns", "ours s", "ours rows/s", "stock s", "stock/ours", "check",
                "load"], rows),
        "=" * 100,
    ]
    return "\n".join(out)


# ----------------------------------------------------------------------------- main


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000, help="synthetic events to generate (about)")
    parser.add_argument("--items", type=int, default=3000, help="catalogue size")
    parser.add_argument("--entity-rows", type=int, nargs="+", default=[10_000, 100_000],
                        help="entity-row counts for historical retrieval")
    parser.add_argument("--incremental-fraction", type=float, default=0.01,
                        help="size of the extra day of events, as a share of the first load")
    parser.add_argument("--stock-timeout-s", type=float, default=900.0,
                        help="time limit of one stock get_historical_features call")
    parser.add_argument("--skip-stock", action="store_true", help="time only our retrieval")
    parser.add_argument("--repeats", type=int, default=1, help="runs of our retrieval per case (best is reported)")
    parser.add_argument("--check-rows", type=int, default=2000, help="rows whose values are compared, ours vs stock")
    parser.add_argument("--seed", type=int, default=7, help="seed of the synthetic shop and of the entity sample")
    parser.add_argument("--keep-db", action="store_true", help="keep the benchmark database afterwards")
    parser.add_argument("--progress", action="store_true", help="show the pipeline's progress bars and Feast output")
    parser.add_argument("--out", type=Path, default=PROJECT_DIR / "bench" / "results" / "feature_store.json",
                        help="JSON file for the figures")
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    settings = load_settings()
    pg = settings.postgres.with_database(f"interest_bench_{uuid.uuid4().hex[:10]}")
    results: dict = {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join([Path(sys.argv[0]).as_posix(), *(sys.argv[1:] if argv is None else argv)]),
        "database": pg.database,
        "load_average": {"start": load_average()},
    }
    progress(f"benchmark database {pg.database} on {'embedded' if pg.embedded else 'external'} server {pg.host}")
    workdir = Path(tempfile.mkdtemp(prefix="feature_store_bench_"))
    try:
        with Pipeline(dataclasses.replace(settings, postgres=pg), progress=args.progress) as pipeline:
            results["machine"] = machine_info(pipeline.conn)
            pipeline.conn.commit()

            # 1. ingestion
            config = SyntheticConfig.for_events(args.events, n_items=args.items, seed=args.seed)
            progress(f"step 1: ingest a synthetic shop of about {args.events:,} events ({config.n_users:,} users)")
            results["ingestion"] = ingest_shop(pipeline, config)

            # 2. embedding
            progress("step 2: embed item texts")
            import torch

            started = time.perf_counter()
            embedding = pipeline.embed()
            wall_s = time.perf_counter() - started
            results["embedding"] = {
                "texts_embedded": embedding.texts_embedded,
                "seconds_in_model": round(embedding.seconds_in_model, 3),
                "texts_per_s_in_model": rate(embedding.texts_embedded, embedding.seconds_in_model),
                "wall_s": round(wall_s, 3),
                "texts_per_s_wall": rate(embedding.texts_embedded, wall_s),
                "torch_threads": torch.get_num_threads(),
            }
            progress(f"embedded {embedding.texts_embedded:,} texts: {embedding.seconds_in_model:.2f} s in the model, "
                     f"{wall_s:.2f} s wall")

            # 3. feature build, full then incremental
            progress("step 3: full feature build")
            started = time.perf_counter()
            full = pipeline.build(full=True)
            results["build"] = {"full": build_summary(full, time.perf_counter() - started)}
            progress(f"full build: {results['build']['full']['wall_s']:.2f} s {full.seconds}")

            extra = next_day_config(config, round(results["ingestion"]["events"]["loaded"] * args.incremental_fraction))
            progress(f"step 3b: load one more day of events ({extra.n_users:,} users) and build incrementally")
            next_day = ingest_next_day(pipeline, extra)
            started = time.perf_counter()
            incremental = pipeline.build()
            results["build"]["incremental"] = build_summary(incremental, time.perf_counter() - started)
            results["build"]["incremental"]["next_day_events"] = next_day
            results["build"]["incremental"]["wall_share_of_full"] = round(
                results["build"]["incremental"]["wall_s"] / results["build"]["full"]["wall_s"], 3)
            progress(f"incremental build ({incremental.mode}): {results['build']['incremental']['wall_s']:.2f} s "
                     f"{incremental.seconds}")

            # 4. feast apply and materialize
            progress("step 4: feast apply and materialize")
            started = time.perf_counter()
            import feast  # noqa: F401  (7 to 9 s; timed apart from apply)

            import_s = time.perf_counter() - started
            silence_known_warnings()
            started = time.perf_counter()
            with quiet(not args.progress):
                pipeline.apply()
            apply_s = time.perf_counter() - started
            progress(f"feast imported in {import_s:.2f} s, applied in {apply_s:.2f} s")
            results["feast"] = {"import_s": round(import_s, 3), "apply_s": round(apply_s, 3),
                                "materialize": materialize_views(pipeline, quiet_output=not args.progress)}

            # 5. historical retrieval
            store = pipeline.store
            feature_sets = {"service user_item_training (with ODFV)": f"service:{TRAINING_SERVICE}",
                            "plain list (no ODFV)": plain_feature_refs(store)}
            results["retrieval"] = []
            for n_rows in args.entity_rows:
                for name, features in feature_sets.items():
                    progress(f"step 5: retrieval, {name}, {n_rows:,} entity rows")
                    results["retrieval"].append(measure_retrieval(pipeline, n_rows, name, features, args, workdir))

            # sizes
            conn = pipeline.conn
            events, users = conn.execute("SELECT count(*), count(DISTINCT user_id) FROM interest.events").fetchone()
            items = conn.execute("SELECT count(*) FROM interest.items").fetchone()[0]
            conn.commit()
            results["sizes"] = {
                "events": events, "users": users, "items": items,
                "feature_tables": results["build"]["incremental"]["rows"],
                "online_rows": results["feast"]["materialize"]["online_rows"],
            }
    finally:
        results["load_average"]["end"] = load_average()
        if args.keep_db:
            progress(f"kept database {pg.database}")
        else:
            drop_database(pg)
            progress(f"dropped database {pg.database}")
        for path in workdir.iterdir():
            path.unlink()
        workdir.rmdir()

    print(render(results), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    progress(f"figures written to {args.out}")
    return results


if __name__ == "__main__":
    main()
