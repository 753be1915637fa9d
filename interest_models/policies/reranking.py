"""The two policies a request can ask for: ``greedy`` (the blend's order) and ``bandit``.

Both re-rank the same candidates (the blend's top ``candidates``) and both say, for any
request, the exact probability of each (candidate, position) (``marginals``), so logged
lists of either can be replayed for the other in off-policy evaluation. The bandit orders by
linear UCB times each item's and each user's learned effects
(``interest_models.policies.click_effects``), with a diversity penalty, and explores with uniformly random lists
(``interest_models.policies.slate``); exploration and the confidence bonus are bounded by
``policy.yaml``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from interest_models.policies.click_effects import ClickEffects
from interest_models.policies.linear_bandit import LinearUCB, position_bias
from interest_models.policies.slate import Slate, diversified_order, draw, marginal_probabilities

POLICY_NAMES = ("greedy", "bandit")


@dataclass
class PolicyRequest:
    """One request's candidates, in the blend's order.

    Attributes:
        context: (n, dim) float32, ``interest_models.policies.context.build_context``.
        blend_score: (n,) float.
        embeddings: (n, 384) L2-normalised item text embeddings (for the diversity term).
        item_ids: (n,) the candidates' item ids (for the bandit's item effects).
        user_id: the user asking (for the bandit's taste effects).
    """

    context: np.ndarray
    blend_score: np.ndarray
    embeddings: np.ndarray | None = None
    item_ids: np.ndarray | None = None
    user_id: int | None = None

    @property
    def n(self) -> int:
        return len(self.blend_score)


class GreedyPolicy:
    """The blend's top k, deterministic (every propensity is 1)."""

    name = "greedy"
    version = "blend"
    exploration = 0.0

    def scores(self, request: PolicyRequest) -> np.ndarray:
        return np.asarray(request.blend_score, np.float64)

    def order(self, request: PolicyRequest, k: int, scores: np.ndarray | None = None) -> np.ndarray:
        """The deterministic list (k candidate rows); ``scores``: ``self.scores(request)`` when known."""
        return diversified_order(self.scores(request) if scores is None else scores, k)

    def choose(self, request: PolicyRequest, k: int, rng: np.random.Generator) -> tuple[Slate, np.ndarray]:
        """The list shown, and the policy's scores of all candidates."""
        scores = self.scores(request)
        return draw(self.order(request, k, scores), request.n, self.exploration, rng), scores

    def marginals(self, request: PolicyRequest, k: int) -> np.ndarray:
        """(n, min(k, n)) P(candidate i at position j)."""
        return marginal_probabilities(self.order(request, k), request.n, self.exploration)


class BanditPolicy(GreedyPolicy):
    """Linear UCB over the context times the learned effects, diversified, with bounded random
    lists: a candidate's row enters the linear model as ``e_i * x_i``, with ``e_i`` its item's
    effect times the user's taste effect for its category, so its score is
    ``e_i * (x_i @ w + alpha * sqrt(x_i' A^-1 x_i))``.

    Args:
        bandit: the learned statistics of the shared weights.
        config: ``policy.yaml`` (``ucb_alpha``, ``exploration`` and its schedule,
            ``diversity``, ``daily_discount``, the item and taste effects' priors and
            discounts, ``position_bias`` and their bounds).
        version: the registry version (``""`` before the first save).
        effects: the learned item and taste effects (default: none learned yet).
    """

    name = "bandit"

    def __init__(self, bandit: LinearUCB, config: dict, version: str = "", effects: ClickEffects | None = None):
        check_bounds(config)
        self.bandit, self.config, self.version = bandit, config, version
        self.effects = effects if effects is not None else ClickEffects(config)
        self.alpha = float(config["ucb_alpha"])
        self.diversity = float(config["diversity"])

    @property
    def exploration(self) -> float:
        """The share of random lists now: ``exploration / sqrt(1 + days / exploration_decay_days)``
        after ``days`` days of learning, never below ``exploration_min`` (versions saved
        before the schedule existed keep their constant ``exploration``)."""
        start = float(self.config["exploration"])
        decay_days = float(self.config.get("exploration_decay_days", 0))
        if decay_days <= 0:
            return start
        return max(float(self.config.get("exploration_min", start)), start / np.sqrt(1.0 + self.bandit.days / decay_days))

    @classmethod
    def untrained(cls, columns: list[str], config: dict) -> "BanditPolicy":
        """A bandit that has seen no feedback: its weights are ``prior_weights`` (context
        column name -> weight) and it orders like the blend until feedback moves them.

        Args:
            columns: the context's column names (``context.context_columns``).
        """
        unknown = sorted(set(config["prior_weights"]) - set(columns))
        if unknown:
            raise ValueError(f"policy config: prior_weights names unknown context columns {unknown}")
        prior = np.array([float(config["prior_weights"].get(c, 0.0)) for c in columns])
        return cls(LinearUCB(len(columns), config["ridge"], prior), config)

    def scores(self, request: PolicyRequest) -> np.ndarray:
        users = None if request.user_id is None else np.full(request.n, request.user_id)
        effects = self.effects.of(request.context, request.item_ids, users, self.config.get("item_optimism", 0.0),
                                  self.config.get("taste_optimism", 0.0))
        return self.bandit.scores(request.context * effects[:, None], self.alpha)

    def order(self, request: PolicyRequest, k: int, scores: np.ndarray | None = None) -> np.ndarray:
        return diversified_order(self.scores(request) if scores is None else scores, k, request.embeddings, self.diversity)

    def learn(self, context: np.ndarray, positions: np.ndarray, clicks: np.ndarray, item_ids: np.ndarray | None = None,
              user_ids: np.ndarray | None = None) -> None:
        """Add logged impressions: (n, dim) context rows of the shown items, (n,) their
        1-based positions, (n,) clicks, (n,) their item ids and users (None: no item or
        taste effects learned). The weights learn with the effects before this update, the
        effects from the weights before it."""
        context = np.asarray(context, np.float64)
        theta = position_bias(positions, self.config["position_bias"])
        effects = self.effects.update(context, item_ids, user_ids, clicks,
                                      theta * np.clip(context @ self.bandit.weights, 1e-3, 1.0))
        self.bandit.update(context * effects[:, None], theta, clicks)

    def end_day(self) -> None:
        """Forget a share of the past (``daily_discount``, the effects' discounts); one more
        day learned."""
        self.bandit.discount(self.config["daily_discount"])
        self.effects.discount(self.config.get("item_effects_discount", 1.0), self.config.get("taste_effects_discount", 1.0))
        self.bandit.days += 1


def check_bounds(config: dict) -> None:
    """Refuse a configuration whose exploration or confidence bonus is outside its bounds."""
    for key, bound in (("exploration", "exploration_max"), ("ucb_alpha", "ucb_alpha_max")):
        if not 0 <= config[key] <= config[bound]:
            raise ValueError(f"policy config: {key} = {config[key]} is outside [0, {bound} = {config[bound]}]")
    for key in ("item_optimism", "taste_optimism"):
        value, bound = config.get(key, 0.0), config.get("optimism_max", 0.0)
        if not 0 <= value <= bound:
            raise ValueError(f"policy config: {key} = {value} is outside [0, optimism_max = {bound}]")
    if not 0 <= config.get("exploration_min", 0) <= config["exploration"]:
        raise ValueError(f"policy config: exploration_min = {config['exploration_min']} is outside [0, exploration = "
                         f"{config['exploration']}]")
    if config.get("exploration_decay_days", 0) < 0:
        raise ValueError(f"policy config: exploration_decay_days must be >= 0, got {config['exploration_decay_days']}")
    if not 0 <= config["exploration_max"] <= 1:
        raise ValueError(f"policy config: exploration_max must be in [0, 1], got {config['exploration_max']}")
    if config["diversity"] < 0:
        raise ValueError(f"policy config: diversity must be >= 0, got {config['diversity']}")
