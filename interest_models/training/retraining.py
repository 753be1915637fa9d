"""Drift-triggered retraining: watch, retrain, compare with the serving model, promote if better.

``retrain`` brings the feature tables up to date (incremental build), runs the drift
monitor over the last days (``feedback.drift.daily_signals``: the population's category
mix, the logged CTR, the shift rate) and, when asked to retrain only on drift, stops there
unless a drift episode began after the newest data a registered version was trained on
(one retraining per episode: the monitor keeps flagging for a few days while its window
still holds the days before the change). Then it trains a challenger with the training
recipe (every feature from Feast point-in-time retrieval), scores the serving model on the
challenger's test decision points with the same code (``train_models(champion=...)``),
registers the challenger with both results and the decision in its manifest and report,
and serves it only if its test NDCG@10 beats the serving model's by more than ``min_gain``
(or when nothing serves yet).
"""
from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd

from interest_models.feedback.drift import DriftSignal, daily_signals, episode_start
from interest_models.registry.model_registry import RegistryError, registry_for

LOOKBACK_DAYS = 14  # days of signals searched for the start of a drift episode


class RetrainingError(RuntimeError):
    """A retraining that cannot run on what the database holds (no events, no history)."""


@dataclass
class RetrainOutcome:
    """What ``retrain`` did.

    Attributes:
        action: "no drift", "drift handled" (an earlier version already trained on the
            episode's data), "promoted" or "kept serving model".
        reason: one sentence saying why.
    """

    action: str
    reason: str
    signals: list[DriftSignal] = field(default_factory=list)
    drift_since: dt.date | None = None
    challenger: str | None = None
    serving: str | None = None
    comparison: dict | None = None
    report: Path | None = None

    @property
    def promoted(self) -> bool:
        return self.action == "promoted"


def newest_training_day(registry) -> tuple[str | None, dt.date | None]:
    """The registered version trained on the newest data and the (UTC) day of its last
    test decision point."""
    best = (None, None)
    for version in registry.versions():
        window = json.loads((registry.root / version / "manifest.json").read_text()).get("data_window", {})
        last = pd.Timestamp(window.get("test_last_as_of", "NaT"))
        if pd.isna(last):
            continue
        day = (last.tz_convert("UTC") if last.tzinfo else last).date()
        if best[1] is None or day > best[1]:
            best = (version, day)
    return best


def decide(comparison: dict | None, serving: str | None, serving_error: str | None, min_gain: float) -> tuple[bool, str]:
    """Serve the challenger? (answer, reason)."""
    if serving is None:
        return True, "no model was serving"
    if comparison is None:
        return False, f"the serving model {serving} could not be scored ({serving_error}); serve the new version by hand"
    gain = comparison["NDCG@10 difference"]
    interval = f"95 % interval {comparison['NDCG@10 difference 95% low']:+.4f} to {comparison['NDCG@10 difference 95% high']:+.4f}"
    if gain > min_gain:
        return True, f"test NDCG@10 {comparison['new NDCG@10']:.4f} vs {comparison['serving NDCG@10']:.4f} ({gain:+.4f}, {interval}) > {min_gain:+.4f}"
    return False, (f"test NDCG@10 {comparison['new NDCG@10']:.4f} vs {comparison['serving NDCG@10']:.4f} ({gain:+.4f}, {interval}) "
                   f"is not above {min_gain:+.4f}")


def retrain(pipeline, if_drift: bool, days: int = 1, window_days: int = 7, min_gain: float = 0.0, build: bool = True,
            device: str | None = None, overrides: dict | None = None, say: Callable[[str], None] = print) -> RetrainOutcome:
    """Retrain (on drift only with ``if_drift``), compare with the serving model, promote if better.

    Args:
        pipeline: a ``materialize.pipeline.Pipeline`` whose repo is applied.
        days: the last days whose drift signals can trigger a retraining.
        window_days: the days each day is compared with.
        min_gain: the NDCG@10 (absolute) the challenger must gain over the serving model.
        build: bring the feature tables up to date first (``interest build``).
        say: progress lines.
    """
    from interest_models.training.workflow import train_register_report

    settings = pipeline.settings
    registry = registry_for(settings.project_dir)
    if build:
        say("building features (incremental) ...")
        built = pipeline.build()
        say(f"features {built.mode}: {built.new_events:,} new events, {built.users_recomputed:,} users and "
            f"{built.items_recomputed:,} items recomputed")
    signals = daily_signals(pipeline.conn, max(days, LOOKBACK_DAYS), window_days)
    if not signals:
        raise RetrainingError("no events to monitor: load events first")
    for s in signals[-days:]:
        say(_signal_line(s))
    since = episode_start(signals, days)
    if if_drift:
        if since is None:
            return RetrainOutcome("no drift", f"no drift in the last {days} day(s) up to {signals[-1].day}", signals)
        version, trained_until = newest_training_day(registry)
        if trained_until is not None and trained_until >= since:
            return RetrainOutcome("drift handled", f"drift since {since}, but {version} was trained on data up to "
                                                   f"{trained_until}", signals, since)
        say(f"drift since {since}: retraining")
    serving = registry.serving_version()
    champion, serving_error = None, None
    if serving is not None:
        try:
            champion = registry.load(serving, store=pipeline.store)
        except RegistryError as error:
            serving_error = str(error)
    decision: dict = {}

    def decide_and_record(result) -> tuple[bool, dict]:
        promote, reason = decide(result.champion, serving, serving_error, min_gain)
        decision.update(promote=promote, reason=reason)
        return promote, {"retraining": {
            "trigger": f"drift since {since}" if if_drift else "unconditional", "drift_since": str(since) if since else None,
            "signals": [_signal_record(s) for s in signals[-days:]], "serving_before": serving,
            "against_serving": result.champion, "min_gain": min_gain, "promoted": promote, "reason": reason}}

    try:
        run = train_register_report(pipeline, device=device, overrides=overrides, champion=champion, decide=decide_and_record)
    except ValueError as error:  # not enough history for the periods, catalogue changed under the serving model
        raise RetrainingError(str(error)) from error
    with open(run.report, "a") as report:
        report.write(f"\n## Retraining\n\nTrigger: {'drift since ' + str(since) if if_drift else 'unconditional'}"
                     f" (serving before: {serving or 'none'}). "
                     f"{'Promoted' if decision['promote'] else 'Not promoted'}: {decision['reason']}.\n")
    return RetrainOutcome("promoted" if decision["promote"] else "kept serving model", decision["reason"], signals, since,
                          run.version, serving, run.result.champion, run.report)


def _signal_record(s: DriftSignal) -> dict:
    return {"day": str(s.day), "divergence": s.divergence, "p_value": s.p_value, "ctr": s.ctr, "baseline_ctr": s.baseline_ctr,
            "shift_rate": s.shift_rate, "baseline_shift_rate": s.baseline_shift_rate, "drifted": s.drifted,
            "reasons": list(s.reasons)}


def _signal_line(s: DriftSignal) -> str:
    return (f"day {s.day}: category mix JS {s.divergence:.4f} (p {s.p_value:.1e}), CTR {s.ctr:.4f} vs {s.baseline_ctr:.4f}, "
            f"shift rate {s.shift_rate:.3f} vs {s.baseline_shift_rate:.3f}: "
            + (f"DRIFT ({', '.join(s.reasons)})" if s.drifted else "no drift"))
