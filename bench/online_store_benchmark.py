"""Online stores compared: stock Feast's Postgres online store against a plugin.

On a fresh PostgreSQL database holding a synthetic shop, its item embeddings, its feature
tables and the applied Feast repo (prepared first, not timed), two copies of the repo whose
``feature_store.yaml`` differ in their ``type:`` lines share the registry and the database:
"stock" is all stock Feast (``offline_store``, ``online_store`` ``postgres``,
``batch_engine: local``), "plugin" is the repo's own (the offline store and compute engine
plugins, and ``--online-plugin-type``). For each store:

- **materialize**: ``store.materialize(1970 -> now)`` of every feature view, one view at a
  time, timed per view (the offline store's "latest row per entity" read, the engine's
  conversion and the online store's write); rows/s are source rows (those the "latest per
  entity" read covers) and entities (written) per second;
- **online read**: ``get_online_features(...).to_dict()`` for 1 and for 100 entities,
  ``--read-calls`` timed calls after ``--read-warmup`` untimed ones, each call on a new
  random draw of entities: the user views (``user_activity``, ``user_interest_shift``,
  ``user_recent_sequence``, ``user_interest_embedding``) by user, and the item views
  (``item_popularity``, ``item_catalog``, ``item_text_embedding``) by item.

Afterwards one 100-entity read per feature set is compared cell by cell between the two
stores (a plugin that enforces ttl on read may return null where stock returns an old
value; those cells are counted apart).

Usage (from the project root)::

    .venv/bin/python bench/online_store_benchmark.py --events 1000000

Nothing here asserts on time.
"""
from __future__ import annotations

import datetime as dt
import tempfile
import time
from pathlib import Path

import numpy as np
from psycopg import sql

from harness import (BenchRun, Subject, feature_repo_copy, percentiles_ms, progress, quiet, rate, run_subjects,
                     silence_known_warnings, table, timed)

DEFAULT_PLUGIN_TYPE = "materialize.feature_store.online_store.PostgresFastOnlineStore"
STOCK_TYPE = "postgres"
STOCK_ENGINE = "local"
READ_SETS = {
    "user views": ("user_id", ("user_activity", "user_interest_shift", "user_recent_sequence",
                               "user_interest_embedding")),
    "item views": ("item_id", ("item_popularity", "item_catalog", "item_text_embedding")),
}
"""Feature sets read online: name -> (entity key, views)."""
BATCH_SIZES = (1, 100)


def add_plugin_option(parser) -> None:
    """``--online-plugin-type`` (shared with ``ann_benchmark.py``; added once)."""
    if "--online-plugin-type" not in parser._option_string_actions:
        parser.add_argument("--online-plugin-type", default=DEFAULT_PLUGIN_TYPE,
                            help="the online store class compared with stock (its feature_store.yaml 'type:')")


def add_options(parser) -> None:
    add_plugin_option(parser)
    parser.add_argument("--read-calls", type=int, default=300, help="timed online reads per store and case")
    parser.add_argument("--read-warmup", type=int, default=20, help="untimed online reads before them")


def store_types(args) -> dict[str, str]:
    """Name of each compared store -> its ``online_store: type:``."""
    return {"stock": STOCK_TYPE, "plugin": args.online_plugin_type}


def _source_counts(conn, view) -> tuple[int, int]:
    """Rows and distinct entities of a view's source table (schema ``interest``)."""
    table_ident = sql.Identifier("interest", view.batch_source.name)
    keys = sql.SQL(", ").join(sql.Identifier(k) for k in view.join_keys)
    rows, entities = conn.execute(sql.SQL("SELECT count(*), (SELECT count(*) FROM (SELECT DISTINCT {} FROM {}) d) "
                                          "FROM {}").format(keys, table_ident, table_ident)).fetchone()
    conn.commit()
    return rows, entities


def materialize_store(store, conn, end: dt.datetime, quiet_output: bool, counts: dict) -> dict:
    """Every view of ``store`` from 1970 to ``end``, one view at a time, timed per view."""
    from materialize.feature_store.repo import FIRST_MATERIALIZATION_START

    views = {}
    for view in sorted(store.list_feature_views(), key=lambda v: v.name):
        if view.name not in counts:
            counts[view.name] = _source_counts(conn, view)
        source_rows, entities = counts[view.name]
        with timed() as clock, quiet(quiet_output):
            store.materialize(start_date=FIRST_MATERIALIZATION_START, end_date=end, feature_views=[view.name])
        views[view.name] = {"source_rows": source_rows, "entities": entities, "seconds": round(clock.seconds, 3),
                            "source_rows_per_s": rate(source_rows, clock.seconds),
                            "entities_per_s": rate(entities, clock.seconds)}
        progress(f"  {view.name}: {source_rows:,} source rows, {entities:,} entities in {clock.seconds:.2f} s")
    total_s = sum(v["seconds"] for v in views.values())
    source_rows = sum(v["source_rows"] for v in views.values())
    entities = sum(v["entities"] for v in views.values())
    return {"views": views, "seconds": round(total_s, 3), "source_rows": source_rows, "entities": entities,
            "source_rows_per_s": rate(source_rows, total_s), "entities_per_s": rate(entities, total_s)}


