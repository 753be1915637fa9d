"""The feedback loop over simulated days: greedy blend vs bandit, with and without a planted
population shift, with and without drift-triggered retraining, off-policy estimates against
the on-policy truth, and the CPU the bandit adds per request.

Builds a synthetic shop in a throw-away database (load, embed, features, Feast, training,
as ``interest run`` does), then runs each arm of the simulation (``interest_models/simulation``)
with the same users on the same days (and the same users' own browsing):

    greedy, bandit                    no shift
    bandit, constant exploration      the bandit without the exploration schedule
    greedy + shift, bandit + shift    ``--shift-fraction`` of the users change their dominant
                                      category, all to the same one, at ``--shift-day``
    greedy + shift + refresh          from the end of the first day the drift monitor flags,
                                      the daily feature pipeline runs: the feature tables are
                                      rebuilt from the simulated events and materialized every
                                      day; the same model serves with fresh features
    greedy + shift + retrain          the same, each day through ``retrain(if_drift=True)`` (what
                                      ``interest retrain --if-drift`` runs from cron): features
                                      rebuilt, and on a new drift episode a challenger trained,
                                      compared with the serving model on the same test points,
                                      promoted only if better

Before the first alarm both keep the features of day 0, as every other arm does (the
simulated days' features are built only from the alarm on: a daily build for 30 days and 7
arms would take hours here). The first five run on a log database (schema and catalogue); the last two on a copy of the
shop (built again from the same seed) that receives the simulated events, with a copy of the
model registry. Printed per arm: CTR (clicks per impression), CVR (purchases per impression
and per click), catalogue coverage, intra-list distance (mean pairwise 1 - cosine of item text
embeddings), cumulative regret against the oracle (the best k of the same candidates by the
true click probabilities) by thirds of the run, split into the part the exploration costs
(the deterministic lists' expected clicks minus the shown ones') and the part the
deterministic lists miss against the oracle, the drift monitor's alarms (false ones: days
without a shift), the CTR lost to the shift and the share of it retraining recovers. Then
off-policy: from the bandit arm's requests answered again (a log the learned bandit did not
fit), IPS / SNIPS / DR estimates with 95 % intervals of the greedy blend's CTR and of the
bandit without exploration, against each one's true expected CTR on the same logged
requests, then how often those intervals cover the truth when the same requests are
answered again ``--ope-replications`` times (the exploration draws and
the shoppers' answers redrawn; one log can miss by chance, and its 18 intervals share the same
random lists, so they miss together). Last, in process, the CPU per ``recommend`` call
of greedy and bandit on the same users (alternating), with the feedback views materialized.

    python bench/feedback_loop_benchmark.py [--users 2000] [--items 1000] [--days 30] [--users-per-day 400]
    python bench/feedback_loop_benchmark.py --only-retraining   # greedy, greedy + shift, refresh, retrain
    python bench/feedback_loop_benchmark.py --skip-retraining   # all but refresh and retrain
"""
from __future__ import annotations

import argparse
import copy
import datetime as dt
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import load_average, machine_info, progress, silence_known_warnings, table, throwaway_database  # noqa: E402

STATIONARY = {"daily_discount": 1.0, "taste_effects_discount": 1.0, "exploration_min": 0.0, "diversity": 0.0}
"""``--regret-study``: the bandit without what it pays for on purpose in a changing shop
(forgetting, an exploration floor for off-policy replay, the diversity penalty)."""
HINDSIGHT = "best fixed policy in hindsight"
DAILY_TTL_DAYS = 60  # feature_repo/feature_views.py DAILY_TTL


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--categories", type=int, default=12)
    parser.add_argument("--shop-days", type=int, default=90, help="days of history before the simulation")
    parser.add_argument("--days", type=int, default=30, help="simulated days")
    parser.add_argument("--users-per-day", type=int, default=400)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--shift-day", type=int, default=15)
    parser.add_argument("--shift-fraction", type=float, default=0.5)
    parser.add_argument("--latency-requests", type=int, default=400)
    parser.add_argument("--organic-views", type=int, default=4, help="each served user's own views per day")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--fast", action="store_true", help="the test suite's small model settings")
    parser.add_argument("--regret-study", action="store_true",
                        help="only greedy, bandit, the stationary bandit and the best fixed policy of its class in hindsight "
                             "(fitted on all days, and on the first third and two thirds); regret against the oracle and "
                             "against that policy (run it with --days 90)")
    parser.add_argument("--only-retraining", action="store_true",
                        help="only the arms greedy, greedy + shift, refresh and retrain; no off-policy or CPU figures")
    parser.add_argument("--skip-retraining", action="store_true",
                        help="leave out the refresh and retrain arms (each builds a copy of the shop and runs the daily "
                             "pipeline: most of the run's time)")
    parser.add_argument("--ope-replications", type=int, default=100,
                        help="off-policy coverage: the bandit arm's requests answered again this many times (new "
                             "exploration draws and shopper answers), each log through the same estimators; 0 skips it")
    parser.add_argument("--ope-boot", type=int, default=200, help="bootstrap resamples per estimate in those replications")
    args = parser.parse_args()
    if args.only_retraining and args.skip_retraining:
        parser.error("--only-retraining and --skip-retraining exclude each other")
    return args


