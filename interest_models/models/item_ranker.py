"""ItemRanker: XGBoost LambdaMART over the point-in-time ranking features.

Query groups are decision points; ``device="cuda"`` when a GPU is present. With a
``base_margin`` column (``ranker.yaml``), boosting starts from that column's value (the
prior score of a row, in log-odds) and the trees learn corrections to it, as XGBoost's
``base_margin``: early stopping then keeps only the corrections that help. The model
contract (``interest_models.models.base``): ``fit`` with early stopping on a validation
set, ``score`` candidate rows, ``save``/``load`` as XGBoost JSON (no pickle), which keeps
the hyper-parameters and the best iteration.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import xgboost as xgb
from tqdm.auto import tqdm

from interest_models.data.ranking_features import FEATURE_COLUMNS
from interest_models.progress import end_bar

MODEL_FILE = "ranker.json"
MARGIN_ATTRIBUTE = "base_margin_column"
"""The booster attribute (saved in ``ranker.json``) naming the base-margin column."""


def _float32(features: pd.DataFrame | np.ndarray, columns: list[str]) -> np.ndarray:
    """``columns`` of a DataFrame, or of a matrix in ``FEATURE_COLUMNS`` order, as float32.
    A plain float32 array skips XGBoost's per-call DataFrame conversion."""
    if isinstance(features, pd.DataFrame):
        features = features[columns].to_numpy()
    elif columns != FEATURE_COLUMNS:
        features = np.asarray(features)[:, [FEATURE_COLUMNS.index(c) for c in columns]]
    return np.ascontiguousarray(features, dtype=np.float32)


def xgboost_device(preferred: str | None = None) -> str:
    """"cuda" when torch sees a GPU (or when asked), else "cpu"."""
    if preferred:
        return preferred
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class _RoundBar(xgb.callback.TrainingCallback):
    def __init__(self, bar: tqdm):
        super().__init__()
        self.bar = bar

    def after_iteration(self, model, epoch: int, evals_log) -> bool:
        self.bar.update(1)
        return False


class ItemRanker:
    """LambdaMART over ``columns`` (default all ``FEATURE_COLUMNS``); scores are comparable
    within a query only. Only the default ranker is saved and served.

    Args:
        config: ``ranker.yaml``: XGBRanker's parameters and ``base_margin``, one of
            ``columns`` or None.
    """

    def __init__(self, config: dict, seed: int, device: str | None = None, columns: list[str] = FEATURE_COLUMNS):
        self.columns = list(columns)
        parameters = dict(config)
        self.margin_column = parameters.pop("base_margin", None)
        if self.margin_column is not None and self.margin_column not in self.columns:
            raise ValueError(f"the ranker's base_margin {self.margin_column!r} is not one of its columns")
        self.device = xgboost_device(device)
        self.model = xgb.XGBRanker(**parameters, random_state=seed, device=self.device, n_jobs=0)

    def margin(self, features: pd.DataFrame | np.ndarray) -> np.ndarray | None:
        """(n,) the base-margin column of rows (as ``score`` takes them), None without one."""
        if self.margin_column is None:
            return None
        if isinstance(features, pd.DataFrame):
            return features[self.margin_column].to_numpy(np.float64)
        return np.asarray(features)[:, FEATURE_COLUMNS.index(self.margin_column)].astype(np.float64)

    def fit(self, features: pd.DataFrame, relevance: np.ndarray, query: np.ndarray,
            valid: tuple[pd.DataFrame, np.ndarray, np.ndarray], progress: bool = False) -> "ItemRanker":
        """Args: features in ``FEATURE_COLUMNS`` order, relevance (n,) 1 for the true next
        item else 0, query (n,) decision point id, rows of one query contiguous; progress:
        a bar over boosting rounds that ends where early stopping ends."""
        valid_features, valid_relevance, valid_query = valid
        bar = tqdm(total=self.model.n_estimators, desc="XGBoost rounds", unit="round", disable=not progress)
        self.model.set_params(callbacks=[_RoundBar(bar)])
        try:
            margins = {} if self.margin_column is None else {
                "base_margin": self.margin(features), "base_margin_eval_set": [self.margin(valid_features)]}
            self.model.fit(
                features[self.columns], relevance, qid=query,
                eval_set=[(valid_features[self.columns], valid_relevance)], eval_qid=[valid_query], verbose=False,
                **margins,
            )
        finally:
            self.model.set_params(callbacks=None)
        self.model.get_booster().set_attr(**{MARGIN_ATTRIBUTE: self.margin_column})
        end_bar(bar, self.model.get_booster().num_boosted_rounds(), f"{self.best_iteration + 1} trees kept")
        return self

    def score(self, features: pd.DataFrame | np.ndarray) -> np.ndarray:
        """(n,) scores of rows in ``FEATURE_COLUMNS`` order (a DataFrame is reordered), the
        base margin included."""
        return self.model.predict(_float32(features, self.columns), base_margin=self.margin(features))

    @property
    def best_iteration(self) -> int:
        return int(getattr(self.model, "best_iteration", self.model.n_estimators))

    def _iteration_range(self) -> tuple[int, int]:
        """The trees ``predict`` uses: up to the early-stopping best iteration ((0, 0) = all)."""
        best = getattr(self.model, "best_iteration", None)
        return (0, 0) if best is None else (0, int(best) + 1)

    def feature_importance(self) -> pd.Series:
        gain = self.model.get_booster().get_score(importance_type="gain")
        return pd.Series({c: gain.get(c, 0.0) for c in self.columns}).sort_values(ascending=False)

    def contributions(self, features: pd.DataFrame | np.ndarray, approximate: bool = False) -> np.ndarray:
        """(n, len(columns)) per-row contribution of each feature to the score, over
        the trees ``predict`` uses: exact TreeSHAP, or with ``approximate`` the per-path
        (Saabas) attribution, about 10x cheaper. The base margin counts as its column's."""
        margin = self.margin(features)
        matrix = xgb.DMatrix(_float32(features, self.columns), feature_names=self.columns, base_margin=margin)
        values = self.model.get_booster().predict(matrix, pred_contribs=True, approx_contribs=approximate,
                                                  iteration_range=self._iteration_range())[:, :-1]
        if margin is not None:
            values[:, self.columns.index(self.margin_column)] += margin
        return values

    def set_threads(self, threads: int) -> None:
        """Threads per predict call (0 = all cores)."""
        self.model.set_params(n_jobs=threads)

    def save(self, directory: Path) -> None:
        """``ranker.json``: the booster, its hyper-parameters and best iteration."""
        self.model.save_model(str(Path(directory) / MODEL_FILE))

    @classmethod
    def load(cls, directory: Path, device: str | None = None) -> "ItemRanker":
        """The saved ranker; it reads the columns it was trained on (the booster's feature
        names), so a model saved before a column was added keeps scoring."""
        ranker = cls.__new__(cls)
        ranker.device = xgboost_device(device)
        ranker.model = xgb.XGBRanker()
        ranker.model.load_model(str(Path(directory) / MODEL_FILE))
        names = ranker.model.get_booster().feature_names
        ranker.columns = list(names) if names else list(FEATURE_COLUMNS)
        ranker.margin_column = ranker.model.get_booster().attr(MARGIN_ATTRIBUTE)  # None: saved without one
        unknown = set(ranker.columns) - set(FEATURE_COLUMNS)
        if unknown:
            raise ValueError(f"{directory}: the ranker reads columns this version does not build: {sorted(unknown)}")
        ranker.model.set_params(device=ranker.device, n_jobs=0)
        return ranker
