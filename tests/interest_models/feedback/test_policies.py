"""Policies, propensities and off-policy estimators on known distributions (no database)."""
from __future__ import annotations

import numpy as np
import pytest

from interest_models.config import load_config
from interest_models.evaluation.off_policy import ReplayedLists, estimate, fit_position_bias
from interest_models.feedback.drift import DriftMonitor, DriftSignal, episode_start, js_divergence
from interest_models.policies.click_effects import EffectTable
from interest_models.policies.context import UserState, build_context, candidate_categories, context_columns
from interest_models.policies.linear_bandit import position_bias
from interest_models.policies.reranking import BanditPolicy, GreedyPolicy, PolicyRequest, check_bounds
from interest_models.policies.slate import diversified_order, draw, marginal_probabilities
from interest_models.registry.model_registry import RegistryError
from interest_models.registry.policy_registry import PolicyRegistry
from interest_models.training.retraining import decide

N_CATEGORIES = 4


def _request(rng, n=12):
    state = UserState(rng.random(N_CATEGORIES), rng.random(N_CATEGORIES) * 3, rng.dirichlet(np.ones(N_CATEGORIES)),
                      rng.dirichlet(np.ones(N_CATEGORIES)), 0.2, np.r_[0, rng.dirichlet(np.ones(N_CATEGORIES))])
    blend = rng.normal(size=n)
    context = build_context(blend, rng.integers(1, N_CATEGORIES + 1, n), state, rng.integers(0, 5, n), rng.random(n) * 5, N_CATEGORIES)
    embeddings = rng.normal(size=(n, 8))
    return PolicyRequest(context, blend, embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True), np.arange(101, 101 + n))


def test_logged_propensities_are_the_frequencies_of_the_draws():
    rng = np.random.default_rng(1)
    order, n, k, exploration = np.array([3, 0, 7, 5]), 9, 4, 0.3
    counts = np.zeros((n, k))
    draws = 40_000
    for _ in range(draws):
        slate = draw(order, n, exploration, rng)
        counts[slate.rows, np.arange(k)] += 1
        expected = marginal_probabilities(order, n, exploration)[slate.rows, np.arange(k)]
        np.testing.assert_allclose(slate.propensity, expected)
    marginals = marginal_probabilities(order, n, exploration)
    np.testing.assert_allclose(marginals.sum(axis=0), 1.0)
    assert np.abs(counts / draws - marginals).max() < 0.01  # binomial sd <= 0.0025


def test_the_diversity_term_spreads_the_list():
    scores = np.array([1.0, 0.99, 0.98, 0.5])
    same = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    assert diversified_order(scores, 2).tolist() == [0, 1]
    assert diversified_order(scores, 2, same, diversity=0.6).tolist() == [0, 3]


def test_an_untrained_bandit_orders_like_the_blend_and_learns_what_clicks():
    config = load_config("policy", {"ucb_alpha": 0.0, "diversity": 0.0})
    columns = context_columns(N_CATEGORIES)
    rng = np.random.default_rng(2)
    request = _request(rng)
    bandit = BanditPolicy.untrained(columns, config)
    assert bandit.order(request, 5).tolist() == GreedyPolicy().order(request, 5).tolist()
    # Clicks only ever on category 2: the bandit learns to put category 2 first.
    category_2 = request.context[:, columns.index("category_2")] == 1
    for _ in range(30):
        positions = rng.integers(1, 11, request.n)
        examined = rng.random(request.n) < position_bias(positions)
        bandit.learn(request.context, positions, examined & category_2)
    top = bandit.order(request, int(category_2.sum()))
    assert category_2[top].all()


