"""Derived ranking columns: an item's share of its category, and the LSTM's category
forecast times that share."""
from __future__ import annotations

import numpy as np

from interest_models.data.ranking_features import item_share_of_category


def test_shares_follow_the_views_and_stay_probabilities():
    views = np.array([60.0, 30.0, 9.0, 0.0, np.nan])
    shares = item_share_of_category(views, np.full(5, 100.0))
    np.testing.assert_allclose(shares, [60.5 / 101, 30.5 / 101, 9.5 / 101, 0.5 / 101, 0.5 / 101])
    assert ((shares > 0) & (shares <= 1)).all()
    # counts that disagree (a category count missing, or below the item's) still give a share in (0, 1]
    odd = item_share_of_category(np.array([5.0, 5.0]), np.array([np.nan, 2.0]))
    np.testing.assert_allclose(odd, [5.5 / 6, 5.5 / 6])
