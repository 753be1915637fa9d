"""Linear UCB on a shared weight vector, fitted to position-corrected clicks.

The click model: a shown item at position j is clicked with probability
``theta_j * (x @ w)``, ``theta_j`` the examination probability of position j (a fixed
prior, ``position_bias``), ``x`` the item's context row. Least squares on that model gives
``A = ridge * I + sum theta_j^2 x x'`` and ``b = sum theta_j * click * x``; the weights are
``A^-1 b`` (with no data: ``prior``, the blend's order) and an item's score is ``x @ w + alpha * sqrt(x' A^-1 x)`` (the upper confidence
bound: items the log says little about score higher). ``discount`` shrinks the statistics
towards the prior, so old feedback fades as interests move. Saved as ``.npz`` arrays and
JSON (no pickle).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def position_bias(positions: np.ndarray, kind: str = "dcg") -> np.ndarray:
    """Examination probability of 1-based positions: ``1 / log2(position + 1)`` for "dcg"."""
    if kind != "dcg":
        raise ValueError(f"unknown position_bias {kind!r} (known: 'dcg')")
    return 1.0 / np.log2(np.asarray(positions, np.float64) + 1.0)


class LinearUCB:
    """Args:
        dim: context columns.
        ridge: prior precision (A starts at ``ridge * I``).
    """

    ARRAYS = "bandit.npz"
    META = "bandit.json"

    def __init__(self, dim: int, ridge: float = 1.0, prior: np.ndarray | None = None):
        if ridge <= 0:
            raise ValueError(f"ridge must be > 0, got {ridge}")
        self.dim, self.ridge = dim, float(ridge)
        self.prior = np.zeros(dim) if prior is None else np.asarray(prior, np.float64)
        self.A = ridge * np.eye(dim)
        self.b = ridge * self.prior  # the weights start at the prior mean
        self.observations = 0
        self.days = 0  # days of feedback learned (``BanditPolicy.end_day``)
        self._solve()

    def _solve(self) -> None:
        self.A_inv = np.linalg.inv(self.A)
        self.weights = self.A_inv @ self.b

    def scores(self, context: np.ndarray, alpha: float) -> np.ndarray:
        """(n,) upper confidence bounds of (n, dim) context rows."""
        context = np.asarray(context, np.float64)
        mean = context @ self.weights
        if alpha <= 0:
            return mean
        width = np.einsum("nd,de,ne->n", context, self.A_inv, context)
        return mean + alpha * np.sqrt(np.maximum(width, 0.0))

    def expected_attraction(self, context: np.ndarray) -> np.ndarray:
        """(n,) the fitted click probability at an examined position, clipped to [0, 1]."""
        return np.clip(np.asarray(context, np.float64) @ self.weights, 0.0, 1.0)

    def update(self, context: np.ndarray, examination: np.ndarray, clicks: np.ndarray) -> None:
        """Add shown items: (n, dim) context rows, (n,) examination probabilities of their
        positions, (n,) clicks (0/1)."""
        context = np.asarray(context, np.float64)
        theta = np.asarray(examination, np.float64)
        self.A += (context * theta[:, None] ** 2).T @ context
        self.b += context.T @ (theta * np.asarray(clicks, np.float64))
        self.observations += len(context)
        self._solve()

    def discount(self, factor: float) -> None:
        """Shrink the statistics towards the prior: ``A = f A + (1 - f) ridge I``,
        ``b = f b + (1 - f) ridge prior``."""
        if not 0 < factor <= 1:
            raise ValueError(f"the discount must be in (0, 1], got {factor}")
        self.A = factor * self.A + (1 - factor) * self.ridge * np.eye(self.dim)
        self.b = factor * self.b + (1 - factor) * self.ridge * self.prior
        self._solve()

    def save(self, folder: Path) -> list[Path]:
        folder = Path(folder)
        np.savez(folder / self.ARRAYS, A=self.A, b=self.b, prior=self.prior)
        (folder / self.META).write_text(json.dumps({"dim": self.dim, "ridge": self.ridge, "observations": self.observations,
                                                "days": self.days}))
        return [folder / self.ARRAYS, folder / self.META]

    @classmethod
    def load(cls, folder: Path) -> "LinearUCB":
        folder = Path(folder)
        meta = json.loads((folder / cls.META).read_text())
        with np.load(folder / cls.ARRAYS, allow_pickle=False) as arrays:
            bandit = cls(meta["dim"], meta["ridge"], arrays["prior"].astype(np.float64))
            bandit.A, bandit.b = arrays["A"].astype(np.float64), arrays["b"].astype(np.float64)
        if bandit.A.shape != (bandit.dim, bandit.dim) or bandit.b.shape != (bandit.dim,):
            raise ValueError(f"{folder}: bandit arrays do not match dim {bandit.dim}")
        bandit.observations = int(meta["observations"])
        bandit.days = int(meta.get("days", 0))  # absent in versions saved before the exploration schedule
        bandit._solve()
        return bandit
