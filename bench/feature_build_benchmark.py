"""Feature build in SQL, in full and then incrementally after one more day of events,
optionally against an earlier commit's feature build in the same run.

On a fresh PostgreSQL database holding a synthetic shop and its item embeddings (loaded
and embedded first, not timed): ``Pipeline.build(full=True)``, then one more day of events
by the same shoppers (about ``--incremental-fraction`` of the first load) and
``Pipeline.build()``. Per-table SQL seconds, the rest of the wall time, wall time and the
temporary files written, of both.

With ``--before REF`` the feature build of that commit (``materialize/features/`` as it
was there, read with ``git show`` into a temporary folder and imported from there) runs
on the same database: its full build first, then the current full build; after the extra
day is loaded, its incremental build, then the watermark is set back to where the current
full build left it and the current incremental build runs on the same change. A build of
``REF`` that fails (``--before-limit-s`` per statement, or the harness's temp-file limit)
is reported with its error and the seconds until it failed.

Usage (from the project root)::

    .venv/bin/python bench/feature_build_benchmark.py --events 1000000 --before ced0d3d

Nothing here asserts on time.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import subprocess
import sys
import tempfile
from pathlib import Path

from harness import (PROJECT_DIR, BenchRun, Subject, database_temp_bytes, load_events, progress, run_subjects, table,
                     timed)

NEXT_DAY_SESSIONS_PER_USER = 1.5  # sessions per user in the one extra day of events
NEXT_DAY_SESSION_SUFFIX = "-next-day"  # keeps the extra day's session ids apart from the first load's
FEATURES_DIR = "materialize/features"


def add_options(parser) -> None:
    parser.add_argument("--incremental-fraction", type=float, default=0.01,
                        help="size of the extra day of events, as a share of the first load")
    parser.add_argument("--before", metavar="REF", default=None,
                        help="also run the feature build of this git commit (before vs after)")
    parser.add_argument("--before-limit-s", type=int, default=900,
                        help="statement_timeout of the --before builds, in seconds")


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


def git_revision(ref: str) -> str:
    return subprocess.run(["git", "-C", str(PROJECT_DIR), "rev-parse", "--short", ref], check=True,
                          capture_output=True, text=True).stdout.strip()


def working_tree_state() -> str:
    """HEAD's short hash, with '+ uncommitted changes' when materialize/features differs from it."""
    dirty = subprocess.run(["git", "-C", str(PROJECT_DIR), "status", "--porcelain", "--", FEATURES_DIR],
                           capture_output=True, text=True).stdout.strip()
    return git_revision("HEAD") + (" + uncommitted changes" if dirty else "")


