"""The spark profile trains models the unchanged registry and service take.

Both runs train on the same shop (tests/spark_shop.py) with the same settings and seed:
the postgres profile in one process, the spark profile with features computed by Spark
and retrieved through Feast's Spark offline store (staged Parquet, read back in batches),
the LSTM on two DDP processes launched by Spark's TorchDistributor and the rankers with
xgboost.spark (two workers). The spark run reads decision points, labels, seen items and
the baselines' histories from the Parquet events through Spark SQL (``SparkEvents``), and
its PostgreSQL database (catalogue, registry, online store) holds no events at all.

Tolerance: test NDCG@10 of the LSTM, the ranker and the blend within 0.03 absolute of the
postgres profile's (DDP splits each batch between processes with their own dropout draws,
and xgboost.spark builds histograms per worker: the models are not bit-identical).
"""
from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from interest_models.data.event_history import SparkEvents
from interest_models.registry.model_registry import ModelRegistry
from interest_models.serving.recommender import Recommender
from interest_models.training.distributed import Distributed
from interest_models.training.recipe import train_models

FAST = {
    "lstm": {"max_epochs": 4, "patience": 2, "hidden_dim": 64, "item_dim": 32, "head_epochs": 5},
    "ranker": {"n_estimators": 60, "early_stopping_rounds": 15},
    "training": {"max_points_per_split": {"train_sequence": 4000, "train_ranker": 400, "valid": 400, "test": 400}},
}
GAP = dt.timedelta(minutes=30)
TOLERANCE = 0.03
MODELS = ("LSTM", "XGBoost ranker", "blend (LSTM + XGBoost)")


@pytest.fixture(scope="module")
def trained(two_profiles, spark):
    two_profiles.postgres.apply()
    two_profiles.spark.apply()
    single = train_models(two_profiles.postgres.store, two_profiles.postgres.conn, GAP, overrides=FAST, device="cpu")
    conn = two_profiles.spark.conn
    assert conn.execute("SELECT count(*) FROM interest.events").fetchone()[0] == 0  # the events are Parquet only
    settings = two_profiles.spark.settings.spark
    distributed = train_models(two_profiles.spark.store, conn, GAP, overrides=FAST, device="cpu",
                               distributed=Distributed(spark, ranker_workers=2, lstm_processes=2, staging=settings.staging),
                               events=SparkEvents(spark, settings.warehouse, settings.staging))
    return single, distributed


def test_spark_profile_metrics_within_tolerance(trained):
    single, distributed = trained
    print("\nseconds", single.seconds, "\n", distributed.seconds)
    print("\n" + single.metrics.loc[list(MODELS), ["NDCG@10", "HR@10"]].to_string())
    print(distributed.metrics.loc[list(MODELS), ["NDCG@10", "HR@10"]].to_string())
    for model in MODELS:
        assert distributed.metrics.loc[model, "NDCG@10"] == pytest.approx(single.metrics.loc[model, "NDCG@10"], abs=TOLERANCE), model
    popular = distributed.metrics.loc["baseline: most_popular", "NDCG@10"]
    assert distributed.metrics.loc["blend (LSTM + XGBoost)", "NDCG@10"] > popular
    curve = distributed.model.learning_curve
    assert 1 <= curve.best_epoch <= len(curve.epoch) and len(curve.valid_ndcg_at_10) == len(curve.epoch)


def test_spark_trained_version_loads_and_serves(trained, two_profiles, tmp_path):
    _, distributed = trained
    store = two_profiles.spark.store
    two_profiles.spark.materialize(dt.datetime(2026, 10, 2, tzinfo=dt.timezone.utc))
    registry = ModelRegistry(tmp_path / "registry")
    version = registry.register(distributed)
    registry.set_serving(version)
    loaded = registry.load(store=store)
    sample = np.random.default_rng(0).normal(size=(7, len(loaded.manifest["ranking_feature_columns"])))
    np.testing.assert_allclose(loaded.ranker.score(sample), distributed.ranker.score(sample), rtol=1e-6)
    names = dict(two_profiles.spark.conn.execute("SELECT category_id, category FROM interest.categories"))
    recommender = Recommender.from_registry(tmp_path / "registry", store, names)
    user = int(two_profiles.postgres.conn.execute("SELECT user_id FROM interest.events LIMIT 1").fetchone()[0])
    answer = recommender.recommend(user, k=5)
    assert len(answer.items) == 5
