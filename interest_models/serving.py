"""Online recommendations and interest predictions from the Feast online store.

``Recommender.from_registry`` loads the serving model version once (checksums and the
feature service verified) and scores users exactly as training did: the same sequence
encoding, candidate sources, ranking features, ranker and blend, with the features read
from the online store instead of point-in-time retrieval.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from interest_models.blend import Blend
from interest_models.candidates import CandidateIndex, generate
from interest_models.ranking_features import build_matrix
from interest_models.registry import ModelRegistry, RegisteredModel, RegistryError
from interest_models.sequence_model import encode_sequences
from interest_models.sequence_training import predict_all
from interest_models.training_frames import (
    USER_EMBEDDING_REF, ServiceFeatures, affinity, affinity_transformation, service_features,
)

SERVING_SERVICE = "user_item_serving"

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
    """Item and category features of every catalogue item, read from the online store in
    one call and re-read when older than ``max_age_s`` (they change when the store is
    materialized, not per request)."""

    def __init__(self, store, refs: list[str], item_ids: np.ndarray, item_category: np.ndarray, max_age_s: float):
        self.store, self.refs, self.max_age_s = store, refs, max_age_s
        self.rows = [{"item_id": int(i), "category_id": int(c)} for i, c in zip(item_ids[1:], item_category[1:])]
        self.lock = threading.Lock()
        self.frame: pd.DataFrame | None = None
        self.loaded_at = 0.0

    def get(self) -> pd.DataFrame:
        """One row per catalogue item, in vocabulary order (row i is item index i + 1)."""
        with self.lock:
            if self.frame is None or time.monotonic() - self.loaded_at > self.max_age_s:
                self.frame = pd.DataFrame(self.store.get_online_features(features=self.refs, entity_rows=self.rows).to_dict())
                self.loaded_at = time.monotonic()
            return self.frame


class Recommender:
    """Scores one user at a time from the online store with a registered model.

    Args:
        item_features_max_age_s: how long item/category features read from the online
            store are reused (0 reads them on every request).
    """

    def __init__(self, store, registered: RegisteredModel, category_names: dict[int, str], popularity: np.ndarray,
                 item_features_max_age_s: float = 60.0):
        self.store = store
        self.registered = registered
        self.model = registered.model.eval()
        self.vocabulary = registered.vocabulary
        self.ranker = registered.ranker
        self.blend: Blend = registered.blend
        self.config = registered.manifest["configs"]["training"]
        self.max_len = registered.manifest["configs"]["lstm"]["max_sequence_length"]
        self.features: ServiceFeatures = service_features(store, SERVING_SERVICE)
        self.affinity = affinity_transformation(store)
        self.category_names = category_names
        self.text_matrix = self.model.text_embeddings.numpy()
        self.index = CandidateIndex.build(self.vocabulary, popularity, self.text_matrix)
        self.device = torch.device("cpu")
        self.item_features = ItemFeatureCache(store, self.features.item + self.features.category, self.vocabulary.item_ids,
                                              self.vocabulary.item_category, item_features_max_age_s)

    @classmethod
    def from_registry(cls, registry_root: Path, store, category_names: dict[int, str], version: str | None = None,
                      item_features_max_age_s: float = 60.0) -> "Recommender":
        """Load ``version`` (default: the serving one), verified against ``store``."""
        registered = ModelRegistry(registry_root).load(version, store=store)
        vocabulary = registered.vocabulary
        rows = [{"item_id": int(i)} for i in vocabulary.item_ids[1:]]
        online = store.get_online_features(
            features=["item_popularity:item_view_count_30d", "item_catalog:item_category_id"], entity_rows=rows
        ).to_dict()
        served = np.array([-1 if c is None else c for c in online["item_category_id"]])
        mismatched = int(np.sum(served != vocabulary.item_category[1:]))
        if mismatched > 0.01 * vocabulary.n_items:
            raise RegistryError(
                f"model {registered.version} does not match this store's catalogue: {mismatched} of its "
                f"{vocabulary.n_items} items are missing or in another category (trained on another database?)"
            )
        popularity = np.zeros(vocabulary.n_items + 1)
        popularity[1:] = [v or 0 for v in online["item_view_count_30d"]]
        return cls(store, registered, category_names, popularity, item_features_max_age_s)

    def _user_frame(self, user_id: int) -> pd.DataFrame:
        refs = self.features.user + [USER_EMBEDDING_REF]
        frame = pd.DataFrame(self.store.get_online_features(features=refs, entity_rows=[{"user_id": int(user_id)}]).to_dict())
        return frame

    def _model_outputs(self, users: pd.DataFrame):
        batch = encode_sequences(users, self.vocabulary, self.max_len)
        scores, categories, shift, _, _ = predict_all(self.model, batch, self.device)
        return scores, categories, shift

    @staticmethod
    def _is_cold(users: pd.DataFrame) -> bool:
        items = users.recent_item_ids.iloc[0]
        return items is None or len(items) == 0

    def interests(self, user_id: int) -> InterestPrediction:
        users = self._user_frame(user_id)
        version = self.registered.version
        if self._is_cold(users):
            return InterestPrediction(int(user_id), {}, None, None, cold_start=True, model_version=version)
        _, categories, shift = self._model_outputs(users)
        order = np.argsort(-categories[0, 1:]) + 1
        mix = {self.category_names.get(int(c), str(c)): round(float(categories[0, c]), 4) for c in order}
        dominant = users.dominant_category_30d.iloc[0]
        return InterestPrediction(
            int(user_id), mix, float(shift[0]),
            self.category_names.get(int(dominant)) if pd.notna(dominant) else None, model_version=version,
        )

    def score_candidates(self, users: pd.DataFrame, candidate_items: np.ndarray, outputs=None) -> pd.DataFrame:
        """Ranker, LSTM and blended scores of candidate item indices for one user row.

        Returns:
            One row per candidate with item_id, the ranking features, lstm_item_score,
            ranker_score and blend_score (higher is better). ``outputs``: this user's
            ``_model_outputs`` when already computed.
        """
        scores, categories, shift = outputs if outputs is not None else self._model_outputs(users)
        frame = pd.DataFrame({
            "point": 0, "item_index": candidate_items,
            "item_id": self.vocabulary.item_ids[candidate_items],
            "category_id": self.vocabulary.item_category[candidate_items].astype("int32"),
        })
        online = self.item_features.get().iloc[candidate_items - 1]
        for column in online.columns:
            if column not in frame.columns:
                frame[column] = online[column].to_numpy()
        frame["interest_item_cosine"] = affinity(
            self.affinity, [users.interest_embedding.iloc[0]] * len(frame), list(self.text_matrix[candidate_items])
        )
        matrix = build_matrix(users, frame, scores, categories, shift)
        out = pd.concat([frame[["item_id", "item_index"]], matrix], axis=1)
        out["ranker_score"] = self.ranker.predict(matrix)
        out["blend_score"] = self.blend.combine(out.lstm_item_score.to_numpy(), out.ranker_score.to_numpy(), np.zeros(len(out), int))
        return out

    def _reasons(self, matrix: pd.DataFrame, top: int = 2) -> list[list[str]]:
        contributions = self.ranker.contributions(matrix)
        reasons = []
        for _, row in contributions.iterrows():
            words = []
            for feature in row.sort_values(ascending=False).index:
                if row[feature] <= 0 or len(words) >= top:
                    break
                text = REASONS.get(feature)
                if text and text not in words:
                    words.append(text)
            reasons.append(words or ["popular with shoppers like you"])
        return reasons

    def recommend(self, user_id: int, k: int = 10, candidates: list[int] | None = None, exclude_seen: bool = True) -> Recommendation:
        """The top ``k`` items for ``user_id`` with scores and reasons.

        Args:
            candidates: item ids to rank (default: the candidate sources used in training).
            exclude_seen: drop items in the user's recent sequence.
        """
        users = self._user_frame(user_id)
        version = self.registered.version
        if self._is_cold(users):
            popular = [i for i in self.index.popular if not candidates or self.vocabulary.item_ids[i] in set(candidates)][:k]
            return Recommendation(int(user_id), [RecommendedItem(int(self.vocabulary.item_ids[i]), 0.0, ["popular right now"]) for i in popular],
                                  cold_start=True, model_version=version)
        recent = self.vocabulary.index_of(np.asarray(users.recent_item_ids.iloc[0], np.int64))
        exclude = [recent[recent > 0]] if exclude_seen else None
        outputs = self._model_outputs(users)
        if candidates is not None:
            items = self.vocabulary.index_of(np.asarray(candidates, np.int64))
            items = np.unique(items[items > 0])
            if exclude is not None:
                items = items[~np.isin(items, exclude[0])]
        else:
            scores = outputs[0]
            sizes = {**self.config["candidates"], "lstm_top": self.config["eval_candidates"], "random": 0}
            last = recent[-1] if len(recent) else 0
            items = generate(self.index, scores, np.array([last]), self.vocabulary.item_category[[last]], sizes,
                             np.random.default_rng(0), exclude=exclude)[0]
        if len(items) == 0:
            return Recommendation(int(user_id), [], model_version=version)
        scored = self.score_candidates(users, items, outputs).sort_values("blend_score", ascending=False).head(k)
        reasons = self._reasons(scored.drop(columns=["item_id", "item_index", "ranker_score", "blend_score"]))
        return Recommendation(
            int(user_id),
            [RecommendedItem(int(i), round(float(s), 4), r) for i, s, r in zip(scored.item_id, scored.blend_score, reasons)],
            model_version=version,
        )
