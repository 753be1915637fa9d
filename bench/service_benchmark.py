"""Latency of the HTTP service's /recommend against the stock Feast feature server.

Starts ``interest serve`` on loopback (the configured database must hold a trained,
serving model: run ``make run`` first) and drives ``POST /recommend`` (k=10, 100 explicit
candidates) from concurrent keep-alive clients. Then starts the stock ``feast serve`` with
the same number of workers and drives ``POST /get-online-features`` for the same user and
candidates through the serving feature service (the features a ranking call needs,
without any model), and prints p50/p95/p99 latency, throughput and CPU per request of
both, with the ratio. Last, it times the stages of one ``recommend`` call in process.

    python bench/service_benchmark.py [--requests 2000] [--concurrency 8] [--workers 2]

With ``--duration S`` it measures only the refresh of the service's item-feature cache
instead: ``/recommend`` (100 candidates) driven for S seconds with the cache re-read every
``--refresh-period`` seconds (``item_features_max_age_s``), and p50/p99/max latency over
the whole run and per refresh period, so that a stall at each refresh shows:

    python bench/service_benchmark.py --duration 60 --refresh-period 5 --workers 1 --concurrency 4

The load generator (one process per concurrent client, each with one keep-alive
connection, sending its next request when the last one is answered) runs on the same
machine and takes CPU from the servers; its CPU per request is printed so that it can
be accounted for.

Both servers run in their own process group and are stopped with all their workers
however the run ends (Ctrl-C and SIGTERM included); so are the client processes.
"""
from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import psutil

from harness import (ServerProcess, embedded_server_stopped_if_started, load_average, machine_info, server_process, stop_on_sigterm,
                     wait_ready)

KEY = "benchmark-key"
SERVICE_PACKAGES = ("feast", "fastapi", "uvicorn", "gunicorn", "torch", "xgboost")


def percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1000
    return {f"p{q}_ms": round(float(np.percentile(ms, q)), 2) for q in (50, 95, 99)}


def post(connection: http.client.HTTPConnection, path: str, body: bytes, headers: dict[str, str]) -> bytes:
    connection.request("POST", path, body, headers)
    response = connection.getresponse()
    payload = response.read()
    if response.status != 200:
        raise RuntimeError(f"{path}: HTTP {response.status}: {payload[:300]!r}")
    return payload


def client_process(port: int, path: str, headers: dict[str, str], bodies: list[bytes], start_at: float) -> tuple[list[float], float, float]:
    """One closed-loop client: a keep-alive connection sending ``bodies`` one after another.

    Returns:
        Per-request latencies (s), the time its last answer arrived, its CPU seconds.
    """
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Content-Type": "application/json", **headers}
    post(connection, path, bodies[0], headers)  # connect before the clock starts
    time.sleep(max(0.0, start_at - time.time()))
    cpu, latencies = time.process_time(), []
    for body in bodies:
        t = time.perf_counter()
        post(connection, path, body, headers)
        latencies.append(time.perf_counter() - t)
    return latencies, time.time(), time.process_time() - cpu


def client_for_duration(port: int, path: str, headers: dict[str, str], bodies: list[bytes], start_at: float,
                        duration_s: float) -> list[tuple[float, float]]:
    """One closed-loop client sending ``bodies`` round and round for ``duration_s``.

    Returns:
        (seconds after ``start_at`` the request was sent, its latency in seconds) of each.
    """
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Content-Type": "application/json", **headers}
    post(connection, path, bodies[0], headers)
    time.sleep(max(0.0, start_at - time.time()))
    samples, sent = [], 0
    while time.time() - start_at < duration_s:
        t, wall = time.perf_counter(), time.time()
        post(connection, path, bodies[sent % len(bodies)], headers)
        samples.append((wall - start_at, time.perf_counter() - t))
        sent += 1
    return samples


def process_cpu_s(server: ServerProcess) -> float:
    """User + system CPU seconds of a server process and its workers."""
    root = psutil.Process(server.process.pid)
    total = 0.0
    for proc in [root, *root.children(recursive=True)]:
        try:
            times = proc.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total


def drive(port: int, path: str, headers: dict[str, str], bodies: list[bytes], concurrency: int, server: ServerProcess) -> dict:
    """Send every body once from ``concurrency`` client processes (no shared GIL, so the
    clients add no queueing of their own); latency of each, throughput and CPU per
    request of the server and of the clients. The pool's processes are terminated when
    the block ends, also when a client or this process fails."""
    with multiprocessing.get_context("spawn").Pool(concurrency) as pool:
        pool.map(time.sleep, [0.2] * concurrency, chunksize=1)  # start the processes before timing
        start_at = time.time() + 1.0
        server_cpu = process_cpu_s(server)
        runs = pool.starmap(client_process, [(port, path, headers, bodies[i::concurrency], start_at)
                                             for i in range(concurrency)], chunksize=1)
        server_cpu = process_cpu_s(server) - server_cpu
    latencies = [t for run in runs for t in run[0]]
    wall = max(run[1] for run in runs) - start_at
    n = len(latencies)
    return {
        **percentiles(latencies), "mean_ms": round(1000 * float(np.mean(latencies)), 2),
        "throughput_rps": round(n / wall, 1),
        "server_cpu_ms_per_request": round(1000 * server_cpu / n, 2),
        "client_cpu_ms_per_request": round(1000 * sum(run[2] for run in runs) / n, 2),
    }


