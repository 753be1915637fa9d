"""Models on a small planted-shift shop, through real Feast, Postgres, torch and XGBoost."""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re

import numpy as np
import pandas as pd
import psycopg
import pytest
import torch

from interest_models.config import load_config
from interest_models.evaluation.oracle import (
    LSTM_CATEGORY_ITEMS, ORACLE_COLUMNS, ORACLE_ITEMS, PLANTED_COLUMNS, PLANTED_GROUPS, POSTERIOR, POSTERIOR_ITEMS,
    OracleComparison, compare_with_oracle, shift_auc_by_planted_shift, synthetic_config_of,
)
from interest_models.data.decision_points import SPLITS, decision_points
from interest_models.models.item_ranker import xgboost_device
from interest_models.registry.model_registry import ModelRegistry, RegistryError
from interest_models.data.vocabulary import load_vocabulary
from interest_models.training.recipe import STAGES, _training_histories, train_models
from interest_models.training.workflow import WORKFLOW_STAGES, train_register_report
from interest_models.data.feature_frames import service_features, user_features
from materialize.database.tables import fetch_frame
from materialize.devices import select_device
from materialize.ingest.loader import load_frames
from materialize.pipeline import Pipeline
from materialize.ingest.sources.synthetic import SyntheticConfig, SyntheticShop, start_of_today
from materialize.ingest.sources.synthetic_oracle import next_category_oracle
from tests.conftest import new_database, settings_for

# Ends 10 days ago: the feedback loop's tests simulate days after it, and those must lie in the past.
SHOP = SyntheticConfig(n_users=1000, n_items=120, n_categories=6, days=60, sessions_per_user_mean=5.0, seed=3,
                       end=start_of_today() - pd.Timedelta(days=10))
FAST = {
    "lstm": {"max_epochs": 6, "patience": 2, "hidden_dim": 64, "item_dim": 32},
    "ranker": {"n_estimators": 60, "early_stopping_rounds": 15},
    "training": {"max_points_per_split": {"train_sequence": 6000, "train_ranker": 600, "valid": 500, "test": 500}},
}
GAP = dt.timedelta(minutes=30)


@pytest.fixture(scope="module")
def pipeline(pg_server, settings):
    with new_database(pg_server) as pg:
        with Pipeline(settings_for(settings, pg), progress=False) as pipeline:
            pipeline.run(lambda p: p.load_synthetic(SHOP))
            yield pipeline


@pytest.fixture(scope="module")
def trained(pipeline):
    return train_models(pipeline.store, pipeline.conn, GAP, overrides=FAST, device="cpu")


def test_time_splits_are_ordered_and_disjoint(pipeline):
    points = decision_points(pipeline.conn, load_config("training", FAST["training"]), GAP)
    spans = [(points[points.split == s].as_of.min(), points[points.split == s].as_of.max()) for s in SPLITS]
    assert all(len(points[points.split == s]) for s in SPLITS)
    for (_, earlier_end), (later_start, _) in zip(spans, spans[1:]):
        assert earlier_end < later_start
    assert (points.as_of < points.label_time).all()


def test_leave_one_out_gives_the_ranker_several_points_per_user(pipeline):
    """Per user: the last event is the test point, the one before validation, the
    ``ranker_points_per_user`` before that the ranker's, and every earlier one the LSTM's."""
    unlimited = {s: 10**9 for s in SPLITS}
    config = load_config("training", {"protocol": "leave_one_out", "ranker_points_per_user": 3,
                                      "max_points_per_split": unlimited})
    points = decision_points(pipeline.conn, config, GAP).sort_values(["user_id", "label_time"], kind="stable")
    from_end = points.groupby("user_id").cumcount(ascending=False)
    expected = np.select([from_end == 0, from_end == 1, from_end <= 4], ["test", "valid", "train_ranker"], "train_sequence")
    assert (points.split.to_numpy() == expected).all()
    assert (points.groupby("user_id").split.apply(lambda s: (s == "train_ranker").sum()) <= 3).all()
    assert (points.split == "train_ranker").sum() > 2 * (points.split == "test").sum()


