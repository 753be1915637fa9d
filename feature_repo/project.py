"""The Feast project, named by ``project:`` in feature_store.yaml (one place to change it).

Declaring it here spares every ``feast apply`` the notice "No project found in the
repository" that Feast prints when a repo defines no ``Project``.
"""
from pathlib import Path

import yaml
from feast import Project

project = Project(
    name=yaml.safe_load((Path(__file__).with_name("feature_store.yaml")).read_text())["project"],
    description="E-commerce user interests: behaviour aggregates, item statistics and text embeddings "
                "for interest-shift prediction and ranking",
)
