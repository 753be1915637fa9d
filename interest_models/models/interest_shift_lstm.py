"""InterestShiftLSTM: where a user's interest is moving, from their recent sequence and profile.

The model contract (``interest_models.models.base``): ``fit`` trains with Adam and early
stopping on validation NDCG@10 of the full item ranking (seeded, deterministic kernels,
autocast on CUDA), ``score`` gives every item's score, ``save``/``load`` a state dict
(``weights_only``) and its constructor arguments as JSON. As in RecBole, ``calculate_loss``,
``full_sort_predict`` and ``predict`` are the training step and the two ways to score.
"""
from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from interest_models.data.sequences import (
    N_EVENT_TYPES,
    SESSION_PROFILES,
    SequenceBatch,
    session_mixes,
)
from interest_models.evaluation.metrics import ndcg_at_k, target_ranks
from interest_models.models.category_booster import MODEL_FILE as BOOSTER_FILE
from interest_models.models.category_booster import CategoryBooster
from interest_models.progress import end_bar
from materialize.devices import seed_everything

WEIGHTS_FILE = "lstm.pt"
ARGUMENTS_FILE = "lstm.json"


@dataclass
class LearningCurve:
    epoch: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    valid_loss: list[float] = field(default_factory=list)
    valid_ndcg_at_10: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    best_epoch: int = 0
    max_epochs: int = 0
    stopped_early: bool = False
    sequences_per_second: float = 0.0
    head_epochs: int = 0                  # epochs of the category/shift head refit (0 = none)
    head_valid_loss: list[float] = field(default_factory=list)  # its validation loss, before and after each epoch


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
def predict_all(model: "InterestShiftLSTM", data: SequenceBatch, device: torch.device, batch_size: int = 512,
                loss_weights: dict[str, float] | None = None, item_representations: torch.Tensor | None = None,
                boosted: bool = True):
    """Full-ranking scores, next-category and shift probabilities (and the loss, when
    ``loss_weights`` is given and ``data`` has targets), in one pass.
    ``item_representations``: the eval-mode model's, when the caller keeps them (serving).
    ``boosted``: the model's ``category_booster``, when it has one, gives the category and
    shift forecasts (and the category term of factorised item scores when it drives the
    ranking); False: the LSTM's own heads (the loss is always the heads'). What the item
    ranking reads: ``boosted=model.ranks_with_booster``.

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
        logits = model.item_logits(result, items)
        scores = model.item_scores(result, logits)
        if loss_weights is not None:
            total_loss += model.loss(result, logits, batch, loss_weights)[0].item() * len(index)
        outputs["scores"].append(scores.float().cpu())
        outputs["categories"].append(torch.softmax(result.category_logits.float(), dim=-1).cpu())
        outputs["shift"].append(torch.sigmoid(result.shift_logit.float()).cpu())
        outputs["interest"].append(result.interest.float().cpu())
    scores, categories, shift, interest = (torch.cat(v).numpy() for v in outputs.values())
    if boosted and model.category_booster is not None:
        scores, categories, shift = model.boosted_forecast(data.to(torch.device("cpu")), scores, categories, shift)
    mean_loss = total_loss / max(len(data), 1) if loss_weights is not None else float("nan")
    return scores, categories, shift, interest, mean_loss


@dataclass
class InterestOutputs:
    category_logits: torch.Tensor  # (batch, n_categories + 1); column 0 is padding
    shift_logit: torch.Tensor      # (batch,) logit of P(next category != 30-day dominant)
    interest: torch.Tensor         # (batch, item_dim) user interest vector in item space


PROFILE_SMOOTHING = 0.05
"""Added to every category share before its log (unseen categories keep some weight)."""
PROFILE_SCORER_DIM = 32
"""Hidden units of the per-category profile scorer (``session_profile``)."""
INPUTS = ("text", "event_types", "time_gaps", "category_profile", "session_profile")
"""What the model can read beside item ids and categories (``inputs`` turns each on)."""
ITEM_HEADS = ("softmax", "factorised")
"""How items are scored: ``softmax`` = the interest vector's dot product with every item
(one softmax over the catalogue); ``factorised`` = log P(next category) from the category
forecast + log P(item | its category) from a softmax over the category's items only."""


