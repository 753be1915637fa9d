"""Model quality over seeds, and the LSTM's input ablation, on the data ``make run`` loaded.

``train_models`` (as ``interest train`` runs it, nothing registered) is run:

1. once per ``--seeds`` value: the test table's blend, stacked ranker, its single parts
   (the LSTM, the ranker on Feast features only, the best baseline) and the paired
   blend - best-part NDCG@10 difference with its 95 % bootstrap interval over users;
2. once per ``--ablation`` variant of the LSTM's inputs (first seed), with the LSTM's own
   category and shift heads (no category booster), and the default with its booster: the
   LSTM's NDCG@10, next-category accuracy@1 and log-loss, shift AUC (observed label, and
   against the synthetic shop's planted shifts) beside the oracle where the data is synthetic.

    .venv/bin/python bench/model_quality.py                    # 3 seeds, 5 ablation variants
    .venv/bin/python bench/model_quality.py --seeds 1 --ablation   # one seed, no ablation
    INTEREST_PG_DB=movielens .venv/bin/python bench/model_quality.py --protocol leave_one_out --ablation
    # MovieLens with the LSTM inputs the README advises there (no session profile)
    INTEREST_PG_DB=movielens .venv/bin/python bench/model_quality.py --protocol leave_one_out --ablation \
        --lstm-inputs text time_gaps event_types category_profile

It reads the configured database (``interest env``) and writes nothing there; figures in
``bench/results/model_quality_<database>_<protocol>.json``. Nothing here asserts on time.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import time
from pathlib import Path

import numpy as np

from harness import fmt, load_average, machine_info, peak_memory_mib, progress, silence_known_warnings, table

_ALL_INPUTS = ["text", "time_gaps", "event_types", "category_profile", "session_profile"]
ABLATION = {  # name -> lstm.yaml overrides; None: the first seed's run (the default configs)
    "behaviour only (item ids, categories)": {"inputs": [], "category_booster": None},
    "+ text": {"inputs": ["text"], "category_booster": None},
    "+ text, time gaps, event types": {"inputs": ["text", "time_gaps", "event_types"], "category_booster": None},
    "+ category profile": {"inputs": _ALL_INPUTS[:4], "category_booster": None},
    "+ session profile": {"inputs": _ALL_INPUTS, "category_booster": None},
    "+ category booster (the default)": None,
}
RESULTS = Path(__file__).parent / "results"
"""Where ``model_quality_<database>_<protocol>.json`` goes (one file per data set and protocol)."""


def train(pipeline, overrides: dict):
    from interest_models.training.recipe import train_models

    started = time.perf_counter()
    result = train_models(pipeline.store, pipeline.conn, dt.timedelta(minutes=pipeline.settings.pipeline.session_gap_minutes),
                          overrides=overrides, config_dir=pipeline.settings.config_dir)
    return result, time.perf_counter() - started


def seed_row(seed: int, result, seconds: float) -> dict:
    from interest_models.training.recipe import BLEND, FEATURE_RANKER, RANKER

    ndcg = result.metrics["NDCG@10"]
    baselines = ndcg[[n for n in ndcg.index if n.startswith("baseline: ")]]
    comparison = result.comparisons.iloc[0]
    return {"seed": seed, "blend": ndcg[BLEND], "stacked ranker": ndcg[RANKER], "LSTM": ndcg["LSTM"],
            "ranker, Feast features only": ndcg[FEATURE_RANKER], "best baseline": baselines.max(),
            "best single part": result.comparisons.index[0].split(" - ", 1)[1],
            "difference": comparison["difference"], "95% low": comparison["95% low"], "95% high": comparison["95% high"],
            "relative": comparison["relative"], **category_columns(result), "seconds": seconds}


def category_columns(result) -> dict:
    """The LSTM's next-category accuracy@1 beside the 30-day dominant category's, its shift AUC,
    and the oracle's and the gap to it where the data is synthetic."""
    oracle = result.oracle.table
    lstm = result.shift_metrics["AUC, next category differs from the 30-day dominant (test)"]
    accuracy = {"accuracy@1": result.category_metrics["LSTM accuracy@1"],
                "30-day dominant accuracy@1": result.category_metrics["baseline 30-day dominant category accuracy@1"]}
    if oracle is None:
        return {**accuracy, "shift AUC": lstm}
    return {**accuracy, "shift AUC": lstm, "oracle shift AUC": oracle.loc["oracle", "shift AUC"],
            "behind the oracle": oracle.loc["oracle", "shift AUC"] - lstm}


