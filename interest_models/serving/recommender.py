"""Online recommendations and interest predictions from the Feast online store.

``Recommender.from_registry`` loads the serving model version once (checksums and the
feature service verified) and scores users exactly as training did: the same sequence
encoding, candidate sources, ranking features, ranker and blend, with the features read
from the online store instead of point-in-time retrieval.
"""
from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from interest_models.models.blend import Blend
from interest_models.candidates.sources import CandidateIndex, generate
from interest_models.data.columns import as_float
from interest_models.config import load_config
from interest_models.candidates.neighbour_search import neighbour_search
from interest_models.data.ranking_features import (
    FEATURE_COLUMNS, ITEM_COLUMNS, CandidateRows, UserRows, feature_matrix, neighbour_scores,
)
from interest_models.registry.model_registry import ModelRegistry, RegisteredModel, RegistryError
from interest_models.data.sequences import encode_sequences
from interest_models.models.interest_shift_lstm import predict_all
from interest_models.feedback.impression_log import LoggedRecommendation, new_recommendation_id
from interest_models.policies.context import build_context, context_columns, user_state
from interest_models.policies.reranking import POLICY_NAMES, BanditPolicy, GreedyPolicy, PolicyRequest
from interest_models.registry.policy_registry import PolicyRegistry
from interest_models.data.feature_frames import (
    USER_EMBEDDING_REF, ServiceFeatures, affinity_transformation, check_user_affinity, service_features, user_affinity,
)

log = logging.getLogger(__name__)
SERVING_SERVICE = "user_item_serving"
USER_FEEDBACK_REFS = ["user_feedback:category_clicks_7d", "user_feedback:category_exposure_7d"]
ITEM_FEEDBACK_REFS = ["item_feedback:item_clicks_7d", "item_feedback:item_exposure_7d"]
ITEM_FEEDBACK_COLUMNS = ("item_clicks_7d", "item_exposure_7d")

REASONS = {
    "lstm_item_rank": "fits where your recent browsing is heading",
    "lstm_item_score": "fits where your recent browsing is heading",
    "lstm_category_probability": "from the category you are most likely to shop next",
    "interest_item_cosine": "similar to items you looked at recently",
    "user_category_share_7d": "from a category you browsed a lot this week",
    "user_category_share_30d": "from a category you like this month",
    "is_dominant_category_7d": "from your top category this week",
    "is_dominant_category_30d": "from your top category this month",
    "same_category_as_last": "same category as the last item you viewed",
    "times_in_recent": "you looked at it recently",
    "steps_since_in_recent": "you looked at it recently",
    "item_view_count_7d": "popular this week",
    "item_view_count_30d": "popular this month",
    "item_view_count_1d": "popular today",
    "item_unique_users_7d": "many shoppers viewed it this week",
    "item_purchase_count_30d": "often bought",
    "item_conversion_rate_30d": "often bought after being viewed",
    "item_trend_1d_vs_7d": "trending today",
    "category_trend_7d_vs_30d": "its category is trending",
    "category_event_share_7d": "its category is busy this week",
    "category_event_count_30d": "its category is busy this month",
    "item_share_of_category_30d": "a favourite in its category",
    "lstm_category_popularity": "a favourite in the category you are most likely to shop next",
    "item_price": "its price suits you",
}


@dataclass
class RecommendedItem:
    item_id: int
    score: float
    reasons: list[str]


@dataclass
class Recommendation:
    user_id: int
    items: list[RecommendedItem]
    cold_start: bool = False
    model_version: str = ""
    policy: str = "greedy"
    policy_version: str = "blend"
    recommendation_id: str | None = None
    logged: LoggedRecommendation | None = None  # what the impression log keeps of this answer


@dataclass
class InterestPrediction:
    user_id: int
    next_category: dict[str, float]   # category name -> probability, most likely first
    shift_probability: float | None   # P(next category differs from the 30-day dominant)
    dominant_category_30d: str | None
    cold_start: bool = False
    model_version: str = ""
    extra: dict = field(default_factory=dict)


