"""Metrics: hand-computed cases, the tie rule, exclusion, agreement with scikit-learn, errors."""
from __future__ import annotations

import time

import numpy as np
import pytest

from interest_models.evaluation.metrics import (
    accuracy_at_k,
    calibration_bins,
    hit_rate_at_k,
    mrr,
    ndcg_at_k,
    ranking_metrics,
    roc_auc,
    target_ranks,
)

NEG_INF = -np.inf


def test_target_ranks_plain() -> None:
    scores = np.array(
        [
            [NEG_INF, 0.9, 0.1, 0.5, 0.3],
            [NEG_INF, 0.9, 0.1, 0.5, 0.3],
            [99.0, 0.9, 0.1, 0.5, 0.3],  # column 0 never counts, whatever it holds
        ]
    )
    assert target_ranks(scores, np.array([1, 2, 4])).tolist() == [1, 4, 3]


def test_target_ranks_ties_take_the_median_position() -> None:
    constant = np.zeros((3, 6))
    # 5 items all tied: 0 greater, 4 tied others -> 1 + 4 // 2 = 3 for every target
    assert target_ranks(constant, np.array([1, 3, 5])).tolist() == [3, 3, 3]
    scores = np.array([[0.0, 0.9, 0.5, 0.5, 0.5, 0.1]])
    # target 3: 1 greater, 2 tied others -> 1 + 1 + 1 = 3
    assert target_ranks(scores, np.array([3])).tolist() == [3]
    scores = np.array([[0.0, 0.5, 0.5, 0.1]])
    # 1 tied other -> 1 + 0 + 0 = 1 (floor of a half)
    assert target_ranks(scores, np.array([1])).tolist() == [1]


def test_target_ranks_exclude() -> None:
    scores = np.array([[NEG_INF, 0.9, 0.8, 0.5, 0.5, 0.1], [NEG_INF, 0.9, 0.8, 0.5, 0.5, 0.1]])
    targets = np.array([4, 4])
    assert target_ranks(scores, targets).tolist() == [3, 3]
    # row 0: drop the two better items, duplicated, plus padding 0 -> rank 1 + 0 + 1 // 2
    # row 1: drop the tied item -> 1 + 2 + 0
    ranks = target_ranks(scores, targets, exclude=[np.array([1, 2, 2, 0]), np.array([3])])
    assert ranks.tolist() == [1, 3]
    # a 0-padded 2-D array works as well, and empty rows change nothing
    padded = np.array([[0, 1, 2], [0, 0, 0]])
    assert target_ranks(scores, targets, exclude=padded).tolist() == [1, 3]
    assert target_ranks(scores, targets, exclude=[[], []]).tolist() == [3, 3]


def test_target_ranks_exclude_matches_masking() -> None:
    rng = np.random.default_rng(0)
    n_items = 50
    scores = rng.integers(0, 8, size=(200, n_items + 1)).astype(np.float32)  # many ties
    targets = rng.integers(1, n_items + 1, size=200)
    exclude = [rng.choice(np.setdiff1d(np.arange(1, n_items + 1), [t]), size=rng.integers(0, 10)) for t in targets]
    got = target_ranks(scores, targets, exclude=exclude)
    for row in range(200):
        keep = np.setdiff1d(np.arange(1, n_items + 1), exclude[row])
        others = scores[row, keep[keep != targets[row]]]
        target = scores[row, targets[row]]
        assert got[row] == 1 + (others > target).sum() + (others == target).sum() // 2


def test_target_ranks_large_batch_is_fast() -> None:
    rng = np.random.default_rng(1)
    scores = rng.standard_normal((5000, 3001), dtype=np.float32)
    targets = rng.integers(1, 3001, size=5000)
    exclude = [rng.integers(1, 3001, size=20) for _ in range(5000)]
    exclude = [e[e != t] for e, t in zip(exclude, targets)]
    start = time.perf_counter()
    ranks = target_ranks(scores, targets, exclude=exclude)
    assert time.perf_counter() - start < 2.0
    assert ranks.shape == (5000,) and ranks.min() >= 1 and ranks.max() <= 3000


