"""The observed-events posterior of the synthetic shop: its likelihood against a direct
count, its sampler against the generator's own prior, and its forecast against the
categories the generator drew."""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from materialize.ingest.sources.synthetic import ON_CATEGORY_VIEW_SHARE, SyntheticConfig, SyntheticShop
from materialize.ingest.sources.synthetic_oracle import next_category_oracle
from materialize.ingest.sources.synthetic_posterior import (
    SessionHistories, _BatchModel, _initial_state, _Model, posterior_forecast, session_histories,
)

CONFIG = SyntheticConfig(n_users=2000, n_items=300, n_categories=6, days=60, sessions_per_user_mean=12.0, seed=5)


@pytest.fixture(scope="module")
def shop() -> SyntheticShop:
    return SyntheticShop(CONFIG)


def test_log_likelihood_counts_every_view(shop: SyntheticShop) -> None:
    """One chain's log likelihood equals the sum over sessions of log sum_c p_c prod_views
    (share [v = c] + (1 - share) p_v), written out view by view."""
    rng = np.random.default_rng(0)
    sessions, categories = 7, CONFIG.n_categories
    start = np.sort(rng.random(sessions)) * 60 * 86400
    views = rng.integers(0, 3, (sessions, categories)).astype(float)
    histories = SessionHistories(start[None], views[None], np.array([60 * 86400.0]))
    model = _Model(shop, histories)
    state = _initial_state(rng, views[None], categories, model.span)
    state.k[:] = 2
    state.shifted[:], state.drift[:] = True, True
    state.background = rng.gamma(1.0, size=(1, categories))
    got = _BatchModel(model, np.array([0]), sessions).log_likelihood(state)[0]

    p = model.preferences(state, start[None])[0]
    expected = 0.0
    for s in range(sessions):
        seen = np.repeat(np.arange(categories), views[s].astype(int))
        expected += np.log(sum(p[s, c] * np.prod(ON_CATEGORY_VIEW_SHARE * (seen == c) + (1 - ON_CATEGORY_VIEW_SHARE) * p[s, seen])
                               for c in range(categories)))
    assert got == pytest.approx(expected, rel=1e-10)


def test_without_events_the_sampler_draws_the_generators_prior(shop: SyntheticShop) -> None:
    """With no sessions the posterior is the prior: the forecast's mean preference, and the
    mean of each user's preference sorted, match those of the generator's own users (a
    wrong proposal ratio in any move would move them)."""
    at = 0.8 * CONFIG.days * 86400.0  # after every shift window
    points = 1500
    empty = SessionHistories(np.full((points, 1), np.nan), np.zeros((points, 1, CONFIG.n_categories)), np.full(points, at))
    forecast = posterior_forecast(shop, empty, sweeps=200, burn_in=50, seed=1).next_category
    users = np.arange(1, CONFIG.n_users + 1)
    generated = shop.category_preference(users, pd.Series(shop.start + pd.to_timedelta(np.full(len(users), at), unit="s")))
    np.testing.assert_allclose(forecast.mean(axis=0), generated.mean(axis=0), atol=0.02)


def test_short_histories_match_the_generators_users_weighted_by_likelihood(shop: SyntheticShop) -> None:
    """For a few sessions the exact posterior predictive is within reach by importance
    sampling: the generator's own users are draws from the prior, weighted by the likelihood
    of the history under their true preference path. The sampler must agree with it (a
    wrong proposal ratio in any move shows here)."""
    day = 86400.0
    cases = [  # (session starts in days, views per category of each session, forecast day)
        ([10.0], [[3, 0, 0, 0, 0, 0]], 12.0),
        ([50.0], [[0, 2, 0, 1, 0, 0]], 52.0),
        ([5.0, 40.0], [[0, 0, 4, 0, 0, 0], [0, 0, 0, 0, 4, 0]], 55.0),
        ([20.0, 30.0], [[1, 1, 1, 0, 0, 0], [0, 0, 0, 1, 1, 1]], 45.0),
        ([3.0, 35.0], [[5, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 5]], 36.0),
    ]
    copies = 200
    longest = max(len(c[0]) for c in cases)
    start = np.full((len(cases) * copies, longest), np.nan)
    views = np.zeros((len(cases) * copies, longest, CONFIG.n_categories))
    at = np.zeros(len(cases) * copies)
    for i, (days, counts, forecast_day) in enumerate(cases):
        rows = slice(i * copies, (i + 1) * copies)
        start[rows, :len(days)] = np.array(days) * day
        views[rows, :len(days)] = counts
        at[rows] = forecast_day * day
    forecast = posterior_forecast(shop, SessionHistories(start, views, at), sweeps=300, burn_in=60, seed=3).next_category

    prior = SyntheticShop(dataclasses.replace(CONFIG, n_users=40000))  # the same catalogue, more users
    users = np.arange(1, prior.config.n_users + 1)

    def preference(seconds: float) -> np.ndarray:
        return prior.category_preference(users, pd.Series(prior.start + pd.to_timedelta(np.full(len(users), seconds), unit="s")))

    for i, (days, counts, forecast_day) in enumerate(cases):
        weight = np.ones(len(users))
        for session_day, count in zip(days, counts):
            p = preference(session_day * day)
            seen = np.repeat(np.arange(CONFIG.n_categories), count)
            weight *= sum(p[:, c] * np.prod(ON_CATEGORY_VIEW_SHARE * (seen == c) + (1 - ON_CATEGORY_VIEW_SHARE) * p[:, seen], axis=1)
                          for c in range(CONFIG.n_categories))
        exact = (weight[:, None] * preference(forecast_day * day)).sum(axis=0) / weight.sum()
        sampled = forecast[i * copies:(i + 1) * copies].mean(axis=0)
        np.testing.assert_allclose(sampled, exact, atol=0.015, err_msg=f"case {i}")


def test_forecast_is_calibrated_and_between_the_oracle_and_ignorance(shop: SyntheticShop) -> None:
    """On session starts of the shop's second half: observed category counts within 4
    standard deviations of the forecast's, and a log-loss worse than the hidden-state
    oracle's but better than the shop-wide category frequencies'."""
    events = pd.concat(shop.events(), ignore_index=True)
    category = shop.items().category.to_numpy()
    views = events[events.event_type == "view"].assign(category=lambda v: category[v.item_id.to_numpy() - 1])
    first = views[~views.session_id.duplicated()]
    late = first[pd.to_datetime(first.event_timestamp, utc=True) > shop.start + pd.Timedelta(days=40)].iloc[::3].head(400)
    histories = session_histories(shop, views, late.user_id.to_numpy(), late.event_timestamp)
    code = {name: i for i, name in enumerate(shop.categories)}
    target = late.category.map(code).to_numpy()
    forecast = posterior_forecast(shop, histories, sweeps=200, burn_in=70, seed=2)
    probabilities = forecast.next_category
    expected, observed = probabilities.sum(axis=0), np.bincount(target, minlength=CONFIG.n_categories)
    z = (observed - expected) / np.sqrt((probabilities * (1 - probabilities)).sum(axis=0))
    assert np.abs(z).max() < 4, z

    def log_loss(p: np.ndarray) -> float:
        return float(-np.mean(np.log(p[np.arange(len(target)), target])))

    oracle = next_category_oracle(shop, late.user_id.to_numpy(), late.event_timestamp, np.full(len(late), -1)).next_category
    frequencies = np.bincount(views.category.map(code), minlength=CONFIG.n_categories) / len(views)
    assert log_loss(oracle) < log_loss(probabilities) < log_loss(np.tile(frequencies, (len(target), 1)))
    assert np.median(forecast.chain_spread) < 0.05
