"""Feature build in SQL, in full and then incrementally after one more day of events.

On a fresh PostgreSQL database holding a synthetic shop and its item embeddings (loaded
and embedded first, not timed): ``Pipeline.build(full=True)``, then one more day of events
by the same shoppers (about ``--incremental-fraction`` of the first load) and
``Pipeline.build()``. Per-table SQL seconds and wall time of both.

Usage (from the project root)::

    .venv/bin/python bench/feature_build_benchmark.py --events 1000000

Nothing here asserts on time.
"""
from __future__ import annotations

import dataclasses

from harness import BenchRun, Subject, load_events, progress, run_subjects, table, timed

NEXT_DAY_SESSIONS_PER_USER = 1.5  # sessions per user in the one extra day of events
NEXT_DAY_SESSION_SUFFIX = "-next-day"  # keeps the extra day's session ids apart from the first load's


def add_options(parser) -> None:
    parser.add_argument("--incremental-fraction", type=float, default=0.01,
                        help="size of the extra day of events, as a share of the first load")


def next_day_config(config, target_events: int):
    """One more day of events by the first ``n`` shoppers of ``config``.

    Same seed, so the catalogue (ids, categories, prices) and each user's preferences are
    the ones already loaded; a one-day span right after the first one, so every new event
    is later than all loaded ones.
    """
    import pandas as pd

    base = dataclasses.replace(
        config, end=config.end + pd.Timedelta(days=1), days=1,
        sessions_per_user_mean=NEXT_DAY_SESSIONS_PER_USER, drift_days=0.5,
    )
    n_users = max(1, min(config.n_users, round(target_events / base.expected_events_per_user)))
    return dataclasses.replace(base, n_users=n_users)


def build_summary(report, wall_s: float) -> dict:
    return {
        "mode": report.mode,
        "new_events": report.new_events,
        "users_recomputed": report.users_recomputed,
        "items_recomputed": report.items_recomputed,
        "table_seconds": report.seconds,
        "tables_s": round(sum(report.seconds.values()), 3),
        "wall_s": round(wall_s, 3),
        "rows": report.rows,
    }


def measure(run: BenchRun) -> dict:
    pipeline = run.pipeline
    first_load_events = pipeline.conn.execute("SELECT count(*) FROM interest.events").fetchone()[0]
    pipeline.conn.commit()
    progress("full feature build")
    with timed() as clock:
        full = pipeline.build(full=True)
    results = {"full": build_summary(full, clock.seconds)}
    progress(f"full build: {clock.seconds:.2f} s {full.seconds}")

    extra = next_day_config(run.shop, round(first_load_events * run.args.incremental_fraction))
    progress(f"load one more day of events ({extra.n_users:,} users) and build incrementally")
    next_day = load_events(pipeline, extra, session_suffix=NEXT_DAY_SESSION_SUFFIX)
    with timed() as clock:
        incremental = pipeline.build()
    results["incremental"] = {
        **build_summary(incremental, clock.seconds),
        "first_load_events": first_load_events,
        "next_day_events": next_day,
        "wall_share_of_full": round(clock.seconds / results["full"]["wall_s"], 3),
    }
    run.sizes["feature_tables"] = incremental.rows
    progress(f"incremental build ({incremental.mode}): {clock.seconds:.2f} s {incremental.seconds}")
    return results


def render(build: dict) -> list[str]:
    full, inc = build["full"], build["incremental"]
    next_day = inc["next_day_events"]
    return [
        f"Feature build (pipeline.build); incremental after {next_day['loaded']:,} next-day events "
        f"({next_day['users']:,} users, {next_day['loaded'] / max(1, inc['first_load_events']):.1%}"
        " of the first load)",
        table(
            ["table", "full s", "incremental s", "rows after full", "rows after incremental"],
            [[t, full["table_seconds"][t], inc["table_seconds"].get(t), full["rows"].get(t), inc["rows"].get(t)]
             for t in full["table_seconds"]]
            + [["sum of tables", full["tables_s"], inc["tables_s"], "", ""],
               ["wall (incl. affected sets, ANALYZE, counts)", full["wall_s"], inc["wall_s"], "", ""]],
        ),
        f"incremental: {inc['users_recomputed']:,} users and {inc['items_recomputed']:,} items recomputed; "
        f"wall {inc['wall_s'] / full['wall_s']:.1%} of the full build",
    ]


SUBJECT = Subject(key="build", title="Feature build", needs=("shop", "embeddings"), provides=("features",),
                  measure=measure, render=render, add_options=add_options)

if __name__ == "__main__":
    run_subjects([SUBJECT], "Feature build benchmark", __doc__.split("\n\n")[0], "feature_build.json")
