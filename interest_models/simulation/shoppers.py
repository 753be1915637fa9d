"""Shoppers of the synthetic shop answering recommended lists, by their true preferences.

Each user's true category preference is the generator's (``SyntheticShop.category_preference``
at the simulation start; a population shift can be planted later). A shown item at position
j is examined with probability ``theta_j = j ** -position_exponent``, and an examined item
is clicked with probability ``base + scale * preference(user, item's category) * quality(item)``
(quality: a fixed draw per item in [0.5, 1]); a click leads to the cart and the cart to a
purchase with the generator's funnel probabilities. Examination, click and funnel draws are
independent per position, so a position's answer does not depend on the rest of the list
(what the off-policy estimators assume). Shoppers also browse on their own (``browse``):
views of items drawn by their true preference and the shop's popularity within a category,
answering no recommendation: the population's own behaviour, which a policy does not choose.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from materialize.ingest.sources.synthetic import FUNNEL_STEP_PROBABILITY, SyntheticShop


@dataclass
class Answers:
    """(n, k) bool arrays of one batch of lists."""

    clicked: np.ndarray
    carted: np.ndarray
    purchased: np.ndarray


class SimulatedShoppers:
    """Args:
        shop: the generator the database was loaded from.
        start: the simulation's start (preferences are taken at that time).
        category_of_item: item_id -> the item's category name (the database's catalogue).
        seed: seeds the item qualities and the population shift.
    """

    BASE = 0.02
    SCALE = 0.6

    def __init__(self, shop: SyntheticShop, start: pd.Timestamp, position_exponent: float = 0.8, seed: int = 0):
        self.shop = shop
        self.position_exponent = position_exponent
        n_users = shop.config.n_users
        users = np.arange(1, n_users + 1)
        self.preference = shop.category_preference(users, pd.Series([start] * n_users))  # (n_users, n_categories)
        items = shop.items()
        code = {name: c for c, name in enumerate(shop.categories)}
        self.item_category = np.concatenate([[0], items.category.map(code).to_numpy(np.int64)])  # by item id
        rng = np.random.default_rng(seed)
        self.quality = np.concatenate([[0.0], 0.5 + 0.5 * rng.random(len(items))])
        self.rng = rng

    def examination(self, positions: np.ndarray) -> np.ndarray:
        """P(examined) of 1-based positions."""
        return np.asarray(positions, np.float64) ** -self.position_exponent

    def attraction(self, user_id: int, item_ids: np.ndarray) -> np.ndarray:
        """P(click | examined) of the items for one user."""
        item_ids = np.asarray(item_ids, np.int64)
        return self.BASE + self.SCALE * self.preference[user_id - 1, self.item_category[item_ids]] * self.quality[item_ids]

    def answer(self, user_id: int, item_ids: np.ndarray, rng: np.random.Generator) -> Answers:
        """One user's answer to a list (top first)."""
        k = len(item_ids)
        examined = rng.random(k) < self.examination(np.arange(1, k + 1))
        clicked = examined & (rng.random(k) < self.attraction(user_id, item_ids))
        carted = clicked & (rng.random(k) < FUNNEL_STEP_PROBABILITY[1])
        purchased = carted & (rng.random(k) < FUNNEL_STEP_PROBABILITY[2])
        return Answers(clicked, carted, purchased)

    def browse(self, user_id: int, n_views: int, rng: np.random.Generator) -> tuple[np.ndarray, list[list[str]]]:
        """One user's own browsing: ``n_views`` item ids (categories by the user's true
        preference, items by popularity within the category) and each view's funnel
        (``["view"]``, ``["view", "click"]``, ... by the generator's step probabilities)."""
        preference = self.preference[user_id - 1]
        categories = rng.choice(len(preference), size=n_views, p=preference / preference.sum())
        item_ids = self.shop._sample_items(categories, rng.random(n_views)) + 1
        steps = rng.random((n_views, 3)) < np.asarray(FUNNEL_STEP_PROBABILITY)
        depth = np.cumprod(steps, axis=1).sum(axis=1)  # 0: view only, 3: up to the purchase
        stages = ["view", "click", "cart", "purchase"]
        return item_ids.astype(np.int64), [stages[: d + 1] for d in depth]

    def shift_population(self, fraction: float) -> np.ndarray:
        """Plant a population shift: ``fraction`` of the users swap the weight of their
        dominant category with that of another category, the same one for all of them (a
        category that becomes fashionable). Returns the shifted user ids."""
        n_users, n_categories = self.preference.shape
        shifted = np.flatnonzero(self.rng.random(n_users) < fraction)
        popular = np.bincount(self.preference.argmax(axis=1), minlength=n_categories)
        target = int(np.argmin(popular))  # the least dominant category becomes the new favourite
        for user in shifted:
            dominant = int(self.preference[user].argmax())
            if dominant != target:
                self.preference[user, [dominant, target]] = self.preference[user, [target, dominant]]
        return shifted + 1