def test_the_bandit_learns_which_of_two_items_with_the_same_context_is_clicked_more():
    # Items 7 and 8 look the same to the shared weights (identical context rows); shoppers
    # click 7 three times as often. Only the item effects can tell them apart.
    columns = context_columns(N_CATEGORIES)
    config = load_config("policy", {"ucb_alpha": 0.0, "diversity": 0.0})
    request = _request(np.random.default_rng(4), n=2)
    request = PolicyRequest(np.repeat(request.context[:1], 2, axis=0), np.zeros(2), None, np.array([7, 8]))
    with_effects = BanditPolicy.untrained(columns, config)
    without = BanditPolicy.untrained(columns, {**config, "item_prior_clicks": 0.0})
    rng = np.random.default_rng(5)
    for _ in range(300):
        positions = rng.permutation([1, 2])
        clicks = (rng.random(2) < position_bias(positions)) & (rng.random(2) < np.array([0.3, 0.1]))
        for policy in (with_effects, without):
            policy.learn(request.context, positions, clicks, request.item_ids)
    effects = with_effects.effects.items.of(request.item_ids.tolist())
    assert effects[0] / effects[1] > 2  # 3 in truth, shrunk by the prior pseudo-clicks
    rates = with_effects.bandit.expected_attraction(request.context * effects[:, None])
    np.testing.assert_allclose(rates, [0.3, 0.1], atol=0.05)  # the shared weights and the effects split the scale
    assert with_effects.order(request, 2).tolist() == [0, 1]
    scores = without.scores(request)
    assert scores[0] == scores[1] and without.effects.items.of(request.item_ids.tolist()).tolist() == [1.0, 1.0]


def test_the_bandit_learns_each_users_own_taste_for_a_category():
    # The same two candidates (categories 1 and 2) and the same context for two users: user 1
    # clicks category 1 three times as often as category 2, user 2 the other way round. The
    # shared weights and the item effects see the same rows and the same average; only the
    # taste effects can order the two lists differently.
    columns = context_columns(N_CATEGORIES)
    config = load_config("policy", {"ucb_alpha": 0.0, "diversity": 0.0, "taste_effects_discount": 1.0})
    state = UserState(*(np.full(N_CATEGORIES, 0.25),) * 4, 0.0, np.zeros(N_CATEGORIES + 1))
    context = build_context(np.zeros(2), np.array([1, 2]), state, np.zeros(2), np.zeros(2), N_CATEGORIES)
    assert candidate_categories(context).tolist() == [1, 2]
    requests = {user: PolicyRequest(context, np.zeros(2), None, np.array([7, 8]), user) for user in (1, 2)}
    rates = {1: np.array([0.3, 0.1]), 2: np.array([0.1, 0.3])}
    with_tastes = BanditPolicy.untrained(columns, config)
    without = BanditPolicy.untrained(columns, {**config, "taste_prior_clicks": 0.0})
    rng = np.random.default_rng(6)
    for _ in range(300):
        for user, request in requests.items():
            positions = rng.permutation([1, 2])
            clicks = (rng.random(2) < position_bias(positions)) & (rng.random(2) < rates[user])
            for policy in (with_tastes, without):
                policy.learn(context, positions, clicks, request.item_ids, np.full(2, user))
    tastes = {user: with_tastes.effects.tastes.of(with_tastes.effects.tastes.key([user, user], [1, 2])) for user in (1, 2)}
    assert tastes[1][0] / tastes[1][1] > 2 and tastes[2][1] / tastes[2][0] > 2  # 3 in truth, shrunk by the prior
    assert with_tastes.order(requests[1], 2).tolist() == [0, 1] and with_tastes.order(requests[2], 2).tolist() == [1, 0]
    np.testing.assert_allclose(without.scores(requests[1]), without.scores(requests[2]))
    assert len(without.effects.tastes) == 0


