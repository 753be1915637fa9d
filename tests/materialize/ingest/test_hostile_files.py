"""Property-based: random event files from hostile bytes and values load without an
exception, every line is accounted for, and nothing is changed on the way (issue 14).

For every file: ``read = loaded + quarantined + duplicate``; the rows in
``interest.events`` are exactly the lines that were not quarantined, read the documented
way (fields trimmed, event type case-insensitive, timestamps to UTC, prices rounded to
cents, the first of repeated events kept); every quarantined line's raw text is the
file's line (with ``printable``'s escapes).
"""
from __future__ import annotations

import csv
import io
from decimal import ROUND_HALF_UP, Decimal

import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from materialize.ingest.loader import load_file
from materialize.ingest.schema import EVENT_TYPE_CODES, EVENTS
from materialize.ingest.validation import printable

CATALOGUE = "item_id,category,title\n1,books,A\n2,books,B\n3,garden,C\n"
EPOCH_2026 = 1767225600

hostile_text = st.text(max_size=8)  # any code point but surrogates: NUL, controls, quotes, commas, line breaks
good = {
    "user_id": st.one_of(st.integers(1, 4).map(str), st.sampled_from([" 3 ", "+4", "007", "9223372036854775807"])),
    "item_id": st.integers(1, 3).map(str),
    "event_type": st.sampled_from(["view", "click", "cart", "purchase", "VIEW", " Cart "]),
    "event_timestamp": st.one_of(
        st.integers(EPOCH_2026 - 86400 * 400, EPOCH_2026 + 86400 * 30).map(
            lambda s: pd.Timestamp(s, unit="s", tz="UTC").isoformat().replace("+00:00", "Z")),
        st.integers(EPOCH_2026, EPOCH_2026 + 86400 * 30).map(str),
        st.sampled_from(["2026-01-01 09:00:00", "2026-01-01T10:00:00+02:00"])),
    "price": st.one_of(st.just(""), st.decimals(0, 10**6, places=3).map(str), st.sampled_from(["12.5", "0.125", "1E3", ".5"])),
    "session_id": st.one_of(st.sampled_from(["", "s1", "NA", "null", " s2 "]), hostile_text),
    "event_id": st.one_of(st.sampled_from(["", "e1", "e2", " e3 "]), hostile_text),  # repeated ids: later rows are duplicates
    "recommendation_id": st.one_of(st.sampled_from(["", "r1"]), hostile_text),
}
bad = {
    "user_id": st.sampled_from(["0", "-1", "1.0", "NA", "", "9223372036854775808"]),
    "item_id": st.sampled_from(["", "99", "2\x00"]),
    "event_type": st.sampled_from(["like", ""]),
    "event_timestamp": st.sampled_from(["1970-01-01T00:00:00Z", "0", "9999-12-31T00:00:00Z", "2099-01-01T00:00:00Z",
                                        "yesterday", ""]),
    "price": st.sampled_from(["NaN", "N/A", "null", "-1", "1e20", "inf"]),
    "session_id": st.sampled_from(["\x00", "a\x1bb"]),
    "event_id": st.sampled_from(["\x00", "a\x1bb"]),
    "recommendation_id": st.sampled_from(["\x00", "a\x1bb"]),
}


@st.composite
def field_values(draw, column: str) -> str:
    """Mostly good values, sometimes a bad one, sometimes any text."""
    choice = draw(st.integers(0, 19))
    return draw(good[column] if choice < 16 else bad[column] if choice < 18 else hostile_text)


# bytes a field's text may be replaced with: invalid UTF-8, Latin-1 letters, NUL, a lone CR
raw_bytes = st.one_of(st.sampled_from([b"\xe9", b"caf\xe9", b"\xff\xfe", b"\x00", b"a\rb", b"\xc3", b'"', b'"x"y']),
                      st.binary(max_size=6).filter(lambda b: b"\n" not in b))


