"""The same synthetic shop through both profiles, stage by stage: PostgreSQL vs Spark.

Stages (each timed in both profiles, on the same generated frames):

1. ingest: events validated and written (``loader.load_frames`` into ``interest.events`` vs
   ``parquet_writer.load_event_frames_parquet`` into Parquet by day); generation excluded.
2. feature build: ``Pipeline.build(full=True)`` (SQL) vs ``export_catalogue`` +
   ``build_features_spark`` (Spark SQL, ``local[N]``); then one more day of events
   (``--incremental-fraction`` of the first load, by that many of the same shoppers, as
   ``feature_build_benchmark.py`` loads it) and the incremental build of both profiles
   (``Pipeline.build()`` vs ``build_features_spark`` from its build state).
3. training frame: ``get_historical_features`` of ``--frame-rows`` entity rows (sampled
   events: user, item, category, time) for the ranker's Feast views (user activity and
   interest shift, item popularity and catalogue, category trends: the service's
   point-in-time columns without the 50-event sequence arrays and the on-demand cosine),
   through this project's LATERAL offline store plugin (``to_df()``, a pandas frame) vs
   Feast's Spark offline store, given the entity rows as a Spark DataFrame over staged
   Parquet, whose executors write the frame as Parquet into the staging folder
   (``to_remote_storage()``; nothing is collected into the driver). Then, untimed
   for Spark's side but timed on its own row, the staged frame read back in batches
   (``frame_staging.iter_batches``, what the recipe does) and compared value by value with
   the plugin's frame.
4. materialize: every view into the PostgreSQL online store, through the project's Arrow
   engine vs Feast's Spark compute engine (``spark.engine``).
5. ranker training: XGBoost LambdaMART (``ranker.yaml``, ``--ranker-trees`` trees) on the
   frame's numeric columns in query groups of 50 consecutive entity rows (one relevant row
   each, at a position drawn from the query id: a timing workload, not a model; the last
   10 % of groups validate), ``ItemRanker.fit`` on the plugin's pandas frame vs
   ``xgboost.spark.SparkXGBRanker`` with 2 workers on the staged Parquet frame read by
   Spark (``fit_ranker_spark_frame``; labels and groups computed in Spark).

Besides wall seconds, the Spark side reports the CPU seconds of this process and all its
children (the JVM, its Python workers, XGBoost's and torch's processes), from psutil,
sampled before and after each stage; the PostgreSQL side reports wall seconds only (its
server is shared with other sessions, its CPU cannot be attributed to this run). Each row
carries the 1-minute load average at its end.

Usage (from the project root)::

    .venv/bin/python bench/spark_profile_benchmark.py --events 1000000 --frame-rows 1000000

The databases (``interest_bench_*``) and the warehouse (a temporary folder, or
``--warehouse``) are dropped at the end. Nothing here asserts on time.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import shutil
import sys
import tempfile
from pathlib import Path

from feature_build_benchmark import NEXT_DAY_SESSION_SUFFIX, next_day_config
from harness import (load_average, machine_info, progress, shop_config, silence_known_warnings, stop_on_sigterm, table,
                     throwaway_database, TimedFrames, _shop_source)

RANKER_VIEWS = ["user_activity", "user_interest_shift", "item_popularity", "item_catalog", "category_trends"]


def tree_cpu_seconds() -> float:
    """User + system CPU seconds of this process and all its live children."""
    import psutil

    me = psutil.Process()
    total = sum(me.cpu_times()[:2]) + me.cpu_times().children_user + me.cpu_times().children_system
    for child in me.children(recursive=True):
        try:
            total += sum(child.cpu_times()[:2])
        except psutil.Error:
            pass
    return total


class Stage:
    """Wall and process-tree CPU seconds of a block."""

    def __enter__(self):
        import time

        self.cpu0, self.t0 = tree_cpu_seconds(), time.perf_counter()
        return self

    def __exit__(self, *exc):
        import time

        self.seconds = round(time.perf_counter() - self.t0, 2)
        self.cpu = round(tree_cpu_seconds() - self.cpu0, 2)


KEYS = ("row", "user_id", "item_id", "category_id", "event_timestamp")
GROUP = 50  # rows per query


def ranker_columns(frame) -> list[str]:
    return [c for c in frame.columns if c not in KEYS and frame[c].dtype.kind in "fiub"]


def ranker_rows(frame, columns: list[str], seed: int):
    """The local ranker's rows: groups of ``GROUP`` consecutive entity rows (by ``row``),
    relevant at position (qid * 7 + seed) % GROUP, the last 10 % of groups for validation."""
    frame = frame.sort_values("row")
    n_groups = len(frame) // GROUP
    row = frame.row.to_numpy()[: n_groups * GROUP]
    rows = frame[columns].astype("float64").iloc[: n_groups * GROUP].reset_index(drop=True)
    query = row // GROUP
    relevance = (row % GROUP == (query * 7 + seed) % GROUP).astype("float64")
    split = int(n_groups * 0.9) * GROUP
    return (rows.iloc[:split], relevance[:split], query[:split]), (rows.iloc[split:], relevance[split:], query[split:])


def spark_ranker_frame(frame, n_rows: int, seed: int):
    """The same rows, labels and groups as ``ranker_rows``, computed by Spark."""
    from pyspark.sql import functions as F

    n_groups = n_rows // GROUP
    qid = (F.col("row") / GROUP).cast("long")
    return (frame.where(F.col("row") < n_groups * GROUP)
            .withColumn("qid", qid)
            .withColumn("label", (F.col("row") % GROUP == (qid * 7 + seed) % GROUP).cast("double"))
            .withColumn("is_valid", qid >= int(n_groups * 0.9)))


def frames_equal(expected, files: list[str], columns: list[str]) -> tuple[int, int]:
    """(rows, mismatching cells) of the staged frame against the plugin's, by ``row``;
    floats within 1e-9 relative, missing = missing."""
    import numpy as np
    import pandas as pd

    from interest_models.data.frame_staging import iter_batches

    actual = pd.concat(list(iter_batches(files)), ignore_index=True).sort_values("row").reset_index(drop=True)
    expected = expected.sort_values("row").reset_index(drop=True)
    if len(actual) != len(expected):
        return len(actual), -1
    bad = 0
    for column in columns:
        want, got = (pd.to_numeric(f[column], errors="coerce").to_numpy("float64") for f in (expected, actual))
        bad += int((~np.isclose(got, want, rtol=1e-9, atol=1e-12, equal_nan=True)).sum())
    return len(actual), bad


@dataclasses.dataclass
class Profiles:
    """Both profiles of one run and what the stages record: ``rows`` of the table
    (stage, postgres s, spark s, spark cpu s, load), ``results`` for the JSON."""

    args: argparse.Namespace
    config: object  # the shop's SyntheticConfig
    base: object  # materialize.settings.Settings
    postgres: object  # Pipeline, postgres profile
    sp: object  # Pipeline, spark profile
    warehouse: Path
    spark_settings: object
    spark: object = None
    rows: list = dataclasses.field(default_factory=list)
    results: dict = dataclasses.field(default_factory=dict)

    @property
    def load_kwargs(self) -> dict:
        pipeline = self.base.pipeline
        return {"future_tolerance_s": pipeline.future_tolerance_seconds, "min_event_time": pipeline.min_event_time}


def bench_ingest(run: Profiles) -> None:
    """1. ingest: the same generated frames into ``interest.events`` and into Parquet."""
    from materialize.ingest import loader
    from materialize.ingest.parquet_writer import load_event_frames_parquet
    from materialize.ingest.sources.synthetic import SyntheticShop

    source = _shop_source(run.config)
    items = SyntheticShop(run.config).items()
    for pipeline in (run.postgres, run.sp):
        loader.load_frames(pipeline.conn, "items", [items], source=f"{source}:items", **run.load_kwargs)
    frames = TimedFrames(SyntheticShop(run.config).events())
    with Stage() as pg_ingest:
        report_pg = loader.load_frames(run.postgres.conn, "events", frames, source=f"{source}:events", **run.load_kwargs)
    pg_ingest_s = round(pg_ingest.seconds - frames.seconds, 2)
    frames = TimedFrames(SyntheticShop(run.config).events())
    with Stage() as sp_ingest:
        report_sp = load_event_frames_parquet(run.sp.conn, frames, str(run.warehouse), source=f"{source}:events",
                                              **run.load_kwargs)
    sp_ingest_s = round(sp_ingest.seconds - frames.seconds, 2)
    progress(f"ingest: postgres {pg_ingest_s} s, parquet {sp_ingest_s} s ({report_sp.summary()})")
    run.rows.append(["ingest (validate + write)", pg_ingest_s, sp_ingest_s, None, load_average()[0]])
    run.results["events"] = report_pg.loaded
    run.results["users"] = int(run.postgres.conn.execute("SELECT count(DISTINCT user_id) FROM interest.events").fetchone()[0])
    run.results["parquet_bytes"] = sum(p.stat().st_size for p in (run.warehouse / "events").rglob("*.parquet"))


def bench_builds(run: Profiles) -> None:
    """2. the full feature builds, then one more day of events and the incremental builds."""
    from materialize.features.spark_builder import build_features_spark
    from materialize.ingest import loader
    from materialize.ingest.parquet_writer import export_catalogue, load_event_frames_parquet
    from materialize.ingest.sources.synthetic import SyntheticShop
    from materialize.spark_session import get_spark

    postgres, warehouse = run.postgres, str(run.warehouse)
    with Stage() as pg_build:
        build_pg = postgres.build(full=True)
    run.spark = get_spark(run.spark_settings)
    run.spark.sparkContext.setLogLevel("ERROR")
    with Stage() as sp_build:
        export_catalogue(run.sp.conn, warehouse)
        build_sp = build_features_spark(run.spark, warehouse, run.base.pipeline)
    progress(f"build: postgres {pg_build.seconds} s, spark {sp_build.seconds} s (cpu {sp_build.cpu} s) {build_sp.seconds}")
    run.rows.append(["feature build (full)", pg_build.seconds, sp_build.seconds, sp_build.cpu, load_average()[0]])
    run.results["feature_rows"] = build_pg.rows
    run.results["spark_build_seconds"] = build_sp.seconds
    assert build_sp.rows["user_daily_features"] == build_pg.rows["user_daily_features"], "the two builds differ"

    extra = next_day_config(run.config, round(run.results["events"] * run.args.incremental_fraction))
    suffix = lambda frame: frame.assign(session_id=frame["session_id"] + NEXT_DAY_SESSION_SUFFIX)  # noqa: E731
    source = f"{_shop_source(extra)}:events"
    next_pg = loader.load_frames(postgres.conn, "events", map(suffix, SyntheticShop(extra).events()), source=source,
                                 **run.load_kwargs)
    load_event_frames_parquet(run.sp.conn, map(suffix, SyntheticShop(extra).events()), warehouse, source=source,
                              **run.load_kwargs)
    with Stage() as pg_inc:
        postgres.build()
    with Stage() as sp_inc:
        export_catalogue(run.sp.conn, warehouse)
        inc_sp = build_features_spark(run.spark, warehouse, run.base.pipeline)
    total_rows = postgres.conn.execute("SELECT count(*) FROM interest.user_daily_features").fetchone()[0]
    assert inc_sp.rows["user_daily_features"] == total_rows, "the two incremental builds differ"
    progress(f"one more day ({next_pg.loaded:,} events): postgres {pg_inc.seconds} s, spark {sp_inc.seconds} s "
             f"(cpu {sp_inc.cpu} s; {inc_sp.mode} from {inc_sp.since_day}, {inc_sp.events:,} events read)")
    run.rows.append([f"feature build, one more day ({next_pg.loaded:,} events, incremental)", pg_inc.seconds,
                     sp_inc.seconds, sp_inc.cpu, load_average()[0]])
    run.results["next_day_events"] = next_pg.loaded
    run.results["spark_incremental"] = {"mode": inc_sp.mode, "since_day": str(inc_sp.since_day),
                                        "events_read": inc_sp.events, "seconds": inc_sp.seconds}


def entity_rows(run: Profiles):
    """``--frame-rows`` sampled events (row, user, item, category, time): the frame's entity rows."""
    import pandas as pd

    from materialize.database.tables import fetch_frame

    args = run.args
    sample = fetch_frame(run.postgres.conn, """
        SELECT e.user_id, e.item_id, i.category_id, e.event_timestamp
        FROM interest.events e JOIN interest.items i USING (item_id)""")
    entity = sample.sample(n=min(args.frame_rows, len(sample)), replace=False, random_state=args.seed)
    entity = entity.reset_index(drop=True)
    if len(entity) < args.frame_rows:  # fewer events than rows asked: the same events at later times too
        extra = sample.sample(n=args.frame_rows - len(entity), replace=True, random_state=args.seed + 1)
        extra = extra.assign(event_timestamp=extra.event_timestamp + pd.Timedelta(hours=12))
        entity = pd.concat([entity, extra], ignore_index=True)
    entity["event_timestamp"] = pd.to_datetime(entity["event_timestamp"], utc=True)
    entity.insert(0, "row", range(len(entity)))
    return entity