def ablation_row(name: str, result, seconds: float) -> dict:
    oracle = result.oracle.table
    return {"variant": name, "LSTM NDCG@10": result.metrics.loc["LSTM", "NDCG@10"],
            "accuracy@1": result.category_metrics["LSTM accuracy@1"],
            "log-loss": oracle.loc["LSTM", "log-loss"] if oracle is not None else float("nan"),
            "shift AUC": result.shift_metrics["AUC, next category differs from the 30-day dominant (test)"],
            "planted-shift AUC": result.shift_metrics.get("AUC, planted shift under way (ground truth, held-out points)", float("nan")),
            "seconds": seconds}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[2026, 1, 2])
    parser.add_argument("--protocol", choices=["time_split", "leave_one_out"], default="time_split",
                        help="as interest train --protocol (leave_one_out also excludes seen items: MovieLens)")
    parser.add_argument("--ablation", nargs="*", default=list(ABLATION), choices=list(ABLATION),
                        help="LSTM input variants (none: skip)")
    parser.add_argument("--lstm-inputs", nargs="*", default=None, choices=_ALL_INPUTS,
                        help="the LSTM's inputs in the seed runs (default: lstm.yaml's)")
    args = parser.parse_args(argv)
    silence_known_warnings()
    from materialize.cli import open_pipeline

    seeds, ablation = [], []
    with open_pipeline(progress=False) as pipeline:
        info = machine_info(pipeline.conn)
        results = RESULTS / f"model_quality_{pipeline.conn.info.dbname}_{args.protocol}.json"
        events, users, items = pipeline.conn.execute(
            "SELECT count(*), count(DISTINCT user_id), count(DISTINCT item_id) FROM interest.events").fetchone()
        first = None
        protocol = {"protocol": args.protocol} | ({"exclude_seen": True} if args.protocol == "leave_one_out" else {})
        inputs = {} if args.lstm_inputs is None else {"lstm": {"inputs": args.lstm_inputs}}
        for seed in args.seeds:
            progress(f"seed {seed}")
            result, seconds = train(pipeline, {"training": {"seed": seed, **protocol}} | inputs)
            first = first or (seed, result, seconds)
            seeds.append(seed_row(seed, result, seconds))
        for name in args.ablation:
            progress(f"ablation: {name}")
            if ABLATION[name] is None and args.lstm_inputs is None:
                ablation.append(ablation_row(name, first[1], first[2]))
                continue
            result, seconds = train(pipeline, {"training": {"seed": first[0], **protocol}, "lstm": ABLATION[name] or {}})
            ablation.append(ablation_row(name, result, seconds))

    print(f"\nmachine: {info}\ndata: {events:,} events, {users:,} users, {items:,} items; load average {load_average()}; "
          f"peak RSS {peak_memory_mib():,.0f} MiB\n")
    columns = ["seed", "blend", "stacked ranker", "LSTM", "ranker, Feast features only", "best baseline", "best single part",
               "difference", "95% low", "95% high", "relative", *[c for c in ("accuracy@1", "30-day dominant accuracy@1", "shift AUC", "oracle shift AUC", "behind the oracle")
                                                                  if c in seeds[0]], "seconds"]
    print("Test NDCG@10 per seed; difference = blend - best single part, 95 % bootstrap interval over users:")
    print(table(columns, [[fmt(r[c], 4) if isinstance(r[c], float) else str(r[c]) for c in columns] for r in seeds]))
    relative = [r["relative"] for r in seeds]
    print(f"blend over its best single part: mean {np.mean(relative):+.2%}, min {np.min(relative):+.2%}; "
          f"interval above zero in {sum(r['95% low'] > 0 for r in seeds)} of {len(seeds)} seeds")
    if ablation:
        columns = list(ablation[0])
        print(f"\nLSTM input ablation (seed {first[0]}):")
        print(table(columns, [[fmt(r[c], 4) if isinstance(r[c], float) else r[c] for c in columns] for r in ablation]))
    results.parent.mkdir(exist_ok=True)
    results.write_text(json.dumps({"machine": info, "protocol": args.protocol, "lstm_inputs": args.lstm_inputs, "events": events, "users": users, "items": items,
                                   "seeds": seeds, "ablation": ablation}, indent=2, default=str))


if __name__ == "__main__":
    main()
