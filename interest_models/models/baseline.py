"""The contract and input checks shared by the non-learned baselines.

Every baseline is fitted on training histories only and scores all items for a batch of
users, in the layout the metrics expect: a (batch, n_items + 1) float64 matrix whose column
0 (padding) is ``-inf``. Items are the integers ``1..n_items``; a 0 inside a history or a
recent sequence is padding and is dropped, so left- or right-padded (batch, seq_len) int
arrays can be passed as they are. Everything is deterministic.

    model = ItemKNN(neighbours=100).fit(train_histories, n_items)
    ranks = target_ranks(model.score(recent), targets, exclude=recent)
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import numpy as np


def check_positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def _item_sequences(sequences: Sequence[np.ndarray], n_items: int, name: str) -> list[np.ndarray]:
    """Validate per-user item arrays; returns int64 copies with padding (0) removed."""
    if isinstance(sequences, np.ndarray) and sequences.dtype != object and sequences.ndim != 2:
        raise ValueError(f"{name} must be a list of 1-D item arrays or a 2-D array, got shape {sequences.shape}")
    cleaned = []
    for row, items in enumerate(sequences):
        items = np.asarray(items)
        if items.size == 0:
            cleaned.append(np.empty(0, dtype=np.int64))
            continue
        if items.ndim != 1 or items.dtype == bool or not np.issubdtype(items.dtype, np.integer):
            raise ValueError(f"{name}[{row}] must be a 1-D integer array, got {items.dtype} {items.shape}")
        if items.min() < 0 or items.max() > n_items:
            raise ValueError(f"{name}[{row}] holds items outside [0, {n_items}]")
        cleaned.append(items[items != 0].astype(np.int64))
    return cleaned


def minus_inf_padding(scores: np.ndarray) -> np.ndarray:
    scores[:, 0] = -np.inf
    return scores


class Baseline(ABC):
    """Contract shared by the baselines: ``fit`` on training histories, ``score`` all items.

    ``fit`` validates its inputs and counts item popularity (``self.popularity``:
    (n_items + 1,) int64 interaction counts, index 0 always 0) before the subclass hook
    ``_fit``; ``score`` is the subclass's own.
    """

    name: ClassVar[str]

    def __init__(self) -> None:
        self.n_items: int | None = None
        self.popularity: np.ndarray | None = None

    def fit(
        self,
        histories: Sequence[np.ndarray],
        n_items: int,
        item_category: np.ndarray | None = None,
    ) -> Baseline:
        """Fit on training histories.

        Args:
            histories: one time-ordered 1-D int array of item indices per user (0 = padding).
            n_items: number of items; valid items are 1..n_items.
            item_category: optional (n_items + 1,) int category per item (0 for padding);
                required by ``PopularInLastCategory``, ignored by the others.

        Returns:
            self.
        """
        n_items = check_positive_int(n_items, "n_items")
        histories = _item_sequences(histories, n_items, "histories")
        if item_category is not None:
            item_category = np.asarray(item_category)
            if item_category.shape != (n_items + 1,):
                raise ValueError(f"item_category must have shape ({n_items + 1},), got {item_category.shape}")
            if item_category.dtype == bool or not np.issubdtype(item_category.dtype, np.integer):
                raise ValueError(f"item_category must hold integers, got dtype {item_category.dtype}")
            if item_category.min() < 0:
                raise ValueError("item_category must be >= 0")
            item_category = item_category.astype(np.int64)
        all_items = np.concatenate(histories) if histories else np.empty(0, dtype=np.int64)
        self.popularity = np.bincount(all_items, minlength=n_items + 1).astype(np.int64)
        self.n_items = n_items
        self._fit(histories, item_category)
        return self

    def _fit(self, histories: list[np.ndarray], item_category: np.ndarray | None) -> None:
        """Subclass hook: histories are validated int64 arrays without padding."""

    def _fitted_arrays(self) -> dict[str, np.ndarray]:
        """Subclass hook: what ``save`` keeps beyond the popularity counts."""
        return {}

    def _restore(self, arrays: dict[str, np.ndarray]) -> None:
        """Subclass hook: the inverse of ``_fitted_arrays``."""

    def _arguments(self) -> dict:
        """Constructor arguments, saved beside the arrays."""
        return {}

    def save(self, directory: Path) -> None:
        """``<name>.npz``: constructor arguments and fitted arrays (loads without pickle)."""
        if self.n_items is None:
            raise RuntimeError(f"{type(self).__name__} is not fitted; call fit() first")
        arguments = {f"argument_{k}": np.asarray(v) for k, v in self._arguments().items()}
        np.savez(Path(directory) / f"{self.name}.npz", n_items=self.n_items, popularity=self.popularity,
                 **arguments, **self._fitted_arrays())

    @classmethod
    def load(cls, directory: Path) -> "Baseline":
        with np.load(Path(directory) / f"{cls.name}.npz", allow_pickle=False) as saved:
            arrays = dict(saved)
        arguments = {k.removeprefix("argument_"): arrays.pop(k).item() for k in list(arrays) if k.startswith("argument_")}
        model = cls(**arguments)
        model.n_items, model.popularity = int(arrays.pop("n_items")), arrays.pop("popularity")
        model._restore(arrays)
        return model

    @abstractmethod
    def score(self, recent: Sequence[np.ndarray]) -> np.ndarray:
        """Scores (batch, n_items + 1) float64 for users whose time-ordered recent items
        are ``recent`` (one 1-D int array per user, or a 0-padded 2-D array); column 0 is -inf."""

    def _recent(self, recent: Sequence[np.ndarray]) -> list[np.ndarray]:
        if self.n_items is None:
            raise RuntimeError(f"{type(self).__name__} is not fitted; call fit() first")
        return _item_sequences(recent, self.n_items, "recent")
