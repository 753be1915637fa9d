"""Every model honours the contract of ``interest_models.models.base``: fit returns the
model, score gives arrays, and save/load (no pickle) gives back the same scores."""
from __future__ import annotations

import numpy as np
import pytest
import pandas as pd
import torch
import xgboost as xgb

from interest_models.data.ranking_features import FEATURE_COLUMNS
from interest_models.data.sequences import SequenceBatch
from interest_models.models.base import Model
from interest_models.models.blend import Blend
from interest_models.models.co_purchase import CoPurchase
from interest_models.models.interest_shift_lstm import INPUTS, InterestShiftLSTM, predict_all
from interest_models.models.item_knn import ItemKNN
from interest_models.models.item_ranker import ItemRanker
from interest_models.models.most_popular import MostPopular
from interest_models.models.personal_frequency import PersonalFrequency
from interest_models.models.popular_in_last_category import PopularInLastCategory
from tests.interest_models.models.random_batches import N_CATEGORIES, N_ITEMS, random_item_category, random_sequences

RNG = np.random.default_rng(3)
ITEM_CATEGORY = random_item_category(RNG)


def _sequences(n: int) -> SequenceBatch:
    return random_sequences(n, RNG, ITEM_CATEGORY)


def test_lstm_round_trip(tmp_path):
    config = {"learning_rate": 0.01, "weight_decay": 0.0, "mixed_precision": False, "max_epochs": 2, "batch_size": 16,
              "loss_weights": {"item": 1.0, "category": 0.5, "shift": 0.5}, "patience": 2}
    model = InterestShiftLSTM(N_ITEMS, N_CATEGORIES, torch.randn(N_ITEMS + 1, 8), item_dim=8, category_dim=4, hidden_dim=16)
    train, valid = _sequences(64), _sequences(32)
    assert model.fit(train, valid, config, torch.device("cpu"), seed=1) is model
    assert isinstance(model, Model) and len(model.learning_curve.epoch) >= 1
    scores = model.score(valid)
    assert scores.shape == (32, N_ITEMS + 1) and np.isneginf(scores[:, 0]).all()
    model.save(tmp_path)
    np.testing.assert_allclose(InterestShiftLSTM.load(tmp_path).score(valid), scores, rtol=1e-6)


def test_ranker_round_trip(tmp_path):
    features = pd.DataFrame(RNG.normal(size=(400, len(FEATURE_COLUMNS))), columns=FEATURE_COLUMNS)
    relevance, query = (features.lstm_item_score > 1).astype(int).to_numpy(), np.repeat(np.arange(40), 10)
    config = {"objective": "rank:ndcg", "n_estimators": 20, "max_depth": 3, "early_stopping_rounds": 5, "eval_metric": "ndcg@10"}
    ranker = ItemRanker(config, seed=1, device="cpu")
    assert ranker.fit(features, relevance, query, (features, relevance, query)) is ranker and isinstance(ranker, Model)
    ranker.save(tmp_path)
    loaded = ItemRanker.load(tmp_path, device="cpu")
    np.testing.assert_allclose(loaded.score(features), ranker.score(features), rtol=1e-6)
    assert loaded.best_iteration == ranker.best_iteration


def test_blend_round_trip(tmp_path):
    lstm, ranker, query = RNG.normal(size=60), RNG.normal(size=60), np.repeat(np.arange(6), 10)
    blend = Blend().fit(lstm, ranker, query, objective=lambda blended: -abs(np.corrcoef(blended, lstm)[0, 1] - 0.8))
    assert isinstance(blend, Model) and set(blend.search) == set(np.round(np.linspace(0, 1, 21), 2))
    blend.save(tmp_path)
    np.testing.assert_array_equal(Blend.load(tmp_path).score(lstm, ranker, query), blend.score(lstm, ranker, query))


def test_baselines_round_trip(tmp_path):
    histories = [RNG.integers(1, N_ITEMS + 1, RNG.integers(2, 12)) for _ in range(50)]
    recent = [h[-3:] for h in histories[:10]]
    for model in (MostPopular(), PopularInLastCategory(), ItemKNN(neighbours=5, decay=0.7, last_n=4), PersonalFrequency(),
                  CoPurchase(last_n=2, normalise=True)):
        assert model.fit(histories, N_ITEMS, ITEM_CATEGORY) is model and isinstance(model, Model)
        model.save(tmp_path)
        loaded = type(model).load(tmp_path)
        np.testing.assert_array_equal(loaded.score(recent), model.score(recent))
    assert (ItemKNN.load(tmp_path).neighbours, ItemKNN.load(tmp_path).decay) == (5, 0.7)
    assert (CoPurchase.load(tmp_path).last_n, CoPurchase.load(tmp_path).normalise) == (2, True)


