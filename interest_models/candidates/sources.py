"""Candidate items for each decision point.

Sources (sizes in ``config/training.yaml``): the LSTM's top items, popular items, popular
items of the user's current category and of the LSTM's most likely next categories,
text-embedding neighbours of the user's last item and of the user's interest embedding,
and random items. The true next item is never added: the ranker trains on what the
sources retrieve. Serving draws from the same sources (``config/serving.yaml``), without
random items and with trending items (``Recommender.candidate_items``).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from interest_models.data.vocabulary import Vocabulary


@dataclass(frozen=True)
class CandidateIndex:
    """Precomputed lists the sources draw from (all as item indices)."""

    popular: np.ndarray                 # (k,) most popular first
    popular_by_category: dict[int, np.ndarray]
    neighbours: np.ndarray              # (n_items + 1, m) nearest items by text embedding

    @classmethod
    def build(cls, vocabulary: Vocabulary, popularity: np.ndarray, text_matrix: np.ndarray,
              n_popular: int = 200, n_neighbours: int = 20) -> "CandidateIndex":
        """Args: popularity (n_items + 1,) interaction counts before the period served;
        text_matrix (n_items + 1, d) unit-norm text embeddings (zero rows allowed)."""
        neighbours = np.zeros((len(text_matrix), n_neighbours), np.int64)
        for start in range(1, len(text_matrix), 1024):
            block = text_matrix[start : start + 1024] @ text_matrix.T
            block[:, 0] = -np.inf
            block[np.arange(len(block)), np.arange(start, start + len(block))] = -np.inf
            top = np.argpartition(-block, n_neighbours, axis=1)[:, :n_neighbours]
            ranked = np.take_along_axis(block, top, axis=1).argsort(axis=1)[:, ::-1]
            neighbours[start : start + len(block)] = np.take_along_axis(top, ranked, axis=1)
        return cls(*_popular_lists(vocabulary, popularity, n_popular), neighbours)

    def with_popularity(self, vocabulary: Vocabulary, popularity: np.ndarray, n_popular: int = 200) -> "CandidateIndex":
        """The same neighbours, with popular lists from new ``popularity`` (n_items + 1,)."""
        popular, by_category = _popular_lists(vocabulary, popularity, n_popular)
        return dataclasses.replace(self, popular=popular, popular_by_category=by_category)


def _popular_lists(vocabulary: Vocabulary, popularity: np.ndarray, n_popular: int) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    order = np.argsort(-popularity[1:], kind="stable") + 1
    by_category = {int(c): order[vocabulary.item_category[order] == c][:n_popular] for c in np.unique(vocabulary.item_category[1:])}
    return order[:n_popular], by_category


def generate(index: CandidateIndex, lstm_scores: np.ndarray, last_items: np.ndarray, last_categories: np.ndarray,
             sizes: dict[str, int], rng: np.random.Generator, exclude: list[np.ndarray] | None = None,
             category_probabilities: np.ndarray | None = None, predicted_categories: int = 2,
             interest_neighbours: list[np.ndarray] | None = None) -> list[np.ndarray]:
    """Candidate item indices per decision point (unique, no padding).

    Args:
        lstm_scores: (n, n_items + 1) full-ranking scores of the sequence model.
        last_items, last_categories: (n,) the user's newest item index and its category.
        sizes: candidates per source (keys of ``candidates`` in training.yaml).
        exclude: per point, items never to propose (e.g. already seen).
        category_probabilities: (n, n_categories + 1) the sequence model's next-category
            probabilities; the ``predicted_categories`` likeliest give
            ``predicted_category_popular`` popular items each.
        interest_neighbours: per point, items nearest to the user's interest embedding,
            nearest first (a ``NeighbourSearch``'s answer); the first
            ``interest_neighbours`` are taken.
    """
    n_items = lstm_scores.shape[1] - 1
    scores = lstm_scores.copy()
    if exclude is not None:
        for row, items in enumerate(exclude):
            scores[row, items] = -np.inf
    top_k = sizes["lstm_top"]
    lstm_top = np.argpartition(-scores, top_k, axis=1)[:, :top_k]
    out = []
    for row in range(len(scores)):
        parts = [lstm_top[row]]
        if sizes.get("popular"):
            parts.append(rng.choice(index.popular, min(sizes["popular"], len(index.popular)), replace=False))
        same = index.popular_by_category.get(int(last_categories[row]), np.empty(0, np.int64))
        if sizes.get("same_category") and len(same):
            parts.append(same[: sizes["same_category"]])
        if sizes.get("embedding_neighbours") and last_items[row] > 0:
            parts.append(index.neighbours[last_items[row], : sizes["embedding_neighbours"]])
        if sizes.get("interest_neighbours") and interest_neighbours is not None:
            parts.append(interest_neighbours[row][: sizes["interest_neighbours"]])
        if sizes.get("predicted_category_popular") and category_probabilities is not None:
            likeliest = np.argsort(-category_probabilities[row, 1:], kind="stable")[:predicted_categories] + 1
            parts.extend(index.popular_by_category.get(int(c), np.empty(0, np.int64))[: sizes["predicted_category_popular"]]
                         for c in likeliest)
        if sizes.get("random"):
            parts.append(rng.integers(1, n_items + 1, sizes["random"]))
        candidates = np.unique(np.concatenate(parts).astype(np.int64))
        candidates = candidates[candidates > 0]
        if exclude is not None and len(exclude[row]):
            candidates = candidates[~np.isin(candidates, exclude[row])]
        out.append(candidates)
    return out
