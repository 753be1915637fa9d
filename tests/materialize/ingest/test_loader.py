"""Ingestion against a real Postgres: every kind of bad row, reconciliation, idempotency."""
from __future__ import annotations

import pandas as pd
import pytest

from materialize.database.tables import fetch_frame
from materialize.ingest.loader import load_file, load_frames
from materialize.ingest.validation import SchemaError

ITEMS_CSV = """item_id,category,title,description,price
1,books,Deep Learning,A book about neural networks,45.00
2,books,Feature Stores,Serving features online,30.5
3,garden,Garden Hose,Twenty metres,12
x7,garden,Bad Id,,5
4,,No Category,,5
5,toys,Negative,,-1
6,toys,Wooden Train,A train,not-a-price
3,garden,Garden Hose,Twenty metres,12
3,garden,Garden Hose XL,Thirty metres,14
"""

EVENTS_CSV = """user_id,item_id,event_type,event_timestamp,price,session_id
10,1,view,2026-01-01T10:00:00Z,,s1
10,1,click,2026-01-01T10:01:00Z,,s1
10,1,purchase,2026-01-01T10:05:00+00:00,45.00,s1
11,2,view,1767261600,,
11,2,view,1767261600,,
,2,view,2026-01-02T10:00:00Z,,
12,abc,view,2026-01-02T10:00:00Z,,
12,999,view,2026-01-02T10:00:00Z,,
12,2,like,2026-01-02T10:00:00Z,,
12,2,view,yesterday,,
12,2,view,2099-01-01T00:00:00Z,,
12,2,purchase,2026-01-02T10:00:00Z,-3,
12,2,view,2026-01-02T11:00:00Z
12,3,cart,2026-01-03 09:00:00,12,s9
"""


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def _quarantine(conn, kind):
    return {
        line: (field, reason)
        for line, field, reason in conn.execute(
            "SELECT line, field, reason FROM interest.quarantine WHERE kind = %s ORDER BY line", (kind,)
        )
    }


def test_items_bad_rows_are_quarantined_with_reasons(conn, tmp_path):
    report = load_file(conn, "items", _write(tmp_path, "items.csv", ITEMS_CSV), chunk_rows=1000)
    assert report.reconciles
    assert (report.rows_read, report.loaded, report.quarantined, report.duplicate) == (9, 3, 5, 1)
    q = _quarantine(conn, "items")
    assert q[5][0] == "item_id" and "x7" in q[5][1]
    assert q[6][0] == "category" and "missing" in q[6][1]
    assert q[7][0] == "price" and ">= 0" in q[7][1]
    assert q[8][0] == "price" and "not-a-price" in q[8][1]
    assert q[10][0] == "item_id" and "repeats line 4" in q[10][1]
    titles = dict(conn.execute("SELECT item_id, title FROM interest.items"))
    assert titles == {1: "Deep Learning", 2: "Feature Stores", 3: "Garden Hose"}


def test_events_every_bad_kind_and_nothing_good_lost(conn, tmp_path):
    load_file(conn, "items", _write(tmp_path, "items.csv", ITEMS_CSV), chunk_rows=1000)
    events = _write(tmp_path, "events.csv", EVENTS_CSV)
    report = load_file(conn, "events", events, chunk_rows=4)  # several chunks
    assert report.reconciles, report.summary()
    q = _quarantine(conn, "events")
    expected = {
        7: ("user_id", "missing"),
        8: ("item_id", "abc"),
        9: ("item_id", "unknown item 999"),
        10: ("event_type", "like"),
        11: ("event_timestamp", "unparseable"),
        12: ("event_timestamp", "future"),
        13: ("price", ">= 0"),
        14: (None, "expected 6 fields, found 4"),
    }
    assert set(q) == set(expected)
    for line, (field, words) in expected.items():
        assert q[line][0] == field and words in q[line][1], (line, q[line])
    assert report.rows_read == 14
    assert report.duplicate == 1 and report.loaded == 5 and report.quarantined == 8
    loaded = fetch_frame(conn, "SELECT * FROM interest.events ORDER BY user_id, event_timestamp")
    assert list(loaded.user_id) == [10, 10, 10, 11, 12]
    assert loaded.loc[4, "event_timestamp"] == pd.Timestamp("2026-01-03 09:00", tz="UTC")
    assert loaded.loc[3, "event_timestamp"] == pd.Timestamp(1767261600, unit="s", tz="UTC")


def test_reloading_the_same_files_changes_nothing(conn, tmp_path):
    items = _write(tmp_path, "items.csv", ITEMS_CSV)
    events = _write(tmp_path, "events.csv", EVENTS_CSV)
    load_file(conn, "items", items, chunk_rows=1000)
    load_file(conn, "events", events, chunk_rows=1000)

    def snapshot():
        return [
            conn.execute(f"SELECT count(*) FROM interest.{t}").fetchone()[0]
            for t in ("items", "events", "quarantine", "categories")
        ] + [conn.execute("SELECT array_agg(valid_from ORDER BY item_id) FROM interest.items").fetchone()[0]]

    before = snapshot()
    again_items = load_file(conn, "items", items, chunk_rows=1000)
    again = load_file(conn, "events", events, chunk_rows=1000)
    assert snapshot() == before
    assert again_items.loaded == 0 and again_items.reconciles
    assert again.loaded == 0 and again.reconciles
    assert again.duplicate == 6 and again.quarantined == 8