class ItemFeatureCache:
    """Item and category features of every catalogue item, read from the online store
    (they change when the store is materialized, not per request).

    Values older than ``max_age_s`` are re-read in a background thread and swapped in
    when complete: ``get`` never waits for the database, so requests go on with the
    previous values while a refresh is in flight (one at a time). A failed refresh keeps
    the previous values for another ``max_age_s``. A refresh reads ``chunk_rows`` items at
    a time and pauses after each chunk as long as it took: read at once, 3,000 items held
    the interpreter lock for 0.2-0.4 s and allocated enough objects together to set off a
    full garbage collection (0.3-0.4 s with a model loaded), both stalling every request.
    """

    def __init__(self, store, refs: list[str], item_ids: np.ndarray, item_category: np.ndarray, max_age_s: float,
                 chunk_rows: int = 250, columns: tuple[str, ...] = ITEM_COLUMNS):
        self.store, self.refs, self.max_age_s, self.chunk_rows, self.columns = store, refs, max_age_s, chunk_rows, columns
        self.rows = [{"item_id": int(i), "category_id": int(c)} for i, c in zip(item_ids[1:], item_category[1:])]
        self.refreshing = threading.Lock()  # held by the refresh in flight
        self.values = self.read()
        self.loaded_at = time.monotonic()

    def read(self, paced: bool = False) -> np.ndarray:
        """(n_items + 1, len(columns)) float64 from the online store; row i is item
        index i, row 0 is NaN.

        Args:
            paced: pause after each chunk as long as it took (for the background refresh).
        """
        parts = [np.full((1, len(self.columns)), np.nan)]
        for start in range(0, len(self.rows), self.chunk_rows):
            began = time.perf_counter()
            rows = self.rows[start : start + self.chunk_rows]
            online = self.store.get_online_features(features=self.refs, entity_rows=rows).to_dict()
            parts.append(np.column_stack([as_float(online[c]) for c in self.columns]))
            if paced:
                time.sleep(time.perf_counter() - began)
        return np.vstack(parts)

    def get(self) -> np.ndarray:
        """The current values (see ``read``); starts a background refresh when they are
        older than ``max_age_s``."""
        if time.monotonic() - self.loaded_at > self.max_age_s and self.refreshing.acquire(blocking=False):
            threading.Thread(target=self._refresh, name="item-feature-refresh", daemon=True).start()
        return self.values

    def _refresh(self) -> None:
        try:
            self.values = self.read(paced=True)  # one assignment: a reader holds either the old array or the new one
        except Exception as error:  # noqa: BLE001 - the previous values keep serving; the next refresh retries
            log.warning("item features not refreshed, the previous values stay for %s s: %s", self.max_age_s, error)
        finally:
            self.loaded_at = time.monotonic()
            self.refreshing.release()


@dataclass
class ScoredCandidates:
    """Scores of one user's candidates (arrays aligned by row; higher scores are better)."""

    item_index: np.ndarray    # (n,) vocabulary indices
    item_id: np.ndarray       # (n,)
    features: np.ndarray      # (n, len(FEATURE_COLUMNS)) the ranker's input
    ranker_score: np.ndarray  # (n,)
    blend_score: np.ndarray   # (n,)


