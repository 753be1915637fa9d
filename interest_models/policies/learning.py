"""Learning a policy from the impression log, and the log read back as policy requests."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd

from interest_models.policies.linear_bandit import LinearUCB
from interest_models.policies.reranking import BanditPolicy, PolicyRequest

EmbeddingLookup = Callable[[np.ndarray], np.ndarray]
"""item ids (n,) -> (n, dim) L2-normalised text embeddings."""


def logged_requests(recommendations: pd.DataFrame, embeddings: EmbeddingLookup | None = None) -> list[PolicyRequest]:
    """Each logged list's candidates as the ``PolicyRequest`` the policy saw (context, blend
    scores; embeddings looked up by item id when given)."""
    requests = []
    for user_id, ids, scores, context, dim in zip(recommendations.user_id, recommendations.candidate_item_ids,
                                                  recommendations.candidate_scores, recommendations.context,
                                                  recommendations.context_dim):
        ids = np.asarray(ids, np.int64)
        matrix = np.asarray(context, np.float32).reshape(len(ids), int(dim)) if dim else np.zeros((len(ids), 0), np.float32)
        requests.append(PolicyRequest(matrix, np.asarray(scores, np.float64), embeddings(ids) if embeddings else None, ids,
                                      int(user_id)))
    return requests


@dataclass
class ShownItems:
    """One logged list's impressions by position: (k,) arrays."""

    row: np.ndarray          # the shown item's row among the list's candidates
    position: np.ndarray     # 1-based
    propensity: np.ndarray
    clicked: np.ndarray
    purchased: np.ndarray

    def __len__(self) -> int:
        return len(self.row)

    def reward(self, name: str) -> np.ndarray:
        """The ``clicked`` or ``purchased`` column as float64."""
        if name not in ("clicked", "purchased"):
            raise ValueError(f"unknown reward {name!r} (known: clicked, purchased)")
        return getattr(self, name).astype(np.float64)


def shown_rows(recommendations: pd.DataFrame, impressions: pd.DataFrame) -> list[ShownItems]:
    """Per logged list (in ``recommendations`` order): its impressions by position, with the
    shown item's row among the list's candidates."""
    ordered = impressions.sort_values(["recommendation_id", "position"], kind="stable")
    ids = ordered.recommendation_id.to_numpy()
    columns = {name: ordered[name].to_numpy() for name in ("item_id", "position", "propensity", "clicked", "purchased")}
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]]) if len(ids) else np.empty(0, np.int64)
    bounds = dict(zip(ids[starts], zip(starts, np.r_[starts[1:], len(ids)])))
    out = []
    for rec_id, candidates in zip(recommendations.recommendation_id, recommendations.candidate_item_ids):
        begin, end = bounds.get(rec_id, (0, 0))
        candidates = np.asarray(candidates, np.int64)
        items = columns["item_id"][begin:end].astype(np.int64)
        sorter = np.argsort(candidates, kind="stable")
        rows = sorter[np.searchsorted(candidates, items, sorter=sorter)] if len(items) else np.empty(0, np.int64)
        out.append(ShownItems(rows.astype(np.int64), columns["position"][begin:end].astype(np.int64),
                              columns["propensity"][begin:end].astype(np.float64), columns["clicked"][begin:end].astype(bool),
                              columns["purchased"][begin:end].astype(bool)))
    return out


@dataclass
class TrainingRows:
    """The shown items of logged lists, a row each: (n, dim) context, and (n,) 1-based
    positions, rewards (0/1), item ids and user ids."""

    context: np.ndarray
    positions: np.ndarray
    rewards: np.ndarray
    item_ids: np.ndarray
    user_ids: np.ndarray

    def __len__(self) -> int:
        return len(self.context)


def training_rows(recommendations: pd.DataFrame, impressions: pd.DataFrame, reward: str = "clicked",
                  lists: np.ndarray | None = None) -> TrainingRows:
    """The shown items of the logged lists with a context (cold-start lists have none),
    optionally only ``lists`` (indices)."""
    requests = logged_requests(recommendations)
    shown = shown_rows(recommendations, impressions)
    keep = range(len(requests)) if lists is None else lists
    contexts, positions, rewards, items, users = [], [], [], [], []
    for n in keep:
        if requests[n].context.shape[1] == 0 or len(shown[n]) == 0:
            continue
        contexts.append(requests[n].context[shown[n].row])
        positions.append(shown[n].position)
        rewards.append(shown[n].reward(reward))
        items.append(requests[n].item_ids[shown[n].row])
        users.append(np.full(len(shown[n]), requests[n].user_id, np.int64))
    if not contexts:
        return TrainingRows(np.zeros((0, 0)), np.zeros(0), np.zeros(0), np.zeros(0, np.int64), np.zeros(0, np.int64))
    return TrainingRows(np.vstack(contexts), *(np.concatenate(parts) for parts in (positions, rewards, items, users)))


def learn_from_log(policy: BanditPolicy, recommendations: pd.DataFrame, impressions: pd.DataFrame) -> int:
    """Add the logged impressions' clicks to the bandit; returns the impressions learned from.
    Lists whose context has another width than the bandit's (another catalogue) are refused."""
    rows = training_rows(recommendations, impressions)
    if len(rows) == 0:
        return 0
    if rows.context.shape[1] != policy.bandit.dim:
        raise ValueError(f"the log's context has {rows.context.shape[1]} columns, the bandit {policy.bandit.dim}")
    policy.learn(rows.context, rows.positions, rows.rewards, rows.item_ids, rows.user_ids)
    return len(rows)


def fit_reward_model(context: np.ndarray, examination: np.ndarray, rewards: np.ndarray, ridge: float = 1.0) -> LinearUCB:
    """A linear model of the reward at an examined position (``LinearUCB`` without bonus), the
    direct part of the doubly robust estimator.

    Args:
        context: (n, dim) the shown items' context rows.
        examination: (n,) the examination probability of each one's position, the same
            examination model the estimator weights with (a model fitted under another
            curve would be off by their ratio at every position).
        rewards: (n,) 0/1.
    """
    model = LinearUCB(context.shape[1], ridge)
    if len(context):
        model.update(context, examination, rewards)
    return model