def test_no_feature_from_the_future_reaches_a_training_row(pipeline):
    """A user whose sequence row and daily snapshot at the label time contain the label
    event: the decision point's features must show only what came before."""
    conn = pipeline.conn
    user, t = 999_001, SHOP.end - pd.Timedelta(days=42) + pd.Timedelta(hours=12)  # inside the shop's span
    events = pd.DataFrame({
        "user_id": user, "item_id": [1, 2, 3, 4, 5],
        "event_type": ["view", "view", "view", "purchase", "view"],
        "event_timestamp": [t - pd.Timedelta(days=d) for d in (3, 2, 1)] + [t, t + pd.Timedelta(hours=1)],
    })
    load_frames(conn, "events", [events], source="leak-case")
    pipeline.build()
    label = pd.DataFrame({"user_id": [user], "as_of": [t - pd.Timedelta(milliseconds=1)]})
    features = service_features(pipeline.store)
    row = user_features(pipeline.store, label, features).iloc[0]
    assert list(row.recent_item_ids) == [1, 2, 3]  # not item 4 (the label) nor item 5
    assert row.purchase_count_30d == 0  # the purchase at t is the label itself
    assert row.view_count_30d == 3
    # The same row stamped exactly at t does contain the label: the case really would leak.
    at_label = user_features(pipeline.store, label.assign(as_of=[t]), features).iloc[0]
    assert list(at_label.recent_item_ids)[-1] == 4


@pytest.mark.parametrize("gap", [GAP, dt.timedelta(minutes=2)])  # the short gap cuts inside session ids
def test_baseline_training_data_stops_before_the_period_and_cuts_sessions(pipeline, gap):
    """Histories and baskets hold exactly the events before ``before`` (time_split) or all
    but each user's last two (leave_one_out); baskets are cut where a session starts."""
    conn = pipeline.conn
    vocabulary = load_vocabulary(conn)
    events = fetch_frame(conn, "SELECT user_id, item_id, event_timestamp, session_id FROM interest.events "
                               "ORDER BY user_id, event_timestamp, item_id, event_type")
    events["event_timestamp"] = pd.to_datetime(events.event_timestamp, utc=True)
    events["index"] = vocabulary.index_of(events.item_id)
    same_user = events.user_id.eq(events.user_id.shift())
    session_id = events.session_id.fillna("")  # NULL after NULL is the same session
    same_session_id = session_id.eq(session_id.shift())
    within_gap = events.event_timestamp.diff() <= pd.Timedelta(gap)
    events["session"] = (~(same_user & same_session_id & within_gap)).cumsum()
    assert events.session.nunique() > (events.groupby(["user_id", session_id]).ngroups if gap < GAP else 0)
    before = events.event_timestamp.quantile(0.6).floor("ms")

    def expected(kept: pd.DataFrame, key: str) -> list[list[int]]:
        return [group["index"].tolist() for _, group in kept.groupby(key, sort=False)]

    histories, baskets = _training_histories(conn, vocabulary, "time_split", before, gap)
    kept = events[events.event_timestamp < before]
    assert [h.tolist() for h in histories] == expected(kept, "user_id")
    assert [b.tolist() for b in baskets] == expected(kept, "session")
    assert len(baskets) > len(histories)

    histories, baskets = _training_histories(conn, vocabulary, "leave_one_out", before, gap)
    kept = events[events.groupby("user_id").cumcount(ascending=False) >= 2]
    assert [h.tolist() for h in histories] == expected(kept, "user_id")
    assert [b.tolist() for b in baskets] == expected(kept, "session")


