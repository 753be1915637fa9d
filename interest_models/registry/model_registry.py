"""The model registry: one folder per trained version, no pickle anywhere.

A version folder holds what each model's ``save`` writes (``lstm.pt``, a state dict loaded
with ``weights_only=True``, and ``lstm.json``; ``ranker.json``, XGBoost JSON;
``blend.json``; ``co_purchase.npz`` and ``item_knn.npz``, the neighbour models whose
scores the ranker reads), ``vocabulary.json`` and ``manifest.json``: the feature service and its
exact feature list, the data window, metrics, seeds, configs,
library versions and a SHA-256 per file. Loading verifies every checksum and refuses a
model whose features the feature store no longer serves. ``SERVING`` names the version
services use.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import platform
import shutil
from dataclasses import dataclass
from importlib.metadata import version as package_version
from pathlib import Path

import pandas as pd

from interest_models.models.baseline import Baseline
from interest_models.models.blend import Blend
from interest_models.models.co_purchase import CoPurchase
from interest_models.models.item_knn import ItemKNN
from interest_models.data.vocabulary import Vocabulary
from interest_models.models.item_ranker import ItemRanker
from interest_models.data.ranking_features import FEATURE_COLUMNS
from interest_models.models.interest_shift_lstm import InterestShiftLSTM

SERVING_POINTER = "SERVING"
NEIGHBOUR_CLASSES = (CoPurchase, ItemKNN)  # the ranker's neighbour-score models (``ranking_features.NEIGHBOUR_MODELS``)
VOCABULARY_FILE = "vocabulary.json"


class RegistryError(RuntimeError):
    """A version that is missing, tampered with, or incompatible with the store."""


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _library_versions() -> dict[str, str]:
    names = ("torch", "xgboost", "feast", "numpy", "pandas", "transformers")
    out = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = package_version(name)
        except Exception:  # xgboost-cpu registers under its own distribution name
            try:
                out[name] = package_version(f"{name}-cpu")
            except Exception:
                out[name] = "not installed"
    return out


@dataclass
class RegisteredModel:
    """A loaded, verified version."""

    version: str
    path: Path
    manifest: dict
    vocabulary: Vocabulary
    model: InterestShiftLSTM
    ranker: ItemRanker
    blend: Blend
    neighbours: dict[str, Baseline]  # baseline name -> fitted neighbour model the ranker reads


def registry_for(project_dir: Path) -> "ModelRegistry":
    """The registry of a project folder: ``<project>/models/registry``."""
    return ModelRegistry(Path(project_dir) / "models" / "registry")


class VersionFolders:
    """Version folders (each with a ``manifest.json``) under ``root``, and the ``SERVING``
    pointer naming the one services load."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def versions(self) -> list[str]:
        if not self.root.exists():
            return []
        return sorted(p.name for p in self.root.iterdir() if (p / "manifest.json").exists())

    def serving_version(self) -> str | None:
        pointer = self.root / SERVING_POINTER
        return pointer.read_text().strip() if pointer.exists() else None

    def _point_serving_to(self, version: str) -> None:
        """Replace the pointer atomically (a reader sees the old or the new version)."""
        tmp = self.root / f".{SERVING_POINTER}.tmp"
        tmp.write_text(version + "\n")
        tmp.replace(self.root / SERVING_POINTER)


