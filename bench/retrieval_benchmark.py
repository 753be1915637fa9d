"""Point-in-time historical retrieval three ways, on the same entity rows: our offline
store plugin, stock Feast's Postgres offline store, and a hand-written lower bound.

On a fresh PostgreSQL database holding a synthetic shop, its item embeddings, its feature
tables and the applied Feast repo (prepared first, not timed), for each entity-row count:

- **plugin**: ``FeatureStore.get_historical_features(...).to_df()`` through the project's
  ``feature_repo`` (``offline_store: type: ...LateralJoinPostgreSQLOfflineStore``);
- **stock**: the same call through a copy of the repo whose ``feature_store.yaml`` says
  ``offline_store: type: postgres``, stopped after ``--stock-timeout-s`` (its backend is
  terminated) and then reported as a lower bound;
- **lower bound**: one hand-written SQL query, a ``LEFT JOIN LATERAL (... ORDER BY
  event_timestamp DESC, created_timestamp DESC LIMIT 1)`` per source table over the
  entity rows in a temporary table, streamed out with ``COPY (...) TO STDOUT (FORMAT
  binary)`` and counted in bytes, never decoded: the cheapest way to get the same values
  out. Its upload of the entity rows (binary COPY) is timed apart.

Each call runs in its own spawned child process (imports and store opening before the
clock starts), so its peak RSS is its own: the child's ``ru_maxrss``, and for a stopped
child the largest RSS the parent sampled. Temp bytes are the change of
``pg_stat_database.temp_bytes`` of the database around the call. The plugin and the lower
bound run for every size first, stock after them. Where stock finished, its frame is
compared with the plugin's, rows and values.

The features are a plain list: every feature of ``user_activity``, ``user_interest_shift``,
``user_recent_sequence``, ``item_popularity``, ``item_catalog`` and ``category_trends``
(the ``user_item_training`` service minus its on-demand view), so that all three ways
compute the same Postgres join.

Usage (from the project root)::

    .venv/bin/python bench/retrieval_benchmark.py --events 1000000 --entity-rows 10000 100000

Nothing here asserts on time; the plugin/stock value check is reported, not raised.
"""
from __future__ import annotations

import contextlib
import math
import os
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import psycopg
from psycopg import sql

from harness import (BenchRun, Subject, database_temp_bytes, feature_repo_copy, load_average, progress, run_subjects,
                     silence_known_warnings, table)
from materialize.settings import PostgresSettings

PLAIN_VIEWS = ("user_activity", "user_interest_shift", "user_recent_sequence", "item_popularity", "item_catalog",
               "category_trends")
"""The ``user_item_training`` service's feature views without its on-demand view (and so
without the two embedding views that the on-demand view pulls in)."""
ENTITY_KEYS = ["user_id", "item_id", "category_id", "event_timestamp"]
SOURCE_SCHEMA = "interest"  # data_sources.py: source name == table in schema interest
WAYS = ("plugin", "lower_bound", "stock")
APPLICATION_NAME = "retrieval_benchmark_{way}"  # lets the parent terminate a child's backend
STARTUP_TIMEOUT_S = 600  # child process: imports and store opening, not timed
RSS_SAMPLE_S = 0.25


def add_options(parser) -> None:
    parser.add_argument("--entity-rows", type=int, nargs="+", default=[10_000, 100_000, 1_000_000],
                        help="entity-row counts for historical retrieval")
    parser.add_argument("--stock-timeout-s", type=float, default=600.0,
                        help="time limit of one stock get_historical_features call (reported as a lower bound)")
    parser.add_argument("--skip-stock", action="store_true", help="time only the plugin and the lower bound")
    parser.add_argument("--check-rows", type=int, default=2000, help="rows whose values are compared, plugin vs stock")
    parser.add_argument("--check-max-rows", type=int, default=200_000,
                        help="largest entity-row count whose plugin frame is kept for the comparison with stock")
    parser.add_argument("--temp-file-limit", default="12GB",
                        help="temp_file_limit of the benchmark database during retrieval, a guard against stock "
                             "Feast filling the disk ('' for none); a call that hits it is reported as stopped")


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