def test_models_learn_and_beat_popularity(trained):
    test = trained.metrics
    popular = test.loc["baseline: most_popular", "NDCG@10"]
    assert test.loc["LSTM", "NDCG@10"] > popular
    assert test.loc["blend (LSTM + XGBoost)", "NDCG@10"] > popular
    assert trained.category_metrics["LSTM accuracy@1"] > 1 / SHOP.n_categories
    assert trained.shift_metrics["AUC, next category differs from the 30-day dominant (test)"] > 0.5
    assert trained.shift_metrics["held-out points inside a planted shift"] > 0
    assert trained.model.learning_curve.best_epoch >= 1 and len(trained.model.learning_curve.epoch) <= FAST["lstm"]["max_epochs"]


def test_candidate_recall_comparisons_and_horizon_shift(trained):
    recall = trained.candidate_recall.recall
    assert recall.between(0, 1).all() and recall["lstm_top"] > 0
    # the ranker trains and is evaluated on serving's sources (trending aside)
    assert {"interest_neighbours", "predicted_category_popular"} <= set(recall.index)
    assert recall["interest_neighbours"] > 0 and recall["predicted_category_popular"] > 0
    deterministic = ["lstm_top", "same_category", "embedding_neighbours", "interest_neighbours", "predicted_category_popular"]
    assert recall["union"] >= recall[deterministic].max()  # "popular" draws at random, differently in the union
    blend, best = trained.comparisons.index[0].split(" - ")
    assert blend == "blend (LSTM + XGBoost)" and best in trained.metrics.index and best not in (blend, "XGBoost ranker")
    row = trained.comparisons.iloc[0]
    assert row["95% low"] <= row["difference"] <= row["95% high"]
    np.testing.assert_allclose(row["difference"], row["NDCG@10 of the first"] - row["NDCG@10 of the second"])
    horizon = {k: v for k, v in trained.shift_metrics.items() if k.startswith("horizon shift")}
    assert len(horizon) == 4 and 0 < next(v for k, v in horizon.items() if k.endswith("rate (test)")) < 1


def test_training_is_deterministic_with_a_seed(pipeline, trained, capsys):
    again = train_models(pipeline.store, pipeline.conn, GAP, overrides=FAST, device="cpu")
    pd.testing.assert_frame_equal(again.metrics, trained.metrics)
    for name, tensor in trained.model.state_dict().items():
        assert torch.equal(tensor, again.model.state_dict()[name]), name
    assert capsys.readouterr() == ("", "")  # progress=False: silent


def test_train_register_report_prints_every_stage(pipeline, trained, tmp_path, monkeypatch, capsys):
    """What ``interest train`` shows: for every stage a line saying what it does, then one
    with its time and sizes, on stderr; the LSTM's bar ends where its learning curve ends."""
    monkeypatch.setattr(pipeline, "progress", True)
    monkeypatch.setattr(pipeline, "settings", dataclasses.replace(pipeline.settings, project_dir=tmp_path))
    run = train_register_report(pipeline, overrides=FAST, device="cpu")
    out, err = capsys.readouterr()
    assert out == ""
    lines = re.split(r"[\r\n]", err)  # tqdm redraws and clears bars after carriage returns
    plan = STAGES | WORKFLOW_STAGES
    for number, (name, doing) in enumerate(plan.items(), 1):
        tag = f"[train {number}/{len(plan)}] {name}"
        assert f"{tag}: {doing} ..." in lines, name
        assert any(re.fullmatch(rf"{re.escape(tag)} done in \d+\.\d s: \S.*", line) for line in lines), name
    points = sum(v for k, v in run.result.sizes.items() if k.startswith("points_"))
    assert re.search(rf"decision points done in .* s: {points:,} points of [\d,]+ users", err)
    assert f"version {run.version}" in err and str(run.report) in err
    curve = run.result.model.learning_curve
    epochs = len(curve.epoch)
    bar = [line for line in lines if line.startswith("LSTM epochs")][-1].rstrip()  # tqdm pads shorter redraws
    assert f"| {epochs}/{epochs} [" in bar and bar.endswith(f"best epoch {curve.best_epoch}]")
    assert f"best epoch {curve.best_epoch} of {epochs}" in run.report.read_text()
    assert list(run.result.seconds) == list(STAGES)
    pd.testing.assert_frame_equal(run.result.metrics, trained.metrics)  # progress changes nothing


