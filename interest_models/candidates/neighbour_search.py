"""Nearest catalogue items to a query vector in item-text-embedding space (cosine).

One interface, two back ends (``neighbour_search`` in ``config/serving.yaml``):

- ``InProcessSearch``: exact search over the item text matrix the model carries (numpy).
- ``PgvectorSearch``: Feast's ``retrieve_online_documents_v2`` on the
  ``item_text_embedding`` view, searched by pgvector inside PostgreSQL. With the project's
  online store plugin the query is an HNSW index scan (approximate, cost about log of the
  catalogue); with stock Feast's store it is an exact scan of every vector.
"""
from __future__ import annotations

from typing import Protocol

import numpy as np

from interest_models.data.vocabulary import Vocabulary

ITEM_EMBEDDING_VIEW = "item_text_embedding"


class NeighbourSearch(Protocol):
    def nearest(self, query, k: int, exclude: np.ndarray) -> np.ndarray:
        """Up to ``k`` vocabulary indices, nearest first, none of them in ``exclude``.

        Args:
            query: (d,) vector in text-embedding space (None or empty: no neighbours).
            exclude: item indices never to return.
        """


class InProcessSearch:
    def __init__(self, text_matrix: np.ndarray):
        """Args: text_matrix (n_items + 1, d); zero rows (padding, no text) never match."""
        norms = np.linalg.norm(text_matrix, axis=1, keepdims=True)
        self.unit = np.divide(text_matrix, norms, out=np.zeros_like(text_matrix, dtype=np.float32), where=norms > 0)
        self.searchable = norms[:, 0] > 0

    def nearest(self, query, k: int, exclude: np.ndarray) -> np.ndarray:
        if query is None or len(query) == 0 or k <= 0:
            return np.empty(0, np.int64)
        similarity = self.unit @ np.asarray(query, np.float32)
        similarity[~self.searchable] = -np.inf
        similarity[exclude] = -np.inf
        k = min(k, int(np.isfinite(similarity).sum()))
        if k == 0:
            return np.empty(0, np.int64)
        top = np.argpartition(-similarity, k - 1)[:k]
        return top[np.argsort(-similarity[top], kind="stable")].astype(np.int64)


class PgvectorSearch:
    def __init__(self, store, vocabulary: Vocabulary):
        self.store, self.vocabulary = store, vocabulary
        if not store.config.online_store.vector_enabled:
            raise ValueError("neighbour_search: pgvector needs pgvector on the server (vector_enabled is off in this store)")

    def nearest(self, query, k: int, exclude: np.ndarray) -> np.ndarray:
        if query is None or len(query) == 0 or k <= 0:
            return np.empty(0, np.int64)
        response = self.store.retrieve_online_documents_v2(
            features=[f"{ITEM_EMBEDDING_VIEW}:embedding"], query=[float(v) for v in query], top_k=k + len(exclude),
            distance_metric="cosine",
        ).to_dict()
        found = self.vocabulary.index_of(np.asarray(response["item_id"], np.int64))
        found = found[(found > 0) & ~np.isin(found, exclude)]
        return found[:k]


def neighbour_search(kind: str, store, vocabulary: Vocabulary, text_matrix: np.ndarray) -> NeighbourSearch:
    if kind == "in_process":
        return InProcessSearch(text_matrix)
    if kind == "pgvector":
        return PgvectorSearch(store, vocabulary)
    raise ValueError(f"neighbour_search must be in_process or pgvector, not {kind!r}")
