"""Feature SQL: incremental builds equal a full recompute; values match hand computations."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from materialize.database.tables import fetch_frame
from materialize.features.builder import build_features
from materialize.ingest.loader import load_frames
from materialize.settings import PipelineConfig

TABLES = {
    "user_daily_features": ("user_id", "event_timestamp"),
    "user_recent_sequence": ("user_id", "event_timestamp"),
    "user_interest_embedding": ("user_id", "event_timestamp"),
    "item_daily_features": ("item_id", "event_timestamp"),
    "category_daily_features": ("category_id", "event_timestamp"),
}


def random_shop(seed: int, n_users: int = 25, n_items: int = 40, n_events: int = 1500):
    rng = np.random.default_rng(seed)
    items = pd.DataFrame(
        {
            "item_id": np.arange(1, n_items + 1),
            "category": rng.choice(["books", "garden", "toys", "music"], n_items),
            "title": [f"item {i}" for i in range(1, n_items + 1)],
            "description": "",
            "price": rng.uniform(1, 50, n_items).round(2),
        }
    )
    start = pd.Timestamp("2026-03-01", tz="UTC")
    events = pd.DataFrame(
        {
            "user_id": rng.integers(1, n_users + 1, n_events),
            "item_id": rng.integers(1, n_items + 1, n_events),
            "event_type": rng.choice(["view", "click", "cart", "purchase"], n_events, p=[0.6, 0.2, 0.12, 0.08]),
            "event_timestamp": start + pd.to_timedelta(rng.uniform(0, 75 * 86400, n_events).round(), unit="s"),
            "price": np.nan,
            "session_id": None,
        }
    )
    return items, events


def _embed_stub_free(conn):
    """Give every item text a deterministic vector without the model (the embedding step
    has its own tests); the SQL under test only averages them."""
    rng = np.random.default_rng(0)
    shas = [r[0] for r in conn.execute("SELECT DISTINCT text_sha256 FROM interest.items")]
    with conn.cursor() as cur, cur.copy(
        "COPY interest.text_embeddings (text_sha256, model_version, embedding) FROM STDIN"
    ) as copy:
        for sha in shas:
            copy.write_row((sha, "test-vectors", rng.normal(size=8).astype(np.float32).tolist()))
    conn.commit()


def _snapshot(conn):
    out = {}
    for table, keys in TABLES.items():
        frame = fetch_frame(conn, f"SELECT * FROM interest.{table}").drop(columns="created_timestamp")
        out[table] = frame.sort_values(list(keys)).reset_index(drop=True)
    return out


def test_incremental_equals_full_recompute(conn):
    config = PipelineConfig.load()
    items, events = random_shop(seed=3)
    load_frames(conn, "items", [items], source="items")
    _embed_stub_free(conn)
    # Arrival order differs from event order: late events land in the second batch.
    order = np.random.default_rng(1).permutation(len(events))
    first, second = events.iloc[order[:1000]], events.iloc[order[1000:]]
    load_frames(conn, "events", [first], source="batch-1")
    assert build_features(conn, config).mode == "full"
    assert build_features(conn, config).mode == "up to date"
    load_frames(conn, "events", [second], source="batch-2")
    report = build_features(conn, config)
    assert report.mode == "incremental" and report.new_events == 500
    incremental = _snapshot(conn)
    assert build_features(conn, config, full=True).mode == "full"
    full = _snapshot(conn)
    for table in TABLES:
        assert len(full[table]) > 0, table
        pd.testing.assert_frame_equal(incremental[table], full[table], check_exact=False, rtol=1e-9, obj=table)


def test_user_window_values_by_hand(conn):
    config = PipelineConfig.load()
    items = pd.DataFrame(
        {"item_id": [1, 2], "category": ["books", "garden"], "title": ["a", "b"], "description": "", "price": [10.0, 20.0]}
    )
    t = pd.Timestamp("2026-05-10 12:00", tz="UTC")
    events = pd.DataFrame(
        {
            "user_id": [7, 7, 7, 7],
            "item_id": [1, 1, 2, 2],
            "event_type": ["view", "purchase", "view", "view"],
            "event_timestamp": [t - pd.Timedelta(days=20), t - pd.Timedelta(days=20, minutes=-5), t - pd.Timedelta(days=3), t],
            "price": [None, 10.0, None, None],
        }
    )
    load_frames(conn, "items", [items], source="items")
    _embed_stub_free(conn)
    load_frames(conn, "events", [events], source="events")
    build_features(conn, config)
    daily = fetch_frame(conn, "SELECT * FROM interest.user_daily_features WHERE user_id = 7 ORDER BY event_timestamp")
    last = daily.iloc[-1]
    assert last.event_timestamp == pd.Timestamp("2026-05-11", tz="UTC")
    assert (last.view_count_1d, last.view_count_7d, last.view_count_30d, last.purchase_count_30d) == (1, 2, 3, 1)
    assert last.spend_30d == pytest.approx(10.0) and last.spend_7d == 0
    assert last.session_count_30d == 3 and last.session_count_7d == 2
    books, garden = 1, 2
    assert list(last.category_share_7d) == pytest.approx([0.0, 1.0])
    assert list(last.category_share_30d) == pytest.approx([0.5, 0.5])
    assert (last.dominant_category_7d, last.dominant_category_30d) == (garden, books)
    assert last.dominant_category_changed
    p7, p30 = np.array([0.0, 1.0]), np.array([0.5, 0.5])
    m = (p7 + p30) / 2
    js = 0.5 * sum(p * np.log(p / q) for p, q in zip(p7, m) if p > 0) + 0.5 * sum(p * np.log(p / q) for p, q in zip(p30, m) if p > 0)
    assert last.category_divergence_7d_30d == pytest.approx(js)
    assert last.category_entropy_30d == pytest.approx(np.log(2))
    assert last.days_since_last_event == pytest.approx(0.5)
    # The shift started with the day-(t-3d) snapshot: 7d dominant became garden.
    assert last.days_since_interest_shift == pytest.approx(3.0)
    # Exit snapshots: 30 days after the first active day the 30d window is empty of it.
    exits = set(daily.event_timestamp.dt.date.astype(str))
    assert "2026-04-21" in exits and "2026-04-28" in exits  # day+1 and day+7 of 2026-04-20

    sequence = fetch_frame(conn, "SELECT * FROM interest.user_recent_sequence WHERE user_id = 7 ORDER BY event_timestamp")
    assert len(sequence) == 4
    newest = sequence.iloc[-1]
    assert list(newest.recent_item_ids) == [1, 1, 2, 2]
    assert list(newest.recent_event_types) == [0, 3, 0, 0]
    assert list(newest.recent_category_ids) == [books, books, garden, garden]
    assert list(newest.recent_gap_seconds) == pytest.approx([0, 300, (17 * 86400 - 300), 3 * 86400])


def test_refreshing_one_user_equals_the_next_build(conn):
    from materialize.features.builder import refresh_users

    config = PipelineConfig.load()
    items, events = random_shop(seed=4)
    load_frames(conn, "items", [items], source="items")
    _embed_stub_free(conn)
    load_frames(conn, "events", [events.iloc[:1200]], source="batch-1")
    build_features(conn, config)
    user = int(events.iloc[1200:].user_id.iloc[0])
    load_frames(conn, "events", [events.iloc[1200:]], source="batch-2")
    refresh_users(conn, config, [user])
    refreshed = {t: v[v.user_id == user].reset_index(drop=True) for t, v in _snapshot(conn).items() if t.startswith("user_")}
    build_features(conn, config)
    built = {t: v[v.user_id == user].reset_index(drop=True) for t, v in _snapshot(conn).items() if t.startswith("user_")}
    for table in refreshed:
        assert len(refreshed[table]) > 0
        pd.testing.assert_frame_equal(refreshed[table], built[table], check_exact=False, rtol=1e-9, obj=table)
