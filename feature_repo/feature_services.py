"""Feature services: the exact feature lists models train on and are served with.

Entity rows carry user_id, item_id (the candidate) and category_id (the candidate's
category), plus event_timestamp for training.
"""
from feast import FeatureService

from data_sources import SPARK_PROFILE
from feature_views import (
    category_trends,
    item_catalog,
    item_popularity,
    item_text_embedding,
    user_activity,
    user_interest_embedding,
    user_interest_shift,
    user_recent_sequence,
)
from on_demand_features import user_item_affinity

_ranking_features = [
    user_activity,
    user_interest_shift,
    user_recent_sequence,
    item_popularity,
    item_catalog,
    category_trends,
    user_item_affinity,
]

user_item_training = FeatureService(
    name="user_item_training",
    features=_ranking_features,
    description="Point-in-time training features for the interest-shift model and the ranker",
)

user_item_serving = FeatureService(
    name="user_item_serving",
    features=_ranking_features,
    description="The same features, read from the online store at request time",
)

user_profile_serving = FeatureService(
    name="user_profile_serving",
    features=[user_activity, user_interest_shift, user_recent_sequence, user_interest_embedding],
    description="Everything known about a user, for interest predictions",
)

item_embedding_serving = FeatureService(
    name="item_embedding_serving",
    features=[item_text_embedding, item_catalog],
    description="Item embeddings for candidate generation",
)

if not SPARK_PROFILE:  # the feedback views exist in the postgres profile only
    from feature_views import item_feedback, user_feedback

    feedback_serving = FeatureService(
        name="feedback_serving",
        features=[user_feedback, item_feedback],
        description="Feedback on logged recommendations, the bandit policy's context",
    )