class InterestShiftLSTM(nn.Module):
    """LSTM over each recent event (item id, category, event type, time gap, projected text
    embedding), fused with the user's 7- and 30-day category shares (``category_profile``)
    before the heads: next item (an interest vector in item space), next category, shift.
    The next-category logits start from a prior over the category profiles: those shares and,
    with ``session_profile``, the mixes of the last sessions in the sequence, read by a
    scorer shared by all categories.

    Args:
        n_items, n_categories: vocabulary sizes (index 0 is padding in both).
        text_embeddings: (n_items + 1, text_dim) float32 item text embeddings as known
            at training time; kept as a buffer (saved in the state dict).
        inputs: the subset of ``INPUTS`` the model reads (the ablation switches them off).
        session_gap_seconds: the pipeline's session gap (``session_gap_minutes``), for
            ``session_profile``.
        item_dim, category_dim, event_type_dim, hidden_dim, dropout: see ``config/lstm.yaml``.
    """

    def __init__(self, n_items: int, n_categories: int, text_embeddings: torch.Tensor, item_dim: int = 64,
                 category_dim: int = 16, event_type_dim: int = 4, hidden_dim: int = 128, dropout: float = 0.2,
                 inputs: tuple[str, ...] = ("text", "event_types", "time_gaps"), session_gap_seconds: float = 1800.0,
                 item_head: str = "softmax", item_categories: torch.Tensor | None = None):
        """Args (beside the sizes): inputs, see ``INPUTS``; session_gap_seconds, where the
        session profile cuts sessions; item_head, see ``ITEM_HEADS``; item_categories
        (n_items + 1,) int64 category id per item index ([0] = 0), needed by the factorised
        head (a saved model brings its own)."""
        super().__init__()
        if item_head not in ITEM_HEADS:
            raise ValueError(f"unknown LSTM item_head {item_head!r}; known: {', '.join(ITEM_HEADS)}")
        unknown = set(inputs) - set(INPUTS)
        if unknown:
            raise ValueError(f"unknown LSTM inputs {sorted(unknown)}; known: {', '.join(INPUTS)}")
        if "session_profile" in inputs and "category_profile" not in inputs:
            raise ValueError("the LSTM input session_profile needs category_profile")
        self.n_items, self.n_categories, self.inputs = n_items, n_categories, tuple(i for i in INPUTS if i in inputs)
        self.session_gap_seconds = float(session_gap_seconds)
        self._arguments = {"n_items": n_items, "n_categories": n_categories, "text_dim": int(text_embeddings.shape[1]),
                           "item_dim": item_dim, "category_dim": category_dim, "event_type_dim": event_type_dim,
                           "hidden_dim": hidden_dim, "dropout": dropout, "inputs": list(self.inputs),
                           "session_gap_seconds": self.session_gap_seconds, "item_head": item_head}
        self.item_head = item_head
        self.learning_curve: LearningCurve | None = None
        self.category_booster: CategoryBooster | None = None  # set after training when configured
        self.register_buffer("text_embeddings", text_embeddings.float())
        if item_head == "factorised":  # saved in the state dict; zeros until a saved one is loaded
            categories = torch.zeros(n_items + 1, dtype=torch.long) if item_categories is None else torch.as_tensor(item_categories, dtype=torch.long)
            if categories.shape != (n_items + 1,) or int(categories.max()) > n_categories or int(categories.min()) < 0:
                raise ValueError(f"item_categories must be ({n_items + 1},) category ids in 0..{n_categories}")
            self.register_buffer("item_categories", categories)
            self.item_bias = nn.Parameter(torch.zeros(n_items + 1))  # learns each item's popularity
        self.item_embedding = nn.Embedding(n_items + 1, item_dim, padding_idx=0)
        self.text_projection = nn.Linear(text_embeddings.shape[1], item_dim, bias=False) if "text" in self.inputs else None
        self.category_embedding = nn.Embedding(n_categories + 1, category_dim, padding_idx=0)
        self.event_type_embedding = (nn.Embedding(N_EVENT_TYPES + 1, event_type_dim, padding_idx=0)
                                     if "event_types" in self.inputs else None)
        step_dim = item_dim + category_dim + (event_type_dim if self.event_type_embedding is not None else 0) + ("time_gaps" in self.inputs)
        self.n_profiles = 0 if "category_profile" not in self.inputs else (
            2 + (len(SESSION_PROFILES) if "session_profile" in self.inputs else 0))
        profile_dim = 2 * (n_categories + 1) if self.n_profiles else 0  # the 7- and 30-day shares join the state
        self.input_dropout = nn.Dropout(dropout)
        self.lstm = nn.LSTM(step_dim, hidden_dim, batch_first=True)
        self.state_dropout = nn.Dropout(dropout)
        self.category_head = nn.Linear(hidden_dim + profile_dim, n_categories + 1)
        # Next-category logits start from the smoothed profiles, log(share + PROFILE_SMOOTHING),
        # with learned weights: the sequence learns where interest departs from them.
        self.profile_weights = nn.Parameter(torch.full((self.n_profiles,), 1.0 / self.n_profiles)) if profile_dim else None
        # With the session profile, a scorer shared by all categories reads each category's
        # profile values (and whether it is the dominant and the last category) and corrects
        # the log-linear prior; it starts at zero, i.e. at the prior.
        self.profile_scorer = (nn.Sequential(nn.Linear(2 * self.n_profiles + 2, PROFILE_SCORER_DIM), nn.Tanh(),
                                             nn.Linear(PROFILE_SCORER_DIM, 1))
                               if "session_profile" in self.inputs else None)
        if self.profile_scorer is not None:
            nn.init.zeros_(self.profile_scorer[-1].weight)
            nn.init.zeros_(self.profile_scorer[-1].bias)
        self.shift_head = nn.Sequential(nn.Linear(hidden_dim + profile_dim + category_dim, hidden_dim // 2), nn.ReLU(),
                                        nn.Linear(hidden_dim // 2, 1))
        self.interest_head = nn.Linear(hidden_dim + profile_dim, item_dim)
        if profile_dim:
            nn.init.zeros_(self.shift_head[-1].weight)  # the shift forecast starts as the category forecast's
            nn.init.zeros_(self.shift_head[-1].bias)
        nn.init.normal_(self.item_embedding.weight, std=0.02)

    def item_representations(self) -> torch.Tensor:
        """(n_items + 1, item_dim) learned id embedding (+ projected text embedding)."""
        if self.text_projection is None:
            return self.item_embedding.weight
        return self.item_embedding.weight + self.text_projection(self.text_embeddings)

    def profiles(self, batch: SequenceBatch) -> torch.Tensor:
        """(batch, n_profiles, n_categories + 1) float32 category profiles the model reads."""
        if "session_profile" not in self.inputs:
            return batch.category_shares
        return torch.cat([batch.category_shares, session_mixes(batch, self.session_gap_seconds)], dim=1)

    def encode(self, batch: SequenceBatch, item_representations: torch.Tensor) -> torch.Tensor:
        """(batch, hidden_dim [+ 2 (n_categories + 1)]) the fused interest state: the LSTM's
        output at the newest event, with the 7- and 30-day shares when the model reads them
        (the session profile enters only the next-category prior, ``category_and_shift``)."""
        steps = [item_representations[batch.items], self.category_embedding(batch.categories)]
        if self.event_type_embedding is not None:
            steps.append(self.event_type_embedding(batch.event_types))
        if "time_gaps" in self.inputs:
            steps.append(batch.log_gaps.unsqueeze(-1))
        # Right-padded and causal: the output at the last real position ignores the padding
        # after it, exactly as a packed sequence would, but runs as one fused kernel.
        outputs, _ = self.lstm(self.input_dropout(torch.cat(steps, dim=-1)))
        last = outputs[torch.arange(len(batch.lengths), device=outputs.device), batch.lengths - 1]
        state = self.state_dropout(last)
        if "category_profile" in self.inputs:
            state = torch.cat([state, batch.category_shares.flatten(1).to(state.dtype)], dim=-1)
        return state

    def category_and_shift(self, state: torch.Tensor, batch: SequenceBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Next-category logits (batch, n_categories + 1) and shift logits (batch,) of ``encode``'s state."""
        category_logits = self.category_head(state)
        if self.profile_weights is not None:
            profiles = self.profiles(batch).to(state.dtype)
            prior = torch.log(profiles + PROFILE_SMOOTHING)
            category_logits = category_logits + torch.einsum("w,bwc->bc", self.profile_weights.to(state.dtype), prior)
            if self.profile_scorer is not None:
                n_columns = category_logits.shape[1]
                last = batch.categories.gather(1, (batch.lengths - 1).unsqueeze(1))
                per_category = torch.cat([profiles, prior, F.one_hot(batch.dominant_category, n_columns).unsqueeze(1).to(state.dtype),
                                          F.one_hot(last, n_columns).to(state.dtype)], dim=1)   # (batch, 2 P + 2, columns)
                category_logits = category_logits + self.profile_scorer(per_category.transpose(1, 2)).squeeze(-1)
        category_logits[:, 0] = float("-inf")
        shift_logit = self.shift_head(torch.cat([state, self.category_embedding(batch.dominant_category)], dim=-1)).squeeze(-1)
        if self.profile_weights is not None:
            # P(shift) = 1 - P(next category = dominant) by the category forecast, corrected by
            # the shift head; users without a dominant category (0) get the head alone.
            known = batch.dominant_category > 0
            log_p = torch.log_softmax(category_logits.float(), dim=-1)
            log_p_dominant = log_p.gather(1, batch.dominant_category.clamp(min=1).unsqueeze(1)).squeeze(1).clamp(max=-1e-6)
            from_categories = torch.log(-torch.expm1(log_p_dominant)) - log_p_dominant
            shift_logit = shift_logit + torch.where(known, from_categories, torch.zeros_like(from_categories)).to(shift_logit.dtype)
        return category_logits, shift_logit

    def forward(self, batch: SequenceBatch, item_representations: torch.Tensor | None = None) -> InterestOutputs:
        """Args: item_representations: ``self.item_representations()`` when the caller
        already has it (it is reused to score items)."""
        if item_representations is None:
            item_representations = self.item_representations()
        state = self.encode(batch, item_representations)
        return InterestOutputs(*self.category_and_shift(state, batch), self.interest_head(state))

    def item_logits(self, outputs: InterestOutputs, item_representations: torch.Tensor) -> torch.Tensor:
        """(batch, n_items + 1) float32 logits of the item loss; padding gets -inf. A softmax
        over them gives P(next item), or under the factorised head they already are
        log P(item | its category): the interest vector's dot product with each item plus
        the item's learned bias, normalised within the item's category."""
        logits = (outputs.interest @ item_representations.T).float()
        if self.item_head == "factorised":
            logits = self.within_category(logits + self.item_bias.float())
        logits[:, 0] = float("-inf")
        return logits

    def within_category(self, logits: torch.Tensor) -> torch.Tensor:
        """(batch, n_items + 1) ``logits`` minus the log-sum-exp over their item's category
        (one pass over the catalogue)."""
        category = self.item_categories.expand_as(logits)
        peak = torch.full((len(logits), self.n_categories + 1), float("-inf"), device=logits.device)
        peak = peak.scatter_reduce(1, category, logits, "amax")
        peak = torch.where(torch.isfinite(peak), peak, torch.zeros_like(peak))
        total = torch.zeros_like(peak).scatter_add(1, category, torch.exp(logits - peak.gather(1, category)))
        return logits - (peak + torch.log(total)).gather(1, category)

    def item_scores(self, outputs: InterestOutputs, logits: torch.Tensor) -> torch.Tensor:
        """(batch, n_items + 1) float32 scores of every item from ``item_logits``' output;
        padding gets -inf. The factorised head's are log P(next item) = log P(next
        category) + log P(item | its category)."""
        if self.item_head == "factorised":
            category = self.item_categories.expand_as(logits)
            logits = logits + torch.log_softmax(outputs.category_logits.float(), dim=-1).gather(1, category)
        return logits

    def boosted_forecast(self, batch: SequenceBatch, scores: np.ndarray, categories: np.ndarray,
                         shift: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``predict_all``'s item scores (n, n_items + 1), category probabilities (n,
        n_categories + 1) and shift probabilities (n,) with the category booster's forecast in
        place of the heads': factorised item scores swap log P(category) for the booster's
        (when ``ranks_with_booster``); the shift probability becomes 1 - P(30-day dominant)
        (the heads' where there is none)."""
        boosted = self.category_booster.score(batch)
        if self.ranks_with_booster:
            scores = self.with_category_term(scores, categories, boosted)
        dominant = batch.dominant_category.numpy()
        p_dominant = boosted[np.arange(len(boosted)), dominant]
        shift = np.where(dominant > 0, 1.0 - p_dominant, shift).astype(np.float32)
        return scores.astype(np.float32), boosted, shift

    def with_category_term(self, scores: np.ndarray, categories: np.ndarray, forecast: np.ndarray) -> np.ndarray:
        """Factorised item scores (n, n_items + 1), computed with the category probabilities
        ``categories`` (n, n_categories + 1), with log P(category) taken from ``forecast``
        instead; other item heads' scores unchanged."""
        if self.item_head != "factorised":
            return scores
        change = np.zeros_like(forecast)
        change[:, 1:] = np.log(np.maximum(forecast[:, 1:], 1e-12)) - np.log(np.maximum(categories[:, 1:], 1e-12))
        return scores + change[:, self.item_categories.cpu().numpy()]

    @property
    def ranks_with_booster(self) -> bool:
        """Whether the item ranking (item scores, predicted-category candidates, the ranker's
        LSTM columns) reads the category booster's forecast; False: the heads', and the booster
        forecasts categories and shifts only (chosen on validation by the training recipe)."""
        return self.category_booster is not None and self.category_booster.drives_ranking

    def full_sort_predict(self, batch: SequenceBatch) -> torch.Tensor:
        """(batch, n_items + 1) scores of every item; padding gets -inf."""
        items = self.item_representations()
        outputs = self(batch, items)
        return self.item_scores(outputs, self.item_logits(outputs, items))

    def predict(self, batch: SequenceBatch, candidates: torch.Tensor) -> torch.Tensor:
        """(batch, k) scores of candidate item indices (batch, k)."""
        return self.full_sort_predict(batch).gather(1, candidates)

    def calculate_loss(self, batch: SequenceBatch, weights: dict[str, float]) -> tuple[torch.Tensor, dict[str, float]]:
        """Weighted sum of next-item, next-category and shift losses. The item loss is a
        softmax over the catalogue, or under the factorised head over the target's category
        (the category term has its own loss)."""
        items = self.item_representations()
        outputs = self(batch, items)
        return self.loss(outputs, self.item_logits(outputs, items), batch, weights)

    @staticmethod
    def loss(outputs: InterestOutputs, item_logits: torch.Tensor | None, batch: SequenceBatch,
             weights: dict[str, float]) -> tuple[torch.Tensor, dict[str, float]]:
        """The training loss from already computed outputs and (batch, n_items + 1) item
        logits (None: no item term)."""
        item_loss = (F.cross_entropy(item_logits.float(), batch.target_item) if item_logits is not None
                     else torch.zeros((), device=outputs.category_logits.device))
        category_loss = F.cross_entropy(outputs.category_logits.float(), batch.target_category)
        known = ~torch.isnan(batch.shifted)
        shift_loss = (
            F.binary_cross_entropy_with_logits(outputs.shift_logit[known].float(), batch.shifted[known])
            if known.any() else torch.zeros((), device=item_loss.device)
        )
        loss = weights["item"] * item_loss + weights["category"] * category_loss + weights["shift"] * shift_loss
        return loss, {"item": item_loss.item(), "category": category_loss.item(), "shift": shift_loss.item()}

    def fit(self, train: SequenceBatch, valid: SequenceBatch, config: dict, device: torch.device, seed: int,
            progress: bool = False) -> "InterestShiftLSTM":
        """Train with Adam and early stopping on validation NDCG@10; restores the best epoch
        and keeps the per-epoch figures in ``learning_curve``. With ``progress`` a bar over
        epochs ends at "n/n" with the best epoch (and "early stop" when it stopped early).

        Args:
            train, valid: sequences with targets; config: ``config/lstm.yaml``.
        """
        seed_everything(seed)
        generator = torch.Generator().manual_seed(seed)
        self.to(device)
        optimizer = torch.optim.Adam(self.parameters(), lr=config["learning_rate"], weight_decay=config["weight_decay"])
        scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda" and config["mixed_precision"])
        curve, best_state, best_ndcg, waited = LearningCurve(max_epochs=config["max_epochs"]), None, -1.0, 0
        trained_sequences, train_seconds = 0, 0.0
        bar = tqdm(total=config["max_epochs"], desc="LSTM epochs", unit="epoch", disable=not progress)
        for epoch in range(1, config["max_epochs"] + 1):
            self.train()
            started = time.perf_counter()
            losses = []
            for index in _batches(len(train), config["batch_size"], True, generator):
                batch = train.select(index).to(device)
                optimizer.zero_grad(set_to_none=True)
                with _autocast(device, config["mixed_precision"]):
                    loss, _ = self.calculate_loss(batch, config["loss_weights"])
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(self.parameters(), 5.0)
                scaler.step(optimizer)
                scaler.update()
                losses.append(loss.item())
            if device.type == "cuda":
                torch.cuda.synchronize()
            epoch_seconds = time.perf_counter() - started
            trained_sequences += len(train)
            train_seconds += epoch_seconds
            scores, _, _, _, valid_loss = predict_all(self, valid, device, loss_weights=config["loss_weights"])
            ndcg = ndcg_at_k(target_ranks(scores, valid.target_item.numpy()), 10)
            curve.epoch.append(epoch)
            curve.train_loss.append(float(np.mean(losses)))
            curve.valid_loss.append(valid_loss)
            curve.valid_ndcg_at_10.append(float(ndcg))
            curve.seconds.append(epoch_seconds)
            if ndcg > best_ndcg:
                best_ndcg, best_state, waited, curve.best_epoch = ndcg, copy.deepcopy(self.state_dict()), 0, epoch
            else:
                waited += 1
            bar.set_postfix_str(f"valid NDCG@10 {ndcg:.4f}, best epoch {curve.best_epoch}", refresh=False)
            bar.update(1)
            if waited >= config["patience"]:
                break
        # Updated inside the loop, the bar counts the epoch it breaks in: it ends where the curve ends.
        curve.stopped_early = len(curve.epoch) < config["max_epochs"]
        end_bar(bar, len(curve.epoch), f"best epoch {curve.best_epoch}")
        self.load_state_dict(best_state)
        curve.sequences_per_second = trained_sequences / max(train_seconds, 1e-9)
        self.learning_curve = curve
        if config.get("head_epochs", 0) > 0:
            self.fit_heads(train, valid, config, device, generator)
        return self

    def _head_parameters(self) -> list[nn.Parameter]:
        heads = [*self.category_head.parameters(), *self.shift_head.parameters()]
        heads += [*self.profile_scorer.parameters()] if self.profile_scorer is not None else []
        return heads + ([self.profile_weights] if self.profile_weights is not None else [])

    @torch.no_grad()
    def _states(self, data: SequenceBatch, device: torch.device, batch_size: int = 1024) -> torch.Tensor:
        self.eval()
        items = self.item_representations()
        return torch.cat([self.encode(data.select(index).to(device), items).float()
                          for index in _batches(len(data), batch_size, False, None)])

    def fit_heads(self, train: SequenceBatch, valid: SequenceBatch, config: dict, device: torch.device,
                  generator: torch.Generator) -> None:
        """Refit the next-category and shift heads on the frozen interest states.

        Early stopping on item NDCG ends training after few epochs, before the small heads
        have converged; with the encoder frozen they train on precomputed states in
        seconds, early-stopped on the validation category + shift loss. Item scores change only
        under the factorised item head, whose category term is this forecast.
        """
        weights = {"item": 0.0, "category": config["loss_weights"]["category"], "shift": config["loss_weights"]["shift"]}
        train_states, valid_states = self._states(train, device), self._states(valid, device)
        train, valid = train.to(device), valid.to(device)
        parameters = self._head_parameters()
        optimizer = torch.optim.Adam(parameters, lr=config["learning_rate"], weight_decay=config["weight_decay"])

        def valid_loss() -> float:
            self.eval()
            with torch.no_grad():
                outputs = InterestOutputs(*self.category_and_shift(valid_states, valid), None)
                return self.loss(outputs, None, valid, weights)[0].item()

        curve = self.learning_curve
        best, best_state, waited = valid_loss(), copy.deepcopy(self.state_dict()), 0
        curve.head_valid_loss = [best]
        for _ in range(config["head_epochs"]):
            self.train()
            for index in _batches(len(train), config["batch_size"], True, generator):
                batch = train.select(index)
                optimizer.zero_grad(set_to_none=True)
                outputs = InterestOutputs(*self.category_and_shift(train_states[index.to(device)], batch), None)
                self.loss(outputs, None, batch, weights)[0].backward()
                optimizer.step()
            loss = valid_loss()
            curve.head_valid_loss.append(loss)
            if loss < best:
                best, best_state, waited = loss, copy.deepcopy(self.state_dict()), 0
            else:
                waited += 1
                if waited >= config["patience"]:
                    break
        curve.head_epochs = len(curve.head_valid_loss) - 1
        self.load_state_dict(best_state)
        self.eval()

    def score(self, batch: SequenceBatch, device: torch.device | None = None) -> np.ndarray:
        """(batch, n_items + 1) float32 scores of every item; padding gets -inf."""
        return predict_all(self, batch, device or torch.device("cpu"))[0]

    def save(self, directory: Path) -> None:
        """``lstm.pt`` (state dict, text embeddings included), ``lstm.json`` and, with a
        category booster, its ``category_booster.json``."""
        directory = Path(directory)
        torch.save(self.state_dict(), directory / WEIGHTS_FILE)
        (directory / ARGUMENTS_FILE).write_text(json.dumps(self._arguments))
        if self.category_booster is not None:
            self.category_booster.save(directory)

    @classmethod
    def load(cls, directory: Path) -> "InterestShiftLSTM":
        """The saved model in eval mode on the CPU (no pickle: ``weights_only=True``)."""
        directory = Path(directory)
        arguments = json.loads((directory / ARGUMENTS_FILE).read_text())
        text_dim = arguments.pop("text_dim")
        arguments["inputs"] = tuple(arguments.get("inputs", ("text", "event_types", "time_gaps")))  # versions before "inputs"
        model = cls(text_embeddings=torch.zeros(arguments["n_items"] + 1, text_dim), **arguments)
        model.load_state_dict(torch.load(directory / WEIGHTS_FILE, map_location="cpu", weights_only=True))
        if (directory / BOOSTER_FILE).exists():  # versions saved before the booster have none
            model.category_booster = CategoryBooster.load(directory)
        return model.eval()
