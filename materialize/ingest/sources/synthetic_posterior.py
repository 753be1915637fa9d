"""The synthetic shop's posterior from observed events: the best forecast without the hidden state.

``synthetic_oracle`` forecasts a session's category from the user's hidden preference. No
model of the events can know that state, so it bounds the models from above by more than
any of them can reach. This module computes the forecast that is Bayes-optimal for an
observer who knows the generator (its priors and constants) but sees only the user's events:
the posterior predictive ``E[p(s) | the user's sessions before s]``.

The generative model, exactly as ``SyntheticShop._user_block`` and ``_block_events`` draw it:
  * k favourite categories, P(k) = ``FAVOURITE_COUNT_PROBABILITY``, in the order of a
    Plackett-Luce draw weighted by category size (the Gumbel top-k); slot weights i.i.d.
    Gamma(2), normalised over the k slots; background Dirichlet(1) (normalised Gamma(1));
    ``p_before = (1 - FAVOURITE_MASS) * background + FAVOURITE_MASS * favourites``;
  * with ``shift_fraction``, a shift that swaps the weight of ``argmax p_before`` with that
    of a non-favourite category (uniform), at a time uniform in ``SHIFT_WINDOW`` of the
    span; with ``drift_fraction`` of those, a linear blend over ``drift_days`` around it;
  * each session draws its category from ``p(start)``; each view is in that category with
    probability ``ON_CATEGORY_VIEW_SHARE``, otherwise drawn afresh from ``p(start)``.
Session times, view counts and the funnel do not depend on the preference, so the
likelihood of a user's events is the product over sessions of
``sum_c p_c(t) * prod_views (share * [v = c] + (1 - share) * p_v(t))``.

The posterior has no closed form. It is sampled by Metropolis-Hastings, one chain per
decision point and several chains each, vectorised over all chains: log-normal random
walks on the Gamma variables, swaps, additions and removals of favourites, and prior or
local proposals for the shift. ``PosteriorForecast.chain_spread`` (the largest difference
between the chains' forecasts) tells whether they agree; it is an approximation whose error
the caller can see, not an exact value.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from materialize.ingest.sources.synthetic import (
    FAVOURITE_COUNT_PROBABILITY, FAVOURITE_MASS, ON_CATEGORY_VIEW_SHARE, SHIFT_WINDOW, SyntheticShop,
)

MAX_FAVOURITES = len(FAVOURITE_COUNT_PROBABILITY)
WALK_SCALE = 0.4  # log-normal random walk step of the Gamma variables
SHIFT_TIME_STEP_DAYS = 4.0  # random walk step of the shift time


@dataclass(frozen=True)
class SessionHistories:
    """Each decision point's earlier sessions, padded to a common length.

    start: (n, S) float64 seconds since the shop's span start; NaN pads.
    views: (n, S, n_categories) float64 views per category of each session; 0 pads.
    at: (n,) float64 seconds of the session to forecast.
    """

    start: np.ndarray
    views: np.ndarray
    at: np.ndarray


@dataclass(frozen=True)
class PosteriorForecast:
    next_category: np.ndarray  # (n, n_categories) posterior predictive, rows sum to 1
    chain_spread: np.ndarray   # (n,) largest |difference| between two chains' forecasts
    acceptance: dict[str, float]  # move -> share of proposals accepted


@dataclass
class _State:
    """One Markov chain per row."""

    k: np.ndarray          # (m,) favourites
    favourites: np.ndarray  # (m, MAX_FAVOURITES) category codes, the first k used
    slot: np.ndarray       # (m, MAX_FAVOURITES) Gamma(2) slot weights
    background: np.ndarray  # (m, C) Gamma(1) variables
    shifted: np.ndarray    # (m,) bool
    to: np.ndarray         # (m,) category the dominant one swaps with (when shifted)
    drift: np.ndarray      # (m,) bool
    shift_at: np.ndarray   # (m,) seconds

    def copy(self) -> "_State":
        return _State(*(np.array(getattr(self, f)) for f in self.__dataclass_fields__))

    def take(self, accept: np.ndarray, proposal: "_State") -> None:
        for name in self.__dataclass_fields__:
            mine, theirs = getattr(self, name), getattr(proposal, name)
            mask = accept.reshape((-1,) + (1,) * (mine.ndim - 1))
            setattr(self, name, np.where(mask, theirs, mine))


class _Model:
    """The generator's model: each chain's preference path and log prior (``_BatchModel`` holds the likelihood)."""

    def __init__(self, shop: SyntheticShop, histories: SessionHistories):
        config = shop.config
        self.n_categories = config.n_categories
        self.share = shop.category_share
        self.span = shop.span_seconds
        self.shift_fraction, self.drift_fraction = config.shift_fraction, config.drift_fraction
        self.half_drift = config.drift_days * 86400.0 / 2
        self.window = (SHIFT_WINDOW[0] * self.span, SHIFT_WINDOW[1] * self.span)
        self.histories = histories

    def preferences(self, state: _State, seconds: np.ndarray) -> np.ndarray:
        """(m, T, C) preference of each chain at ``seconds`` (m, T)."""
        m = len(state.k)
        background = state.background / state.background.sum(axis=1, keepdims=True)
        used = np.arange(MAX_FAVOURITES)[None, :] < state.k[:, None]
        weights = np.where(used, state.slot, 0.0)
        weights /= weights.sum(axis=1, keepdims=True)
        before = (1 - FAVOURITE_MASS) * background
        np.add.at(before, (np.repeat(np.arange(m), MAX_FAVOURITES), state.favourites.ravel()),
                  FAVOURITE_MASS * weights.ravel())
        rows = np.arange(m)
        dominant = before.argmax(axis=1)
        to = np.where(state.shifted, state.to, dominant)
        after = before.copy()
        after[rows, dominant] = before[rows, to]
        after[rows, to] = before[rows, dominant]
        half = np.where(state.drift, self.half_drift, 0.0)[:, None]
        begin = state.shift_at[:, None] - half
        ramp = np.clip((seconds - begin) / np.maximum(2 * half, 1.0), 0.0, 1.0)
        weight_after = np.where(half > 0, ramp, (seconds >= state.shift_at[:, None]).astype(float))
        weight_after = np.where(state.shifted[:, None], weight_after, 0.0)[..., None]
        return (1 - weight_after) * before[:, None, :] + weight_after * after[:, None, :]

    def log_prior(self, state: _State) -> np.ndarray:
        """(m,) log prior density, up to a constant; -inf for impossible states."""
        k = state.k
        used = np.arange(MAX_FAVOURITES)[None, :] < k[:, None]
        share = np.where(used, self.share[state.favourites], 0.0)
        taken = np.cumsum(share, axis=1) - share
        order = np.where(used, np.log(np.where(used, share, 1.0)) - np.log(1 - taken), 0.0).sum(axis=1)
        # The shift's target, kind and time are drawn whether or not the user shifts (they
        # only matter when it does), so every state has the same variables.
        favourite_to = (state.favourites == state.to[:, None]) & used  # the moves keep favourites distinct
        valid = ~favourite_to.any(axis=1) & (state.shift_at >= self.window[0]) & (state.shift_at <= self.window[1])
        shift = (np.where(state.shifted, np.log(self.shift_fraction), np.log1p(-self.shift_fraction))
                 - np.log(self.n_categories - k)
                 + np.where(state.drift, np.log(self.drift_fraction), np.log1p(-self.drift_fraction)))
        value = (np.log(np.asarray(FAVOURITE_COUNT_PROBABILITY))[k - 1] + order
                 + (np.log(state.slot) - state.slot).sum(axis=1) - state.background.sum(axis=1) + shift)
        return np.where(valid, value, -np.inf)


def _non_favourite(rng: np.random.Generator, state: _State, n_categories: int) -> np.ndarray:
    """(m,) a category drawn uniformly among each chain's non-favourites."""
    used = np.arange(MAX_FAVOURITES)[None, :] < state.k[:, None]
    free = np.ones((len(state.k), n_categories), bool)
    rows = np.repeat(np.arange(len(state.k)), MAX_FAVOURITES)
    free[rows[used.ravel()], state.favourites[used]] = False
    scores = np.where(free, rng.random(free.shape), -1.0)
    return scores.argmax(axis=1)


