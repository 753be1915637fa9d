"""Progress output of long runs: numbered stage lines, and bars that end where early
stopping ends.

Everything goes to stderr through ``tqdm.write`` (so lines never break a running bar);
a disabled ``Stages`` logs its lines at INFO instead (seen with ``interest -v``).
"""
from __future__ import annotations

import logging
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterable, Iterator

from tqdm.auto import tqdm

log = logging.getLogger(__name__)


@dataclass
class Stage:
    """What a running stage reports when it ends: ``summary`` (sizes, outcome)."""

    summary: str = ""


class Stages:
    """Announces each stage of a run with what it does, then its time and ``summary``.

    Args:
        plan: stage name -> what it does, in run order (gives the ``[k/n]`` numbering).
        enabled: print to stderr; False logs at INFO instead.
        prefix: first word of every line.
    """

    def __init__(self, plan: dict[str, str], enabled: bool = True, prefix: str = "train"):
        self.plan, self.enabled, self.prefix = dict(plan), enabled, prefix
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[Stage]:
        """``with stages.stage("name") as stage: ...; stage.summary = "..."``."""
        tag = f"[{self.prefix} {list(self.plan).index(name) + 1}/{len(self.plan)}] {name}"
        self._say(f"{tag}: {self.plan[name]} ...")
        started, stage = time.perf_counter(), Stage()
        yield stage
        self.seconds[name] = round(time.perf_counter() - started, 2)
        self._say(f"{tag} done in {self.seconds[name]:.1f} s" + (f": {stage.summary}" if stage.summary else ""))

    def bar(self, iterable: Iterable, desc: str, **kwargs) -> tqdm:
        """A transient tqdm bar over a long loop (silent when disabled)."""
        return tqdm(iterable, desc=desc, leave=False, disable=not self.enabled, **kwargs)

    def _say(self, line: str) -> None:
        if self.enabled:
            tqdm.write(line, file=sys.stderr)
        else:
            log.info(line)


def end_bar(bar: tqdm, done: int, note: str) -> None:
    """Closes a bar over at most ``bar.total`` epochs (or rounds) after ``done`` of them:
    at done/done, with "early stop, " before ``note`` when training ended before the total."""
    if done < bar.total:
        bar.total = done
        note = f"early stop, {note}"
    bar.set_postfix_str(note, refresh=False)
    bar.close()
