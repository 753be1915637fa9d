"""Stage lines: numbered, on stderr, with time and summary; logged instead when disabled."""
from __future__ import annotations

import logging
import re

import pytest

from interest_models.progress import Stages

PLAN = {"first": "does one thing", "second": "does another"}


def test_stage_lines_are_numbered_and_timed(capsys):
    stages = Stages(PLAN)
    with stages.stage("first") as stage:
        stage.summary = "12 rows of 3 users"
    with stages.stage("second"):
        pass
    out, err = capsys.readouterr()
    assert out == ""
    assert re.fullmatch(
        r"\[train 1/2\] first: does one thing \.\.\.\n\[train 1/2\] first done in \d+\.\d s: 12 rows of 3 users\n"
        r"\[train 2/2\] second: does another \.\.\.\n\[train 2/2\] second done in \d+\.\d s\n", err,
    )
    assert set(stages.seconds) == set(PLAN)


def test_disabled_stages_only_log(capsys, caplog):
    stages = Stages(PLAN, enabled=False)
    with caplog.at_level(logging.INFO, logger="interest_models.progress"):
        with stages.stage("second") as stage:
            stage.summary = "done"
        list(stages.bar(range(3), "loop"))
    assert capsys.readouterr() == ("", "")
    assert [r.getMessage() for r in caplog.records][0] == "[train 2/2] second: does another ..."


def test_a_failed_stage_has_no_done_line(capsys):
    stages = Stages(PLAN)
    with pytest.raises(ValueError), stages.stage("first"):
        raise ValueError("no points")
    assert "done" not in capsys.readouterr().err and "first" not in stages.seconds
