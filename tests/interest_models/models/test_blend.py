"""Per-query standardisation of the blend, against a per-query loop (no database)."""
from __future__ import annotations

import numpy as np

from interest_models.models.blend import standardise_within


def test_standardise_within_equals_a_loop_over_queries():
    rng = np.random.default_rng(3)
    query = rng.integers(0, 300, 20_000)
    scores = rng.normal(size=query.size).astype(np.float32) * rng.uniform(0.1, 10, 300)[query]
    scores[query == 7] = 2.5  # a query whose scores are all equal: spread 0, divided by 1
    expected = np.empty(query.size)
    for q in np.unique(query):
        rows = query == q
        values = scores[rows].astype(np.float64)
        spread = values.std()
        expected[rows] = (values - values.mean()) / (spread if spread > 0 else 1.0)
    got = standardise_within(scores, query)
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-9)
    assert np.all(got[query == 7] == 0)