class Recommender:
    """Scores one user at a time from the online store with a registered model.

    Args:
        config: ``config/serving.yaml`` (candidate sources, neighbour search, how long
            item features are reused, exact or per-path reasons); see ``load_config``.
        policy_config: ``config/policy.yaml`` (the re-ranking policies).
        policy_root: the policy registry (its serving version is the bandit; without one the
            bandit starts from its prior, the blend's order).
    """

    def __init__(self, store, registered: RegisteredModel, category_names: dict[int, str], config: dict,
                 policy_config: dict | None = None, policy_root: Path | None = None):
        self.store = store
        self.registered = registered
        self.model = registered.model.eval()
        self.vocabulary = registered.vocabulary
        self.ranker = registered.ranker
        self.ranker.set_threads(1)  # ~100 rows per call: a thread team costs more than it saves
        self.blend: Blend = registered.blend
        self.config = config
        self.max_len = registered.manifest["configs"]["lstm"]["max_sequence_length"]
        self.features: ServiceFeatures = service_features(store, SERVING_SERVICE)
        self.user_refs = self.features.user + [USER_EMBEDDING_REF]
        self.category_names = category_names
        self.text_matrix = self.model.text_embeddings.numpy()
        with torch.inference_mode():
            self.item_representations = self.model.item_representations()
        self.neighbours = neighbour_search(config["neighbour_search"], store, self.vocabulary, self.text_matrix)
        self.device = torch.device("cpu")
        self.item_features = ItemFeatureCache(store, self.features.item + self.features.category, self.vocabulary.item_ids,
                                              self.vocabulary.item_category, config["item_features_max_age_s"])
        self._index_popularity = self.item_features.get()  # the item feature values the popular lists follow
        self.index = CandidateIndex.build(self.vocabulary, self._popularity(self._index_popularity), self.text_matrix)
        probe = self.text_matrix[1 : min(len(self.text_matrix), 17)]
        check_user_affinity(affinity_transformation(store), probe[0] if len(probe) else None, probe)
        self._init_policies(policy_config if policy_config is not None else load_config("policy"), policy_root)

    def _init_policies(self, policy_config: dict, policy_root: Path | None) -> None:
        """The greedy and bandit policies, and the feedback features the bandit reads."""
        self.policy_config = policy_config
        self.n_categories = int(self.vocabulary.item_category.max())
        self.context_columns = context_columns(self.n_categories)
        registry = PolicyRegistry(policy_root) if policy_root is not None else None
        if registry is not None and registry.serving_version() is not None:
            bandit = registry.load(context_columns=self.context_columns)
        else:
            bandit = BanditPolicy.untrained(self.context_columns, policy_config)
        self.policies = {"greedy": GreedyPolicy(), "bandit": bandit}
        self.rng = np.random.default_rng()
        norms = np.linalg.norm(self.text_matrix, axis=1, keepdims=True)
        self.unit_text = self.text_matrix / np.where(norms > 0, norms, 1.0)
        try:
            self.store.get_feature_view("user_feedback")
            self.store.get_feature_view("item_feedback")
            has_feedback = True
        except Exception:  # noqa: BLE001 - a repo applied before issue 13: the bandit sees no feedback
            log.warning("the feature store has no user_feedback / item_feedback views (run `interest apply`): "
                        "the bandit policy runs without logged feedback")
            has_feedback = False
        self.feedback_user_refs = USER_FEEDBACK_REFS if has_feedback else []
        self.item_feedback = ItemFeatureCache(
            self.store, ITEM_FEEDBACK_REFS, self.vocabulary.item_ids, self.vocabulary.item_category,
            self.config["item_features_max_age_s"], columns=ITEM_FEEDBACK_COLUMNS) if has_feedback else None

    @classmethod
    def from_registry(cls, registry_root: Path, store, category_names: dict[int, str], version: str | None = None,
                      config: dict | None = None, config_dir: Path | None = None) -> "Recommender":
        """Load ``version`` (default: the serving one), verified against ``store``.

        Args:
            config: overrides of ``config/serving.yaml`` keys.
            config_dir: a project's config folder (its ``serving.yaml`` is applied first).
        """
        registered = ModelRegistry(registry_root).load(version, store=store)
        vocabulary = registered.vocabulary
        rows = [{"item_id": int(i)} for i in vocabulary.item_ids[1:]]
        online = store.get_online_features(
            features=["item_catalog:item_category_id"], entity_rows=rows
        ).to_dict()
        served = np.array([-1 if c is None else c for c in online["item_category_id"]])
        mismatched = int(np.sum(served != vocabulary.item_category[1:]))
        if mismatched > 0.01 * vocabulary.n_items:
            raise RegistryError(
                f"model {registered.version} does not match this store's catalogue: {mismatched} of its "
                f"{vocabulary.n_items} items are missing or in another category (trained on another database?)"
            )
        return cls(store, registered, category_names, load_config("serving", config, config_dir),
                   load_config("policy", None, config_dir), Path(registry_root) / "policies")

    def online_user(self, user_id: int, feedback: bool = False) -> dict[str, list]:
        """The user's serving features and interest embedding from the online store (one
        entry per feature name, each a one-element list); with ``feedback``, also the
        ``user_feedback`` features the bandit reads (same read)."""
        refs = self.user_refs + self.feedback_user_refs if feedback else self.user_refs
        return self.store.get_online_features(features=refs, entity_rows=[{"user_id": int(user_id)}]).to_dict()

    async def online_user_async(self, user_id: int, feedback: bool = False) -> dict[str, list]:
        """``online_user`` through Feast's async online read (the event loop runs other
        requests while the database answers)."""
        refs = self.user_refs + self.feedback_user_refs if feedback else self.user_refs
        response = await self.store.get_online_features_async(features=refs, entity_rows=[{"user_id": int(user_id)}])
        return response.to_dict()

    def _model_outputs(self, user: dict[str, list], ranking: bool = True):
        """The LSTM's item scores, category probabilities and shift probability for one user.
        ``ranking``: the forecast the item ranking reads (the category booster's only where it
        drives the ranking); False: the model's category and shift forecast (``interests``)."""
        batch = encode_sequences(user, self.vocabulary, self.max_len)
        with torch.inference_mode():
            scores, categories, shift, _, _ = predict_all(self.model, batch, self.device, item_representations=self.item_representations,
                                                          boosted=self.model.ranks_with_booster if ranking else True)
        return scores, categories, shift

    @staticmethod
    def _is_cold(user: dict[str, list]) -> bool:
        items = user["recent_item_ids"][0]
        return items is None or len(items) == 0

    def interests(self, user_id: int) -> InterestPrediction:
        """The user's predicted next-category mix and interest-shift probability."""
        return self._interests(user_id, self.online_user(user_id))

    async def interests_async(self, user_id: int) -> InterestPrediction:
        return self._interests(user_id, await self.online_user_async(user_id))

    def _interests(self, user_id: int, user: dict[str, list]) -> InterestPrediction:
        version = self.registered.version
        if self._is_cold(user):
            return InterestPrediction(int(user_id), {}, None, None, cold_start=True, model_version=version)
        _, categories, shift = self._model_outputs(user, ranking=False)
        order = np.argsort(-categories[0, 1:]) + 1
        mix = {self.category_names.get(int(c), str(c)): round(float(categories[0, c]), 4) for c in order}
        dominant = user["dominant_category_30d"][0]
        return InterestPrediction(
            int(user_id), mix, float(shift[0]),
            self.category_names.get(int(dominant)) if dominant is not None else None, model_version=version,
        )

    def score_candidates(self, user: dict[str, list], candidate_items: np.ndarray, outputs=None) -> ScoredCandidates:
        """Ranker and blended scores of candidate item indices for one user.

        Args:
            user: ``online_user``'s answer; ``outputs``: its ``_model_outputs`` when
                already computed.
        """
        scores, categories, shift = outputs if outputs is not None else self._model_outputs(user)
        candidate_items = np.asarray(candidate_items, np.int64)
        candidates = CandidateRows(
            point=np.zeros(len(candidate_items), np.int64), item_index=candidate_items,
            item_id=self.vocabulary.item_ids[candidate_items], category_id=self.vocabulary.item_category[candidate_items].astype(np.int64),
            item_values=self.item_features.get()[candidate_items],
            interest_item_cosine=user_affinity(user["interest_embedding"][0], self.text_matrix[candidate_items]),
            neighbour_scores=neighbour_scores(
                self.registered.neighbours, [self.vocabulary.index_of(np.asarray(user["recent_item_ids"][0] or [], np.int64))],
                np.zeros(len(candidate_items), np.int64), candidate_items,
            ),
        )
        features = feature_matrix(UserRows.from_columns(user), candidates, scores, categories, shift)
        ranker_score = self.ranker.score(features)
        lstm_score = features[:, FEATURE_COLUMNS.index("lstm_item_score")]
        blend_score = self.blend.score(lstm_score, ranker_score, np.zeros(len(candidate_items), int))
        return ScoredCandidates(candidate_items, candidates.item_id, features, ranker_score, blend_score)

    def candidate_items(self, user: dict[str, list], outputs, candidates: list[int] | None = None,
                        exclude_seen: bool = True) -> np.ndarray:
        """Unique vocabulary indices to rank: the given item ids (unknown ones dropped), or
        by default the union of the sources in ``config["candidates"]``.

        Args:
            outputs: this user's ``_model_outputs`` (LSTM item scores, category
                probabilities, shift probability).
        """
        recent = self.vocabulary.index_of(np.asarray(user["recent_item_ids"][0] or [], np.int64))
        seen = np.unique(recent[recent > 0]) if exclude_seen else np.empty(0, np.int64)
        if candidates is not None:
            items = self.vocabulary.index_of(np.asarray(candidates, np.int64))
            items = np.unique(items[items > 0])
            return items[~np.isin(items, seen)]
        sizes, (lstm_scores, categories, _), index = self.config["candidates"], outputs, self.candidate_index()
        last = recent[-1] if len(recent) else 0
        parts = list(generate(index, lstm_scores, np.array([last]), self.vocabulary.item_category[[last]],
                              {**sizes, "random": 0}, np.random.default_rng(0), exclude=[seen],
                              category_probabilities=categories, predicted_categories=self.config["predicted_categories"],
                              interest_neighbours=[self.neighbours.nearest(user["interest_embedding"][0],
                                                                          sizes["interest_neighbours"], seen)]))
        parts.append(self._trending(sizes["trending"]))
        items = np.unique(np.concatenate(parts).astype(np.int64))
        return items[(items > 0) & ~np.isin(items, seen)]

    def candidate_index(self) -> CandidateIndex:
        """The candidate index; its popular lists follow the 30-day views of the item
        feature cache (re-read every ``item_features_max_age_s``)."""
        values = self.item_features.get()
        if values is not self._index_popularity:
            self.index, self._index_popularity = self.index.with_popularity(self.vocabulary, self._popularity(values)), values
        return self.index

    @staticmethod
    def _popularity(item_values: np.ndarray) -> np.ndarray:
        """(n_items + 1,) 30-day views from the item feature cache (0 where unknown)."""
        return np.nan_to_num(item_values[:, ITEM_COLUMNS.index("item_view_count_30d")])

    def _trending(self, k: int) -> np.ndarray:
        """The ``k`` items with the highest 1-day vs 7-day view trend among items with at
        least ``trending_min_views_7d`` views this week."""
        values = self.item_features.get()
        trend = values[:, ITEM_COLUMNS.index("item_trend_1d_vs_7d")]
        eligible = values[:, ITEM_COLUMNS.index("item_view_count_7d")] >= self.config["trending_min_views_7d"]
        trend = np.where(eligible & np.isfinite(trend), trend, -np.inf)
        k = min(k, int(np.isfinite(trend).sum()))
        return np.argpartition(-trend, k - 1)[:k] if k > 0 else np.empty(0, np.int64)

    def _reasons(self, features: np.ndarray, top: int = 2) -> list[list[str]]:
        """Up to ``top`` distinct phrases per row, from its largest positive contributions."""
        contributions = self.ranker.contributions(features, approximate=not self.config["exact_reasons"])
        reasons = []
        for row in contributions:
            words = []
            for column in np.argsort(-row, kind="stable"):
                if row[column] <= 0 or len(words) >= top:
                    break
                text = REASONS.get(FEATURE_COLUMNS[column])
                if text and text not in words:
                    words.append(text)
            reasons.append(words or ["popular with shoppers like you"])
        return reasons

    def recommend(self, user_id: int, k: int = 10, candidates: list[int] | None = None, exclude_seen: bool = True,
                  policy: str = "greedy") -> Recommendation:
        """The top ``k`` items for ``user_id`` with scores and reasons.

        Args:
            candidates: item ids to rank (default: the candidate sources used in training).
            exclude_seen: drop items in the user's recent sequence.
            policy: ``greedy`` (the blend's order) or ``bandit`` (the learned policy).
        """
        self._check_policy(policy)
        return self._recommend(user_id, self.online_user(user_id, feedback=True), k, candidates, exclude_seen, policy)

    async def recommend_async(self, user_id: int, k: int = 10, candidates: list[int] | None = None,
                              exclude_seen: bool = True, policy: str = "greedy") -> Recommendation:
        self._check_policy(policy)
        user = await self.online_user_async(user_id, feedback=True)  # both policies log the same context
        return self._recommend(user_id, user, k, candidates, exclude_seen, policy)

    @staticmethod
    def _check_policy(policy: str) -> None:
        if policy not in POLICY_NAMES:
            raise ValueError(f"unknown policy {policy!r} (known: {', '.join(POLICY_NAMES)})")

    def _recommend(self, user_id: int, user: dict[str, list], k: int, candidates: list[int] | None,
                   exclude_seen: bool, policy: str = "greedy") -> Recommendation:
        version = self.registered.version
        served_at = dt.datetime.now(dt.timezone.utc)
        if self._is_cold(user):
            allowed = None if candidates is None else set(candidates)
            popular = [i for i in self.candidate_index().popular if allowed is None or self.vocabulary.item_ids[i] in allowed][:k]
            answer = Recommendation(int(user_id), [RecommendedItem(int(self.vocabulary.item_ids[i]), 0.0, ["popular right now"]) for i in popular],
                                    cold_start=True, model_version=version, policy="popular", policy_version="popular",
                                    recommendation_id=new_recommendation_id())
            if popular:
                shown = np.arange(len(popular))
                answer.logged = LoggedRecommendation(
                    answer.recommendation_id, served_at, int(user_id), "popular", "popular", version, 0.0,
                    self.vocabulary.item_ids[popular], np.zeros(len(popular)), np.zeros((len(popular), 0), np.float32),
                    shown, np.zeros(len(popular)), np.ones(len(popular)), False, shown)
            return answer
        outputs = self._model_outputs(user)
        items = self.candidate_items(user, outputs, candidates, exclude_seen)
        chosen = self.policies[policy]
        if len(items) == 0:
            return Recommendation(int(user_id), [], model_version=version, policy=chosen.name, policy_version=chosen.version)
        scored = self.score_candidates(user, items, outputs)
        request, top = self.policy_request(user, outputs, scored, k)
        slate, scores = chosen.choose(request, k, self.rng)
        policy_scores = scores[slate.rows]
        rows = top[slate.rows]
        reasons = self._reasons(scored.features[rows])
        if slate.explored:
            reasons = [["something new for you"] + r[:1] for r in reasons]
        recommendation_id = new_recommendation_id()
        logged = LoggedRecommendation(
            recommendation_id, served_at, int(user_id), chosen.name, chosen.version, version, chosen.exploration,
            scored.item_id[top], scored.blend_score[top], request.context, slate.rows, policy_scores, slate.propensity,
            slate.explored, slate.order)
        return Recommendation(
            int(user_id),
            [RecommendedItem(int(scored.item_id[i]), round(float(s), 4), r) for i, s, r in zip(rows, policy_scores, reasons)],
            model_version=version, policy=chosen.name, policy_version=chosen.version, recommendation_id=recommendation_id,
            logged=logged,
        )

    def policy_request(self, user: dict[str, list], outputs, scored: ScoredCandidates, k: int = 0,
                       item_feedback: np.ndarray | None = None) -> tuple[PolicyRequest, np.ndarray]:
        """The policies' input for one user: the blend's top ``candidates`` (policy.yaml, at
        least ``k``) and their context. Returns it and the rows of ``scored`` it holds, in
        blend order.

        Args:
            user: ``online_user``'s answer (with the ``user_feedback`` features when read).
            item_feedback: (n_items + 1, 2) items' 7-day clicks and exposure by vocabulary
                index (default: the online store's, cached like the item features).
        """
        top = np.argsort(-scored.blend_score, kind="stable")[: max(self.policy_config["candidates"], k)]
        feedback = {name: user[name] for name in ("category_clicks_7d", "category_exposure_7d") if name in user}
        state = user_state(user, feedback or None, outputs[1][0], self.n_categories)
        if item_feedback is None:
            item_feedback = self.item_feedback.get() if self.item_feedback is not None else None
        index = scored.item_index[top]
        clicks, exposure = (item_feedback[index, 0], item_feedback[index, 1]) if item_feedback is not None else (np.zeros(len(top)),) * 2
        context = build_context(scored.blend_score[top], self.vocabulary.item_category[index], state, clicks, exposure,
                                self.n_categories)
        user_id = (user.get("user_id") or [None])[0]  # the entity key Feast returns with the features
        return PolicyRequest(context, scored.blend_score[top], self.unit_text[index], scored.item_id[top],
                             None if user_id is None else int(user_id)), top
