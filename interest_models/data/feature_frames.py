"""Features for decision points and candidates, only from Feast historical retrieval.

The training feature service is split by entity so that user features (with their long
sequence arrays) are fetched once per decision point and item/category features once per
candidate row, instead of repeating every user array on every candidate row. Both calls
go through ``FeatureStore.get_historical_features`` (the project's offline store plugin,
``materialize.feature_store.offline_store``, or Feast's Spark offline store in the spark
profile) with the entity timestamp ``as_of``; in the spark profile the entity rows go in
and the results come back through staged Parquet (``frame_staging.historical_frame``),
never held in the Spark driver.
The on-demand user-item affinity is computed with the on-demand view's own transformation
from its two point-in-time inputs.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from interest_models.data.frame_staging import historical_frame
from interest_models.data.vocabulary import Vocabulary

TRAINING_SERVICE = "user_item_training"
AFFINITY_VIEW = "user_item_affinity"
USER_EMBEDDING_REF = "user_interest_embedding:interest_embedding"
ITEM_EMBEDDING_REF = "item_text_embedding:embedding"


@dataclass(frozen=True)
class ServiceFeatures:
    """The feature references of a service, grouped by the entity they are keyed on."""

    service: str
    user: list[str]       # "view:feature" keyed on user_id
    item: list[str]       # keyed on item_id
    category: list[str]   # keyed on category_id
    on_demand: list[str]  # on-demand view outputs

    @property
    def all(self) -> list[str]:
        return self.user + self.item + self.category + self.on_demand


def service_features(store, service_name: str = TRAINING_SERVICE) -> ServiceFeatures:
    """Resolve a feature service into references grouped by join key."""
    service = store.get_feature_service(service_name)
    odfv_names = {v.name for v in store.list_on_demand_feature_views()}
    groups: dict[str, list[str]] = {"user_id": [], "item_id": [], "category_id": [], "on_demand": []}
    for projection in service.feature_view_projections:
        refs = [f"{projection.name}:{f.name}" for f in projection.features]
        if projection.name in odfv_names:
            groups["on_demand"] += refs
            continue
        view = store.get_feature_view(projection.name)
        groups[view.join_keys[0] if hasattr(view, "join_keys") else view.entity_columns[0].name] += refs
    return ServiceFeatures(service_name, groups["user_id"], groups["item_id"], groups["category_id"], groups["on_demand"])


def _historical(store, entity: pd.DataFrame, refs: list[str]) -> pd.DataFrame:
    return historical_frame(store, entity, refs)


def user_features(store, points: pd.DataFrame, features: ServiceFeatures) -> pd.DataFrame:
    """User features of each decision point (plus the affinity's user input).

    Args:
        points: columns user_id, as_of.

    Returns:
        One row per decision point, in the order of ``points`` (column ``point``).
    """
    entity = pd.DataFrame({"point": np.arange(len(points)), "user_id": points.user_id.to_numpy(), "event_timestamp": points.as_of.to_numpy()})
    frame = _historical(store, entity, features.user + [USER_EMBEDDING_REF])
    return frame.sort_values("point").reset_index(drop=True)


def candidate_features(store, candidates: pd.DataFrame, features: ServiceFeatures) -> pd.DataFrame:
    """Item and category features of candidate rows.

    Args:
        candidates: columns row (unique id), item_id, category_id, as_of.
    """
    entity = pd.DataFrame(
        {
            "row": candidates.row.to_numpy(),
            "item_id": candidates.item_id.to_numpy(),
            "category_id": candidates.category_id.to_numpy().astype("int32"),
            "event_timestamp": candidates.as_of.to_numpy(),
        }
    )
    frame = _historical(store, entity, features.item + features.category)
    return frame.sort_values("row").reset_index(drop=True)


def item_text_matrix(store, vocabulary: Vocabulary, as_of: pd.Timestamp) -> np.ndarray:
    """Text embeddings of every vocabulary item as known at ``as_of``.

    Returns:
        (n_items + 1, 384) float32; zero rows for padding and items without an embedding.
    """
    entity = pd.DataFrame({"item_id": vocabulary.item_ids[1:], "event_timestamp": as_of})
    frame = _historical(store, entity, [ITEM_EMBEDDING_REF])
    dim = next((len(v) for v in frame.embedding if v is not None and len(v)), 384)
    matrix = np.zeros((vocabulary.n_items + 1, dim), dtype=np.float32)
    rows = vocabulary.index_of(frame.item_id)
    for row, vector in zip(rows, frame.embedding):
        if vector is not None and len(vector):
            matrix[row] = vector
    return matrix


def affinity_transformation(store):
    """The on-demand affinity view's transformation, as registered (look it up once)."""
    return store.get_on_demand_feature_view(AFFINITY_VIEW).feature_transformation


def affinity(transformation, user_embeddings: list, item_embeddings: list) -> np.ndarray:
    """The on-demand view's cosine affinity, computed by the view's own transformation."""
    inputs = pd.DataFrame({"interest_embedding": user_embeddings, "embedding": item_embeddings})
    return transformation.transform(inputs)["interest_item_cosine"].to_numpy(dtype=np.float64)


def user_affinity(user_embedding, item_embeddings: np.ndarray) -> np.ndarray:
    """The same affinity for one user against many items, as one matrix product (serving).

    Args:
        user_embedding: (d,) or None; item_embeddings: (n, d), zero rows = no embedding.

    Returns:
        (n,) float64 cosine; NaN where either embedding is missing, empty or zero.
    """
    if user_embedding is None or len(user_embedding) == 0:
        return np.full(len(item_embeddings), np.nan)
    user = np.asarray(user_embedding, dtype=np.float64)
    items = np.asarray(item_embeddings, dtype=np.float64)
    norms = np.linalg.norm(user) * np.linalg.norm(items, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(norms > 0, (items @ user) / norms, np.nan)


def check_user_affinity(transformation, user_embedding, item_embeddings: np.ndarray, rtol: float = 1e-9) -> None:
    """Raise if ``user_affinity`` disagrees with the registered on-demand transformation
    (the view's definition changed since this code was written)."""
    registered = affinity(transformation, [user_embedding] * len(item_embeddings), list(item_embeddings))
    ours = user_affinity(user_embedding, item_embeddings)
    if not np.allclose(ours, registered, rtol=rtol, atol=1e-12, equal_nan=True):
        raise ValueError(f"the registered {AFFINITY_VIEW} transformation no longer computes the cosine that serving uses")
