"""Ingestion against a real Postgres: every kind of bad row, reconciliation, idempotency."""
from __future__ import annotations

import pandas as pd
import pytest

from materialize.database.tables import fetch_frame
from materialize.ingest.loader import load_file, load_frames
from materialize.ingest.validation import SchemaError, UnreadableInput

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


# ---------------------------------------------------------------------------- hostile files (issue 14)

HEADER = b"user_id,item_id,event_type,event_timestamp,price,session_id\n"


def _good(minute: int) -> bytes:
    return b"30,1,view,2026-01-01T10:%02d:00Z,,s\n" % minute


def _load_events_bytes(conn, tmp_path, body: bytes, **kwargs):
    load_file(conn, "items", _write(tmp_path, "items.csv", ITEMS_CSV), chunk_rows=1000)
    path = tmp_path / "events.csv"
    path.write_bytes(HEADER + body)
    report = load_file(conn, "events", path, chunk_rows=1000, **kwargs)
    assert report.reconciles, report.summary()
    return report, path


def _quarantine_raw(conn, kind="events"):
    return {line: raw for line, raw in conn.execute(
        "SELECT line, raw FROM interest.quarantine WHERE kind = %s ORDER BY line", (kind,))}


def test_a_nul_byte_in_any_field_quarantines_that_row_only(conn, tmp_path):
    """PostgreSQL text cannot hold NUL: before, the COPY failed and nothing of the file loaded."""
    lines = [b"3\x000,1,view,2026-01-01T11:00:00Z,,s\n", b"30,\x001,view,2026-01-01T11:01:00Z,,s\n",
             b"30,1,vi\x00ew,2026-01-01T11:02:00Z,,s\n", b"30,1,view,2026-01-01T11:03:00Z\x00,,s\n",
             b"30,1,view,2026-01-01T11:04:00Z,1\x00,s\n", b"30,1,view,2026-01-01T11:05:00Z,,s\x00\n"]
    report, _ = _load_events_bytes(conn, tmp_path, _good(0) + b"".join(lines) + _good(1))
    assert (report.rows_read, report.loaded, report.quarantined) == (8, 2, 6)
    fields = [field for field, _ in _quarantine(conn, "events").values()]
    assert fields == ["user_id", "item_id", "event_type", "event_timestamp", "price", "session_id"]
    assert "control character in 's\\x00'" in _quarantine(conn, "events")[8][1]
    raws = _quarantine_raw(conn)
    assert [raws[n]["text"] for n in range(3, 9)] == [line[:-1].decode().replace("\x00", "\\x00") for line in lines]


def test_a_latin1_byte_in_the_first_8kb_quarantines_its_row_with_the_field(conn, tmp_path):
    """Before: UnicodeDecodeError without a line number, and no row of the file loaded."""
    body = _good(0) + b"30,1,view,2026-01-01T11:00:00Z,,caf\xe9\n" + b"30,1,vi\xe9w,2026-01-01T11:01:00Z,,s\n" + _good(1)
    report, _ = _load_events_bytes(conn, tmp_path, body)
    assert (report.rows_read, report.loaded, report.quarantined) == (4, 2, 2)
    q = _quarantine(conn, "events")
    assert q[3] == ("session_id", "session_id: not UTF-8 text: 'caf\\xe9'")
    assert q[4][0] == "event_type" and "'vi\\xe9w'" in q[4][1]
    assert _quarantine_raw(conn)[3] == {"text": "30,1,view,2026-01-01T11:00:00Z,,caf\\xe9"}


def test_control_characters_and_broken_quoting_quarantine_their_own_line(conn, tmp_path):
    body = (_good(0) + b"30,1,view,2026-01-01T11:00:00Z,,a\x1bb\n" + b'30,1,view,2026-01-01T11:01:00Z,,"open\n'
            + _good(1) + b'30,1,view,2026-01-01T11:02:00Z,,"x"y\n' + b"30,1,view,2026-01-01T11:03:00Z,,a\rb\n"
            + b"30,1,view,2026-01-01T11:04:00Z,,tab\there\n" + b'30,1,view,2026-01-01T11:05:00Z,,"a ""b"""\n')
    report, _ = _load_events_bytes(conn, tmp_path, body)
    q = _quarantine(conn, "events")
    assert q == {3: ("session_id", "session_id: control character in 'a\\x1bb'"),
                 4: (None, "malformed line: unclosed quote"),
                 6: (None, "malformed line: text after a closing quote"),
                 7: (None, "malformed line: carriage return inside a field")}
    assert (report.rows_read, report.loaded) == (8, 4)
    sessions = [s for (s,) in conn.execute("SELECT session_id FROM interest.events WHERE user_id = 30 ORDER BY event_timestamp")]
    assert sessions == ["s", "s", "tab\there", 'a "b"']


