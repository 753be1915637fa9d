"""Entry point of the spark profile's batch jobs, for ``spark-submit`` or plain Python.

    python -m materialize.spark_jobs ingest --events FILE     # validate, quarantine, write Parquet by day
    python -m materialize.spark_jobs build [--full]           # catalogue export + Spark feature build
    python -m materialize.spark_jobs apply                    # feast apply with feature_store.spark.yaml
    python -m materialize.spark_jobs materialize              # Spark compute engine -> Postgres online store

On a cluster: ``spark-submit --master k8s://... --py-files interest.zip
materialize/spark_jobs.py build`` (see README, "Spark profile on a cluster"). Settings come
from the environment as everywhere else (``materialize.settings``); ``INTEREST_PROFILE``
must be ``spark``. The session is the one ``spark-submit`` made (its ``--conf`` values
win), or a new one from ``INTEREST_SPARK_MASTER``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from materialize.settings import SettingsError, load_settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="materialize.spark_jobs", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="job", required=True)
    ingest = sub.add_parser("ingest", help="validate an events file into the Parquet warehouse")
    ingest.add_argument("--events", type=Path, required=True)
    build = sub.add_parser("build", help="export the catalogue and compute the feature tables with Spark (incrementally)")
    build.add_argument("--full", action="store_true", help="recompute every day, not only those new events change")
    sub.add_parser("apply", help="feast apply with feature_store.spark.yaml")
    sub.add_parser("materialize", help="materialize every view into the online store through the Spark engine")
    args = parser.parse_args(argv)

    settings = load_settings()
    if settings.spark is None:
        raise SettingsError("the spark jobs need INTEREST_PROFILE=spark")
    from materialize.pipeline import Pipeline

    started = time.perf_counter()
    with Pipeline(settings, progress=False) as pipeline:
        if args.job == "ingest":
            from materialize.ingest.parquet_writer import load_events_parquet
            from materialize.ingest.readers import file_sha256, read_file
            from materialize.ingest.schema import EVENTS

            config = settings.pipeline
            report = load_events_parquet(
                pipeline.conn, read_file(args.events, EVENTS, config.ingest_chunk_rows), settings.spark.warehouse,
                source=str(args.events), source_sha256=file_sha256(args.events),
                future_tolerance_s=config.future_tolerance_seconds, min_event_time=config.min_event_time)
            result = {"summary": report.summary()}
        elif args.job == "build":
            from materialize.features.spark_builder import build_features_spark
            from materialize.ingest.parquet_writer import export_catalogue
            from materialize.spark_session import get_spark

            exported = export_catalogue(pipeline.conn, settings.spark.warehouse)
            report = build_features_spark(get_spark(settings.spark), settings.spark.warehouse, settings.pipeline,
                                          full=args.full)
            result = {"catalogue": exported, "mode": report.mode, "reason": report.reason, "since_day": report.since_day,
                      "events": report.events, "rows": report.rows, "seconds": report.seconds}
        elif args.job == "apply":
            pipeline.apply()
            result = {"applied": str(settings.feature_store_yaml)}
        else:
            from materialize.spark_session import get_spark

            get_spark(settings.spark)  # Feast's engine takes the active session
            report = pipeline.materialize()
            result = {"online_rows": report.online_rows, "seconds": round(report.seconds, 2)}
    result["job_seconds"] = round(time.perf_counter() - started, 2)
    print(json.dumps(result, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