class ModelRegistry(VersionFolders):
    """Versions under ``root`` (default ``<project>/models/registry``)."""

    def set_serving(self, version: str) -> None:
        """Mark ``version`` as the one services load (it must verify first)."""
        self.verify_files(version)
        self._point_serving_to(version)

    def listing(self) -> pd.DataFrame:
        rows = []
        serving = self.serving_version()
        for version in self.versions():
            manifest = json.loads((self.root / version / "manifest.json").read_text())
            test = manifest["metrics"]["test"].get("blend (LSTM + XGBoost)", {})
            rows.append({
                "version": version, "serving": version == serving, "created": manifest["created_at"],
                "protocol": manifest["data_window"]["protocol"], "NDCG@10": test.get("NDCG@10"), "HR@10": test.get("HR@10"),
            })
        return pd.DataFrame(rows)

    def register(self, result, extra: dict | None = None) -> str:
        """Save a ``TrainingResult`` as a new version; returns the version name."""
        created = dt.datetime.now(dt.timezone.utc)
        staging = self.root / f".staging-{created:%Y%m%d%H%M%S%f}"
        staging.mkdir(parents=True)
        for model in (result.model, result.ranker, result.blend, *result.neighbours.values()):
            model.save(staging)
        (staging / VOCABULARY_FILE).write_text(json.dumps(result.vocabulary.to_json()))
        checksums = {path.name: _sha256(path) for path in sorted(staging.iterdir())}
        version = f"v{created:%Y%m%d-%H%M%S}-{hashlib.sha256(''.join(checksums.values()).encode()).hexdigest()[:8]}"
        manifest = {
            "version": version,
            "created_at": created.isoformat(),
            "feature_service": result.features.service,
            "features": result.features.all,
            "ranking_feature_columns": FEATURE_COLUMNS,
            "configs": result.configs,
            "seeds": {"training": result.configs["training"]["seed"]},
            "data_window": result.data_window,
            "sizes": result.sizes,
            "metrics": {
                "test": json.loads(result.metrics.to_json(orient="index")),
                "valid": json.loads(result.valid_metrics.to_json(orient="index")),
                "category": result.category_metrics,
                "shift": result.shift_metrics,
                **({"against_serving": result.champion} if result.champion is not None else {}),
            },
            "device": result.device,
            "libraries": _library_versions(),
            "checksums": checksums,
            **(extra or {}),
        }
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str))
        staging.rename(self.root / version)
        return version

    def verify_files(self, version: str) -> dict:
        """Check every file against the manifest's SHA-256; returns the manifest."""
        path = self.root / version
        if not (path / "manifest.json").exists():
            raise RegistryError(f"no model version {version!r} in {self.root}")
        manifest = json.loads((path / "manifest.json").read_text())
        for name, expected in manifest["checksums"].items():
            if not (path / name).exists():
                raise RegistryError(f"{version}: {name} is missing")
            if _sha256(path / name) != expected:
                raise RegistryError(f"{version}: checksum mismatch for {name} (file changed after registration)")
        return manifest

    def check_store(self, manifest: dict, store) -> None:
        """Refuse a model whose feature service no longer serves its features."""
        try:
            service = store.get_feature_service(manifest["feature_service"])
        except Exception as error:
            raise RegistryError(f"the store has no feature service {manifest['feature_service']!r}") from error
        served = {f"{p.name}:{f.name}" for p in service.feature_view_projections for f in p.features}
        missing = sorted(set(manifest["features"]) - served)
        if missing:
            raise RegistryError(f"feature service {manifest['feature_service']!r} no longer serves {missing}")

    def load(self, version: str | None = None, store=None, device: str | None = None) -> RegisteredModel:
        """Load ``version`` (default: the serving one) after verifying it.

        Args:
            store: when given, the feature service is checked against the manifest.
        """
        version = version or self.serving_version()
        if version is None:
            raise RegistryError(f"no serving version is set in {self.root}")
        manifest = self.verify_files(version)
        if store is not None:
            self.check_store(manifest, store)
        path = self.root / version
        vocabulary = Vocabulary.from_json(json.loads((path / VOCABULARY_FILE).read_text()))
        if manifest.get("ranking_feature_columns") != FEATURE_COLUMNS:
            raise RegistryError(f"{version} was trained on other ranking features than this code computes; train a new version")
        neighbours = {model.name: model.load(path) for model in NEIGHBOUR_CLASSES}
        return RegisteredModel(version, path, manifest, vocabulary, InterestShiftLSTM.load(path),
                               ItemRanker.load(path, device), Blend.load(path), neighbours)

    def remove(self, version: str) -> None:
        if self.serving_version() == version:
            raise RegistryError(f"{version} is the serving version; serve another first")
        shutil.rmtree(self.root / version)
