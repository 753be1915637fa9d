"""Per-item multipliers of the bandit's click model: what its shared linear weights cannot say
about one item.

The bandit models a shown item's click probability at position j as
``theta_j * effect_i * (x @ w)``. The shared weights ``w`` see an item only through its
context row; the true click rate also goes with the item's own appeal (in the simulator,
its hidden quality), which no column states and which the product with the user's taste
makes non-linear. ``effect_i`` learns it from the log: the item's clicks over the clicks
the linear model predicted for its impressions, shrunk towards 1 by ``prior_clicks``
pseudo-clicks, ``(clicks + m) / (predicted + m)``. Unlike the 7-day item click rate in the
context, the sums are kept across days (``discount`` fades them), so the estimate keeps
converging while the catalogue's items keep being shown. Saved as ``.npz`` arrays, no pickle.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np


class ItemEffects:
    """Args:
        prior_clicks: pseudo-clicks shrinking each effect towards 1 (0: every effect is 1).
    """

    ARRAYS = "item_effects.npz"

    def __init__(self, prior_clicks: float = 5.0):
        if prior_clicks < 0:
            raise ValueError(f"item_prior_clicks must be >= 0, got {prior_clicks}")
        self.prior_clicks = float(prior_clicks)
        self.clicks: dict[int, float] = {}
        self.predicted: dict[int, float] = {}

    def of(self, item_ids: np.ndarray | None, n: int) -> np.ndarray:
        """(n,) the effects of ``n`` candidates' item ids (all 1 when the ids are unknown or
        the effects are off)."""
        if item_ids is None or self.prior_clicks == 0:
            return np.ones(n)
        m = self.prior_clicks
        return np.array([(self.clicks.get(i, 0.0) + m) / (self.predicted.get(i, 0.0) + m) for i in np.asarray(item_ids).tolist()])

    def update(self, item_ids: np.ndarray, clicks: np.ndarray, predicted: np.ndarray) -> None:
        """Add shown items: (n,) ids, clicks (0/1) and the clicks the linear model predicted
        at their positions (``theta_j * x @ w``)."""
        for item, click, expected in zip(np.asarray(item_ids).tolist(), np.asarray(clicks, np.float64).tolist(),
                                         np.asarray(predicted, np.float64).tolist()):
            self.clicks[item] = self.clicks.get(item, 0.0) + click
            self.predicted[item] = self.predicted.get(item, 0.0) + expected

    def discount(self, factor: float) -> None:
        """Fade the sums: each effect moves towards 1 as its evidence shrinks."""
        if not 0 < factor <= 1:
            raise ValueError(f"the item effects' discount must be in (0, 1], got {factor}")
        if factor < 1:
            self.clicks = {i: factor * c for i, c in self.clicks.items()}
            self.predicted = {i: factor * p for i, p in self.predicted.items()}

    def save(self, folder: Path) -> list[Path]:
        ids = np.array(sorted(self.clicks), np.int64)
        path = Path(folder) / self.ARRAYS
        np.savez(path, item_id=ids, clicks=np.array([self.clicks[i] for i in ids.tolist()]),
                 predicted=np.array([self.predicted[i] for i in ids.tolist()]))
        return [path]

    @classmethod
    def load(cls, folder: Path, prior_clicks: float) -> "ItemEffects":
        """The saved sums, or none (versions saved before item effects existed)."""
        effects = cls(prior_clicks)
        path = Path(folder) / cls.ARRAYS
        if path.exists():
            with np.load(path, allow_pickle=False) as arrays:
                ids = arrays["item_id"].astype(np.int64).tolist()
                effects.clicks = dict(zip(ids, arrays["clicks"].astype(np.float64).tolist()))
                effects.predicted = dict(zip(ids, arrays["predicted"].astype(np.float64).tolist()))
        return effects