def bench_training_frame(run: Profiles, entity):
    """3. the point-in-time frame through both offline stores; returns the plugin's frame and
    the Parquet files of Spark's."""
    from interest_models.data.frame_staging import iter_batches, write_staged

    postgres, results = run.postgres, run.results
    features = [f"{v.name}:{f.name}" for v in postgres.store.list_feature_views() if v.name in RANKER_VIEWS
                for f in v.features]
    with Stage() as pg_frame:
        frame_pg = postgres.store.get_historical_features(entity_df=entity, features=features).to_df()
    progress(f"frame of {len(frame_pg):,} rows x {len(features)} features: postgres {pg_frame.seconds} s")
    with Stage() as sp_plan:  # entity rows staged as Parquet (no LocalRelation), time range, query text
        entity_file = write_staged([entity], f"{run.spark_settings.staging}/entity")
        job = run.sp.store.get_historical_features(entity_df=run.spark.read.parquet(entity_file), features=features)
    with Stage() as sp_frame:  # the join, written to Parquet by the executors
        files = [f for f in job.to_remote_storage() if f.endswith(".parquet")]
    results["frame_parquet_bytes"] = sum(Path(f).stat().st_size for f in files)
    progress(f"spark frame: plan {sp_plan.seconds} s, join + write {sp_frame.seconds} s (cpu {sp_frame.cpu} s), "
             f"{len(files)} files, {results['frame_parquet_bytes'] / 2**20:.1f} MiB")
    run.rows.append([f"training frame ({len(frame_pg):,} rows)", pg_frame.seconds,
                     round(sp_plan.seconds + sp_frame.seconds, 2), round(sp_plan.cpu + sp_frame.cpu, 2), load_average()[0]])
    with Stage() as sp_read:
        read_rows = sum(len(batch) for batch in iter_batches(files))
    run.rows.append([f"staged frame read back in batches ({read_rows:,} rows)", None, sp_read.seconds, sp_read.cpu,
                     load_average()[0]])
    results["frame_rows_read"], results["frame_cells_differing"] = frames_equal(frame_pg, files, ranker_columns(frame_pg))
    progress(f"staged frame read back in {sp_read.seconds} s; equal to the plugin's: "
             f"{results['frame_rows_read']:,} rows, {results['frame_cells_differing']} cells differ")
    results["frame_features"] = len(features)
    results["frame_spark_plan_s"], results["frame_spark_join_write_s"] = sp_plan.seconds, sp_frame.seconds
    return frame_pg, files


