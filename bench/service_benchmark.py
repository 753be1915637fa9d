"""Latency of the HTTP service's /recommend against the stock Feast online read.

Starts ``interest serve`` on loopback (the configured database must hold a trained,
serving model: run ``make run`` first), drives ``POST /recommend`` (k=10, 100 explicit
candidates) from concurrent clients, then reads the same features with the stock
``FeatureStore.get_online_features`` at the same concurrency, and prints p50/p95/p99 and
throughput of both, with the ratio. Requests are bounded in number and time.

    python bench/service_benchmark.py [--requests 400] [--concurrency 8] [--port 8799]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

KEY = "benchmark-key"


def percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1000
    return {"p50_ms": round(float(np.percentile(ms, 50)), 1), "p95_ms": round(float(np.percentile(ms, 95)), 1),
            "p99_ms": round(float(np.percentile(ms, 99)), 1)}


def drive(call, payloads: list, concurrency: int, deadline_s: float) -> tuple[list[float], float]:
    started = time.perf_counter()

    def timed(payload):
        if time.perf_counter() - started > deadline_s:
            return None
        t = time.perf_counter()
        call(payload)
        return time.perf_counter() - t

    with ThreadPoolExecutor(concurrency) as pool:
        latencies = [t for t in pool.map(timed, payloads) if t is not None]
    return latencies, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--port", type=int, default=8799)
    parser.add_argument("--deadline-s", type=float, default=300)
    parser.add_argument("--out", type=Path, default=Path("bench/results/service.json"))
    args = parser.parse_args()

    from materialize.pipeline import Pipeline
    from materialize.settings import load_settings

    settings = load_settings()
    with Pipeline(settings, progress=False) as pipeline:
        users = [r[0] for r in pipeline.conn.execute(
            "SELECT user_id FROM interest.events GROUP BY 1 ORDER BY count(*) DESC LIMIT 200")]
        items = [r[0] for r in pipeline.conn.execute("SELECT item_id FROM interest.items ORDER BY item_id")]
        store = pipeline.store
        rng = np.random.default_rng(0)
        payloads = [{"user_id": int(rng.choice(users)), "k": 10,
                     "candidates": [int(i) for i in rng.choice(items, 100, replace=False)]} for _ in range(args.requests)]

        server = subprocess.Popen(
            [sys.executable, "-m", "materialize.cli", "serve", "--port", str(args.port)],
            env={**os.environ, "INTEREST_API_KEY": KEY}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        try:
            client = httpx.Client(base_url=f"http://127.0.0.1:{args.port}", headers={"X-API-Key": KEY}, timeout=30)
            for _ in range(120):
                try:
                    if client.get("/ready").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.5)
            else:
                raise RuntimeError("the service did not become ready: " + server.stderr.read().decode()[-2000:])
            for payload in payloads[:20]:  # warm up
                client.post("/recommend", json=payload).raise_for_status()

            def recommend(payload):
                response = client.post("/recommend", json=payload)
                response.raise_for_status()
                assert not response.json()["degraded"]

            service_latency, service_wall = drive(recommend, payloads, args.concurrency, args.deadline_s)
        finally:
            server.terminate()
            server.wait(timeout=30)

        features = store.get_feature_service("user_item_serving")
        user_refs = [f"{p.name}:{f.name}" for p in features.feature_view_projections
                     if p.name.startswith("user_") and p.name != "user_item_affinity" for f in p.features]
        item_refs = [f"{p.name}:{f.name}" for p in features.feature_view_projections
                     if p.name in ("item_popularity", "item_catalog") for f in p.features]

        def stock(payload):
            store.get_online_features(features=user_refs, entity_rows=[{"user_id": payload["user_id"]}]).to_dict()
            store.get_online_features(features=item_refs, entity_rows=[{"item_id": i} for i in payload["candidates"]]).to_dict()

        for payload in payloads[:20]:
            stock(payload)
        stock_latency, stock_wall = drive(stock, payloads, args.concurrency, args.deadline_s)

    result = {
        "machine": {"cores": os.cpu_count(), "load_average": os.getloadavg()},
        "requests": len(service_latency), "concurrency": args.concurrency, "k": 10, "candidates": 100,
        "recommend_http": {**percentiles(service_latency), "throughput_rps": round(len(service_latency) / service_wall, 1)},
        "stock_get_online_features": {**percentiles(stock_latency), "throughput_rps": round(len(stock_latency) / stock_wall, 1),
                                      "what": "user features + 100 items' features, in process, no model"},
    }
    result["ratio_p99_recommend_over_stock"] = round(result["recommend_http"]["p99_ms"] / result["stock_get_online_features"]["p99_ms"], 2)
    print(json.dumps(result, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
