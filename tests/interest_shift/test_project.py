"""``interest init``: a project folder with the feature repo and configs, and the settings
that read it through INTEREST_HOME."""
from __future__ import annotations

import yaml
from click.testing import CliRunner

from interest_models.config import NAMES, load_config
from interest_shift.cli import main
from interest_shift.project import bundled_feature_repo, init_project
from materialize.settings import load_settings

import pytest


def test_init_writes_the_feature_repo_and_every_config(tmp_path):
    result = CliRunner().invoke(main, ["init", str(tmp_path / "shop")])
    assert result.exit_code == 0, result.output
    home = tmp_path / "shop"
    bundled = sorted(p.name for p in bundled_feature_repo().iterdir() if p.suffix in (".py", ".yaml"))
    assert sorted(p.name for p in (home / "feature_repo").iterdir()) == bundled
    assert "feature_store.yaml" in bundled and "feature_views.py" in bundled
    for name in NAMES + ("pipeline",):
        assert yaml.safe_load((home / "config" / f"{name}.yaml").read_text())
    assert ".pgdata/" in (home / ".gitignore").read_text()
    assert f"export INTEREST_HOME={home}" in result.output


def test_init_never_overwrites(tmp_path):
    init_project(tmp_path)
    (tmp_path / "config" / "lstm.yaml").write_text("hidden_dim: 7\n")
    result = CliRunner().invoke(main, ["init", str(tmp_path)])
    assert result.exit_code == 1 and "already exists" in result.output
    assert (tmp_path / "config" / "lstm.yaml").read_text() == "hidden_dim: 7\n"


def test_project_configs_override_the_packaged_ones_key_by_key(tmp_path):
    init_project(tmp_path)
    (tmp_path / "config" / "pipeline.yaml").write_text("sequence_length: 12\n")
    (tmp_path / "config" / "lstm.yaml").write_text("hidden_dim: 32\n")
    override = tmp_path / "override.yaml"
    override.write_text("session_gap_minutes: 45\n")
    settings = load_settings({"INTEREST_HOME": str(tmp_path), "INTEREST_CONFIG": str(override)})
    assert settings.project_dir == tmp_path.resolve()
    assert settings.feature_repo_dir == tmp_path.resolve() / "feature_repo"
    assert (settings.pipeline.sequence_length, settings.pipeline.session_gap_minutes) == (12, 45)
    assert settings.pipeline.feature_ttl_days == load_settings({}).pipeline.feature_ttl_days  # untouched keys keep defaults
    lstm = load_config("lstm", {"dropout": 0.0}, settings.config_dir)
    assert (lstm["hidden_dim"], lstm["dropout"], lstm["item_dim"]) == (32, 0.0, load_config("lstm")["item_dim"])
    (tmp_path / "config" / "lstm.yaml").write_text("hidden_dimension: 32\n")
    with pytest.raises(KeyError, match="hidden_dimension.*lstm.yaml"):
        load_config("lstm", None, settings.config_dir)


def test_a_folder_without_feature_repo_gets_a_clear_error(tmp_path, monkeypatch, pg_server):
    monkeypatch.setenv("INTEREST_HOME", str(tmp_path))
    if pg_server.embedded:  # the same embedded server, not a new one in tmp_path
        monkeypatch.setenv("INTEREST_PGDATA", pg_server.host)
    result = CliRunner().invoke(main, ["apply"])
    assert result.exit_code == 1
    assert "no Feast feature repo" in result.output and "interest init" in result.output
    assert "Traceback" not in result.output