def _initial_state(rng: np.random.Generator, views: np.ndarray, n_categories: int, span: float) -> _State:
    """Favourites = the most viewed categories (one), no shift: a start near the mode."""
    m = len(views)
    totals = views.sum(axis=1) + rng.random((m, n_categories)) * 1e-3
    ranked = np.argsort(-totals, axis=1)[:, :MAX_FAVOURITES]
    return _State(k=np.ones(m, int), favourites=ranked, slot=np.ones((m, MAX_FAVOURITES)) * 2.0,
                  background=np.ones((m, n_categories)), shifted=np.zeros(m, bool),
                  to=ranked[:, -1].copy(), drift=np.zeros(m, bool),
                  shift_at=np.full(m, 0.5 * (SHIFT_WINDOW[0] + SHIFT_WINDOW[1]) * span))


def posterior_forecast(shop: SyntheticShop, histories: SessionHistories, sweeps: int = 600, burn_in: int = 200,
                       chains: int = 2, seed: int = 0, batch: int = 1000, progress: bool = False) -> PosteriorForecast:
    """The posterior predictive of the category of the session at ``histories.at``.

    Args:
        sweeps: Metropolis-Hastings sweeps per chain (every move once per sweep).
        burn_in: sweeps discarded before averaging.
        chains: independent chains per decision point (at least 2, for ``chain_spread``).
        batch: decision points sampled together (memory: batch x chains x sessions x categories).
    """
    if chains < 2 or not 0 <= burn_in < sweeps:
        raise ValueError("need chains >= 2 and 0 <= burn_in < sweeps")
    rng = np.random.default_rng(seed)
    model = _Model(shop, histories)
    n, categories = len(histories.at), shop.config.n_categories
    forecast = np.zeros((n, chains, categories))
    accepted: dict[str, list[float]] = {}
    order = np.argsort((~np.isnan(histories.start)).sum(axis=1), kind="stable")  # similar lengths together
    for first in tqdm(range(0, n, batch), desc="posterior", unit="batch", disable=not progress):
        points = order[first:first + batch]
        longest = max(int((~np.isnan(histories.start[points])).sum(axis=1).max()), 1)
        rows = np.repeat(points, chains)
        model_rows = _BatchModel(model, rows, longest)
        state = _initial_state(rng, histories.views[rows, :longest], categories, model.span)
        log_like = model_rows.log_likelihood(state)
        log_prior = model.log_prior(state)
        at = histories.at[rows][:, None]
        total = np.zeros((len(rows), categories))
        for sweep in range(sweeps):
            for name, move in _MOVES.items():
                proposal, log_ratio = move(rng, state, model)
                proposal_prior = model.log_prior(proposal)
                finite = np.isfinite(proposal_prior)
                proposal_like = np.full(len(rows), -np.inf)
                if finite.any():
                    proposal_like[finite] = model_rows.log_likelihood(_subset(proposal, finite), finite)
                log_accept = proposal_like + proposal_prior - log_like - log_prior + log_ratio
                accept = np.log(rng.random(len(rows))) < log_accept
                state.take(accept, proposal)
                log_like = np.where(accept, proposal_like, log_like)
                log_prior = np.where(accept, proposal_prior, log_prior)
                accepted.setdefault(name, []).append(float(accept.mean()))
            if sweep >= burn_in:
                total += model.preferences(state, at)[:, 0, :]
        forecast[points] = (total / (sweeps - burn_in)).reshape(len(points), chains, categories)
    spread = np.abs(forecast[:, :, None, :] - forecast[:, None, :, :]).max(axis=(1, 2, 3))
    return PosteriorForecast(forecast.mean(axis=1), spread, {k: float(np.mean(v)) for k, v in accepted.items()})


