"""The contract every model in this package honours (one model per module, as RecBole).

- ``fit(...) -> self``: learn from training data only (validation data, where a model
  takes it, is for early stopping or model selection, never test data);
- ``score(...) -> np.ndarray``: higher is better; full-ranking models give
  ``(batch, n_items + 1)`` with column 0 (padding) at ``-inf``, re-rankers ``(n,)`` per
  candidate row;
- ``save(directory)``: write the model's own files into an existing folder, none of them
  pickled (state dicts, XGBoost JSON, JSON, ``.npz``);
- ``load(directory, ...)`` (a classmethod): the model as saved.

What each method takes differs by model (sequences, ranking feature rows, histories) and
is documented on the model.
"""
from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Model(Protocol):
    def fit(self, *args, **kwargs) -> "Model": ...

    def score(self, *args, **kwargs) -> np.ndarray: ...

    def save(self, directory: Path) -> None: ...

    @classmethod
    def load(cls, directory: Path, *args, **kwargs) -> "Model": ...
