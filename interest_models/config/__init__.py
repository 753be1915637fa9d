"""Hyper-parameters and serving settings: one commented YAML per model or service.

``training.yaml`` (how examples are drawn), ``lstm.yaml``, ``ranker.yaml``, ``serving.yaml``
and ``policy.yaml`` (the re-ranking policies); ``load_config`` reads one, then a project's file of the same name
(``$INTEREST_HOME/config/<name>.yaml``), then overrides given in code.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

CONFIG_DIR = Path(__file__).resolve().parent


NAMES = ("training", "lstm", "ranker", "serving", "policy")


def load_config(name: str, override: dict[str, Any] | None = None, project_dir: Path | None = None) -> dict[str, Any]:
    """The packaged ``<name>.yaml``, with the keys of ``project_dir/<name>.yaml`` (when that
    file exists) and then of ``override`` replaced; an unknown key is an error.

    Args:
        name: one of ``NAMES``.
        project_dir: a project's config folder (``Settings.config_dir``).
    """
    values = yaml.safe_load((CONFIG_DIR / f"{name}.yaml").read_text())
    project_file = Path(project_dir) / f"{name}.yaml" if project_dir is not None else None
    layers = [(str(project_file), yaml.safe_load(project_file.read_text()) or {})] if project_file and project_file.is_file() else []
    for source, layer in layers + [("override", override or {})]:
        for key, value in layer.items():
            if key not in values:
                raise KeyError(f"unknown {name} config key {key!r} ({source})")
            values[key] = value
    return values
