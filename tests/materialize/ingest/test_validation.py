"""The events validator's fast path (chunks whose every row is valid as it is, such as a
service's) gives exactly what the vectorised checks give, and hands every chunk with a
problem or a conversion to them."""
from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from materialize.ingest.readers import frames_as_chunks
from materialize.ingest.schema import EVENTS
from materialize.ingest.validation import _checked_events, _plainly_valid_events, validate_events

NOW = pd.Timestamp("2026-11-26 12:00", tz="UTC")
MIN_EVENT_TIME = dt.datetime(1995, 1, 1, tzinfo=dt.timezone.utc)
AT = dt.datetime(2026, 11, 26, 11, 0, tzinfo=dt.timezone.utc)


def _event(**changes) -> dict:
    """One event as the service's writer builds it (typed values, every column present)."""
    return {"user_id": 7, "item_id": 3, "event_type": "view", "event_timestamp": AT, "price": None,
            "session_id": None, "event_id": "e-1", "recommendation_id": None} | changes


PLAIN = [
    _event(),
    _event(event_type="purchase", price=12.5, session_id="s-9", recommendation_id="r-1"),
    _event(event_id=None),
    _event(event_type="cart", price=0.0, event_timestamp=NOW.to_pydatetime() + dt.timedelta(seconds=299)),
]
# each differs from a plain row by one thing the vectorised checks reject, convert or read differently
# (the service sends times in UTC: another offset makes a column of mixed time zones)
PECULIAR = {
    "upper-case type": _event(event_type=" VIEW "),
    "unknown type": _event(event_type="like"),
    "zero id": _event(user_id=0),
    "negative id": _event(item_id=-4),
    "future": _event(event_timestamp=NOW.to_pydatetime() + dt.timedelta(hours=1)),
    "too old": _event(event_timestamp=dt.datetime(1990, 1, 1, tzinfo=dt.timezone.utc)),
    "another offset": _event(event_timestamp=AT.astimezone(dt.timezone(dt.timedelta(hours=5)))),
    "naive time": _event(event_timestamp=dt.datetime(2026, 11, 26, 11, 0)),
    "fraction of a cent": _event(price=12.345),
    "negative price": _event(price=-1.0),
    "price too large": _event(price=1e13),
    "trailing space": _event(session_id="s-1 "),
    "leading tab": _event(event_id="\te-2"),
    "empty text": _event(recommendation_id=""),
    "control character": _event(event_id="e\x07"),
    "not UTF-8": _event(session_id="s\udcff"),
    "text id": _event(user_id="12"),
    "integer price": _event(price=12),
}


def _both(rows: list[dict]):
    chunk = next(frames_as_chunks([pd.DataFrame(rows)], EVENTS, "test"))
    args = (chunk.frame, chunk.lines, chunk.raw, NOW, 300, MIN_EVENT_TIME)
    return chunk, validate_events(*args), _checked_events(*args)


def _assert_same(fast, checked) -> None:
    pd.testing.assert_frame_equal(fast.clean, checked.clean)
    assert fast.rejections == checked.rejections and fast.conversions == checked.conversions


def test_a_service_chunk_takes_the_fast_path_and_gets_the_same_result():
    chunk, fast, checked = _both(PLAIN)
    assert _plainly_valid_events(chunk.frame, NOW, 300, MIN_EVENT_TIME) is not None
    assert len(fast.clean) == len(PLAIN) and not fast.rejections
    _assert_same(fast, checked)
    assert str(fast.clean.event_timestamp.dt.tz) == "UTC"


@pytest.mark.parametrize("case", sorted(PECULIAR))
def test_any_other_chunk_gets_the_vectorised_result(case):
    chunk, fast, checked = _both(PLAIN + [PECULIAR[case]])
    _assert_same(fast, checked)
    if checked.rejections or checked.conversions:  # only the vectorised checks name problems and count changes
        assert _plainly_valid_events(chunk.frame, NOW, 300, MIN_EVENT_TIME) is None


def test_a_large_typed_chunk_is_equal_too():
    rng = np.random.default_rng(3)
    rows = [_event(user_id=int(u), item_id=int(i), event_type=t, price=p, event_id=f"e{k}",
                   event_timestamp=AT - dt.timedelta(seconds=int(s)))
            for k, (u, i, t, p, s) in enumerate(zip(rng.integers(1, 10**12, 5000), rng.integers(1, 3000, 5000),
                                                    rng.choice(["view", "click", "cart", "purchase"], 5000),
                                                    rng.choice([None, 1.25, 99.99], 5000), rng.integers(0, 10**7, 5000)))]
    _, fast, checked = _both(rows)
    assert len(fast.clean) == 5000
    _assert_same(fast, checked)
