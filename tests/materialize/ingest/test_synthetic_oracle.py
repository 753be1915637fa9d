"""The oracle against the generator's own output: a large seeded sample of session starts."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from materialize.ingest.sources.synthetic import SyntheticConfig, SyntheticShop
from materialize.ingest.sources.synthetic_oracle import next_category_oracle

CONFIG = SyntheticConfig(n_users=6000, n_items=600, n_categories=8, days=90, sessions_per_user_mean=20.0, seed=11)
Z_LIMIT = 4.0  # |z| tolerated per statistic; under the null P(|z| > 4) is about 6e-5 each
WINDOW = pd.Timedelta(days=30)


@pytest.fixture(scope="module")
def shop() -> SyntheticShop:
    return SyntheticShop(CONFIG)


@pytest.fixture(scope="module")
def events(shop: SyntheticShop) -> pd.DataFrame:
    """Every event with its category index; sorted by user and time."""
    events = pd.concat(shop.events(), ignore_index=True)
    category = shop.items().category.map({name: i for i, name in enumerate(shop.categories)}).to_numpy()
    return events.assign(category=category[events.item_id.to_numpy() - 1])


@pytest.fixture(scope="module")
def sessions(events: pd.DataFrame) -> pd.DataFrame:
    """The first event of every session, with the user's 30-day dominant category before it
    (-1 without events in the window), as the decision points label them."""
    first = ~events.session_id.duplicated().to_numpy()
    users = events.user_id.to_numpy()
    nanoseconds = pd.DatetimeIndex(events.event_timestamp).asi8
    key = users * 1e9 + (nanoseconds - nanoseconds.min()) / 1e9  # one sorted key per (user, seconds in the span)
    counts = np.vstack([np.zeros(CONFIG.n_categories), np.cumsum(np.eye(CONFIG.n_categories)[events.category], axis=0)])
    row = np.flatnonzero(first)
    window_start = np.searchsorted(key, key[row] - WINDOW.total_seconds(), side="left")
    in_window = counts[row] - counts[window_start]
    dominant = np.where(in_window.sum(axis=1) > 0, in_window.argmax(axis=1), -1)
    return pd.DataFrame({"user_id": users[row], "start": events.event_timestamp.iloc[row].array,
                         "category": events.category.to_numpy()[row], "dominant": dominant})


def _z_scores(probabilities: np.ndarray, observed: np.ndarray) -> dict[str, float]:
    """z of observed against forecast counts: per category, per decile of forecast
    probability (over all session x category pairs), and of the total log-likelihood.

    Args:
        probabilities: (n, C) forecasts, rows sum to 1.
        observed: (n,) category indices drawn.
    """
    n, n_categories = probabilities.shape
    hit = np.zeros_like(probabilities)
    hit[np.arange(n), observed] = 1.0
    variance = probabilities * (1 - probabilities)
    z = {f"category {c}": (hit[:, c].sum() - probabilities[:, c].sum()) / np.sqrt(variance[:, c].sum())
         for c in range(n_categories)}
    bins = np.minimum((probabilities * 10).astype(int), 9)
    for b in np.unique(bins):
        inside = bins == b
        z[f"probability decile {b}"] = (hit[inside].sum() - probabilities[inside].sum()) / np.sqrt(variance[inside].sum())
    log_p = np.log(probabilities)
    expected = (probabilities * log_p).sum(axis=1)
    spread = (probabilities * log_p**2).sum(axis=1) - expected**2
    z["log-likelihood"] = (log_p[np.arange(n), observed].sum() - expected.sum()) / np.sqrt(spread.sum())
    return z


def test_the_forecast_is_a_distribution(shop: SyntheticShop, sessions: pd.DataFrame) -> None:
    forecast = next_category_oracle(shop, sessions.user_id, sessions.start, sessions.dominant)
    assert forecast.next_category.shape == (len(sessions), CONFIG.n_categories)
    assert (forecast.next_category > 0).all()
    np.testing.assert_allclose(forecast.next_category.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    known = sessions.dominant.to_numpy() >= 0
    assert np.isnan(forecast.shift_probability[~known]).all()
    dominant_share = forecast.next_category[np.flatnonzero(known), sessions.dominant.to_numpy()[known]]
    np.testing.assert_allclose(forecast.shift_probability[known], 1 - dominant_share)


def test_matches_the_generators_next_category_frequencies(shop: SyntheticShop, sessions: pd.DataFrame) -> None:
    """Observed first-event categories of about 120k sessions against the oracle's forecast:
    every |z| under ``Z_LIMIT``. The same test rejects the preference before any shift on the
    sessions of shifted users after their shift, so it can tell the two apart."""
    assert len(sessions) > 100_000
    forecast = next_category_oracle(shop, sessions.user_id, sessions.start, sessions.dominant)
    z = _z_scores(forecast.next_category, sessions.category.to_numpy())
    assert max(abs(v) for v in z.values()) < Z_LIMIT, z

    planted = shop.interest_shifts()
    after = sessions.merge(planted[["user_id", "drift_end"]], on="user_id")
    after = after[after.start > after.drift_end]
    assert len(after) > 10_000
    oracle_after = next_category_oracle(shop, after.user_id, after.start, after.dominant).next_category
    before_shift = shop.category_preference(after.user_id, pd.Series(CONFIG.end - pd.Timedelta(days=CONFIG.days), index=after.index))
    assert max(abs(v) for v in _z_scores(oracle_after, after.category.to_numpy()).values()) < Z_LIMIT
    assert max(abs(v) for v in _z_scores(before_shift, after.category.to_numpy()).values()) > 10 * Z_LIMIT


def test_item_probabilities_match_the_first_items_drawn(shop: SyntheticShop, events: pd.DataFrame,
                                                        sessions: pd.DataFrame) -> None:
    """The first item of every session against ``item_probabilities`` of the oracle's
    category forecast: per item, observed count within ``Z_LIMIT`` standard deviations of the
    expected one (with 600 items, about 0.04 of false alarms; the seed is fixed). Items
    drawn uniformly within their category are rejected by the same check."""
    first_items = events.item_id.to_numpy()[~events.session_id.duplicated().to_numpy()] - 1
    forecast = next_category_oracle(shop, sessions.user_id, sessions.start, sessions.dominant).next_category
    observed = np.bincount(first_items, minlength=CONFIG.n_items)

    def max_z(item_probabilities) -> float:
        expected, variance = np.zeros(CONFIG.n_items), np.zeros(CONFIG.n_items)
        for chunk in np.array_split(np.arange(len(forecast)), 20):
            probabilities = item_probabilities(forecast[chunk])
            expected += probabilities.sum(axis=0)
            variance += (probabilities * (1 - probabilities)).sum(axis=0)
        np.testing.assert_allclose(expected.sum(), len(forecast))
        return float(np.max(np.abs(observed - expected) / np.sqrt(variance)))

    category = shop.items().category.map({name: i for i, name in enumerate(shop.categories)}).to_numpy()
    uniform_share = 1.0 / np.bincount(category)[category]
    assert max_z(shop.item_probabilities) < Z_LIMIT
    assert max_z(lambda forecast_rows: forecast_rows[:, category] * uniform_share) > 10 * Z_LIMIT


def test_beats_the_30_day_dominant_category(shop: SyntheticShop, sessions: pd.DataFrame) -> None:
    known = sessions[sessions.dominant >= 0]
    forecast = next_category_oracle(shop, known.user_id, known.start, known.dominant)
    oracle_accuracy = np.mean(forecast.next_category.argmax(axis=1) == known.category.to_numpy())
    dominant_accuracy = np.mean(known.dominant.to_numpy() == known.category.to_numpy())
    assert oracle_accuracy >= dominant_accuracy


def test_config_round_trips_through_json() -> None:
    assert SyntheticConfig.from_json(CONFIG.to_json()) == CONFIG