def bench_materialize(run: Profiles) -> None:
    """4. every view into the online store: the project's Arrow engine vs Feast's Spark engine."""
    end = dt.datetime.now(dt.timezone.utc)
    with Stage() as pg_mat:
        mat_pg = run.postgres.materialize(end)
    with Stage() as sp_mat:
        mat_sp = run.sp.materialize(end)
    run.rows.append(["materialize (all views)", pg_mat.seconds, sp_mat.seconds, sp_mat.cpu, load_average()[0]])
    run.results["online_rows"] = mat_pg.online_rows
    # the feedback views read PostgreSQL's impression log: the spark profile has none
    run.results["online_views_postgres_only"] = sorted(set(mat_pg.online_rows) - set(mat_sp.online_rows))
    run.results["online_rows_equal"] = all(mat_pg.online_rows.get(view) == rows for view, rows in mat_sp.online_rows.items())
    progress(f"materialize: postgres {pg_mat.seconds} s, spark {sp_mat.seconds} s (cpu {sp_mat.cpu} s); {mat_sp.online_rows}, "
             f"the same entities per view as postgres: {run.results['online_rows_equal']}")
    run.results["online_bytes"] = int(run.postgres.conn.execute(
        "SELECT sum(pg_total_relation_size(c.oid)) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = 'public' AND c.relkind = 'r' AND c.relname LIKE 'interest_shift%%'").fetchone()[0] or 0)
    run.postgres.conn.commit()