def test_a_line_of_10_mb_is_quarantined_and_the_rest_loads(conn, tmp_path):
    """Before: Arrow's 'straddling object' error ended the load."""
    long_line = b"30,1,view,2026-01-01T11:00:00Z,," + b"x" * (10 << 20) + b"\n"
    report, _ = _load_events_bytes(conn, tmp_path, _good(0) + long_line + _good(1) + long_line[:-1])
    assert (report.rows_read, report.loaded, report.quarantined) == (4, 2, 2)
    q = _quarantine(conn, "events")
    assert q[3] == (None, f"malformed line: {len(long_line) - 1:,} bytes long (at most 1,048,576)") and 5 in q
    assert _quarantine_raw(conn)[3] == {"text": long_line[:1024].decode(), "truncated": True}


def test_quarantine_keeps_the_rows_text_as_it_was_in_the_file(conn, tmp_path):
    """Before: an unknown item's raw values were the converted ones (event type '0', a
    re-formatted timestamp)."""
    body = b" 31 ,999,VIEW,2026-01-01T12:00:00+02:00,1.5,s\n" + b"31,1,like,1767261600,,s\n"
    _load_events_bytes(conn, tmp_path, body)
    assert _quarantine_raw(conn) == {2: {"text": " 31 ,999,VIEW,2026-01-01T12:00:00+02:00,1.5,s"},
                                     3: {"text": "31,1,like,1767261600,,s"}}


def test_ids_and_prices_out_of_range_are_quarantined_and_rounding_is_counted(conn, tmp_path):
    """2**63 overflowed the int64 cast and 1e20 the numeric(14,2) column: both ended the load."""
    body = (b"9223372036854775808,1,view,2026-01-01T11:00:00Z,,s\n" + b"30,1,view,2026-01-01T11:01:00Z,1e20,s\n"
            + b"9223372036854775807,1,view,2026-01-01T11:02:00Z,0.125,s\n" + b"30,1,view,2026-01-01T11:03:00Z,1E3,s\n"
            + b"30,1,view,2026-01-01T11:04:00Z,12.50,s\n")
    report, _ = _load_events_bytes(conn, tmp_path, body)
    q = _quarantine(conn, "events")
    assert q[2][0] == "user_id" and q[3] == ("price", "price: must be a number >= 0 and <= 999999999999.99")
    assert report.loaded == 3 and report.conversions == {"price rounded to cents": 1}
    assert "price rounded to cents: 1 rows" in report.summary()
    prices = [str(p) for (p,) in conn.execute("SELECT price FROM interest.events ORDER BY event_timestamp")]
    assert prices == ["0.13", "1000.00", "12.50"]


def test_events_before_min_event_time_are_quarantined_so_daily_features_stay_small(conn, tmp_path, settings):
    """Two events stamped 1970-01-01 made the daily feature tables span every day since 1970."""
    from materialize.features.builder import build_features

    body = (_good(0) + b"30,2,view,1970-01-01T00:00:00Z,,s\n" + b"30,2,view,0,,s\n" + _good(1)
            + b"31,1,cart,1994-12-31T23:59:59Z,,s\n")
    report, _ = _load_events_bytes(conn, tmp_path, body, min_event_time=settings.pipeline.min_event_time)
    assert (report.loaded, report.quarantined) == (2, 3)
    q = _quarantine(conn, "events")
    assert q[3] == ("event_timestamp",
                    "event_timestamp: before min_event_time 1995-01-01T00:00:00+00:00 ('1970-01-01T00:00:00Z')")
    assert q[4][0] == "event_timestamp" and q[6][0] == "event_timestamp"
    build_features(conn, settings.pipeline, full=True)
    days = conn.execute("SELECT count(DISTINCT event_timestamp) FROM interest.category_daily_features").fetchone()[0]
    assert days < 60


def test_positions_in_parquet_files_are_rows(conn, tmp_path):
    load_file(conn, "items", _write(tmp_path, "items.csv", ITEMS_CSV), chunk_rows=1000)
    path = tmp_path / "events.parquet"
    pd.DataFrame({"user_id": [1, 2], "item_id": [1, 77], "event_type": ["view", "view"],
                  "event_timestamp": ["2026-02-01T00:00:00Z", "2026-02-01T00:00:00Z"],
                  "session_id": ["a", "b\x00"]}).to_parquet(path)
    report = load_file(conn, "events", path, chunk_rows=10)
    assert report.examples == [f"{path} row 2: session_id: control character in 'b\\x00'"]
    assert _quarantine_raw(conn)[2]["session_id"] == "b\\x00"


