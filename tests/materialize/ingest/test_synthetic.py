"""The synthetic shop: schemas, determinism, planted shifts and realism checks on its output."""
from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest

from materialize.ingest.schema import EVENT_TYPES, EVENTS, ITEMS
from materialize.ingest.sources.synthetic import CATEGORY_VOCABULARIES, SyntheticConfig, SyntheticShop

CONFIG = SyntheticConfig(n_users=2000, users_per_chunk=1000)


@pytest.fixture(scope="module")
def shop() -> SyntheticShop:
    return SyntheticShop(CONFIG)


@pytest.fixture(scope="module")
def events(shop: SyntheticShop) -> pd.DataFrame:
    return pd.concat(shop.events(), ignore_index=True)


@pytest.fixture(scope="module")
def events_with_category(shop: SyntheticShop, events: pd.DataFrame) -> pd.DataFrame:
    return events.merge(shop.items()[["item_id", "category"]], on="item_id", how="left")


def test_items_schema(shop: SyntheticShop) -> None:
    items = shop.items()
    assert list(items.columns) == list(ITEMS.columns)
    assert items["item_id"].dtype == "int64" and items["price"].dtype == "float64"
    assert items["item_id"].tolist() == list(range(1, CONFIG.n_items + 1))
    assert set(items["category"]) == set(list(CATEGORY_VOCABULARIES)[: CONFIG.n_categories])
    assert (items["price"] >= 0).all() and items[["title", "description"]].map(len).min().min() > 10
    medians = items.groupby("category")["price"].median()
    assert medians["electronics"] > 3 * medians["grocery"]


def test_item_text_uses_the_category_vocabulary(shop: SyntheticShop) -> None:
    items = shop.items()
    for category, group in items.groupby("category"):
        nouns = CATEGORY_VOCABULARIES[category].nouns
        assert group["description"].map(lambda text: any(noun in text for noun in nouns)).all(), category
        assert group["description"].str.count(r"\.").ge(3).all()


def test_events_schema(events: pd.DataFrame, shop: SyntheticShop) -> None:
    assert list(events.columns) == list(EVENTS.required + ("price", "session_id"))  # no idempotency or recommendation ids
    assert events["user_id"].dtype == "int64" and events["item_id"].dtype == "int64"
    assert events["price"].dtype == "float64"
    assert str(events["event_timestamp"].dtype) == "datetime64[ns, UTC]"
    assert set(events["event_type"]) == set(EVENT_TYPES)
    assert events["session_id"].map(type).eq(str).all()
    assert events["item_id"].between(1, CONFIG.n_items).all()
    assert events["user_id"].between(1, CONFIG.n_users).all()
    prices = shop.items().set_index("item_id")["price"]
    assert np.array_equal(events["price"].to_numpy(), prices.loc[events["item_id"]].to_numpy())


def test_timestamps_inside_span(events: pd.DataFrame) -> None:
    start = CONFIG.end - pd.Timedelta(days=CONFIG.days)
    assert events["event_timestamp"].min() >= start
    assert events["event_timestamp"].max() < CONFIG.end


def test_same_config_same_output_for_any_chunking() -> None:
    config = SyntheticConfig(n_users=2500, n_items=500, users_per_chunk=1000)
    chunks = list(SyntheticShop(config).events())
    assert [chunk["user_id"].max() for chunk in chunks] == [1000, 2000, 2500]
    reference = pd.concat(chunks, ignore_index=True)
    for other in (config, SyntheticConfig(n_users=2500, n_items=500, users_per_chunk=3000)):
        other_shop = SyntheticShop(other)
        pd.testing.assert_frame_equal(pd.concat(other_shop.events(), ignore_index=True), reference)
        pd.testing.assert_frame_equal(other_shop.items(), SyntheticShop(config).items())
        pd.testing.assert_frame_equal(other_shop.interest_shifts(), SyntheticShop(config).interest_shifts())
    reseeded = pd.concat(SyntheticShop(SyntheticConfig(n_users=2500, n_items=500, seed=8)).events())
    assert not reseeded["item_id"].head(1000).equals(reference["item_id"].head(1000))


def test_invalid_config_is_rejected() -> None:
    with pytest.raises(ValueError, match="multiple"):
        SyntheticConfig(users_per_chunk=1500)
    with pytest.raises(ValueError, match="n_categories"):
        SyntheticConfig(n_categories=len(CATEGORY_VOCABULARIES) + 1)
    with pytest.raises(ValueError, match="timezone"):
        SyntheticConfig(end=pd.Timestamp("2026-10-01"))


