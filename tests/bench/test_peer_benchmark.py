"""The peer benchmark's export to RecBole's atomic files: the format RecBole reads, and
that its test rows are our test decision points with the histories our features see.
RecBole itself is not needed."""
from __future__ import annotations

import datetime as dt
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from interest_models.config import load_config
from interest_models.data.decision_points import decision_points
from interest_models.data.vocabulary import load_vocabulary
from materialize.database.tables import fetch_frame
from materialize.ingest.loader import load_frames
from materialize.ingest.sources.synthetic import SyntheticConfig, SyntheticShop

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture(scope="module")
def peers():
    sys.path.insert(0, str(BENCH))  # the script imports its neighbour harness.py
    try:
        spec = importlib.util.spec_from_file_location("peer_benchmark", BENCH / "peer_benchmark.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["peer_benchmark"] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCH))


def _events(rows):
    return pd.DataFrame(
        {"user_id": [r[0] for r in rows], "item_id": [r[1] for r in rows],
         "event_timestamp": pd.to_datetime([r[2] for r in rows], unit="s", utc=True)}
    )


def test_training_examples_are_every_next_event_with_its_truncated_history(peers):
    events = _events([(1, 10, 0), (1, 11, 1), (1, 12, 2), (1, 13, 3), (2, 20, 0), (2, 21, 5), (2, 22, 9)])
    keep = np.array([True, True, True, True, True, True, False])  # user 2's last event is held out
    examples = peers.training_examples(events, keep, max_len=2)
    assert examples.user_id.tolist() == [1, 1, 1, 2]
    assert examples.item_id.tolist() == [11, 12, 13, 21]
    assert [h.tolist() for h in examples.history] == [[10], [10, 11], [11, 12], [20]]  # newest max_len, oldest first
    assert examples.timestamp.tolist() == [1.0, 2.0, 3.0, 5.0]


def test_point_history_is_what_happened_up_to_as_of(peers):
    events = _events([(1, 10, 0), (1, 11, 1), (1, 12, 2), (1, 13, 2), (1, 14, 3), (2, 20, 7), (2, 21, 7)])
    points = pd.DataFrame({
        "user_id": [1, 1, 2],
        "label_item_id": [14, 13, 21],
        "label_time": pd.to_datetime([3, 2, 7], unit="s", utc=True),
    })
    points["as_of"] = points.label_time - pd.Timedelta(milliseconds=1)
    examples, fallbacks = peers.point_examples(events, points, max_len=3)
    assert examples.item_id.tolist() == [14, 13, 21]  # our order, our labels
    # point 2: item 12 shares the label's instant, so as of 1 ms earlier it is not history
    # point 3: nothing before the label's instant, so the events ordered before it are used
    assert [h.tolist() for h in examples.history] == [[11, 12, 13], [10, 11], [20]]
    assert fallbacks == 1


def test_atomic_files_have_recbole_headers_and_fields(peers, tmp_path):
    examples = pd.DataFrame({"user_id": [5, 6], "history": [np.array([1, 2, 3]), np.array([], np.int64)],
                             "item_id": [4, 9], "timestamp": [1790000000.25, 1.0]})
    assert peers.write_inter(tmp_path / "peers.test.inter", examples) == 1
    lines = (tmp_path / "peers.test.inter").read_text().splitlines()
    assert lines == ["user_id:token\titem_id_list:token_seq\titem_id:token\ttimestamp:float",
                     "5\t1 2 3\t4\t1790000000.250"]
    peers.write_item_file(tmp_path / "peers.item", np.array([3, 1, 2]))
    assert (tmp_path / "peers.item").read_text().splitlines() == ["item_id:token", "3", "1", "2"]


@pytest.mark.parametrize("protocol, train_targets",
                         [("time_split", "points"), ("time_split", "events"), ("leave_one_out", "events")])
def test_exported_test_rows_are_our_test_decision_points(peers, conn, tmp_path, protocol, train_targets):
    shop = SyntheticShop(SyntheticConfig(n_users=60, n_items=80, n_categories=4, days=30,
                                         sessions_per_user_mean=6.0, seed=5))
    load_frames(conn, "items", [shop.items()], source="peer-export:items")
    load_frames(conn, "events", shop.events(), source="peer-export:events")
    config = load_config("training", {"protocol": protocol})
    points = decision_points(conn, config, dt.timedelta(minutes=30))
    vocabulary = load_vocabulary(conn)
    export = peers.export_split(conn, points, protocol, vocabulary.item_ids[1:], tmp_path, max_len=20,
                                train_targets=train_targets)

    folder = tmp_path / peers.DATASET
    test = pd.read_csv(folder / "peers.test.inter", sep="\t", dtype=str)
    ours = points[points.split == "test"].reset_index(drop=True)
    assert len(test) == len(ours) == export.rows["test"] > 0
    assert test["user_id:token"].astype(int).tolist() == ours.user_id.tolist()
    assert test["item_id:token"].astype(int).tolist() == ours.label_item_id.tolist()
    label_seconds = ours.label_time.astype("int64") / 1e9
    assert np.allclose(test["timestamp:float"].astype(float), label_seconds, atol=1e-3)
    events = fetch_frame(conn, "SELECT user_id, item_id, event_timestamp FROM interest.events "
                               "ORDER BY user_id, event_timestamp, item_id, event_type")
    for row, point in zip(test.itertuples(index=False), ours.itertuples(index=False)):
        before = events[(events.user_id == point.user_id) & (pd.to_datetime(events.event_timestamp, utc=True) <= point.as_of)]
        assert row[1].split(" ") == [str(i) for i in before.item_id.tolist()[-20:]]
    valid = pd.read_csv(folder / "peers.valid.inter", sep="\t", dtype=str)
    assert valid["item_id:token"].astype(int).tolist() == points[points.split == "valid"].label_item_id.tolist()

    train = pd.read_csv(folder / "peers.train.inter", sep="\t", dtype=str)
    held_out = ours.assign(t=label_seconds)
    if train_targets == "points":  # our models' own training decision points, in our order
        ours_train = points[points.split.isin(["train_sequence", "train_ranker"])]
        assert train["item_id:token"].astype(int).tolist() == ours_train.label_item_id.tolist()
        assert train["user_id:token"].astype(int).tolist() == ours_train.user_id.tolist()
    if protocol == "time_split":  # training targets end before the first validation point
        first_valid = points[points.split == "valid"].as_of.min().timestamp()
        assert train["timestamp:float"].astype(float).max() <= first_valid
    else:  # leave-one-out: no user's last two events are training targets
        last = held_out.set_index("user_id").t
        train_last = train.assign(u=train["user_id:token"].astype(int), t=train["timestamp:float"].astype(float))
        assert (train_last.t.to_numpy() < last.reindex(train_last.u).to_numpy() + 1e-6).all()
        assert export.rows["train"] == len(events) - 2 * events.user_id.nunique() - events.user_id.nunique()
    items = (folder / "peers.item").read_text().splitlines()
    assert items[0] == "item_id:token" and sorted(map(int, items[1:])) == vocabulary.item_ids[1:].tolist()
