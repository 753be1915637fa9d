"""Training speed of the interest-shift LSTM and the XGBoost ranker, with machine and sizes.

LSTM: training sequences/s of ``InterestShiftLSTM`` as shipped (right-padded batch, one
fused LSTM call, output gathered at each sequence's last event) against the stock
variable-length recipe (``pack_padded_sequence``) on the same data, same device.
XGBoost: ``ItemRanker`` fit time at the stated size with our config, against
``XGBRanker`` defaults with the same number of trees.

    python bench/model_benchmark.py [--device cpu|cuda] [--sequences 20000] [--rows 200000]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import xgboost as xgb
from torch.nn.utils.rnn import pack_padded_sequence

from harness import load_average, machine_info
from interest_models.config import load_config
from interest_models.models.item_ranker import ItemRanker
from interest_models.data.ranking_features import FEATURE_COLUMNS
from interest_models.data.sequences import SequenceBatch
from interest_models.models.interest_shift_lstm import InterestShiftLSTM
from materialize.devices import select_device


class PackedInterestLSTM(InterestShiftLSTM):
    """The same model, run the stock way: packed variable-length sequences."""

    def forward(self, batch, item_representations=None):
        from interest_models.models.interest_shift_lstm import InterestOutputs

        items = (self.item_representations() if item_representations is None else item_representations)[batch.items]
        steps = torch.cat([items, self.category_embedding(batch.categories), self.event_type_embedding(batch.event_types),
                           batch.log_gaps.unsqueeze(-1)], dim=-1)
        packed = pack_padded_sequence(self.input_dropout(steps), batch.lengths.cpu(), batch_first=True, enforce_sorted=False)
        _, (hidden, _) = self.lstm(packed)
        state = self.state_dropout(hidden[-1])
        if "category_profile" in self.inputs:
            state = torch.cat([state, batch.category_shares.flatten(1)], dim=-1)
        logits = self.category_head(state)
        logits[:, 0] = float("-inf")
        shift = self.shift_head(torch.cat([state, self.category_embedding(batch.dominant_category)], dim=-1)).squeeze(-1)
        return InterestOutputs(logits, shift, self.interest_head(state))


def machine() -> dict:
    info = {**machine_info(packages=("torch", "xgboost")), "torch_threads": torch.get_num_threads(),
            "load_average": load_average()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def random_batch(n: int, length: int, n_items: int, n_categories: int, generator: torch.Generator) -> SequenceBatch:
    lengths = torch.randint(1, length + 1, (n,), generator=generator)
    mask = torch.arange(length)[None, :] < lengths[:, None]
    return SequenceBatch(
        items=torch.randint(1, n_items + 1, (n, length), generator=generator) * mask,
        categories=torch.randint(1, n_categories + 1, (n, length), generator=generator) * mask,
        event_types=torch.randint(1, 5, (n, length), generator=generator) * mask,
        log_gaps=torch.rand(n, length, generator=generator) * mask,
        lengths=lengths,
        dominant_category=torch.randint(1, n_categories + 1, (n,), generator=generator),
        category_shares=torch.softmax(torch.randn(n, 2, n_categories + 1, generator=generator), dim=-1),
        lifetime_shares=torch.softmax(torch.randn(n, n_categories + 1, generator=generator), dim=-1),
        lifetime_events=torch.randint(0, 500, (n,), generator=generator).float(),
        target_item=torch.randint(1, n_items + 1, (n,), generator=generator),
        target_category=torch.randint(1, n_categories + 1, (n,), generator=generator),
        shifted=torch.randint(0, 2, (n,), generator=generator).float(),
    )


def lstm_sequences_per_second(model_class, data: SequenceBatch, config: dict, device: torch.device, epochs: int) -> float:
    torch.manual_seed(0)
    model = model_class(3000, 12, torch.randn(3001, 384), **{k: config[k] for k in ("item_dim", "category_dim", "event_type_dim", "hidden_dim", "dropout")},
                        inputs=tuple(config["inputs"])).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config["learning_rate"])
    model.train()
    seen, seconds = 0, 0.0
    for epoch in range(epochs + 1):  # the first epoch warms up kernels and is not counted
        started = time.perf_counter()
        for start in range(0, len(data), config["batch_size"]):
            batch = data.select(torch.arange(start, min(start + config["batch_size"], len(data)))).to(device)
            optimizer.zero_grad(set_to_none=True)
            loss, _ = model.calculate_loss(batch, config["loss_weights"])
            loss.backward()
            optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if epoch:
            seconds += time.perf_counter() - started
            seen += len(data)
    return seen / seconds


def xgboost_fit_seconds(params: dict, rows: int, group: int, seed: int, device: str) -> float:
    rng = np.random.default_rng(seed)
    features = pd.DataFrame(rng.normal(size=(rows, len(FEATURE_COLUMNS))), columns=FEATURE_COLUMNS)
    relevance = (rng.random(rows) < 1 / group).astype(int)
    query = np.repeat(np.arange(rows // group + 1), group)[:rows]
    started = time.perf_counter()
    if params is None:
        xgb.XGBRanker(n_estimators=400, device=device, tree_method="hist").fit(features, relevance, qid=query)
    else:
        ranker = ItemRanker({**params, "early_stopping_rounds": None, "base_margin": None}, seed, device)
        ranker.model.fit(features, relevance, qid=query, verbose=False)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default=None)
    parser.add_argument("--sequences", type=int, default=20000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--rows", type=int, default=200000)
    parser.add_argument("--group", type=int, default=50)
    parser.add_argument("--out", type=Path, default=Path("bench/results/models.json"))
    args = parser.parse_args()
    device = select_device(args.device)
    config = load_config("lstm")
    results = {"machine": machine(), "device": str(device), "lstm": {}, "xgboost": {}}
    for length in (20, 50):
        data = random_batch(args.sequences, length, 3000, 12, torch.Generator().manual_seed(length))
        ours = lstm_sequences_per_second(InterestShiftLSTM, data, config, device, args.epochs)
        stock = lstm_sequences_per_second(PackedInterestLSTM, data, config, device, args.epochs)
        results["lstm"][f"length {length}"] = {"ours_sequences_per_s": round(ours), "packed_sequences_per_s": round(stock),
                                                "speedup": round(ours / stock, 2)}
        print(f"LSTM {args.sequences} sequences x length {length}, batch {config['batch_size']}, items 3000 on {device}: "
              f"ours {ours:,.0f} seq/s, packed {stock:,.0f} seq/s, ratio {ours / stock:.2f}", flush=True)
    xgb_device = "cuda" if device.type == "cuda" else "cpu"
    ours = xgboost_fit_seconds(load_config("ranker"), args.rows, args.group, 0, xgb_device)
    stock = xgboost_fit_seconds(None, args.rows, args.group, 0, xgb_device)
    results["xgboost"] = {"rows": args.rows, "features": len(FEATURE_COLUMNS), "group": args.group, "trees": 400,
                          "ours_fit_s": round(ours, 2), "defaults_fit_s": round(stock, 2), "ratio_defaults_over_ours": round(stock / ours, 2)}
    print(f"XGBoost ranker {args.rows:,} rows x {len(FEATURE_COLUMNS)} features, groups of {args.group}, 400 trees on {xgb_device}: "
          f"ours {ours:.1f} s, XGBRanker defaults {stock:.1f} s, ratio {stock / ours:.2f}")
    print(json.dumps(results["machine"]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
