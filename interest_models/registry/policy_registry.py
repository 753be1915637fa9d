"""Versions of the learned policy, beside the model versions: ``<registry>/policies/<version>/``.

A version holds ``bandit.npz`` and ``bandit.json`` (``LinearUCB.save``), ``item_effects.npz``
and ``taste_effects.npz`` (``ClickEffects.save``; absent in versions saved before them) and
``manifest.json``: the policy config, the context columns, the log it learned from, any
off-policy evaluation of it, and a SHA-256 per file, checked on load. ``SERVING`` names
the version ``/recommend`` uses for ``policy: bandit``. No pickle.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json

from interest_models.policies.click_effects import ClickEffects
from interest_models.policies.linear_bandit import LinearUCB
from interest_models.policies.reranking import BanditPolicy
from interest_models.registry.model_registry import RegistryError, VersionFolders, _sha256


class PolicyRegistry(VersionFolders):
    """Policy versions under ``root`` (``<model registry root>/policies``)."""

    def set_serving(self, version: str) -> None:
        self.manifest(version)  # it must exist and verify
        self._point_serving_to(version)

    def register(self, policy: BanditPolicy, context_columns: list[str], extra: dict | None = None) -> str:
        """Save the bandit's statistics and config as a new version; returns its name."""
        created = dt.datetime.now(dt.timezone.utc)
        staging = self.root / f".staging-{created:%Y%m%d%H%M%S%f}"
        staging.mkdir(parents=True)
        policy.bandit.save(staging)
        policy.effects.save(staging)
        checksums = {path.name: _sha256(path) for path in sorted(staging.iterdir())}
        # The creation time enters the hash: two saves of the same statistics in one second get two versions.
        digest = hashlib.sha256((created.isoformat() + "".join(checksums.values())).encode()).hexdigest()[:8]
        version = f"p{created:%Y%m%d-%H%M%S}-{digest}"
        manifest = {
            "version": version, "created_at": created.isoformat(), "policy": policy.name, "config": policy.config,
            "context_columns": context_columns, "observations": policy.bandit.observations, "checksums": checksums,
            **(extra or {}),
        }
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str))
        staging.rename(self.root / version)
        policy.version = version
        return version

    def manifest(self, version: str) -> dict:
        """The version's manifest after checking every file's SHA-256."""
        path = self.root / version
        if not (path / "manifest.json").exists():
            raise RegistryError(f"no policy version {version!r} in {self.root}")
        manifest = json.loads((path / "manifest.json").read_text())
        for name, expected in manifest["checksums"].items():
            if not (path / name).exists() or _sha256(path / name) != expected:
                raise RegistryError(f"policy {version}: {name} is missing or changed after registration")
        return manifest

    def load(self, version: str | None = None, context_columns: list[str] | None = None) -> BanditPolicy:
        """Load ``version`` (default: the serving one).

        Args:
            context_columns: the columns this code builds; a version learned on others is refused.
        """
        version = version or self.serving_version()
        if version is None:
            raise RegistryError(f"no serving policy in {self.root}")
        manifest = self.manifest(version)
        if context_columns is not None and manifest["context_columns"] != context_columns:
            raise RegistryError(f"policy {version} was learned on other context columns than this code builds")
        config = manifest["config"]
        return BanditPolicy(LinearUCB.load(self.root / version), config, version, ClickEffects.load(self.root / version, config))
