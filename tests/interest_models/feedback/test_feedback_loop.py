"""The feedback loop through real Postgres, Feast, torch and XGBoost: logged answers of the
service, feedback features, a learning bandit, off-policy estimates and the simulator."""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
import shutil

import numpy as np
import pandas as pd
import psycopg
import pytest
import yaml
from click.testing import CliRunner
from fastapi.testclient import TestClient

from interest_models.cli import commands
from interest_models.config import load_config
from interest_models.data.decision_points import decision_points
from interest_models.evaluation.off_policy import position_bias_log_likelihood
from interest_models.evaluation.replay import off_policy_table, target_marginals
from interest_models.feedback.features import latest_feedback, refresh_feedback_features
from interest_models.feedback.impression_log import ImpressionLogger, prune, read_feedback, write
from interest_models.policies.learning import logged_requests, shown_rows
from interest_models.policies.reranking import BanditPolicy, GreedyPolicy
from interest_models.registry.model_registry import ModelRegistry
from interest_models.registry.policy_registry import PolicyRegistry
from interest_models.serving.http_app import create_app
from interest_models.serving.recommender import Recommender
from interest_models.simulation.feedback_loop import FeedbackLoop, LoopConfig, prepare_users
from interest_models.simulation.shoppers import SimulatedShoppers
from interest_models.training.recipe import train_models
from materialize.ingest.loader import load_frames
from materialize.ingest.sources.synthetic import SyntheticShop
from materialize.pipeline import Pipeline
from tests.conftest import new_database, settings_for
from tests.interest_models.training.test_recipe import FAST, GAP, SHOP

START = SHOP.end.to_pydatetime() + dt.timedelta(days=1)  # simulated days start after the shop's events


@pytest.fixture(scope="module")
def shop_models(pg_server, settings, tmp_path_factory):
    with new_database(pg_server) as pg:
        shop_settings = settings_for(settings, pg)
        with Pipeline(shop_settings, progress=False) as pipeline:
            pipeline.run(lambda p: p.load_synthetic(SHOP))
            result = train_models(pipeline.store, pipeline.conn, GAP, overrides=FAST, device="cpu")
            registry = ModelRegistry(tmp_path_factory.mktemp("registry"))
            registry.set_serving(registry.register(result))
            names = dict(pipeline.conn.execute("SELECT category_id, category FROM interest.categories"))
            recommender = Recommender.from_registry(registry.root, pipeline.store, names)
            yield shop_settings, pipeline, registry, recommender


@pytest.fixture()
def log_db(pg_server):
    """A log database with the shop's catalogue (what each simulated policy writes to)."""
    with new_database(pg_server) as pg:
        with psycopg.connect(pg.conninfo()) as conn:
            load_frames(conn, "items", [SyntheticShop(SHOP).items()], source="catalogue")
            yield conn


def _answer(conn, recommendation_id: str, user_id: int, item_id: int, types=("view", "click")):
    frame = pd.DataFrame([{"user_id": user_id, "item_id": item_id, "event_type": t, "recommendation_id": recommendation_id,
                           "event_timestamp": pd.Timestamp(START) + pd.Timedelta(minutes=5 + i)} for i, t in enumerate(types)])
    assert load_frames(conn, "events", [frame], source=f"answer {recommendation_id} {item_id}").loaded == len(types)