def plain_feature_refs(store) -> list[str]:
    return [f"{name}:{feature.name}" for name in PLAIN_VIEWS for feature in store.get_feature_view(name).features]


# ----------------------------------------------------------------------------- the lower bound


def lower_bound_lookups(store) -> list[dict]:
    """One lookup per source table of ``PLAIN_VIEWS``: its table, join key, ttl (seconds,
    0 = none) and the feature columns of every view it feeds (views that share a table and
    ttl share one lookup: a lower bound needs to read a row only once)."""
    lookups: dict[tuple, dict] = {}
    for name in PLAIN_VIEWS:
        view = store.get_feature_view(name)
        (join_key,) = view.join_keys
        ttl_s = int(view.ttl.total_seconds()) if view.ttl else 0
        key = (view.batch_source.name, join_key, ttl_s)
        lookup = lookups.setdefault(key, {"table": key[0], "join_key": join_key, "ttl_s": ttl_s, "columns": []})
        lookup["columns"] += [f.name for f in view.features if f.name not in lookup["columns"]]
    return list(lookups.values())


def lower_bound_sql(lookups: list[dict], entity_table: str) -> sql.Composed:
    """The hand-written point-in-time query: the entity rows and, per lookup,
    ``LEFT JOIN LATERAL (SELECT cols FROM table WHERE key = e.key AND ts <= e.ts
    [AND ts >= e.ts - ttl] ORDER BY ts DESC, created DESC LIMIT 1)``, which the tables'
    primary keys (join key, event_timestamp) answer by one index descent per entity row."""
    selected = [sql.SQL("e.{}").format(sql.Identifier(c)) for c in ENTITY_KEYS]
    joins = []
    for number, lookup in enumerate(lookups):
        alias = sql.Identifier(f"l{number}")
        selected += [sql.SQL("{}.{}").format(alias, sql.Identifier(c)) for c in lookup["columns"]]
        ttl = (sql.SQL(" AND s.event_timestamp >= e.event_timestamp - make_interval(secs => {})").format(
            sql.Literal(lookup["ttl_s"])) if lookup["ttl_s"] else sql.SQL(""))
        joins.append(sql.SQL(
            "LEFT JOIN LATERAL (SELECT {columns} FROM {schema}.{table} AS s "
            "WHERE s.{key} = e.{key} AND s.event_timestamp <= e.event_timestamp{ttl} "
            "ORDER BY s.event_timestamp DESC, s.created_timestamp DESC LIMIT 1) AS {alias} ON true"
        ).format(columns=sql.SQL(", ").join(sql.SQL("s.{}").format(sql.Identifier(c)) for c in lookup["columns"]),
                 schema=sql.Identifier(SOURCE_SCHEMA), table=sql.Identifier(lookup["table"]),
                 key=sql.Identifier(lookup["join_key"]), ttl=ttl, alias=alias))
    return sql.SQL("SELECT {} FROM {} AS e {}").format(sql.SQL(", ").join(selected), sql.Identifier(entity_table),
                                                      sql.SQL(" ").join(joins))


