"""The category booster: it learns a next-category rule from the profiles, round-trips without
pickle, and as the LSTM's category head it drives the category, shift and factorised item
forecasts of ``predict_all`` (and survives the LSTM's save/load)."""
from __future__ import annotations

import numpy as np
import torch
import xgboost as xgb

from interest_models.data.sequences import SequenceBatch
from interest_models.models.base import Model
from interest_models.models.category_booster import CategoryBooster, profile_rows
from interest_models.models.interest_shift_lstm import InterestShiftLSTM, predict_all
from tests.interest_models.models.random_batches import (
    N_CATEGORIES,
    N_ITEMS,
    random_item_category,
    random_sequences,
)

RNG = np.random.default_rng(5)
ITEM_CATEGORY = random_item_category(RNG)
CONFIG = {"max_depth": 3, "learning_rate": 0.3, "subsample": 1.0, "colsample_bytree": 1.0, "min_child_weight": 1,
          "max_rounds": 200, "early_stopping_rounds": 10}
GAP_SECONDS = 1800.0


def _sequences(n: int) -> SequenceBatch:
    """Random sequences whose next category is the 30-day share's top category 9 times in 10."""
    batch = random_sequences(n, RNG, ITEM_CATEGORY)
    top = batch.category_shares[:, 1, 1:].argmax(dim=1) + 1
    other = torch.from_numpy(RNG.integers(1, N_CATEGORIES + 1, n))
    batch.target_category = torch.where(torch.from_numpy(RNG.random(n) < 0.9), top, other)
    return batch


def test_profile_rows_shape_and_flags():
    batch = _sequences(5)
    rows = profile_rows(batch, GAP_SECONDS)
    assert rows.shape[:2] == (5, N_CATEGORIES) and rows.dtype == np.float32
    # the 7-day share of category c is the first column of its row
    np.testing.assert_allclose(rows[:, :, 0], batch.category_shares[:, 0, 1:].numpy())


def test_booster_learns_the_rule_and_round_trips(tmp_path):
    train, valid, test = _sequences(600), _sequences(200), _sequences(300)
    booster = CategoryBooster(CONFIG, seed=1).fit(train, valid, GAP_SECONDS)
    assert isinstance(booster, Model)
    probabilities = booster.score(test)
    assert probabilities.shape == (300, N_CATEGORIES + 1)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    assert (probabilities[:, 0] == 0).all()
    accuracy = np.mean(probabilities.argmax(axis=1) == test.target_category.numpy())
    assert accuracy > 0.8  # the rule holds 9 times in 10 (plus chance); random guessing gets 0.25
    booster.save(tmp_path)
    loaded = CategoryBooster.load(tmp_path)
    assert loaded.session_gap_seconds == GAP_SECONDS and loaded.best_iteration == booster.best_iteration
    np.testing.assert_allclose(loaded.score(test), probabilities, rtol=1e-6)
    assert loaded.drives_ranking
    # a booster saved before the ranking followed it names the choice drives_item_scores
    older = xgb.Booster(model_file=str(tmp_path / "category_booster.json"))
    older.set_attr(drives_ranking=None, drives_item_scores="0")
    older.save_model(tmp_path / "category_booster.json")
    assert not CategoryBooster.load(tmp_path).drives_ranking


def test_lstm_with_a_booster_forecasts_by_it(tmp_path):
    config = {"learning_rate": 0.01, "weight_decay": 0.0, "mixed_precision": False, "max_epochs": 1, "batch_size": 32,
              "loss_weights": {"item": 1.0, "category": 0.5, "shift": 0.5}, "patience": 1}
    model = InterestShiftLSTM(N_ITEMS, N_CATEGORIES, torch.randn(N_ITEMS + 1, 8), item_dim=8, category_dim=4, hidden_dim=16,
                              inputs=("category_profile",), item_head="factorised",
                              item_categories=torch.from_numpy(ITEM_CATEGORY))
    train, valid, test = _sequences(200), _sequences(100), _sequences(50)
    model.fit(train, valid, config, torch.device("cpu"), seed=1)
    heads = predict_all(model, test, torch.device("cpu"))
    model.category_booster = CategoryBooster(CONFIG, seed=1).fit(train, valid, GAP_SECONDS)
    scores, categories, shift, _, _ = predict_all(model, test, torch.device("cpu"))
    boosted = model.category_booster.score(test)
    np.testing.assert_allclose(categories, boosted, rtol=1e-6)
    dominant = test.dominant_category.numpy()
    known = dominant > 0
    np.testing.assert_allclose(shift[known], 1 - boosted[known, dominant[known]], rtol=1e-5)
    np.testing.assert_allclose(shift[~known], heads[2][~known], rtol=1e-6)  # no dominant category: the shift head's
    # factorised scores: log P(category) by the booster + the unchanged log P(item | category)
    items = np.arange(1, N_ITEMS + 1)
    expected = heads[0][:, items] - np.log(heads[1][:, ITEM_CATEGORY[items]]) + np.log(boosted[:, ITEM_CATEGORY[items]])
    np.testing.assert_allclose(scores[:, items], expected, rtol=1e-4, atol=1e-4)
    unboosted = predict_all(model, test, torch.device("cpu"), boosted=False)
    np.testing.assert_allclose(unboosted[1], heads[1], rtol=1e-6)
    model.save(tmp_path)
    assert (tmp_path / "category_booster.json").exists()
    np.testing.assert_allclose(InterestShiftLSTM.load(tmp_path).score(test), scores, rtol=1e-5)
    assert model.ranks_with_booster
    # forecasting categories and shifts only: the item scores stay the heads'
    model.category_booster.drives_ranking = False
    assert not model.ranks_with_booster
    scores_only, categories_only, shift_only, _, _ = predict_all(model, test, torch.device("cpu"))
    np.testing.assert_allclose(scores_only, heads[0], rtol=1e-6)
    np.testing.assert_allclose(categories_only, boosted, rtol=1e-6)
    np.testing.assert_allclose(shift_only, shift, rtol=1e-6)
    model.save(tmp_path)
    loaded = InterestShiftLSTM.load(tmp_path)
    assert not loaded.category_booster.drives_ranking
    np.testing.assert_allclose(loaded.score(test), heads[0], rtol=1e-5)
    # what the ranking reads is then the heads' forecast throughout
    ranking = predict_all(loaded, test, torch.device("cpu"), boosted=loaded.ranks_with_booster)
    np.testing.assert_allclose(ranking[1], heads[1], rtol=1e-5)
    np.testing.assert_allclose(ranking[2], heads[2], rtol=1e-5)
