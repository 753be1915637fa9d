"""Online scoring from the Feast online store equals offline scoring of the same values."""
from __future__ import annotations

import hashlib
import json
import shutil
import threading
import time

import numpy as np
import pandas as pd
import psycopg
import pytest
from psycopg import sql

from interest_models.candidates.neighbour_search import InProcessSearch, PgvectorSearch
from interest_models.data.ranking_features import FEATURE_COLUMNS, ITEM_COLUMNS, build_matrix, neighbour_scores
from interest_models.registry.model_registry import ModelRegistry, RegistryError
from interest_models.data.sequences import encode_sequences
from interest_models.models.interest_shift_lstm import predict_all
from interest_models.serving.recommender import ItemFeatureCache, Recommender
from interest_models.training.recipe import train_models
from interest_models.data.feature_frames import (
    affinity, affinity_transformation, candidate_features, service_features, user_affinity, user_features,
)
from materialize.feature_store.online_store import view_table
from materialize.pipeline import Pipeline
from tests.conftest import new_database, settings_for
from tests.interest_models.training.test_recipe import FAST, GAP, SHOP


@pytest.fixture(scope="module")
def served(pg_server, settings, tmp_path_factory):
    with new_database(pg_server) as pg:
        with Pipeline(settings_for(settings, pg), progress=False) as pipeline:
            pipeline.run(lambda p: p.load_synthetic(SHOP))
            result = train_models(pipeline.store, pipeline.conn, GAP, overrides=FAST, device="cpu")
            registry = ModelRegistry(tmp_path_factory.mktemp("registry"))
            registry.set_serving(registry.register(result))
            names = dict(pipeline.conn.execute("SELECT category_id, category FROM interest.categories"))
            yield pipeline, Recommender.from_registry(registry.root, pipeline.store, names)


@pytest.fixture(params=[True, False], ids=["booster drives ranking", "heads drive ranking"])
def drives_ranking(request, served):
    """The served model's category booster set to drive the item ranking, or not (restored after)."""
    booster = served[1].model.category_booster
    assert booster is not None  # the default lstm.yaml trains one
    chosen = booster.drives_ranking
    booster.drives_ranking = request.param
    yield request.param
    booster.drives_ranking = chosen


def test_online_scores_equal_offline_scores(served, drives_ranking):
    pipeline, recommender = served
    user = int(pipeline.conn.execute("SELECT user_id FROM interest.events GROUP BY 1 ORDER BY count(*) DESC LIMIT 1").fetchone()[0])
    items = np.arange(1, 41)
    online = recommender.score_candidates(recommender.online_user(user), items)

    store, vocabulary = pipeline.store, recommender.vocabulary
    features = service_features(store, "user_item_training")
    now = pd.Timestamp.now(tz="UTC")
    users = user_features(store, pd.DataFrame({"user_id": [user], "as_of": [now]}), features)
    batch = encode_sequences(users, vocabulary, recommender.max_len)
    scores, categories, shift, _, _ = predict_all(recommender.model, batch, recommender.device, boosted=drives_ranking)
    forecast = predict_all(recommender.model, batch, recommender.device)  # interests: the booster's, either way
    interests = recommender.interests(user)
    assert interests.shift_probability == pytest.approx(float(forecast[2][0]), rel=1e-5)
    assert max(interests.next_category.values()) == pytest.approx(float(forecast[1][0].max()), abs=1e-4)
    candidates = pd.DataFrame({"row": np.arange(len(items)), "point": 0, "item_index": items,
                               "item_id": vocabulary.item_ids[items], "category_id": vocabulary.item_category[items], "as_of": now})
    retrieved = candidate_features(store, candidates, features)
    candidates = candidates.join(retrieved.set_index("row").drop(columns=["item_id", "category_id", "event_timestamp"]), on="row")
    candidates["interest_item_cosine"] = affinity(affinity_transformation(store), [users.interest_embedding.iloc[0]] * len(items),
                                                  list(recommender.text_matrix[items]))
    recent = [vocabulary.index_of(np.asarray(users.recent_item_ids.iloc[0], np.int64))]  # as the training recipe reads them
    candidates = candidates.assign(**neighbour_scores(recommender.registered.neighbours, recent, candidates.point.to_numpy(), items))
    assert (candidates.co_purchase_score > 1e-6).any() and (candidates.item_knn_score > 1e-6).any()  # beyond the tie-break
    matrix = build_matrix(users, candidates, scores, categories, shift)
    assert matrix.category_event_count_30d.notna().all() and (matrix.item_share_of_category_30d <= 1).all()
    ranker_scores = recommender.ranker.score(matrix)
    blended = recommender.blend.score(matrix.lstm_item_score.to_numpy(), ranker_scores, np.zeros(len(items), int))

    pd.testing.assert_frame_equal(pd.DataFrame(online.features, columns=FEATURE_COLUMNS), matrix.reset_index(drop=True), rtol=1e-6)
    np.testing.assert_allclose(online.ranker_score, ranker_scores, rtol=1e-6)
    np.testing.assert_allclose(online.blend_score, blended, rtol=1e-6, atol=1e-9)