def test_target_ranks_validation() -> None:
    scores = np.zeros((2, 4))
    with pytest.raises(ValueError, match="targets"):
        target_ranks(scores, np.array([1, 4]))  # 4 > n_items = 3
    with pytest.raises(ValueError, match="targets"):
        target_ranks(scores, np.array([0, 1]))  # padding is not an item
    with pytest.raises(ValueError, match="targets"):
        target_ranks(scores, np.array([1, 2, 3]))
    with pytest.raises(ValueError, match="targets"):
        target_ranks(scores, np.array([1.0, 2.0]))
    with pytest.raises(ValueError, match="scores"):
        target_ranks(np.zeros(4), np.array([1]))
    with pytest.raises(ValueError, match="scores"):
        target_ranks(np.array([[0.0, np.nan, 1.0]]), np.array([2]))
    with pytest.raises(ValueError, match="exclude"):
        target_ranks(scores, np.array([1, 2]), exclude=[np.array([1])])
    with pytest.raises(ValueError, match=r"exclude\[1\].*target"):
        target_ranks(scores, np.array([1, 2]), exclude=[np.array([3]), np.array([2])])
    with pytest.raises(ValueError, match="exclude"):
        target_ranks(scores, np.array([1, 2]), exclude=[np.array([5]), np.array([])])


def test_rank_metrics_by_hand() -> None:
    ranks = np.array([1, 3, 11])
    assert hit_rate_at_k(ranks, 10) == pytest.approx(2 / 3)
    assert ndcg_at_k(ranks, 10) == pytest.approx((1 + 1 / np.log2(4)) / 3)
    assert mrr(ranks) == pytest.approx((1 + 1 / 3 + 1 / 11) / 3)
    assert mrr(ranks, k=10) == pytest.approx((1 + 1 / 3) / 3)
    assert hit_rate_at_k(ranks, 1) == pytest.approx(1 / 3)
    assert ndcg_at_k(ranks, 3) == pytest.approx((1 + 0.5) / 3)
    metrics = ranking_metrics(ranks, ks=(1, 10))
    assert list(metrics) == ["HR@1", "NDCG@1", "MRR@1", "HR@10", "NDCG@10", "MRR@10", "MRR"]
    assert metrics["HR@10"] == pytest.approx(2 / 3)
    assert metrics["MRR@1"] == pytest.approx(1 / 3)
    assert all(isinstance(v, float) for v in metrics.values())


def test_rank_metrics_validation() -> None:
    for bad_k in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="k"):
            hit_rate_at_k(np.array([1, 2]), bad_k)
    with pytest.raises(ValueError, match="ranks"):
        ndcg_at_k(np.array([0, 2]), 10)
    with pytest.raises(ValueError, match="ranks"):
        mrr(np.array([]))
    with pytest.raises(ValueError, match="ranks"):
        mrr(np.array([[1, 2]]))
    with pytest.raises(ValueError, match="ks"):
        ranking_metrics(np.array([1]), ks=(10, 0))


def test_accuracy_at_k() -> None:
    probabilities = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.25, 0.5, 0.25]])
    targets = np.array([0, 1, 2])
    assert accuracy_at_k(probabilities, targets, 1) == pytest.approx(1 / 3)
    # row 2: target tied with class 0 behind class 1 -> rank 1 + 1 + 0 = 2
    assert accuracy_at_k(probabilities, targets, 2) == pytest.approx(1.0)
    assert accuracy_at_k(probabilities, targets, 5) == 1.0
    assert accuracy_at_k(np.full((4, 4), 0.25), np.arange(4), 1) == 0.0  # constant scorer
    with pytest.raises(ValueError, match="targets"):
        accuracy_at_k(probabilities, np.array([0, 1, 3]), 1)
    with pytest.raises(ValueError, match="probabilities"):
        accuracy_at_k(probabilities[0], targets, 1)
    with pytest.raises(ValueError, match="k"):
        accuracy_at_k(probabilities, targets, 0)


def test_roc_auc_by_hand() -> None:
    assert roc_auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])) == pytest.approx(0.75)
    assert roc_auc(np.array([0, 1]), np.array([0.5, 0.5])) == pytest.approx(0.5)
    assert roc_auc(np.array([True, False]), np.array([2.0, 1.0])) == 1.0
    assert np.isnan(roc_auc(np.array([1, 1, 1]), np.array([0.1, 0.2, 0.3])))
    assert np.isnan(roc_auc(np.array([0]), np.array([0.1])))