def test_an_item_repeated_with_the_same_price_written_differently_is_a_duplicate(conn, tmp_path):
    items = "item_id,category,title,price\n1,books,A,12\n1,books,A,12.00\n1,books,A,12.5\n"
    report = load_file(conn, "items", _write(tmp_path, "items.csv", items), chunk_rows=1000)
    assert (report.loaded, report.duplicate, report.quarantined) == (1, 1, 1)
    assert _quarantine(conn, "items")[4][1] == "item_id: item 1 repeats line 2 with different values"


@pytest.mark.parametrize(
    "name, content, words",
    [
        ("empty.csv", b"", "empty file"),
        ("binary.csv", bytes(range(256)) * 64, "wrong events columns"),
        ("mac.csv", HEADER.replace(b"\n", b"\r") + _good(0).replace(b"\n", b"\r"), "carriage return only"),
        ("events.parquet", b"PAR1 not really", "cannot be read as Parquet"),
        ("events.json", b"{}", "unsupported file type"),
    ],
)
def test_what_is_not_a_table_is_refused_in_one_line_naming_the_file(conn, tmp_path, name, content, words):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(UnreadableInput) as error:
        load_file(conn, "events", path, chunk_rows=10)
    message = str(error.value)
    assert message.startswith(str(path)) and words in message and "\n" not in message
    assert len(message) < 400


def test_the_cli_refuses_an_unreadable_file_without_a_traceback(fresh_db, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from interest_shift.cli import main

    for key, value in {"INTEREST_PG_HOST": fresh_db.host, "INTEREST_PG_PORT": str(fresh_db.port),
                       "INTEREST_PG_DB": fresh_db.database, "INTEREST_PG_USER": fresh_db.user,
                       "INTEREST_PG_PASSWORD": fresh_db.password, "INTEREST_PG_SSLMODE": fresh_db.sslmode}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("INTEREST_DATABASE_URL", raising=False)
    path = tmp_path / "events.csv"
    path.write_bytes(b"")
    result = CliRunner().invoke(main, ["load", "files", "--events", str(path)])
    assert result.exit_code == 1, result.output
    assert result.output.strip().splitlines()[-1] == f"Error: {path}: empty file, expected a header line"
    assert "Traceback" not in result.output


def test_a_time_without_offset_is_utc_whatever_the_row_before_it(conn, tmp_path):
    """Found by test_hostile_files: parsed in one call, '09:00' after '10:00+02:00' was
    taken as 09:00+02:00 and loaded as 07:00 UTC."""
    body = b"40,1,view,2026-01-01T10:00:00+02:00,,\n40,1,click,2026-01-01 09:00:00,,\n40,1,cart,2026-01-01T09:30:00-05:00,,\n"
    _load_events_bytes(conn, tmp_path, body)
    stamps = [ts for (ts,) in conn.execute("SELECT event_timestamp FROM interest.events WHERE user_id = 40 ORDER BY event_type")]
    assert stamps == [pd.Timestamp(t, tz="UTC") for t in ("2026-01-01 08:00", "2026-01-01 09:00", "2026-01-01 14:30")]


def test_catalogue_changes_keep_every_version(conn, tmp_path):
    load_file(conn, "items", _write(tmp_path, "a.csv", ITEMS_CSV), chunk_rows=1000)
    changed = "item_id,category,title,description,price\n1,books,Deep Learning 2nd ed.,A book about neural networks,45.00\n2,books,Feature Stores,Serving features online,30.5\n"
    load_file(conn, "items", _write(tmp_path, "b.csv", changed), chunk_rows=1000)
    load_file(conn, "items", _write(tmp_path, "b.csv", changed), chunk_rows=1000)  # the same again: no new version
    versions = fetch_frame(conn, "SELECT item_id, valid_from, valid_to, title, price FROM interest.item_versions "
                                 "WHERE item_id IN (1, 2) ORDER BY item_id, valid_from")
    current = dict(conn.execute("SELECT item_id, valid_from FROM interest.items"))
    assert list(versions.item_id) == [1, 1, 2]
    old, new = versions.iloc[0], versions.iloc[1]
    assert old.valid_from == pd.Timestamp(0, tz="UTC") and old.valid_to == new.valid_from == current[1]
    assert old.title != new.title == "Deep Learning 2nd ed." and pd.isna(new.valid_to)
    assert pd.isna(versions.iloc[2].valid_to)
    # item_catalog (the Feast source) has a row per version, stamped with its valid_from
    catalog = fetch_frame(conn, "SELECT item_id, event_timestamp FROM interest.item_catalog WHERE item_id = 1 ORDER BY 2")
    assert list(catalog.event_timestamp) == list(versions.valid_from[:2])