def test_logged_lists_join_their_events_and_feed_features_and_feast(shop_models, log_db):
    _, pipeline, _, recommender = shop_models
    users = pipeline.conn.execute("SELECT DISTINCT user_id FROM interest.events ORDER BY 1 LIMIT 6").fetchall()
    answers = [recommender.recommend(u, k=5, policy=p) for (u,), p in zip(users, ["greedy", "bandit"] * 3)]
    for answer in answers:
        answer.logged.served_at = START + dt.timedelta(minutes=1)  # the day after the shop's events
    assert all(a.logged is not None and len(a.items) == 5 for a in answers)
    assert {a.policy for a in answers} == {"greedy", "bandit"}
    assert write(log_db, [a.logged for a in answers]) == 30
    first, second = answers[0], answers[1]
    _answer(log_db, first.recommendation_id, first.user_id, first.items[1].item_id, ("view", "click", "cart", "purchase"))
    _answer(log_db, second.recommendation_id, second.user_id, second.items[0].item_id)
    recommendations, impressions = read_feedback(log_db, START, START + dt.timedelta(days=1))
    assert len(recommendations) == 6 and len(impressions) == 30
    clicked = impressions[impressions.clicked]
    assert sorted(zip(clicked.recommendation_id, clicked.position)) == sorted([(first.recommendation_id, 2), (second.recommendation_id, 1)])
    assert impressions.purchased.sum() == 1
    greedy_rows = impressions[impressions.recommendation_id == first.recommendation_id]
    assert (greedy_rows.propensity == 1.0).all()  # greedy is deterministic
    bandit_rows = impressions[impressions.recommendation_id == second.recommendation_id]
    exploration = load_config("policy")["exploration"]
    assert set(np.round(bandit_rows.propensity, 9)) <= {round(1 - exploration + exploration / 40, 9), round(exploration / 40, 9)}

    refresh_feedback_features(log_db, [START.date()])
    users_fb, items_fb = latest_feedback(log_db, START + dt.timedelta(days=1), recommender.n_categories)
    clicks, exposure = users_fb[first.user_id]
    category = int(recommender.vocabulary.item_category[recommender.vocabulary.index_of([first.items[1].item_id])][0])
    assert clicks.sum() == 1 and clicks[category - 1] == 1
    assert exposure.sum() == pytest.approx(sum(1 / np.log2(j + 1) for j in range(1, 6)), rel=1e-6)
    assert items_fb[first.items[1].item_id][0] == 1
    row = log_db.execute("SELECT ctr_7d, cvr_7d, debiased_ctr_7d FROM interest.user_feedback_daily WHERE user_id = %s",
                         (first.user_id,)).fetchone()
    assert row[0] == pytest.approx(1 / 5) and row[1] == pytest.approx(1.0) and row[2] == pytest.approx(1 / exposure.sum())

    # Seven days later the list has left the 7-day window: a row of zeros replaces its counts.
    refresh_feedback_features(log_db, [START.date() + dt.timedelta(days=7)])
    users_fb, _ = latest_feedback(log_db, START + dt.timedelta(days=8), recommender.n_categories)
    assert users_fb[first.user_id][0].sum() == 0

    # Partitions: one per day and table, pruned whole.
    parts = {r[0] for r in log_db.execute("SELECT relname FROM pg_class WHERE relkind = 'r' AND (relname LIKE 'impressions_2%' OR relname LIKE 'recommendations_2%')")}
    assert parts == {f"impressions_{START:%Y%m%d}", f"recommendations_{START:%Y%m%d}"}
    assert sorted(prune(log_db, keep_days=30, now=START + dt.timedelta(days=31))) == sorted(parts)
    assert log_db.execute("SELECT count(*) FROM interest.impressions").fetchone()[0] == 0


def test_feast_serves_the_feedback_views(shop_models):
    shop_settings, pipeline, _, recommender = shop_models
    user_id = int(pipeline.conn.execute("SELECT min(user_id) FROM interest.events").fetchone()[0])
    item_id = int(pipeline.conn.execute("SELECT min(item_id) FROM interest.items").fetchone()[0])
    stamp = dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=1)
    pipeline.conn.execute(
        "INSERT INTO interest.user_feedback_daily VALUES (%s, %s, now(), 10, 2, 1, 0.2, 0.5, 0.3, %s, %s)",
        (user_id, stamp, [0.0, 2.0] + [0.0] * 4, [1.0, 5.0] + [0.0] * 4))
    pipeline.conn.execute("INSERT INTO interest.item_feedback_daily VALUES (%s, %s, now(), 4, 1, 0, 0.25, 0, 2.5, 0.4)",
                          (item_id, stamp))
    pipeline.conn.commit()
    pipeline.materialize()
    online = pipeline.store.get_online_features(
        features=["user_feedback:clicks_7d", "user_feedback:category_clicks_7d", "user_feedback:debiased_ctr_7d"],
        entity_rows=[{"user_id": user_id}]).to_dict()
    assert online["clicks_7d"] == [2] and online["category_clicks_7d"][0][:2] == [0.0, 2.0]
    assert online["debiased_ctr_7d"][0] == pytest.approx(0.3)
    user = recommender.online_user(user_id, feedback=True)
    assert user["category_exposure_7d"][0][:2] == [1.0, 5.0]
    historical = pipeline.store.get_historical_features(
        entity_df=pd.DataFrame({"item_id": [item_id, item_id], "event_timestamp": [stamp - dt.timedelta(seconds=1), stamp]}),
        features=["item_feedback:item_clicks_7d"]).to_df().sort_values("event_timestamp")
    assert historical.item_clicks_7d.isna().tolist() == [True, False]  # point in time: not before its stamp


