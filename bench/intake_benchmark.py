"""Event intake of ``interest serve``: sustained events/s, freshness online, and a Postgres
outage in the middle of a run.

The script starts its own embedded PostgreSQL in a temporary folder (the fault run stops
and restarts it, so it never touches the configured server), loads a synthetic shop whose
history ends now, builds the features, applies and materializes the Feast repo, trains a
small model and registers it, then starts ``interest serve --workers W`` and measures:

1. intake: events acknowledged per second with batches of 1 and of 100 events, from
   ``--clients`` closed-loop client processes for ``--seconds`` each. Meanwhile a probe
   process sends one event at a time for users of its own and polls Feast's
   ``get_online_features`` until the user's recent sequence ends with it: freshness =
   acknowledgement -> visible online, p50/p99;
2. with ``--before REF``: the same single-event intake by the service of git revision REF
   (checked out in a temporary worktree) on the same database, for the ratio;
3. the fault run: ``--fault-seconds`` of intake in batches of 10 with Postgres stopped for
   ``--outage-seconds`` after a third of it. Clients retry each refused or failed batch
   with the same event ids until it is acknowledged. Afterwards: events acknowledged vs
   stored (equal means nothing lost and nothing stored twice), the errors clients saw, and
   the time from the restart to the first acknowledged batch.

    python bench/intake_benchmark.py [--users 2000] [--seconds 30] [--clients 8] [--workers 2] [--before REF]

Everything it starts (server, clients, probe, Postgres) is stopped and its folder removed
however the run ends. Nothing here asserts on time.
"""
from __future__ import annotations

import argparse
import datetime as dt
import http.client
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

from harness import (PROJECT_DIR, fmt, load_average, machine_info, progress, server_process, stop_on_sigterm, table,
                     wait_ready)

KEY = "benchmark-key"
PROBE_USERS = 40          # shop users only the probe writes for
PROBE_INTERVAL_S = 0.1    # between one probe event becoming visible and the next
PROBE_POLL_S = 0.025      # between two reads of the probe user's online sequence
FAST_TRAINING = {
    "lstm": {"max_epochs": 2, "patience": 1},
    "ranker": {"n_estimators": 60, "early_stopping_rounds": 15},
    "training": {"max_points_per_split": {"train_sequence": 6000, "train_ranker": 600, "valid": 500, "test": 500}},
}


# ----------------------------------------------------------------------------- set-up


def environment(pgdata: Path, home: Path) -> dict[str, str]:
    """The service's environment: the benchmark's server (as an external one: nobody but
    the fault run starts it) and project folder."""
    conninfo = f"postgresql+psycopg://postgres:@/interest?host={pgdata}&port=5432&sslmode=disable"
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("INTEREST_")}
    return {**inherited, "INTEREST_HOME": str(home), "INTEREST_PG_HOST": str(pgdata), "INTEREST_PG_PORT": "5432",
            "INTEREST_PG_DB": "interest", "INTEREST_PG_USER": "postgres", "INTEREST_PG_PASSWORD": "",
            "INTEREST_PG_SSLMODE": "disable", "INTEREST_REGISTRY_URL": conninfo, "INTEREST_API_KEY": KEY,
            "PYTHONPATH": str(PROJECT_DIR)}


def use_environment(pgdata: Path, home: Path) -> None:
    """This process's environment as the service's (``environment``)."""
    for name in [name for name in os.environ if name.startswith("INTEREST_")]:
        del os.environ[name]
    os.environ.update(environment(pgdata, home))


def prepare(args, pgdata: Path, home: Path) -> dict:
    """Load, build, apply, materialize and train on a shop ending now (in this process)."""
    import pandas as pd

    from interest_models.registry.model_registry import registry_for
    from interest_models.training.recipe import train_models
    from materialize.ingest.sources.synthetic import SyntheticConfig
    from materialize.pipeline import Pipeline
    from materialize.settings import load_settings

    use_environment(pgdata, home)
    settings = load_settings()
    shop = SyntheticConfig(n_users=args.users, n_items=args.items, days=30, seed=args.seed,
                           end=pd.Timestamp.now(tz="UTC").floor("min"))
    started = time.perf_counter()
    with Pipeline(settings, progress=False) as pipeline:
        pipeline.run(lambda p: p.load_synthetic(shop))
        result = train_models(pipeline.store, pipeline.conn, dt.timedelta(minutes=30), overrides=FAST_TRAINING, device="cpu")
        registry = registry_for(home)
        registry.set_serving(registry.register(result))
        events, users = pipeline.conn.execute("SELECT count(*), count(DISTINCT user_id) FROM interest.events").fetchone()
        items = [row[0] for row in pipeline.conn.execute("SELECT item_id FROM interest.items ORDER BY item_id")]
        pipeline.conn.commit()
    progress(f"shop of {events:,} events, {users:,} users, {len(items):,} items ready in {time.perf_counter() - started:.0f} s")
    return {"events": events, "users": users, "items": items}