def time_reads(store, refs: list[str], key: str, pool: np.ndarray, batch: int, calls: int, warmup: int,
               seed: int) -> dict:
    """``calls`` timed ``get_online_features(...).to_dict()`` of ``batch`` random entities
    from ``pool`` each, after ``warmup`` untimed ones; ``read`` holds the same calls timed
    up to the response (``get_online_features`` alone: what the store does, without the
    conversion to Python values, which is Feast's ``OnlineResponse.to_dict`` for both)."""
    rng = np.random.default_rng(seed)
    durations, reads = [], []
    for call in range(warmup + calls):
        rows = [{key: int(v)} for v in rng.choice(pool, batch, replace=False)]
        started = time.perf_counter()
        response = store.get_online_features(features=refs, entity_rows=rows)
        read = time.perf_counter()
        response.to_dict()
        if call >= warmup:
            durations.append(time.perf_counter() - started)
            reads.append(read - started)
    return percentiles_ms(durations) | {"read": percentiles_ms(reads)}


def _same(a, b) -> bool:
    if isinstance(a, (list, tuple, np.ndarray)) or isinstance(b, (list, tuple, np.ndarray)):
        return a is not None and b is not None and np.allclose(np.asarray(a, float), np.asarray(b, float),
                                                               rtol=1e-6, equal_nan=True)
    if isinstance(a, float) and isinstance(b, float):
        return (np.isnan(a) and np.isnan(b)) or abs(a - b) <= 1e-6 * max(1.0, abs(b))
    return a == b


def compare_reads(stock_store, plugin_store, refs: list[str], key: str, ids: list[int]) -> dict:
    """One read of ``ids`` from each store, cell by cell."""
    rows = [{key: i} for i in ids]
    stock = stock_store.get_online_features(features=refs, entity_rows=rows).to_dict()
    plugin = plugin_store.get_online_features(features=refs, entity_rows=rows).to_dict()
    cells = equal = plugin_null_only = 0
    examples = []
    for column, stock_values in stock.items():
        for n, (s, p) in enumerate(zip(stock_values, plugin.get(column, [None] * len(stock_values)))):
            cells += 1
            if _same(p, s):
                equal += 1
            elif p is None and s is not None:
                plugin_null_only += 1  # e.g. hidden by a ttl the plugin enforces on read
            elif len(examples) < 3:
                examples.append(f"{column}[{n}]: stock={s!r:.50} plugin={p!r:.50}")
    return {"cells": cells, "equal": equal, "null_in_plugin_only": plugin_null_only,
            "different": cells - equal - plugin_null_only, "examples": examples}


