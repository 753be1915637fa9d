"""Feature SQL: incremental builds equal a full recompute; values match hand computations."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from materialize.database.tables import fetch_frame
from materialize.features import builder
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
    """Give every item text not embedded yet a deterministic vector without the model (the
    embedding step has its own tests); the SQL under test only averages them."""
    shas = [r[0] for r in conn.execute(
        "SELECT DISTINCT text_sha256 FROM interest.items LEFT JOIN interest.text_embeddings t USING (text_sha256) "
        "WHERE t.text_sha256 IS NULL ORDER BY 1")]
    rng = np.random.default_rng(len(shas))
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


@pytest.mark.parametrize("batches", ["one batch", "batches of 7 users and 5 items"])
def test_incremental_equals_full_recompute(conn, monkeypatch, batches):
    if batches != "one batch":
        monkeypatch.setattr(builder, "USERS_PER_BATCH", 7)
        monkeypatch.setattr(builder, "ITEMS_PER_BATCH", 5)
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
    _assert_interest_embeddings_match_reference(conn, config.interest_embedding_events)
    _assert_lifetime_counts_match_the_events(conn)


def _assert_lifetime_counts_match_the_events(conn) -> None:
    """Each user's newest snapshot counts all of the user's events per category."""
    newest = fetch_frame(conn, "SELECT DISTINCT ON (user_id) user_id, category_events_lifetime FROM interest.user_daily_features "
                               "ORDER BY user_id, event_timestamp DESC")
    counts = fetch_frame(conn, "SELECT e.user_id, i.category_id, count(*) AS events FROM interest.events e "
                               "JOIN interest.items i USING (item_id) GROUP BY 1, 2")
    n_categories = conn.execute("SELECT max(category_id) FROM interest.categories").fetchone()[0]
    expected = np.zeros((counts.user_id.max() + 1, n_categories), np.int64)
    expected[counts.user_id, counts.category_id - 1] = counts.events
    for user_id, lifetime in zip(newest.user_id, newest.category_events_lifetime):
        np.testing.assert_array_equal(lifetime, expected[user_id], err_msg=f"user {user_id}")


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
    # Lifetime counts keep what the 30-day window drops: both books events, both garden ones.
    assert list(daily.iloc[0].category_events_lifetime) == [2, 0]
    assert list(last.category_events_lifetime) == [2, 2]
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
    conn.commit()
    refreshed = {t: v[v.user_id == user].reset_index(drop=True) for t, v in _snapshot(conn).items() if t.startswith("user_")}
    build_features(conn, config)
    built = {t: v[v.user_id == user].reset_index(drop=True) for t, v in _snapshot(conn).items() if t.startswith("user_")}
    assert {t: n for t, n in builder._row_counts(conn).items() if t in TABLES} == {t: len(v) for t, v in _snapshot(conn).items()}
    for table in refreshed:
        assert len(refreshed[table]) > 0
        pd.testing.assert_frame_equal(refreshed[table], built[table], check_exact=False, rtol=1e-9, obj=table)


def test_online_refreshes_from_the_intake_queue_equal_the_next_build(conn):
    """Events stored by the intake in three steps (the last with late events), each followed
    by the quick refresh of the queued users' sequences from their earliest new event; then
    the refresh of the other user tables: the tables equal what the next build writes."""
    from materialize.features.builder import refresh_user_sequences, refresh_users
    from materialize.ingest.loader import store_events

    config = PipelineConfig.load()
    items, events = random_shop(seed=5)
    load_frames(conn, "items", [items], source="items")
    _embed_stub_free(conn)
    events = events.sort_values("event_timestamp", ignore_index=True)
    load_frames(conn, "events", [events.iloc[:1100]], source="batch-1")
    build_features(conn, config)
    late = events.iloc[1100:].sample(frac=0.05, random_state=1)
    rest = events.iloc[1100:].drop(late.index)
    queued_sql = "SELECT user_id, min(first_event_at) FROM interest.online_refresh_queue {} GROUP BY 1 ORDER BY 1"
    for step, frame in enumerate([rest.iloc[:200], rest.iloc[200:], late]):
        assert store_events(conn, frame, source=f"intake-{step}").loaded == len(frame)
        queued = conn.execute(queued_sql.format("WHERE NOT sequence_pushed")).fetchall()
        assert {user for user, _ in queued} == set(frame.user_id)
        refresh_user_sequences(conn, config, [user for user, _ in queued], [at for _, at in queued])
        conn.execute("UPDATE interest.online_refresh_queue SET sequence_pushed = true")
        conn.commit()
    queued = conn.execute(queued_sql.format("")).fetchall()
    refresh_users(conn, config, [user for user, _ in queued], tables=("user_daily_features", "user_interest_embedding"))
    conn.commit()
    refreshed = {t: v for t, v in _snapshot(conn).items() if t.startswith("user_")}
    build_features(conn, config)
    built = {t: v for t, v in _snapshot(conn).items() if t.startswith("user_")}
    assert {t: n for t, n in builder._row_counts(conn).items() if t in TABLES} == {t: len(v) for t, v in _snapshot(conn).items()}
    for table in refreshed:
        pd.testing.assert_frame_equal(refreshed[table], built[table], check_exact=False, rtol=1e-9, obj=table)


def _reference_interest_embeddings(conn, recent_events: int) -> dict:
    """user_interest_embedding recomputed in Python, straight from the definition: per user
    and active UTC day, the mean of the text embeddings of the items of the user's last
    ``recent_events`` events up to the end of that day (order: time, item, event type;
    events whose item text has no embedding are left out)."""
    events = fetch_frame(conn, "SELECT user_id, item_id, event_type, event_timestamp FROM interest.events")
    vectors = {
        item: np.asarray(vector, dtype=np.float64)
        for item, vector in conn.execute(
            "SELECT i.item_id, t.embedding FROM interest.items i JOIN interest.text_embeddings t USING (text_sha256)"
        )
    }
    expected = {}
    for user, frame in events.sort_values(["user_id", "event_timestamp", "item_id", "event_type"]).groupby("user_id"):
        days = frame.event_timestamp.dt.tz_convert("UTC").dt.normalize()
        for day in days.unique():
            window = frame[days <= day].item_id.to_numpy()[-recent_events:]
            embedded = [vectors[i] for i in window if i in vectors]
            if embedded:
                expected[(user, day + pd.Timedelta(days=1))] = np.mean(embedded, axis=0)
    return expected


def _assert_interest_embeddings_match_reference(conn, recent_events: int) -> None:
    expected = _reference_interest_embeddings(conn, recent_events)
    stored = fetch_frame(conn, "SELECT user_id, event_timestamp, interest_embedding FROM interest.user_interest_embedding")
    assert len(expected) > 0
    assert set(zip(stored.user_id, stored.event_timestamp)) == set(expected)
    for row in stored.itertuples():
        np.testing.assert_allclose(row.interest_embedding, expected[(row.user_id, row.event_timestamp)], rtol=1e-6, atol=1e-7)


def test_interest_embedding_equals_a_straight_recomputation(conn):
    config = PipelineConfig.load()
    items, events = random_shop(seed=5)
    # Same-instant events (ordered by item, then type) and items without an embedding.
    events.loc[events.index[:200], "event_timestamp"] = events.event_timestamp.iloc[200:400].to_numpy()
    load_frames(conn, "items", [items], source="items")
    _embed_stub_free(conn)
    extra = items.assign(item_id=items.item_id + 100, title=items.title + " (new)")
    load_frames(conn, "items", [extra], source="items-not-embedded")
    events.loc[events.index[::7], "item_id"] += 100
    load_frames(conn, "events", [events], source="events")
    build_features(conn, config)
    _assert_interest_embeddings_match_reference(conn, config.interest_embedding_events)


def _assert_incremental_equals_full(conn, config, step: str) -> None:
    incremental = _snapshot(conn)
    reported = builder._row_counts(conn)  # kept by the builds, not counted
    assert {t: reported[t] for t in TABLES} == {t: len(incremental[t]) for t in TABLES}, step
    assert build_features(conn, config, full=True).mode == "full"
    full = _snapshot(conn)
    for table in TABLES:
        assert len(full[table]) > 0, (step, table)
        pd.testing.assert_frame_equal(incremental[table], full[table], check_exact=False, rtol=1e-9,
                                      obj=f"{step}: {table}")


def test_incremental_equals_full_through_every_kind_of_change(conn):
    """Embeddings after the events, late events, a day with no events, one more day, a
    catalogue change (category and text) and the new text's embedding: after each, the
    incremental build equals a full recompute."""
    config = PipelineConfig.load()
    items, events = random_shop(seed=6, n_events=2000)
    load_frames(conn, "items", [items], source="items")
    day = events.event_timestamp.dt.floor("D")
    last_day = day.max()
    history, late = events[day < last_day - pd.Timedelta(days=3)], events[day >= last_day - pd.Timedelta(days=3)]
    late_in_history = history.sample(150, random_state=0)
    history = history.drop(late_in_history.index)
    load_frames(conn, "events", [history], source="history")
    assert build_features(conn, config).mode == "full"
    assert len(_snapshot(conn)["user_interest_embedding"]) == 0  # nothing embedded yet

    # 1. Embeddings arrive after the events (the "up to date" ordering bug).
    _embed_stub_free(conn)
    report = build_features(conn, config)
    assert report.mode == "incremental" and report.new_events == 0 and report.embedded_items == len(items)
    _assert_incremental_equals_full(conn, config, "embeddings after events")
    _assert_interest_embeddings_match_reference(conn, config.interest_embedding_events)

    # 2. Late, out-of-order events inside the history.
    load_frames(conn, "events", [late_in_history], source="late")
    assert build_features(conn, config).mode == "incremental"
    _assert_incremental_equals_full(conn, config, "late events")

    # 3. Two days later, with a day without events in between, then the days in between.
    later = late[late.event_timestamp.dt.floor("D") == last_day]
    load_frames(conn, "events", [later], source="two days later")
    build_features(conn, config)
    _assert_incremental_equals_full(conn, config, "a day with no events")
    load_frames(conn, "events", [late.drop(later.index)], source="the days between")
    build_features(conn, config)
    _assert_incremental_equals_full(conn, config, "the days between, late")

    # 4. Catalogue change: items 1-5 change category, items 6-10 their title (a new text).
    changed = items.copy()
    changed.loc[changed.item_id <= 5, "category"] = "kitchen"
    changed.loc[changed.item_id.between(6, 10), "title"] = changed.title + " (revised)"
    load_frames(conn, "items", [changed], source="items v2")
    report = build_features(conn, config)
    assert report.mode == "incremental" and report.changed_items == 10 and report.new_events == 0
    _assert_incremental_equals_full(conn, config, "catalogue change")
    # ... and a new item without events, in a category of its own (a row for every day)
    load_frames(conn, "items", [changed.iloc[:1].assign(item_id=999, category="outdoor", title="tent")], source="new item")
    assert build_features(conn, config).changed_items == 1
    _assert_incremental_equals_full(conn, config, "a new category without events")
    sequences = _snapshot(conn)["user_recent_sequence"]
    kitchen = conn.execute("SELECT category_id FROM interest.categories WHERE category = 'kitchen'").fetchone()[0]
    assert any(kitchen in row for row in sequences.recent_category_ids)

    # 5. ... and the revised texts' embeddings afterwards.
    _embed_stub_free(conn)
    report = build_features(conn, config)
    assert report.mode == "incremental" and report.embedded_items == 6
    _assert_incremental_equals_full(conn, config, "embeddings of changed texts")
    _assert_interest_embeddings_match_reference(conn, config.interest_embedding_events)
    assert build_features(conn, config).mode == "up to date"


def test_incremental_build_recomputes_only_from_the_first_changed_day(conn):
    """Rows of the days before an entity's first changed day are kept as they were (their
    created_timestamp does not move); a late event moves only its own user's rows from its day."""
    config = PipelineConfig.load()
    items, events = random_shop(seed=7)
    load_frames(conn, "items", [items], source="items")
    _embed_stub_free(conn)
    load_frames(conn, "events", [events], source="events")
    build_features(conn, config)
    before = fetch_frame(conn, "SELECT user_id, event_timestamp, created_timestamp FROM interest.user_daily_features")
    user, late_at = 3, events.event_timestamp.min() + pd.Timedelta(days=40, hours=1)
    late = pd.DataFrame({"user_id": [user], "item_id": [1], "event_type": ["view"], "event_timestamp": [late_at],
                         "price": [np.nan], "session_id": [None]})
    load_frames(conn, "events", [late], source="one late event")
    report = build_features(conn, config)
    assert report.users_recomputed == 1
    after = fetch_frame(conn, "SELECT user_id, event_timestamp, created_timestamp FROM interest.user_daily_features")
    merged = before.merge(after, on=["user_id", "event_timestamp"], how="outer", suffixes=("_before", "_after"))
    moved = merged[merged.created_timestamp_before.ne(merged.created_timestamp_after)]
    assert set(moved.user_id) == {user}
    assert moved.event_timestamp.min() > late_at.floor("D")