def main() -> None:
    args = parse_args()
    silence_known_warnings()
    import pandas as pd
    import psycopg
    import torch

    from interest_models.config import load_config
    from interest_models.feedback.impression_log import read_feedback
    from interest_models.policies.reranking import BanditPolicy, GreedyPolicy
    from interest_models.registry.model_registry import ModelRegistry
    from interest_models.serving.recommender import Recommender
    from interest_models.simulation.feedback_loop import FeedbackLoop, LoopConfig, prepare_users
    from interest_models.simulation.shoppers import SimulatedShoppers
    from interest_models.training.recipe import train_models
    from materialize.ingest.loader import load_frames
    from materialize.ingest.sources.synthetic import SyntheticConfig, SyntheticShop, start_of_today
    from materialize.database.server import ensure_database
    from materialize.database.tables import create_schema
    from materialize.pipeline import Pipeline
    from materialize.settings import load_settings
    import dataclasses
    import shutil
    import tempfile

    from threadpoolctl import threadpool_limits

    torch.set_num_threads(1)
    threadpool_limits(limits=1)  # as each service worker (interest_models.serving.http_app.app_from_environment)
    settings = load_settings()
    # The simulated days follow the shop's history. Within the daily views' ttl (60 days) they
    # lie in the past, as the loader and materialization expect; a longer run (--regret-study,
    # which neither refreshes nor retrains) ends the history yesterday, so the users'
    # features are fresh, and its loader accepts the simulated days ahead of the clock.
    long_run = args.days + 2 > DAILY_TTL_DAYS
    end = start_of_today() - pd.Timedelta(days=1 if long_run else args.days + 2)
    if long_run and not args.regret_study:
        raise SystemExit(f"--days {args.days}: runs beyond {DAILY_TTL_DAYS - 2} days need --regret-study")
    load_kwargs = {"future_tolerance_s": (args.days + 2) * 86400.0} if long_run else None
    shop_config = SyntheticConfig(n_users=args.users, n_items=args.items, n_categories=args.categories, days=args.shop_days,
                                  seed=args.seed, end=end)
    shop = SyntheticShop(shop_config)
    start = (shop_config.end + pd.Timedelta(days=1)).to_pydatetime()
    fast = {"lstm": {"max_epochs": 6, "patience": 2, "hidden_dim": 64, "item_dim": 32},
            "ranker": {"n_estimators": 60, "early_stopping_rounds": 15}} if args.fast else None
    print(f"machine: {machine_info()}")
    print(f"shop: {args.users} users, {args.items} items, {args.categories} categories, {args.shop_days} days of history "
          f"(seed {args.seed}); simulation: {args.days} days x {args.users_per_day} users x k={args.k}; "
          f"shift: {args.shift_fraction:.0%} of users at day {args.shift_day}; load at start {load_average()}")
    with throwaway_database(prefix="wt13_fbshop") as shop_pg, tempfile.TemporaryDirectory() as registry_dir:
        shop_settings = dataclasses.replace(settings, postgres=shop_pg)
        with Pipeline(shop_settings, progress=False) as pipeline:
            began = time.perf_counter()
            pipeline.run(lambda p: p.load_synthetic(shop_config))
            progress(f"shop loaded, features built and materialized in {time.perf_counter() - began:.0f} s")
            began = time.perf_counter()
            result = train_models(pipeline.store, pipeline.conn, dt.timedelta(minutes=30), overrides=fast)
            registry = ModelRegistry(Path(registry_dir))
            registry.set_serving(registry.register(result))
            progress(f"models trained in {time.perf_counter() - began:.0f} s: test NDCG@10 of the blend "
                     f"{result.metrics.loc['blend (LSTM + XGBoost)', 'NDCG@10']:.4f}")
            names = dict(pipeline.conn.execute("SELECT category_id, category FROM interest.categories"))
            recommender = Recommender.from_registry(registry.root, pipeline.store, names)
            began = time.perf_counter()
            prepared = prepare_users(recommender, range(1, args.users + 1))
            progress(f"{len(prepared)} warm users' candidates scored in {time.perf_counter() - began:.1f} s")
            policy_config = load_config("policy")
            constant = {**policy_config, "exploration_decay_days": 0}
            stationary = {**policy_config, **STATIONARY}
            if args.regret_study:
                arms = [("greedy", None, None), ("bandit", None, policy_config), ("bandit, stationary", None, stationary)]
            else:
                arms = [("greedy", None, None), ("bandit", None, policy_config), ("bandit, constant exploration", None, constant),
                        ("greedy + shift", args.shift_day, None), ("bandit + shift", args.shift_day, policy_config)]
            if args.only_retraining:
                arms = [arm for arm in arms if arm[2] is None]
            days, logs, retraining, learned_policies = {}, {}, {}, {}

            def run_arm(label: str, policy, shift_day: int | None, learn: bool = True, snapshot_after: tuple = ()) -> None:
                """One arm on its own log database (schema and catalogue): ``days[label]``, and for
                the bandit arm its log and last feedback rows (off-policy and CPU figures);
                ``snapshots[d]``: a copy of the policy after learning days 0 to d - 1, for each d
                in ``snapshot_after``."""
                nonlocal user_fb, item_fb
                with throwaway_database(prefix="wt13_fblog") as log_pg:
                    ensure_database(log_pg)
                    conn = psycopg.connect(log_pg.conninfo())
                    create_schema(conn)
                    load_frames(conn, "items", [shop.items()], source="catalogue")
                    loop = FeedbackLoop(conn, recommender, SimulatedShoppers(shop, pd.Timestamp(start), seed=args.seed), prepared, start,
                                        load_kwargs)
                    if snapshot_after:
                        loop.after_day = lambda day, signal: (snapshots.__setitem__(day + 1, copy.deepcopy(policy))
                                                              if day + 1 in snapshot_after else None)
                    began = time.perf_counter()
                    config = LoopConfig(days=args.days, users_per_day=args.users_per_day, k=args.k, shift_day=shift_day,
                                        shift_fraction=args.shift_fraction, organic_views=args.organic_views, seed=args.seed,
                                        learn=learn)
                    days[label] = loop.run(policy, config, label)
                    progress(f"arm {label}: {args.days} days in {time.perf_counter() - began:.0f} s")
                    learned_policies[label] = policy
                    if label == "bandit":
                        logs[label] = read_feedback(conn, start, start + dt.timedelta(days=args.days))
                        last = start + dt.timedelta(days=args.days)
                        user_fb = conn.execute("SELECT DISTINCT ON (user_id) * FROM interest.user_feedback_daily WHERE "
                                               "event_timestamp <= %s ORDER BY user_id, event_timestamp DESC", (last,)).fetchall()
                        item_fb = conn.execute("SELECT DISTINCT ON (item_id) * FROM interest.item_feedback_daily WHERE "
                                               "event_timestamp <= %s ORDER BY item_id, event_timestamp DESC", (last,)).fetchall()
                        conn.commit()
                    conn.close()

            user_fb = item_fb = None
            snapshots = {}
            thirds = (args.days // 3, 2 * args.days // 3)
            for label, shift_day, bandit_config in arms:
                policy = GreedyPolicy() if bandit_config is None else BanditPolicy.untrained(recommender.context_columns, bandit_config)
                run_arm(label, policy, shift_day, snapshot_after=thirds if label == "bandit, stationary" else ())
            if args.regret_study:
                # The best fixed policy of the bandit's class in hindsight: the linear weights,
                # item and taste effects fitted to everything the stationary bandit logged (its final
                # statistics), served from day 0 without learning, exploration or confidence bonuses.
                # The same fitted to its first third and first two thirds show whether that
                # policy's own gap to the oracle shrinks with the data (no floor) or not.
                fixed = {**stationary, "ucb_alpha": 0.0, "item_optimism": 0.0, "taste_optimism": 0.0, "exploration": 0.0}
                for learned_days, fitted in [*sorted(snapshots.items()), (args.days, learned_policies["bandit, stationary"])]:
                    label = HINDSIGHT if learned_days == args.days else f"fixed policy fitted on days 0-{learned_days - 1}"
                    run_arm(label, BanditPolicy(fitted.bandit, fixed, effects=fitted.effects), None, learn=False)
                report_regret_study(days, args)
                print(f"load at end {load_average()}")
                return
            for mode in () if args.skip_retraining else ("refresh", "retrain"):
                label = f"greedy + shift + {mode}"
                with throwaway_database(prefix="wt13_fbarm") as arm_pg, tempfile.TemporaryDirectory() as project:
                    project = Path(project)
                    (project / "feature_repo").symlink_to(settings.feature_repo_dir)
                    shutil.copytree(registry.root, project / "models" / "registry")
                    with Pipeline(dataclasses.replace(settings, postgres=arm_pg, project_dir=project), progress=False) as arm:
                        began = time.perf_counter()
                        arm.run(lambda p: p.load_synthetic(shop_config))
                        progress(f"arm {label}: a copy of the shop built in {time.perf_counter() - began:.0f} s")
                        conn = psycopg.connect(arm_pg.conninfo())
                        arm_recommender = Recommender.from_registry(project / "models" / "registry", arm.store, names)
                        loop = FeedbackLoop(conn, arm_recommender, SimulatedShoppers(shop, pd.Timestamp(start), seed=args.seed),
                                            prepared, start)
                        loop.after_day = daily_pipeline(loop, arm, mode, project, names, args, fast, retraining.setdefault(label, []))
                        began = time.perf_counter()
                        config = LoopConfig(days=args.days, users_per_day=args.users_per_day, k=args.k, shift_day=args.shift_day,
                                            shift_fraction=args.shift_fraction, organic_views=args.organic_views, seed=args.seed)
                        days[label] = loop.run(GreedyPolicy(), config, label)
                        progress(f"arm {label}: {args.days} days in {time.perf_counter() - began:.0f} s")
                        conn.close()
            report_arms(days, args)
            if not args.skip_retraining:
                report_retraining(days, retraining, args)
            if not args.only_retraining:
                report_off_policy(logs["bandit"], recommender, shop, start, policy_config, learned_policies["bandit"], args)
                report_latency(pipeline, recommender, user_fb, item_fb, prepared, args)
    print(f"load at end {load_average()}")


def daily_pipeline(loop, arm, mode: str, project: Path, names: dict, args, fast, log: list):
    """What runs at the end of each day from the first drift alarm on, in the refresh and
    retrain arms: the feature tables rebuilt ("refresh"; "retrain": through ``retrain(if_drift=True)``,
    which also trains, compares and promotes on a new drift episode), the online store
    refreshed, the users' candidates scored again by the serving model."""
    from interest_models.serving.recommender import Recommender
    from interest_models.simulation.feedback_loop import prepare_users
    from interest_models.training.retraining import retrain

    alarmed = []

    def handler(day: int, signal) -> None:
        if signal.drifted and not alarmed:
            alarmed.append(day)
        if not alarmed:
            return
        began = time.perf_counter()
        entry = {"day": day}
        if mode == "retrain":
            outcome = retrain(arm, if_drift=True, days=1, overrides=fast, device="cpu", say=lambda line: None)
            entry.update(action=outcome.action, reason=outcome.reason, challenger=outcome.challenger)
        else:
            arm.build()
            entry.update(action="features refreshed")
        # The simulated days lie in the past: incremental materialization (from the last run's
        # wall-clock end) would skip their rows, so the days since the simulation's start are
        # materialized again.
        arm.store.materialize(start_date=loop.start, end_date=dt.datetime.now(dt.timezone.utc))
        recommender = Recommender.from_registry(project / "models" / "registry", arm.store, names)
        loop.recommender = recommender
        loop.prepared = {**loop.prepared, **prepare_users(recommender, range(1, args.users + 1))}
        entry["seconds"] = time.perf_counter() - began
        entry["serving"] = recommender.registered.version
        log.append(entry)
        progress(f"  day {day}: {entry['action']} in {entry['seconds']:.0f} s; serving {entry['serving']}")

    return handler


def report_arms(days: dict, args) -> None:
    import numpy as np

    rows, regret_rows = [], []
    for label, frame in days.items():
        thirds = np.array_split(frame.regret.to_numpy(), 3)
        alarms = frame.day[frame.drifted].tolist()
        shifted = "shift" in label
        false_alarms = [d for d in alarms if not shifted or d < args.shift_day]
        first = [d for d in alarms if shifted and d >= args.shift_day]
        after = frame[frame.day >= args.shift_day]
        rows.append([label, *[f"{x:.4f}" for x in (frame.clicks.sum() / frame.impressions.sum(),
                                                   frame.purchases.sum() / frame.impressions.sum(),
                                                   frame.purchases.sum() / max(1, frame.clicks.sum()),
                                                   after.clicks.sum() / after.impressions.sum(), frame.coverage.iloc[-1],
                                                   frame.intra_list_distance.mean())], f"{frame.regret.sum():.0f}",
                     " / ".join(f"{t.sum():.0f}" for t in thirds),
                     (f"day {first[0]} (+{first[0] - args.shift_day})" if first else "none") if shifted else "-",
                     f"{len(false_alarms)} of {len(frame[frame.day >= 7]) if not shifted else max(0, args.shift_day - 7)}"
                     + (f" ({', '.join(map(str, false_alarms))})" if false_alarms else "")])
        exploring = np.array_split((frame.exploiting_clicks - frame.expected_clicks).to_numpy(), 3)
        missing = np.array_split((frame.oracle_clicks - frame.exploiting_clicks).to_numpy(), 3)
        regret_rows.append([label, " / ".join(f"{t.sum():.0f}" for t in thirds), " / ".join(f"{t.sum():.0f}" for t in exploring),
                            " / ".join(f"{t.sum():.0f}" for t in missing),
                            f"{frame.exploration.iloc[0]:.3f} -> {frame.exploration.iloc[-1]:.3f}"])
    print("\nArms (same users on the same days; drift alarms from day 7, when the monitor's 7-day window is full):")
    print(table(["arm", "CTR", "CVR/impr", "CVR/click", f"CTR days >= {args.shift_day}", "coverage", "intra-list dist.",
                 "cum. regret (clicks)", "regret by thirds", "shift detected", "false alarms (days)"], rows))
    print("\nRegret by thirds of the run (clicks), split: exploration's cost (deterministic lists' expected clicks - shown "
          "lists') and the deterministic lists' gap to the oracle:")
    print(table(["arm", "regret", "exploration's part", "deterministic lists vs oracle", "exploration first -> last day"],
                regret_rows))
    ctr = lambda f: f.clicks.sum() / f.impressions.sum()  # noqa: E731
    if "bandit" in days:
        base, bandit = days["greedy"], days["bandit"]
        print(f"bandit vs greedy, cumulative CTR: {ctr(bandit) / ctr(base) - 1:+.1%}; expected clicks (policy's own "
              f"randomness): {bandit.expected_clicks.sum() / base.expected_clicks.sum() - 1:+.1%}")
    for label in ("greedy", "bandit") if "bandit" in days else ("greedy",):
        shifted = days[f"{label} + shift"]
        lost = ctr(days[label][days[label].day >= args.shift_day]) - ctr(shifted[shifted.day >= args.shift_day])
        print(f"{label}: CTR lost to the shift over days >= {args.shift_day}: {lost:.4f}")
    print("per-day figures:")
    import pandas as pd
    with pd.option_context("display.width", 250, "display.max_rows", 500, "display.float_format", "{:.4f}".format):
        print(pd.concat(days.values())[["policy", "day", "impressions", "clicks", "purchases", "expected_clicks",
                                         "exploiting_clicks", "oracle_clicks", "regret", "exploration", "coverage",
                                         "intra_list_distance", "drift_divergence", "drift_p_value", "drift_reasons",
                                         "model_version"]].to_string(index=False))


def growth_exponent(per_day) -> float:
    """The slope of log(cumulative regret) on log(days) over the second half of the run: 1 is
    linear growth, 0.5 square-root growth; NaN when the cumulative regret is not positive there."""
    import numpy as np

    cumulative = np.cumsum(np.asarray(per_day, np.float64))
    days = np.arange(1, len(cumulative) + 1)
    half = slice(len(cumulative) // 2, None)
    if len(cumulative) < 4 or np.any(cumulative[half] <= 0):
        return float("nan")
    return float(np.polyfit(np.log(days[half]), np.log(cumulative[half]), 1)[0])


def report_regret_study(days: dict, args) -> None:
    """Cumulative regret by thirds against the oracle (the best k of the same candidates by the
    true click probabilities) and against the best fixed policy of the bandit's class in hindsight (expected
    clicks, the same users on the same days), each with its growth exponent."""
    import numpy as np

    fixed = days[HINDSIGHT].expected_clicks.to_numpy()
    rows = []
    for label, frame in days.items():
        against_fixed = fixed - frame.expected_clicks.to_numpy()
        rows.append([label, f"{frame.clicks.sum() / frame.impressions.sum():.4f}", f"{frame.coverage.iloc[-1]:.1%}",
                     " / ".join(f"{t.sum():.0f}" for t in np.array_split(frame.regret.to_numpy(), 3)),
                     f"{growth_exponent(frame.regret):.2f}",
                     " / ".join(f"{t.sum():.0f}" for t in np.array_split(against_fixed, 3)),
                     f"{growth_exponent(against_fixed):.2f}" if label != HINDSIGHT else "-"])
    print(f"\nRegret study, {args.days} days x {args.users_per_day} users (expected clicks; the stationary bandit: "
          f"{STATIONARY}; growth exponent: slope of log cumulative regret on log days over the second half):")
    print(table(["arm", "CTR", "coverage", "regret vs oracle by thirds", "exponent", f"regret vs {HINDSIGHT} by thirds",
                 "exponent"], rows))
    print("per-day expected clicks:")
    import pandas as pd
    with pd.option_context("display.width", 250, "display.max_rows", 1000, "display.float_format", "{:.2f}".format):
        wide = pd.DataFrame({label: frame.expected_clicks.to_numpy() for label, frame in days.items()})
        wide.insert(0, "oracle (bandit's candidates)", days["bandit"].oracle_clicks.to_numpy())
        print(wide.to_string())


def report_retraining(days: dict, retraining: dict, args) -> None:
    """The CTR lost to the shift after the first refresh, and the share the refresh and the retraining recover."""
    ctr = lambda f: f.clicks.sum() / f.impressions.sum()  # noqa: E731
    for label, entries in retraining.items():
        for entry in entries:
            line = f"{label}: day {entry['day']}: {entry['action']} ({entry['seconds']:.0f} s), serving {entry['serving']}"
            if entry.get("reason"):
                line += f"; {entry['reason']}"
            print(line)
    refreshed = [e["day"] for entries in retraining.values() for e in entries]
    if not refreshed:
        print("no arm refreshed or retrained: the monitor never flagged the shift")
        return
    since = min(refreshed) + 1  # the days served after the first alarm
    after = {label: frame[frame.day >= since] for label, frame in days.items()}
    expected = lambda f: f.expected_clicks.sum() / f.impressions.sum()  # noqa: E731
    for name, rate in (("clicks", ctr), ("expected clicks (true click probabilities, no answer noise)", expected)):
        base, shifted = rate(after["greedy"]), rate(after["greedy + shift"])
        lost = base - shifted
        print(f"\nCTR by {name}, days {since}-{args.days - 1} (after the refresh): greedy without shift {base:.4f}, "
              f"with shift {shifted:.4f} (lost {lost:.4f})")
        for label in ("greedy + shift + refresh", "greedy + shift + retrain"):
            value = rate(after[label])
            print(f"  {label}: {value:.4f}" + (f", recovers {(value - shifted) / lost:.1%} of the CTR lost" if lost > 0 else ""))


def report_off_policy(log, recommender, shop, start, policy_config, learned, args) -> None:
    import numpy as np
    import pandas as pd

    from interest_models.evaluation.replay import off_policy_table, target_marginals
    from interest_models.policies.learning import logged_requests
    from interest_models.policies.reranking import BanditPolicy, GreedyPolicy
    from interest_models.simulation.shoppers import SimulatedShoppers

    recommendations, impressions = log
    embeddings = lambda ids: recommender.unit_text[recommender.vocabulary.index_of(ids)]  # noqa: E731
    # Deterministic targets replayed on every logged request: the blend, the bandit's prior
    # (the blend's order with the diversity term) and the bandit as learned by the last day.
    no_exploration = {**policy_config, "exploration": 0.0, "exploration_min": 0.0}
    targets = {"greedy": GreedyPolicy(),
               "bandit prior, no exploration": BanditPolicy(recommender.policies["bandit"].bandit, no_exploration,
                                                              effects=recommender.policies["bandit"].effects),
               "bandit learned, no exploration": BanditPolicy(learned.bandit, no_exploration, effects=learned.effects)}
    began = time.perf_counter()
    requests = logged_requests(recommendations, embeddings)
    marginals = {name: target_marginals(target, requests, recommendations.k) for name, target in targets.items()}
    shoppers = SimulatedShoppers(shop, pd.Timestamp(start), seed=args.seed)
    # The learned bandit was fitted to the log's own clicks (its item effects above all) and
    # looks better on them than it is: every target is estimated on the same requests answered
    # again (exploration and answers redrawn), a log none of them learned from.
    impressions = redrawn_impressions(recommendations, shoppers, np.random.default_rng([args.seed, 4]))
    ope, exponent = off_policy_table(recommendations, impressions, targets, embeddings, marginals=marginals)
    truth = {}
    for name in targets:
        total = shown = 0.0
        for user_id, ids, k, target in zip(recommendations.user_id, recommendations.candidate_item_ids, recommendations.k,
                                           marginals[name]):
            total += float((shoppers.attraction(int(user_id), np.asarray(ids)) @ target) @ shoppers.examination(np.arange(1, k + 1)))
            shown += k
        truth[name] = total / shown
    rows = []
    for name in targets:
        for _, row in ope[(ope.policy == name) & (ope.metric == "CTR")].iterrows():
            rows.append([name, row.weighting, row.estimator, row.estimate, row.low, row.high, truth[name],
                         "yes" if row.low <= truth[name] <= row.high else "NO", row.max_weight, row.effective_impressions])
    print(f"\nOff-policy CTR from the bandit arm's requests answered again ({len(recommendations)} lists, {len(impressions)} impressions, "
          f"{int(impressions.explored.sum()) // args.k} random lists; {time.perf_counter() - began:.1f} s; examination exponent "
          f"fitted on its random lists: {exponent:.2f}, true {shoppers.position_exponent}), against each target's true "
          f"expected CTR on the same requests:")
    print(table(["target", "weighting", "estimator", "estimate", "95% low", "95% high", "truth", "covered", "max weight",
                 "effective impressions"],
                [[r[0], r[1], r[2], *[f"{x:.4f}" for x in r[3:7]], r[7], f"{r[8]:.1f}", f"{r[9]:.0f}"] for r in rows]))
    print("(no population shift in this arm; the truth uses the shoppers' preferences at day 0)")
    if args.ope_replications > 0:
        report_off_policy_coverage(recommendations, shoppers, targets, marginals, truth, embeddings, args)


def redrawn_impressions(recommendations, shoppers, rng):
    """The logged requests answered again: each list's exploration drawn anew around the
    logger's deterministic order, with its exact propensities, and each shopper's answer
    drawn anew from the true click model (the candidates, contexts and orders kept)."""
    import numpy as np
    import pandas as pd

    from interest_models.policies.slate import draw

    columns = {name: [] for name in ("recommendation_id", "item_id", "position", "propensity", "explored", "clicked", "purchased")}
    for rec_id, user_id, ids, ordered, k, exploration in zip(
            recommendations.recommendation_id, recommendations.user_id, recommendations.candidate_item_ids,
            recommendations.ordered_rows, recommendations.k, recommendations.exploration):
        ids = np.asarray(ids, np.int64)
        slate = draw(np.asarray(ordered, np.int64)[:k], len(ids), float(exploration), rng)
        answers = shoppers.answer(int(user_id), ids[slate.rows], rng)
        size = len(slate.rows)
        columns["recommendation_id"].append(np.repeat(rec_id, size))
        columns["item_id"].append(ids[slate.rows])
        columns["position"].append(np.arange(1, size + 1))
        columns["propensity"].append(slate.propensity)
        columns["explored"].append(np.repeat(slate.explored, size))
        columns["clicked"].append(answers.clicked)
        columns["purchased"].append(answers.purchased)
    return pd.DataFrame({name: np.concatenate(parts) for name, parts in columns.items()})


def report_off_policy_coverage(recommendations, shoppers, targets, marginals, truth, embeddings, args) -> None:
    """How often the 95 % intervals cover the truth when the same requests are answered again
    (one log can miss by chance: a calibrated interval misses 1 time in 20)."""
    import numpy as np
    import pandas as pd
    from scipy import stats

    from interest_models.evaluation.replay import off_policy_table

    rng = np.random.default_rng([args.seed, 3])
    began = time.perf_counter()
    results, exponents = [], []
    for replication in range(args.ope_replications):
        impressions = redrawn_impressions(recommendations, shoppers, rng)
        ope, exponent = off_policy_table(recommendations, impressions, targets, embeddings, n_boot=args.ope_boot,
                                         seed=replication, marginals=marginals)
        exponents.append(exponent)
        results.append(ope[(ope.metric == "CTR") & ope.policy.isin(list(targets))].assign(replication=replication))
        progress(f"off-policy replication {replication + 1} of {args.ope_replications}")
    frame = pd.concat(results)
    frame["truth"] = frame.policy.map(truth)
    frame["covered"] = (frame.low <= frame.truth) & (frame.truth <= frame.high)
    frame["half_width"] = (frame.high - frame.low) / 2
    n = args.ope_replications
    rows = []
    for (name, weighting, estimator), group in frame.groupby(["policy", "weighting", "estimator"], sort=False):
        low, high = stats.binomtest(int(group.covered.sum()), n).proportion_ci(0.95, method="wilson")
        error = group.estimate - group.truth
        sd = error.std()
        # The spread of the estimates over the logs against what one log's interval claims
        # (its half-width / 1.96), with the chi-square interval of that spread over n logs
        # (which assumes normal errors: heavy-tailed ones make it wider than printed).
        claimed = group.half_width.mean() / 1.96
        spread = [sd * np.sqrt((n - 1) / stats.chi2.ppf(q, n - 1)) / claimed for q in (0.975, 0.025)]
        rows.append([name, weighting, estimator, f"{group.covered.mean():.0%} ({low:.0%}-{high:.0%})",
                     f"{(group.high < group.truth).mean():.0%}", f"{(group.low > group.truth).mean():.0%}",
                     f"{error.mean():+.4f} (+-{1.96 * sd / np.sqrt(n):.4f})", f"{sd:.4f}", f"{claimed:.4f}",
                     f"{sd / claimed:.2f} ({spread[0]:.2f}-{spread[1]:.2f})", f"{group.effective_impressions.median():.0f}"])
    print(f"\nOff-policy coverage: the bandit arm's {len(recommendations)} requests answered again {n} "
          f"times (exploration and answers redrawn), each log through the same estimators ({args.ope_boot} bootstrap "
          f"resamples); {time.perf_counter() - began:.0f} s; fitted exponent {np.mean(exponents):.3f} +- "
          f"{np.std(exponents):.3f} (true {shoppers.position_exponent}). In brackets, 95 % intervals over the {n} logs "
          f"(Wilson for the coverage, chi-square for the spread, too narrow for heavy-tailed errors): a calibrated "
          f"interval covers 95 %, and its estimates spread over the logs as it claims (ratio 1):")
    print(table(["target", "weighting", "estimator", "covered", "below", "above", "bias", "sd of estimates",
                 "interval half-width / 1.96", "sd / claimed", "effective impressions (median)"], rows))
    covered = frame.groupby("weighting").covered.mean()
    print("coverage over all targets and estimators: " + ", ".join(f"{w} {c:.1%}" for w, c in covered.items())
          + f"; all {frame.covered.mean():.1%} of {len(frame)} intervals (the estimators and targets of one log "
          "share its random lists: these are not independent trials)")


def report_latency(pipeline, recommender, user_fb, item_fb, prepared, args) -> None:
    import numpy as np

    conn = pipeline.conn
    with conn.cursor() as cur:
        # The bandit arm's last feedback rows, restamped to now, so the online store serves them.
        now = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=1)
        cur.executemany("INSERT INTO interest.user_feedback_daily VALUES (%s, %s, now(), %s, %s, %s, %s, %s, %s, %s, %s) "
                        "ON CONFLICT DO NOTHING", [(r[0], now, *r[3:]) for r in user_fb])
        cur.executemany("INSERT INTO interest.item_feedback_daily VALUES (%s, %s, now(), %s, %s, %s, %s, %s, %s, %s) "
                        "ON CONFLICT DO NOTHING", [(r[0], now, *r[3:]) for r in item_fb])
    conn.commit()
    pipeline.materialize()
    recommender.item_feedback.values = recommender.item_feedback.read()
    users = list(prepared)[: args.latency_requests]
    cpu = {"greedy": [], "bandit": []}
    for user_id in users * 2:  # the first pass warms caches; only the second is kept
        for policy in ("greedy", "bandit") if user_id % 2 else ("bandit", "greedy"):
            began = time.process_time()
            recommender.recommend(user_id, k=args.k, policy=policy)
            cpu[policy].append(time.process_time() - began)
    kept = {p: np.array(v[len(users):]) * 1000 for p, v in cpu.items()}
    print(f"\nCPU per recommend() call in process ({len(users)} users, k={args.k}, one torch thread; both policies read "
          f"the user_feedback features and build the logged context):")
    print(table(["policy", "mean ms", "p50 ms", "p95 ms"],
                [[p, float(v.mean()), float(np.median(v)), float(np.quantile(v, 0.95))] for p, v in kept.items()]))
    print(f"bandit adds {kept['bandit'].mean() - kept['greedy'].mean():.3f} ms CPU per request "
          f"(ratio {kept['bandit'].mean() / kept['greedy'].mean():.3f})")
    # The policy step alone (what differs between the two), on the same prepared requests.
    rng = np.random.default_rng(0)
    requests = []
    for user_id in users:
        user, outputs, scored = prepared[user_id]
        user = recommender.online_user(user_id, feedback=True)
        requests.append(recommender.policy_request(user, outputs, scored, args.k)[0])
    step = {}
    for policy in ("greedy", "bandit"):
        chosen = recommender.policies[policy]
        began = time.process_time()
        for _ in range(5):
            for request in requests:
                chosen.choose(request, args.k, rng)
        step[policy] = (time.process_time() - began) / (5 * len(requests)) * 1000
    print(f"policy step alone (context built, then choose), mean CPU: greedy {step['greedy']:.3f} ms, "
          f"bandit {step['bandit']:.3f} ms (difference {step['bandit'] - step['greedy']:.3f} ms)")


if __name__ == "__main__":
    main()