def test_registry_round_trip_and_refusals(trained, pipeline, tmp_path):
    registry = ModelRegistry(tmp_path / "registry")
    version = registry.register(trained)
    registry.set_serving(version)
    loaded = registry.load(store=pipeline.store)
    assert loaded.version == version and loaded.blend.lstm_weight == trained.blend.lstm_weight
    assert loaded.model.session_gap_seconds == GAP.total_seconds()  # serving cuts sessions as training did
    for name, tensor in trained.model.state_dict().items():
        assert torch.equal(tensor, loaded.model.state_dict()[name]), name
    sample = pd.DataFrame(np.random.default_rng(0).normal(size=(5, len(loaded.manifest["ranking_feature_columns"]))),
                          columns=loaded.manifest["ranking_feature_columns"])
    np.testing.assert_allclose(loaded.ranker.score(sample), trained.ranker.score(sample), rtol=1e-6)

    manifest_path = tmp_path / "registry" / version / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["features"].append("user_activity:no_such_feature")
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(RegistryError, match="no longer serves"):
        registry.load(version, store=pipeline.store)

    ranker_file = tmp_path / "registry" / version / "ranker.json"
    ranker_file.write_bytes(ranker_file.read_bytes().replace(b"1", b"2", 1))
    with pytest.raises(RegistryError, match="checksum mismatch for ranker.json"):
        registry.load(version)


def test_device_selection():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert select_device().type == expected
    assert xgboost_device() == expected
    assert select_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            select_device("cuda")


def test_report_has_every_plot_and_table(trained, pipeline, tmp_path):
    from interest_models.evaluation.report import write_report
    from materialize.database.tables import fetch_frame

    names = dict(pipeline.conn.execute("SELECT category_id, category FROM interest.categories"))
    planted = fetch_frame(pipeline.conn, "SELECT * FROM interest.planted_interest_shifts")
    path = write_report(trained, tmp_path, "v-test", "test report", names, planted=planted)
    text = path.read_text()
    for plot in ("metrics", "learning_curve", "category_confusion", "shift_calibration", "interest_timelines", "blend_search"):
        assert (tmp_path / f"{plot}.png").stat().st_size > 10_000, plot
        assert f"{plot}.png" in text
    assert "blend (LSTM + XGBoost)" in text and "baseline: item_knn" in text
    assert "baseline: personal_frequency" in text and "baseline: co_purchase" in text
    assert "## Oracle: the synthetic shop's true preferences, test" in text
    assert "Candidate sources on test" in text and "| union |" in text and "XGBoost ranker, Feast features only" in text
    assert "| LSTM / oracle |" in text and "| baseline: 30-day dominant category |" in text
    assert "| no planted shift |" in text and "oracle in this group |" in text


def test_oracle_on_the_same_test_points(trained):
    """The oracle on the shop's test points: a real forecast, at least as accurate as the
    30-day dominant category; the LSTM's ratios are its figures over the oracle's."""
    table = trained.oracle.table
    assert table is not None, trained.oracle.note
    assert list(table.columns) == ORACLE_COLUMNS
    oracle, lstm = table.loc["oracle"], table.loc["LSTM"]
    assert oracle["accuracy@1"] >= table.loc["baseline: 30-day dominant category", "accuracy@1"]
    assert oracle["accuracy@1"] > 1 / SHOP.n_categories and oracle["shift AUC"] > 0.5
    assert 0 < oracle["log-loss"] < np.log(SHOP.n_categories)
    pd.testing.assert_series_equal(table.loc["LSTM / oracle"], lstm / oracle, check_names=False)
    points = trained.sizes["points_test"]  # all of the shop's users (the leak case's user has none in test)
    assert trained.oracle.note.startswith(f"{points:,} of {points:,} test decision points")
    ranking = trained.oracle.ranking["NDCG@10"]
    # Knowing the true preference ranks better than knowing only the LSTM's forecast of it,
    # and both rank better than the most popular items.
    assert ranking[ORACLE_ITEMS] > ranking[LSTM_CATEGORY_ITEMS] > trained.metrics.loc["baseline: most_popular", "NDCG@10"]
    # The shift AUC by planted shift: every point with a 30-day dominant category in exactly
    # one group; the shop has users without a shift, and its shifts all lie before the test period.
    groups = trained.oracle.by_planted_shift
    assert list(groups.columns) == PLANTED_COLUMNS and set(groups.index) <= set(PLANTED_GROUPS)
    assert f"shift columns on the {groups.points.sum():,} with" in trained.oracle.note
    assert "no planted shift" in groups.index and "planted shift still ahead" not in groups.index
    assert groups["shift rate"].between(0, 1).all()


