"""The item vocabulary: contiguous indices for catalogue items, and their categories."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import psycopg

from materialize.database.tables import fetch_frame


@dataclass(frozen=True)
class Vocabulary:
    """Contiguous item indices (1..n_items; 0 is padding) and their categories."""

    item_ids: np.ndarray        # (n_items + 1,) int64 item_id per index; [0] = 0
    item_category: np.ndarray   # (n_items + 1,) int64 category_id per index; [0] = 0
    n_categories: int

    @property
    def n_items(self) -> int:
        return len(self.item_ids) - 1

    def index_of(self, item_ids) -> np.ndarray:
        """Indices of ``item_ids`` (0 for ids not in the vocabulary)."""
        item_ids = np.asarray(item_ids, dtype=np.int64)
        position = np.searchsorted(self.item_ids[1:], item_ids) + 1
        position = np.clip(position, 1, self.n_items)
        return np.where(self.item_ids[position] == item_ids, position, 0)

    def to_json(self) -> dict:
        return {
            "item_ids": self.item_ids[1:].tolist(),
            "item_category": self.item_category[1:].tolist(),
            "n_categories": self.n_categories,
        }

    @classmethod
    def from_json(cls, values: dict) -> "Vocabulary":
        return cls(
            item_ids=np.concatenate([[0], np.asarray(values["item_ids"], dtype=np.int64)]),
            item_category=np.concatenate([[0], np.asarray(values["item_category"], dtype=np.int64)]),
            n_categories=int(values["n_categories"]),
        )


def load_vocabulary(conn: psycopg.Connection) -> Vocabulary:
    """Every catalogue item, ordered by item_id."""
    items = fetch_frame(conn, "SELECT item_id, category_id FROM interest.items ORDER BY item_id")
    n_categories = conn.execute("SELECT coalesce(max(category_id), 0) FROM interest.categories").fetchone()[0]
    return Vocabulary(
        item_ids=np.concatenate([[0], items.item_id.to_numpy(np.int64)]),
        item_category=np.concatenate([[0], items.category_id.to_numpy(np.int64)]),
        n_categories=int(n_categories),
    )
