"""The feedback loop over simulated days: serve, log, learn, serve again.

Each simulated day, a sample of users is served one list each by the policy under test,
scored in process by the loaded models (``Recommender``: the blend's candidates and scores
of each user, computed once, then the policy's context with that day's feedback features).
Simulated shoppers answer (``SimulatedShoppers``) and also browse on their own
(``organic_views`` views each, answering no recommendation); the lists go to the impression
log and all events to ``interest.events`` (answers with their recommendation id), through the
loader, in one batch per day; the day's feedback features are written from the log; the
bandit learns from the day's log read back from Postgres (impressions joined to events). Each
policy runs on its own database, so one policy's feedback never feeds another.

Per day it records the realised impressions, clicks and purchases, the expected clicks of
the policy's lists (over its own randomness, from the true click probabilities), of its
deterministic lists (what it shows when not exploring), those of the oracle (the best k of
the same candidates by the true click probabilities, best first), the items shown
(coverage), the intra-list distance (mean pairwise 1 - cosine of the item text embeddings),
and the drift monitor's signal on the population's own views and the lists' CTR. At the end
of every day but the last, ``after_day(day, signal)`` runs (when set): it may replace
``recommender`` and ``prepared`` (features refreshed, a model retrained), which serve from the
next day on.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd
import psycopg

from interest_models.feedback.drift import DriftMonitor, DriftSignal
from interest_models.feedback.features import latest_feedback, refresh_feedback_features
from interest_models.feedback.impression_log import LoggedRecommendation, new_recommendation_id, read_feedback, write
from interest_models.policies.learning import learn_from_log
from interest_models.policies.reranking import BanditPolicy
from interest_models.policies.slate import marginal_probabilities
from interest_models.simulation.shoppers import SimulatedShoppers
from materialize.ingest import loader as ingest


@dataclass
class LoopConfig:
    """Attributes:
        days: simulated days.
        users_per_day: users served once each per day (drawn from the prepared users).
        k: list length.
        shift_day: the day a population shift is planted (None: no shift).
        shift_fraction: the share of users whose dominant category changes then.
        learn: whether a bandit learns from the log (False: it keeps its prior).
        organic_views: each served user's own views that day (their own random stream, the
            same in every arm).
        seed: seeds the users drawn (their own stream), the policy's exploration and the answers.
    """

    days: int = 30
    users_per_day: int = 300
    k: int = 10
    shift_day: int | None = None
    shift_fraction: float = 0.5
    learn: bool = True
    organic_views: int = 4
    seed: int = 0


def prepare_users(recommender, user_ids) -> dict:
    """Each warm user's online features, model outputs and scored candidates (what the
    service computes before a policy chooses); cold users are left out."""
    prepared = {}
    for user_id in user_ids:
        user = recommender.online_user(int(user_id))
        if recommender._is_cold(user):
            continue
        outputs = recommender._model_outputs(user)
        items = recommender.candidate_items(user, outputs)
        if len(items) == 0:
            continue
        prepared[int(user_id)] = (user, outputs, recommender.score_candidates(user, items, outputs))
    return prepared


def intra_list_distance(unit_embeddings: np.ndarray) -> float:
    """Mean pairwise 1 - cosine of (k, dim) L2-normalised rows."""
    k = len(unit_embeddings)
    if k < 2:
        return 0.0
    similarity = unit_embeddings @ unit_embeddings.T
    return float(1.0 - (similarity.sum() - np.trace(similarity)) / (k * (k - 1)))


class FeedbackLoop:
    """Args:
        conn: the policy's log database (schema and the shop's catalogue loaded).
        recommender: the loaded models (its store is the shop's database).
        shoppers: the simulated shoppers (one per run: a planted shift changes them).
        prepared: ``prepare_users``'s answer.
        start: the first simulated day's start (UTC midnight).
        load_kwargs: the loader's settings (``future_tolerance_s``, ``min_event_time``).
    """

    def __init__(self, conn: psycopg.Connection, recommender, shoppers: SimulatedShoppers, prepared: dict,
                 start: dt.datetime, load_kwargs: dict | None = None):
        self.conn, self.recommender, self.shoppers, self.prepared = conn, recommender, shoppers, prepared
        self.start, self.load_kwargs = start, load_kwargs or {}
        self.n_categories = recommender.n_categories
        self.shop_category = shoppers.item_category  # item id -> the shop's category code
        self.after_day: Callable[[int, DriftSignal], None] | None = None

    def run(self, policy, config: LoopConfig, label: str = "") -> pd.DataFrame:
        """Run ``config.days`` days of ``policy``; one row of figures per day. The users
        drawn each day depend on ``config.seed`` only, so runs of two policies with the
        same seed serve the same users on the same days."""
        users_rng = np.random.default_rng([config.seed, 0])
        rng = np.random.default_rng([config.seed, 1])
        organic_rng = np.random.default_rng([config.seed, 2])
        pool = np.array(sorted(self.prepared))
        monitor = DriftMonitor()
        shown_ever: set[int] = set()
        rows = []
        for day in range(config.days):
            day_start = self.start + dt.timedelta(days=day)
            if config.shift_day is not None and day == config.shift_day:
                self.shoppers.shift_population(config.shift_fraction)
            users, item_feedback = self._day_inputs(day_start, pool, config, users_rng)
            times = day_start + pd.to_timedelta(np.round(np.sort(rng.random(len(users))) * 82_800_000), unit="ms")
            records, events = [], []
            expected = exploiting = oracle = distance = 0.0
            views_by_category = np.zeros(len(self.shoppers.shop.categories))
            clicked_total = purchased_total = impressions = 0
            exploration = policy.exploration  # the day's, before it learns
            for user_id, served_at in zip(users, times):
                user, outputs, scored = self.prepared[int(user_id)]
                user = {**user, **users[int(user_id)]}
                request, top = self.recommender.policy_request(user, outputs, scored, config.k, item_feedback)
                slate, scores = policy.choose(request, config.k, rng)
                candidate_ids = scored.item_id[top]
                shown_ids = candidate_ids[slate.rows]
                k = len(shown_ids)
                theta = self.shoppers.examination(np.arange(1, k + 1))
                attraction = self.shoppers.attraction(int(user_id), candidate_ids)
                expected += float((attraction @ marginal_probabilities(slate.order, request.n, policy.exploration)) @ theta)
                exploiting += float(attraction[slate.order] @ theta)
                oracle += float(np.sort(attraction)[::-1][:k] @ theta)
                distance += intra_list_distance(request.embeddings[slate.rows])
                answers = self.shoppers.answer(int(user_id), shown_ids, rng)
                recommendation_id = new_recommendation_id()
                records.append(LoggedRecommendation(
                    recommendation_id, served_at.to_pydatetime(), int(user_id), policy.name, policy.version or "unsaved",
                    self.recommender.registered.version, policy.exploration, candidate_ids, scored.blend_score[top],
                    request.context, slate.rows, scores[slate.rows], slate.propensity, slate.explored,
                    slate.order))
                events.extend(_events(int(user_id), shown_ids, answers, served_at, recommendation_id))
                shown_ever.update(int(i) for i in shown_ids)
                impressions += k
                clicked_total += int(answers.clicked.sum())
                purchased_total += int(answers.purchased.sum())
                browsed, funnels = self.shoppers.browse(int(user_id), config.organic_views, organic_rng)
                events.extend(_organic_events(int(user_id), browsed, funnels,
                                              day_start + dt.timedelta(seconds=float(organic_rng.random()) * 82_800)))
                np.add.at(views_by_category, self.shop_category[browsed], 1)
            write(self.conn, records)
            if events:
                report = ingest.load_frames(self.conn, "events", [pd.DataFrame(events)], source=f"simulation {label} day {day}",
                                            **self.load_kwargs)
                if report.quarantined:
                    raise RuntimeError(f"simulated events quarantined: {report.examples[:3]}")
            refresh_feedback_features(self.conn, [day_start.date()])
            learned = 0
            if config.learn and isinstance(policy, BanditPolicy):
                recommendations, shown = read_feedback(self.conn, day_start, day_start + dt.timedelta(days=1))
                learned = learn_from_log(policy, recommendations, shown)
                policy.end_day()
            signal = monitor.observe(day, views_by_category, impressions, clicked_total)
            rows.append({
                "policy": label or policy.name, "day": day, "lists": len(records), "impressions": impressions,
                "clicks": clicked_total, "purchases": purchased_total, "expected_clicks": expected,
                "exploiting_clicks": exploiting, "oracle_clicks": oracle, "regret": oracle - expected,
                "coverage": len(shown_ever) / self.recommender.vocabulary.n_items,
                "intra_list_distance": distance / max(1, len(records)), "learned_impressions": learned,
                "exploration": exploration, "model_version": self.recommender.registered.version,
                "drift_divergence": signal.divergence, "drift_p_value": signal.p_value, "drifted": signal.drifted,
                "drift_reasons": ", ".join(signal.reasons),
            })
            if self.after_day is not None and day < config.days - 1:
                self.after_day(day, signal)
        return pd.DataFrame(rows)

    def _day_inputs(self, day_start: dt.datetime, pool: np.ndarray, config: LoopConfig, rng: np.random.Generator):
        """The day's users (user id -> their feedback features) and the items' feedback
        array (n_items + 1, 2), from the feedback tables as of the day's start."""
        users_fb, items_fb = latest_feedback(self.conn, day_start, self.n_categories)
        chosen = rng.choice(pool, size=min(config.users_per_day, len(pool)), replace=False)
        users = {}
        for user_id in chosen:
            clicks, exposure = users_fb.get(int(user_id), (np.zeros(self.n_categories), np.zeros(self.n_categories)))
            users[int(user_id)] = {"category_clicks_7d": [clicks], "category_exposure_7d": [exposure]}
        item_feedback = np.zeros((self.recommender.vocabulary.n_items + 1, 2))
        if items_fb:
            ids = np.fromiter(items_fb, np.int64)
            values = np.array([items_fb[i] for i in ids.tolist()])
            item_feedback[self.recommender.vocabulary.index_of(ids)] = values
        return users, item_feedback


def _organic_events(user_id: int, item_ids: np.ndarray, funnels: list[list[str]], at: dt.datetime) -> list[dict]:
    """A user's own browsing as events, a minute per viewed item, the funnel's steps seconds apart."""
    out = []
    for n, (item_id, stages) in enumerate(zip(item_ids.tolist(), funnels)):
        for step, stage in enumerate(stages):
            out.append({"user_id": user_id, "item_id": item_id, "event_type": stage,
                        "event_timestamp": pd.Timestamp(at) + pd.Timedelta(seconds=60 * n + 2 * step), "recommendation_id": None})
    return out


def _events(user_id: int, item_ids: np.ndarray, answers, served_at: pd.Timestamp, recommendation_id: str) -> list[dict]:
    """The events of one answered list: view and click of each clicked item, then cart and
    purchase, seconds apart, all carrying the recommendation id."""
    out = []
    for position in np.flatnonzero(answers.clicked):
        at = served_at + pd.Timedelta(seconds=10 * int(position) + 1)
        stages = ["view", "click"] + (["cart"] if answers.carted[position] else []) + (["purchase"] if answers.purchased[position] else [])
        for step, stage in enumerate(stages):
            out.append({"user_id": user_id, "item_id": int(item_ids[position]), "event_type": stage,
                        "event_timestamp": at + pd.Timedelta(seconds=step), "recommendation_id": recommendation_id})
    return out