def test_the_service_logs_its_answers_and_refuses_unknown_policies(shop_models, tmp_path):
    shop_settings, pipeline, registry, _ = shop_models
    app = create_app(shop_settings, registry.root, "test-key")
    user_id = int(pipeline.conn.execute("SELECT min(user_id) FROM interest.events").fetchone()[0])
    with TestClient(app) as client:
        headers = {"X-API-Key": "test-key"}
        bad = client.post("/recommend", json={"user_id": user_id, "policy": "random"}, headers=headers)
        assert bad.status_code == 422 and "greedy" in bad.text
        answer = client.post("/recommend", json={"user_id": user_id, "k": 4, "policy": "bandit"}, headers=headers).json()
        assert answer["policy"] == "bandit" and len(answer["recommendation_id"]) == 32
        cold = client.post("/recommend", json={"user_id": 10**12, "k": 3}, headers=headers).json()
        assert cold["cold_start"] and cold["policy"] == "popular"
        deadline = dt.datetime.now() + dt.timedelta(seconds=10)
        while client.get("/metrics", headers=headers).json()["recommendations_logged"] < 2 and dt.datetime.now() < deadline:
            pass
        metrics = client.get("/metrics", headers=headers).json()
        assert metrics["recommendations_logged"] == 2 and metrics["log_failed_writes"] == 0
    rows = pipeline.conn.execute(
        "SELECT item_id, position, policy FROM interest.impressions JOIN interest.recommendations USING (recommendation_id, served_at) "
        "WHERE recommendation_id = %s ORDER BY position", (answer["recommendation_id"],)).fetchall()
    pipeline.conn.commit()
    assert [r[0] for r in rows] == [i["item_id"] for i in answer["items"]] and rows[0][2] == "bandit"


def test_a_failed_log_write_is_counted_and_retried(shop_models, caplog):
    shop_settings, pipeline, _, recommender = shop_models
    answer = recommender.recommend(int(pipeline.conn.execute("SELECT min(user_id) FROM interest.events").fetchone()[0]), k=3)
    broken = dataclasses.replace(shop_settings.postgres, database="wt13_no_such_database")
    logger = ImpressionLogger(lambda: psycopg.connect(broken.conninfo()), flush_interval_s=3600)
    try:
        logger.submit(answer.logged)
        assert not logger.flush()
        counters = logger.counters()
        assert counters["log_failed_writes"] == 1 and counters["log_pending"] == 1 and counters["log_last_error"]
        assert "impression log write failed" in caplog.text
        logger.connect = lambda: psycopg.connect(shop_settings.postgres.conninfo())
        assert logger.flush() and logger.counters()["recommendations_logged"] == 1
    finally:
        logger.connect = lambda: psycopg.connect(shop_settings.postgres.conninfo())
        logger.close()


