"""Feature views over the sources in data_sources.py.

Daily views are stamped at the end of their UTC day and hold windows of 1, 7 and 30 days;
sequence rows are stamped with the newest event they contain.
"""
import os
from datetime import timedelta

from feast import FeatureView, Field
from feast.types import Array, Bool, Float32, Float64, Int32, Int64

from data_sources import (
    SPARK_PROFILE,
    category_daily_source,
    item_catalog_source,
    item_daily_source,
    item_embedding_source,
    user_daily_push,
    user_interest_embedding_push,
    user_sequence_push,
)
from entities import category, item, user

# Set by `interest env` after checking the server: "true" when pgvector is installed.
PGVECTOR = os.environ.get("INTEREST_PGVECTOR", "false").lower() == "true"
EMBEDDING_DIM = 384
DAILY_TTL = timedelta(days=60)
NO_TTL = timedelta(0)  # the latest value stays valid (static or slowly changing)

_counts = [
    Field(name=f"{kind}_count_{window}", dtype=Int32)
    for window in ("1d", "7d", "30d")
    for kind in ("view", "click", "cart", "purchase")
]

user_activity = FeatureView(
    name="user_activity",
    entities=[user],
    ttl=DAILY_TTL,
    schema=_counts
    + [
        Field(name="spend_7d", dtype=Float64),
        Field(name="spend_30d", dtype=Float64),
        Field(name="session_count_7d", dtype=Int32),
        Field(name="session_count_30d", dtype=Int32),
        Field(name="days_since_last_event", dtype=Float64),
    ],
    source=user_daily_push,
    description="Event counts by type, spend and sessions over 1/7/30-day windows",
)

user_interest_shift = FeatureView(
    name="user_interest_shift",
    entities=[user],
    ttl=DAILY_TTL,
    schema=[
        Field(name="category_share_7d", dtype=Array(Float32)),
        Field(name="category_share_30d", dtype=Array(Float32)),
        Field(name="dominant_category_7d", dtype=Int32),
        Field(name="dominant_category_30d", dtype=Int32),
        Field(name="category_entropy_30d", dtype=Float64),
        Field(name="category_divergence_7d_30d", dtype=Float64),
        Field(name="dominant_category_changed", dtype=Bool),
        Field(name="days_since_interest_shift", dtype=Float64),
        Field(name="category_events_lifetime", dtype=Array(Int32)),
    ],
    source=user_daily_push,
    description="Category distributions (7 and 30 days, and event counts over the whole history) and indicators "
                "of a short-term departure from long-term interests",
)

user_recent_sequence = FeatureView(
    name="user_recent_sequence",
    entities=[user],
    ttl=NO_TTL,
    schema=[
        Field(name="recent_item_ids", dtype=Array(Int64)),
        Field(name="recent_category_ids", dtype=Array(Int32)),
        Field(name="recent_event_types", dtype=Array(Int32)),
        Field(name="recent_gap_seconds", dtype=Array(Float32)),
        Field(name="sequence_length", dtype=Int32),
    ],
    source=user_sequence_push,
    description="The user's last events, oldest first, for the sequence model",
)

user_interest_embedding = FeatureView(
    name="user_interest_embedding",
    entities=[user],
    ttl=NO_TTL,
    schema=[Field(name="interest_embedding", dtype=Array(Float32))],
    source=user_interest_embedding_push,
    description="Mean text embedding of the user's recent items (384 floats, not normalised)",
)

item_popularity = FeatureView(
    name="item_popularity",
    entities=[item],
    ttl=DAILY_TTL,
    schema=[
        Field(name="item_view_count_1d", dtype=Int32),
        Field(name="item_view_count_7d", dtype=Int32),
        Field(name="item_view_count_30d", dtype=Int32),
        Field(name="item_purchase_count_7d", dtype=Int32),
        Field(name="item_purchase_count_30d", dtype=Int32),
        Field(name="item_event_count_7d", dtype=Int32),
        Field(name="item_unique_users_7d", dtype=Int32),
        Field(name="item_conversion_rate_7d", dtype=Float64),
        Field(name="item_conversion_rate_30d", dtype=Float64),
        Field(name="item_trend_1d_vs_7d", dtype=Float64),
    ],
    source=item_daily_source,
    description="Item popularity and conversion over 1/7/30-day windows",
)

item_catalog = FeatureView(
    name="item_catalog",
    entities=[item],
    ttl=NO_TTL,
    schema=[Field(name="item_category_id", dtype=Int32), Field(name="item_price", dtype=Float64)],
    source=item_catalog_source,
    description="Catalogue attributes",
)

item_text_embedding = FeatureView(
    name="item_text_embedding",
    entities=[item],
    ttl=NO_TTL,
    schema=[
        Field(
            name="embedding",
            dtype=Array(Float32),
            vector_index=PGVECTOR,
            vector_length=EMBEDDING_DIM,
            vector_search_metric="cosine",
        )
    ],
    source=item_embedding_source,
    description="all-MiniLM-L6-v2 embedding of title and description (384 floats, L2-normalised)",
)

category_trends = FeatureView(
    name="category_trends",
    entities=[category],
    ttl=DAILY_TTL,
    schema=[
        Field(name="category_event_count_7d", dtype=Int32),
        Field(name="category_event_count_30d", dtype=Int32),
        Field(name="category_purchase_count_7d", dtype=Int32),
        Field(name="category_event_share_7d", dtype=Float64),
        Field(name="category_trend_7d_vs_30d", dtype=Float64),
    ],
    source=category_daily_source,
    description="Category volume, share of all events and momentum",
)

# Feedback on logged recommendations (impressions joined to events by recommendation_id,
# interest_models/feedback): counts over 7 days, CTR, CVR and a position-corrected CTR
# (clicks per impression discounted by 1 / log2(position + 1)).
# Not in the spark profile (the log is in PostgreSQL).
if not SPARK_PROFILE:
    from data_sources import item_feedback_source, user_feedback_source

    user_feedback = FeatureView(
        name="user_feedback",
        entities=[user],
        ttl=timedelta(days=8),
        schema=[
            Field(name="impressions_7d", dtype=Int32),
            Field(name="clicks_7d", dtype=Int32),
            Field(name="purchases_7d", dtype=Int32),
            Field(name="ctr_7d", dtype=Float64),
            Field(name="cvr_7d", dtype=Float64),
            Field(name="debiased_ctr_7d", dtype=Float64),
            Field(name="category_clicks_7d", dtype=Array(Float32)),
            Field(name="category_exposure_7d", dtype=Array(Float32)),
        ],
        source=user_feedback_source,
        description="The user's answers to logged recommendations over 7 days, overall and per category",
    )

    item_feedback = FeatureView(
        name="item_feedback",
        entities=[item],
        ttl=timedelta(days=8),
        schema=[
            Field(name="item_impressions_7d", dtype=Int32),
            Field(name="item_clicks_7d", dtype=Int32),
            Field(name="item_purchases_7d", dtype=Int32),
            Field(name="item_ctr_7d", dtype=Float64),
            Field(name="item_cvr_7d", dtype=Float64),
            Field(name="item_exposure_7d", dtype=Float32),
            Field(name="item_debiased_ctr_7d", dtype=Float64),
        ],
        source=item_feedback_source,
        description="How shoppers answered the item in logged recommendations over 7 days",
    )
