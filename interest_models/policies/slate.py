"""Placing k of n candidates on a list, and the exact probability of each placement.

A policy first orders candidates deterministically (``diversified_order``: highest score
first, each next item's score lowered by its highest text similarity to the items above).
Then, with probability ``exploration``, the list shown is instead k candidates drawn
uniformly without replacement, in random order. Under this scheme the probability that
candidate i is shown at position j is, exactly,

    P(i at j) = (1 - exploration) * [i is the ordered list's j-th item] + exploration / n

(a uniformly random ordered sample of k out of n puts any given candidate at any given
position with probability 1 / n). Every candidate has a positive probability at every
position as soon as ``exploration > 0``, which is what off-policy evaluation of another
policy on the same candidates needs. The logged propensity of an impression is this
marginal probability.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Slate:
    """One list: candidate rows (indices into the request's candidates), top first."""

    rows: np.ndarray         # (k,) int64
    propensity: np.ndarray   # (k,) float64, P(that candidate at that position)
    explored: bool           # drawn uniformly at random
    order: np.ndarray        # (k,) int64, the deterministic list the policy would show without exploring


def diversified_order(scores: np.ndarray, k: int, embeddings: np.ndarray | None = None, diversity: float = 0.0) -> np.ndarray:
    """The k rows of highest ``scores``, chosen greedily: each next row maximises
    ``score - diversity * max cosine to the rows already chosen`` (maximal marginal
    relevance). Ties go to the lower row (the blend's order).

    Args:
        scores: (n,) float.
        embeddings: (n, dim) L2-normalised item text embeddings (needed when diversity > 0).
    """
    scores = np.asarray(scores, np.float64)
    k = min(k, len(scores))
    if diversity <= 0 or embeddings is None or k <= 1:
        return np.argsort(-scores, kind="stable")[:k]
    embeddings = np.asarray(embeddings, np.float32)
    chosen = np.empty(k, np.int64)
    penalty = np.zeros(len(scores))
    available = np.ones(len(scores), bool)
    for j in range(k):
        adjusted = np.where(available, scores - diversity * penalty, -np.inf)
        row = int(np.argmax(adjusted))
        chosen[j] = row
        available[row] = False
        penalty = np.maximum(penalty, embeddings @ embeddings[row])  # only the rows needed: k products of (n, dim) x (dim,)
    return chosen


def marginal_probabilities(order: np.ndarray, n: int, exploration: float) -> np.ndarray:
    """(n, k) float64: P(candidate i at position j) for the deterministic ``order`` (k rows)
    mixed with uniformly random lists with probability ``exploration``."""
    k = len(order)
    probability = np.full((n, k), exploration / n)
    probability[order, np.arange(k)] += 1.0 - exploration
    return probability


def draw(order: np.ndarray, n: int, exploration: float, rng: np.random.Generator) -> Slate:
    """The list shown: ``order`` or, with probability ``exploration``, a random one."""
    k = len(order)
    explored = exploration > 0 and rng.random() < exploration
    rows = rng.choice(n, size=k, replace=False) if explored else np.asarray(order, np.int64)
    propensity = exploration / n + (1.0 - exploration) * (rows == order)
    return Slate(rows.astype(np.int64), propensity, bool(explored), np.asarray(order, np.int64))
