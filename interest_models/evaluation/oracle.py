"""The LSTM against the synthetic shop's oracle (``materialize.ingest.sources.synthetic_oracle``)
on the same test decision points: next-category accuracy@1 and log-loss, shift AUC and
log-loss, and model / oracle ratios; the shift AUCs within groups of points by where the
user's planted shift lies (where the LSTM's gap to the oracle is); and two item rankings that
know the generator's popularity within each category, one with the oracle's category
forecast and one with the LSTM's, as the ceilings of the ranking table."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import psycopg

from interest_models.data.vocabulary import Vocabulary
from interest_models.evaluation.metrics import accuracy_at_k, ranking_metrics, roc_auc, target_ranks
from materialize.ingest.sources.synthetic import SyntheticConfig, SyntheticShop
from materialize.ingest.sources.synthetic_oracle import next_category_oracle

ORACLE_COLUMNS = ["accuracy@1", "log-loss", "shift AUC", "shift log-loss"]
ORACLE_ITEMS = "oracle: hidden preference x popularity within category"
LSTM_CATEGORY_ITEMS = "the LSTM's category forecast x popularity within category"
POSTERIOR = "posterior from the observed events"
POSTERIOR_ITEMS = "the posterior's category forecast x popularity within category"
MIN_PROBABILITY = 1e-12  # floor of a probability inside a log-loss
PLANTED_GROUP_DAYS = 30
"""Planted shifts (their midpoint ``shift_at``) this many days or more before a point form the last group."""
PLANTED_GROUPS = ("no planted shift", "planted shift still ahead", f"planted shift under {PLANTED_GROUP_DAYS} days before",
                  f"planted shift {PLANTED_GROUP_DAYS} days or more before")
PLANTED_COLUMNS = ["points", "shift rate", "LSTM shift AUC", "oracle shift AUC", "all points' LSTM shift AUC, oracle in this group"]


@dataclass(frozen=True)
class OracleComparison:
    """``table`` (rows LSTM, oracle, LSTM / oracle, the 30-day dominant baseline; columns
    ``ORACLE_COLUMNS``) or None, and a line saying what it covers or why it is absent;
    ``ranking`` (rows ``ORACLE_ITEMS``, ``LSTM_CATEGORY_ITEMS``; columns HR@10, NDCG@10) on
    the same points, ranked against all items as the models are; ``by_planted_shift``
    (rows: the non-empty ``PLANTED_GROUPS``; columns ``PLANTED_COLUMNS``), see
    ``shift_auc_by_planted_shift``."""

    table: pd.DataFrame | None
    note: str
    ranking: pd.DataFrame | None = None
    by_planted_shift: pd.DataFrame | None = None


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


def _item_scores(shop: SyntheticShop, category_forecast: np.ndarray, vocabulary: Vocabulary) -> np.ndarray:
    """(n, n_items + 1) P(next item) in vocabulary order (0 for items the shop never made)
    from a (n, shop categories) forecast."""
    probabilities = shop.item_probabilities(category_forecast)
    item_ids = vocabulary.item_ids
    made = (item_ids >= 1) & (item_ids <= probabilities.shape[1])
    made[0] = False  # padding
    scores = np.zeros((len(category_forecast), len(item_ids)))
    scores[:, made] = probabilities[:, item_ids[made] - 1]
    return scores


def shift_auc_by_planted_shift(shop: SyntheticShop, user_id: np.ndarray, label_time: pd.Series, labels: np.ndarray,
                                lstm: np.ndarray, oracle: np.ndarray) -> pd.DataFrame:
    """Shift AUC of the LSTM and of the oracle within groups of points by where the user's
    planted shift lies relative to the point (none, ahead, under ``PLANTED_GROUP_DAYS`` days
    before, longer before). The last column is the AUC over all points when the oracle's
    probabilities replace the LSTM's in that group only: how much of the LSTM's gap to the
    oracle lies there (the two are calibrated differently, so it is a guide, not a sum).

    Args:
        user_id, label_time: (n,) the points' users and label times; labels: (n,) 1 = the
            next category differs from the 30-day dominant; lstm, oracle: (n,) their P(shift).
    """
    planted = shop.interest_shifts().set_index("user_id").shift_at
    shift_at = pd.Series(user_id).map(planted)
    days = ((pd.to_datetime(label_time, utc=True).reset_index(drop=True) - shift_at) / pd.Timedelta(days=1)).to_numpy(np.float64)
    groups = dict(zip(PLANTED_GROUPS, (np.isnan(days), days < 0, (days >= 0) & (days < PLANTED_GROUP_DAYS),
                                       days >= PLANTED_GROUP_DAYS)))
    rows = {name: [int(mask.sum()), float(labels[mask].mean()), roc_auc(labels[mask], lstm[mask]),
                   roc_auc(labels[mask], oracle[mask]), roc_auc(labels, np.where(mask, oracle, lstm))]
            for name, mask in groups.items() if mask.any()}
    return pd.DataFrame(rows, index=PLANTED_COLUMNS).T.astype({"points": int})


def compare_with_oracle(conn: psycopg.Connection, points: pd.DataFrame, users: pd.DataFrame,
                        category_probabilities: np.ndarray, shift_probability: np.ndarray,
                        vocabulary: Vocabulary, exclude: list[np.ndarray] | None = None,
                        posterior: np.ndarray | None = None) -> OracleComparison:
    """The LSTM's test outputs beside the oracle's on the same points.

    Args:
        points: test decision points (user_id, label_time, label_category_id, label_item_id).
        users: their features (``dominant_category_30d``, category_id or NaN), row-aligned.
        category_probabilities: (n, n_categories + 1) the LSTM's, column = category_id.
        shift_probability: (n,) the LSTM's P(next category != 30-day dominant).
        vocabulary: the models' items, for the item rankings.
        exclude: per point, the items the models' rankings leave out (None: none).
        posterior: optional (n, shop categories) forecast from the observed events alone
            (``synthetic_posterior.posterior_forecast``), row-aligned with ``points``: adds
            its rows to both tables.
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

    def by_category_id(shop_forecast: np.ndarray) -> np.ndarray:
        """(len(rows), n_categories + 1) of a (len(rows), shop categories) forecast."""
        wide = np.zeros((len(rows), category_probabilities.shape[1]))
        wide[:, shop_ids] = shop_forecast
        return wide

    oracle = by_category_id(forecast.next_category)
    lstm = category_probabilities[rows]

    known = dominant > 0
    shifted = (target != dominant)[known].astype(int)
    dominant_column = dominant[known]

    def row(probabilities: np.ndarray, shift: np.ndarray) -> list[float]:
        return [accuracy_at_k(probabilities, target, 1), _log_loss(probabilities, target),
                roc_auc(shifted, shift), _binary_log_loss(shifted, shift)]

    lstm_shift, oracle_shift = shift_probability[rows][known], forecast.shift_probability[known]
    rows_of = {"LSTM": row(lstm, lstm_shift), "oracle": row(oracle, oracle_shift)}
    category_forecasts = {ORACLE_ITEMS: forecast.next_category, LSTM_CATEGORY_ITEMS: lstm[:, shop_ids]}
    if posterior is not None:
        observed = by_category_id(posterior[rows])
        rows_of[POSTERIOR] = row(observed, 1 - observed[np.flatnonzero(known), dominant_column])
        category_forecasts[POSTERIOR_ITEMS] = posterior[rows]
    rows_of["baseline: 30-day dominant category"] = [float(np.mean(dominant == target))] + [float("nan")] * 3
    table = pd.DataFrame(rows_of, index=ORACLE_COLUMNS).T
    table.loc["LSTM / oracle"] = table.loc["LSTM"] / table.loc["oracle"]
    order = ["LSTM", "oracle", "LSTM / oracle"]
    if posterior is not None:
        table.loc["LSTM / posterior"] = table.loc["LSTM"] / table.loc[POSTERIOR]
        order += [POSTERIOR, "LSTM / posterior"]
    table = table.loc[order + ["baseline: 30-day dominant category"]]
    targets = vocabulary.index_of(points.label_item_id.to_numpy()[rows])
    kept = None if exclude is None else [exclude[i] for i in rows]
    ranking = pd.DataFrame({
        name: ranking_metrics(target_ranks(_item_scores(shop, forecast_of_categories, vocabulary), targets, kept), ks=(10,))
        for name, forecast_of_categories in category_forecasts.items()
    }).T[["HR@10", "NDCG@10"]]
    by_planted_shift = shift_auc_by_planted_shift(
        shop, points.user_id.to_numpy()[rows][known], points.label_time.iloc[rows][known], shifted, lstm_shift, oracle_shift)
    note = (f"{len(rows):,} of {len(points):,} test decision points (users of the synthetic shop); "
            f"shift columns on the {int(known.sum()):,} with a 30-day dominant category.")
    return OracleComparison(table, note, ranking, by_planted_shift)