def test_interest_shift_ground_truth(shop: SyntheticShop) -> None:
    shifts = shop.interest_shifts()
    assert list(shifts.columns) == [
        "user_id", "shift_at", "drift_start", "drift_end", "from_category", "to_category", "kind",
    ]
    assert shifts["user_id"].is_unique
    assert 0.45 < len(shifts) / CONFIG.n_users < 0.55
    assert 0.25 < (shifts["kind"] == "drift").mean() < 0.35
    assert (shifts["from_category"] != shifts["to_category"]).all()
    start = CONFIG.end - pd.Timedelta(days=CONFIG.days)
    span = pd.Timedelta(days=CONFIG.days)
    assert shifts["shift_at"].between(start + 0.3 * span, start + 0.7 * span).all()
    switch, drift = shifts[shifts["kind"] == "switch"], shifts[shifts["kind"] == "drift"]
    assert (switch["drift_start"] == switch["shift_at"]).all()
    assert (switch["drift_end"] == switch["shift_at"]).all()
    assert ((drift["drift_end"] - drift["drift_start"]) == pd.Timedelta(days=CONFIG.drift_days)).all()


@pytest.mark.parametrize("kind", ["switch", "drift"])
def test_shifted_users_move_to_the_new_category(
    shop: SyntheticShop, events_with_category: pd.DataFrame, kind: str
) -> None:
    shifts = shop.interest_shifts()
    joined = events_with_category.merge(shifts[shifts["kind"] == kind], on="user_id")
    before = joined[joined["event_timestamp"] < joined["drift_start"]]
    after = joined[joined["event_timestamp"] >= joined["drift_end"]]

    def mean_share(frame: pd.DataFrame, column: str) -> float:
        return float((frame["category"] == frame[column]).groupby(frame["user_id"]).mean().mean())

    assert mean_share(after, "to_category") > mean_share(before, "to_category") + 0.4
    assert mean_share(before, "from_category") > mean_share(after, "from_category") + 0.4


def test_only_shifted_users_change_their_category_mix(
    shop: SyntheticShop, events_with_category: pd.DataFrame
) -> None:
    events = events_with_category
    first_half = events["event_timestamp"] < CONFIG.end - pd.Timedelta(days=CONFIG.days / 2)
    share = (
        events.groupby(["user_id", first_half])["category"]
        .value_counts(normalize=True)
        .unstack(fill_value=0.0)
    )
    early, late = share.xs(True, level=1), share.xs(False, level=1)
    total_variation = (late - early.reindex(late.index)).abs().sum(axis=1) / 2
    shifted = total_variation.index.isin(shop.interest_shifts()["user_id"])
    assert total_variation[~shifted].mean() < 0.35
    assert total_variation[shifted].mean() > 0.55


def test_popularity_is_skewed(events: pd.DataFrame) -> None:
    views = events.loc[events["event_type"] == "view", "item_id"].value_counts()
    top_share = views.iloc[: CONFIG.n_items // 10].sum() / views.sum()
    assert top_share > 0.4


def test_funnel_decreases_and_follows_order(events: pd.DataFrame) -> None:
    counts = events["event_type"].value_counts()
    assert counts["view"] > counts["click"] > counts["cart"] > counts["purchase"] > 0
    first = events.pivot_table(
        index=["session_id", "item_id"], columns="event_type", values="event_timestamp", aggfunc="min"
    )
    number = events.groupby(["session_id", "item_id", "event_type"]).size().unstack(fill_value=0)
    for earlier, later in zip(EVENT_TYPES, EVENT_TYPES[1:]):
        has_later = first[later].notna()
        assert (first.loc[has_later, earlier] <= first.loc[has_later, later]).all(), later
        assert (number[earlier] >= number[later]).all(), later


def test_sessions_match_thirty_minute_gaps(events: pd.DataFrame) -> None:
    assert events["session_id"].str.fullmatch(r"u\d+-s\d+").all()
    assert (events["session_id"].str.extract(r"u(\d+)-")[0].astype("int64") == events["user_id"]).all()
    gap = events["event_timestamp"].diff()
    same_user = events["user_id"].eq(events["user_id"].shift())
    new_session = events["session_id"].ne(events["session_id"].shift())
    assert (gap[same_user] >= pd.Timedelta(0)).all()
    assert (gap[same_user & ~new_session] < pd.Timedelta(minutes=30)).all()
    assert (gap[same_user & new_session] >= pd.Timedelta(minutes=30)).all()
    assert events.groupby("session_id").size().median() >= 3


def test_target_event_count_is_reached_quickly() -> None:
    config = SyntheticConfig.for_events(300_000, seed=3)
    shop = SyntheticShop(config)
    started = time.perf_counter()
    sizes = [len(chunk) for chunk in shop.events()]
    elapsed = time.perf_counter() - started
    assert abs(sum(sizes) - 300_000) < 0.05 * 300_000
    assert len(sizes) == -(-config.n_users // config.users_per_chunk)
    assert elapsed < 10.0  # about 0.1 s measured; generous for a loaded machine
