"""``feast apply`` and materialization of every feature view into the online store.

On a fresh PostgreSQL database holding a synthetic shop, its item embeddings and its
feature tables (prepared first, not timed): ``import feast`` and ``Pipeline.apply()``
timed apart, then ``store.materialize`` from 1970 to now, one view at a time, with the
source rows read, the online entities and the online rows written per view.

Usage (from the project root)::

    .venv/bin/python bench/materialize_benchmark.py --events 1000000

Nothing here asserts on time.
"""
from __future__ import annotations

import datetime as dt

from psycopg import sql

from harness import BenchRun, Subject, progress, quiet, rate, run_subjects, silence_known_warnings, table, timed


def materialize_views(pipeline, quiet_output: bool) -> dict:
    """``store.materialize`` from 1970 to now, one view at a time (what
    ``materialize.feature_store.repo.materialize_online`` does in one call for fresh views)."""
    from materialize.feature_store.repo import FIRST_MATERIALIZATION_START, online_entity_counts

    store = pipeline.store
    end = dt.datetime.now(dt.timezone.utc)
    online = store.config.online_store
    views = {}
    for view in sorted(store.list_feature_views(), key=lambda v: v.name):
        source_table = view.batch_source.name  # data_sources.py: source name == table in schema interest
        source_rows = pipeline.conn.execute(
            sql.SQL("SELECT count(*) FROM interest.{}").format(sql.Identifier(source_table))
        ).fetchone()[0]
        pipeline.conn.commit()
        with timed() as clock, quiet(quiet_output):
            store.materialize(start_date=FIRST_MATERIALIZATION_START, end_date=end, feature_views=[view.name])
        views[view.name] = {"source_table": source_table, "source_rows": source_rows,
                            "seconds": round(clock.seconds, 3), "features": len(view.features)}
        progress(f"materialized {view.name}: {source_rows:,} source rows in {clock.seconds:.2f} s")
    entities = online_entity_counts(store)
    for name, figures in views.items():
        table_name = f"{store.project}_{name}"
        online_rows = pipeline.conn.execute(
            sql.SQL("SELECT count(*) FROM {}.{}").format(sql.Identifier(online.db_schema), sql.Identifier(table_name))
        ).fetchone()[0]
        figures["online_entities"] = entities[name]
        figures["online_rows"] = online_rows  # one row per (entity, feature)
        figures["entities_per_s"] = rate(entities[name], figures["seconds"])
        figures["online_rows_per_s"] = rate(online_rows, figures["seconds"])
        figures["source_rows_per_s"] = rate(figures["source_rows"], figures["seconds"])
    pipeline.conn.commit()
    return {
        "end": end.isoformat(),
        "views": views,
        "total_s": round(sum(v["seconds"] for v in views.values()), 3),
        "online_entities": sum(v["online_entities"] for v in views.values()),
        "online_rows": sum(v["online_rows"] for v in views.values()),
        "source_rows": sum(v["source_rows"] for v in views.values()),
    }


def measure(run: BenchRun) -> dict:
    with timed() as import_clock:
        import feast  # noqa: F401  (7 to 9 s; timed apart from apply)
    silence_known_warnings()
    with timed() as apply_clock, quiet(not run.args.progress):
        run.pipeline.apply()
    progress(f"feast imported in {import_clock.seconds:.2f} s, applied in {apply_clock.seconds:.2f} s")
    materialized = materialize_views(run.pipeline, quiet_output=not run.args.progress)
    run.sizes["online_rows"] = materialized["online_rows"]
    return {"import_s": round(import_clock.seconds, 3), "apply_s": round(apply_clock.seconds, 3),
            "materialize": materialized}


def render(f: dict) -> list[str]:
    mat = f["materialize"]
    return [
        f"Feast: import {f['import_s']:.2f} s, apply {f['apply_s']:.2f} s; materialize (1970 -> now, one view at a time, "
        f"total {mat['total_s']:.2f} s)",
        "  source rows = rows of the view's feature table (all read by the 'latest per entity' query);",
        "  entities = online entities written (latest row each); online rows = entities x features",
        table(
            ["view", "source table", "source rows", "seconds", "entities", "online rows", "entities/s",
             "online rows/s", "source rows/s"],
            [[name, v["source_table"], v["source_rows"], v["seconds"], v["online_entities"], v["online_rows"],
              v["entities_per_s"], v["online_rows_per_s"], v["source_rows_per_s"]] for name, v in mat["views"].items()]
            + [["total", "", mat["source_rows"], mat["total_s"], mat["online_entities"], mat["online_rows"],
                rate(mat["online_entities"], mat["total_s"]), rate(mat["online_rows"], mat["total_s"]),
                rate(mat["source_rows"], mat["total_s"])]],
        ),
    ]


SUBJECT = Subject(key="feast", title="Feast apply and materialize", needs=("shop", "embeddings", "features"),
                  provides=("feast",), measure=measure, render=render)

if __name__ == "__main__":
    run_subjects([SUBJECT], "Materialize benchmark", __doc__.split("\n\n")[0], "materialize.json")