def test_changed_item_is_updated_and_stamped(conn, tmp_path):
    load_file(conn, "items", _write(tmp_path, "a.csv", ITEMS_CSV), chunk_rows=1000)
    changed = "item_id,category,title,description,price\n1,books,Deep Learning 2nd ed.,A book about neural networks,45.00\n2,books,Feature Stores,Serving features online,30.5\n"
    report = load_file(conn, "items", _write(tmp_path, "b.csv", changed), chunk_rows=1000)
    assert (report.loaded, report.updated, report.duplicate) == (1, 1, 1)
    valid_from = dict(conn.execute("SELECT item_id, valid_from FROM interest.items"))
    assert valid_from[1] > valid_from[2] == pd.Timestamp(0, tz="UTC")


@pytest.mark.parametrize(
    "header, words",
    [
        ("user_id,item_id,event_timestamp", "missing required column(s) ['event_type']"),
        ("user_id,item_id,event_type,event_timestamp,colour", "unexpected column(s) ['colour']"),
    ],
)
def test_wrong_column_set_names_file_and_fields(conn, tmp_path, header, words):
    path = _write(tmp_path, "bad.csv", header + "\n1,2,3\n")
    with pytest.raises(SchemaError) as error:
        load_file(conn, "events", path, chunk_rows=10)
    assert str(path) in str(error.value) and words in str(error.value)
    assert conn.execute("SELECT count(*) FROM interest.events").fetchone()[0] == 0


def test_parquet_and_typed_frames(conn, tmp_path):
    load_file(conn, "items", _write(tmp_path, "items.csv", ITEMS_CSV), chunk_rows=1000)
    frame = pd.DataFrame(
        {
            "user_id": [1, 2, 2],
            "item_id": [1, 2, 77],
            "event_type": ["view", "cart", "view"],
            "event_timestamp": pd.to_datetime(["2026-02-01", "2026-02-02", "2026-02-03"], utc=True),
            "price": [None, 30.5, None],
        }
    )
    path = tmp_path / "events.parquet"
    frame.to_parquet(path)
    report = load_file(conn, "events", path, chunk_rows=2)
    assert (report.loaded, report.quarantined) == (2, 1) and report.reconciles
    assert _quarantine(conn, "events")[3][0] == "item_id"
    again = load_frames(conn, "events", [frame], source="unit-test-frame")
    assert (again.loaded, again.duplicate, again.quarantined) == (0, 2, 1)


def test_a_load_that_stops_midway_is_marked_failed_and_keeps_its_committed_chunks(conn, tmp_path):
    """An input that breaks after its first chunk (a file read error, say): the run is
    marked failed with the error, the first chunk stays loaded and counted."""
    load_file(conn, "items", _write(tmp_path, "items.csv", ITEMS_CSV), chunk_rows=1000)
    good = pd.DataFrame({"user_id": [1, 2], "item_id": [1, 2], "event_type": ["view", "view"],
                         "event_timestamp": ["2026-01-01T00:00:00Z", "2026-01-01T00:01:00Z"]})

    def frames():
        yield good
        raise OSError("the disk went away")

    with pytest.raises(OSError):
        load_frames(conn, "events", frames(), source="broken-after-one-chunk")
    status, rows_read, loaded, error, finished = conn.execute(
        "SELECT status, rows_read, loaded, error, finished_at FROM interest.ingest_runs "
        "WHERE source = 'broken-after-one-chunk'").fetchone()
    assert (status, rows_read, loaded) == ("failed", 2, 2) and error == "OSError: the disk went away"
    assert finished is not None
    assert conn.execute("SELECT count(*) FROM interest.events").fetchone()[0] == 2


def test_a_byte_order_mark_and_spaces_in_the_header_are_accepted(conn, tmp_path):
    """What spreadsheet programs write as "CSV UTF-8", with ", " between the column names."""
    items = tmp_path / "items.csv"
    items.write_bytes(b"\xef\xbb\xbf" + ITEMS_CSV.replace(",", ", ", 4).encode())
    report = load_file(conn, "items", items, chunk_rows=1000)
    # the same counts as the plain file (test_items_bad_rows_are_quarantined_with_reasons)
    assert (report.rows_read, report.loaded, report.quarantined, report.duplicate) == (9, 3, 5, 1)
    titles = dict(conn.execute("SELECT item_id, title FROM interest.items"))
    assert titles == {1: "Deep Learning", 2: "Feature Stores", 3: "Garden Hose"}


def test_null_spellings_are_values_not_silent_nulls(conn, tmp_path):
    """A price of NaN, N/A or null is not a number (quarantined); a session called NA is a
    session called NA. Only an empty field is missing."""
    load_file(conn, "items", _write(tmp_path, "items.csv", ITEMS_CSV), chunk_rows=1000)
    events = _write(tmp_path, "events.csv", "user_id,item_id,event_type,event_timestamp,price,session_id\n"
                    "20,1,purchase,2026-01-01T10:00:00Z,NaN,s1\n"
                    "20,1,purchase,2026-01-01T10:01:00Z,N/A,s1\n"
                    "20,1,purchase,2026-01-01T10:02:00Z,null,s1\n"
                    "20,1,view,2026-01-01T10:03:00Z,,NA\n"
                    "20,1,view,2026-01-01T10:04:00Z,,null\n")
    report = load_file(conn, "events", events, chunk_rows=1000)
    assert (report.rows_read, report.loaded, report.quarantined) == (5, 2, 3)
    reasons = [reason for _, reason in _quarantine(conn, "events").values()]
    assert all("price: not a number" in r for r in reasons) and {"'NaN'", "'N/A'", "'null'"} <= {
        r.split(": ")[-1] for r in reasons}
    sessions = [r[0] for r in conn.execute("SELECT session_id FROM interest.events WHERE user_id = 20 ORDER BY event_timestamp")]
    assert sessions == ["NA", "null"]
