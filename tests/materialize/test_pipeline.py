"""End to end on a small synthetic shop: load, embed, build, apply, materialize.

Checks that the online store answers exactly what the offline store would at this moment
(the latest values within each view's ttl), that unchanged item texts are not embedded
again, and that the whole run is safe to repeat.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from materialize.database.tables import fetch_frame
from materialize.ingest.loader import load_frames
from materialize.pipeline import Pipeline
from materialize.ingest.sources.synthetic import SyntheticConfig, SyntheticShop
from tests.conftest import new_database, settings_for


CONFIG = SyntheticConfig(n_users=1000, n_items=150, n_categories=6, days=45, sessions_per_user_mean=4.0, seed=5)


@pytest.fixture(scope="module")
def pipeline(pg_server, settings):
    with new_database(pg_server) as pg:
        with Pipeline(settings_for(settings, pg), progress=False) as pipeline:
            summary = pipeline.run(lambda p: p.load_synthetic(CONFIG))
            pipeline.summary = summary
            yield pipeline


def test_run_summary_reconciles(pipeline):
    items, events = pipeline.summary.loads
    assert items.reconciles and events.reconciles
    assert events.loaded > 10_000 and events.quarantined == 0
    assert pipeline.summary.embedding.texts_embedded == CONFIG.n_items
    assert pipeline.summary.materialize.online_rows["user_activity"] == pipeline.conn.execute(
        "SELECT count(DISTINCT user_id) FROM interest.events"
    ).fetchone()[0]
    shifts = pipeline.conn.execute("SELECT count(*) FROM interest.planted_interest_shifts").fetchone()[0]
    assert shifts == len(SyntheticShop(CONFIG).interest_shifts()) > 0


def _ttl_days(store, view: str) -> int:
    """The registered feature view's ttl in days (the daily views' ``DAILY_TTL``)."""
    return store.get_feature_view(view).ttl.days


def _latest(conn, table: str, key: str, ttl_days: int | None = None) -> pd.DataFrame:
    """The offline store's answer at now: each entity's latest row, within the ttl."""
    within_ttl = f"AND event_timestamp >= now() - interval '{ttl_days} days'" if ttl_days else ""  # a constant
    return fetch_frame(
        conn,
        f"SELECT DISTINCT ON ({key}) * FROM interest.{table} WHERE event_timestamp <= now() {within_ttl} "
        f"ORDER BY {key}, event_timestamp DESC",
    ).set_index(key)


def _assert_same(online: pd.DataFrame, offline: pd.DataFrame, columns: list[str]) -> None:
    for column in columns:
        for key, value in online[column].items():
            expected = offline.at[key, column] if key in offline.index else None  # none within the ttl
            if isinstance(expected, (list, np.ndarray)):
                np.testing.assert_allclose(np.asarray(value, dtype=float), np.asarray(expected, dtype=float), rtol=1e-6, err_msg=f"{column} {key}")
            elif expected is None or (isinstance(expected, float) and np.isnan(expected)):
                assert value is None or (isinstance(value, float) and np.isnan(value)), (column, key, value)
            else:
                assert value == pytest.approx(expected, rel=1e-6), (column, key, value, expected)


def test_online_values_equal_latest_offline_values(pipeline):
    store, conn = pipeline.store, pipeline.conn
    users = [int(u) for u in fetch_frame(conn, "SELECT DISTINCT user_id FROM interest.events").user_id]
    user_columns = ["view_count_7d", "purchase_count_30d", "spend_30d", "session_count_7d", "days_since_last_event",
                    "category_share_7d", "dominant_category_30d", "category_divergence_7d_30d", "days_since_interest_shift"]
    online = pd.DataFrame(
        store.get_online_features(
            features=[f"user_activity:{c}" for c in user_columns[:5]] + [f"user_interest_shift:{c}" for c in user_columns[5:]]
            + ["user_recent_sequence:recent_item_ids", "user_recent_sequence:recent_gap_seconds"],
            entity_rows=[{"user_id": u} for u in users],
        ).to_dict()
    ).set_index("user_id")
    _assert_same(online, _latest(conn, "user_daily_features", "user_id", _ttl_days(store, "user_activity")), user_columns)
    _assert_same(online, _latest(conn, "user_recent_sequence", "user_id"), ["recent_item_ids", "recent_gap_seconds"])

    items = list(range(1, CONFIG.n_items + 1))
    online_items = pd.DataFrame(
        store.get_online_features(
            features=["item_popularity:item_view_count_7d", "item_popularity:item_conversion_rate_30d", "item_text_embedding:embedding"],
            entity_rows=[{"item_id": i} for i in items],
        ).to_dict()
    ).set_index("item_id")
    _assert_same(online_items, _latest(conn, "item_daily_features", "item_id", _ttl_days(store, "item_popularity")),
                 ["item_view_count_7d", "item_conversion_rate_30d"])
    _assert_same(online_items, _latest(conn, "item_embeddings", "item_id"), ["embedding"])


def test_unchanged_items_are_not_embedded_again(pipeline):
    conn = pipeline.conn
    assert pipeline.embed().texts_embedded == 0
    catalogue = SyntheticShop(CONFIG).items()
    catalogue.loc[catalogue.item_id == 3, "title"] = "A completely new title"
    report = load_frames(conn, "items", [catalogue], source="catalogue v2")
    assert (report.loaded, report.updated, report.duplicate) == (1, 1, CONFIG.n_items - 1)
    embedding = pipeline.embed()
    assert (embedding.texts_embedded, embedding.item_versions_added) == (1, 1)
    versions = fetch_frame(conn, "SELECT event_timestamp, embedding FROM interest.item_embeddings WHERE item_id = 3 ORDER BY 1")
    assert len(versions) == 2 and not np.allclose(versions.embedding[0], versions.embedding[1])


def test_repeating_the_run_changes_nothing(pipeline):
    pipeline.run(lambda p: p.load_synthetic(CONFIG))  # re-syncs the catalogue edited above
    before = {t: int(n) for t, n in pipeline.status()["tables"].itertuples(index=False)}
    again = pipeline.run(lambda p: p.load_synthetic(CONFIG))
    after = {t: int(n) for t, n in pipeline.status()["tables"].itertuples(index=False)}
    assert after == before
    assert again.features.mode == "up to date" and again.embedding.texts_embedded == 0
    assert all(r.loaded == 0 and r.reconciles for r in again.loads)
    # A run on a later day: the default end has moved, the shop loaded here has not.
    later = pipeline.run(lambda p: p.load_synthetic(dataclasses.replace(CONFIG, end=CONFIG.end + pd.Timedelta(days=3))))
    assert {t: int(n) for t, n in pipeline.status()["tables"].itertuples(index=False)} == before
    assert all(r.loaded == 0 for r in later.loads)


def test_stock_feast_cli_applies_and_materializes(pipeline):
    """`feast apply` and `feast materialize-incremental` from feature_repo/, as a user runs them."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = pipeline.settings.feature_repo_dir
    env = {**os.environ, **pipeline.settings.postgres.feast_environment(pipeline.pgvector)}
    feast = str(Path(sys.executable).with_name("feast"))
    for args in (["apply"], ["materialize-incremental", "2026-11-01T00:00:00"], ["feature-services", "list"]):
        done = subprocess.run([feast, *args], cwd=repo, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, (args, done.stdout[-2000:], done.stderr[-2000:])
    assert "user_item_training" in done.stdout and "user_profile_serving" in done.stdout


def test_an_emptied_online_store_is_refilled_by_the_next_materialize(pipeline):
    """After switching online stores the registry still remembers the old store's runs;
    `materialize` loads every view whose online table is empty from the start again."""
    from psycopg import sql

    from materialize.feature_store.online_store import online_table_name

    before = pipeline.materialize().online_rows
    store = pipeline.store
    for view in ("user_activity", "item_catalog"):
        pipeline.conn.execute(sql.SQL("TRUNCATE {}").format(
            sql.Identifier(store.config.online_store.db_schema, online_table_name(store.project, view))))
    pipeline.conn.commit()
    report = pipeline.materialize()
    never_filled = {view for view, rows in before.items() if rows == 0}  # the feedback views: no recommendation logged
    assert sorted(set(report.first_time) - never_filled) == ["item_catalog", "user_activity"]
    assert report.online_rows == before and before["user_activity"] > 0


def test_rows_rewritten_for_past_days_reach_the_online_store(pipeline):
    """A late event rebuilds a user's rows of past days, and an embedding run adds a row
    stamped with its catalogue version's (earlier) load time: both are older than the last
    materialization's end, and the next `materialize` still loads them."""
    conn, store = pipeline.conn, pipeline.store
    pipeline.materialize()
    user, last_event, item = conn.execute(
        "SELECT user_id, max(event_timestamp), min(item_id) FROM interest.events GROUP BY user_id "
        "HAVING count(*) BETWEEN 5 AND 40 ORDER BY user_id LIMIT 1").fetchone()
    late = pd.DataFrame({"user_id": [user], "item_id": [CONFIG.n_items - item + 1], "event_type": ["view"],
                         "event_timestamp": [pd.Timestamp(last_event) - pd.Timedelta(days=2)]})
    assert load_frames(conn, "events", [late], source="a late event").loaded == 1
    catalogue = SyntheticShop(CONFIG).items()
    catalogue.loc[catalogue.item_id == 7, "title"] = "A title loaded before the last materialization"
    assert load_frames(conn, "items", [catalogue], source="catalogue v3").updated == 1
    assert pipeline.build().mode == "incremental"
    pipeline.materialize()  # the new catalogue version has no embedding yet
    assert pipeline.embed().item_versions_added == 1
    pipeline.materialize()

    online = pd.DataFrame(store.get_online_features(
        features=["user_recent_sequence:recent_item_ids", "user_activity:view_count_30d"],
        entity_rows=[{"user_id": user}]).to_dict()).set_index("user_id")
    sequence = _latest(conn, "user_recent_sequence", "user_id")
    assert late.item_id[0] in sequence.at[user, "recent_item_ids"]  # the late event is in the latest row
    _assert_same(online, sequence, ["recent_item_ids"])
    _assert_same(online, _latest(conn, "user_daily_features", "user_id", _ttl_days(store, "user_activity")), ["view_count_30d"])
    online_item = pd.DataFrame(store.get_online_features(
        features=["item_text_embedding:embedding"], entity_rows=[{"item_id": 7}]).to_dict()).set_index("item_id")
    _assert_same(online_item, _latest(conn, "item_embeddings", "item_id"), ["embedding"])