def test_recommend_and_interests(served):
    pipeline, recommender = served
    user = int(pipeline.conn.execute("SELECT user_id FROM interest.events GROUP BY 1 ORDER BY count(*) DESC LIMIT 1").fetchone()[0])
    answer = recommender.recommend(user, k=5)
    assert len(answer.items) == 5 and not answer.cold_start
    assert all(item.reasons for item in answer.items)
    assert [i.score for i in answer.items] == sorted((i.score for i in answer.items), reverse=True)
    recent = set(recommender.online_user(user)["recent_item_ids"][0])
    assert not recent & {i.item_id for i in answer.items}  # exclude_seen
    chosen = recommender.recommend(user, k=3, candidates=[1, 2, 3, 4], exclude_seen=False)
    assert {i.item_id for i in chosen.items} <= {1, 2, 3, 4}
    interests = recommender.interests(user)
    assert abs(sum(interests.next_category.values()) - 1) < 1e-3 and 0 <= interests.shift_probability <= 1
    cold = recommender.recommend(987_654_321, k=4)
    assert cold.cold_start and len(cold.items) == 4
    assert recommender.interests(987_654_321).cold_start


def test_a_model_trained_on_another_catalogue_is_refused(served, tmp_path):
    pipeline, recommender = served
    source = recommender.registered.path
    copy = tmp_path / "registry" / source.name
    shutil.copytree(source, copy)
    vocabulary = json.loads((copy / "vocabulary.json").read_text())
    vocabulary["item_category"] = [c % 5 + 1 if c != 1 else 2 for c in vocabulary["item_category"]]  # another shop
    (copy / "vocabulary.json").write_text(json.dumps(vocabulary))
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["checksums"]["vocabulary.json"] = hashlib.sha256((copy / "vocabulary.json").read_bytes()).hexdigest()
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(RegistryError, match="does not match this store's catalogue"):
        Recommender.from_registry(tmp_path / "registry", pipeline.store, {}, version=source.name)


def test_reasons_explain_the_served_scores(served):
    """Per-feature contributions add up to the served ranker score (plus one constant), for
    the per-path attributions served by default and for exact TreeSHAP: both explain the
    trees ``predict`` uses, not the ones early stopping discarded."""
    pipeline, recommender = served
    user = int(pipeline.conn.execute("SELECT user_id FROM interest.events GROUP BY 1 ORDER BY count(*) DESC LIMIT 1").fetchone()[0])
    scored = recommender.score_candidates(recommender.online_user(user), np.arange(1, 61))
    for approximate in (True, False):
        contributions = recommender.ranker.contributions(scored.features, approximate=approximate)
        assert contributions.shape == (60, len(FEATURE_COLUMNS))
        bias = scored.ranker_score - contributions.sum(axis=1)
        assert np.ptp(bias) < 1e-4, approximate