class _BatchModel:
    """The log likelihood of a fixed batch of chain rows, their sessions cut to ``longest``."""

    def __init__(self, model: _Model, rows: np.ndarray, longest: int):
        self.model = model
        self.start = model.histories.start[rows, :longest]
        self.views = model.histories.views[rows, :longest]
        self.present = ~np.isnan(self.start)

    def log_likelihood(self, state: _State, mask: np.ndarray | None = None) -> np.ndarray:
        """(m,) log P(the sessions of the rows (those of ``mask``) | state)."""
        start, views, present = ((self.start, self.views, self.present) if mask is None
                                 else (self.start[mask], self.views[mask], self.present[mask]))
        p = self.model.preferences(state, np.nan_to_num(start))
        off = np.log((1 - ON_CATEGORY_VIEW_SHARE) * p)
        on = np.log(ON_CATEGORY_VIEW_SHARE + (1 - ON_CATEGORY_VIEW_SHARE) * p)
        per_category = np.log(p) + views * (on - off)
        top = per_category.max(axis=2, keepdims=True)
        session = (views * off).sum(axis=2) + top[..., 0] + np.log(np.exp(per_category - top).sum(axis=2))
        return np.where(present, session, 0.0).sum(axis=1)


def _subset(state: _State, mask: np.ndarray) -> _State:
    return _State(*(getattr(state, f)[mask] for f in state.__dataclass_fields__))


