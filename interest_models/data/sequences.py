"""The sequence model's input: users' recent sequences as padded tensors.

Built from user features retrieved from Feast, offline (a DataFrame) or online (a dict of
lists), so training and serving encode sequences the same way.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from interest_models.data.columns import Columns, as_int, padded
from interest_models.data.vocabulary import Vocabulary

N_EVENT_TYPES = 4
SESSION_PROFILES = (1, 2, 4, 8, 16)
"""``session_profile``: the category mix of the user's last 1, 2, 4, 8 and 16 sessions in the
sequence, each session weighing the same however many events it has."""


@dataclass
class SequenceBatch:
    """Right-padded recent sequences, oldest first; positions 0..length-1 are real events."""

    items: torch.Tensor          # (batch, max_len) int64 item indices, 0 = padding
    categories: torch.Tensor     # (batch, max_len) int64 category ids, 0 = padding
    event_types: torch.Tensor    # (batch, max_len) int64 event type + 1, 0 = padding
    log_gaps: torch.Tensor       # (batch, max_len) float32 log1p(gap seconds / 60)
    lengths: torch.Tensor        # (batch,) int64, >= 1
    dominant_category: torch.Tensor  # (batch,) int64 30-day dominant category, 0 = unknown
    category_shares: torch.Tensor    # (batch, 2, n_categories + 1) float32 7- and 30-day category shares; column 0 unused
    lifetime_shares: torch.Tensor    # (batch, n_categories + 1) float32 category shares of all the user's events; column 0 unused
    lifetime_events: torch.Tensor    # (batch,) float32 the user's events in all (0 = unknown)
    target_item: torch.Tensor | None = None      # (batch,) int64
    target_category: torch.Tensor | None = None  # (batch,) int64
    shifted: torch.Tensor | None = None          # (batch,) float32 1/0, NaN = unknown

    def to(self, device: torch.device) -> "SequenceBatch":
        return SequenceBatch(**{k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in self.__dict__.items()})

    def select(self, index: torch.Tensor) -> "SequenceBatch":
        return SequenceBatch(**{k: (v[index] if isinstance(v, torch.Tensor) else v) for k, v in self.__dict__.items()})

    def __len__(self) -> int:
        return len(self.lengths)


def encode_sequences(frame: Columns, vocabulary: Vocabulary, max_len: int, labels: pd.DataFrame | None = None) -> SequenceBatch:
    """Build a batch from user features retrieved from Feast (offline or online).

    Args:
        frame: columns recent_item_ids, recent_category_ids, recent_event_types,
            recent_gap_seconds (arrays, oldest first, may be None), dominant_category_30d and
            category_share_7d / category_share_30d (arrays, entry c - 1 is category c, may be None);
            category_events_lifetime (event counts, the same layout, may be None) where the
            feature service has it.
        labels: optional label_item_id and label_category_id per row.
    """
    n = len(frame["recent_item_ids"])
    items = np.zeros((n, max_len), np.int64)
    categories = np.zeros((n, max_len), np.int64)
    event_types = np.zeros((n, max_len), np.int64)
    gaps = np.zeros((n, max_len), np.float32)
    lengths = np.ones(n, np.int64)
    columns = zip(frame["recent_item_ids"], frame["recent_category_ids"], frame["recent_event_types"], frame["recent_gap_seconds"])
    for row, (item_ids, category_ids, types, gap_seconds) in enumerate(columns):
        if item_ids is None or len(item_ids) == 0:
            continue
        k = min(len(item_ids), max_len)
        items[row, :k] = vocabulary.index_of(np.asarray(item_ids[-k:], np.int64))
        categories[row, :k] = np.asarray(category_ids[-k:], np.int64)
        event_types[row, :k] = np.asarray(types[-k:], np.int64) + 1
        gaps[row, :k] = np.log1p(np.maximum(np.asarray(gap_seconds[-k:], np.float32), 0) / 60.0)
        lengths[row] = k
    dominant = as_int(frame["dominant_category_30d"])
    shares = np.zeros((n, 2, vocabulary.n_categories + 1), np.float32)
    for window, column in enumerate(("category_share_7d", "category_share_30d")):
        shares[:, window, 1:] = padded(frame[column], vocabulary.n_categories, np.float32)[0]
    lifetime = np.zeros((n, vocabulary.n_categories + 1), np.float32)
    if "category_events_lifetime" in frame:
        lifetime[:, 1:] = padded(frame["category_events_lifetime"], vocabulary.n_categories, np.float32)[0]
    lifetime_events = lifetime.sum(axis=1)
    lifetime /= np.maximum(lifetime_events, 1.0)[:, None]
    batch = SequenceBatch(
        items=torch.from_numpy(items),
        categories=torch.from_numpy(categories),
        event_types=torch.from_numpy(event_types),
        log_gaps=torch.from_numpy(gaps),
        lengths=torch.from_numpy(lengths),
        dominant_category=torch.from_numpy(dominant),
        category_shares=torch.from_numpy(shares),
        lifetime_shares=torch.from_numpy(lifetime),
        lifetime_events=torch.from_numpy(lifetime_events),
    )
    if labels is not None:
        target_category = labels.label_category_id.to_numpy(np.int64)
        shifted = np.where(dominant == 0, np.nan, (target_category != dominant).astype(np.float32))
        batch.target_item = torch.from_numpy(vocabulary.index_of(labels.label_item_id.to_numpy(np.int64)))
        batch.target_category = torch.from_numpy(target_category)
        batch.shifted = torch.from_numpy(shifted.astype(np.float32))
    return batch


def session_mixes(batch: SequenceBatch, session_gap_seconds: float) -> torch.Tensor:
    """(batch, len(SESSION_PROFILES), n_categories + 1) float32 category mix of the newest
    sessions of each sequence; a session starts after a gap above ``session_gap_seconds``
    (as the pipeline's sessions do) and at the sequence's first event."""
    n, length = batch.categories.shape
    positions = torch.arange(length, device=batch.categories.device)
    real = positions[None, :] < batch.lengths[:, None]
    starts = (batch.log_gaps > float(np.log1p(session_gap_seconds / 60.0))) | (positions[None, :] == 0)
    session = torch.cumsum(starts & real, dim=1) - 1                     # (n, length) 0 = oldest; position 0 starts one
    newest = session.gather(1, (batch.lengths - 1).unsqueeze(1))         # (n, 1)
    age = newest - session                                               # 0 = newest session
    weight = real.float()
    events = torch.zeros(n, length, device=weight.device).scatter_add_(1, session, weight)
    weight = weight / events.gather(1, session).clamp(min=1.0)           # each session sums to 1
    mixes = []
    for k in SESSION_PROFILES:
        kept = weight * (age < k) / torch.clamp(newest + 1, max=k).float()
        mixes.append(torch.zeros(n, batch.category_shares.shape[-1], device=weight.device)
                     .scatter_add_(1, batch.categories, kept))
    return torch.stack(mixes, dim=1)
