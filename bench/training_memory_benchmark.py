"""Time and peak memory of ``interest train`` as the shop grows (issue 10 item 7).

For each ``--events`` size, one at a time: a throw-away database gets the synthetic shop of
that size (the generator of ``make run``, scaled by ``SyntheticConfig.for_events``), its
item embeddings, a full feature build and ``feast apply``. Then ``interest train`` runs as a
user runs it, in its own process. The kernel's peak resident memory of that process
(``wait4``'s ``ru_maxrss``) and its wall time are recorded, with the stage lines it printed.
PostgreSQL's own memory is not in the figure (its shared buffers are fixed by config).

    .venv/bin/python bench/training_memory_benchmark.py                      # 1M and 10M events
    .venv/bin/python bench/training_memory_benchmark.py --events 250000 1000000

Each database (and the temporary project folder that gets the training report) is dropped
when its size is done, however the run ends. ``interest train``'s output is kept in
``bench/results/training_memory_<events>.log``. Nothing here
asserts on time or memory.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import (  # noqa: E402
    RESULTS_DIR, fmt, load_average, machine_info, progress, silence_known_warnings, stop_on_sigterm, table,
    throwaway_database, timed,
)

PROJECT_DIR = Path(__file__).resolve().parent.parent
STAGE_LINE = re.compile(r"^\[train (\d+)/(\d+)\] (.+) done in ([0-9.]+) s(?:: (.*))?$")


def prepare(pipeline, events: int, items: int, seed: int) -> dict:
    """Load the shop, embed, build and apply; returns what was loaded and how long each took."""
    from materialize.ingest.sources.synthetic import SyntheticConfig

    config = SyntheticConfig.for_events(events, n_items=items, seed=seed)
    seconds = {}
    with timed() as clock:
        pipeline.load_synthetic(config)
    seconds["load"] = round(clock.seconds, 1)
    for step, run in (("embed", pipeline.embed), ("build", lambda: pipeline.build(full=True)), ("apply", pipeline.apply)):
        with timed() as clock:
            run()
        seconds[step] = round(clock.seconds, 1)
        progress(f"{step} done in {clock.seconds:.1f} s")
    loaded, users = pipeline.conn.execute("SELECT count(*), count(DISTINCT user_id) FROM interest.events").fetchone()
    pipeline.conn.commit()
    return {"events": loaded, "users": users, "items": items, "prepare_s": seconds}


def train_in_own_process(pg, pgvector: bool, home: Path, log: Path) -> dict:
    """``interest train`` on ``pg`` with project folder ``home`` (its report goes there):
    wall seconds, peak RSS (MiB) and its stage lines."""
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("INTEREST_")},
           **pg.feast_environment(pgvector), "INTEREST_HOME": str(home), "PYTHONPATH": str(PROJECT_DIR)}
    command = [sys.executable, "-m", "interest_shift.cli", "train"]
    started = time.perf_counter()
    with log.open("w") as out:
        process = subprocess.Popen(command, cwd=PROJECT_DIR, env=env, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    exit_code = os.waitstatus_to_exitcode(status)
    text = log.read_text(errors="replace").replace("\r", "\n")
    if exit_code != 0:
        raise RuntimeError(f"interest train failed ({exit_code}); last lines:\n" + "\n".join(text.splitlines()[-20:]))
    stages = [{"stage": m.group(3), "seconds": float(m.group(4)), "detail": m.group(5)}
              for m in map(STAGE_LINE.match, text.splitlines()) if m]
    return {"seconds": round(seconds, 1), "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
            "cpu_s": round(usage.ru_utime + usage.ru_stime, 1), "stages": stages}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, nargs="+", default=[1_000_000, 10_000_000], help="shop sizes (about)")
    parser.add_argument("--items", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=7, help="seed of the synthetic shop")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "training_memory.json")
    args = parser.parse_args(argv)
    stop_on_sigterm()
    silence_known_warnings()
    from materialize.pipeline import Pipeline
    from materialize.settings import load_settings

    results = {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
               "command": " ".join([Path(sys.argv[0]).as_posix(), *(sys.argv[1:] if argv is None else argv)]),
               "load_average": {"start": load_average()}, "runs": []}
    for events in args.events:
        progress(f"shop of about {events:,} events")
        with throwaway_database(prefix="interest_trainmem") as pg, \
                tempfile.TemporaryDirectory(prefix="training_memory_") as home:
            (Path(home) / "feature_repo").symlink_to(PROJECT_DIR / "feature_repo")
            with Pipeline(dataclasses.replace(load_settings(), postgres=pg), progress=False) as pipeline:
                results.setdefault("machine", machine_info(pipeline.conn, packages=("torch", "xgboost", "feast", "pandas")))
                run = prepare(pipeline, events, args.items, args.seed)
                pgvector = pipeline.pgvector
            log = args.out.with_name(f"training_memory_{events}.log")
            log.parent.mkdir(parents=True, exist_ok=True)
            run["train"] = train_in_own_process(pg, pgvector, Path(home), log)
            run["load_average"] = load_average()
        progress(f"{run['events']:,} events: interest train {run['train']['seconds']:.0f} s, "
                 f"peak RSS {run['train']['peak_rss_mib']:,.0f} MiB")
        results["runs"].append(run)
        args.out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    results["load_average"]["end"] = load_average()
    render(results)
    args.out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    return results


def render(results: dict) -> None:
    m, runs = results["machine"], results["runs"]
    print(f"\ninterest train as the shop grows, {results['date']}\ncommand: {results['command']}\n"
          f"machine: {m['cpu_model']}, {m['cpu_cores']} cores, {m['ram_gib']} GiB RAM; "
          f"load average {results['load_average']}")
    print(table(["events", "users", "train s", "CPU s", "peak RSS MiB", "prepare (load/embed/build/apply) s"],
                [[r["events"], r["users"], fmt(r["train"]["seconds"], 1), fmt(r["train"]["cpu_s"], 1),
                  fmt(r["train"]["peak_rss_mib"], 1), "/".join(str(v) for v in r["prepare_s"].values())] for r in runs]))
    for first, later in zip(runs, runs[1:]):
        print(f"{first['events']:,} -> {later['events']:,} events (x{later['events'] / first['events']:.1f}): peak RSS "
              f"x{later['train']['peak_rss_mib'] / first['train']['peak_rss_mib']:.2f}, "
              f"time x{later['train']['seconds'] / first['train']['seconds']:.2f}")
    stages = [s["stage"] for s in runs[0]["train"]["stages"]]
    print(table(["stage (s)"] + [f"{r['events']:,}" for r in runs],
                [[stage] + [fmt(next((s["seconds"] for s in r["train"]["stages"] if s["stage"] == stage), None), 1)
                            for r in runs] for stage in stages]))


if __name__ == "__main__":
    main()
