"""The LSTM's epoch bar and the ranker's round bar end where training ended, and say so
when early stopping ended it; the learning curve (what the report prints) agrees."""
from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
import torch

from interest_models.data.ranking_features import FEATURE_COLUMNS
from interest_models.data.sequences import SequenceBatch
from interest_models.models.interest_shift_lstm import InterestShiftLSTM
from interest_models.models.item_ranker import ItemRanker
from tests.interest_models.models.random_batches import N_CATEGORIES, N_ITEMS, random_item_category, random_sequences

def _sequences(n: int, rng: np.random.Generator) -> SequenceBatch:
    return random_sequences(n, rng, random_item_category(rng))


def _last_bar(stderr: str, desc: str) -> str:
    """The bar's final rendering (tqdm redraws after carriage returns and pads shorter ones)."""
    return [line for line in re.split(r"[\r\n]", stderr) if line.startswith(desc)][-1].rstrip()


@pytest.mark.parametrize("learning_rate, max_epochs, patience", [
    (0.0, 10, 2),   # nothing learns: epoch 1 stays best, stops after epoch 3 of at most 10
    (0.01, 3, 5),   # runs every epoch
])
def test_lstm_bar_ends_at_the_last_epoch_run_with_the_best_epoch(capsys, learning_rate, max_epochs, patience):
    rng = np.random.default_rng(5)
    config = {"learning_rate": learning_rate, "weight_decay": 0.0, "mixed_precision": False, "max_epochs": max_epochs,
              "batch_size": 16, "loss_weights": {"item": 1.0, "category": 0.5, "shift": 0.5}, "patience": patience}
    model = InterestShiftLSTM(N_ITEMS, N_CATEGORIES, torch.randn(N_ITEMS + 1, 8), item_dim=8, category_dim=4, hidden_dim=16)
    model.fit(_sequences(64, rng), _sequences(32, rng), config, torch.device("cpu"), seed=1, progress=True)
    curve = model.learning_curve
    bar = _last_bar(capsys.readouterr().err, "LSTM epochs")
    run = len(curve.epoch)
    assert f"| {run}/{run} [" in bar and bar.endswith(f"best epoch {curve.best_epoch}]")
    assert ("early stop" in bar) == curve.stopped_early == (run < max_epochs)
    if learning_rate == 0.0:
        assert (run, curve.best_epoch, curve.max_epochs) == (3, 1, 10)
        assert bar.endswith("early stop, best epoch 1]")


def test_lstm_without_progress_prints_nothing(capsys):
    rng = np.random.default_rng(5)
    config = {"learning_rate": 0.01, "weight_decay": 0.0, "mixed_precision": False, "max_epochs": 2, "batch_size": 16,
              "loss_weights": {"item": 1.0, "category": 0.5, "shift": 0.5}, "patience": 1}
    model = InterestShiftLSTM(N_ITEMS, N_CATEGORIES, torch.randn(N_ITEMS + 1, 8), item_dim=8, category_dim=4, hidden_dim=16)
    model.fit(_sequences(64, rng), _sequences(32, rng), config, torch.device("cpu"), seed=1)
    assert capsys.readouterr() == ("", "")


def test_ranker_bar_ends_at_the_last_round_with_the_trees_kept(capsys):
    rng = np.random.default_rng(7)
    features = pd.DataFrame(rng.normal(size=(600, len(FEATURE_COLUMNS))), columns=FEATURE_COLUMNS)
    relevance, query = rng.integers(0, 2, 600), np.repeat(np.arange(60), 10)  # noise: validation stops improving
    config = {"objective": "rank:ndcg", "n_estimators": 200, "max_depth": 3, "early_stopping_rounds": 3, "eval_metric": "ndcg@10"}
    ranker = ItemRanker(config, seed=1, device="cpu").fit(
        features[:300], relevance[:300], query[:300], (features[300:], relevance[300:], query[300:]), progress=True,
    )
    rounds = ranker.model.get_booster().num_boosted_rounds()
    bar = _last_bar(capsys.readouterr().err, "XGBoost rounds")
    assert rounds < 200 and rounds == ranker.best_iteration + 1 + config["early_stopping_rounds"]
    assert f"| {rounds}/{rounds} [" in bar and bar.endswith(f"early stop, {ranker.best_iteration + 1} trees kept]")
    assert ranker.model.get_params()["callbacks"] is None  # the bar is not kept with the model
