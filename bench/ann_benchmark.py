"""Vector search through Feast: top-k nearest items, stock Postgres online store against a
plugin with an ANN index, against exact search.

On a throw-away database of its own (no shop needed): ``--ann-items`` unit vectors of
``--ann-dim`` floats in ``--ann-clusters`` clusters (so that neighbours are meaningful) in
a source table, a minimal Feast repo (one entity ``item_id``, one view ``item_vectors``
with ``Field(embedding, vector_index=True, vector_length=dim, vector_search_metric=
"cosine")``) in two copies that differ only in the ``online_store: type:`` line, each
applied and materialized (timed). Then ``--ann-queries`` query vectors (a random item's
vector plus noise) go to:

- **plugin**: ``store.retrieve_online_documents_v2(features=[...], query=q, top_k=k,
  distance_metric="cosine")`` through the plugin repo (its HNSW index);
- **stock**: the same call through the stock repo, which scans every row; only the first
  ``--ann-scan-queries`` queries (each takes about a second on 100k items);
- **SQL scan**: an exact ``ORDER BY v <=> q LIMIT k`` over a ``vector(dim)`` copy of the
  items without an index, through psycopg: the cost of a full scan without Feast;
- **SQL HNSW**: the plugin's own statement on its table through psycopg, without Feast,
  at the plugin's ``hnsw.ef_search`` and at k and 2k (the speed/recall curve);
- **exact**: numpy, the truth for recall@k (the share of the exact top k returned).

Usage (from the project root)::

    .venv/bin/python bench/ann_benchmark.py --ann-items 100000

Nothing here asserts on time.
"""
from __future__ import annotations

import datetime as dt
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import psycopg
from psycopg import sql

from harness import (BenchRun, Subject, percentiles_ms, progress, quiet, rate, run_subjects, silence_known_warnings,
                     table, throwaway_database, timed)
from online_store_benchmark import add_plugin_option, store_types

VIEW = "item_vectors"
SOURCE_TABLE = "item_vectors"
SCAN_TABLE = "item_vectors_scan"  # the same vectors as pgvector vectors, no index

REPO_DEFINITIONS = '''
"""One entity, one view with a searchable vector (written by bench/ann_benchmark.py)."""
from datetime import timedelta

from feast import Entity, FeatureView, Field, ValueType
from feast.infra.offline_stores.contrib.postgres_offline_store.postgres_source import PostgreSQLSource
from feast.types import Array, Float32, Int64

item = Entity(name="item", join_keys=["item_id"], value_type=ValueType.INT64)
source = PostgreSQLSource(name="{table}", query="SELECT * FROM public.{table}", timestamp_field="event_timestamp",
                          created_timestamp_column="created_timestamp")
item_vectors = FeatureView(
    name="{view}",
    entities=[item],
    ttl=timedelta(0),
    schema=[
        Field(name="embedding", dtype=Array(Float32), vector_index=True, vector_length={dim},
              vector_search_metric="cosine"),
        Field(name="cluster_id", dtype=Int64),
    ],
    source=source,
)
'''

REPO_YAML = """\
project: ann_bench
provider: local
registry:
  registry_type: sql
  path: ${{INTEREST_REGISTRY_URL}}
offline_store:
  type: postgres
  host: ${{INTEREST_PG_HOST}}
  port: ${{INTEREST_PG_PORT}}
  database: ${{INTEREST_PG_DB}}
  db_schema: public
  user: ${{INTEREST_PG_USER}}
  password: "${{INTEREST_PG_PASSWORD}}"
  sslmode: ${{INTEREST_PG_SSLMODE}}
online_store:
  type: {online_type}
  host: ${{INTEREST_PG_HOST}}
  port: ${{INTEREST_PG_PORT}}
  database: ${{INTEREST_PG_DB}}
  db_schema: public
  user: ${{INTEREST_PG_USER}}
  password: "${{INTEREST_PG_PASSWORD}}"
  sslmode: ${{INTEREST_PG_SSLMODE}}
  vector_enabled: true
materialization:
  pull_latest_features: true
entity_key_serialization_version: 3
"""


def add_options(parser) -> None:
    add_plugin_option(parser)
    parser.add_argument("--ann-items", type=int, default=100_000, help="catalogue size of the vector search")
    parser.add_argument("--ann-dim", type=int, default=384, help="vector dimension")
    parser.add_argument("--ann-clusters", type=int, default=1000, help="clusters the vectors are drawn around")
    parser.add_argument("--ann-queries", type=int, default=100, help="query vectors (plugin, SQL scan, exact)")
    parser.add_argument("--ann-scan-queries", type=int, default=30,
                        help="of those, how many go to the stock store (a full scan each)")
    parser.add_argument("--ann-top-k", type=int, default=50, help="neighbours per query")