# ----------------------------------------------------------------------------- clients


class Client:
    """A keep-alive connection to the service that reconnects when the server closed it
    while idle (its keep-alive timeout), as HTTP clients do."""

    def __init__(self, port: int):
        self.port = port
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def post(self, body: bytes) -> tuple[int, dict, dict]:
        """(status, headers, answer) of ``POST /events``; raises OSError or HTTPException
        when the service cannot be reached."""
        for attempt in (1, 2):
            try:
                self.connection.request("POST", "/events", body, {"Content-Type": "application/json", "X-API-Key": KEY})
                response = self.connection.getresponse()
                payload = response.read()
                return response.status, dict(response.getheaders()), json.loads(payload) if payload else {}
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                self.connection.close()
                self.connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
                if attempt == 2:
                    raise


def _events(rng, users: list[int], items: list[int], n: int, prefix: str, with_ids: bool) -> list[dict]:
    now = dt.datetime.now(dt.timezone.utc)
    return [{"user_id": int(u), "item_id": int(i), "event_type": "view",
             "event_timestamp": (now - dt.timedelta(microseconds=int(rng.integers(0, 10**6)))).isoformat(),
             **({"event_id": f"{prefix}-{uuid.uuid4().hex}"} if with_ids else {})}
            for u, i in zip(rng.choice(users, n), rng.choice(items, n))]


def intake_client(port: int, batch: int, users: list[int], items: list[int], start_at: float, seconds: float, seed: int,
                  with_ids: bool, retry: bool, prefix: str, period_s: float | None = None) -> dict:
    """One client sending batches until ``seconds`` are over: the next as soon as the last is
    answered (closed loop), or one every ``period_s``. With ``retry``, a batch that was
    refused or failed is sent again, unchanged, until it is acknowledged (also after the
    time is over). Returns acknowledged events and ids, errors seen and the times of the
    acknowledgements."""
    rng, client = np.random.default_rng(seed), Client(port)
    time.sleep(max(0.0, start_at - time.time()) + (rng.uniform(0, period_s) if period_s else 0.0))
    acked, ids, errors, acked_at, duplicates_on_retry, sent = 0, [], {}, [], 0, 0
    while time.time() - start_at < seconds:
        if period_s:
            time.sleep(max(0.0, start_at + sent * period_s - time.time()))
        sent += 1
        events = _events(rng, users, items, batch, prefix, with_ids)
        body, attempt = json.dumps(events[0] if batch == 1 else events).encode(), 0
        while True:
            attempt += 1
            try:
                status, headers, answer = client.post(body)
            except (OSError, http.client.HTTPException) as error:
                status, headers, answer = type(error).__name__, {}, {}
            if status == 200:
                acked += len(events)
                ids += [e.get("event_id") for e in events]
                acked_at.append(time.time() - start_at)
                if attempt > 1:
                    duplicates_on_retry += answer.get("duplicate", 0)
                break
            errors[str(status)] = errors.get(str(status), 0) + 1
            if not retry:
                break
            time.sleep(min(float(headers.get("Retry-After", 0.5)), 2.0))
    return {"acked": acked, "ids": ids if with_ids else [], "errors": errors, "acked_at": acked_at,
            "duplicates_on_retry": duplicates_on_retry}


