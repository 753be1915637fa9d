"""GPU against CPU on the same machine: LSTM training, XGBoost ranker training, text embeddings.

Each workload runs the shipped code path twice in one process, first on the CPU (all of
its cores) and then on CUDA, and prints both rates and their ratio:

- LSTM: ``InterestShiftLSTM.fit`` as ``interest train`` calls it (``config/lstm.yaml``:
  Adam, bf16/fp16 autocast and the gradient scaler on CUDA), on random sequences of 50
  events, for two catalogue sizes (the item loss is a softmax over the whole catalogue).
  Rate = training sequences/s of the second epoch (the first warms kernels up), and the
  full-ranking inference rate of ``predict_all`` on the validation sequences.
- XGBoost: ``ItemRanker`` (``config/ranker.yaml``, 400 trees, no early stopping) on a
  ranking problem whose relevance depends on the features; NDCG@10 of both models on
  held-out groups shows the GPU model is as good.
- Embeddings: ``TextEmbedder`` (all-MiniLM-L6-v2, fp32 on CPU, fp16 autocast on CUDA) on
  the synthetic shop's item texts; the smallest cosine between a text's CPU and CUDA
  vectors shows they agree.

Needs a CUDA device (exits with a message otherwise). Nothing here asserts on time.

    python bench/gpu_benchmark.py [--sequences 50000] [--rows 1000000] [--texts 20000] [--out FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from interest_models.config import load_config
from interest_models.data.ranking_features import FEATURE_COLUMNS
from interest_models.models.interest_shift_lstm import InterestShiftLSTM, predict_all
from interest_models.models.item_ranker import ItemRanker
from model_benchmark import random_batch

def machine() -> dict:
    return {"python": platform.python_version(), "cpu_cores": os.cpu_count(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "load_average": [round(x, 2) for x in os.getloadavg()]}


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def lstm_rates(n_sequences: int, n_items: int, seed: int, devices: list[str]) -> dict:
    """Training and inference sequences/s of the shipped LSTM on each device."""
    config = {**load_config("lstm"), "max_epochs": 2, "patience": 10, "head_epochs": 0}
    n_categories = 12
    generator = torch.Generator().manual_seed(seed)
    train = random_batch(n_sequences, 50, n_items, n_categories, generator)
    valid = random_batch(max(n_sequences // 10, 1000), 50, n_items, n_categories, generator)
    text = torch.nn.functional.normalize(torch.randn(n_items + 1, 384, generator=generator), dim=1)
    item_categories = torch.cat([torch.zeros(1, dtype=torch.long), torch.randint(1, n_categories + 1, (n_items,), generator=generator)])
    result = {}
    for name in devices:
        device = torch.device(name)
        model = InterestShiftLSTM(n_items, n_categories, text, **{k: config[k] for k in (
            "item_dim", "category_dim", "event_type_dim", "hidden_dim", "dropout")}, inputs=tuple(config["inputs"]),
            item_head=config["item_head"], item_categories=item_categories)
        model.fit(train, valid, config, device, seed)
        train_rate = n_sequences / model.learning_curve.seconds[-1]
        _synchronize(device)
        started = time.perf_counter()
        predict_all(model, valid, device)
        _synchronize(device)
        infer_rate = len(valid) / (time.perf_counter() - started)
        result[name] = {"train_sequences_per_s": round(train_rate), "full_ranking_sequences_per_s": round(infer_rate),
                        "valid_ndcg_at_10": round(model.learning_curve.valid_ndcg_at_10[-1], 4)}
        print(f"  LSTM {n_sequences:,} sequences x 50 events, {n_items:,} items on {name}: train {train_rate:,.0f} seq/s, "
              f"full-ranking inference {infer_rate:,.0f} seq/s", flush=True)
    return result


def _ranking_problem(rows: int, group: int, rng: np.random.Generator):
    features = rng.normal(size=(rows, len(FEATURE_COLUMNS))).astype(np.float32)
    utility = features[:, 0] + 0.5 * features[:, 1] * features[:, 2] + rng.normal(scale=1.0, size=rows)
    query = np.repeat(np.arange(rows // group + 1), group)[:rows]
    relevance = (utility > np.quantile(utility, 1 - 2 / group)).astype(int)
    return pd.DataFrame(features, columns=FEATURE_COLUMNS), relevance, query


def _ndcg_at_10(scores: np.ndarray, relevance: np.ndarray, query: np.ndarray) -> float:
    """Mean binary NDCG@10 over the groups that hold a relevant row."""
    frame = pd.DataFrame({"q": query, "s": scores, "r": relevance}).sort_values(["q", "s"], ascending=[True, False])
    frame["rank"] = frame.groupby("q").cumcount() + 1
    discount = 1 / np.log2(np.arange(2, 12))
    dcg = (frame["r"] * (frame["rank"] <= 10) / np.log2(frame["rank"] + 1)).groupby(frame["q"]).sum()
    n_relevant = frame.groupby("q")["r"].sum()
    ideal = n_relevant.clip(upper=10).map(lambda n: discount[:n].sum())
    return float((dcg[n_relevant > 0] / ideal[n_relevant > 0]).mean())


def xgboost_rates(rows: int, group: int, seed: int, devices: list[str]) -> dict:
    """Fit seconds of the shipped ranker on each device and its held-out NDCG@10."""
    rng = np.random.default_rng(seed)
    features, relevance, query = _ranking_problem(rows, group, rng)
    test_features, test_relevance, test_query = _ranking_problem(rows // 10, group, rng)
    config = {**load_config("ranker"), "early_stopping_rounds": None, "base_margin": None}  # random features: no prior
    result = {}
    for name in devices:
        ranker = ItemRanker(config, seed, name)
        started = time.perf_counter()
        ranker.model.fit(features, relevance, qid=query, verbose=False)
        seconds = time.perf_counter() - started
        ndcg = _ndcg_at_10(ranker.score(test_features), test_relevance, test_query)
        result[name] = {"fit_s": round(seconds, 2), "test_ndcg_at_10": round(ndcg, 4)}
        print(f"  XGBoost ranker {rows:,} rows x {len(FEATURE_COLUMNS)} features, groups of {group}, "
              f"{config['n_estimators']} trees on {name}: {seconds:.1f} s, held-out NDCG@10 {ndcg:.4f}", flush=True)
    return result


def embedding_rates(n_texts: int, devices: list[str]) -> dict:
    """Texts/s of the shipped embedder on each device, and how far the vectors differ."""
    from materialize.embeddings.embedder import TextEmbedder
    from materialize.embeddings.item_text import item_text
    from materialize.ingest.sources.synthetic import SyntheticConfig, SyntheticShop

    items = SyntheticShop(SyntheticConfig(n_users=10, n_items=n_texts)).items()
    texts = [item_text(t, d) for t, d in zip(items["title"], items["description"])]
    result, vectors = {}, {}
    for name in devices:
        embedder = TextEmbedder(device=name)
        embedder.embed(texts[:256])  # warm-up
        _synchronize(torch.device(name))
        started = time.perf_counter()
        vectors[name] = embedder.embed(texts)
        seconds = time.perf_counter() - started
        result[name] = {"texts_per_s": round(len(texts) / seconds, 1), "seconds": round(seconds, 2)}
        print(f"  embeddings, {len(texts):,} item texts on {name}: {len(texts) / seconds:,.0f} texts/s", flush=True)
    if len(vectors) == 2:
        result["min_cosine_cpu_vs_cuda"] = round(float(np.min(np.sum(vectors["cpu"] * vectors["cuda"], axis=1))), 5)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sequences", type=int, default=50000, help="LSTM training sequences")
    parser.add_argument("--items", type=int, nargs="+", default=[3000, 30000], help="LSTM catalogue sizes")
    parser.add_argument("--rows", type=int, default=1000000, help="XGBoost training rows")
    parser.add_argument("--group", type=int, default=50, help="rows per XGBoost query group")
    parser.add_argument("--texts", type=int, default=20000, help="item texts to embed")
    parser.add_argument("--only", choices=["lstm", "xgboost", "embeddings"], nargs="+",
                        default=["lstm", "xgboost", "embeddings"])
    parser.add_argument("--devices", choices=["cpu", "cuda"], nargs="+", default=["cpu", "cuda"])
    parser.add_argument("--out", type=Path, default=Path("bench/results/gpu.json"))
    args = parser.parse_args()
    if "cuda" in args.devices and not torch.cuda.is_available():
        sys.exit("gpu_benchmark: no CUDA device here; run it on a machine with an NVIDIA GPU")
    results = {"machine": machine()}
    print(json.dumps(results["machine"]), flush=True)
    if "lstm" in args.only:
        results["lstm"] = {str(n): lstm_rates(args.sequences, n, 0, args.devices) for n in args.items}
    if "xgboost" in args.only:
        results["xgboost"] = xgboost_rates(args.rows, args.group, 0, args.devices)
    if "embeddings" in args.only:
        results["embeddings"] = embedding_rates(args.texts, args.devices)
    if args.devices == ["cpu", "cuda"]:
        print_ratios(results, args.rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))


def print_ratios(results: dict, rows: int) -> None:
    print("\nworkload | CPU | CUDA | CUDA / CPU")
    for n, rates in results.get("lstm", {}).items():
        cpu, gpu = rates["cpu"]["train_sequences_per_s"], rates["cuda"]["train_sequences_per_s"]
        print(f"LSTM training, {int(n):,} items (seq/s) | {cpu:,} | {gpu:,} | {gpu / cpu:.1f}x")
        cpu, gpu = rates["cpu"]["full_ranking_sequences_per_s"], rates["cuda"]["full_ranking_sequences_per_s"]
        print(f"LSTM full ranking, {int(n):,} items (seq/s) | {cpu:,} | {gpu:,} | {gpu / cpu:.1f}x")
    if "xgboost" in results:
        cpu, gpu = results["xgboost"]["cpu"]["fit_s"], results["xgboost"]["cuda"]["fit_s"]
        print(f"XGBoost ranker fit, {rows:,} rows (s) | {cpu} | {gpu} | {cpu / gpu:.1f}x")
    if "embeddings" in results:
        cpu, gpu = results["embeddings"]["cpu"]["texts_per_s"], results["embeddings"]["cuda"]["texts_per_s"]
        print(f"embeddings (texts/s) | {cpu:,} | {gpu:,} | {gpu / cpu:.1f}x; "
              f"min cosine CPU vs CUDA {results['embeddings']['min_cosine_cpu_vs_cuda']}")


if __name__ == "__main__":
    main()