def test_roc_auc_matches_sklearn() -> None:
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(2)
    for _ in range(5):
        labels = rng.integers(0, 2, size=1000)
        scores = rng.standard_normal(1000) + labels
        rounded = np.round(scores, 1)  # plenty of ties
        for s in (scores, rounded):
            assert roc_auc(labels, s) == pytest.approx(sklearn_metrics.roc_auc_score(labels, s), abs=1e-12)


def test_roc_auc_validation() -> None:
    with pytest.raises(ValueError, match="labels"):
        roc_auc(np.array([0, 2]), np.array([0.1, 0.2]))
    with pytest.raises(ValueError, match="scores"):
        roc_auc(np.array([0, 1]), np.array([0.1, 0.2, 0.3]))
    with pytest.raises(ValueError, match="scores"):
        roc_auc(np.array([0, 1]), np.array([0.1, np.nan]))
    with pytest.raises(ValueError, match="labels"):
        roc_auc(np.array([]), np.array([]))


def test_calibration_bins() -> None:
    labels = np.array([0, 0, 1, 1, 1])
    probabilities = np.array([0.05, 0.15, 0.1, 0.95, 1.0])
    table = calibration_bins(labels, probabilities, n_bins=4)
    assert list(table.columns) == ["bin", "mean_predicted", "observed_rate", "count"]
    assert table["bin"].tolist() == [0, 1, 2, 3]
    assert table["count"].tolist() == [3, 0, 0, 2]
    assert table.loc[0, "mean_predicted"] == pytest.approx(0.1)
    assert table.loc[0, "observed_rate"] == pytest.approx(1 / 3)
    assert table.loc[3, "mean_predicted"] == pytest.approx(0.975)
    assert table.loc[3, "observed_rate"] == 1.0
    assert table.loc[1:2, ["mean_predicted", "observed_rate"]].isna().all().all()
    with pytest.raises(ValueError, match="probabilities"):
        calibration_bins(labels, probabilities + 0.5)
    with pytest.raises(ValueError, match="n_bins"):
        calibration_bins(labels, probabilities, n_bins=0)
    with pytest.raises(ValueError, match="probabilities"):
        calibration_bins(labels, probabilities[:3])


def test_paired_bootstrap_resamples_users():
    from interest_models.evaluation.metrics import ndcg_per_row, paired_bootstrap

    rng = np.random.default_rng(0)
    users = np.repeat(np.arange(300), 4)
    b = rng.random(1200)
    same = paired_bootstrap(b, b, users)
    assert same["difference"] == same["low"] == same["high"] == 0.0
    better = paired_bootstrap(b + 0.05 + rng.normal(0, 0.05, 1200), b, users)
    assert 0 < better["low"] < better["difference"] < better["high"] and better["relative"] > 0
    # One user's points move together: the interval is wider than if the rows were independent.
    user_noise = np.repeat(rng.normal(0, 0.2, 300), 4)
    clustered = paired_bootstrap(b + user_noise, b, users)
    independent = paired_bootstrap(b + user_noise, b, np.arange(1200))
    assert clustered["high"] - clustered["low"] > 1.5 * (independent["high"] - independent["low"])
    np.testing.assert_allclose(ndcg_per_row(np.array([1, 3, 11]), 10), [1.0, 0.5, 0.0])
    with pytest.raises(ValueError, match="equal-length"):
        paired_bootstrap(b, b[:-1], users)


def test_jensen_shannon_divergence_is_bounded_and_symmetric():
    from interest_models.evaluation.horizon_shift import jensen_shannon

    p = np.array([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0], [0.2, 0.3, 0.5]])
    q = np.array([[0.5, 0.5, 0.0], [0.0, 0.0, 1.0], [0.5, 0.3, 0.2]])
    divergence = jensen_shannon(p, q)
    np.testing.assert_allclose(divergence[:2], [0.0, 1.0])
    assert 0 < divergence[2] < 1
    np.testing.assert_allclose(jensen_shannon(q, p), divergence)