# Moves: (rng, state, model) -> (proposal, log of q(reverse) / q(forward) plus Jacobians).

def _walk_background(rng, state, model):
    proposal = state.copy()
    step = WALK_SCALE * rng.standard_normal(state.background.shape)
    proposal.background = state.background * np.exp(step)
    return proposal, step.sum(axis=1)


def _walk_slots(rng, state, model):
    proposal = state.copy()
    step = WALK_SCALE * rng.standard_normal(state.slot.shape)
    proposal.slot = state.slot * np.exp(step)
    return proposal, step.sum(axis=1)


def _replace_favourite(rng, state, model):
    proposal = state.copy()
    rows = np.arange(len(state.k))
    slot = (rng.random(len(state.k)) * state.k).astype(int)
    proposal.favourites[rows, slot] = _non_favourite(rng, state, model.n_categories)
    return proposal, np.zeros(len(state.k))


def _grow_or_shrink(rng, state, model):
    """Add a favourite (uniform among the non-favourites) or drop the last, half each."""
    proposal = state.copy()
    rows = np.arange(len(state.k))
    grow = rng.random(len(state.k)) < 0.5
    can = np.where(grow, state.k < MAX_FAVOURITES, state.k > 1)
    new = _non_favourite(rng, state, model.n_categories)
    grow_rows = rows[grow & can]
    proposal.favourites[grow_rows, state.k[grow_rows]] = new[grow_rows]
    proposal.k = np.where(can, np.where(grow, state.k + 1, state.k - 1), state.k)
    log_ratio = np.where(grow, np.log(model.n_categories - state.k), -np.log(model.n_categories - state.k + 1.0))
    return proposal, np.where(can, log_ratio, 0.0)


def _swap_favourites(rng, state, model):
    proposal = state.copy()
    rows = np.arange(len(state.k))
    first = (rng.random(len(state.k)) * state.k).astype(int)
    second = (rng.random(len(state.k)) * state.k).astype(int)
    proposal.favourites[rows, first] = state.favourites[rows, second]
    proposal.favourites[rows, second] = state.favourites[rows, first]
    return proposal, np.zeros(len(state.k))


def _redraw_shift(rng, state, model):
    """The whole shift drawn from its prior given the favourites (an independence proposal:
    the prior terms cancel against the proposal's)."""
    m = len(state.k)
    proposal = state.copy()
    proposal.shifted = rng.random(m) < model.shift_fraction
    proposal.to = _non_favourite(rng, state, model.n_categories)
    proposal.drift = rng.random(m) < model.drift_fraction
    low, high = model.window
    proposal.shift_at = low + (high - low) * rng.random(m)
    log_prior_ratio = model.log_prior(state) - model.log_prior(proposal)  # cancels the prior in the acceptance
    return proposal, np.where(np.isfinite(log_prior_ratio), log_prior_ratio, -np.inf)


def _walk_shift(rng, state, model):
    """Move the shift time, redraw its target among the non-favourites, or flip drift against switch."""
    m = len(state.k)
    proposal = state.copy()
    kind = rng.integers(0, 3, m)
    proposal.shift_at = np.where(kind == 0, state.shift_at + SHIFT_TIME_STEP_DAYS * 86400 * rng.standard_normal(m),
                                 state.shift_at)
    proposal.to = np.where(kind == 1, _non_favourite(rng, state, model.n_categories), state.to)
    proposal.drift = np.where(kind == 2, ~state.drift, state.drift)
    return proposal, np.zeros(m)