@st.composite
def event_lines(draw) -> bytes:
    """One physical line (or, from a quoted line break, several), or a blank one."""
    kind = draw(st.sampled_from(["row"] * 12 + ["bytes", "short", "long", "blank"]))
    if kind == "blank":
        return b"\n"
    if kind == "bytes":
        return draw(st.binary(max_size=40).filter(lambda b: b"\n" not in b)) + b"\n"
    fields = [draw(field_values(column)) for column in EVENTS.columns]
    if kind == "short":
        fields = fields[: draw(st.integers(0, len(fields) - 1))]
    elif kind == "long":
        fields.append(draw(hostile_text))
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerow(fields)
    line = out.getvalue().encode()
    if draw(st.integers(0, 5)) == 0:  # hostile bytes inside one field
        cells = line[:-1].split(b",")
        cells[draw(st.integers(0, len(cells) - 1))] = draw(raw_bytes)
        line = b",".join(cells) + b"\n"
    if draw(st.integers(0, 4)) == 0:
        line = line[:-1] + b"\r\n"
    return line


def _expected(text: str) -> tuple | None:
    """The event a file line stands for, read the documented way."""
    user, item, event_type, stamp, price, session, event_id, recommendation = (
        f.strip(" \t\r\n") for f in next(csv.reader([text])))
    if stamp.isdigit():
        ts = pd.Timestamp(int(stamp), unit="s", tz="UTC")
    else:
        ts = pd.to_datetime(stamp, utc=True, format="ISO8601")
    cents = Decimal(price).quantize(Decimal("0.01"), ROUND_HALF_UP) if price else None
    return int(user), int(item), EVENT_TYPE_CODES[event_type.lower()], ts, cents, session or None, event_id or None, \
        recommendation or None


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.lists(event_lines(), max_size=12))
def test_random_hostile_event_files_load_losslessly(conn, tmp_path, body):
    conn.execute("TRUNCATE interest.events, interest.quarantine, interest.ingest_runs CASCADE")
    conn.commit()
    if not conn.execute("SELECT 1 FROM interest.items LIMIT 1").fetchone():
        (tmp_path / "items.csv").write_text(CATALOGUE)
        load_file(conn, "items", tmp_path / "items.csv", chunk_rows=100)
    path = tmp_path / "events.csv"
    data = ",".join(EVENTS.columns).encode() + b"\n" + b"".join(body)
    path.write_bytes(data)

    report = load_file(conn, "events", path, chunk_rows=3)  # no exception, whatever the bytes

    lines = {number: line.removesuffix(b"\r") for number, line in enumerate(data.split(b"\n")[1:], start=2)
             if line.strip(b"\r")}
    assert report.reconciles and report.rows_read == len(lines), report.summary()
    quarantined = dict(conn.execute("SELECT line, raw FROM interest.quarantine"))
    assert report.quarantined == len(quarantined)
    for number, raw in quarantined.items():
        assert raw == {"text": printable(lines[number].decode("utf-8", "surrogateescape"))}
    # the first line of each natural key is stored unless an event_id stored before it (in line order) is its own
    keys_seen, event_ids_stored, expected = set(), set(), set()
    for number in sorted(set(lines) - set(quarantined)):
        event = _expected(lines[number].decode())
        key, event_id = (event[0], event[3], event[1], event[2]), event[6]
        if key not in keys_seen and (event_id is None or event_id not in event_ids_stored):
            expected.add(event)
            event_ids_stored.add(event_id)
        keys_seen.add(key)
    loaded = {(u, i, t, pd.Timestamp(ts), p, s, e, r) for u, i, t, ts, p, s, e, r in conn.execute(
        "SELECT user_id, item_id, event_type, event_timestamp, price, session_id, event_id, recommendation_id"
        " FROM interest.events")}
    assert loaded == expected
    assert (report.loaded, report.duplicate) == (len(loaded), len(lines) - len(quarantined) - len(loaded))
