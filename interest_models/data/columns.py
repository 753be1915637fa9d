"""Feature columns as numpy arrays, from either shape features arrive in.

Offline, Feast historical retrieval gives a DataFrame; online, ``get_online_features(...)
.to_dict()`` gives a dict of lists with ``None`` for missing values. Models read both
through these helpers (``columns[name]`` works on either), so training and serving
convert values the same way without building a DataFrame per request.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

Columns = Mapping[str, Sequence]
"""Per-feature sequences of equal length: a DataFrame or Feast's online ``to_dict()``."""


def as_float(values: Sequence) -> np.ndarray:
    """(n,) float64; missing or non-numeric values become NaN, booleans 0/1."""
    if isinstance(values, pd.Series):
        return pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    return np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)


def as_int(values: Sequence, missing: int = 0) -> np.ndarray:
    """(n,) int64; missing values become ``missing``."""
    floats = as_float(values)
    return np.where(np.isnan(floats), missing, floats).astype(np.int64)


def padded(arrays: Sequence, width: int | None = None, dtype=np.float64) -> tuple[np.ndarray, np.ndarray]:
    """Right-zero-padded (n, width) matrix of per-row sequences (None = empty), keeping
    each row's first ``width`` values, and the (n,) kept lengths. ``width`` defaults to
    the longest row (at least 1)."""
    lengths = np.array([0 if a is None else len(a) for a in arrays], dtype=np.int64)
    width = max(int(lengths.max(initial=0)), 1) if width is None else max(width, 1)
    lengths = np.minimum(lengths, width)
    out = np.zeros((len(lengths), width), dtype=dtype)
    for row, (values, length) in enumerate(zip(arrays, lengths)):
        if length:
            out[row, :length] = np.asarray(values[:length], dtype=dtype)
    return out, lengths
