"""Issue 9's figures in one run: our Feast store plugins against stock Feast's Postgres stores
and against hand-written lower bounds.

1. online stores (``online_store_benchmark.py``): materialize rows/s, online read p50/p99
   for 1 and 100 entities, stock ``type: postgres`` against ``--online-plugin-type``;
2. vector search (``ann_benchmark.py``, a database of its own): top-k on a
   ``--ann-items`` catalogue, plugin (HNSW) against stock (scan), an SQL scan and exact
   numpy search (recall@k);
3. historical retrieval (``retrieval_benchmark.py``): plugin, stock (stopped after
   ``--stock-timeout-s``) and the hand-written LATERAL query streamed out by binary COPY,
   for each ``--entity-rows``: seconds, temp bytes, peak RSS.

The shop is prepared first (ingest, embeddings, full feature build, ``feast apply``; not
timed). A table of every figure and of issue 9's targets, met or not, is printed at the
end and written as JSON (``--out``); the JSON is also written after each step.

Usage (from the project root)::

    .venv/bin/python bench/feast_stores_benchmark.py --events 10000000 \
        --entity-rows 10000 100000 1000000 --ann-items 100000 --stock-timeout-s 600

    # smoke test, a few minutes
    .venv/bin/python bench/feast_stores_benchmark.py --events 20000 --items 300 --entity-rows 1000 5000 \
        --ann-items 5000 --ann-clusters 100 --stock-timeout-s 120 --read-calls 50

Nothing here asserts on time.
"""
from __future__ import annotations

import dataclasses
import traceback

import ann_benchmark
import online_store_benchmark
import retrieval_benchmark
from harness import Subject, progress, run_subjects, table


def _guarded(subject: Subject) -> Subject:
    """The subject, its failure reported in its section instead of ending the run (one
    step's error, e.g. a store plugin that is not there yet, must not cost the others)."""
    def measure(run):
        try:
            return subject.measure(run)
        except Exception as error:  # reported, and the JSON keeps it
            progress(f"{subject.title} failed: {type(error).__name__}: {error}")
            return {"error": f"{type(error).__name__}: {error}"[:2000], "traceback": traceback.format_exc()[-4000:]}

    def render(figures):
        if "error" in figures:
            return [f"{subject.title}: FAILED: {figures['error']}"]
        return subject.render(figures)

    return dataclasses.replace(subject, measure=measure, render=render)


SUBJECTS = [_guarded(s) for s in (online_store_benchmark.SUBJECT, ann_benchmark.SUBJECT, retrieval_benchmark.SUBJECT)]


def _met(ok: bool | None) -> str:
    return "-" if ok is None else ("met" if ok else "NOT met")


def targets(results: dict) -> list[dict]:
    """Issue 9's targets against the figures of this run."""
    rows = []
    failed = [key for key in ("online", "ann", "retrieval") if "error" in results.get(key, {"error": "missing"})]
    for key in failed:
        rows.append({"target": f"{key}: no figures", "figure": results.get(key, {}).get("error", "not run")[:80],
                     "met": None})
    for r in results.get("retrieval", {}).get("records", []):
        ratio = r.get("plugin_over_lower_bound")
        rows.append({"target": f"retrieval {r['entity_rows']:,} rows: plugin within 2x of the lower bound",
                     "figure": f"{ratio}x" if ratio is not None else "-",
                     "met": None if ratio is None else ratio <= 2.0})
    by_rows = {r["entity_rows"]: r for r in results.get("retrieval", {}).get("records", [])}
    record = by_rows.get(100_000)
    if record is not None:
        if "stock_over_plugin" in record:
            figure, ok = f"{record['stock_over_plugin']}x", record["stock_over_plugin"] >= 20
        elif "stock_over_plugin_lower_bound" in record:
            bound = record["stock_over_plugin_lower_bound"]
            figure, ok = f"> {bound}x (stock stopped)", True if bound >= 20 else None
        else:
            figure, ok = "-", None
        rows.append({"target": "retrieval 100,000 rows: at least 20x faster than stock", "figure": figure, "met": ok})
    record = by_rows.get(1_000_000)
    if record is not None and record["plugin"].get("status") == "done":
        temp = record["plugin"].get("temp_bytes", 0)
        rows.append({"target": "retrieval 1,000,000 rows: plugin temp files under 1 GB",
                     "figure": f"{temp / 2**20:,.0f} MiB", "met": temp < 2**30})
    if "online" not in failed:
        _online_targets(results["online"], rows)
    if "ann" not in failed:
        _ann_targets(results["ann"], rows)
    return rows


def _online_targets(online: dict, rows: list[dict]) -> None:
    rows.append({"target": "materialization at least 5x stock rows/s", "figure": f"{online['materialize_speedup']}x",
                 "met": online["materialize_speedup"] >= 5})
    for set_name in online_store_benchmark.READ_SETS:
        read = online["reads"].get(f"{set_name} x 100")
        if read is not None:
            rows.append({"target": f"online read of 100 entities ({set_name}) at least 3x faster than stock: "
                                   "get_online_features p50",
                         "figure": f"{read['read_p50_speedup']}x", "met": read["read_p50_speedup"] >= 3})
            rows.append({"target": "  the same with Feast's OnlineResponse.to_dict() added (the same conversion "
                                   "for both stores)",
                         "figure": f"{read['p50_speedup']}x (p99 {read['p99_speedup']}x)",
                         "met": read["p50_speedup"] >= 3})


def _ann_targets(ann: dict, rows: list[dict]) -> None:
    for scan, key, way in (("stock's scan", "plugin_speedup_over_stock_p50", "plugin"),
                           ("an SQL scan", "plugin_speedup_over_sql_scan_p50", "plugin"),
                           ("an SQL scan, both without Feast", "sql_hnsw_speedup_over_sql_scan_p50", "sql_hnsw")):
        recall = ann["search"][way]["recall_at_k"]
        rows.append({"target": f"ANN at least 10x faster than {scan} at recall@{ann['top_k']} >= 0.95",
                     "figure": f"{ann[key]}x at recall {recall}", "met": ann[key] >= 10 and recall >= 0.95})


def summary(results: dict) -> list[str]:
    results["targets"] = targets(results)
    return ["Issue 9 targets",
            table(["target", "figure", "met"], [[t["target"], t["figure"], _met(t["met"])] for t in results["targets"]])]


if __name__ == "__main__":
    run_subjects(SUBJECTS, "Feast stores benchmark (issue 9)", __doc__.split("\n\n")[0], "feast_stores.json",
                 summary=summary)