def test_simulated_days_learn_log_and_evaluate_off_policy(shop_models, log_db, tmp_path, monkeypatch):
    shop_settings, pipeline, _, recommender = shop_models
    shop = SyntheticShop(SHOP)
    prepared = prepare_users(recommender, range(1, 91))
    config = LoopConfig(days=4, users_per_day=80, k=5, seed=1)
    policy_config = load_config("policy", {"exploration": 0.2})
    bandit = BanditPolicy.untrained(recommender.context_columns, policy_config)
    loop = FeedbackLoop(log_db, recommender, SimulatedShoppers(shop, pd.Timestamp(START)), prepared, START)
    days = loop.run(bandit, config, "bandit")
    assert (days.lists == 80).all() and (days.impressions == 400).all()
    assert (days.expected_clicks <= days.oracle_clicks + 1e-9).all()
    assert days.learned_impressions.iloc[-1] == 400 and bandit.bandit.observations == 4 * 400
    assert days.coverage.is_monotonic_increasing and 0 < days.coverage.iloc[-1] <= 1
    recommendations, impressions = read_feedback(log_db, START, START + dt.timedelta(days=4))
    assert impressions.clicked.sum() == days.clicks.sum() and impressions.purchased.sum() == days.purchases.sum()
    own_views = log_db.execute("SELECT count(*) FROM interest.events WHERE recommendation_id IS NULL AND event_type = 0").fetchone()[0]
    assert own_views == 4 * 80 * config.organic_views  # the shoppers' own browsing, beside their answers
    answers = {(u, t) for u, t in log_db.execute(
        "SELECT user_id, event_timestamp FROM interest.events WHERE recommendation_id IS NOT NULL").fetchall()}
    for recommended, expected in ((False, False), (True, True)):  # training labels: the shoppers' own choices only
        points = decision_points(log_db, load_config("training", {"recommended_labels": recommended}), GAP)
        labelled_by_answers = {(u, t.to_pydatetime()) for u, t in zip(points.user_id, points.label_time)} & answers
        assert len(points) > 50 and bool(labelled_by_answers) == expected

    # Off-policy: the greedy blend's CTR from the bandit's log vs the greedy blend run on the same days.
    table, exponent = off_policy_table(recommendations, impressions, {"greedy": GreedyPolicy()},
                                       embeddings=lambda ids: recommender.unit_text[recommender.vocabulary.index_of(ids)], n_boot=200)
    # The shoppers' examination is j ** -0.8: inside the fit's 99 % likelihood-ratio interval.
    # (Only the explored lists are random; about 60 of them here, so the interval is wide:
    # one run fitted 1.78.)
    random = impressions[impressions.explored]
    drop = (position_bias_log_likelihood(random.position, random.clicked, exponent)
            - position_bias_log_likelihood(random.position, random.clicked, 0.8))
    assert 0 <= 2 * drop < 6.63, (exponent, drop)
    # The targets' marginals computed once and passed in (the benchmark's redrawn logs) give the same table.
    embed = lambda ids: recommender.unit_text[recommender.vocabulary.index_of(ids)]  # noqa: E731
    requests, shown = logged_requests(recommendations, embed), shown_rows(recommendations, impressions)
    marginals = {"greedy": target_marginals(GreedyPolicy(), requests, [len(rows) for rows in shown])}
    again, _ = off_policy_table(recommendations, impressions, {"greedy": GreedyPolicy()}, embed, n_boot=200, marginals=marginals)
    pd.testing.assert_frame_equal(again, table)
    with pytest.raises(ValueError, match="must cover the"):
        off_policy_table(recommendations, impressions, {"greedy": GreedyPolicy()}, embed, marginals={"greedy": marginals["greedy"][:-1]})
    # Whether the intervals cover the truth (the greedy blend's expected CTR on the same
    # logged requests) is the benchmark's figure, not a test: on 320 lists the estimates
    # sit far above the truth (0.16 to 0.32 against 0.10 in one run here) with intervals
    # that only just reach it, and the benchmark's intervals covered it in 4 to 9 of 9
    # cases. Here: every estimate is finite, inside its interval, on the truth's scale.
    truth = _expected_ctr(recommender, shop, recommendations, GreedyPolicy())
    ctr = table[(table.policy == "greedy") & (table.metric == "CTR")].set_index(["weighting", "estimator"])
    for weighting in ("item-position", "position-based"):
        for estimator in ("IPS", "SNIPS", "DR"):
            row = ctr.loc[(weighting, estimator)]
            assert np.isfinite([row.low, row.estimate, row.high]).all() and row.low <= row.estimate <= row.high, ctr
            if (weighting, estimator) == ("item-position", "IPS"):
                # Unnormalised, with weights up to ~240 on 320 lists, no scale bound holds at
                # this size: 0.024 (0 to 0.19) against 0.116 here; before the intervals were
                # widened to the reward model's, one run gave 0.021 (0.013 to 0.030) against 0.104.
                continue
            # DR's correction term (reward minus model, times the weight) can be negative, so
            # its bootstrap interval may reach below 0 under either weighting: one run here
            # gave item-position 0.057 (-0.036 to 0.109) against 0.116, another (the bandit
            # with taste effects logging) position-based 0.078 with its low at -0.025. IPS and SNIPS
            # intervals may reach 0 where the reward model expects more spread than these 320
            # lists show (item-position SNIPS: 0.049, 0 to 0.38, on about 6 effective
            # impressions), not below.
            floor = -np.inf if estimator == "DR" else 0
            assert floor <= row.low < 3 * truth and row.high > truth / 3, (weighting, estimator, truth, ctr)

    # The same log through the command line: learn a bandit version, then evaluate it.
    (tmp_path / "feature_repo").symlink_to(shop_settings.feature_repo_dir)
    _point_the_cli_at(monkeypatch, tmp_path, shop_settings.postgres, log_db.info.dbname)
    runner = CliRunner()
    updated = runner.invoke(commands, ["policy", "update", "--days", "7", "--serve"])
    assert updated.exit_code == 0, updated.output
    assert f"learned from {len(impressions):,} impressions" in updated.output
    policies = PolicyRegistry(tmp_path / "models" / "registry" / "policies")
    assert policies.load().bandit.observations == len(impressions)
    evaluated = runner.invoke(commands, ["policy", "evaluate", "--boot", "50"])
    assert evaluated.exit_code == 0, evaluated.output
    for word in ("greedy", policies.serving_version(), "IPS", "SNIPS", "DR", "position-based", "CVR"):
        assert word in evaluated.output
    assert f"IN-SAMPLE: bandit {policies.serving_version()} learned from every one of these lists" in evaluated.output
    again = runner.invoke(commands, ["policy", "update"])  # nothing new since: learns from no impression
    assert again.exit_code == 0 and "learned from 0 impressions" in again.output, again.output
    drift = runner.invoke(commands, ["policy", "drift", "--days", "2", "--window", "2"])
    assert drift.exit_code == 0, drift.output
    lines = drift.output.strip().splitlines()
    assert len(lines) == 3 and lines[-1].startswith(f"{START.date() + dt.timedelta(days=3)}")
    ctr_day_4 = days.clicks.iloc[3] / days.impressions.iloc[3]
    assert f"{ctr_day_4:7.4f}" in lines[-1]
    # A fifth day served after the version learned: the version is evaluated on it alone.
    FeedbackLoop(log_db, recommender, SimulatedShoppers(shop, pd.Timestamp(START)), prepared, START + dt.timedelta(days=4)).run(
        bandit, LoopConfig(days=1, users_per_day=80, k=5, seed=2), "bandit")
    held_out = runner.invoke(commands, ["policy", "evaluate", "--boot", "50"])
    assert held_out.exit_code == 0, held_out.output
    assert f"only the 80 lists logged after bandit {policies.serving_version()} learned" in held_out.output
    assert "IN-SAMPLE" not in held_out.output