def test_an_effect_table_sums_by_key_and_saves_its_key_parts(tmp_path):
    table = EffectTable(2.0, ("user_id", "category_id"), "tastes.npz")
    keys = table.key(np.array([10**9, 3, 10**9]), np.array([7, 7, 7]))
    table.update(keys, np.array([1.0, 0.0, 1.0]), np.array([0.5, 0.5, 0.5]))
    table.update(table.key([3], [1]), np.array([0.0]), np.array([1.0]))
    assert len(table) == 3
    np.testing.assert_allclose(table.of(keys), [(2 + 2) / (1 + 2), 2 / 2.5, 4 / 3])
    np.testing.assert_allclose(table.of(table.key([5], [7]), optimism=1.0), [(2 + np.sqrt(2)) / 2])  # never seen: the prior
    table.save(tmp_path)
    with np.load(tmp_path / "tastes.npz", allow_pickle=False) as saved:
        assert saved["user_id"].tolist() == [3, 3, 10**9] and saved["category_id"].tolist() == [1, 7, 7]
    loaded = EffectTable(2.0, ("user_id", "category_id"), "tastes.npz").load(tmp_path)
    np.testing.assert_allclose(loaded.of(keys), table.of(keys))
    with pytest.raises(ValueError, match="key part outside"):
        table.key([1], [1 << 16])


def test_exploration_and_bonus_are_bounded():
    for override in ({"exploration": 0.5}, {"ucb_alpha": 2.0}, {"exploration": -0.1}, {"taste_optimism": 4.0}):
        with pytest.raises(ValueError, match="outside"):
            check_bounds(load_config("policy", override))
    with pytest.raises(ValueError, match="unknown context columns"):
        BanditPolicy.untrained(context_columns(N_CATEGORIES), load_config("policy", {"prior_weights": {"nope": 1.0}}))


def test_exploration_decays_by_days_learned_to_its_floor_and_the_logged_propensities_follow():
    config = load_config("policy", {"exploration": 0.08, "exploration_decay_days": 1, "exploration_min": 0.02})
    policy = BanditPolicy.untrained(context_columns(N_CATEGORIES), config)
    schedule = []
    for _ in range(40):
        schedule.append(policy.exploration)
        policy.end_day()
    assert schedule[0] == 0.08 and schedule[1] == pytest.approx(0.08 / np.sqrt(2)) and schedule[3] == pytest.approx(0.04)
    assert all(a >= b for a, b in zip(schedule, schedule[1:])) and schedule[-1] == 0.02  # 0.08 / sqrt(1 + 39) < 0.02
    slate, _ = policy.choose(_request(np.random.default_rng(7), n=10), 4, np.random.default_rng(8))
    assert set(np.round(slate.propensity, 12)) <= {round(0.98 + 0.002, 12), round(0.002, 12)}
    constant = BanditPolicy.untrained(context_columns(N_CATEGORIES), {**config, "exploration_decay_days": 0})
    for _ in range(10):
        constant.end_day()
    assert constant.exploration == 0.08
    with pytest.raises(ValueError, match="exploration_min"):
        check_bounds({**config, "exploration_min": 0.1})


def test_policy_registry_round_trip_without_pickle(tmp_path):
    columns = context_columns(N_CATEGORIES)
    rng = np.random.default_rng(3)
    request = _request(rng)
    policy = BanditPolicy.untrained(columns, load_config("policy"))
    request.user_id = 5
    policy.learn(request.context, np.arange(1, request.n + 1), rng.random(request.n) < 0.3, request.item_ids,
                 np.full(request.n, 5))
    policy.end_day()
    assert len(set(policy.effects.items.of(request.item_ids.tolist()).round(12))) > 1
    assert len(policy.effects.tastes) == len(set(candidate_categories(request.context).tolist()))
    registry = PolicyRegistry(tmp_path / "policies")
    version = registry.register(policy, columns, {"learned_until": "2026-10-01"})
    registry.set_serving(version)
    loaded = registry.load(context_columns=columns)
    np.testing.assert_allclose(loaded.scores(request), policy.scores(request))
    assert loaded.version == version and loaded.bandit.observations == request.n
    users = np.full(request.n, 5)
    np.testing.assert_allclose(loaded.effects.of(request.context, request.item_ids, users),
                               policy.effects.of(request.context, request.item_ids, users))
    for name in ("keys", "clicks", "predicted"):
        np.testing.assert_array_equal(getattr(loaded.effects.tastes, name), getattr(policy.effects.tastes, name))
    assert loaded.bandit.days == 1 and loaded.exploration == policy.exploration < load_config("policy")["exploration"]
    with pytest.raises(RegistryError, match="other context columns"):
        registry.load(context_columns=columns[:-1])
    (tmp_path / "policies" / version / "bandit.npz").write_bytes(b"changed")
    with pytest.raises(RegistryError, match="changed after registration"):
        registry.load()