def _lower_bound_call(pg: PostgresSettings, entity_df: pd.DataFrame, lookups: list[dict]) -> dict:
    """Upload the entity rows (binary COPY into a temporary table), then stream the query's
    result out with binary COPY, counting bytes; each part timed."""
    table_name = f"lower_bound_entities_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg.conninfo()) as conn, conn.cursor() as cur:
        started = time.perf_counter()
        cur.execute(sql.SQL("CREATE TEMP TABLE {} (user_id bigint, item_id bigint, category_id bigint, "
                            "event_timestamp timestamptz) ON COMMIT DROP").format(sql.Identifier(table_name)))
        with cur.copy(sql.SQL("COPY {} FROM STDIN (FORMAT binary)").format(sql.Identifier(table_name))) as copy:
            copy.set_types(["int8", "int8", "int8", "timestamptz"])
            for row in zip(entity_df["user_id"].tolist(), entity_df["item_id"].tolist(),
                           entity_df["category_id"].tolist(), entity_df["event_timestamp"].tolist()):
                copy.write_row(row)
        upload_s = time.perf_counter() - started
        started = time.perf_counter()
        n_bytes = 0
        with cur.copy(sql.SQL("COPY ({}) TO STDOUT (FORMAT binary)").format(
                lower_bound_sql(lookups, table_name))) as copy:
            for block in copy:
                n_bytes += len(block)
        seconds = time.perf_counter() - started
        rows = cur.rowcount
        conn.rollback()  # drops the temporary table
    return {"seconds": seconds, "upload_s": round(upload_s, 3), "rows": rows, "bytes_out": n_bytes}


# ----------------------------------------------------------------------------- one call in a child process