def _point_the_cli_at(monkeypatch, project, server, database: str) -> None:
    """INTEREST_HOME and the test's server (embedded or external), named explicitly: the
    project folder has no server of its own."""
    monkeypatch.setenv("INTEREST_HOME", str(project))
    for name, value in {"HOST": server.host, "PORT": server.port, "DB": database, "USER": server.user,
                        "PASSWORD": server.password, "SSLMODE": server.sslmode}.items():
        monkeypatch.setenv(f"INTEREST_PG_{name}", str(value))


def test_retrain_if_drift_waits_for_drift_then_retrains_once_compares_and_records(shop_models, pg_server, tmp_path,
                                                                                monkeypatch):
    shop_settings, _, registry, recommender = shop_models
    (tmp_path / "feature_repo").symlink_to(shop_settings.feature_repo_dir)
    (tmp_path / "config").mkdir()
    for name, values in FAST.items():  # the test's small models, through the project's config files
        (tmp_path / "config" / f"{name}.yaml").write_text(yaml.safe_dump(values))
    projects = ModelRegistry(tmp_path / "models" / "registry")
    shutil.copytree(registry.root, projects.root)
    serving = projects.serving_version()
    runner = CliRunner()
    with new_database(pg_server) as pg:
        _point_the_cli_at(monkeypatch, tmp_path, shop_settings.postgres, pg.database)
        empty = runner.invoke(commands, ["retrain", "--if-drift"])
        assert empty.exit_code == 1 and "no events to monitor" in empty.output and "Traceback" not in empty.output
        with Pipeline(settings_for(shop_settings, pg), progress=False) as copy:
            copy.run(lambda p: p.load_synthetic(SHOP))  # the shop the serving model was trained on, again
        quiet = runner.invoke(commands, ["retrain", "--if-drift", "--no-build"])
        assert quiet.exit_code == 99 and "nothing retrained" in quiet.output, quiet.output
        assert projects.versions() == [serving]

        # One day after the shop's history: 60 % of the users move to one category, and browse.
        with psycopg.connect(pg.conninfo()) as conn:
            loop = FeedbackLoop(conn, recommender, SimulatedShoppers(SyntheticShop(SHOP), pd.Timestamp(START)),
                                prepare_users(recommender, range(1, 301)), START)
            loop.run(GreedyPolicy(), LoopConfig(days=1, users_per_day=300, k=5, shift_day=0, shift_fraction=0.6,
                                                organic_views=6, seed=2))
        retrained = runner.invoke(commands, ["retrain", "--if-drift"])
        assert retrained.exit_code in (0, 3), retrained.output
        assert f"drift since {START.date()}: retraining" in retrained.output and "new version" in retrained.output
        (new,) = set(projects.versions()) - {serving}
        manifest = json.loads((projects.root / new / "manifest.json").read_text())
        record, compared = manifest["retraining"], manifest["metrics"]["against_serving"]
        assert record["trigger"] == f"drift since {START.date()}" and record["serving_before"] == serving
        assert record["signals"][-1]["drifted"] and record["promoted"] == (retrained.exit_code == 0)
        assert compared["version"] == serving and compared["points"] == manifest["sizes"]["points_test"]
        # The new model's figure in the comparison is its own test figure: the same points, the same code.
        assert compared["new NDCG@10"] == pytest.approx(manifest["metrics"]["test"]["blend (LSTM + XGBoost)"]["NDCG@10"])
        assert 0 < compared["serving NDCG@10"] < 1 and compared["serving NDCG@10"] != compared["new NDCG@10"]
        assert compared["NDCG@10 difference 95% low"] <= compared["NDCG@10 difference"] <= compared["NDCG@10 difference 95% high"]
        assert projects.serving_version() == (new if retrained.exit_code == 0 else serving)
        report = (tmp_path / "reports" / new / "report.md").read_text()
        assert "## Against the serving model, test" in report and "## Retraining" in report

        again = runner.invoke(commands, ["retrain", "--if-drift", "--no-build"])  # the same episode: done already
        assert again.exit_code == 99 and f"{new} was trained on data up to" in again.output, again.output


def _expected_ctr(recommender, shop, recommendations, policy) -> float:
    """The policy's true expected CTR on the logged requests (the shoppers' click model)."""
    from interest_models.policies.learning import logged_requests

    shoppers = SimulatedShoppers(shop, pd.Timestamp(START))
    requests = logged_requests(recommendations, lambda ids: recommender.unit_text[recommender.vocabulary.index_of(ids)])
    total = impressions = 0.0
    for request, user_id, ids, k in zip(requests, recommendations.user_id, recommendations.candidate_item_ids, recommendations.k):
        marginals = policy.marginals(request, int(k))
        total += float((shoppers.attraction(int(user_id), np.asarray(ids)) @ marginals) @ shoppers.examination(np.arange(1, k + 1)))
        impressions += k
    return total / impressions