def _simulated_log(rng, target, logger, n_lists=4000, k=4, n=8):
    """Logged lists of ``logger`` answered by a position-based click model, the target's
    replay arrays and its true per-impression CTR on the same requests."""
    theta = position_bias(np.arange(1, k + 1)) ** 1.3
    shape = (n_lists, k)
    arrays = {name: np.zeros(shape) for name in ("reward", "logged", "target", "direct", "model")}
    truth = 0.0
    for i in range(n_lists):
        request = _request(rng, n)
        attraction = 0.05 + 0.5 * rng.random(n)
        slate, _ = logger.choose(request, k, rng)
        target_marginals = target.marginals(request, k)
        truth += float((attraction @ target_marginals) @ theta) / k
        arrays["reward"][i] = rng.random(k) < theta * attraction[slate.rows]
        arrays["logged"][i] = slate.propensity
        arrays["target"][i] = target_marginals[slate.rows, np.arange(k)]
        model = np.full(n, 0.3)  # a poor reward model: DR stays unbiased
        arrays["direct"][i] = theta * (model @ target_marginals)
        arrays["model"][i] = theta * model[slate.rows]
    lists = ReplayedLists.item_position(arrays["reward"], arrays["logged"], arrays["target"], arrays["direct"], arrays["model"],
                                        np.ones(shape, bool))
    return lists, truth / n_lists


def test_off_policy_intervals_cover_the_true_ctr_of_another_policy():
    rng = np.random.default_rng(4)
    columns = context_columns(N_CATEGORIES)
    logger = BanditPolicy.untrained(columns, load_config("policy", {"exploration": 0.2, "ucb_alpha": 0.0}))
    lists, truth = _simulated_log(rng, GreedyPolicy(), logger)
    table = estimate(lists, n_boot=300)
    for estimator, row in table.iterrows():
        assert row.low <= truth <= row.high, (estimator, truth, row.to_dict())
        assert row.high - row.low < 0.5 * truth  # informative, not just wide
    # Kish's effective impressions: far fewer than logged when the weights are uneven.
    weights = lists.weight[lists.present]
    assert table.effective_impressions.iloc[0] == pytest.approx(weights.sum() ** 2 / (weights ** 2).sum())
    assert 0 < table.effective_impressions.iloc[0] < lists.present.sum()
    # On its own logs every weight is 1: IPS is the observed click rate, every impression counts.
    same, _ = _simulated_log(rng, logger, logger, n_lists=500)
    own = estimate(same, n_boot=10)
    assert own.loc["IPS", "estimate"] == pytest.approx(same.reward.mean())
    assert own.loc["IPS", "effective_impressions"] == pytest.approx(same.present.sum())


def test_a_log_without_the_rare_heavy_clicks_still_gets_the_interval_the_reward_model_predicts():
    # 200 lists of 2 positions; no click happened, so every resample says 0 and the
    # bootstrap alone would claim certainty. The reward model expects clicks at rate m.
    n, k = 200, 2
    weight = np.tile([4.0, 0.5], (n, 1))
    model = np.full((n, k), 0.1)
    direct = np.full((n, k), 0.1)  # the model's value of the target's choice per position
    lists = ReplayedLists(np.zeros((n, k)), weight, np.ones((n, k)), direct, model, np.ones((n, k), bool))
    table = estimate(lists, n_boot=50)
    assert (table.estimate.loc[["IPS", "SNIPS"]] == 0).all()
    clicks = (weight ** 2 * model * (1 - model)).sum(1)
    spread = ((weight * model).sum(1) - direct.sum(1)) ** 2  # the weighted model reward around its expectation
    ips_se = np.sqrt((clicks + spread).sum()) / (n * k)
    assert table.loc["IPS", "high"] == pytest.approx(1.959964 * ips_se, rel=1e-5)
    assert table.loc["IPS", "low"] == 0  # a click rate: the widened bound stops at 0
    assert table.loc["DR", "high"] - table.loc["DR", "estimate"] == pytest.approx(1.959964 * np.sqrt(clicks.sum()) / (n * k), rel=1e-5)
    assert table.loc["SNIPS", "high"] > 0


