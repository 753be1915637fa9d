"""Logged lists replayed for a target policy, and the off-policy table of ``interest policy evaluate``."""
from __future__ import annotations

import numpy as np
import pandas as pd

from interest_models.evaluation.off_policy import ReplayedLists, estimate, fit_position_bias
from interest_models.policies.learning import EmbeddingLookup, fit_reward_model, logged_requests, shown_rows, training_rows
from interest_models.policies.linear_bandit import LinearUCB, position_bias
from interest_models.policies.slate import marginal_probabilities

WEIGHTINGS = ("item-position", "position-based")


def _examination(size: int, exponent: float | None) -> np.ndarray:
    positions = np.arange(1, size + 1, dtype=np.float64)
    return position_bias(positions) if exponent is None else positions ** -exponent


def replay(recommendations: pd.DataFrame, impressions: pd.DataFrame, target, reward_models: list[LinearUCB],
           folds: np.ndarray, reward: str = "clicked", embeddings: EmbeddingLookup | None = None,
           weighting: str = "item-position", exponent: float | None = None, requests=None, shown=None) -> ReplayedLists:
    """The logged lists as the target policy would have chosen them.

    Args:
        target: a policy with ``marginals(request, k)``.
        reward_models: per fold, the reward model fitted on the other folds' lists.
        folds: (n_lists,) each list's fold.
        weighting: "item-position" or "position-based" (``off_policy``'s module docstring).
        exponent: the examination model ``theta_j = j ** -exponent`` (None: 1 / log2(j + 1)),
            for the reward model and the position-based weights.
        requests, shown: ``logged_requests`` and ``shown_rows`` of the log when already built.
    """
    if weighting not in WEIGHTINGS:
        raise ValueError(f"unknown weighting {weighting!r} (known: {', '.join(WEIGHTINGS)})")
    requests = logged_requests(recommendations, embeddings) if requests is None else requests
    shown = shown_rows(recommendations, impressions) if shown is None else shown
    k = max((len(s) for s in shown), default=0)
    n = len(requests)
    arrays = {name: np.zeros((n, k)) for name in ("reward", "weight", "control", "direct", "model")}
    present = np.zeros((n, k), bool)
    for i, (request, rows) in enumerate(zip(requests, shown)):
        size = len(rows)
        if size == 0:
            continue
        target_marginals = target.marginals(request, size)              # (n_candidates, size)
        logged_marginals = marginal_probabilities(np.asarray(recommendations.ordered_rows.iloc[i], np.int64)[:size],
                                                  request.n, float(recommendations.exploration.iloc[i]))
        theta = _examination(size, exponent)
        attraction = reward_models[folds[i]].expected_attraction(request.context)  # (n_candidates,)
        logged_row = rows.row
        positions = rows.position - 1
        present[i, positions] = True
        arrays["reward"][i, positions] = rows.reward(reward)
        if weighting == "item-position":
            logged = rows.propensity
            arrays["weight"][i, positions] = target_marginals[logged_row, positions] / logged
            arrays["control"][i, positions] = 1.0
        else:
            arrays["weight"][i, positions] = (target_marginals[logged_row] @ theta) / (logged_marginals[logged_row] @ theta)
            arrays["control"][i, positions] = theta[positions]
        arrays["direct"][i, :size] = theta * (attraction @ target_marginals)
        arrays["model"][i, positions] = theta[positions] * attraction[logged_row]
    return ReplayedLists(arrays["reward"], arrays["weight"], arrays["control"], arrays["direct"], arrays["model"], present)


def off_policy_table(recommendations: pd.DataFrame, impressions: pd.DataFrame, targets: dict, embeddings: EmbeddingLookup | None = None,
                     n_boot: int = 500, seed: int = 0) -> tuple[pd.DataFrame, float]:
    """IPS, SNIPS and DR estimates of CTR and CVR (purchases per impression) for each target,
    with item-position and with position-based weights, on the logged lists that explored
    (a log without exploration cannot evaluate another policy), and the logged policy's own
    rates for comparison.

    Args:
        targets: name -> policy.

    Returns:
        The table, and the examination exponent fitted on the logged random lists.
    """
    explored = recommendations.exploration.to_numpy() > 0
    recommendations = recommendations[explored & (recommendations.context_dim.to_numpy() > 0)].reset_index(drop=True)
    if recommendations.empty:
        raise ValueError("no logged list with exploration and a context: serve some with `policy: bandit` first")
    impressions = impressions[impressions.recommendation_id.isin(set(recommendations.recommendation_id))]
    random_lists = impressions[impressions.explored]
    exponent = fit_position_bias(random_lists.position.to_numpy(), random_lists.clicked.to_numpy())
    folds = np.arange(len(recommendations)) % 2
    requests, shown = logged_requests(recommendations, embeddings), shown_rows(recommendations, impressions)
    rows = []
    for reward, label in (("clicked", "CTR"), ("purchased", "CVR")):
        models = []
        for fold in (0, 1):
            context, positions, rewards = training_rows(recommendations, impressions, reward, np.flatnonzero(folds != fold))
            models.append(fit_reward_model(context, positions, rewards))
        rows.append({"policy": "logged (on-policy)", "metric": label, "weighting": "", "estimator": "observed",
                     "estimate": float(impressions[reward].mean()), "low": np.nan, "high": np.nan,
                     "lists": len(recommendations), "max_weight": 1.0})
        for name, target in targets.items():
            for weighting in WEIGHTINGS:
                lists = replay(recommendations, impressions, target, models, folds, reward, embeddings, weighting, exponent,
                               requests, shown)
                for estimator, row in estimate(lists, n_boot, seed).iterrows():
                    rows.append({"policy": name, "metric": label, "weighting": weighting, "estimator": estimator, **row.to_dict()})
    return pd.DataFrame(rows), exponent
