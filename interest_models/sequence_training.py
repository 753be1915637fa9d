"""Training and batched inference of ``InterestShiftLSTM`` (CPU or CUDA, same code).

Seeds are fixed, early stopping watches validation NDCG@10 of the full item ranking, and
the best epoch's state dict is kept. On CUDA the forward pass runs under autocast.
"""
from __future__ import annotations

import copy
import os
import random
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from interest_models.metrics import ndcg_at_k, target_ranks
from interest_models.sequence_model import InterestShiftLSTM, SequenceBatch


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (CPU and CUDA) and ask torch for deterministic kernels
    (where one has none it warns instead of failing)."""
    torch.use_deterministic_algorithms(True, warn_only=True)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


@dataclass
class LearningCurve:
    epoch: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    valid_loss: list[float] = field(default_factory=list)
    valid_ndcg_at_10: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    best_epoch: int = 0
    sequences_per_second: float = 0.0


def _autocast(device: torch.device, enabled: bool):
    if device.type == "cuda" and enabled:
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return torch.autocast("cpu", enabled=False)


def _batches(n: int, size: int, shuffle: bool, generator: torch.Generator | None):
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    for start in range(0, n, size):
        yield order[start : start + size]


@torch.no_grad()
def predict_all(model: InterestShiftLSTM, data: SequenceBatch, device: torch.device, batch_size: int = 512,
                loss_weights: dict[str, float] | None = None, item_representations: torch.Tensor | None = None):
    """Full-ranking scores, next-category and shift probabilities (and the loss, when
    ``loss_weights`` is given and ``data`` has targets), in one pass.
    ``item_representations``: the eval-mode model's, when the caller keeps them (serving).

    Returns:
        item_scores (n, n_items + 1) float32, category_probabilities (n, n_categories + 1)
        float32, shift_probability (n,) float32, interest (n, item_dim) float32, mean loss
        (float, NaN without ``loss_weights``).
    """
    model.eval()
    outputs = {"scores": [], "categories": [], "shift": [], "interest": []}
    items = model.item_representations() if item_representations is None else item_representations
    total_loss = 0.0
    for index in _batches(len(data), batch_size, False, None):
        batch = (data if len(index) == len(data) else data.select(index)).to(device)
        result = model(batch, items)
        scores = result.interest @ items.T
        scores[:, 0] = float("-inf")
        if loss_weights is not None:
            total_loss += model.loss(result, scores, batch, loss_weights)[0].item() * len(index)
        outputs["scores"].append(scores.float().cpu())
        outputs["categories"].append(torch.softmax(result.category_logits.float(), dim=-1).cpu())
        outputs["shift"].append(torch.sigmoid(result.shift_logit.float()).cpu())
        outputs["interest"].append(result.interest.float().cpu())
    arrays = tuple(torch.cat(v).numpy() for v in outputs.values())
    mean_loss = total_loss / max(len(data), 1) if loss_weights is not None else float("nan")
    return (*arrays, mean_loss)


def fit(model: InterestShiftLSTM, train: SequenceBatch, valid: SequenceBatch, config: dict, device: torch.device,
        seed: int, progress: bool = False) -> LearningCurve:
    """Train with Adam and early stopping on validation NDCG@10; restores the best epoch."""
    seed_everything(seed)
    generator = torch.Generator().manual_seed(seed)
    model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config["learning_rate"], weight_decay=config["weight_decay"])
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda" and config["mixed_precision"])
    curve, best_state, best_ndcg, waited = LearningCurve(), None, -1.0, 0
    trained_sequences, train_seconds = 0, 0.0
    for epoch in tqdm(range(1, config["max_epochs"] + 1), desc="LSTM epochs", disable=not progress):
        model.train()
        started = time.perf_counter()
        losses = []
        for index in _batches(len(train), config["batch_size"], True, generator):
            batch = train.select(index).to(device)
            optimizer.zero_grad(set_to_none=True)
            with _autocast(device, config["mixed_precision"]):
                loss, _ = model.calculate_loss(batch, config["loss_weights"])
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            scaler.step(optimizer)
            scaler.update()
            losses.append(loss.item())
        if device.type == "cuda":
            torch.cuda.synchronize()
        epoch_seconds = time.perf_counter() - started
        trained_sequences += len(train)
        train_seconds += epoch_seconds
        scores, _, _, _, valid_loss = predict_all(model, valid, device, loss_weights=config["loss_weights"])
        ndcg = ndcg_at_k(target_ranks(scores, valid.target_item.numpy()), 10)
        curve.epoch.append(epoch)
        curve.train_loss.append(float(np.mean(losses)))
        curve.valid_loss.append(valid_loss)
        curve.valid_ndcg_at_10.append(float(ndcg))
        curve.seconds.append(epoch_seconds)
        if ndcg > best_ndcg:
            best_ndcg, best_state, waited, curve.best_epoch = ndcg, copy.deepcopy(model.state_dict()), 0, epoch
        else:
            waited += 1
            if waited >= config["patience"]:
                break
    model.load_state_dict(best_state)
    curve.sequences_per_second = trained_sequences / max(train_seconds, 1e-9)
    return curve
