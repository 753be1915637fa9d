"""Ingestion of a synthetic shop into a fresh PostgreSQL database.

The catalogue, then the events: validation, COPY into a staging table, insert into
``interest.*`` and bookkeeping (``ingest.load_frames``). The synthetic frames are generated
lazily between the chunks; that time is measured apart.

Usage (from the project root)::

    .venv/bin/python bench/ingest_benchmark.py --events 1000000

Nothing here asserts on time.
"""
from __future__ import annotations

from harness import BenchRun, Subject, ingest_shop, run_subjects, table


def measure(run: BenchRun) -> dict:
    return ingest_shop(run.pipeline, run.shop)


def render(ing: dict) -> list[str]:
    return [
        "Ingestion (validation + COPY + insert; generation of the synthetic frames timed apart)",
        table(
            ["load", "rows loaded", "seconds", "rows/s", "generation s", "rows/s incl. generation"],
            [["items", ing["items"]["loaded"], ing["items"]["seconds"], ing["items"]["rows_per_s"], "-", "-"],
             ["events", ing["events"]["loaded"], ing["events"]["load_s"], ing["events"]["rows_per_s"],
              ing["events"]["generation_s"], ing["events"]["rows_per_s_with_generation"]]],
        ),
    ]


SUBJECT = Subject(key="ingestion", title="Ingestion", needs=(), provides=("catalogue", "shop"),
                  measure=measure, render=render)

if __name__ == "__main__":
    run_subjects([SUBJECT], "Ingestion benchmark", __doc__.split("\n\n")[0], "ingest.json")
