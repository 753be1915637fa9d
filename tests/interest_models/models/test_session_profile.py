"""The LSTM's session profile: the category mix of the newest sessions in the sequence."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from interest_models.data.sequences import (
    SESSION_PROFILES,
    SequenceBatch,
    session_mixes,
)
from interest_models.models.interest_shift_lstm import InterestShiftLSTM

GAP_SECONDS = 1800.0


def _batch(categories: list[list[int]], gap_minutes: list[list[float]], lengths: list[int], n_categories: int = 3) -> SequenceBatch:
    categories_t = torch.tensor(categories)
    n, length = categories_t.shape
    return SequenceBatch(items=(categories_t > 0).long(), categories=categories_t,
                         event_types=(categories_t > 0).long(), log_gaps=torch.log1p(torch.tensor(gap_minutes)),
                         lengths=torch.tensor(lengths), dominant_category=torch.ones(n, dtype=torch.long),
                         category_shares=torch.zeros(n, 2, n_categories + 1),
                         lifetime_shares=torch.zeros(n, n_categories + 1), lifetime_events=torch.zeros(n))


def test_each_session_weighs_the_same_and_padding_is_ignored():
    # sessions: [1, 1, 2] | [3] | [3, 2]; the gap of 30 minutes exactly does not start a session
    batch = _batch([[1, 1, 2, 3, 3, 2, 0, 0]], [[0, 5, 30, 31, 200, 1, 0, 500]], [6])
    mixes = session_mixes(batch, GAP_SECONDS)[0].numpy()
    assert mixes.shape == (len(SESSION_PROFILES), 4)
    np.testing.assert_allclose(mixes[SESSION_PROFILES.index(1)], [0, 0, 0.5, 0.5])
    np.testing.assert_allclose(mixes[SESSION_PROFILES.index(2)], [0, 0, 0.25, 0.75])
    every = [0, (2 / 3) / 3, (1 / 3 + 0.5) / 3, (1 + 0.5) / 3]  # all three sessions, also for 4, 8 and 16
    for k in (4, 8, 16):
        np.testing.assert_allclose(mixes[SESSION_PROFILES.index(k)], every, rtol=1e-6)


def test_the_first_event_starts_a_session_and_rows_are_independent():
    batch = _batch([[2, 2, 1, 0], [1, 3, 3, 3]], [[0, 90, 1, 0], [0, 1, 1, 45]], [3, 4])
    mixes = session_mixes(batch, GAP_SECONDS).numpy()
    np.testing.assert_allclose(mixes[0, 0], [0, 0.5, 0.5, 0])       # newest session: [2, 1]
    np.testing.assert_allclose(mixes[0, 1], [0, 0.25, 0.75, 0])     # with [2]
    np.testing.assert_allclose(mixes[1, 0], [0, 0, 0, 1])           # [3]
    np.testing.assert_allclose(mixes[1, 1], [0, 1 / 6, 0, 5 / 6])   # with [1, 3, 3]
    single = session_mixes(_batch([[1, 3, 3, 3]], [[0, 1, 1, 45]], [4]), GAP_SECONDS).numpy()
    np.testing.assert_allclose(single[0], mixes[1])


def test_the_session_gap_is_the_models_own_and_survives_save(tmp_path):
    model = InterestShiftLSTM(5, 3, torch.randn(6, 4), item_dim=4, category_dim=2, hidden_dim=8,
                              inputs=("category_profile", "session_profile"), session_gap_seconds=3600.0)
    assert model.n_profiles == 2 + len(SESSION_PROFILES)
    model.save(tmp_path)
    assert InterestShiftLSTM.load(tmp_path).session_gap_seconds == 3600.0
    with pytest.raises(ValueError, match="session_profile needs category_profile"):
        InterestShiftLSTM(5, 3, torch.randn(6, 4), inputs=("session_profile",))
