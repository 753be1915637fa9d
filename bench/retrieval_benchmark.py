"""Point-in-time historical retrieval: ours against stock Feast, on the same entity rows.

On a fresh PostgreSQL database holding a synthetic shop, its item embeddings, its feature
tables and the applied Feast repo (prepared first, not timed): training frames for
sampled entity rows, with the ``user_item_training`` service (on-demand view included) and
with a plain feature list (Postgres only), through
``materialize.feature_store.retrieval.training_frame`` and through stock
``FeatureStore.get_historical_features`` (in a child process with a time limit, killed
after it). The two frames are compared row by row and on a sample of cells.

Usage (from the project root)::

    .venv/bin/python bench/retrieval_benchmark.py --events 1000000 --entity-rows 10000 100000

Nothing here asserts on time; the stock/ours value check is reported, not raised.
"""
from __future__ import annotations

import math
import os
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import psycopg

from harness import BenchRun, Subject, load_average, progress, rate, run_subjects, silence_known_warnings, table
from materialize.pipeline import Pipeline
from materialize.settings import PostgresSettings

TRAINING_SERVICE = "user_item_training"
PLAIN_VIEWS = ("user_activity", "user_interest_shift", "user_recent_sequence", "item_popularity", "item_catalog",
               "category_trends")
"""The service's feature views without its on-demand view (and so without the two embedding
views that the on-demand view pulls in): the Postgres point-in-time join in isolation."""
ENTITY_KEYS = ["user_id", "item_id", "category_id", "event_timestamp"]
STOCK_APPLICATION_NAME = "feature_store_benchmark_stock"
STOCK_STARTUP_TIMEOUT_S = 600  # child process: imports and store opening, not timed


def add_options(parser) -> None:
    parser.add_argument("--entity-rows", type=int, nargs="+", default=[10_000, 100_000],
                        help="entity-row counts for historical retrieval")
    parser.add_argument("--stock-timeout-s", type=float, default=900.0,
                        help="time limit of one stock get_historical_features call")
    parser.add_argument("--skip-stock", action="store_true", help="time only our retrieval")
    parser.add_argument("--repeats", type=int, default=1, help="runs of our retrieval per case (best is reported)")
    parser.add_argument("--check-rows", type=int, default=2000, help="rows whose values are compared, ours vs stock")


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
        process.join(timeout=30 if outcome["status"] == "done" else 0)  # a finished child exits by itself
        if process.is_alive():
            process.kill()
            process.join()
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




def measure(run: BenchRun) -> list[dict]:
    store = run.pipeline.store
    feature_sets = {"service user_item_training (with ODFV)": f"service:{TRAINING_SERVICE}",
                    "plain list (no ODFV)": plain_feature_refs(store)}
    records = []
    with tempfile.TemporaryDirectory(prefix="retrieval_bench_") as workdir:
        for n_rows in run.args.entity_rows:
            for name, features in feature_sets.items():
                progress(f"retrieval, {name}, {n_rows:,} entity rows")
                records.append(measure_retrieval(run.pipeline, n_rows, name, features, run.args, Path(workdir)))
    return records


def render(records: list[dict]) -> list[str]:
    rows = []
    for r in records:
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
    return [
        "Historical retrieval (point in time), ours = training_frame, stock = get_historical_features(...).to_df()",
        table(["features", "entity rows", "columns", "ours s", "ours rows/s", "stock s", "stock/ours", "check",
               "load"], rows),
    ]


SUBJECT = Subject(key="retrieval", title="Historical retrieval", needs=("shop", "embeddings", "features", "feast"),
                  provides=(), measure=measure, render=render, add_options=add_options)

if __name__ == "__main__":
    run_subjects([SUBJECT], "Retrieval benchmark", __doc__.split("\n\n")[0], "retrieval.json")
