"""InterestShiftLSTM: where a user's interest is moving, from their recent sequence.

Contract (as RecBole models): ``calculate_loss(batch)`` for training,
``full_sort_predict(batch)`` scores every item, ``predict(batch, candidates)`` scores given
items, ``forward(batch)`` returns all three outputs.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from interest_models.columns import Columns, as_int
from interest_models.examples import Vocabulary

N_EVENT_TYPES = 4


@dataclass
class SequenceBatch:
    """Right-padded recent sequences, oldest first; positions 0..length-1 are real events."""

    items: torch.Tensor          # (batch, max_len) int64 item indices, 0 = padding
    categories: torch.Tensor     # (batch, max_len) int64 category ids, 0 = padding
    event_types: torch.Tensor    # (batch, max_len) int64 event type + 1, 0 = padding
    log_gaps: torch.Tensor       # (batch, max_len) float32 log1p(gap seconds / 60)
    lengths: torch.Tensor        # (batch,) int64, >= 1
    dominant_category: torch.Tensor  # (batch,) int64 30-day dominant category, 0 = unknown
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
            recent_gap_seconds (arrays, oldest first, may be None) and dominant_category_30d.
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
    batch = SequenceBatch(
        items=torch.from_numpy(items),
        categories=torch.from_numpy(categories),
        event_types=torch.from_numpy(event_types),
        log_gaps=torch.from_numpy(gaps),
        lengths=torch.from_numpy(lengths),
        dominant_category=torch.from_numpy(dominant),
    )
    if labels is not None:
        target_category = labels.label_category_id.to_numpy(np.int64)
        shifted = np.where(dominant == 0, np.nan, (target_category != dominant).astype(np.float32))
        batch.target_item = torch.from_numpy(vocabulary.index_of(labels.label_item_id.to_numpy(np.int64)))
        batch.target_category = torch.from_numpy(target_category)
        batch.shifted = torch.from_numpy(shifted.astype(np.float32))
    return batch


@dataclass
class InterestOutputs:
    category_logits: torch.Tensor  # (batch, n_categories + 1); column 0 is padding
    shift_logit: torch.Tensor      # (batch,) logit of P(next category != 30-day dominant)
    interest: torch.Tensor         # (batch, item_dim) user interest vector in item space


class InterestShiftLSTM(nn.Module):
    """LSTM over (item, category, event type, time gap, projected text embedding).

    Args:
        n_items, n_categories: vocabulary sizes (index 0 is padding in both).
        text_embeddings: (n_items + 1, text_dim) float32 item text embeddings as known
            at training time; kept as a buffer (saved in the state dict).
        item_dim, category_dim, event_type_dim, hidden_dim, dropout: see ``config/lstm.yaml``.
    """

    def __init__(self, n_items: int, n_categories: int, text_embeddings: torch.Tensor, item_dim: int = 64,
                 category_dim: int = 16, event_type_dim: int = 4, hidden_dim: int = 128, dropout: float = 0.2):
        super().__init__()
        self.n_items, self.n_categories = n_items, n_categories
        self.register_buffer("text_embeddings", text_embeddings.float())
        self.item_embedding = nn.Embedding(n_items + 1, item_dim, padding_idx=0)
        self.text_projection = nn.Linear(text_embeddings.shape[1], item_dim, bias=False)
        self.category_embedding = nn.Embedding(n_categories + 1, category_dim, padding_idx=0)
        self.event_type_embedding = nn.Embedding(N_EVENT_TYPES + 1, event_type_dim, padding_idx=0)
        self.input_dropout = nn.Dropout(dropout)
        self.lstm = nn.LSTM(item_dim + category_dim + event_type_dim + 1, hidden_dim, batch_first=True)
        self.state_dropout = nn.Dropout(dropout)
        self.category_head = nn.Linear(hidden_dim, n_categories + 1)
        self.shift_head = nn.Sequential(nn.Linear(hidden_dim + category_dim, hidden_dim // 2), nn.ReLU(), nn.Linear(hidden_dim // 2, 1))
        self.interest_head = nn.Linear(hidden_dim, item_dim)
        nn.init.normal_(self.item_embedding.weight, std=0.02)

    def item_representations(self) -> torch.Tensor:
        """(n_items + 1, item_dim) learned id embedding + projected text embedding."""
        return self.item_embedding.weight + self.text_projection(self.text_embeddings)

    def forward(self, batch: SequenceBatch, item_representations: torch.Tensor | None = None) -> InterestOutputs:
        """Args: item_representations: ``self.item_representations()`` when the caller
        already has it (it is reused to score items)."""
        if item_representations is None:
            item_representations = self.item_representations()
        items = item_representations[batch.items]
        steps = torch.cat(
            [items, self.category_embedding(batch.categories), self.event_type_embedding(batch.event_types), batch.log_gaps.unsqueeze(-1)],
            dim=-1,
        )
        # Right-padded and causal: the output at the last real position ignores the padding
        # after it, exactly as a packed sequence would, but runs as one fused kernel.
        outputs, _ = self.lstm(self.input_dropout(steps))
        last = outputs[torch.arange(len(batch.lengths), device=outputs.device), batch.lengths - 1]
        state = self.state_dropout(last)
        shift_input = torch.cat([state, self.category_embedding(batch.dominant_category)], dim=-1)
        category_logits = self.category_head(state)
        category_logits[:, 0] = float("-inf")
        return InterestOutputs(category_logits, self.shift_head(shift_input).squeeze(-1), self.interest_head(state))

    def full_sort_predict(self, batch: SequenceBatch) -> torch.Tensor:
        """(batch, n_items + 1) scores of every item; padding gets -inf."""
        items = self.item_representations()
        scores = self(batch, items).interest @ items.T
        scores[:, 0] = float("-inf")
        return scores

    def predict(self, batch: SequenceBatch, candidates: torch.Tensor) -> torch.Tensor:
        """(batch, k) scores of candidate item indices (batch, k)."""
        items = self.item_representations()
        return torch.einsum("bd,bkd->bk", self(batch, items).interest, items[candidates])

    def calculate_loss(self, batch: SequenceBatch, weights: dict[str, float]) -> tuple[torch.Tensor, dict[str, float]]:
        """Weighted sum of next-item (full softmax), next-category and shift losses."""
        items = self.item_representations()
        outputs = self(batch, items)
        item_logits = outputs.interest @ items.T
        item_logits[:, 0] = float("-inf")
        return self.loss(outputs, item_logits, batch, weights)

    @staticmethod
    def loss(outputs: InterestOutputs, item_logits: torch.Tensor, batch: SequenceBatch,
             weights: dict[str, float]) -> tuple[torch.Tensor, dict[str, float]]:
        """The training loss from already computed outputs and (batch, n_items + 1) item logits."""
        item_loss = F.cross_entropy(item_logits.float(), batch.target_item)
        category_loss = F.cross_entropy(outputs.category_logits.float(), batch.target_category)
        known = ~torch.isnan(batch.shifted)
        shift_loss = (
            F.binary_cross_entropy_with_logits(outputs.shift_logit[known].float(), batch.shifted[known])
            if known.any() else torch.zeros((), device=item_loss.device)
        )
        loss = weights["item"] * item_loss + weights["category"] * category_loss + weights["shift"] * shift_loss
        return loss, {"item": item_loss.item(), "category": category_loss.item(), "shift": shift_loss.item()}
