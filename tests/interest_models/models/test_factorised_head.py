"""The LSTM's factorised item head: log P(next category) + log P(item | its category)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from interest_models.models.interest_shift_lstm import InterestShiftLSTM
from tests.interest_models.models.random_batches import N_CATEGORIES, N_ITEMS, random_item_category, random_sequences

RNG = np.random.default_rng(11)
ITEM_CATEGORY = random_item_category(RNG)
CONFIG = {"learning_rate": 0.01, "weight_decay": 0.0, "mixed_precision": False, "max_epochs": 2, "batch_size": 16,
          "loss_weights": {"item": 1.0, "category": 0.5, "shift": 0.5}, "patience": 2}


def _model(**arguments) -> InterestShiftLSTM:
    return InterestShiftLSTM(N_ITEMS, N_CATEGORIES, torch.randn(N_ITEMS + 1, 8), item_dim=8, category_dim=4, hidden_dim=16,
                             inputs=("text", "category_profile", "session_profile"), **arguments)


def test_scores_are_the_category_forecast_times_the_within_category_share(tmp_path):
    model = _model(item_head="factorised", item_categories=torch.from_numpy(ITEM_CATEGORY))
    valid = random_sequences(32, RNG, ITEM_CATEGORY)
    model.fit(random_sequences(64, RNG, ITEM_CATEGORY), valid, CONFIG, torch.device("cpu"), seed=1)
    scores = torch.from_numpy(model.score(valid)).double()
    assert np.isneginf(scores[:, 0].numpy()).all()
    with torch.no_grad():
        category = torch.softmax(model(valid).category_logits.double(), dim=-1)
    for c in range(1, N_CATEGORIES + 1):
        in_category = torch.from_numpy(ITEM_CATEGORY == c)
        # the items of a category share exactly its forecast probability
        np.testing.assert_allclose(scores[:, in_category].exp().sum(1), category[:, c], rtol=1e-5)
    np.testing.assert_allclose(torch.logsumexp(scores[:, 1:], 1), 0.0, atol=1e-5)
    candidates = torch.from_numpy(RNG.integers(1, N_ITEMS + 1, (32, 5)))
    with torch.no_grad():
        np.testing.assert_allclose(model.predict(valid, candidates), scores.float().gather(1, candidates), rtol=1e-5)
    model.save(tmp_path)
    loaded = InterestShiftLSTM.load(tmp_path)  # brings its own item categories
    assert loaded.item_head == "factorised"
    np.testing.assert_array_equal(loaded.item_categories.numpy(), ITEM_CATEGORY)
    np.testing.assert_allclose(loaded.score(valid), scores.float().numpy(), rtol=1e-5)


def test_the_head_refit_moves_item_scores_with_the_category_forecast():
    model = _model(item_head="factorised", item_categories=torch.from_numpy(ITEM_CATEGORY))
    train, valid = random_sequences(64, RNG, ITEM_CATEGORY), random_sequences(32, RNG, ITEM_CATEGORY)
    model.fit(train, valid, CONFIG, torch.device("cpu"), seed=1)
    before = model.score(valid)
    model.fit_heads(train, valid, {**CONFIG, "head_epochs": 5}, torch.device("cpu"), torch.Generator().manual_seed(1))
    change = model.score(valid)[:, 1:] - before[:, 1:]
    assert np.abs(change).max() > 1e-4  # the category forecast moved ...
    for c in range(1, N_CATEGORIES + 1):  # ... by the same amount for every item of a category
        in_category = change[:, ITEM_CATEGORY[1:] == c]
        np.testing.assert_allclose(in_category, in_category[:, :1].repeat(in_category.shape[1], 1), atol=1e-5)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="item_head 'tree'"):
        _model(item_head="tree")
    with pytest.raises(ValueError, match="item_categories"):
        _model(item_head="factorised", item_categories=torch.full((N_ITEMS + 1,), N_CATEGORIES + 1))