def serving_config(folder: Path, neighbour_search: str, **overrides) -> str:
    """A serving config file in ``folder`` (a temporary one), for INTEREST_SERVING_CONFIG."""
    path = folder / "serving.yaml"
    path.write_text(json.dumps({"neighbour_search": neighbour_search, **overrides}))  # JSON is YAML
    return str(path)


def refresh_stalls(args, bodies: list[bytes]) -> dict:
    """``/recommend`` latency over ``args.duration`` seconds with the item-feature cache
    re-read every ``args.refresh_period`` seconds: overall and per refresh period."""
    with tempfile.TemporaryDirectory(prefix="service_bench_") as config_dir, server_process(
        [sys.executable, "-m", "interest_shift.cli", "serve", "--port", str(args.port), "--workers", str(args.workers)],
        env={**os.environ, "INTEREST_API_KEY": KEY, "INTEREST_SERVING_CONFIG": serving_config(
            Path(config_dir), args.neighbour_search, item_features_max_age_s=args.refresh_period)},
    ) as server:
        wait_ready(args.port, "/ready", server)
        headers = {"X-API-Key": KEY}
        drive(args.port, "/recommend", headers, bodies[: args.warmup], args.concurrency, server)  # warm every worker
        with multiprocessing.get_context("spawn").Pool(args.concurrency) as pool:
            pool.map(time.sleep, [0.2] * args.concurrency, chunksize=1)
            start_at = time.time() + 1.0
            runs = pool.starmap(client_for_duration, [(args.port, "/recommend", headers, bodies[i::args.concurrency], start_at,
                                                       args.duration) for i in range(args.concurrency)], chunksize=1)
    sent, latency = np.array([s for run in runs for s in run]).T
    period = (sent // args.refresh_period).astype(int)
    per_period = [latency[period == p] for p in np.unique(period)]
    return {
        "duration_s": args.duration, "refresh_period_s": args.refresh_period, "requests": len(latency),
        **percentiles(list(latency)), "max_ms": round(1000 * float(latency.max()), 2),
        "per_refresh_period": {
            "p99_ms": [round(1000 * float(np.percentile(v, 99)), 1) for v in per_period],
            "max_ms": [round(1000 * float(v.max()), 1) for v in per_period],
        },
    }


def serve_ours(args, bodies: list[bytes], retrieved: list[bytes]) -> tuple[dict, dict]:
    """Both kinds of /recommend call: with 100 given candidates, and with the candidates
    retrieved by the service itself."""
    with tempfile.TemporaryDirectory(prefix="service_bench_") as config_dir, server_process(
        [sys.executable, "-m", "interest_shift.cli", "serve", "--port", str(args.port), "--workers", str(args.workers)],
        env={**os.environ, "INTEREST_API_KEY": KEY,
             "INTEREST_SERVING_CONFIG": serving_config(Path(config_dir), args.neighbour_search)},
    ) as server:
        wait_ready(args.port, "/ready", server)
        headers = {"X-API-Key": KEY}
        answer = json.loads(post(http.client.HTTPConnection("127.0.0.1", args.port), "/recommend", bodies[0],
                                 {"Content-Type": "application/json", **headers}))
        assert len(answer["items"]) == 10 and not answer["degraded"] and not answer["cold_start"], answer
        drive(args.port, "/recommend", headers, bodies[: args.warmup], args.concurrency, server)  # warm every worker
        return (drive(args.port, "/recommend", headers, bodies, args.concurrency, server),
                drive(args.port, "/recommend", headers, retrieved, args.concurrency, server))


def serve_stock(args, settings, pgvector: bool, bodies: list[bytes]) -> dict:
    with server_process(
        ["feast", "serve", "--port", str(args.stock_port), "--workers", str(args.workers), "--no-access-log",
         "--max-requests", "1000000"],  # its default recycles workers every 1,000 requests
        cwd=settings.feature_repo_dir, env={**os.environ, **settings.postgres.feast_environment(pgvector),
                                            "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"},
    ) as server:
        wait_ready(args.stock_port, "/health", server)
        answer = json.loads(post(http.client.HTTPConnection("127.0.0.1", args.stock_port), "/get-online-features", bodies[0],
                                 {"Content-Type": "application/json"}))
        values = dict(zip(answer["metadata"]["feature_names"], answer["results"]))
        assert len(values["item_view_count_7d"]["values"]) == 100 and any(v is not None for v in values["view_count_7d"]["values"])
        drive(args.stock_port, "/get-online-features", {}, bodies[: args.warmup], args.concurrency, server)
        return drive(args.stock_port, "/get-online-features", {}, bodies, args.concurrency, server)


def stages(recommender, payloads: list[dict], repeats: int) -> dict[str, float]:
    """Mean in-process milliseconds of each stage of ``recommend`` (one thread, no HTTP;
    thread pools limited to one thread, as in a service worker)."""
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(1)
    threadpool_limits(limits=1)
    timings: dict[str, list[float]] = {}
    counts: list[int] = []

    def clock(name, fn, *a):
        t = time.perf_counter()
        out = fn(*a)
        timings.setdefault(name, []).append(time.perf_counter() - t)
        return out

    for payload in payloads[:30]:  # load the item feature cache and warm up
        recommender.recommend(payload["user_id"], 10, payload["candidates"])
    for payload in payloads[:repeats]:
        t = time.perf_counter()
        user = clock("online store read (user)", recommender.online_user, payload["user_id"])
        outputs = clock("LSTM", recommender._model_outputs, user)
        items = recommender.vocabulary.index_of(np.asarray(payload["candidates"], np.int64))
        scored = clock("features + XGBoost + blend", recommender.score_candidates, user, items, outputs)
        best = np.argsort(-scored.blend_score, kind="stable")[:10]
        clock("reasons (per-path attributions)", recommender._reasons, scored.features[best])
        timings.setdefault("total of the stages", []).append(time.perf_counter() - t)
        retrieved = clock("candidate retrieval, when none are given", recommender.candidate_items, user, outputs)
        counts.append(len(retrieved))
        clock("recommend() as one call", recommender.recommend, payload["user_id"], 10, payload["candidates"], False)
    return {**{name: round(1000 * float(np.mean(v)), 3) for name, v in timings.items()},
            "retrieved candidates per call (mean)": round(float(np.mean(counts)), 1)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2, help="worker processes of both servers")
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--port", type=int, default=8799)
    parser.add_argument("--stock-port", type=int, default=8798)
    parser.add_argument("--stage-repeats", type=int, default=300)
    parser.add_argument("--neighbour-search", choices=["in_process", "pgvector"], default="in_process",
                        help="the service's search for items near the user's interest embedding")
    parser.add_argument("--duration", type=float, default=0,
                        help="seconds: measure only /recommend over this long with --refresh-period (see above)")
    parser.add_argument("--refresh-period", type=float, default=60, help="the service's item_features_max_age_s, seconds")
    parser.add_argument("--out", type=Path, default=None, help="default: bench/results/service.json (service_refresh.json with --duration)")
    args = parser.parse_args()
    args.out = args.out or Path("bench/results/service_refresh.json" if args.duration else "bench/results/service.json")
    warnings.filterwarnings("ignore")
    stop_on_sigterm()

    from interest_models.serving.recommender import Recommender
    from interest_models.registry.model_registry import registry_for
    from materialize.pipeline import Pipeline
    from materialize.database.server import has_pgvector
    from materialize.settings import load_settings

    settings = load_settings()
    with embedded_server_stopped_if_started(settings.postgres), Pipeline(settings, progress=False) as pipeline:
        conn = pipeline.conn
        users = [r[0] for r in conn.execute("SELECT user_id FROM interest.events GROUP BY 1 ORDER BY count(*) DESC LIMIT 200")]
        items = dict(conn.execute("SELECT item_id, category_id FROM interest.items ORDER BY item_id"))
        names = dict(conn.execute("SELECT category_id, category FROM interest.categories"))
        pgvector = has_pgvector(conn)
        conn.commit()
        rng = np.random.default_rng(0)
        payloads = [{"user_id": int(rng.choice(users)), "k": 10, "candidates": [int(i) for i in rng.choice(list(items), 100, replace=False)]}
                    for _ in range(args.requests)]
        ours = [json.dumps(p).encode() for p in payloads]
        stock = [json.dumps({"feature_service": "user_item_serving", "entities": {
            "user_id": [p["user_id"]] * 100, "item_id": p["candidates"], "category_id": [items[i] for i in p["candidates"]]}}).encode()
            for p in payloads]

        result = {
            "machine": {**machine_info(packages=SERVICE_PACKAGES), "load_average_before": load_average()},
            "requests": args.requests, "concurrency": args.concurrency, "workers": args.workers, "k": 10, "candidates": 100,
            "neighbour_search": args.neighbour_search,
        }
        if args.duration:
            result["refresh"] = refresh_stalls(args, ours)
        else:
            retrieved = [json.dumps({"user_id": p["user_id"], "k": 10}).encode() for p in payloads]
            result["recommend_http"], result["recommend_http_retrieved_candidates"] = serve_ours(args, ours, retrieved)
            result["stock_feast_serve"] = {**serve_stock(args, settings, pgvector, stock),
                                           "what": "POST /get-online-features, feature service user_item_serving, 100 entity rows"}
            result["ratio_p99_stock_over_recommend"] = round(result["stock_feast_serve"]["p99_ms"] / result["recommend_http"]["p99_ms"], 2)
            recommender = Recommender.from_registry(registry_for(settings.project_dir).root, pipeline.store, names,
                                                    config={"neighbour_search": args.neighbour_search})
            result["in_process_ms"] = stages(recommender, payloads, args.stage_repeats)
    print(json.dumps(result, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
