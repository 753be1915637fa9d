"""Blend: the ensemble, a learned mix of the sequence model's and the ranker's scores.

Within each decision point both scores are standardised over its candidates, then mixed
as ``weight * lstm + (1 - weight) * ranker``. ``fit`` chooses the weight on the
validation period (by an objective such as NDCG@10 of the full ranking), never on test.
Saved as ``blend.json``.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

MODEL_FILE = "blend.json"


def standardise_within(scores: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Scores minus their query's mean, over their query's standard deviation (1 if 0).

    Args: scores, query: (rows,); one pass over the rows whatever the number of queries.
    """
    values = np.asarray(scores, dtype=np.float64)
    _, group, counts = np.unique(query, return_inverse=True, return_counts=True)
    centred = values - (np.bincount(group, weights=values) / counts)[group]
    spread = np.sqrt(np.bincount(group, weights=centred * centred) / counts)
    return centred / np.where(spread > 0, spread, 1.0)[group]


class Blend:
    """Args: lstm_weight in [0, 1]; 1 = sequence model only, 0 = ranker only."""

    def __init__(self, lstm_weight: float = 0.5):
        self.lstm_weight = float(lstm_weight)
        self.search: dict[float, float] = {}  # objective at every weight ``fit`` tried

    def fit(self, lstm_scores: np.ndarray, ranker_scores: np.ndarray, query: np.ndarray, objective,
            grid: np.ndarray | None = None, progress: bool = False) -> "Blend":
        """Pick the weight that maximises ``objective(blended_scores)`` (higher is better;
        ties go to the weight nearest 0.5).

        Args:
            lstm_scores, ranker_scores, query: (n,) per candidate row.
            grid: weights to try (default 0, 0.05, ..., 1).
            progress: a transient bar over the weights.
        """
        grid = np.round(np.linspace(0, 1, 21), 2) if grid is None else grid
        lstm_z, ranker_z = standardise_within(lstm_scores, query), standardise_within(ranker_scores, query)
        weights = tqdm(grid, desc="blend weights", unit="weight", leave=False, disable=not progress)
        self.search = {float(w): float(objective(w * lstm_z + (1 - w) * ranker_z)) for w in weights}
        self.lstm_weight = max(self.search, key=lambda w: (self.search[w], -abs(w - 0.5)))
        return self

    def score(self, lstm_scores: np.ndarray, ranker_scores: np.ndarray, query: np.ndarray) -> np.ndarray:
        """(n,) blended scores of candidate rows; comparable within a query only."""
        return self.lstm_weight * standardise_within(lstm_scores, query) + (1 - self.lstm_weight) * standardise_within(ranker_scores, query)

    def save(self, directory: Path) -> None:
        (Path(directory) / MODEL_FILE).write_text(json.dumps({"lstm_weight": self.lstm_weight}))

    @classmethod
    def load(cls, directory: Path) -> "Blend":
        return cls(json.loads((Path(directory) / MODEL_FILE).read_text())["lstm_weight"])
