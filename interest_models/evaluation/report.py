"""The training report: Markdown with tables, and PNG plots beside it."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

RANKING_COLUMNS = ["HR@10", "NDCG@10", "MRR@10", "MRR"]


def _plot_metrics(metrics: pd.DataFrame, path: Path) -> None:
    columns = ["HR@10", "NDCG@10", "MRR@10"]
    fig, ax = plt.subplots(figsize=(10, 4.5))
    positions = np.arange(len(metrics))
    width = 0.27
    for offset, column in enumerate(columns):
        ax.bar(positions + (offset - 1) * width, metrics[column], width, label=column)
    ax.set_xticks(positions, metrics.index, rotation=20, ha="right")
    ax.set_ylabel("test, ranked against all items")
    ax.set_title("Next-item ranking: models and baselines")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_learning_curve(curve, path: Path) -> None:
    fig, (loss_ax, ndcg_ax) = plt.subplots(1, 2, figsize=(10, 3.8))
    loss_ax.plot(curve.epoch, curve.train_loss, marker="o", label="train")
    loss_ax.plot(curve.epoch, curve.valid_loss, marker="o", label="validation")
    loss_ax.set_xlabel("epoch")
    loss_ax.set_ylabel("weighted loss")
    loss_ax.legend()
    ndcg_ax.plot(curve.epoch, curve.valid_ndcg_at_10, marker="o", color="tab:green")
    ndcg_ax.axvline(curve.best_epoch, color="grey", linestyle="--", label=f"kept: epoch {curve.best_epoch}")
    ndcg_ax.set_xlabel("epoch")
    ndcg_ax.set_ylabel("validation NDCG@10 (LSTM)")
    ndcg_ax.legend()
    fig.suptitle("InterestShiftLSTM learning curves")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_confusion(confusion: pd.DataFrame, category_names: dict[int, str], path: Path) -> None:
    labels = sorted(set(confusion.index) | set(confusion.columns))
    matrix = confusion.reindex(index=labels, columns=labels, fill_value=0).to_numpy(float)
    matrix = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    names = [category_names.get(int(c), str(c)) for c in labels]
    fig, ax = plt.subplots(figsize=(0.45 * len(labels) + 3, 0.45 * len(labels) + 2.5))
    image = ax.imshow(matrix, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(labels)), names, rotation=60, ha="right")
    ax.set_yticks(range(len(labels)), names)
    ax.set_xlabel("predicted next category")
    ax.set_ylabel("true next category")
    fig.colorbar(image, ax=ax, label="share of the true category's rows")
    ax.set_title("Next-category confusion (test)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_calibration(calibration: pd.DataFrame, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(5, 4.5))
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", label="perfect")
    shown = calibration[calibration["count"] > 0]
    ax.plot(shown.mean_predicted, shown.observed_rate, marker="o", label="LSTM")
    for row in shown.itertuples():
        ax.annotate(str(row.count), (row.mean_predicted, row.observed_rate), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("predicted P(next category differs from 30-day dominant)")
    ax.set_ylabel("observed rate")
    ax.set_title("Shift probability calibration (test)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_timelines(timelines: pd.DataFrame, planted: pd.DataFrame | None, category_names: dict[int, str], path: Path) -> None:
    counts = timelines.user_id.value_counts()
    users = list(counts.index[:4])
    if planted is not None and len(planted):
        # Prefer users whose planted shift falls inside the plotted (held-out) period.
        first = timelines.as_of.min()
        visible = set(planted.user_id[pd.to_datetime(planted.shift_at, utc=True) > first + pd.Timedelta(days=2)])
        shifted = [u for u in counts.index if u in visible]
        users = (shifted[:3] + [u for u in counts.index if u not in visible][:1]) or users
    colours = [plt.cm.tab20(i % 20) for i in range(len(timelines.predicted_mix.iloc[0]))]
    fig, axes = plt.subplots(len(users), 1, figsize=(10, 2.6 * len(users)), squeeze=False)
    for ax, user in zip(axes[:, 0], users):
        rows = timelines[timelines.user_id == user].sort_values("as_of")
        mix = np.stack(rows.predicted_mix.to_numpy())
        times = rows.as_of.dt.tz_convert(None)
        ax.stackplot(times, mix.T, alpha=0.6, colors=colours,
                     labels=[category_names.get(c + 1, str(c + 1)) for c in range(mix.shape[1])])
        true = rows.label_category_id.to_numpy()
        ax.scatter(times, np.full(len(rows), 1.03), c=[colours[int(c - 1)] for c in true], marker="|", s=120, clip_on=False)
        if planted is not None:
            for shift in planted[planted.user_id == user].itertuples():
                shift_at = pd.Timestamp(shift.shift_at).tz_convert(None)
                if times.min() <= shift_at <= times.max():
                    ax.axvline(shift_at, color="black", linestyle="--")
                    ax.text(shift_at, 0.5, f" planted: {shift.from_category} -> {shift.to_category}", fontsize=8)
        ax.set_ylim(0, 1.06)
        ax.set_ylabel(f"user {user}")
    axes[0, 0].set_title("Predicted next-category mix (areas) and the true next category (ticks on top)")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 9), fontsize=7)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_blend(search: dict[float, float], chosen: float, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(5, 3.5))
    weights = sorted(search)
    ax.plot(weights, [search[w] for w in weights], marker="o")
    ax.axvline(chosen, color="grey", linestyle="--", label=f"chosen {chosen:.2f}")
    ax.set_xlabel("LSTM weight in the blend (0 = ranker only)")
    ax.set_ylabel("validation NDCG@10")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _table(frame: pd.DataFrame, digits: int = 4) -> str:
    header = "| | " + " | ".join(frame.columns) + " |\n|---|" + "---|" * len(frame.columns) + "\n"
    body = "".join(
        f"| {index} | " + " | ".join(("-" if np.isnan(v) else f"{v:.{digits}f}") if isinstance(v, float) else str(v) for v in row) + " |\n"
        for index, row in zip(frame.index, frame.itertuples(index=False))
    )
    return header + body


def _oracle_section(oracle) -> list[str]:
    if oracle.table is None:
        return [f"Omitted: {oracle.note}.", ""]
    return [
        "The oracle forecasts each next category from the generator's hidden preference state at the "
        "session start (Bayes-optimal; see `materialize/ingest/sources/synthetic_oracle.py`). "
        "Log-losses in nats; LSTM / oracle below 1 is worse for accuracy and AUC, above 1 worse for log-loss.",
        "",
        _table(oracle.table),
        oracle.note,
        "",
        "Shift AUC within groups of those points by where the user's planted shift lies (its midpoint): "
        "the LSTM's gap to the oracle, group by group. The last column is the AUC over all points with the "
        "oracle's probabilities in place of the LSTM's in that group only.",
        "",
        _table(oracle.by_planted_shift),
        "",
        "Item rankings that know the generator's popularity within each category, against all items "
        "on the same points (the ceilings of the ranking table above): with the oracle's category "
        "forecast, and with the LSTM's.",
        "",
        _table(oracle.ranking),
        "",
    ]


def write_report(result, out_dir: Path, version: str, title: str, category_names: dict[int, str],
                 planted: pd.DataFrame | None = None, references: pd.DataFrame | None = None) -> Path:
    """Write ``report.md`` and its plots into ``out_dir``; returns the Markdown path.

    Args:
        result: a ``training.TrainingResult``.
        category_names: category_id -> name, for axis labels.
        planted: the synthetic generator's planted shifts (drawn on the timelines).
        references: published numbers to print beside ours (rows: model, columns: metrics).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    curve = result.model.learning_curve
    _plot_metrics(result.metrics[RANKING_COLUMNS], out_dir / "metrics.png")
    _plot_learning_curve(curve, out_dir / "learning_curve.png")
    _plot_confusion(result.confusion, category_names, out_dir / "category_confusion.png")
    _plot_calibration(result.calibration, out_dir / "shift_calibration.png")
    _plot_timelines(result.timelines, planted, category_names, out_dir / "interest_timelines.png")
    _plot_blend(result.blend.search, result.blend.lstm_weight, out_dir / "blend_search.png")
    importance = result.ranker.feature_importance().head(12).to_frame("gain")
    lines = [
        f"# {title}",
        "",
        f"Model version `{version}`, trained on `{result.device}`; protocol `{result.data_window['protocol']}`.",
        "Rankings are over all items (the blend re-orders its candidates, all other items follow in LSTM order).",
        "",
        "## Next-item ranking, test",
        "",
        _table(result.metrics[RANKING_COLUMNS]),
        "![metrics](metrics.png)",
        "",
        "The XGBoost ranker stacks the other models: it reads the Feast features, the LSTM's outputs and the "
        "co-purchase and item-kNN scores, and boosts from its base-margin column when ranker.yaml names one; "
        "the ranker on Feast features only, the LSTM and the baselines are the "
        "single parts. Paired differences of NDCG@10 per test decision point, with 95 % bootstrap intervals "
        "over users (their points resampled together):",
        "",
        _table(result.comparisons),
        "",
        "Candidate sources on test: the share of decision points whose true next item each source "
        "retrieves alone, and their union (what the ranker re-orders; the rest follow in LSTM order):",
        "",
        _table(result.candidate_recall),
        "",
    ]
    if references is not None:
        lines += ["Published results on the same protocol, for comparison:", "", _table(references), ""]
    if result.champion is not None:
        c = result.champion
        lines += [
            "## Against the serving model, test",
            "",
            f"The serving version `{c['version']}` scored on the same {c['points']:,} test decision points "
            f"({c['first_as_of']} to {c['last_as_of']}) with the same code (candidates, point-in-time features, "
            "neighbour models fitted before test, ranking against all items):",
            "",
            _table(pd.DataFrame({"this version": {k[4:]: v for k, v in c.items() if k.startswith("new ")},
                                 "serving version": {k[8:]: v for k, v in c.items() if k.startswith("serving ")}}).T),
            f"NDCG@10 difference (this - serving): {c['NDCG@10 difference']:+.4f}, 95 % bootstrap interval over users "
            f"{c['NDCG@10 difference 95% low']:+.4f} to {c['NDCG@10 difference 95% high']:+.4f}.",
            "",
        ]
    lines += [
        "## Validation (used for early stopping and the blend weight)",
        "",
        _table(result.valid_metrics[RANKING_COLUMNS]),
        f"Blend: `{result.blend.lstm_weight:.2f} x LSTM + {1 - result.blend.lstm_weight:.2f} x XGBoost` "
        "(scores standardised within each decision point).",
        "",
        "![blend](blend_search.png)",
        "",
        "## Next category and interest shift, test",
        "",
        _table(pd.DataFrame({"value": result.category_metrics}).T.T),
        _table(pd.DataFrame({"value": result.shift_metrics}).T.T),
        "![confusion](category_confusion.png) ![calibration](shift_calibration.png)",
        "",
        "## Oracle: the synthetic shop's true preferences, test",
        "",
        *_oracle_section(result.oracle),
        "## Training",
        "",
        f"LSTM: best epoch {curve.best_epoch} of {len(curve.epoch)}"
        + (f" (early stop; at most {curve.max_epochs})" if curve.stopped_early else "")
        + f", {curve.sequences_per_second:,.0f} training sequences/s on `{result.device}`"
        + (f"; category and shift heads refit for {curve.head_epochs} epochs on the frozen states" if curve.head_epochs else "")
        + ". "
        f"XGBoost: {result.ranker.best_iteration + 1} trees kept.",
        "",
        "![learning curves](learning_curve.png)",
        "",
        "Top ranker features by gain:",
        "",
        _table(importance, digits=1),
        "## Interest timelines",
        "",
        "![timelines](interest_timelines.png)",
        "",
        "## Data",
        "",
        _table(pd.DataFrame({"value": {**result.sizes, **result.data_window}}).astype(str)),
        "Seconds per step: " + ", ".join(f"{k} {v}" for k, v in result.seconds.items()),
        "",
    ]
    path = out_dir / "report.md"
    path.write_text("\n".join(lines))
    return path