def measure(run: BenchRun) -> dict:
    from materialize.feature_store.repo import apply_repo, open_store

    import feast  # noqa: F401

    silence_known_warnings()
    pipeline, args = run.pipeline, run.args
    pg, pgvector = pipeline.settings.postgres, pipeline.pgvector
    conn = pipeline.conn
    users = np.array([r[0] for r in conn.execute("SELECT DISTINCT user_id FROM interest.user_daily_features")])
    items = np.array([r[0] for r in conn.execute("SELECT item_id FROM interest.items")])
    conn.commit()
    pools = {"user_id": users, "item_id": items}
    results: dict = {"store_types": store_types(args), "materialize": {}, "reads": {}}
    counts: dict = {}
    end = dt.datetime.now(dt.timezone.utc)
    with tempfile.TemporaryDirectory(prefix="online_bench_") as workdir:
        stores = {}
        for name, store_type in store_types(args).items():
            stock = name == "stock"
            repo = feature_repo_copy(pipeline.settings.feature_repo_dir, Path(workdir) / name,
                                     offline_store_type=STOCK_TYPE if stock else None, online_store_type=store_type,
                                     batch_engine_type=STOCK_ENGINE if stock else None)
            with timed() as clock, quiet(not args.progress):
                apply_repo(repo, pg, pgvector)  # creates this store's online tables
            progress(f"online store {name} ({store_type}): applied in {clock.seconds:.2f} s; materializing ...")
            stores[name] = open_store(repo, pg, pgvector)
            results["materialize"][name] = materialize_store(stores[name], conn, end, not args.progress, counts)
            m = results["materialize"][name]
            progress(f"online store {name}: materialized {m['entities']:,} entities ({m['source_rows']:,} source rows)"
                     f" in {m['seconds']:.2f} s")
        for set_name, (key, views) in READ_SETS.items():
            refs = [f"{v}:{f.name}" for v in views for f in stores["stock"].get_feature_view(v).features]
            for batch in BATCH_SIZES:
                case = f"{set_name} x {batch}"
                results["reads"][case] = {"features": len(refs), "entities": batch}
                for name, store in stores.items():
                    figures = time_reads(store, refs, key, pools[key], batch, args.read_calls, args.read_warmup,
                                         seed=args.seed + batch)
                    results["reads"][case][name] = figures
                    progress(f"online read {case}, {name}: p50 {figures['p50_ms']:.2f} ms, "
                             f"p99 {figures['p99_ms']:.2f} ms")
            ids = [int(v) for v in np.random.default_rng(args.seed).choice(pools[key], 100, replace=False)]
            results["reads"][f"{set_name} check"] = compare_reads(stores["stock"], stores["plugin"], refs, key, ids)
    stock_m, plugin_m = results["materialize"]["stock"], results["materialize"]["plugin"]
    results["materialize_speedup"] = round(stock_m["seconds"] / plugin_m["seconds"], 2)
    for case, figures in results["reads"].items():
        if "stock" in figures:
            figures["p50_speedup"] = round(figures["stock"]["p50_ms"] / figures["plugin"]["p50_ms"], 2)
            figures["p99_speedup"] = round(figures["stock"]["p99_ms"] / figures["plugin"]["p99_ms"], 2)
            figures["read_p50_speedup"] = round(figures["stock"]["read"]["p50_ms"] / figures["plugin"]["read"]["p50_ms"], 2)
    return results


def render(f: dict) -> list[str]:
    stock_m, plugin_m = f["materialize"]["stock"], f["materialize"]["plugin"]
    mat_rows = [[view, v["source_rows"], v["entities"], v["seconds"], plugin_m["views"][view]["seconds"],
                 round(v["seconds"] / plugin_m["views"][view]["seconds"], 2)]
                for view, v in stock_m["views"].items()]
    mat_rows.append(["total", stock_m["source_rows"], stock_m["entities"], stock_m["seconds"], plugin_m["seconds"],
                     f["materialize_speedup"]])
    read_rows = []
    checks = []
    for case, r in f["reads"].items():
        if "stock" not in r:
            checks.append(f"  {case}: {r['equal']:,} of {r['cells']:,} cells equal, {r['null_in_plugin_only']:,} null "
                          f"in the plugin only, {r['different']:,} different {r['examples'] or ''}")
            continue
        read_rows.append([case, r["features"], r["stock"]["p50_ms"], r["stock"]["p99_ms"], r["plugin"]["p50_ms"],
                          r["plugin"]["p99_ms"], f"{r['p50_speedup']:.1f}x", f"{r['p99_speedup']:.1f}x",
                          r["stock"]["read"]["p50_ms"], r["plugin"]["read"]["p50_ms"], f"{r['read_p50_speedup']:.1f}x"])
    return [
        f"Online stores: stock = type: {f['store_types']['stock']} (materialized by stock's offline store and engine), "
        f"plugin = type: {f['store_types']['plugin']} (by the repo's offline store and engine plugins)",
        "Materialize (1970 -> now, one view at a time); rows/s = source rows / seconds",
        table(["view", "source rows", "entities", "stock s", "plugin s", "stock/plugin"], mat_rows),
        f"  stock {stock_m['source_rows_per_s']:,.0f} source rows/s ({stock_m['entities_per_s']:,.0f} entities/s); "
        f"plugin {plugin_m['source_rows_per_s']:,.0f} source rows/s ({plugin_m['entities_per_s']:,.0f} entities/s)",
        "",
        "Online read, get_online_features(...).to_dict(), ms per call; the last three columns time the same calls",
        "up to the response, before Feast's to_dict (the same Python conversion for both stores)",
        table(["case", "features", "stock p50", "stock p99", "plugin p50", "plugin p99", "p50 stock/plugin",
               "p99 stock/plugin", "read-only stock p50", "read-only plugin p50", "read-only p50 ratio"], read_rows),
        "Same values (one 100-entity read per feature set):",
        *checks,
    ]


SUBJECT = Subject(key="online", title="Online stores", needs=("shop", "embeddings", "features", "feast"),
                  provides=(), measure=measure, render=render, add_options=add_options)

if __name__ == "__main__":
    run_subjects([SUBJECT], "Online store benchmark", __doc__.split("\n\n")[0], "online_store.json")