def test_lstm_inputs_and_heads_refit(tmp_path):
    """Each ablation variant trains, saves and loads; the head refit leaves item scores as
    they were and does not raise the validation category + shift loss."""
    config = {"learning_rate": 0.01, "weight_decay": 0.0, "mixed_precision": False, "max_epochs": 2, "batch_size": 16,
              "loss_weights": {"item": 1.0, "category": 0.5, "shift": 0.5}, "patience": 2}
    train, valid = _sequences(64), _sequences(32)
    for inputs in ((), ("text",), ("text", "time_gaps"), ("text", "time_gaps", "event_types", "category_profile"),
                   ("text", "time_gaps", "event_types", "category_profile", "session_profile")):
        model = InterestShiftLSTM(N_ITEMS, N_CATEGORIES, torch.randn(N_ITEMS + 1, 8), item_dim=8, category_dim=4,
                                  hidden_dim=16, inputs=inputs)
        model.fit(train, valid, config, torch.device("cpu"), seed=1)
        before = model.score(valid)
        model.fit_heads(train, valid, {**config, "head_epochs": 5}, torch.device("cpu"), torch.Generator().manual_seed(1))
        np.testing.assert_array_equal(model.score(valid), before)
        losses = model.learning_curve.head_valid_loss
        assert model.learning_curve.head_epochs == len(losses) - 1
        head_weights = {"item": 0.0, "category": 0.5, "shift": 0.5}
        restored = predict_all(model, valid, torch.device("cpu"), loss_weights=head_weights)[-1]
        assert restored == pytest.approx(min(losses), rel=1e-5)  # the best refit epoch is the one kept
        model.save(tmp_path)
        loaded = InterestShiftLSTM.load(tmp_path)
        assert loaded.inputs == tuple(i for i in INPUTS if i in inputs)
        np.testing.assert_allclose(loaded.score(valid), before, rtol=1e-6)


def test_ranker_on_a_column_subset_scores_matrices_and_frames_alike():
    from interest_models.data.ranking_features import FEAST_COLUMNS

    features = pd.DataFrame(RNG.normal(size=(400, len(FEATURE_COLUMNS))), columns=FEATURE_COLUMNS)
    relevance, query = (features.item_price > 1).astype(int).to_numpy(), np.repeat(np.arange(40), 10)
    config = {"objective": "rank:ndcg", "n_estimators": 10, "max_depth": 3, "early_stopping_rounds": 5, "eval_metric": "ndcg@10"}
    ranker = ItemRanker(config, seed=1, device="cpu", columns=FEAST_COLUMNS).fit(features, relevance, query, (features, relevance, query))
    np.testing.assert_array_equal(ranker.score(features), ranker.score(features.to_numpy()))
    assert set(ranker.feature_importance().index) == set(FEAST_COLUMNS)
    shuffled = features.assign(lstm_item_score=RNG.normal(size=400))  # a column it does not read
    np.testing.assert_array_equal(ranker.score(shuffled), ranker.score(features))


def test_a_saved_ranker_reads_the_columns_it_was_trained_on(tmp_path):
    """A ranker saved before a column was added still scores today's matrices; one that
    reads a column this version does not build is refused with its name."""
    older = [c for c in FEATURE_COLUMNS if c not in ("item_share_of_category_30d", "lstm_category_popularity")]
    features = pd.DataFrame(RNG.normal(size=(400, len(FEATURE_COLUMNS))), columns=FEATURE_COLUMNS)
    relevance, query = (features.item_price > 1).astype(int).to_numpy(), np.repeat(np.arange(40), 10)
    config = {"objective": "rank:ndcg", "n_estimators": 10, "max_depth": 3, "early_stopping_rounds": 5, "eval_metric": "ndcg@10"}
    ranker = ItemRanker(config, seed=1, device="cpu", columns=older).fit(features, relevance, query, (features, relevance, query))
    ranker.save(tmp_path)
    loaded = ItemRanker.load(tmp_path, device="cpu")
    assert loaded.columns == older
    np.testing.assert_allclose(loaded.score(features.to_numpy()), ranker.score(features), rtol=1e-6)

    renamed = features.rename(columns={"item_price": "item_colour"})
    ItemRanker(config, seed=1, device="cpu", columns=[*(c for c in older if c != "item_price"), "item_colour"]).fit(
        renamed, relevance, query, (renamed, relevance, query)).save(tmp_path)
    with pytest.raises(ValueError, match="item_colour"):
        ItemRanker.load(tmp_path, device="cpu")


def test_a_ranker_with_a_base_margin_boosts_from_it(tmp_path):
    """The margin column is the prior: scores are it plus the trees' corrections, saved
    with the model, and counted in that column's contribution."""
    features = pd.DataFrame(RNG.normal(size=(400, len(FEATURE_COLUMNS))), columns=FEATURE_COLUMNS)
    relevance, query = (features.lstm_category_popularity + 0.3 * features.item_price > 1).astype(int).to_numpy(), np.repeat(np.arange(40), 10)
    config = {"objective": "rank:ndcg", "n_estimators": 10, "max_depth": 3, "early_stopping_rounds": 5, "eval_metric": "ndcg@10",
              "base_margin": "lstm_category_popularity"}
    ranker = ItemRanker(config, seed=1, device="cpu").fit(features, relevance, query, (features, relevance, query))
    trees_only = ranker.model.predict(features[ranker.columns], base_margin=np.zeros(400))
    np.testing.assert_allclose(ranker.score(features), trees_only + features.lstm_category_popularity, rtol=1e-5, atol=1e-5)
    contributions = ranker.contributions(features)
    bias = ranker.model.get_booster().predict(xgb.DMatrix(features[ranker.columns], base_margin=np.zeros(400)), pred_contribs=True,
                                              iteration_range=ranker._iteration_range())[:, -1]  # the trees' expected value
    np.testing.assert_allclose(contributions.sum(1) + bias, ranker.score(features), rtol=1e-4, atol=1e-4)
    ranker.save(tmp_path)
    loaded = ItemRanker.load(tmp_path, device="cpu")
    assert loaded.margin_column == "lstm_category_popularity"
    np.testing.assert_allclose(loaded.score(features.to_numpy()), ranker.score(features), rtol=1e-6)
    with pytest.raises(ValueError, match="base_margin 'lstm_item_score' is not one of its columns"):
        ItemRanker({**config, "base_margin": "lstm_item_score"}, seed=1, columns=["item_price"])
