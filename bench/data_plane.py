"""Every data-plane benchmark in one run, in pipeline order, on one fresh PostgreSQL database.

1. ingestion of a synthetic shop (``ingest_benchmark.py``);
2. embedding of the item texts (``embedding_benchmark.py``);
3. feature build, full then incremental after one more day of events
   (``feature_build_benchmark.py``);
4. ``feast apply`` and materialization of every view (``materialize_benchmark.py``);
5. historical retrieval: the offline store plugin, stock Feast and a hand-written lower
   bound (``retrieval_benchmark.py``).

Each step leaves the database in the state the next one needs, so nothing is prepared
twice; the options are the union of the five scripts' options. A table of all figures
with machine info is printed at the end and written as JSON.

Usage (from the project root)::

    .venv/bin/python bench/data_plane.py --events 1000000 --entity-rows 10000 100000

Nothing here asserts on time; the plugin/stock value check is reported, not raised.
"""
from __future__ import annotations

import embedding_benchmark
import feature_build_benchmark
import ingest_benchmark
import materialize_benchmark
import retrieval_benchmark
from harness import run_subjects

SUBJECTS = [ingest_benchmark.SUBJECT, embedding_benchmark.SUBJECT, feature_build_benchmark.SUBJECT,
            materialize_benchmark.SUBJECT, retrieval_benchmark.SUBJECT]

if __name__ == "__main__":
    run_subjects(SUBJECTS, "Data-plane benchmark", __doc__.split("\n\n")[0], "data_plane.json")
