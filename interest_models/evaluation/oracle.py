"""The LSTM against the synthetic shop's oracle (``materialize.ingest.sources.synthetic_oracle``)
on the same test decision points: next-category accuracy@1 and log-loss, shift AUC and
log-loss, and model / oracle ratios."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import psycopg

from interest_models.evaluation.metrics import accuracy_at_k, roc_auc
from materialize.ingest.sources.synthetic import SyntheticConfig, SyntheticShop
from materialize.ingest.sources.synthetic_oracle import next_category_oracle

ORACLE_COLUMNS = ["accuracy@1", "log-loss", "shift AUC", "shift log-loss"]
MIN_PROBABILITY = 1e-12  # floor of a probability inside a log-loss


@dataclass(frozen=True)
class OracleComparison:
    """``table`` (rows LSTM, oracle, LSTM / oracle, the 30-day dominant baseline; columns
    ``ORACLE_COLUMNS``) or None, and a line saying what it covers or why it is absent."""

    table: pd.DataFrame | None
    note: str


def synthetic_config_of(conn: psycopg.Connection) -> tuple[SyntheticConfig | None, str]:
    """The config of the synthetic shop the database holds, or None and why not."""
    rows = conn.execute("SELECT config FROM interest.synthetic_shops").fetchall()
    if not rows:
        return None, ("no synthetic shop's config is recorded in this database (`interest.synthetic_shops`; a shop loaded "
                      "before that table existed needs loading again), so there is no true preference process to compare with")
    if len(rows) > 1:
        return None, f"{len(rows)} synthetic shops were loaded into this database; their users overlap, so no single oracle applies"
    return SyntheticConfig.from_json(rows[0][0]), ""


def _log_loss(probabilities: np.ndarray, targets: np.ndarray) -> float:
    """Mean negative log-probability (nats) of ``targets`` (n,) under ``probabilities`` (n, C)."""
    chosen = probabilities[np.arange(len(targets)), targets]
    return float(-np.mean(np.log(np.maximum(chosen, MIN_PROBABILITY))))


def _binary_log_loss(labels: np.ndarray, probability: np.ndarray) -> float:
    probability = np.clip(probability, MIN_PROBABILITY, 1 - MIN_PROBABILITY)
    return float(-np.mean(np.where(labels == 1, np.log(probability), np.log1p(-probability))))


def compare_with_oracle(conn: psycopg.Connection, points: pd.DataFrame, users: pd.DataFrame,
                        category_probabilities: np.ndarray, shift_probability: np.ndarray) -> OracleComparison:
    """The LSTM's test outputs beside the oracle's on the same points.

    Args:
        points: test decision points (user_id, label_time, label_category_id).
        users: their features (``dominant_category_30d``, category_id or NaN), row-aligned.
        category_probabilities: (n, n_categories + 1) the LSTM's, column = category_id.
        shift_probability: (n,) the LSTM's P(next category != 30-day dominant).
    """
    config, reason = synthetic_config_of(conn)
    if config is None:
        return OracleComparison(None, reason)
    shop = SyntheticShop(config)
    category_id = dict(conn.execute("SELECT category, category_id FROM interest.categories").fetchall())
    generated = (points.user_id.to_numpy() >= 1) & (points.user_id.to_numpy() <= config.n_users)
    rows = np.flatnonzero(generated)
    if len(rows) == 0:
        return OracleComparison(None, "no test decision point belongs to a user of the synthetic shop")
    target = points.label_category_id.to_numpy(np.int64)[rows]
    dominant = users.dominant_category_30d.fillna(0).to_numpy(np.int64)[rows]
    shop_ids = np.array([category_id[name] for name in shop.categories], dtype=np.int64)
    shop_index = np.full(category_probabilities.shape[1], -1, dtype=np.int64)
    shop_index[shop_ids] = np.arange(len(shop_ids))
    forecast = next_category_oracle(shop, points.user_id.to_numpy()[rows], points.label_time.iloc[rows],
                                    np.where(dominant > 0, shop_index[dominant], -1))
    oracle = np.zeros((len(rows), category_probabilities.shape[1]))
    oracle[:, shop_ids] = forecast.next_category
    lstm = category_probabilities[rows]

    known = dominant > 0
    shifted = (target != dominant)[known].astype(int)
    lstm_shift, oracle_shift = shift_probability[rows][known], forecast.shift_probability[known]
    table = pd.DataFrame(
        {
            "LSTM": [accuracy_at_k(lstm, target, 1), _log_loss(lstm, target),
                     roc_auc(shifted, lstm_shift), _binary_log_loss(shifted, lstm_shift)],
            "oracle": [accuracy_at_k(oracle, target, 1), _log_loss(oracle, target),
                       roc_auc(shifted, oracle_shift), _binary_log_loss(shifted, oracle_shift)],
            "baseline: 30-day dominant category": [float(np.mean(dominant == target))] + [float("nan")] * 3,
        },
        index=ORACLE_COLUMNS,
    ).T
    table.loc["LSTM / oracle"] = table.loc["LSTM"] / table.loc["oracle"]
    table = table.loc[["LSTM", "oracle", "LSTM / oracle", "baseline: 30-day dominant category"]]
    note = (f"{len(rows):,} of {len(points):,} test decision points (users of the synthetic shop); "
            f"shift columns on the {int(known.sum()):,} with a 30-day dominant category.")
    return OracleComparison(table, note)