def builder_of(ref: str, folder: Path):
    """The ``build_features`` of commit ``ref``: its ``materialize/features/builder.py``
    imported from ``folder``, reading its own SQL files (also written to ``folder``)."""
    listing = subprocess.run(["git", "-C", str(PROJECT_DIR), "ls-tree", "-r", "--name-only", ref, FEATURES_DIR],
                             check=True, capture_output=True, text=True).stdout.split()
    for path in listing:
        content = subprocess.run(["git", "-C", str(PROJECT_DIR), "show", f"{ref}:{path}"], check=True,
                                 capture_output=True).stdout
        target = folder / Path(path).relative_to(FEATURES_DIR)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
    name = f"features_before_{git_revision(ref)}"
    spec = importlib.util.spec_from_file_location(name, folder / "builder.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    module.feature_sql = lambda sql_name: (folder / "sql" / sql_name).read_text()  # not the installed package's
    return module.build_features


def timed_build(run: BenchRun, build_features, full: bool, limit_s: int | None = None) -> dict:
    """One build, timed; a failure is recorded (and rolled back), not raised."""
    from psycopg import errors

    pipeline = run.pipeline
    pg = pipeline.settings.postgres
    conn = pipeline.conn
    conn.execute("SET statement_timeout = %s" % (int(limit_s) * 1000 if limit_s else 0))
    conn.commit()
    temp_before = database_temp_bytes(pg)
    report, error = None, None
    with timed() as clock:
        try:
            report = build_features(conn, pipeline.settings.pipeline, full=full)
        except (errors.QueryCanceled, errors.ConfigurationLimitExceeded, errors.DiskFull) as failure:
            conn.rollback()
            error = f"{type(failure).__name__}: {str(failure).strip().splitlines()[0]}"
    conn.execute("SET statement_timeout = 0")
    conn.commit()
    temp_gib = round((database_temp_bytes(pg) - temp_before) / 2**30, 2)
    if report is None:
        progress(f"build failed after {clock.seconds:.1f} s ({temp_gib} GiB temp): {error}")
        return {"mode": "failed", "error": error, "wall_s": round(clock.seconds, 3), "temp_gib": temp_gib}
    summary = {
        "mode": report.mode,
        "new_events": report.new_events,
        "users_recomputed": report.users_recomputed,
        "items_recomputed": report.items_recomputed,
        "table_seconds": report.seconds,
        "other_seconds": getattr(report, "other_seconds", {}),
        "tables_s": round(sum(report.seconds.values()), 3),
        "wall_s": round(clock.seconds, 3),
        "temp_gib": temp_gib,
        "rows": report.rows,
    }
    progress(f"{report.mode} build: {clock.seconds:.2f} s, {temp_gib} GiB temp; tables {report.seconds}; "
             f"other {summary['other_seconds']}")
    return summary


def _events_watermark(conn) -> tuple:
    row = conn.execute("SELECT load_seq, max_event_day FROM interest.feature_watermarks WHERE feature_set = 'events'").fetchone()
    conn.commit()
    return row


def measure(run: BenchRun) -> dict:
    from psycopg import sql

    from materialize.features.builder import FEATURE_TABLES, build_features

    pipeline = run.pipeline
    first_load_events = pipeline.conn.execute("SELECT count(*) FROM interest.events").fetchone()[0]
    pipeline.conn.commit()
    results: dict = {"after_ref": working_tree_state(), "first_load_events": first_load_events}
    with tempfile.TemporaryDirectory(prefix="features_before_") as folder:
        before = None
        if run.args.before:
            results["before_ref"] = git_revision(run.args.before)
            before = builder_of(run.args.before, Path(folder))
            progress(f"full feature build of {results['before_ref']} (before)")
            results["full_before"] = timed_build(run, before, full=True, limit_s=run.args.before_limit_s)
        progress(f"full feature build of {results['after_ref']}")
        results["full"] = timed_build(run, build_features, full=True)
        built_mark = _events_watermark(pipeline.conn)

        extra = next_day_config(run.shop, round(first_load_events * run.args.incremental_fraction))
        progress(f"load one more day of events ({extra.n_users:,} users)")
        results["next_day_events"] = load_events(pipeline, extra, session_suffix=NEXT_DAY_SESSION_SUFFIX)
        if before is not None:
            progress(f"incremental build of {results['before_ref']} (before)")
            results["incremental_before"] = timed_build(run, before, full=False, limit_s=run.args.before_limit_s)
            # the same change again for the current build: back to the full build's watermark,
            # and the kept row counts recounted (REF's build wrote the tables without them; untimed)
            pipeline.conn.execute(
                "UPDATE interest.feature_watermarks SET load_seq = %s, max_event_day = %s WHERE feature_set = 'events'",
                built_mark)
            for name in FEATURE_TABLES:
                pipeline.conn.execute(
                    sql.SQL("UPDATE interest.feature_table_rows SET row_count = (SELECT count(*) FROM interest.{}) "
                            "WHERE table_name = %s").format(sql.Identifier(name)), (name,))
            pipeline.conn.commit()
        progress(f"incremental build of {results['after_ref']}")
        results["incremental"] = timed_build(run, build_features, full=False)
    if "rows" in results["incremental"]:
        run.sizes["feature_tables"] = results["incremental"]["rows"]
    return results


def _share(part: dict | None, whole: dict | None) -> str:
    if not part or not whole or part.get("mode") == "failed" or whole.get("mode") == "failed":
        return "-"
    return f"{part['wall_s'] / whole['wall_s']:.1%}"


def _seconds(build: dict | None, key: str):
    if build is None:
        return None
    if build.get("mode") == "failed":
        return "failed"
    return build["table_seconds"].get(key)


def render(build: dict) -> list[str]:
    next_day = build["next_day_events"]
    columns = [("full", "full"), ("incremental", "incremental")]
    if "before_ref" in build:
        columns = [("full_before", "full before"), ("full", "full after"),
                   ("incremental_before", "incr. before"), ("incremental", "incr. after")]
    runs = {key: build.get(key) for key, _ in columns}
    tables = list(dict.fromkeys(t for r in runs.values() if r and "table_seconds" in r for t in r["table_seconds"]))
    others = list(dict.fromkeys(t for r in runs.values() if r and r.get("other_seconds") for t in r["other_seconds"]))

    def row(label, value):
        return [label] + [value(runs[key]) if runs[key] else None for key, _ in columns]

    rows = [row(t, lambda r, t=t: _seconds(r, t)) for t in tables]
    rows.append(row("sum of tables", lambda r: "failed" if r["mode"] == "failed" else r["tables_s"]))
    rows += [row(f"  {o}", lambda r, o=o: r.get("other_seconds", {}).get(o)) for o in others]
    rows.append(row("wall", lambda r: r["wall_s"]))
    rows.append(row("temp files GiB", lambda r: r["temp_gib"]))
    rows.append(row("users / items recomputed",
                    lambda r: "-" if r["mode"] == "failed" else f"{r['users_recomputed']:,} / {r['items_recomputed']:,}"))
    lines = [
        f"Feature build; incremental after {next_day['loaded']:,} next-day events "
        f"({next_day['users']:,} users, {next_day['loaded'] / max(1, build['first_load_events']):.1%} of the first load)",
        f"after = {build['after_ref']}" + (f"; before = {build['before_ref']}" if "before_ref" in build else ""),
        table(["seconds"] + [label for _, label in columns], rows),
        f"incremental wall / full wall: after {_share(runs.get('incremental'), runs.get('full'))}"
        + (f", before {_share(runs.get('incremental_before'), runs.get('full_before'))}" if "before_ref" in build else ""),
    ]
    for key, label in columns:
        if runs[key] and runs[key].get("mode") == "failed":
            lines.append(f"{label}: failed after {runs[key]['wall_s']:.1f} s: {runs[key]['error']}")
    return lines


SUBJECT = Subject(key="build", title="Feature build", needs=("shop", "embeddings"), provides=("features",),
                  measure=measure, render=render, add_options=add_options)

if __name__ == "__main__":
    run_subjects([SUBJECT], "Feature build benchmark", __doc__.split("\n\n")[0], "feature_build.json")
