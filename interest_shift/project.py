"""``interest init DIR``: a ready project folder, as ``feast init`` writes one.

The folder holds the Feast feature repo (``feature_repo/``, the same definitions this
package ships), commented copies of the packaged YAML configs (``config/``: values there
override the packaged defaults key by key, so they keep working when a release adds
keys), and a ``.gitignore`` for what the pipeline accumulates there. Point
``INTEREST_HOME`` at the folder and every command works in it.
"""
from __future__ import annotations

import shutil
from importlib import resources
from pathlib import Path

from interest_models.config import NAMES as MODEL_CONFIGS

FEATURE_REPO_FILES = ("*.py", "feature_store.yaml", "feature_store.spark.yaml")
CONFIG_SOURCES = {"pipeline": "materialize"} | {name: "interest_models.config" for name in MODEL_CONFIGS}
"""Config name -> the package that ships ``<name>.yaml``."""
GITIGNORE = """# What the pipeline accumulates in a project folder
.pgdata/
.data/
models/
reports/
__pycache__/
"""


class ProjectExists(FileExistsError):
    """The target folder already holds a feature repo or configs."""


def bundled_feature_repo() -> Path:
    """The feature repo shipped with the package."""
    return Path(str(resources.files("interest_shift").joinpath("feature_repo")))


def init_project(directory: Path) -> list[Path]:
    """Write a feature repo, configs and a ``.gitignore`` into ``directory``.

    Returns:
        The files written.

    Raises:
        ProjectExists: ``directory`` already has ``feature_repo/`` or ``config/``
            (nothing is overwritten).
    """
    directory = Path(directory).resolve()
    repo_dir, config_dir = directory / "feature_repo", directory / "config"
    existing = [path for path in (repo_dir, config_dir) if path.exists()]
    if existing:
        raise ProjectExists(f"{', '.join(map(str, existing))} already exists; choose an empty folder")
    repo_dir.mkdir(parents=True)
    config_dir.mkdir()
    written = []
    source = bundled_feature_repo()
    for pattern in FEATURE_REPO_FILES:
        for path in sorted(source.glob(pattern)):
            written.append(Path(shutil.copyfile(path, repo_dir / path.name)))
    for name, package in CONFIG_SOURCES.items():
        target = config_dir / f"{name}.yaml"
        target.write_text(resources.files(package).joinpath(f"{name}.yaml").read_text())
        written.append(target)
    gitignore = directory / ".gitignore"
    if not gitignore.exists():
        gitignore.write_text(GITIGNORE)
        written.append(gitignore)
    return written