def probe(port: int, pgdata: str, home: str, users: list[int], items: list[int], start_at: float, seconds: float) -> list[float]:
    """Send one event at a time for ``users`` and time, for each, acknowledgement -> the
    user's online recent sequence ends with its item (polled through Feast)."""
    use_environment(Path(pgdata), Path(home))
    from materialize.database.server import connect, has_pgvector
    from materialize.feature_store.repo import open_store
    from materialize.settings import load_settings

    settings = load_settings()
    with connect(settings.postgres) as conn:
        store = open_store(settings.feature_repo_dir, settings.postgres, has_pgvector(conn))

    def last_item(user: int):
        row = store.get_online_features(features=["user_recent_sequence:recent_item_ids"],
                                        entity_rows=[{"user_id": user}]).to_dict()["recent_item_ids"][0]
        return row[-1] if row else None

    rng, client, freshness = np.random.default_rng(7), Client(port), []
    time.sleep(max(0.0, start_at - time.time()))
    while time.time() - start_at < seconds:
        user = int(rng.choice(users))
        before = last_item(user)
        item = int(rng.choice([i for i in items[:50] if i != before]))
        status, _, _ = client.post(json.dumps({"user_id": user, "item_id": item, "event_type": "view"}).encode())
        acked = time.perf_counter()
        if status != 200:
            continue
        while last_item(user) != item and time.perf_counter() - acked < 30:
            time.sleep(PROBE_POLL_S)
        freshness.append(time.perf_counter() - acked)
        time.sleep(PROBE_INTERVAL_S)
    return freshness


# ----------------------------------------------------------------------------- phases


def intake_phase(args, shop: dict, pgdata: Path, home: Path, batch: int, rate: float | None = None, with_ids: bool = True,
                 freshness: bool = True) -> dict:
    """Intake in batches of ``batch`` from ``args.clients`` clients, closed loop or at
    ``rate`` events/s in all; with ``freshness``, the probe runs meanwhile."""
    load_users = list(range(1, shop["users"] - PROBE_USERS + 1))
    probe_users = list(range(shop["users"] - PROBE_USERS + 1, shop["users"] + 1))
    context = multiprocessing.get_context("spawn")
    with context.Pool(args.clients + 1) as pool:
        pool.map(time.sleep, [0.2] * (args.clients + 1), chunksize=1)
        start_at = time.time() + (25.0 if freshness else 2.0)  # the probe imports Feast first
        probing = pool.apply_async(probe, (args.port, str(pgdata), str(home), probe_users, shop["items"], start_at, args.seconds)) \
            if freshness else None
        runs = pool.starmap(intake_client, [(args.port, batch, load_users, shop["items"], start_at, args.seconds, 100 + c,
                                             with_ids, False, f"b{batch}-c{c}-{uuid.uuid4().hex[:6]}",
                                             args.clients * batch / rate if rate else None)
                                            for c in range(args.clients)], chunksize=1)
        waits = probing.get() if probing else []
    acked = sum(r["acked"] for r in runs)
    errors: dict[str, int] = {}
    for run in runs:
        for status, n in run["errors"].items():
            errors[status] = errors.get(status, 0) + n
    result = {"batch": batch, "offered_events_per_s": rate, "clients": args.clients, "seconds": args.seconds,
              "events_acked": acked, "events_per_s": round(acked / args.seconds, 1), "errors": errors,
              "service_counters": service_counters(args.port), "refresh_queue_drained_after_s": drained_s(pgdata)}
    if waits:
        ms = np.asarray(waits) * 1000
        result["freshness"] = {"probes": len(waits), "p50_ms": round(float(np.percentile(ms, 50)), 1),
                               "p99_ms": round(float(np.percentile(ms, 99)), 1), "max_ms": round(float(ms.max()), 1)}
    progress(f"batch {batch}, offered {rate or 'closed loop'}: {result['events_per_s']:,} events/s, errors {errors}, "
             f"freshness {result.get('freshness')}, {result['service_counters']}")
    return result


def drained_s(pgdata: Path, limit_s: float = 300.0) -> float | None:
    """Seconds until the online refresh queue is empty (None: not within ``limit_s``)."""
    import psycopg

    started = time.monotonic()
    with psycopg.connect(f"host={pgdata} dbname=interest user=postgres sslmode=disable", autocommit=True) as conn:
        while conn.execute("SELECT count(*) FROM interest.online_refresh_queue").fetchone()[0]:
            if time.monotonic() - started > limit_s:
                return None
            time.sleep(0.2)
    return round(time.monotonic() - started, 1)


