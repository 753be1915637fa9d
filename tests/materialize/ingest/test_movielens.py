"""MovieLens-100K from the real recbole wheel (downloaded once into .data/)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from materialize.ingest.schema import EVENT_TYPES, EVENTS, ITEMS
from materialize.ingest.sources.movielens import MovieLens100K

CACHE_DIR = Path(__file__).resolve().parents[3] / ".data" / "recbole"


@pytest.fixture(scope="session")
def movielens() -> MovieLens100K:
    return MovieLens100K(CACHE_DIR)


@pytest.fixture(scope="session")
def events(movielens: MovieLens100K) -> pd.DataFrame:
    return pd.concat(movielens.events(), ignore_index=True)


def test_wheel_is_cached(movielens: MovieLens100K) -> None:
    path = movielens.wheel_path()
    assert path.parent == CACHE_DIR and path.name.startswith("recbole-1.2.1-")
    assert movielens.wheel_path() == path


def test_event_counts_and_schema(events: pd.DataFrame) -> None:
    assert list(events.columns) == list(EVENTS.required + ("price", "session_id"))  # no idempotency or recommendation ids
    assert len(events) == 100_000
    assert events["user_id"].nunique() == 943
    assert events["user_id"].dtype == "int64" and events["item_id"].dtype == "int64"
    assert str(events["event_timestamp"].dtype) == "datetime64[ns, UTC]"
    assert set(events["event_type"]) <= set(EVENT_TYPES)
    assert events["price"].isna().all() and events["session_id"].isna().all()


def test_event_type_follows_rating(movielens: MovieLens100K, events: pd.DataFrame) -> None:
    ratings = movielens.ratings()
    assert len(ratings) == 100_000 and ratings["rating"].between(1, 5).all()
    expected = ratings["rating"].map({1: "view", 2: "view", 3: "click", 4: "cart", 5: "purchase"})
    pd.testing.assert_series_equal(events["event_type"], expected, check_names=False)
    assert (events["event_timestamp"] == ratings["timestamp"]).all()
    first, last = pd.Timestamp("1997-09-01", tz="UTC"), pd.Timestamp("1998-05-01", tz="UTC")
    assert events["event_timestamp"].between(first, last).all()


def test_items(movielens: MovieLens100K, events: pd.DataFrame) -> None:
    items = movielens.items()
    assert list(items.columns) == list(ITEMS.columns)
    assert len(items) == 1682 and items["item_id"].is_unique
    assert items["item_id"].dtype == "int64" and items["price"].isna().all()
    assert set(events["item_id"]) <= set(items["item_id"])
    toy_story = items.set_index("item_id").loc[1]
    assert toy_story["title"] == "Toy Story" and toy_story["category"] == "Animation"
    assert toy_story["description"] == "Released 1995. Genres: Animation, Children's, Comedy."


def test_genres_long_format(movielens: MovieLens100K) -> None:
    genres = movielens.genres()
    assert list(genres.columns) == ["item_id", "genre"]
    assert genres["item_id"].nunique() == 1682
    assert genres.loc[genres["item_id"] == 1, "genre"].tolist() == ["Animation", "Children's", "Comedy"]
    first_genre = genres.drop_duplicates("item_id").set_index("item_id")["genre"]
    assert first_genre.equals(movielens.items().set_index("item_id")["category"].rename("genre"))
