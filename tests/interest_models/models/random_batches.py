"""Random ``SequenceBatch``es for the model tests (a tiny catalogue, sequences of 6)."""
from __future__ import annotations

import numpy as np
import torch

from interest_models.data.sequences import SequenceBatch

N_ITEMS, N_CATEGORIES = 30, 4


def random_item_category(rng: np.random.Generator) -> np.ndarray:
    """(N_ITEMS + 1,) category of each item; index 0 (padding) is 0."""
    return np.concatenate([[0], rng.integers(1, N_CATEGORIES + 1, N_ITEMS)])


def random_sequences(n: int, rng: np.random.Generator, item_category: np.ndarray) -> SequenceBatch:
    """``n`` random sequences of up to 6 events with their targets."""
    items = torch.from_numpy(rng.integers(1, N_ITEMS + 1, (n, 6)))
    lifetime = np.random.default_rng(n)  # its own stream: ``rng`` draws what it drew before the lifetime fields
    return SequenceBatch(
        items=items, categories=torch.from_numpy(item_category[items.numpy()]),
        event_types=torch.from_numpy(rng.integers(1, 5, (n, 6))), log_gaps=torch.rand(n, 6),
        lengths=torch.from_numpy(rng.integers(1, 7, n)), dominant_category=torch.from_numpy(rng.integers(0, N_CATEGORIES + 1, n)),
        category_shares=torch.from_numpy(rng.dirichlet(np.ones(N_CATEGORIES + 1), (n, 2)).astype(np.float32)),
        lifetime_shares=torch.from_numpy(lifetime.dirichlet(np.ones(N_CATEGORIES + 1), n).astype(np.float32)),
        lifetime_events=torch.from_numpy(lifetime.integers(0, 500, n).astype(np.float32)),
        target_item=torch.from_numpy(rng.integers(1, N_ITEMS + 1, n)),
        target_category=torch.from_numpy(rng.integers(1, N_CATEGORIES + 1, n)),
        shifted=torch.from_numpy(rng.integers(0, 2, n).astype(np.float32)),
    )
