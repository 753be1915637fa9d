"""Multipliers of the bandit's click model that its shared linear weights cannot state: one per
item (its own appeal) and one per user and category (that user's own taste for it).

The bandit models a shown item's click probability at position j as
``theta_j * item_i * taste_uc * (x @ w)`` for user u and the item's category c. The shared
weights ``w`` see an item only through its context row; the true click rate also goes with the
item's own appeal (in the simulator, its hidden quality) and with the user's own taste (their
hidden preference), which the context states only through noisy 7- and 30-day windows, and
whose product makes it non-linear. Each multiplier learns from the log: its clicks over the
clicks the rest of the model predicted for its impressions, shrunk towards 1 by ``m``
pseudo-clicks, ``(clicks + m) / (predicted + m)``. The sums are kept across days (a daily
discount fades them), so the estimates keep converging: with the item's and the user's
multipliers, the model can state the simulator's true ranking, and what is left of the regret is what
the bandit has not learned yet. Saved as ``.npz`` arrays, no pickle.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from interest_models.policies.context import candidate_categories


KEY_PART_BITS = 16  # a key of several parts is one int64: (first << 16 | second) ...; later parts < 65,536


class EffectTable:
    """Multipliers keyed by ids, in sorted numpy arrays (24 bytes a key, so a table of every
    active user's categories stays small in a serving worker).

    Args:
        prior_clicks: pseudo-clicks shrinking each effect towards 1 (0: every effect is 1).
        key_columns: the names of a key's parts (saved as arrays of these names).
        file_name: the ``.npz`` file it is saved to.
    """

    def __init__(self, prior_clicks: float, key_columns: tuple[str, ...], file_name: str):
        if prior_clicks < 0:
            raise ValueError(f"the prior clicks of {file_name} must be >= 0, got {prior_clicks}")
        self.prior_clicks = float(prior_clicks)
        self.key_columns, self.file_name = key_columns, file_name
        self.keys = np.zeros(0, np.int64)  # sorted, unique
        self.clicks = np.zeros(0)
        self.predicted = np.zeros(0)

    @property
    def enabled(self) -> bool:
        return self.prior_clicks > 0

    def __len__(self) -> int:
        return len(self.keys)

    @staticmethod
    def key(*parts: np.ndarray) -> np.ndarray:
        """(n,) int64 keys of n ids given as one (n,) array per key column."""
        keys = np.asarray(parts[0], np.int64)
        for part in parts[1:]:
            part = np.asarray(part, np.int64)
            if len(part) and not 0 <= part.min() <= part.max() < 1 << KEY_PART_BITS:
                raise ValueError(f"a key part outside [0, {1 << KEY_PART_BITS}): {part.min()}..{part.max()}")
            keys = (keys << KEY_PART_BITS) | part
        return keys

    def _parts(self) -> list[np.ndarray]:
        parts, rest = [], self.keys
        for _ in self.key_columns[1:]:
            parts.insert(0, rest & ((1 << KEY_PART_BITS) - 1))
            rest = rest >> KEY_PART_BITS
        return [rest] + parts

    def sums(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(n,) the clicks and predicted clicks summed for n keys (0 for a key never seen)."""
        keys = np.asarray(keys, np.int64)
        if len(self.keys) == 0:
            return np.zeros(len(keys)), np.zeros(len(keys))
        at = np.searchsorted(self.keys, keys).clip(max=len(self.keys) - 1)
        found = self.keys[at] == keys
        return np.where(found, self.clicks[at], 0.0), np.where(found, self.predicted[at], 0.0)

    def of(self, keys: np.ndarray, optimism: float = 0.0) -> np.ndarray:
        """(n,) the effects of n keys (all 1 when the table is off): the posterior mean of a
        Gamma(m, m) prior under Poisson clicks, plus ``optimism`` posterior standard
        deviations, ``(clicks + m + optimism * sqrt(clicks + m)) / (predicted + m)``."""
        if not self.enabled:
            return np.ones(len(keys))
        clicks, predicted = self.sums(keys)
        clicks, predicted = clicks + self.prior_clicks, predicted + self.prior_clicks
        return (clicks + optimism * np.sqrt(clicks)) / predicted

    def update(self, keys: np.ndarray, clicks: np.ndarray, predicted: np.ndarray) -> None:
        """Add n impressions: their keys, clicks (0/1) and the clicks the rest of the model
        predicted for them."""
        merged, index = np.unique(np.concatenate([self.keys, np.asarray(keys, np.int64)]), return_inverse=True)
        self.clicks = np.bincount(index, np.concatenate([self.clicks, np.asarray(clicks, np.float64)]), len(merged))
        self.predicted = np.bincount(index, np.concatenate([self.predicted, np.asarray(predicted, np.float64)]), len(merged))
        self.keys = merged

    def discount(self, factor: float) -> None:
        """Fade the sums: each effect moves towards 1 as its evidence shrinks."""
        if not 0 < factor <= 1:
            raise ValueError(f"the discount of {self.file_name} must be in (0, 1], got {factor}")
        self.clicks *= factor
        self.predicted *= factor

    def save(self, folder: Path) -> Path:
        path = Path(folder) / self.file_name
        np.savez(path, **dict(zip(self.key_columns, self._parts())), clicks=self.clicks, predicted=self.predicted)
        return path

    def load(self, folder: Path) -> "EffectTable":
        """Read the saved sums into this table; none when the file is absent (versions saved
        before this table existed)."""
        path = Path(folder) / self.file_name
        if path.exists():
            with np.load(path, allow_pickle=False) as arrays:
                keys = self.key(*(arrays[name] for name in self.key_columns))
                order = np.argsort(keys, kind="stable")
                self.keys = keys[order]
                self.clicks = arrays["clicks"].astype(np.float64)[order]
                self.predicted = arrays["predicted"].astype(np.float64)[order]
        return self


class ClickEffects:
    """The item and taste tables of one bandit, their priors from ``policy.yaml``'s
    ``item_prior_clicks`` and ``taste_prior_clicks`` (a missing prior turns its table off, as
    in configs saved before it existed)."""

    def __init__(self, config: dict):
        self.items = EffectTable(config.get("item_prior_clicks", 0.0), ("item_id",), "item_effects.npz")
        self.tastes = EffectTable(config.get("taste_prior_clicks", 0.0), ("user_id", "category_id"), "taste_effects.npz")

    def _taste_keys(self, context: np.ndarray, user_ids: np.ndarray) -> np.ndarray:
        return self.tastes.key(user_ids, candidate_categories(context))

    def of(self, context: np.ndarray, item_ids: np.ndarray | None, user_ids: np.ndarray | None,
           item_optimism: float = 0.0, taste_optimism: float = 0.0) -> np.ndarray:
        """(n,) each row's ``item_i * taste_uc``; an unknown id (None) leaves its factor at 1.

        Args:
            context: (n, dim) the rows (their category one-hot gives c).
            item_ids, user_ids: (n,) each row's item and user.
            item_optimism, taste_optimism: posterior standard deviations added to each table's
                effects (the policy ranks by them; learning uses the means).
        """
        effects = np.ones(len(context))
        if item_ids is not None:
            effects *= self.items.of(item_ids, item_optimism)
        if user_ids is not None:
            effects *= self.tastes.of(self._taste_keys(context, user_ids), taste_optimism)
        return effects

    def update(self, context: np.ndarray, item_ids: np.ndarray | None, user_ids: np.ndarray | None, clicks: np.ndarray,
               linear: np.ndarray) -> np.ndarray:
        """Add shown rows: each table learns from ``linear`` (the clicks the shared weights
        predict at the rows' positions, ``theta_j * x @ w``) times the other table's effect,
        both as they were before this update. Returns (n,) the rows' effects before it (``of``
        without optimism)."""
        taste_keys = self._taste_keys(context, user_ids) if user_ids is not None else None
        items = self.items.of(item_ids) if item_ids is not None else np.ones(len(context))
        tastes = self.tastes.of(taste_keys) if taste_keys is not None else np.ones(len(context))
        if item_ids is not None and self.items.enabled:
            self.items.update(item_ids, clicks, linear * tastes)
        if taste_keys is not None and self.tastes.enabled:
            self.tastes.update(taste_keys, clicks, linear * items)
        return items * tastes

    def discount(self, item_factor: float, taste_factor: float) -> None:
        self.items.discount(item_factor)
        self.tastes.discount(taste_factor)

    def save(self, folder: Path) -> list[Path]:
        return [self.items.save(folder), self.tastes.save(folder)]

    @classmethod
    def load(cls, folder: Path, config: dict) -> "ClickEffects":
        effects = cls(config)
        effects.items.load(folder)
        effects.tastes.load(folder)
        return effects