def _day_of_clicks(rng, preference, users=300):
    """One day's clicks per category: each user clicks a few times, mostly in one category of
    their own (overdispersed, as real and simulated days are)."""
    favourite = rng.choice(len(preference), users, p=preference)
    clicks = np.zeros(len(preference))
    for category, n in zip(favourite, rng.poisson(1.5, users)):
        own = rng.multinomial(n, np.where(np.arange(len(preference)) == category, 0.8, 0.2 / (len(preference) - 1)))
        clicks += own
    return clicks


def test_drift_monitor_flags_a_changed_click_mix_and_not_user_noise():
    rng = np.random.default_rng(5)
    monitor = DriftMonitor(window_days=7)
    before, after = np.array([0.4, 0.3, 0.2, 0.1]), np.array([0.25, 0.3, 0.2, 0.25])
    flags = [monitor.observe(day, _day_of_clicks(rng, before), 4000, 400).drifted for day in range(40)]
    assert not any(flags)
    assert monitor.observe(40, _day_of_clicks(rng, after), 4000, 400).drifted
    assert js_divergence(before, before) == pytest.approx(0.0)


def test_drift_monitor_flags_a_rise_of_the_shift_rate_not_its_noise():
    rng = np.random.default_rng(9)
    monitor = DriftMonitor(window_days=7)
    mix = np.array([0.4, 0.3, 0.2, 0.1])
    signals = [monitor.observe(day, _day_of_clicks(rng, mix), 0, 0, 800, rng.binomial(800, 0.25)) for day in range(30)]
    assert not any(s.drifted for s in signals) and signals[-1].baseline_shift_rate == pytest.approx(0.25, abs=0.02)
    risen = monitor.observe(30, _day_of_clicks(rng, mix), 0, 0, 800, rng.binomial(800, 0.4))
    assert risen.drifted and risen.reasons == ("shift rate",)
    few = DriftMonitor(window_days=2)
    for day in range(3):
        few.observe(day, _day_of_clicks(rng, mix), 0, 0, 50, 10)
    assert not few.observe(3, _day_of_clicks(rng, mix), 0, 0, 50, 40).drifted  # under min_users active users


def test_a_drift_episode_starts_at_its_first_flagged_day():
    flags = [False, True, True, False, True, True, True]
    signals = [DriftSignal(day, 0.0, 1.0, 0.1, 0.1, drifted) for day, drifted in enumerate(flags)]
    assert episode_start(signals, days=1) == 4
    assert episode_start(signals[:3], days=1) == 1
    assert episode_start(signals[:4], days=1) is None  # the newest day did not drift
    assert episode_start(signals[:4], days=2) == 1


def test_a_challenger_is_promoted_only_when_it_beats_the_serving_model_by_the_margin():
    comparison = {"new NDCG@10": 0.31, "serving NDCG@10": 0.30, "NDCG@10 difference": 0.01,
                  "NDCG@10 difference 95% low": -0.002, "NDCG@10 difference 95% high": 0.022}
    assert decide(comparison, "v1", None, 0.0)[0]
    promote, reason = decide(comparison, "v1", None, 0.01)
    assert not promote and "not above" in reason
    assert decide(None, None, None, 0.0) == (True, "no model was serving")
    promote, reason = decide(None, "v1", "checksum mismatch", 0.0)
    assert not promote and "checksum mismatch" in reason


def test_the_position_bias_fit_finds_the_exponent_of_random_lists():
    rng = np.random.default_rng(6)
    positions = rng.integers(1, 11, 200_000)
    clicks = rng.random(len(positions)) < 0.3 * positions ** -0.8
    assert fit_position_bias(positions, clicks) == pytest.approx(0.8, abs=0.05)
