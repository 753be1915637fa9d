"""Training examples: decision points, their labels and their time splits.

A decision point is (user, as_of): the moment just before an event the model must
predict. Its labels come from that event (the next item and its category); every feature
is retrieved from Feast as of ``as_of`` = event time - 1 ms, so the labelled event and
anything after it cannot leak into the features.

Two protocols:
  * ``time_split``: decision points are the first events of sessions; time is cut into
    warm-up | LSTM training | ranker training | validation | test periods, in order and
    without overlap, each holding its configured share of the events. A session that
    starts with an event answering a recommendation (it carries the list's
    ``recommendation_id``) is no decision point unless ``recommended_labels``: its label is
    what the serving model chose to show, which would teach the next model its
    predecessor's lists and favour the serving model when the two are compared.
  * ``leave_one_out``: the sequential-recommendation protocol (e.g. MovieLens): each
    user's last event is the test point, the one before it validation, the one before
    the ``ranker_points_per_user`` before that the ranker's training points, and all
    earlier events train the LSTM.

The events come from ``interest.events`` or, in the spark profile, from the Parquet events
through Spark (``event_history``): the functions take a psycopg connection or an event history.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np
import pandas as pd

from interest_models.data.event_history import event_history
from interest_models.data.vocabulary import Vocabulary

SPLITS = ("train_sequence", "train_ranker", "valid", "test")
AS_OF_OFFSET = pd.Timedelta(milliseconds=1)


@dataclass(frozen=True)
class SplitBoundaries:
    """Start times of each period (time_split): [start, warmup_end) is history only."""

    start: pd.Timestamp
    train_sequence: pd.Timestamp
    train_ranker: pd.Timestamp
    valid: pd.Timestamp
    test: pd.Timestamp
    end: pd.Timestamp

    def split_of(self, as_of: pd.Series) -> pd.Series:
        edges = [self.train_sequence, self.train_ranker, self.valid, self.test, self.end + AS_OF_OFFSET]
        labels = pd.cut(as_of, bins=pd.DatetimeIndex(edges), labels=list(SPLITS), right=False)
        return labels.astype("object")

    def to_json(self) -> dict:
        return {k: v.isoformat() for k, v in self.__dict__.items()}


def split_boundaries(events, config: dict) -> SplitBoundaries:
    """Period boundaries at quantiles of the event times, so that each period holds its
    share of the events even when traffic is uneven or has gaps."""
    cuts = np.cumsum([config["warmup_fraction"], 1 - config["warmup_fraction"] - config["ranker_fraction"]
                      - config["valid_fraction"] - config["test_fraction"], config["ranker_fraction"], config["valid_fraction"]])
    if not (0 < cuts[0] < cuts[1] < cuts[2] < cuts[3] < 1):
        raise ValueError("split fractions leave an empty period; check training.yaml")
    start, end, (warmup_end, ranker, valid, test) = event_history(events).boundaries([float(c) for c in cuts])
    if not start < warmup_end < ranker < valid < test < end:
        raise ValueError("too few distinct event times to split into periods")
    return SplitBoundaries(start, warmup_end, ranker, valid, test, end)


def decision_points(events, config: dict, session_gap: dt.timedelta) -> pd.DataFrame:
    """Decision points with labels and split, at most ``max_points_per_split`` each.

    Args:
        events: a psycopg connection or an ``event_history`` object.

    Returns:
        Columns user_id, as_of (UTC), label_item_id, label_category_id, label_time, split.
    """
    rng = np.random.default_rng(config["seed"])
    history = event_history(events)
    if config["protocol"] == "time_split":
        bounds = split_boundaries(history, config)
        events = history.session_starts(config["min_history_events"], session_gap, bounds.train_sequence.to_pydatetime(),
                                        recommended=bool(config["recommended_labels"]))
        events["as_of"] = pd.to_datetime(events.event_timestamp, utc=True) - AS_OF_OFFSET
        events["split"] = bounds.split_of(events.as_of)
    elif config["protocol"] == "leave_one_out":
        events = history.last_events(config["min_history_events"])
        from_end = events.n_events - events.position
        ranker_points = int(config["ranker_points_per_user"])
        events["split"] = np.select(
            [from_end == 0, from_end == 1, (from_end >= 2) & (from_end < 2 + ranker_points)],
            ["test", "valid", "train_ranker"], "train_sequence",
        )
        events["as_of"] = pd.to_datetime(events.event_timestamp, utc=True) - AS_OF_OFFSET
    else:
        raise ValueError(f"unknown protocol {config['protocol']!r}")
    events = events.dropna(subset=["split"])
    points = []
    for split in SPLITS:
        rows = events[events.split == split]
        limit = config["max_points_per_split"][split]
        if len(rows) > limit:
            rows = rows.iloc[np.sort(rng.choice(len(rows), limit, replace=False))]
        points.append(rows)
    out = pd.concat(points, ignore_index=True)
    return pd.DataFrame(
        {
            "user_id": out.user_id.astype("int64"),
            "as_of": out.as_of,
            "label_item_id": out.item_id.astype("int64"),
            "label_category_id": out.category_id.astype("int64"),
            "label_time": pd.to_datetime(out.event_timestamp, utc=True),
            "split": out.split.astype(str),
        }
    )


def seen_items(events, points: pd.DataFrame, vocabulary: Vocabulary) -> list[np.ndarray]:
    """Per decision point, the indices of the items the user interacted with before it,
    except the point's own label item (from the raw events: used to exclude them from
    rankings, never as a feature)."""
    history = event_history(events).first_seen([int(u) for u in points.user_id.unique()])
    history["first_seen"] = pd.to_datetime(history.first_seen, utc=True)
    history["index"] = vocabulary.index_of(history.item_id)
    by_user = {user: frame for user, frame in history.groupby("user_id")}
    labels = vocabulary.index_of(points.label_item_id)
    out = []
    for user, as_of, label in zip(points.user_id, points.as_of, labels):
        frame = by_user.get(user)
        if frame is None:
            out.append(np.empty(0, np.int64))
            continue
        seen = frame["index"].to_numpy()[(frame.first_seen <= as_of).to_numpy()]
        out.append(seen[seen != label])
    return out