def _rss_bytes() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def _peak_rss_bytes() -> int:
    """Peak RSS of this process image (``VmHWM``). Not ``ru_maxrss``: Linux keeps that across
    fork and exec, so a spawned child would report at least its parent's RSS at the fork."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def _retrieval_worker(way: str, pg: PostgresSettings, pgvector: bool, repo_dir: str, entity_path: str,
                      result_path: str | None, channel) -> None:
    """Child process: one timed retrieval (``way``), after imports and store opening.

    Sends ``("ready", rss)``, then ``("done", figures)`` or ``("error", message)``.
    """
    os.environ["PGAPPNAME"] = APPLICATION_NAME.format(way=way)  # libpq: psycopg and ADBC alike
    try:
        from materialize.feature_store.repo import open_store

        store = open_store(Path(repo_dir), pg, pgvector)
        silence_known_warnings()
        refs = plain_feature_refs(store)
        lookups = lower_bound_lookups(store)
        if way != "lower_bound":  # warm the driver imports outside the clock
            import adbc_driver_postgresql.dbapi  # noqa: F401
        entity_df = pd.read_parquet(entity_path)
        channel.send(("ready", _rss_bytes()))
        if way == "lower_bound":
            figures = _lower_bound_call(pg, entity_df, lookups)
        else:
            started = time.perf_counter()
            frame = store.get_historical_features(entity_df=entity_df, features=refs).to_df()
            figures = {"seconds": time.perf_counter() - started, "rows": len(frame), "columns": len(frame.columns)}
        figures["peak_rss_bytes"] = _peak_rss_bytes()
        if way != "lower_bound" and result_path:
            frame.to_parquet(result_path)  # after the clock and the RSS reading
        channel.send(("done", figures))
    except BaseException as error:  # reported by the parent
        channel.send(("error", f"{type(error).__name__}: {error}"[:2000]))


def _terminate_backends(pg: PostgresSettings, way: str) -> int:
    with psycopg.connect(pg.conninfo(), autocommit=True) as conn:
        return len(conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND application_name = %s",
            (pg.database, APPLICATION_NAME.format(way=way)),
        ).fetchall())


def run_call(way: str, pg: PostgresSettings, pgvector: bool, repo_dir: Path, entity_path: Path, timeout_s: float,
             result_path: Path | None = None) -> dict:
    """One retrieval in a spawned child process, stopped after ``timeout_s`` of the timed
    call (its Postgres backend terminated); figures with temp bytes and peak RSS."""
    import multiprocessing

    import psutil

    context = multiprocessing.get_context("spawn")
    parent_end, child_end = context.Pipe(duplex=False)
    process = context.Process(target=_retrieval_worker, daemon=True,
                              args=(way, pg, pgvector, str(repo_dir), str(entity_path),
                                    str(result_path) if result_path else None, child_end))
    process.start()
    child_end.close()
    outcome: dict = {"way": way, "status": None, "seconds": None}
    peak_rss, temp_before = 0, None
    try:
        if not parent_end.poll(STARTUP_TIMEOUT_S):
            outcome.update(status="error", error="child did not start in time")
            return outcome
        kind, payload = parent_end.recv()
        if kind != "ready":
            outcome.update(status="error", error=payload)
            return outcome
        outcome["rss_before_call_mib"] = round(payload / 2**20, 1)
        temp_before = database_temp_bytes(pg)
        child = psutil.Process(process.pid)
        started = time.perf_counter()
        while not parent_end.poll(RSS_SAMPLE_S):
            with contextlib.suppress(psutil.Error):
                peak_rss = max(peak_rss, child.memory_info().rss)
            if time.perf_counter() - started > timeout_s:
                outcome.update(status="timeout", seconds=round(time.perf_counter() - started, 3))
                break
        else:
            kind, payload = parent_end.recv()
            if kind == "done":
                outcome["sampled_peak_rss_mib"] = round(peak_rss / 2**20, 1) if peak_rss else None
                peak_rss = max(peak_rss, payload.pop("peak_rss_bytes"))
                outcome.update(status="done", **payload)
                outcome["seconds"] = round(payload["seconds"], 3)
            else:
                outcome.update(status="error", error=payload, seconds=round(time.perf_counter() - started, 3))
    except EOFError:
        outcome.update(status="error", error=f"child exited with code {process.exitcode}")
    finally:
        process.join(timeout=120 if outcome["status"] == "done" else 0)  # a finished child exits by itself
        if process.is_alive():
            process.kill()
            process.join()
        terminated = _terminate_backends(pg, way)
        if terminated:
            progress(f"terminated {terminated} {way} backend(s) left running")
    if temp_before is not None:
        outcome["temp_bytes"] = database_temp_bytes(pg) - temp_before
    outcome["peak_rss_mib"] = round(peak_rss / 2**20, 1) if peak_rss else None
    return outcome


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


def compare_frames(plugin: pd.DataFrame, stock: pd.DataFrame, sample_rows: int, seed: int) -> dict:
    """Same rows (keys over the whole frame, non-null counts per column) and same values on a
    sample of rows, both frames sorted by the entity keys."""
    result = {"rows_plugin": len(plugin), "rows_stock": len(stock)}
    if len(plugin) != len(stock):
        result.update(same_rows=False, same_values=False)
        return result
    plugin, stock = _sorted_by_keys(plugin), _sorted_by_keys(stock)
    keys_equal = all(
        np.array_equal(plugin[k].to_numpy(dtype="int64" if k != "event_timestamp" else None),
                       stock[k].to_numpy(dtype="int64" if k != "event_timestamp" else None))
        for k in ENTITY_KEYS
    )
    columns = sorted((set(plugin.columns) & set(stock.columns)) - set(ENTITY_KEYS))
    null_counts_differ = [c for c in columns if plugin[c].isna().sum() != stock[c].isna().sum()]
    sample = np.sort(np.random.default_rng(seed).choice(len(plugin), min(sample_rows, len(plugin)), replace=False))
    mismatches = []
    for column in columns:
        a, b = plugin[column].to_numpy()[sample], stock[column].to_numpy()[sample]
        for row, x, y in zip(sample.tolist(), a, b):
            if not _same_cell(x, y):
                mismatches.append(f"{column}@{row}: plugin={x!r:.60} stock={y!r:.60}")
    result.update(
        same_rows=keys_equal,
        columns_compared=len(columns),
        columns_only_plugin=sorted(set(plugin.columns) - set(stock.columns)),
        columns_only_stock=sorted(set(stock.columns) - set(plugin.columns)),
        null_counts_differ=null_counts_differ,
        sample_rows=len(sample),
        cells_compared=len(sample) * len(columns),
        mismatches=len(mismatches),
        mismatch_examples=mismatches[:5],
        same_values=keys_equal and not mismatches and not null_counts_differ,
    )
    return result


# ----------------------------------------------------------------------------- the three ways


@contextlib.contextmanager
def temp_file_limit(pg: PostgresSettings, limit: str):
    """``temp_file_limit`` of the database for new sessions while the block runs (a guard:
    stock Feast's join can write tens of GB of temp files)."""
    if not limit:
        yield
        return
    with psycopg.connect(pg.conninfo(), autocommit=True) as conn:
        conn.execute(sql.SQL("ALTER DATABASE {} SET temp_file_limit = {}").format(
            sql.Identifier(pg.database), sql.Literal(limit)))
    try:
        yield
    finally:
        with psycopg.connect(pg.conninfo(), autocommit=True) as conn:
            conn.execute(sql.SQL("ALTER DATABASE {} RESET temp_file_limit").format(sql.Identifier(pg.database)))


def _summary(way: str, n_rows: int, call: dict) -> str:
    if call["status"] == "done":
        return (f"{way} x {n_rows:,} rows: {call['seconds']:.2f} s, {call.get('rows', 0):,} rows, temp "
                f"{call.get('temp_bytes', 0) / 2**20:,.0f} MiB, peak RSS {call['peak_rss_mib']} MiB")
    return f"{way} x {n_rows:,} rows: {call['status']} after {call.get('seconds')} s: {call.get('error', '')}"[:400]


def measure(run: BenchRun) -> dict:
    pipeline, args = run.pipeline, run.args
    pg, pgvector = pipeline.settings.postgres, pipeline.pgvector
    plugin_repo = pipeline.settings.feature_repo_dir
    records = []
    with tempfile.TemporaryDirectory(prefix="retrieval_bench_") as workdir_name, \
            temp_file_limit(pg, args.temp_file_limit):
        workdir = Path(workdir_name)
        stock_repo = feature_repo_copy(plugin_repo, workdir / "stock_repo", offline_store_type="postgres")
        entity_paths, plugin_frames = {}, {}
        for n_rows in args.entity_rows:
            entity_df = sample_entity_rows(pipeline.conn, n_rows, seed=args.seed + n_rows)
            entity_paths[n_rows] = workdir / f"entities_{n_rows}.parquet"
            entity_df.to_parquet(entity_paths[n_rows])
            record = {"entity_rows": len(entity_df), "load_before": load_average()}
            if n_rows <= args.check_max_rows and not args.skip_stock:
                plugin_frames[n_rows] = workdir / f"plugin_{n_rows}.parquet"
            for way, repo in (("plugin", plugin_repo), ("lower_bound", plugin_repo)):
                progress(f"retrieval, {way}, {n_rows:,} entity rows ...")
                record[way] = run_call(way, pg, pgvector, repo, entity_paths[n_rows], timeout_s=math.inf,
                                       result_path=plugin_frames.get(n_rows) if way == "plugin" else None)
                progress(_summary(way, n_rows, record[way]))
            records.append(record)
        for record in records:
            n_rows = record["entity_rows"]
            if args.skip_stock:
                record["stock"] = {"way": "stock", "status": "skipped"}
                continue
            progress(f"retrieval, stock, {n_rows:,} entity rows (time limit {args.stock_timeout_s:.0f} s) ...")
            record["stock"] = run_call("stock", pg, pgvector, stock_repo, entity_paths[n_rows],
                                       timeout_s=args.stock_timeout_s, result_path=workdir / f"stock_{n_rows}.parquet")
            record["stock_limit_s"] = args.stock_timeout_s
            record["load_after"] = load_average()
            progress(_summary("stock", n_rows, record["stock"]))
            _ratios(record)
            stock_frame, plugin_frame = workdir / f"stock_{n_rows}.parquet", plugin_frames.get(n_rows)
            if record["stock"]["status"] == "done" and plugin_frame is not None and plugin_frame.exists():
                record["check"] = compare_frames(pd.read_parquet(plugin_frame), pd.read_parquet(stock_frame),
                                                 args.check_rows, seed=args.seed)
                progress(f"plugin vs stock x {n_rows:,} rows: same rows {record['check']['same_rows']}, "
                         f"same values {record['check']['same_values']}")
            for path in (stock_frame, plugin_frame):
                if path is not None:
                    path.unlink(missing_ok=True)
        for record in records:
            _ratios(record)
    return {"features": "plain list: " + ", ".join(PLAIN_VIEWS), "temp_file_limit": args.temp_file_limit or None,
            "records": records}


def _stock_stopped(call: dict) -> bool:
    """Stopped at the time limit, or by ``temp_file_limit``: its time is a lower bound."""
    return call.get("status") == "timeout" or (call.get("status") == "error"
                                               and "temp_file_limit" in (call.get("error") or ""))


def _ratios(record: dict) -> None:
    plugin, bound, stock = record["plugin"], record["lower_bound"], record.get("stock", {})
    if plugin["status"] == "done" and bound["status"] == "done":
        record["plugin_over_lower_bound"] = round(plugin["seconds"] / bound["seconds"], 2)
    if plugin["status"] == "done" and stock.get("status") == "done":
        record["stock_over_plugin"] = round(stock["seconds"] / plugin["seconds"], 1)
    elif plugin["status"] == "done" and _stock_stopped(stock):
        record["stock_over_plugin_lower_bound"] = round(stock["seconds"] / plugin["seconds"], 1)


def _seconds_cell(call: dict) -> str:
    if call.get("status") == "done":
        return f"{call['seconds']:,.2f}"
    if _stock_stopped(call):
        why = "" if call["status"] == "timeout" else " (temp limit)"
        return f"> {call['seconds']:,.0f}{why}"
    return call.get("status") or "-"


def _mib(value) -> str:
    return "-" if value is None else f"{value / 2**20:,.0f}"


def render(figures: dict) -> list[str]:
    rows = []
    for r in figures["records"]:
        for way in WAYS:
            call = r.get(way, {})
            extra = ""
            if way == "lower_bound" and call.get("status") == "done":
                extra = f"upload {call['upload_s']:.2f} s, {call['bytes_out'] / 2**20:,.0f} MiB out"
            elif way == "stock" and call.get("status") == "error" and not _stock_stopped(call):
                extra = (call.get("error") or "")[:60]
            rows.append([f"{r['entity_rows']:,}", way, _seconds_cell(call), call.get("rows", "-"),
                         _mib(call.get("temp_bytes")), call.get("peak_rss_mib", "-"),
                         call.get("rss_before_call_mib", "-"), extra])
    ratio_rows = []
    for r in figures["records"]:
        stock_ratio = (f"{r['stock_over_plugin']:.1f}x" if "stock_over_plugin" in r else
                       f"> {r['stock_over_plugin_lower_bound']:.1f}x" if "stock_over_plugin_lower_bound" in r else "-")
        check = r.get("check")
        same = ("-" if check is None else
                f"rows {'yes' if check['same_rows'] else 'NO'}, values {'yes' if check['same_values'] else 'NO'} "
                f"({check.get('cells_compared', 0):,} cells)")
        ratio_rows.append([f"{r['entity_rows']:,}", r.get("plugin_over_lower_bound", "-"), stock_ratio, same])
    return [
        f"Historical retrieval (point in time), features: {figures['features']}",
        "  plugin = get_historical_features(...).to_df() with the LATERAL offline store plugin; stock = the same with "
        "type: postgres;",
        "  lower bound = hand-written LATERAL SQL streamed out by binary COPY (bytes counted, entity upload timed "
        "apart); each call in its own child process",
        table(["entity rows", "way", "seconds", "rows", "temp MiB", "peak RSS MiB", "RSS before call MiB", "note"],
              rows),
        "",
        table(["entity rows", "plugin / lower bound", "stock / plugin", "plugin vs stock values"], ratio_rows),
    ]


SUBJECT = Subject(key="retrieval", title="Historical retrieval", needs=("shop", "embeddings", "features", "feast"),
                  provides=(), measure=measure, render=render, add_options=add_options)

if __name__ == "__main__":
    run_subjects([SUBJECT], "Retrieval benchmark", __doc__.split("\n\n")[0], "retrieval.json")