def test_oracle_tables_take_a_forecast_from_the_observed_events(pipeline, trained):
    """Given the oracle's own forecast as the posterior, the posterior's rows equal the
    oracle's and the LSTM's stay as training reported them: the rows line up."""
    points = decision_points(pipeline.conn, load_config("training", FAST["training"]), GAP)
    points = points[points.split == "test"].reset_index(drop=True)
    test = trained.timelines[trained.timelines.split == "test"].reset_index(drop=True)
    assert np.array_equal(points.as_of, test.as_of)
    users = user_features(pipeline.store, points, service_features(pipeline.store))
    probabilities = np.hstack([np.zeros((len(points), 1)), np.stack(test.predicted_mix.to_numpy())])
    exact = next_category_oracle(SyntheticShop(SHOP), points.user_id.to_numpy(), points.label_time,
                                 np.full(len(points), -1)).next_category
    comparison = compare_with_oracle(pipeline.conn, points, users, probabilities, test.shift_probability.to_numpy(),
                                     load_vocabulary(pipeline.conn), posterior=exact)
    table, ranking = comparison.table, comparison.ranking
    np.testing.assert_allclose(table.loc[POSTERIOR], table.loc["oracle"])
    np.testing.assert_allclose(table.loc["LSTM"], trained.oracle.table.loc["LSTM"], rtol=1e-6)  # float32 forecasts
    np.testing.assert_allclose(table.loc["LSTM / posterior"], table.loc["LSTM / oracle"])
    np.testing.assert_allclose(ranking.loc[POSTERIOR_ITEMS], ranking.loc[ORACLE_ITEMS])
    # By planted shift, with the LSTM's own probabilities as the "oracle": each group's two
    # AUCs agree, and putting them in place changes nothing (the LSTM's AUC over all points).
    dominant = users.dominant_category_30d.fillna(0).to_numpy(np.int64)
    known = dominant > 0
    labels = (points.label_category_id.to_numpy() != dominant)[known].astype(int)
    lstm = test.shift_probability.to_numpy()[known]
    same = shift_auc_by_planted_shift(SyntheticShop(SHOP), points.user_id.to_numpy()[known], points.label_time[known],
                                      labels, lstm, lstm)
    pd.testing.assert_series_equal(same["LSTM shift AUC"], same["oracle shift AUC"], check_names=False)
    np.testing.assert_allclose(same.iloc[:, -1], table.loc["LSTM", "shift AUC"], rtol=1e-6)
    pd.testing.assert_frame_equal(same.iloc[:, :3], trained.oracle.by_planted_shift.iloc[:, :3], rtol=1e-5)


def test_oracle_is_omitted_without_a_synthetic_shop(pg_server, trained, tmp_path):
    from interest_models.evaluation.report import write_report

    with new_database(pg_server) as pg, psycopg.connect(pg.conninfo()) as conn:
        config, reason = synthetic_config_of(conn)
    assert config is None and "no synthetic shop" in reason
    result = dataclasses.replace(trained, oracle=OracleComparison(None, reason))
    text = write_report(result, tmp_path, "v-test", "test report", {}).read_text()
    assert f"Omitted: {reason}." in text and "| LSTM / oracle |" not in text