def service_counters(port: int) -> dict:
    """The intake counters of the worker that answers (one of them) and the refresh backlog."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.request("GET", "/metrics", headers={"X-API-Key": KEY})
    return {k: v for k, v in json.loads(connection.getresponse().read()).items()
            if k.startswith("intake_") or k == "refresh_backlog"}


def fault_phase(args, shop: dict, pgdata: Path) -> dict:
    """Intake in batches of 10 with Postgres stopped for ``outage_seconds`` after a third of the run."""
    import psycopg

    from materialize.database.server import stop_embedded

    users = list(range(1, shop["users"] - PROBE_USERS + 1))
    context = multiprocessing.get_context("spawn")
    with context.Pool(args.clients) as pool:
        pool.map(time.sleep, [0.2] * args.clients, chunksize=1)
        start_at = time.time() + 2.0
        running = pool.starmap_async(intake_client, [(args.port, 10, users, shop["items"], start_at, args.fault_seconds,
                                                       300 + c, True, True, f"fault-c{c}") for c in range(args.clients)],
                                     chunksize=1)
        time.sleep(max(0.0, start_at + args.fault_seconds / 3 - time.time()))
        stopped_at = time.time() - start_at
        stop_embedded(pgdata)
        progress(f"postgres stopped at {stopped_at:.1f} s")
        time.sleep(args.outage_seconds)
        # a fresh process: pgserver keeps the handle of a server it started in this one
        subprocess.run([sys.executable, "-c", "import sys; from pathlib import Path; from materialize.database.server import "
                        "start_embedded; start_embedded(Path(sys.argv[1]))", str(pgdata)], check=True, capture_output=True,
                       env={**os.environ, "PYTHONPATH": str(PROJECT_DIR)})
        restarted_at = time.time() - start_at
        progress(f"postgres restarted at {restarted_at:.1f} s")
        runs = running.get()
    acked_ids = [i for run in runs for i in run["ids"]]
    with psycopg.connect(f"host={pgdata} dbname=interest user=postgres sslmode=disable") as conn:
        stored, distinct, natural = conn.execute(
            "SELECT count(*), count(DISTINCT event_id), count(DISTINCT (user_id, event_timestamp, item_id, event_type)) "
            "FROM interest.events WHERE event_id LIKE 'fault-%'").fetchone()
        lost = conn.execute("SELECT count(*) FROM unnest(%s::text[]) AS a(id) WHERE NOT EXISTS "
                            "(SELECT 1 FROM interest.events e WHERE e.event_id = a.id)", (acked_ids,)).fetchone()[0]
    errors: dict[str, int] = {}
    for run in runs:
        for status, n in run["errors"].items():
            errors[status] = errors.get(status, 0) + n
    after = [t for run in runs for t in run["acked_at"] if t > restarted_at]
    result = {"seconds": args.fault_seconds, "outage_s": args.outage_seconds, "stopped_at_s": round(stopped_at, 1),
              "restarted_at_s": round(restarted_at, 1), "events_acked": len(acked_ids), "events_stored": stored,
              "distinct_event_ids_stored": distinct, "distinct_natural_keys_stored": natural,
              "acked_but_not_stored": lost, "stored_by_a_failed_attempt_then_acked_as_duplicate":
              sum(run["duplicates_on_retry"] for run in runs), "client_errors": errors,
              "recovery_s": round(min(after) - restarted_at, 2) if after else None}
    progress(f"fault run: {json.dumps(result)}")
    return result


def serve(args, env: dict, cwd: Path):
    return server_process([sys.executable, "-m", "interest_shift.cli", "serve", "--port", str(args.port),
                           "--workers", str(args.workers)], env=env, cwd=str(cwd))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--items", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each intake phase")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--port", type=int, default=8731)
    parser.add_argument("--fault-seconds", type=float, default=60.0)
    parser.add_argument("--outage-seconds", type=float, default=10.0)
    parser.add_argument("--single-rate", type=float, default=200.0, help="events/s offered one by one while freshness is probed")
    parser.add_argument("--batch-rate", type=float, default=1000.0, help="events/s offered in batches of 100 while probed")
    parser.add_argument("--before", help="git revision whose service to measure too (single events)")
    parser.add_argument("--skip-fault", action="store_true")
    args = parser.parse_args(argv)
    stop_on_sigterm()
    from materialize.database.server import start_embedded, stop_embedded

    folder = Path(tempfile.mkdtemp(prefix="intake_bench_"))
    pgdata, home, worktree = folder / "pgdata", folder / "home", folder / "before"
    home.mkdir()
    (home / "feature_repo").symlink_to(PROJECT_DIR / "feature_repo")
    results: dict = {"started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "args": vars(args)}
    try:
        start_embedded(pgdata)
        shop = prepare(args, pgdata, home)
        results["shop"] = {k: v for k, v in shop.items() if k != "items"} | {"items": len(shop["items"])}
        env = environment(pgdata, home)
        if args.before:
            subprocess.run(["git", "-C", str(PROJECT_DIR), "worktree", "add", "--detach", str(worktree), args.before],
                           check=True, capture_output=True)
            (home / "feature_repo").unlink()  # REF's service reads REF's repo (its yaml keys), the same registries
            (home / "feature_repo").symlink_to(worktree / "feature_repo")
            try:
                with serve(args, {**env, "PYTHONPATH": str(worktree)}, worktree) as server:
                    wait_ready(args.port, "/ready", server, timeout_s=300)
                    results["before"] = {"ref": args.before, **intake_phase(args, shop, pgdata, home, 1, with_ids=False,
                                                                           freshness=False)}
            finally:
                (home / "feature_repo").unlink()
                (home / "feature_repo").symlink_to(PROJECT_DIR / "feature_repo")
        with serve(args, env, PROJECT_DIR) as server:
            wait_ready(args.port, "/ready", server, timeout_s=300)
            results["load_average_before"] = load_average()
            results["intake"] = [intake_phase(args, shop, pgdata, home, batch, freshness=False) for batch in (1, 100)]
            results["freshness"] = [intake_phase(args, shop, pgdata, home, batch, rate)
                                    for batch, rate in ((1, args.single_rate), (100, args.batch_rate))]
            if not args.skip_fault:
                results["fault"] = fault_phase(args, shop, pgdata)
            results["load_average_after"] = load_average()
    finally:
        if worktree.exists():
            subprocess.run(["git", "-C", str(PROJECT_DIR), "worktree", "remove", "--force", str(worktree)], capture_output=True)
        stop_embedded(pgdata)
        shutil.rmtree(folder, ignore_errors=True)
        progress(f"stopped the benchmark's postgres and removed {folder}")
    results["machine"] = machine_info(packages=("feast", "fastapi", "uvicorn", "psycopg", "pandas"))
    report(results)


def report(results: dict) -> None:
    rows = [[f"batch {r['batch']}, " + (f"{r['offered_events_per_s']:,.0f} events/s offered" if r["offered_events_per_s"]
                                        else "closed loop"),
             fmt(r["events_per_s"], 1), r["events_acked"], r.get("freshness", {}).get("p50_ms", "-"),
             r.get("freshness", {}).get("p99_ms", "-"), json.dumps(r["errors"])]
            for r in results.get("intake", []) + results.get("freshness", [])]
    if "before" in results:
        b = results["before"]
        rows.insert(0, [f"before ({b['ref']}), single events", fmt(b["events_per_s"], 1), b["events_acked"], "-", "-",
                        json.dumps(b["errors"])])
    print(json.dumps({k: v for k, v in results.items() if k != "machine"}, indent=1))
    print(f"\nmachine: {json.dumps(results['machine'])}")
    print(f"shop: {results['shop']}; {results['args']['clients']} clients, {results['args']['workers']} workers, "
          f"{results['args']['seconds']:.0f} s per phase")
    print(table(["intake", "events/s", "acked", "freshness p50 ms", "p99 ms", "client errors"], rows))
    if results.get("intake") and "before" in results:
        print(f"single events: {results['intake'][0]['events_per_s'] / max(results['before']['events_per_s'], 1e-9):.1f}x before")
    if "fault" in results:
        f = results["fault"]
        print(f"fault run: {f['events_acked']:,} acknowledged, {f['events_stored']:,} stored, {f['acked_but_not_stored']} lost, "
              f"{f['events_stored'] - f['distinct_natural_keys_stored']} duplicated; client errors {f['client_errors']}; "
              f"recovery {f['recovery_s']} s after the restart")


if __name__ == "__main__":
    main()
