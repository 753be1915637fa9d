"""Request-time features computed from other views.

The transformation is serialised into the registry, so it imports what it needs inside
its body and calls nothing else from this repo.
"""
import pandas as pd
from feast import Field
from feast.on_demand_feature_view import on_demand_feature_view
from feast.types import Float64

from feature_views import item_text_embedding, user_interest_embedding


@on_demand_feature_view(
    sources=[user_interest_embedding, item_text_embedding],
    schema=[Field(name="interest_item_cosine", dtype=Float64)],
    mode="pandas",
    description="Cosine similarity of the user's recent-interest embedding and the candidate item's embedding",
)
def user_item_affinity(inputs: pd.DataFrame) -> pd.DataFrame:
    import numpy as np

    cosine = np.full(len(inputs), np.nan)
    for row, (u, v) in enumerate(zip(inputs["interest_embedding"], inputs["embedding"])):
        if u is None or v is None or len(u) == 0 or len(v) == 0:
            continue
        u, v = np.asarray(u, dtype=np.float64), np.asarray(v, dtype=np.float64)
        norm = np.linalg.norm(u) * np.linalg.norm(v)
        if norm > 0:
            cosine[row] = float(u @ v / norm)
    return pd.DataFrame({"interest_item_cosine": cosine}, index=inputs.index)
