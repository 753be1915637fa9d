"""Train, register and report in one call, on the database a ``Pipeline`` is connected to."""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pandas as pd

from interest_models.registry.model_registry import registry_for
from interest_models.evaluation.report import write_report
from interest_models.progress import Stages
from interest_models.training.recipe import STAGES, TrainingResult, train_models
from materialize.database.tables import fetch_frame

PUBLISHED_MOVIELENS_100K = pd.DataFrame(
    {"HR@10": [0.1103], "NDCG@10": [0.0513], "MRR@10": [0.0337]},
    index=["RecBole GRU4Rec, default settings (quick start)"],
)
"""Chronological leave-one-out on ML-100K, ranked against all items."""

WORKFLOW_STAGES = {
    "registry": "model files, manifest and checksums saved as a new version",
    "report": "report.md with its tables and plots",
}


@dataclass(frozen=True)
class TrainingRun:
    result: TrainingResult
    version: str | None
    serving: bool
    report: Path


def train_register_report(pipeline, protocol: str = "time_split", device: str | None = None,
                          overrides: dict[str, dict] | None = None, register: bool = True, serve: bool = False,
                          champion=None, decide: Callable[[TrainingResult], tuple[bool, dict]] | None = None) -> TrainingRun:
    """Train on everything the store holds, register the version and write its report.

    Args:
        pipeline: a ``materialize.pipeline.Pipeline`` whose repo is applied and built.
        protocol: "time_split" or "leave_one_out" (MovieLens' standard protocol).
        serve: also mark the new version as the serving one.
        champion: the serving ``RegisteredModel``, scored on the same test points
            (``train_models``); its figures go into the manifest and the report.
        decide: called with the result before registering: (serve it, extra manifest
            entries); replaces ``serve``.
    """
    overrides = {k: dict(v) for k, v in (overrides or {}).items()}
    training = overrides.setdefault("training", {})
    training.setdefault("protocol", protocol)
    if protocol == "leave_one_out":
        training.setdefault("exclude_seen", True)
    settings = pipeline.settings
    stages = Stages(STAGES | WORKFLOW_STAGES, enabled=pipeline.progress)
    result = train_models(
        pipeline.store, pipeline.conn, dt.timedelta(minutes=settings.pipeline.session_gap_minutes),
        overrides=overrides, device=device, progress=stages, config_dir=settings.config_dir, champion=champion,
    )
    extra = {"database": settings.postgres.database}
    if decide is not None:
        serve, decision = decide(result)
        extra |= decision
    with stages.stage("registry") as stage:
        registry = registry_for(settings.project_dir)
        version = registry.register(result, extra=extra) if register else None
        if version and serve:
            registry.set_serving(version)
        stage.summary = "not registered" if version is None else f"version {version}" + (" (now serving)" if serve else "")
    with stages.stage("report") as stage:
        names = dict(pipeline.conn.execute("SELECT category_id, category FROM interest.categories"))
        planted = fetch_frame(pipeline.conn, "SELECT * FROM interest.planted_interest_shifts")
        is_movielens = pipeline.conn.execute(
            "SELECT count(*) > 0 FROM interest.ingest_runs WHERE source LIKE 'movielens-100k%%'"
        ).fetchone()[0]
        report_dir = settings.project_dir / "reports" / (version or f"unregistered-{dt.datetime.now():%Y%m%d-%H%M%S}")
        report = write_report(
            result, report_dir, version or "unregistered", f"Interest-shift models ({protocol})", names,
            planted=planted if len(planted) else None,
            references=PUBLISHED_MOVIELENS_100K if is_movielens and protocol == "leave_one_out" else None,
        )
        stage.summary = str(report)
    return TrainingRun(result, version, bool(version and serve), report)