def bench_ranker(run: Profiles, frame_pg, files: list[str], n_rows: int) -> None:
    """5. LambdaMART on the frame: ``ItemRanker.fit`` on pandas vs ``SparkXGBRanker`` on the staged Parquet."""
    import yaml

    from interest_models.models.item_ranker import ItemRanker
    from interest_models.training.distributed import fit_ranker_spark_frame

    args = run.args
    columns = ranker_columns(frame_pg)
    train, valid = ranker_rows(frame_pg, columns, args.seed)
    ranker_config = yaml.safe_load((Path(__file__).resolve().parents[1] / "interest_models/config/ranker.yaml").read_text())
    ranker_config |= {"n_estimators": args.ranker_trees, "early_stopping_rounds": args.ranker_trees, "base_margin": None}
    with Stage() as pg_rank:
        ItemRanker(ranker_config, args.seed, "cpu", columns=columns).fit(*train, valid)
    with Stage() as sp_rank:
        staged = spark_ranker_frame(run.spark.read.parquet(str(Path(files[0]).parent)), n_rows, args.seed)
        fit_ranker_spark_frame(ItemRanker(ranker_config, args.seed, "cpu", columns=columns), staged, num_workers=2)
    progress(f"ranker on {len(train[0]):,} rows x {len(columns)}: local {pg_rank.seconds} s, "
             f"spark {sp_rank.seconds} s (cpu {sp_rank.cpu} s)")
    run.rows.append([f"ranker ({len(train[0]):,} rows, {args.ranker_trees} trees)", pg_rank.seconds, sp_rank.seconds,
                     sp_rank.cpu, load_average()[0]])
    run.results["ranker_rows"], run.results["ranker_columns"] = len(train[0]), len(columns)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--items", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--frame-rows", type=int, default=1_000_000)
    parser.add_argument("--ranker-trees", type=int, default=100)
    parser.add_argument("--builds-only", action="store_true", help="stop after the feature builds (stages 1 and 2)")
    parser.add_argument("--incremental-fraction", type=float, default=0.01,
                        help="size of the extra day of events for the incremental builds, as a share of the first load")
    parser.add_argument("--spark-master", default="local[2]")
    parser.add_argument("--shuffle-partitions", type=int, default=8)
    parser.add_argument("--driver-memory", default="6g", help="spark.driver.memory (local mode: executors too)")
    parser.add_argument("--warehouse", default=None, help="Parquet warehouse folder (default: a temporary one)")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    args = parser.parse_args()
    stop_on_sigterm()
    silence_known_warnings()

    from materialize.pipeline import Pipeline
    from materialize.settings import SparkSettings, load_settings

    warehouse = Path(args.warehouse or tempfile.mkdtemp(prefix="interest-spark-bench-"))
    spark_settings = SparkSettings(warehouse=str(warehouse), master=args.spark_master,
                                   shuffle_partitions=args.shuffle_partitions, driver_memory=args.driver_memory)
    base = load_settings()
    run = None
    try:
        with throwaway_database() as pg_a, throwaway_database() as pg_b:
            run = Profiles(args, shop_config(args), base,
                           Pipeline(dataclasses.replace(base, postgres=pg_a, spark=None), progress=False),
                           Pipeline(dataclasses.replace(base, postgres=pg_b, spark=spark_settings), progress=False),
                           warehouse, spark_settings,
                           results={"events_requested": args.events, "frame_rows": args.frame_rows,
                                    "load_before": load_average()})
            run.results["machine"] = machine_info(run.postgres.conn,
                                                  packages=("pyspark", "feast", "xgboost", "torch", "pandas", "pyarrow"))
            bench_ingest(run)
            for pipeline in (run.postgres, run.sp):  # untimed: the same step in both profiles
                pipeline.embed()
            bench_builds(run)
            if not args.builds_only:
                for pipeline in (run.postgres, run.sp):
                    pipeline.apply()
                entity = entity_rows(run)
                frame_pg, files = bench_training_frame(run, entity)
                bench_materialize(run)
                bench_ranker(run, frame_pg, files, len(entity))
            run.postgres.close()
            run.sp.close()
    finally:  # the warehouse first: on SIGTERM the JVM may be gone and spark.stop() raise
        if not args.warehouse:
            shutil.rmtree(warehouse, ignore_errors=True)
        if run is not None and run.spark is not None:
            run.spark.stop()
    results, rows = run.results, run.rows
    results["stages"] = {r[0]: {"postgres_s": r[1], "spark_s": r[2], "spark_cpu_s": r[3], "load_1m": r[4]} for r in rows}
    results["load_after"] = load_average()
    print()
    print(json.dumps(results["machine"], indent=1, default=str))
    print(f"\n{results['events']:,} events of {results['users']:,} users, {args.items:,} items; "
          f"Parquet {results['parquet_bytes'] / 2**20:.1f} MiB; Spark {args.spark_master}, "
          f"{args.shuffle_partitions} shuffle partitions; load {results['load_before']} -> {results['load_after']}")
    print(table(["stage", "postgres s", "spark s", "spark cpu s", "load 1m"], rows))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    sys.exit(main())
