"""Applying the project's repo more than once in one process (two databases, as a test
session or a long-lived job does) registers fresh definitions each time."""
from __future__ import annotations

from materialize.pipeline import Pipeline
from tests.conftest import new_database, settings_for


def test_a_second_database_does_not_inherit_the_first_ones_materialization(pg_server, settings, capsys):
    with new_database(pg_server) as first, new_database(pg_server) as second:
        with Pipeline(settings_for(settings, first), progress=False) as pipeline:
            pipeline.apply()
            assert "No project found" not in capsys.readouterr().out  # feature_repo/project.py names it
            pipeline.materialize()
            printed = capsys.readouterr().out  # not a terminal: no colour codes, each view listed once
            names = [v.name for v in pipeline.store.list_feature_views()]
            assert "\x1b[" not in printed and all(printed.count(f"{name}:") == 1 for name in names), printed
            pipeline.apply()  # Feast updates the repo's view objects with the intervals above
            assert all(v.materialization_intervals for v in pipeline.store.list_feature_views())
        with Pipeline(settings_for(settings, second), progress=False) as pipeline:
            pipeline.apply()
            views = pipeline.store.list_feature_views()
            assert views and not any(v.materialization_intervals for v in views)
            assert sorted(pipeline.materialize().first_time) == sorted(v.name for v in views)
