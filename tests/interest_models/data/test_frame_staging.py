"""Staged frames: written in row groups, read back in bounded batches, removed afterwards
(the spark profile's way around collecting a training frame into the driver). Retrieval
through Feast's Spark offline store: tests/materialize/feature_store/test_spark_profile.py."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from interest_models.data.frame_staging import iter_batches, remove_staged, write_staged


def _frame(n: int, start: int) -> pd.DataFrame:
    rng = np.random.default_rng(start)
    values = rng.normal(size=n)
    values[::7] = np.nan  # missing values survive the round trip
    return pd.DataFrame({"row": np.arange(start, start + n), "value": values, "is_valid": start > 0})


def test_round_trip_in_bounded_batches(tmp_path):
    first, second = _frame(250, 0), _frame(120, 250)
    file = write_staged([first, second], str(tmp_path / "rows"), batch_rows=100)
    assert pq.ParquetFile(file).num_row_groups == 5  # 100 + 100 + 50 + 100 + 20
    batches = list(iter_batches([file], batch_rows=64))
    assert max(len(b) for b in batches) <= 64 and len(batches) > 1
    pd.testing.assert_frame_equal(pd.concat(batches, ignore_index=True), pd.concat([first, second], ignore_index=True))
    remove_staged([file])
    assert not (tmp_path / "rows").exists()


def test_nothing_to_write_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="no rows"):
        write_staged([_frame(0, 0)], str(tmp_path / "empty"))
