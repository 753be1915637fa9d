"""Online serving: ``Recommender`` (recommendations and interest predictions from the
Feast online store with a registered model) and the FastAPI app in ``http_app``.
"""
from interest_models.serving.recommender import Recommender

__all__ = ["Recommender"]
