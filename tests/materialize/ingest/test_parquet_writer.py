"""The spark profile's event ingestion validates, quarantines and counts as the loader does.

The same hostile frame goes through ``loader.load_frames`` (database A) and
``parquet_writer.load_event_frames_parquet`` (database B): the counts, the quarantined
lines and reasons are the same, and the Parquet rows equal the rows in ``interest.events``.
"""
from __future__ import annotations

import pandas as pd
import psycopg
import pyarrow.parquet as pq

from materialize.database.tables import fetch_frame
from materialize.ingest import loader
from materialize.ingest.parquet_writer import export_catalogue, load_event_frames_parquet
from tests.conftest import new_database

NOW = pd.Timestamp("2026-10-01T00:00:00Z")
ITEMS = pd.DataFrame({"item_id": [1, 2, 3], "category": ["a", "b", "a"], "title": ["x", "y", "z"],
                      "description": [None, "d", "e"], "price": [1.5, 2.25, 3.0]})
EVENTS = pd.DataFrame({
    "user_id": [1, 1, 2, 2, 3, 3, 4, -5, 6, 7],
    "item_id": [1, 2, 3, 99, 1, 1, 2, 1, 3, 2],
    "event_type": ["view", "purchase", "click", "view", "cart", "cart", "teleport", "view", "view", "purchase"],
    "event_timestamp": ["2026-09-01T10:00:00Z", "2026-09-01T10:05:00Z", "2026-09-02T23:59:59.999999+00:00",
                        "2026-09-03T00:00:00Z", "2026-09-03T01:00:00Z", "2026-09-03T01:00:00Z",
                        "2026-09-04T00:00:00Z", "2026-09-04T00:00:00Z", "2027-01-01T00:00:00Z", "2026-09-05T12:00:00+02:00"],
    "price": ["1.50", "2.255", None, "1", "3", "3", "1", "1", "1", "0.125"],
    "session_id": ["s1", "s1", " s2 ", None, "s3", "s3", "s4", "s5", "s6", "s7"],
    "event_id": ["e1", None, None, None, None, None, None, None, None, "e1"],
})


def test_parquet_ingestion_counts_and_quarantines_like_the_loader(pg_server, tmp_path):
    kwargs = {"now": NOW, "future_tolerance_s": 300}
    with new_database(pg_server) as pg_a, new_database(pg_server) as pg_b:
        with psycopg.connect(pg_a.conninfo()) as a, psycopg.connect(pg_b.conninfo()) as b:
            for conn in (a, b):
                loader.load_frames(conn, "items", [ITEMS], source="items", **kwargs)
            expected = loader.load_frames(a, "events", [EVENTS], source="events", **kwargs)
            actual = load_event_frames_parquet(b, [EVENTS], str(tmp_path), source="events", **kwargs)
            assert (actual.rows_read, actual.loaded, actual.quarantined, actual.duplicate) == \
                   (expected.rows_read, expected.loaded, expected.quarantined, expected.duplicate) == (10, 4, 4, 2)
            assert actual.conversions == expected.conversions
            quarantine = "SELECT line, field, reason FROM interest.quarantine ORDER BY line"
            assert fetch_frame(b, quarantine).equals(fetch_frame(a, quarantine))
            runs = "SELECT kind, status, rows_read, loaded, quarantined, duplicate FROM interest.ingest_runs ORDER BY run_id"
            assert fetch_frame(b, runs).equals(fetch_frame(a, runs))
            rows = fetch_frame(a, "SELECT user_id, item_id, event_type, event_timestamp, price, session_id FROM interest.events")
            export_catalogue(b, str(tmp_path))
    written = pq.read_table(tmp_path / "events").to_pandas()
    assert sorted(written["day"].astype(str).unique()) == ["2026-09-01", "2026-09-02", "2026-09-03"]
    key = ["user_id", "event_timestamp", "item_id"]
    written = written.drop(columns=["day", "run_id", "line", "event_id", "recommendation_id"]).sort_values(key).reset_index(drop=True)
    rows = rows.sort_values(key).reset_index(drop=True)
    assert (written["event_timestamp"] == pd.to_datetime(rows["event_timestamp"], utc=True)).all()
    assert [str(p) if p is not None else None for p in written["price"]] == \
           [str(p) if p is not None else None for p in rows["price"]]
    for column in ("user_id", "item_id", "event_type", "session_id"):
        assert list(written[column]) == list(rows[column]), column
    catalogue = pq.read_table(tmp_path / "features" / "item_catalog").to_pandas().sort_values("item_id")
    assert list(catalogue["item_price"]) == [1.5, 2.25, 3.0]