def _favourite_becomes_target(rng, state, model):
    """Half the time, an unshifted chain with k >= 2 drops a favourite (slot and weight to
    the end) and shifts to it; otherwise a shifted chain with k <= 2 stops shifting and makes
    its target a favourite at a uniform position, its new (unused) target drawn among the
    non-favourites. Links "two favourites" with "one favourite, then a shift" in one step."""
    m = len(state.k)
    proposal = state.copy()
    rows = np.arange(m)
    forward = rng.random(m) < 0.5
    can = np.where(forward, ~state.shifted & (state.k >= 2), state.shifted & (state.k <= MAX_FAVOURITES - 1))
    log_ratio = np.zeros(m)
    for row in np.flatnonzero(can):
        k = int(state.k[row])
        favourites, slot = list(state.favourites[row]), list(state.slot[row])
        if forward[row]:
            i = int(rng.integers(k))
            category, weight = favourites.pop(i), slot.pop(i)
            favourites.insert(k - 1, category)
            slot.insert(k - 1, weight)
            proposal.k[row], proposal.to[row], proposal.shifted[row] = k - 1, category, True
            log_ratio[row] = -np.log(model.n_categories - k)
        else:
            j = int(rng.integers(k + 1))
            favourites[k] = state.to[row]
            category, weight = favourites.pop(k), slot.pop(k)
            favourites.insert(j, category)
            slot.insert(j, weight)
            proposal.k[row], proposal.shifted[row] = k + 1, False
            proposal.favourites[row] = favourites
            proposal.to[row] = _non_favourite(rng, _subset(proposal, rows == row), model.n_categories)[0]
            log_ratio[row] = np.log(model.n_categories - k - 1)
        proposal.favourites[row], proposal.slot[row] = favourites, slot
    return proposal, log_ratio


_MOVES = {"background walk": _walk_background, "slot walk": _walk_slots, "replace favourite": _replace_favourite,
          "add or drop favourite": _grow_or_shrink, "swap favourites": _swap_favourites, "redraw shift": _redraw_shift,
          "shift walk": _walk_shift, "favourite becomes target": _favourite_becomes_target}


def session_histories(shop: SyntheticShop, views: pd.DataFrame, user_id: np.ndarray, at: pd.Series) -> SessionHistories:
    """Each decision point's earlier sessions from the shop's views.

    Args:
        views: one row per view event: user_id, session_id, event_timestamp (UTC), category
            (the shop's category name).
        user_id: (n,) the decision points' users; at: (n,) their session starts (UTC).
    """
    code = {name: i for i, name in enumerate(shop.categories)}
    seconds = (pd.DatetimeIndex(pd.to_datetime(views.event_timestamp, utc=True)).asi8 - shop.start.value) / 1e9
    frame = pd.DataFrame({"user_id": views.user_id.to_numpy(), "session_id": views.session_id.to_numpy(),
                          "seconds": seconds, "category": views.category.map(code).to_numpy()})
    sessions = frame.groupby(["user_id", "session_id"], sort=False).agg(start=("seconds", "min")).reset_index()
    counts = pd.crosstab([frame.user_id, frame.session_id], frame.category).reindex(columns=range(len(code)), fill_value=0)
    sessions = sessions.join(counts, on=["user_id", "session_id"]).sort_values(["user_id", "start"], kind="stable")
    by_user = {user: group for user, group in sessions.groupby("user_id", sort=False)}
    at_seconds = (pd.DatetimeIndex(pd.to_datetime(at, utc=True)).asi8 - shop.start.value) / 1e9
    earlier = [by_user[u][by_user[u].start.to_numpy() < t] if u in by_user else sessions.iloc[:0]
               for u, t in zip(np.asarray(user_id), at_seconds)]
    longest = max([len(e) for e in earlier] + [1])
    start = np.full((len(earlier), longest), np.nan)
    counts_out = np.zeros((len(earlier), longest, len(code)))
    for row, group in enumerate(earlier):
        start[row, :len(group)] = group.start.to_numpy()
        counts_out[row, :len(group)] = group[list(range(len(code)))].to_numpy()
    return SessionHistories(start, counts_out, at_seconds)
