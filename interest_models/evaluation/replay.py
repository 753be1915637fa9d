"""Logged lists replayed for a target policy, and the off-policy table of ``interest policy evaluate``."""
from __future__ import annotations

import numpy as np
import pandas as pd

from interest_models.evaluation.off_policy import ReplayedLists, estimate, fit_position_bias
from interest_models.policies.learning import EmbeddingLookup, fit_reward_model, logged_requests, shown_rows, training_rows
from interest_models.policies.linear_bandit import LinearUCB, position_bias
from interest_models.policies.slate import marginal_probabilities

WEIGHTINGS = ("item-position", "position-based")


def _examination_at(positions: np.ndarray, exponent: float | None) -> np.ndarray:
    """Examination probability of 1-based positions: ``j ** -exponent`` (None: 1 / log2(j + 1))."""
    positions = np.asarray(positions, np.float64)
    return position_bias(positions) if exponent is None else positions ** -exponent


def target_marginals(target, requests: list, sizes) -> list[np.ndarray]:
    """Per logged list, the target's ``P(candidate i at position j)`` over its first
    ``sizes[i]`` positions (the positions shown): (n_candidates, size) arrays, what ``replay``
    weights with; computed once per target, as ordering a request is the expensive part."""
    return [target.marginals(request, int(size)) if size else np.zeros((request.n, 0))
            for request, size in zip(requests, sizes)]


def replay(recommendations: pd.DataFrame, marginals: list[np.ndarray], reward_models: list[LinearUCB], folds: np.ndarray,
           requests: list, shown: list, reward: str = "clicked", weighting: str = "item-position",
           exponent: float | None = None) -> ReplayedLists:
    """The logged lists as the target policy would have chosen them.

    Args:
        marginals: ``target_marginals`` of the target on these lists.
        reward_models: per fold, the reward model fitted on the other folds' lists.
        folds: (n_lists,) each list's fold.
        requests, shown: ``logged_requests`` and ``shown_rows`` of the log.
        weighting: "item-position" or "position-based" (``off_policy``'s module docstring).
        exponent: the examination model ``theta_j = j ** -exponent`` (None: 1 / log2(j + 1)),
            for the reward model and the position-based weights.
    """
    if weighting not in WEIGHTINGS:
        raise ValueError(f"unknown weighting {weighting!r} (known: {', '.join(WEIGHTINGS)})")
    k = max((len(s) for s in shown), default=0)
    n = len(requests)
    arrays = {name: np.zeros((n, k)) for name in ("reward", "weight", "control", "direct", "model")}
    present = np.zeros((n, k), bool)
    for i, (request, rows, target) in enumerate(zip(requests, shown, marginals)):
        size = len(rows)
        if size == 0:
            continue
        logged_marginals = marginal_probabilities(np.asarray(recommendations.ordered_rows.iloc[i], np.int64)[:size],
                                                  request.n, float(recommendations.exploration.iloc[i]))
        theta = _examination_at(np.arange(1, size + 1), exponent)
        attraction = reward_models[folds[i]].expected_attraction(request.context)  # (n_candidates,)
        logged_row = rows.row
        positions = rows.position - 1
        present[i, positions] = True
        arrays["reward"][i, positions] = rows.reward(reward)
        if weighting == "item-position":
            arrays["weight"][i, positions] = target[logged_row, positions] / rows.propensity
            arrays["control"][i, positions] = 1.0
        else:
            arrays["weight"][i, positions] = (target[logged_row] @ theta) / (logged_marginals[logged_row] @ theta)
            arrays["control"][i, positions] = theta[positions]
        arrays["direct"][i, :size] = theta * (attraction @ target)
        arrays["model"][i, positions] = theta[positions] * attraction[logged_row]
    return ReplayedLists(arrays["reward"], arrays["weight"], arrays["control"], arrays["direct"], arrays["model"], present)


def off_policy_table(recommendations: pd.DataFrame, impressions: pd.DataFrame, targets: dict, embeddings: EmbeddingLookup | None = None,
                     n_boot: int = 500, seed: int = 0, marginals: dict | None = None) -> tuple[pd.DataFrame, float]:
    """IPS, SNIPS and DR estimates of CTR and CVR (purchases per impression) for each target,
    with item-position and with position-based weights, on the logged lists that explored
    (a log without exploration cannot evaluate another policy), and the logged policy's own
    rates for comparison.

    Args:
        targets: name -> policy.
        marginals: name -> ``target_marginals`` on the lists that explored, when already
            computed (the benchmark replays logs redrawn on the same requests).

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
    if marginals is None:
        marginals = {name: target_marginals(target, requests, [len(rows) for rows in shown]) for name, target in targets.items()}
    elif any(len(marginals[name]) != len(recommendations) for name in targets):
        raise ValueError(f"precomputed marginals must cover the {len(recommendations)} logged lists that explored")
    rows = []
    for reward, label in (("clicked", "CTR"), ("purchased", "CVR")):
        models = []
        for fold in (0, 1):
            fold_rows = training_rows(recommendations, impressions, reward, np.flatnonzero(folds != fold))
            models.append(fit_reward_model(fold_rows.context, _examination_at(fold_rows.positions, exponent), fold_rows.rewards))
        rows.append({"policy": "logged (on-policy)", "metric": label, "weighting": "", "estimator": "observed",
                     "estimate": float(impressions[reward].mean()), "low": np.nan, "high": np.nan,
                     "lists": len(recommendations), "max_weight": 1.0, "effective_impressions": float(len(impressions))})
        for name in targets:
            for weighting in WEIGHTINGS:
                lists = replay(recommendations, marginals[name], models, folds, requests, shown, reward, weighting, exponent)
                for estimator, row in estimate(lists, n_boot, seed).iterrows():
                    rows.append({"policy": name, "metric": label, "weighting": weighting, "estimator": estimator, **row.to_dict()})
    return pd.DataFrame(rows), exponent
