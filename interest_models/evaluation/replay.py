"""Logged lists replayed for a target policy, and the off-policy table of ``interest policy evaluate``."""
from __future__ import annotations

import numpy as np
import pandas as pd

from interest_models.evaluation.off_policy import ReplayedLists, estimate
from interest_models.policies.learning import EmbeddingLookup, fit_reward_model, logged_requests, shown_rows, training_rows
from interest_models.policies.linear_bandit import LinearUCB, position_bias


def replay(recommendations: pd.DataFrame, impressions: pd.DataFrame, target, reward_models: list[LinearUCB],
           folds: np.ndarray, reward: str = "clicked", embeddings: EmbeddingLookup | None = None,
           kind: str = "dcg") -> ReplayedLists:
    """The logged lists as the target policy would have chosen them.

    Args:
        target: a policy with ``marginals(request, k)``.
        reward_models: per fold, the reward model fitted on the other folds' lists.
        folds: (n_lists,) each list's fold.
    """
    requests = logged_requests(recommendations, embeddings)
    shown = shown_rows(recommendations, impressions)
    k = max((len(s) for s in shown), default=0)
    n = len(requests)
    arrays = {name: np.zeros((n, k)) for name in ("reward", "logged", "target", "direct", "model")}
    present = np.zeros((n, k), bool)
    for i, (request, rows) in enumerate(zip(requests, shown)):
        size = len(rows)
        if size == 0:
            continue
        marginals = target.marginals(request, size)                       # (n_candidates, size)
        theta = position_bias(np.arange(1, size + 1), kind)
        attraction = reward_models[folds[i]].expected_attraction(request.context)  # (n_candidates,)
        logged_row = rows.row.to_numpy()
        positions = rows.position.to_numpy() - 1
        present[i, positions] = True
        arrays["reward"][i, positions] = rows[reward].to_numpy(np.float64)
        arrays["logged"][i, positions] = rows.propensity.to_numpy()
        arrays["target"][i, positions] = marginals[logged_row, positions]
        arrays["direct"][i, :size] = theta * (attraction @ marginals)
        arrays["model"][i, positions] = theta[positions] * attraction[logged_row]
    return ReplayedLists(arrays["reward"], np.where(present, arrays["logged"], 1.0), arrays["target"], arrays["direct"],
                         arrays["model"], present)


def off_policy_table(recommendations: pd.DataFrame, impressions: pd.DataFrame, targets: dict, embeddings: EmbeddingLookup | None = None,
                     n_boot: int = 500, seed: int = 0) -> pd.DataFrame:
    """IPS, SNIPS and DR estimates of CTR and CVR (purchases per impression) for each
    target, on the logged lists that explored (a log without exploration cannot evaluate
    another policy), with the logged policy's own rates for comparison.

    Args:
        targets: name -> policy.
    """
    explored = recommendations.exploration.to_numpy() > 0
    recommendations = recommendations[explored & (recommendations.context_dim.to_numpy() > 0)].reset_index(drop=True)
    if recommendations.empty:
        raise ValueError("no logged list with exploration and a context: serve some with `policy: bandit` first")
    impressions = impressions[impressions.recommendation_id.isin(set(recommendations.recommendation_id))]
    folds = np.arange(len(recommendations)) % 2
    rows = []
    for reward, label in (("clicked", "CTR"), ("purchased", "CVR")):
        models = []
        for fold in (0, 1):
            context, positions, rewards = training_rows(recommendations, impressions, reward, np.flatnonzero(folds != fold))
            models.append(fit_reward_model(context, positions, rewards))
        logged_rate = float(impressions[reward].mean())
        rows.append({"policy": "logged (on-policy)", "metric": label, "estimator": "observed", "estimate": logged_rate,
                     "low": np.nan, "high": np.nan, "lists": len(recommendations), "max_weight": 1.0})
        for name, target in targets.items():
            table = estimate(replay(recommendations, impressions, target, models, folds, reward, embeddings), n_boot, seed)
            for estimator, row in table.iterrows():
                rows.append({"policy": name, "metric": label, "estimator": estimator, **row.to_dict()})
    return pd.DataFrame(rows)
