"""CategoryBooster: the next-category forecast as gradient-boosted trees over category profiles.

One row per (decision point, category): the category's share in each of the user's profiles
(the 7- and 30-day and lifetime shares from Feast and the mixes of the last 1, 2, 4, 8 and 16
sessions of the recent sequence), their logs, each share's distance to the largest share of
that profile, whether the category is the 30-day dominant one or the last event's, the
user's lifetime events (log) and the sequence's length. A binary XGBoost model scores each
row; the scores of a point, normalised over its categories, are its next-category
distribution. The shift probability is ``1 - P(30-day dominant category)`` by that
distribution.

``InterestShiftLSTM`` carries one as its category head when ``category_booster`` is set in
``config/lstm.yaml``: trees compare a category with the others (how far it is behind the
top one) in a way the LSTM's per-category scorer does not, and on the synthetic shop they
forecast the next category better (see the README's model results).

The model contract (``interest_models.models.base``): ``fit`` with early stopping on the
validation points' log-loss, ``score`` gives (n, n_categories + 1) probabilities,
``save``/``load`` XGBoost JSON (no pickle).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import xgboost as xgb

from interest_models.data.sequences import SequenceBatch, session_mixes

MODEL_FILE = "category_booster.json"
LOG_FLOOR = 0.05
"""Added to every share before its log."""
SESSION_GAP_ATTRIBUTE = "session_gap_seconds"
"""The booster attribute (saved in its JSON) with the session gap its profiles were cut at."""
RANKING_ATTRIBUTE = "drives_ranking"
"""The booster attribute (saved in its JSON): "1" when the item ranking reads its forecast (the
category term of the LSTM's factorised item scores, the predicted-category candidates, the
ranker's LSTM columns), "0" when it forecasts categories and shifts only and the ranking reads
the LSTM's heads. Models saved before the ranker followed it name it ``drives_item_scores``."""


def profile_rows(batch: SequenceBatch, session_gap_seconds: float) -> np.ndarray:
    """(n, n_categories, n_features) float32 features of every (point, category) pair; the
    category axis runs over category ids 1..n_categories."""
    profiles = torch.cat([batch.category_shares, session_mixes(batch, session_gap_seconds), batch.lifetime_shares.unsqueeze(1)],
                         dim=1)[:, :, 1:].numpy()
    n, _, n_categories = profiles.shape
    categories = np.arange(1, n_categories + 1)
    last = batch.categories.gather(1, (batch.lengths - 1).unsqueeze(1)).numpy()                  # (n, 1)
    flags = np.stack([batch.dominant_category.numpy()[:, None] == categories, last == categories], axis=1)
    per_user = np.stack([np.log1p(batch.lifetime_events.numpy()), batch.lengths.numpy()], axis=1)   # (n, 2)
    per_user = np.broadcast_to(per_user[:, :, None], (n, 2, n_categories))
    columns = np.concatenate([profiles, np.log(profiles + LOG_FLOOR), profiles - profiles.max(axis=2, keepdims=True),
                              flags, per_user], axis=1)                                             # (n, features, categories)
    return np.ascontiguousarray(columns.transpose(0, 2, 1), dtype=np.float32)


class CategoryBooster:
    """Binary XGBoost over ``profile_rows``; see the module docstring.

    Args:
        config: ``category_booster`` of ``config/lstm.yaml`` (tree parameters, rounds, early stopping).
        seed: XGBoost's seed.
        device: "cpu" or "cuda".
    """

    def __init__(self, config: dict, seed: int = 0, device: str = "cpu"):
        self.config, self.seed, self.device = dict(config), seed, device
        self.booster: xgb.Booster | None = None
        self.session_gap_seconds = 0.0
        self.valid_log_loss: list[float] = []
        self.drives_ranking = True  # chosen on validation by the training recipe

    def _params(self) -> dict:
        return {"objective": "binary:logistic", "eval_metric": "logloss", "tree_method": "hist", "device": self.device,
                "seed": self.seed, **{k: self.config[k] for k in ("max_depth", "learning_rate", "subsample",
                                                                   "colsample_bytree", "min_child_weight")}}

    @staticmethod
    def _matrix(batch: SequenceBatch, session_gap_seconds: float) -> xgb.DMatrix:
        """Training rows with their labels (1 where the category is the point's next one)."""
        rows = profile_rows(batch, session_gap_seconds)
        n, n_categories, n_features = rows.shape
        labels = (batch.target_category.numpy()[:, None] == np.arange(1, n_categories + 1)).reshape(-1).astype(np.float32)
        return xgb.DMatrix(rows.reshape(-1, n_features), label=labels)

    def fit(self, train: SequenceBatch, valid: SequenceBatch, session_gap_seconds: float) -> "CategoryBooster":
        """Train on ``train``'s next categories, early-stopped on ``valid``'s log-loss.

        Args:
            train, valid: sequences with ``target_category`` (``encode_sequences`` with labels).
            session_gap_seconds: where the session mixes cut sessions (the pipeline's gap).
        """
        self.session_gap_seconds = float(session_gap_seconds)
        train_matrix = self._matrix(train, self.session_gap_seconds)
        valid_matrix = self._matrix(valid, self.session_gap_seconds)
        history: dict = {}
        self.booster = xgb.train(self._params(), train_matrix, num_boost_round=self.config["max_rounds"],
                                 evals=[(valid_matrix, "valid")], early_stopping_rounds=self.config["early_stopping_rounds"],
                                 evals_result=history, verbose_eval=False)
        self.booster.set_attr(**{SESSION_GAP_ATTRIBUTE: repr(self.session_gap_seconds)})
        self.valid_log_loss = [float(v) for v in history["valid"]["logloss"]]
        return self

    @property
    def best_iteration(self) -> int:
        return int(self.booster.best_iteration)

    def score(self, batch: SequenceBatch) -> np.ndarray:
        """(n, n_categories + 1) float32 next-category probabilities; column 0 (padding) is 0."""
        rows = profile_rows(batch, self.session_gap_seconds)
        n_categories = rows.shape[1]
        rows = self.booster.inplace_predict(rows.reshape(-1, rows.shape[2]),
                                            iteration_range=(0, self.best_iteration + 1)).reshape(-1, n_categories)
        probabilities = np.zeros((len(rows), n_categories + 1), np.float32)
        probabilities[:, 1:] = rows / rows.sum(axis=1, keepdims=True)
        return probabilities

    def save(self, directory: Path) -> None:
        self.booster.set_attr(**{RANKING_ATTRIBUTE: "1" if self.drives_ranking else "0"})
        self.booster.save_model(Path(directory) / MODEL_FILE)

    @classmethod
    def load(cls, directory: Path, device: str = "cpu") -> "CategoryBooster":
        model = cls({}, device=device)
        model.booster = xgb.Booster()
        model.booster.load_model(Path(directory) / MODEL_FILE)
        model.booster.set_param({"device": device})
        model.session_gap_seconds = float(model.booster.attr(SESSION_GAP_ATTRIBUTE))
        model.drives_ranking = (model.booster.attr(RANKING_ATTRIBUTE) or model.booster.attr("drives_item_scores")) != "0"
        return model