def test_vectorised_affinity_equals_the_registered_on_demand_view(served):
    pipeline, recommender = served
    user = int(pipeline.conn.execute("SELECT user_id FROM interest.events GROUP BY 1 ORDER BY count(*) DESC LIMIT 1").fetchone()[0])
    embedding = recommender.online_user(user)["interest_embedding"][0]
    items = recommender.text_matrix[:50].copy()  # row 0 is padding: all zeros
    transformation = affinity_transformation(pipeline.store)
    for user_embedding in (embedding, None, []):
        expected = affinity(transformation, [user_embedding] * len(items), list(items))
        np.testing.assert_allclose(user_affinity(user_embedding, items), expected, rtol=1e-9, equal_nan=True)
    assert np.isnan(user_affinity(embedding, items)[0]) and not np.isnan(user_affinity(embedding, items)[1:]).any()


def test_retrieved_candidates_come_from_every_source(served):
    pipeline, recommender = served
    user_id = int(pipeline.conn.execute("SELECT user_id FROM interest.events GROUP BY 1 ORDER BY count(*) DESC LIMIT 1").fetchone()[0])
    user = recommender.online_user(user_id)
    outputs = recommender._model_outputs(user)
    items = recommender.candidate_items(user, outputs)
    seen = recommender.vocabulary.index_of(np.asarray(user["recent_item_ids"][0]))
    assert len(items) == len(np.unique(items)) and not np.isin(items, seen).any()
    neighbours = recommender.neighbours.nearest(user["interest_embedding"][0], 10, seen)
    likely = int(np.argmax(outputs[1][0, 1:]) + 1)
    popular_in_likely = recommender.index.popular_by_category[likely][:5]
    trending = recommender._trending(5)
    assert len(neighbours) == 10 and len(popular_in_likely) == 5 and len(trending) == 5
    for source in (neighbours, popular_in_likely, trending):  # every unseen item of each source is ranked
        assert np.isin(source[~np.isin(source, seen)], items).all()
    assert (recommender.vocabulary.item_category[popular_in_likely] == likely).all()
    values = recommender.item_features.get()
    assert (values[trending, ITEM_COLUMNS.index("item_view_count_7d")] >= recommender.config["trending_min_views_7d"]).all()
    given = recommender.candidate_items(user, outputs, candidates=[int(i) for i in recommender.vocabulary.item_ids[1:30]] + [99_999_999])
    assert set(given) <= set(range(1, 30)) - set(seen)


def test_pgvector_search_finds_the_in_process_neighbours(served):
    pipeline, recommender = served
    if not pipeline.store.config.online_store.vector_enabled:
        pytest.skip("this server has no pgvector")
    pgvector = Recommender.from_registry(recommender.registered.path.parent, pipeline.store, {}, config={"neighbour_search": "pgvector"})
    assert isinstance(pgvector.neighbours, PgvectorSearch) and isinstance(recommender.neighbours, InProcessSearch)
    user_id = int(pipeline.conn.execute("SELECT user_id FROM interest.events GROUP BY 1 ORDER BY count(*) DESC LIMIT 1").fetchone()[0])
    user = recommender.online_user(user_id)
    query, exclude = user["interest_embedding"][0], np.array([1, 2, 3])
    np.testing.assert_array_equal(pgvector.neighbours.nearest(query, 15, exclude), recommender.neighbours.nearest(query, 15, exclude))
    assert pgvector.recommend(user_id, k=5).items
    with pytest.raises(KeyError, match="unknown serving config key"):
        Recommender.from_registry(recommender.registered.path.parent, pipeline.store, {}, config={"neighbour_serach": "pgvector"})


