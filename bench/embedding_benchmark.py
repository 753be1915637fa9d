"""Embedding of the item texts (all-MiniLM-L6-v2) of a synthetic catalogue.

``Pipeline.embed()`` on a fresh PostgreSQL database holding only the catalogue (loaded
first, not timed): seconds inside the model, and wall time with model loading and the
COPY of the vectors.

Usage (from the project root)::

    .venv/bin/python bench/embedding_benchmark.py --items 3000

Nothing here asserts on time.
"""
from __future__ import annotations

from harness import BenchRun, Subject, progress, rate, run_subjects, table, timed


def measure(run: BenchRun) -> dict:
    import torch

    with timed() as wall:
        embedding = run.pipeline.embed()
    progress(f"embedded {embedding.texts_embedded:,} texts: {embedding.seconds_in_model:.2f} s in the model, "
             f"{wall.seconds:.2f} s wall")
    return {
        "texts_embedded": embedding.texts_embedded,
        "seconds_in_model": round(embedding.seconds_in_model, 3),
        "texts_per_s_in_model": rate(embedding.texts_embedded, embedding.seconds_in_model),
        "wall_s": round(wall.seconds, 3),
        "texts_per_s_wall": rate(embedding.texts_embedded, wall.seconds),
        "torch_threads": torch.get_num_threads(),
    }


def render(e: dict) -> list[str]:
    return [
        "Embedding (pipeline.embed: all-MiniLM-L6-v2 on CPU)",
        table(["texts", "seconds in model", "texts/s in model", "wall s (model load, DB writes)", "texts/s wall",
               "torch threads"],
              [[e["texts_embedded"], e["seconds_in_model"], e["texts_per_s_in_model"], e["wall_s"],
                e["texts_per_s_wall"], e["torch_threads"]]]),
    ]


SUBJECT = Subject(key="embedding", title="Embedding", needs=("catalogue",), provides=("embeddings",),
                  measure=measure, render=render, uses_events=False)

if __name__ == "__main__":
    run_subjects([SUBJECT], "Embedding benchmark", __doc__.split("\n\n")[0], "embedding.json")