def clustered_unit_vectors(n: int, dim: int, clusters: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``(n, dim) float32`` unit vectors, each a random cluster centre plus noise of about
    the same norm as the spread between nearby members, and ``(n,)`` cluster ids."""
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    cluster_id = rng.integers(0, clusters, n)
    vectors = centres[cluster_id] + rng.standard_normal((n, dim)).astype(np.float32) * (0.6 / np.sqrt(dim))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors.astype(np.float32), cluster_id


def load_vectors(conn: psycopg.Connection, vectors: np.ndarray, cluster_id: np.ndarray, dim: int) -> None:
    """The source table (``real[]`` as Feast reads it) and the unindexed ``vector`` copy."""
    stamp = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    conn.execute(sql.SQL("CREATE TABLE {} (item_id bigint PRIMARY KEY, embedding real[] NOT NULL, cluster_id bigint, "
                         "event_timestamp timestamptz NOT NULL, created_timestamp timestamptz)").format(
        sql.Identifier(SOURCE_TABLE)))
    with conn.cursor() as cur, cur.copy(sql.SQL(
            "COPY {} (item_id, embedding, cluster_id, event_timestamp, created_timestamp) FROM STDIN (FORMAT binary)"
    ).format(sql.Identifier(SOURCE_TABLE))) as copy:
        copy.set_types(["int8", "float4[]", "int8", "timestamptz", "timestamptz"])
        for item_id, (vector, cluster) in enumerate(zip(vectors, cluster_id.tolist()), start=1):
            copy.write_row((item_id, vector.tolist(), cluster, stamp, stamp))
    conn.execute(sql.SQL("CREATE TABLE {} AS SELECT item_id, embedding::vector({}) AS v FROM {}").format(
        sql.Identifier(SCAN_TABLE), sql.Literal(dim), sql.Identifier(SOURCE_TABLE)))
    conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(SOURCE_TABLE)))
    conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(SCAN_TABLE)))
    conn.commit()


def write_repo(repo_dir: Path, online_type: str, dim: int) -> Path:
    repo_dir.mkdir(parents=True)
    (repo_dir / "definitions.py").write_text(textwrap.dedent(
        REPO_DEFINITIONS.format(table=SOURCE_TABLE, view=VIEW, dim=dim)).lstrip())
    (repo_dir / "feature_store.yaml").write_text(REPO_YAML.format(online_type=online_type))
    return repo_dir


def exact_top_k(vectors: np.ndarray, queries: np.ndarray, k: int) -> list[set[int]]:
    """Item ids (1-based) of the ``k`` largest cosine similarities per query (unit vectors:
    the dot product)."""
    scores = queries @ vectors.T  # (queries, items)
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    return [set((row + 1).tolist()) for row in top]


def search_feast(store, queries: np.ndarray, k: int, truth: list[set[int]]) -> dict:
    durations, recalls = [], []
    for query, expected in zip(queries, truth):
        started = time.perf_counter()
        found = store.retrieve_online_documents_v2(features=[f"{VIEW}:embedding"], query=query.tolist(), top_k=k,
                                                   distance_metric="cosine").to_dict()["item_id"]
        durations.append(time.perf_counter() - started)
        recalls.append(len(expected & {int(i) for i in found}) / k)
    return _search_figures(durations, recalls)


def _search_figures(durations: list[float], recalls: list[float]) -> dict:
    return {**percentiles_ms(durations), "recall_at_k": round(float(np.mean(recalls)), 4),
            "recall_min": round(float(np.min(recalls)), 4)}


def _timed_sql_search(conn: psycopg.Connection, statement: sql.Composed, queries: np.ndarray, k: int,
                      truth: list[set[int]], item_id) -> dict:
    """``statement`` (parameters: the query vector as text, k) per query, timed; ``item_id``
    turns a result row into its item id for recall."""
    durations, recalls = [], []
    for query, expected in zip(queries, truth):
        text = "[" + ",".join(f"{x:.7g}" for x in query.tolist()) + "]"
        started = time.perf_counter()
        rows = conn.execute(statement, (text, k)).fetchall()
        durations.append(time.perf_counter() - started)
        recalls.append(len(expected & {item_id(row) for row in rows}) / k)
    conn.commit()
    return _search_figures(durations, recalls)


def search_sql_scan(conn: psycopg.Connection, queries: np.ndarray, k: int, truth: list[set[int]], dim: int) -> dict:
    statement = sql.SQL("SELECT item_id FROM {} ORDER BY v <=> %s::vector({}) LIMIT %s").format(
        sql.Identifier(SCAN_TABLE), sql.Literal(dim))
    return _timed_sql_search(conn, statement, queries, k, truth, lambda row: row[0])


def search_sql_hnsw(conn: psycopg.Connection, store, queries: np.ndarray, k: int, truth: list[set[int]],
                    ef_search: int) -> dict:
    """The plugin's own ANN statement without Feast: ``ORDER BY vector_value <=> q LIMIT k``
    on its online table (the HNSW index scan), at ``ef_search``."""
    from feast.infra.key_encoding_utils import deserialize_entity_key

    from materialize.feature_store.online_store import online_table_name

    online = store.config.online_store
    statement = sql.SQL("SELECT entity_key FROM {} ORDER BY vector_value <=> %s::vector LIMIT %s").format(
        sql.Identifier(online.db_schema, online_table_name(store.project, VIEW)))
    conn.execute(sql.SQL("SET hnsw.ef_search = {}").format(sql.Literal(ef_search)))
    try:
        return _timed_sql_search(conn, statement, queries, k, truth,
                                 lambda row: deserialize_entity_key(bytes(row[0]), 3).entity_values[0].int64_val)
    finally:
        conn.execute("RESET hnsw.ef_search")
        conn.commit()


def measure(run: BenchRun) -> dict:
    from materialize.database.server import connect, enable_pgvector, ensure_database
    from materialize.feature_store.online_store import ef_search_for
    from materialize.feature_store.repo import FIRST_MATERIALIZATION_START, apply_repo, open_store

    import feast  # noqa: F401

    silence_known_warnings()
    args = run.args
    k, dim = args.ann_top_k, args.ann_dim
    rng = np.random.default_rng(args.seed)
    with timed() as clock:
        vectors, cluster_id = clustered_unit_vectors(args.ann_items, dim, args.ann_clusters, rng)
        picks = rng.integers(0, args.ann_items, args.ann_queries)
        queries = vectors[picks] + rng.standard_normal((args.ann_queries, dim)).astype(np.float32) * (0.6 / np.sqrt(dim))
        queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    with timed() as exact_clock:
        truth = exact_top_k(vectors, queries, k)
    progress(f"ANN: {args.ann_items:,} vectors of {dim} in {args.ann_clusters:,} clusters, {args.ann_queries} queries "
             f"({clock.seconds:.1f} s); exact top {k} by numpy in {exact_clock.seconds:.2f} s")
    results: dict = {"items": args.ann_items, "dim": dim, "clusters": args.ann_clusters, "queries": args.ann_queries,
                     "top_k": k, "store_types": store_types(args), "materialize": {}, "search": {}}
    with throwaway_database(keep=args.keep_db, prefix="interest_bench_ann") as pg, \
            tempfile.TemporaryDirectory(prefix="ann_bench_") as workdir:
        ensure_database(pg)
        with connect(pg) as conn:
            if not enable_pgvector(conn):
                raise RuntimeError("the server has no pgvector: the ANN benchmark needs it")
            conn.commit()
            with timed() as clock:
                load_vectors(conn, vectors, cluster_id, dim)
            progress(f"ANN: source table and scan table loaded in {clock.seconds:.1f} s")
            end = dt.datetime.now(dt.timezone.utc)
            stores = {}
            for name, online_type in store_types(args).items():
                repo = write_repo(Path(workdir) / name, online_type, dim)
                with quiet(not args.progress):
                    apply_repo(repo, pg, pgvector=True)
                stores[name] = open_store(repo, pg, pgvector=True)
                with timed() as clock, quiet(not args.progress):
                    stores[name].materialize(start_date=FIRST_MATERIALIZATION_START, end_date=end, feature_views=[VIEW])
                results["materialize"][name] = {"seconds": round(clock.seconds, 3),
                                                "rows_per_s": rate(args.ann_items, clock.seconds)}
                progress(f"ANN: materialized {args.ann_items:,} vectors into {name} in {clock.seconds:.1f} s")
            for name, store in (("plugin", stores["plugin"]), ("stock", stores["stock"])):
                n = args.ann_queries if name == "plugin" else min(args.ann_scan_queries, args.ann_queries)
                search_feast(store, queries[:2], k, truth[:2])  # warm-up: connection, registry
                results["search"][name] = {**search_feast(store, queries[:n], k, truth[:n]), "queries": n}
                s = results["search"][name]
                progress(f"ANN {name}: p50 {s['p50_ms']:.1f} ms, p99 {s['p99_ms']:.1f} ms, recall@{k} "
                         f"{s['recall_at_k']:.3f} over {n} queries")
            search_sql_scan(conn, queries[:2], k, truth[:2], dim)
            results["search"]["sql_scan"] = {**search_sql_scan(conn, queries, k, truth, dim),
                                             "queries": args.ann_queries}
            s = results["search"]["sql_scan"]
            progress(f"ANN SQL scan: p50 {s['p50_ms']:.1f} ms, recall@{k} {s['recall_at_k']:.3f}")
            plugin_ef = ef_search_for(stores["plugin"].config, k)
            search_sql_hnsw(conn, stores["plugin"], queries[:2], k, truth[:2], plugin_ef)
            results["search"]["sql_hnsw"] = {**search_sql_hnsw(conn, stores["plugin"], queries, k, truth, plugin_ef),
                                             "queries": args.ann_queries, "ef_search": plugin_ef}
            s = results["search"]["sql_hnsw"]
            progress(f"ANN SQL HNSW: p50 {s['p50_ms']:.1f} ms, recall@{k} {s['recall_at_k']:.3f} (ef_search {plugin_ef})")
            results["sql_hnsw_sweep"] = [
                {"ef_search": ef, **search_sql_hnsw(conn, stores["plugin"], queries, k, truth, ef)}
                for ef in sorted({k, 2 * k, plugin_ef})
            ]
            results["exact_numpy_s"] = round(exact_clock.seconds, 3)
    search = results["search"]
    results["plugin_speedup_over_stock_p50"] = round(search["stock"]["p50_ms"] / search["plugin"]["p50_ms"], 1)
    results["plugin_speedup_over_sql_scan_p50"] = round(search["sql_scan"]["p50_ms"] / search["plugin"]["p50_ms"], 1)
    results["sql_hnsw_speedup_over_sql_scan_p50"] = round(search["sql_scan"]["p50_ms"] / search["sql_hnsw"]["p50_ms"], 1)
    return results


def render(f: dict) -> list[str]:
    k = f["top_k"]
    rows = [[name, s["queries"], s["p50_ms"], s["p99_ms"], s["mean_ms"], s["recall_at_k"], s["recall_min"]]
            for name, s in f["search"].items()]
    return [
        f"Vector search: top {k} of {f['items']:,} unit vectors ({f['dim']}-d, {f['clusters']:,} clusters), cosine; "
        f"recall@{k} against exact numpy search",
        f"  plugin = type: {f['store_types']['plugin']} (HNSW), stock = type: {f['store_types']['stock']} (scan), "
        "both through retrieve_online_documents_v2; sql_scan = exact ORDER BY <=> LIMIT k, no index, psycopg;",
        "  sql_hnsw = the plugin's statement on its table (HNSW index scan) through psycopg, without Feast",
        table(["way", "queries", "p50 ms", "p99 ms", "mean ms", f"recall@{k}", "min recall"], rows),
        f"  plugin p50 is {f['plugin_speedup_over_stock_p50']}x faster than stock, "
        f"{f['plugin_speedup_over_sql_scan_p50']}x faster than the SQL scan; without Feast on either side the index "
        f"scan is {f['sql_hnsw_speedup_over_sql_scan_p50']}x faster than the SQL scan",
        f"  the index scan without Feast at other ef_search values (the plugin's default: "
        f"{f['search']['sql_hnsw'].get('ef_search', '-')}); a min recall of 0 means a query whose graph search "
        "stayed in another cluster:",
        table(["ef_search", "p50 ms", "p99 ms", f"recall@{k}", "min recall"],
              [[p["ef_search"], p["p50_ms"], p["p99_ms"], p["recall_at_k"], p["recall_min"]]
               for p in f.get("sql_hnsw_sweep", [])]),
        "  materialize of the vectors: " + ", ".join(
            f"{name} {m['seconds']:.1f} s ({m['rows_per_s']:,.0f} rows/s)" for name, m in f["materialize"].items()),
    ]


SUBJECT = Subject(key="ann", title="Vector search", needs=(), provides=(), measure=measure, render=render,
                  add_options=add_options, uses_events=False)

if __name__ == "__main__":
    run_subjects([SUBJECT], "Vector search benchmark", __doc__.split("\n\n")[0], "ann.json")