def wait_until(condition, timeout_s: float = 30) -> bool:
    """Polls ``condition`` (a background refresh swaps values in when it completes)."""
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)
    return condition()


def test_popular_lists_follow_the_online_store(served):
    """A recommender re-reads item features after ``item_features_max_age_s`` and its popular
    lists (cold start, popular candidates) follow: here an item made most viewed online."""
    pipeline, recommender = served
    store = pipeline.store
    fresh = Recommender.from_registry(recommender.registered.path.parent, store, {}, config={"item_features_max_age_s": 0})
    least = int(fresh.candidate_index().popular[-1])
    item_id = int(fresh.vocabulary.item_ids[least])
    view = store.get_feature_view("item_popularity")
    names = [f.name for f in view.features]
    before = store.get_online_features(features=[f"item_popularity:{n}" for n in names], entity_rows=[{"item_id": item_id}]).to_dict()
    row = pd.DataFrame({**{n: before[n] for n in names}, "item_id": [item_id], "event_timestamp": [pd.Timestamp.now(tz="UTC")],
                        "created_timestamp": [pd.Timestamp.now(tz="UTC")]})
    try:
        store.write_to_online_store("item_popularity", row.assign(item_view_count_30d=10**6))
        assert wait_until(lambda: int(fresh.candidate_index().popular[0]) == least)
        assert fresh.recommend(987_654_321, k=1).items[0].item_id == item_id  # cold start: most popular
        category = int(fresh.vocabulary.item_category[least])
        assert int(fresh.candidate_index().popular_by_category[category][0]) == least
    finally:
        store.write_to_online_store("item_popularity", row.assign(event_timestamp=pd.Timestamp.now(tz="UTC"), created_timestamp=pd.Timestamp.now(tz="UTC")))
    assert wait_until(lambda: int(fresh.candidate_index().popular[0]) != least)


def test_item_features_read_in_chunks_equal_one_read(served):
    pipeline, recommender = served
    cache, vocabulary = recommender.item_features, recommender.vocabulary
    whole = ItemFeatureCache(pipeline.store, cache.refs, vocabulary.item_ids, vocabulary.item_category, 60, chunk_rows=10**6)
    chunked = ItemFeatureCache(pipeline.store, cache.refs, vocabulary.item_ids, vocabulary.item_category, 60, chunk_rows=7)
    assert whole.values.shape == (vocabulary.n_items + 1, len(ITEM_COLUMNS))
    np.testing.assert_array_equal(chunked.read(paced=True), whole.values)


def test_a_refresh_never_holds_up_requests(served):
    """While the item-feature refresh waits on the database (here on a lock another session
    holds on an online table), requests are answered at once from the previous values."""
    pipeline, recommender = served
    store = pipeline.store
    user = int(pipeline.conn.execute("SELECT user_id FROM interest.events GROUP BY 1 ORDER BY count(*) DESC LIMIT 1").fetchone()[0])
    pipeline.conn.commit()
    fresh = Recommender.from_registry(recommender.registered.path.parent, store, {}, config={"item_features_max_age_s": 0})
    expected = fresh.recommend(user, k=5)
    table = view_table(store.config, store.get_feature_view("item_popularity")).ident
    with psycopg.connect(pipeline.settings.postgres.conninfo()) as blocker:
        blocker.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(table))
        release = threading.Timer(10, blocker.rollback)  # without the fix the requests below wait for this
        release.start()
        try:
            started = time.monotonic()
            answers = [fresh.recommend(user, k=5) for _ in range(3)]
            elapsed = time.monotonic() - started
            assert fresh.item_features.refreshing.locked()  # a refresh is in flight, waiting on the lock
        finally:
            release.cancel()
            blocker.rollback()
    assert elapsed < 5, f"requests waited {elapsed:.1f} s for the refresh"
    assert all(a.items == expected.items for a in answers)
    assert wait_until(lambda: not fresh.item_features.refreshing.locked())
