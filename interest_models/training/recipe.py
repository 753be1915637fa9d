"""Train, evaluate and compare: sequence model, ranker, blend and baselines.

``train_models`` runs the whole recipe on what the feature store holds:

1. decision points and labels from the event history, split by time (``data.decision_points``);
2. their features through Feast point-in-time retrieval (``data.feature_frames``);
3. the LSTM on the earliest training period, early-stopped on validation;
4. the ranker on the next period, with the LSTM's (out-of-sample) outputs as features;
5. the blend weight on validation; every number reported for test comes from a model
   that never saw the test period.

Rankings are over ALL items: the blend re-orders its candidates (LSTM top items plus the
other sources), which go first; every other item follows in LSTM order.
"""
from __future__ import annotations

import datetime as dt
import functools
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import psycopg
import torch

from interest_models.candidates import sources as candidate_sources
from interest_models.candidates.neighbour_search import InProcessSearch
from interest_models.config import load_config
from interest_models.data.decision_points import SPLITS, decision_points, seen_items
from interest_models.data.event_history import event_history
from interest_models.data.sequences import encode_sequences
from interest_models.data.vocabulary import Vocabulary, load_vocabulary
from interest_models.models.blend import Blend
from interest_models.models.category_booster import CategoryBooster
from interest_models.evaluation.metrics import (
    accuracy_at_k, calibration_bins, ndcg_at_k, ndcg_per_row, paired_bootstrap, ranking_metrics, roc_auc, target_ranks,
)
from interest_models.evaluation.horizon_shift import horizon_divergence
from interest_models.evaluation.oracle import OracleComparison, compare_with_oracle
from interest_models.models.item_ranker import ItemRanker
from interest_models.data.ranking_features import FEAST_COLUMNS, NEIGHBOUR_MODELS, build_matrix, neighbour_scores
from interest_models.models.interest_shift_lstm import InterestShiftLSTM, predict_all
from interest_models.data.feature_frames import (
    ServiceFeatures, affinity, affinity_transformation, candidate_features, item_text_matrix, service_features, user_features,
)
from materialize.database.tables import fetch_frame
from interest_models.models.co_purchase import CoPurchase
from interest_models.models.item_knn import ItemKNN
from interest_models.models.most_popular import MostPopular
from interest_models.models.personal_frequency import PersonalFrequency
from interest_models.models.popular_in_last_category import PopularInLastCategory
from interest_models.progress import Stages
from materialize.devices import seed_everything, select_device

CANDIDATE_OFFSET = 1e6  # puts re-ranked candidates ahead of every other item
BLEND = "blend (LSTM + XGBoost)"
RANKER = "XGBoost ranker"
FEATURE_RANKER = "XGBoost ranker, Feast features only"
SERVING = "serving"  # the baselines fitted on all events, for the service

STAGES = {
    "decision points": "session starts (or held-out last events) labelled with the next event, split by period",
    "point-in-time features": "user features as of each decision point (Feast get_historical_features), item text embeddings",
    "sequences": "each point's recent events as padded LSTM input",
    "LSTM training": "InterestShiftLSTM on the first period, early-stopped on validation NDCG@10",
    "category booster": "XGBoost next-category forecast over the category profiles on the LSTM's points, early-stopped "
                        "on validation log-loss; the LSTM's category and shift head (lstm.yaml category_booster)",
    "LSTM outputs": "out-of-sample LSTM item scores, next-category and shift probabilities for the later periods",
    "baselines": "popularity, item-kNN, personal-frequency and co-purchase baselines on the events before each period "
                 "(and the serving neighbours on all events)",
    "ranker features": "candidates from every source with their Feast point-in-time features and neighbour scores",
    "XGBoost training": "LambdaMART stacker (Feast features, LSTM outputs, neighbour scores) and a Feast-features-only "
                        "ranker on the ranker period, early-stopped on validation; scores validation and test",
    "blend weight": "the LSTM/ranker mix with the best validation NDCG@10",
    "evaluation": "every model ranked against all items on validation and test; category and shift metrics, "
                  "beside the synthetic shop's oracle where the data is synthetic",
}
"""The stages of ``train_models``, in order: name -> what it does (printed with ``progress``)."""


@dataclass
class SplitOutputs:
    """Everything computed for the decision points of one split."""

    points: pd.DataFrame
    users: pd.DataFrame
    lstm_scores: np.ndarray            # (n, n_items + 1)
    category_probabilities: np.ndarray  # (n, n_categories + 1)
    shift_probability: np.ndarray       # (n,)
    interest: np.ndarray                # (n, item_dim)
    exclude: list[np.ndarray] | None = None
    candidates: pd.DataFrame | None = None  # point, item_index, ... features, ranker/blend scores
    # The category and shift forecast the item ranking reads (candidate sources, the ranker's
    # LSTM columns): the LSTM heads' where a category booster forecasts but does not drive the
    # ranking, else (None) the forecast above.
    ranking_categories: np.ndarray | None = None  # (n, n_categories + 1)
    ranking_shift: np.ndarray | None = None       # (n,)

    def __post_init__(self):
        if self.ranking_categories is None:
            self.ranking_categories, self.ranking_shift = self.category_probabilities, self.shift_probability


@dataclass
class TrainingResult:
    vocabulary: Vocabulary
    features: ServiceFeatures
    model: InterestShiftLSTM
    ranker: ItemRanker
    blend: Blend
    configs: dict[str, dict]
    data_window: dict
    metrics: pd.DataFrame                # model/baseline x metric, on test
    comparisons: pd.DataFrame            # paired NDCG@10 differences on test with bootstrap intervals
    candidate_recall: pd.DataFrame       # source (and union) x (candidates per point, recall) on test
    neighbours: dict                     # baseline name -> the neighbour models the ranker reads, fitted on all events
    valid_metrics: pd.DataFrame
    category_metrics: dict[str, float]
    shift_metrics: dict[str, float]
    confusion: pd.DataFrame              # next-category confusion on test (rows true, cols predicted)
    calibration: pd.DataFrame
    timelines: pd.DataFrame              # per user/point: true category and predicted mix
    oracle: OracleComparison             # LSTM vs the synthetic shop's oracle on test (table None elsewhere)
    sizes: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    device: str = "cpu"
    champion: dict | None = None         # ``champion_comparison``'s answer when a serving model was given


def _popularity_before(events, vocabulary: Vocabulary, before: pd.Timestamp) -> np.ndarray:
    counts = event_history(events).item_counts(before.to_pydatetime())
    popularity = np.zeros(vocabulary.n_items + 1)
    popularity[vocabulary.index_of(counts.item_id)] = counts.n.to_numpy()
    popularity[0] = 0
    return popularity


def _training_histories(events, vocabulary: Vocabulary, protocol: str, before: pd.Timestamp | None,
                        session_gap: dt.timedelta) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The baselines' training data: every user's events before the evaluated period
    (time_split; ``before`` None: all events), or all but each user's last two events
    (leave_one_out).

    Returns:
        (histories, baskets): the time-ordered item indices of each user, and of each
        session of those events.
    """
    if protocol == "leave_one_out":
        events = event_history(events).histories(session_gap, drop_last=2)
    else:
        events = event_history(events).histories(session_gap, None if before is None else before.to_pydatetime())
    if events.empty:
        return [], []
    items = vocabulary.index_of(events.item_id)
    user_starts = np.flatnonzero(np.diff(events.user_id.to_numpy(np.int64))) + 1
    session_starts = np.flatnonzero(events.new_session.to_numpy(bool)[1:]) + 1
    return np.split(items, user_starts), np.split(items, session_starts)


def _full_ranking(lstm_scores: np.ndarray, candidates: pd.DataFrame, column: str) -> np.ndarray:
    """LSTM scores for all items, with candidates lifted above and ordered by ``column``."""
    scores = lstm_scores.astype(np.float64, copy=True)
    values = candidates[column].to_numpy(np.float64)
    scores[candidates.point.to_numpy(), candidates.item_index.to_numpy()] = CANDIDATE_OFFSET + values
    return scores


def _recent_lists(users: pd.DataFrame, vocabulary: Vocabulary) -> list[np.ndarray]:
    return [vocabulary.index_of(np.asarray(v, np.int64)) if v is not None else np.empty(0, np.int64) for v in users.recent_item_ids]


class _Trainer:
    """Holds the connections and configs of one training run."""

    def __init__(self, store, conn: psycopg.Connection, session_gap: dt.timedelta,
                 overrides: dict[str, dict] | None, config_dir, device: str | None, progress: bool | Stages,
                 distributed=None, champion=None, events=None):
        overrides = overrides or {}
        self.store, self.conn, self.distributed, self.champion = store, conn, distributed, champion
        self.events = event_history(conn if events is None else events)
        self.stages = progress if isinstance(progress, Stages) else Stages(STAGES, enabled=progress)
        self.training_config = load_config("training", overrides.get("training"), config_dir)
        self.lstm_config = load_config("lstm", overrides.get("lstm"), config_dir)
        self.ranker_config = load_config("ranker", overrides.get("ranker"), config_dir)
        self.session_gap = session_gap
        self.device = select_device(device)
        self.seed = int(self.training_config["seed"])
        self.rng = np.random.default_rng(self.seed)
        self.ranks: dict[str, dict[str, np.ndarray]] = {}  # split -> model -> per-point target ranks
        self.head_categories = self.head_shift = None  # the LSTM heads' own test forecast, beside a category booster's

    def run(self) -> TrainingResult:
        seed_everything(self.seed)
        stages = self.stages
        with stages.stage("decision points") as stage:
            self.vocabulary = load_vocabulary(self.conn)
            points = decision_points(self.events, self.training_config, self.session_gap)
            split_rows = {s: np.flatnonzero(points.split.to_numpy() == s) for s in SPLITS}
            stage.summary = (f"{len(points):,} points of {points.user_id.nunique():,} users ("
                             + ", ".join(f"{s} {len(r):,}" for s, r in split_rows.items())
                             + f"), {self.vocabulary.n_items:,} items in {self.vocabulary.n_categories:,} categories")
            for split, rows in split_rows.items():
                if len(rows) == 0:
                    raise ValueError(f"no decision points in split {split!r}: not enough history for training")

        with stages.stage("point-in-time features") as stage:
            self.features = service_features(self.store)
            users = user_features(self.store, points, self.features)
            self.text_matrix = item_text_matrix(self.store, self.vocabulary, points.as_of.min())
            stage.summary = (f"{len(users):,} rows x {len(users.columns)} columns, "
                             f"text embeddings of {len(self.text_matrix) - 1:,} items")

        with stages.stage("sequences") as stage:
            longest = max((len(v) for v in users.recent_item_ids if v is not None), default=1)
            max_len = min(longest, self.lstm_config["max_sequence_length"])
            sequences = {
                s: encode_sequences(users.iloc[rows].reset_index(drop=True), self.vocabulary, max_len, points.iloc[rows].reset_index(drop=True))
                for s, rows in split_rows.items()
            }
            stage.summary = f"{len(points):,} sequences of up to {max_len} events"

        with stages.stage("LSTM training") as stage:
            self.model = InterestShiftLSTM(
                self.vocabulary.n_items, self.vocabulary.n_categories, torch.from_numpy(self.text_matrix),
                **{k: self.lstm_config[k] for k in ("item_dim", "category_dim", "event_type_dim", "hidden_dim", "dropout")},
                inputs=tuple(self.lstm_config["inputs"]), session_gap_seconds=self.session_gap.total_seconds(),
                item_head=self.lstm_config["item_head"], item_categories=torch.from_numpy(self.vocabulary.item_category),
            )
            if self.distributed is None:
                self.model.fit(sequences["train_sequence"], sequences["valid"], self.lstm_config, self.device, self.seed, stages.enabled)
            else:  # the spark profile: DDP processes launched by Spark
                from interest_models.training.distributed import fit_lstm_ddp

                self.model = fit_lstm_ddp(self.model, sequences["train_sequence"], sequences["valid"], self.lstm_config,
                                          self.seed, self.distributed)
            curve = self.model.learning_curve
            stage.summary = (f"{len(split_rows['train_sequence']):,} sequences, best epoch {curve.best_epoch} of {len(curve.epoch)}"
                             + (f" (early stop; at most {curve.max_epochs})" if curve.stopped_early else "")
                             + f", valid NDCG@10 {curve.valid_ndcg_at_10[curve.best_epoch - 1]:.4f}, "
                             f"{curve.sequences_per_second:,.0f} sequences/s on {self.device}")

        heads = {}  # split -> predict_all(..., boosted=False): the LSTM heads' own outputs, computed once
        with stages.stage("category booster") as stage:
            booster_config = self.lstm_config["category_booster"]
            if booster_config:
                self.model.category_booster = CategoryBooster(booster_config, self.seed, "cuda" if self.device.type == "cuda" else "cpu").fit(
                    sequences["train_sequence"], sequences["valid"], self.session_gap.total_seconds())
                losses = self.model.category_booster.valid_log_loss
                heads["valid"] = predict_all(self.model, sequences["valid"], self.device, boosted=False)
                with_booster, without = self._valid_ndcg_with_and_without_booster_items(sequences["valid"], heads["valid"])
                self.model.category_booster.drives_ranking = with_booster >= without
                stage.summary = (f"{self.model.category_booster.best_iteration + 1} trees kept of {len(losses)}, "
                                 f"valid log-loss {losses[self.model.category_booster.best_iteration]:.4f} per (point, category); "
                                 f"LSTM valid NDCG@10 with its forecast in the item scores {with_booster:.4f}, without {without:.4f}: "
                                 + ("it drives the ranking" if self.model.ranks_with_booster
                                    else "it forecasts categories and shifts, the ranking reads the heads"))
            else:
                stage.summary = "off (lstm.yaml category_booster): the LSTM's heads forecast"

        with stages.stage("LSTM outputs") as stage:
            outputs = {}
            for split in ("train_ranker", "valid", "test"):
                rows = split_rows[split]
                scores, categories, shift, interest, _ = (heads[split] if split in heads
                                                          else predict_all(self.model, sequences[split], self.device, boosted=False))
                ranking = {}
                if self.model.category_booster is not None:
                    if split == "test":  # the heads' own test forecast, for the report
                        self.head_categories, self.head_shift = categories, shift
                    if not self.model.ranks_with_booster:
                        ranking = {"ranking_categories": categories, "ranking_shift": shift}
                    scores, categories, shift = self.model.boosted_forecast(sequences[split], scores, categories, shift)
                outputs[split] = SplitOutputs(points.iloc[rows].reset_index(drop=True), users.iloc[rows].reset_index(drop=True),
                                              scores, categories, shift, interest, **ranking)
                if self.training_config["exclude_seen"]:
                    outputs[split].exclude = seen_items(self.events, outputs[split].points, self.vocabulary)
            scored = sum(len(o.points) for o in outputs.values())
            stage.summary = f"{scored:,} points x {self.vocabulary.n_items:,} items"

        with stages.stage("baselines") as stage:
            baselines, histories = self._baselines(points)
            stage.summary = f"{len(baselines['test'])} baselines; " + ", ".join(
                f"for {split}: {users:,} users' histories, {sessions:,} sessions" for split, (users, sessions) in histories.items()
            )

        with stages.stage("ranker features") as stage:
            candidate_frames = self._candidates(outputs, baselines)
            stage.summary = ", ".join(f"{name} {len(frame):,} rows of {frame.point.nunique():,} points"
                                      for name, frame in candidate_frames.items())

        with stages.stage("XGBoost training") as stage:
            train, valid_retrieved = candidate_frames["train_ranker"], candidate_frames["valid_retrieved"]
            self.ranker = ItemRanker(self.ranker_config, self.seed, "cuda" if self.device.type == "cuda" else "cpu")
            feature_ranker = ItemRanker({**self.ranker_config, "base_margin": None}, self.seed, self.ranker.device, columns=FEAST_COLUMNS)
            fit_rows = (train, train.relevance.to_numpy(), train.point.to_numpy(),
                        (valid_retrieved, valid_retrieved.relevance.to_numpy(), valid_retrieved.point.to_numpy()))
            if self.distributed is None:
                self.ranker.fit(*fit_rows, progress=stages.enabled)
                feature_ranker.fit(*fit_rows)
            else:  # the spark profile: xgboost.spark, query groups kept within partitions; the
                # Feast-features-only ranker (a comparison in the report, never served) stays local
                from interest_models.training.distributed import fit_ranker_spark

                fit_ranker_spark(self.ranker, self.distributed.spark, *fit_rows, num_workers=self.distributed.ranker_workers,
                                 staging=self.distributed.staging)
                feature_ranker.fit(*fit_rows)
            for split in ("valid", "test"):
                frame = candidate_frames[split]
                frame["ranker_score"] = self.ranker.score(frame)
                frame["feature_ranker_score"] = feature_ranker.score(frame)
                outputs[split].candidates = frame
            stage.summary = (f"{len(train):,} rows of {train.point.nunique():,} points, "
                             f"{self.ranker.best_iteration + 1} trees kept on {self.ranker.device} "
                             f"({feature_ranker.best_iteration + 1} without the models' columns)")

        with stages.stage("blend weight") as stage:
            valid = outputs["valid"]
            valid_targets = self.vocabulary.index_of(valid.points.label_item_id)

            def valid_ndcg(blended: np.ndarray) -> float:
                frame = valid.candidates.assign(blend_score=blended)
                ranks = target_ranks(_full_ranking(valid.lstm_scores, frame, "blend_score"), valid_targets, valid.exclude)
                return ranking_metrics(ranks, ks=(10,))["NDCG@10"]

            self.blend = Blend().fit(
                valid.candidates.lstm_item_score.to_numpy(), valid.candidates.ranker_score.to_numpy(), valid.candidates.point.to_numpy(),
                valid_ndcg, progress=stages.enabled,
            )
            for split in ("valid", "test"):
                frame = outputs[split].candidates
                frame["blend_score"] = self.blend.score(frame.lstm_item_score.to_numpy(), frame.ranker_score.to_numpy(), frame.point.to_numpy())
            stage.summary = (f"LSTM weight {self.blend.lstm_weight:.2f} of {len(self.blend.search)} tried, "
                             f"valid NDCG@10 {self.blend.search[self.blend.lstm_weight]:.4f} on {len(valid.points):,} points")

        with stages.stage("evaluation") as stage:
            metrics = self._ranking_table(outputs["test"], baselines["test"], "test")
            result = TrainingResult(
                vocabulary=self.vocabulary, features=self.features, model=self.model.cpu(), ranker=self.ranker, blend=self.blend,
                configs={"training": self.training_config, "lstm": self.lstm_config, "ranker": self.ranker_config},
                data_window=self._data_window(points),
                metrics=metrics,
                comparisons=self._comparisons(outputs["test"], metrics),
                candidate_recall=self.candidate_recall,
                neighbours={name: baselines[SERVING][name] for name in NEIGHBOUR_MODELS.values()},
                valid_metrics=self._ranking_table(outputs["valid"], baselines["valid"], "valid"),
                category_metrics=self._category_metrics(outputs["test"]),
                shift_metrics=self._shift_metrics(outputs),
                confusion=self._confusion(outputs["test"]),
                calibration=calibration_bins(*self._shift_labels(outputs["test"])),
                timelines=self._timelines(outputs),
                oracle=compare_with_oracle(self.conn, outputs["test"].points, outputs["test"].users,
                                           outputs["test"].category_probabilities, outputs["test"].shift_probability,
                                           self.vocabulary, outputs["test"].exclude),
                sizes={f"points_{s}": int(len(r)) for s, r in split_rows.items()}
                | {"items": self.vocabulary.n_items, "categories": self.vocabulary.n_categories,
                   "ranker_rows": int(len(train)), "ranker_queries": int(train.point.nunique())},
                device=str(self.device),
            )
            stage.summary = (f"{len(metrics)} models ranked all {self.vocabulary.n_items:,} items for "
                             f"{len(outputs['valid'].points):,} valid and {len(outputs['test'].points):,} test points; "
                             f"test NDCG@10 of the blend {metrics.loc[BLEND, 'NDCG@10']:.4f}")
            if self.champion is not None:
                result.champion = self._champion_comparison(outputs["test"], sequences["test"], baselines["test"])
                stage.summary += (f"; the serving model {result.champion['version']} on the same points "
                                  f"{result.champion['serving NDCG@10']:.4f}")
        result.seconds = dict(stages.seconds)
        return result

    def _valid_ndcg_with_and_without_booster_items(self, valid, heads: tuple) -> tuple[float, float]:
        """The LSTM's validation NDCG@10 (as its early stopping measures it) with the category
        booster's forecast as the category term of the item scores, and with the heads' (whose
        ``predict_all(..., boosted=False)`` outputs ``heads`` are)."""
        targets = valid.target_item.numpy()
        boosted_scores = self.model.with_category_term(heads[0], heads[1], self.model.category_booster.score(valid))
        return (float(ndcg_at_k(target_ranks(boosted_scores, targets), 10)),
                float(ndcg_at_k(target_ranks(heads[0], targets), 10)))

    # ------------------------------------------------------------------ candidates

    def _candidates(self, outputs: dict[str, SplitOutputs], baselines: dict[str, dict]) -> dict[str, pd.DataFrame]:
        sizes = self.training_config["candidates"]
        eval_sizes = self._eval_sizes()
        # The ranker learns on the candidates the sources really retrieve: decision points
        # whose true item was not retrieved are dropped (``retrieved_only``), so training
        # and serving see the same candidate distribution.
        plans = [("train_ranker", "train_ranker", sizes, True), ("valid_retrieved", "valid", sizes, True),
                 ("valid", "valid", eval_sizes, False), ("test", "test", eval_sizes, False)]
        frames = []
        indexes: dict[str, candidate_sources.CandidateIndex] = {}  # one per split (valid serves two plans)
        for name, split, plan_sizes, retrieved_only in plans:
            out = outputs[split]
            if split not in indexes:
                popularity = _popularity_before(self.events, self.vocabulary, out.points.as_of.min())
                indexes[split] = candidate_sources.CandidateIndex.build(self.vocabulary, popularity, self.text_matrix)
            index = indexes[split]
            recent = _recent_lists(out.users, self.vocabulary)
            last_items = np.array([r[-1] if len(r) else 0 for r in recent])
            targets = self.vocabulary.index_of(out.points.label_item_id)
            point_sources = self._point_sources(out, plan_sizes)
            lists = candidate_sources.generate(
                index, out.lstm_scores, last_items, self.vocabulary.item_category[last_items], plan_sizes, self.rng,
                exclude=out.exclude, **point_sources,
            )
            if name == "test":
                self.candidate_recall = self._candidate_recall(index, out, last_items, targets, plan_sizes, lists,
                                                               point_sources)
            if retrieved_only:
                lists = [c if targets[i] in c else np.empty(0, np.int64) for i, c in enumerate(lists)]
            counts = np.array([len(c) for c in lists])
            point = np.repeat(np.arange(len(lists)), counts)
            item_index = np.concatenate(lists)
            frames.append(pd.DataFrame({
                "set": name, "point": point, "item_index": item_index,
                "item_id": self.vocabulary.item_ids[item_index], "category_id": self.vocabulary.item_category[item_index],
                "as_of": out.points.as_of.to_numpy()[point], "relevance": (item_index == targets[point]).astype(int),
            }))
        everything = pd.concat(frames, ignore_index=True)
        everything["row"] = np.arange(len(everything))
        retrieved = candidate_features(self.store, everything, self.features)
        item_columns = [c for c in retrieved.columns if c not in ("row", "item_id", "category_id", "event_timestamp")]
        everything = everything.join(retrieved.set_index("row")[item_columns], on="row")
        result = {}
        for name, split, _, _ in plans:
            out = outputs[split]
            frame = everything[everything.set == name].reset_index(drop=True)
            frame["interest_item_cosine"] = affinity(
                affinity_transformation(self.store),
                list(out.users.interest_embedding.to_numpy()[frame.point.to_numpy()]),
                list(self.text_matrix[frame.item_index.to_numpy()]),
            )
            scores = neighbour_scores(baselines[split], _recent_lists(out.users, self.vocabulary),
                                      frame.point.to_numpy(), frame.item_index.to_numpy())
            frame = frame.assign(**scores)
            matrix = build_matrix(out.users, frame, out.lstm_scores, out.ranking_categories, out.ranking_shift)
            result[name] = pd.concat([frame[["point", "item_index", "item_id", "relevance"]], matrix], axis=1)
        return result

    @functools.cached_property
    def _text_search(self) -> InProcessSearch:
        """Exact nearest-item search over ``text_matrix`` (serving's default), built once."""
        return InProcessSearch(self.text_matrix)

    def _point_sources(self, out: SplitOutputs, sizes: dict[str, int]) -> dict:
        """The per-point inputs of the sources that follow the user's predicted interest:
        the category probabilities the ranking reads, and the items nearest to the user's interest
        embedding as of the point."""
        search = self._text_search
        exclude = out.exclude or [np.empty(0, np.int64)] * len(out.points)
        return {"category_probabilities": out.ranking_categories,
                "predicted_categories": self.training_config["predicted_categories"],
                "interest_neighbours": [search.nearest(embedding if isinstance(embedding, (list, np.ndarray)) else None,
                                                       sizes.get("interest_neighbours", 0), seen)
                                        for embedding, seen in zip(out.users.interest_embedding, exclude)]}

    def _eval_sizes(self) -> dict[str, int]:
        """The candidate sources of validation and test points (and of the serving model
        scored on them): every training source, the LSTM's top ``eval_candidates``, no
        random items."""
        return {**self.training_config["candidates"], "lstm_top": self.training_config["eval_candidates"], "random": 0}

    def _champion_comparison(self, out: SplitOutputs, sequences, baselines: dict) -> dict:
        """The serving model (``self.champion``, a ``RegisteredModel``) scored on the test
        points exactly as the new blend was: its LSTM on the same sequences, candidates from
        the same sources (popularity before test), the same point-in-time Feast features,
        neighbour scores from the baselines fitted before test (its own were fitted on every
        event up to its training, test labels included), its ranker and blend, ranked
        against all items; then the paired NDCG@10 difference (new - serving) with a 95 %
        bootstrap interval over users."""
        champion = self.champion
        same = (np.array_equal(champion.vocabulary.item_ids, self.vocabulary.item_ids)
                and np.array_equal(champion.vocabulary.item_category, self.vocabulary.item_category))
        if not same:
            raise ValueError(f"the serving model {champion.version} was trained on another catalogue: "
                             "it cannot be scored on the same decision points")
        scores, categories, shift, interest, _ = predict_all(champion.model.to(self.device), sequences, self.device,
                                                             boosted=champion.model.ranks_with_booster)
        champion.model.cpu()
        served = SplitOutputs(out.points, out.users, scores, categories, shift, interest, out.exclude)
        popularity = _popularity_before(self.events, self.vocabulary, out.points.as_of.min())
        index = candidate_sources.CandidateIndex.build(self.vocabulary, popularity, self.text_matrix)
        sizes = self._eval_sizes()
        recent = _recent_lists(out.users, self.vocabulary)
        last_items = np.array([r[-1] if len(r) else 0 for r in recent])
        lists = candidate_sources.generate(index, scores, last_items, self.vocabulary.item_category[last_items], sizes,
                                           np.random.default_rng(self.seed), exclude=out.exclude,
                                           **self._point_sources(served, sizes))
        point = np.repeat(np.arange(len(lists)), [len(c) for c in lists])
        item_index = np.concatenate(lists)
        frame = pd.DataFrame({"point": point, "item_index": item_index, "item_id": self.vocabulary.item_ids[item_index],
                              "category_id": self.vocabulary.item_category[item_index],
                              "as_of": out.points.as_of.to_numpy()[point], "row": np.arange(len(point))})
        retrieved = candidate_features(self.store, frame, self.features)
        item_columns = [c for c in retrieved.columns if c not in ("row", "item_id", "category_id", "event_timestamp")]
        frame = frame.join(retrieved.set_index("row")[item_columns], on="row")
        frame["interest_item_cosine"] = affinity(affinity_transformation(self.store),
                                                 list(out.users.interest_embedding.to_numpy()[point]),
                                                 list(self.text_matrix[item_index]))
        frame = frame.assign(**neighbour_scores(baselines, recent, point, item_index))
        matrix = build_matrix(out.users, frame, scores, categories, shift)
        candidates = pd.concat([frame[["point", "item_index"]], matrix], axis=1)
        candidates["ranker_score"] = champion.ranker.score(candidates)
        candidates["blend_score"] = champion.blend.score(candidates.lstm_item_score.to_numpy(),
                                                         candidates.ranker_score.to_numpy(), point)
        targets = self.vocabulary.index_of(out.points.label_item_id)
        ranks = target_ranks(_full_ranking(scores, candidates, "blend_score"), targets, out.exclude)
        serving = ranking_metrics(ranks, ks=(10,))
        new = ranking_metrics(self.ranks["test"][BLEND], ks=(10,))
        difference = paired_bootstrap(ndcg_per_row(self.ranks["test"][BLEND], 10), ndcg_per_row(ranks, 10),
                                      out.points.user_id.to_numpy(), seed=self.seed)
        return {"version": champion.version, "points": int(len(out.points)),
                "first_as_of": str(out.points.as_of.min()), "last_as_of": str(out.points.as_of.max()),
                **{f"new {k}": float(v) for k, v in new.items()}, **{f"serving {k}": float(v) for k, v in serving.items()},
                "NDCG@10 difference": float(difference["difference"]), "NDCG@10 difference 95% low": float(difference["low"]),
                "NDCG@10 difference 95% high": float(difference["high"])}

    def _candidate_recall(self, index, out: SplitOutputs, last_items: np.ndarray, targets: np.ndarray,
                          sizes: dict[str, int], union: list[np.ndarray], point_sources: dict) -> pd.DataFrame:
        """Recall of each candidate source alone and of their union (what the ranker
        re-orders) on test: the share of points whose true next item the source retrieved."""
        rows = {}
        for source in [s for s, size in sizes.items() if size]:
            alone = {s: (size if s == source else 0) for s, size in sizes.items()}
            lists = candidate_sources.generate(index, out.lstm_scores, last_items, self.vocabulary.item_category[last_items],
                                               alone, np.random.default_rng(self.seed), exclude=out.exclude, **point_sources)
            rows[source] = {"candidates per point": np.mean([len(c) for c in lists]),
                            "recall": np.mean([t in c for t, c in zip(targets, lists)])}
        rows["union"] = {"candidates per point": np.mean([len(c) for c in union]),
                         "recall": np.mean([t in c for t, c in zip(targets, union)])}
        return pd.DataFrame(rows).T

    # ------------------------------------------------------------------ evaluation

    def _baselines(self, points: pd.DataFrame) -> tuple[dict[str, dict], dict[str, tuple[int, int]]]:
        """Baselines fitted for the ranker's period, validation and test (each on the events
        before it) and for serving (``SERVING``: on all events), by split and name, and the
        number of users' histories and of sessions each was fitted on."""
        out, sizes = {}, {}
        for split in ("train_ranker", "valid", "test", SERVING):
            before = points[points.split == split].as_of.min() if split != SERVING else None
            histories, baskets = _training_histories(
                self.events, self.vocabulary, "time_split" if split == SERVING else self.training_config["protocol"], before,
                self.session_gap,
            )
            out[split], sizes[split] = {}, (len(histories), len(baskets))
            fits = ((MostPopular(), histories), (PopularInLastCategory(), histories), (ItemKNN(), histories),
                    (PersonalFrequency(), histories), (CoPurchase(), baskets))
            for baseline, data in fits:
                baseline.fit(data, self.vocabulary.n_items, self.vocabulary.item_category)
                out[split][baseline.name] = baseline
        return out, sizes

    def _ranking_table(self, out: SplitOutputs, baselines: dict, split: str) -> pd.DataFrame:
        targets = self.vocabulary.index_of(out.points.label_item_id)
        rows = {
            BLEND: _full_ranking(out.lstm_scores, out.candidates, "blend_score"),
            RANKER: _full_ranking(out.lstm_scores, out.candidates, "ranker_score"),
            FEATURE_RANKER: _full_ranking(out.lstm_scores, out.candidates, "feature_ranker_score"),
            "LSTM": out.lstm_scores,
        }
        recent = _recent_lists(out.users, self.vocabulary)
        for name, baseline in baselines.items():
            rows[f"baseline: {name}"] = baseline.score(recent)
        ranks = {name: target_ranks(scores, targets, out.exclude)
                 for name, scores in self.stages.bar(rows.items(), f"rank all items ({split})", total=len(rows), unit="model")}
        self.ranks[split] = ranks
        return pd.DataFrame({name: ranking_metrics(r, ks=(10,)) for name, r in ranks.items()}).T

    def _comparisons(self, out: SplitOutputs, metrics: pd.DataFrame) -> pd.DataFrame:
        """Paired NDCG@10 differences on test with 95 % bootstrap intervals over users: the
        blend and the stacked ranker against the best single part (on test: the LSTM, the
        Feast-features-only ranker or a baseline, whichever scored highest) and each other."""
        parts = [name for name in metrics.index if name not in (BLEND, RANKER)]
        best = max(parts, key=lambda name: metrics.loc[name, "NDCG@10"])
        ranks, users = self.ranks["test"], out.points.user_id.to_numpy()
        rows = {}
        for a, b in ((BLEND, best), (RANKER, best), (BLEND, RANKER)):
            a_ndcg, b_ndcg = ndcg_per_row(ranks[a], 10), ndcg_per_row(ranks[b], 10)
            result = paired_bootstrap(a_ndcg, b_ndcg, users, seed=self.seed)
            rows[f"{a} - {b}"] = {"NDCG@10 of the first": a_ndcg.mean(), "NDCG@10 of the second": b_ndcg.mean(),
                                  "difference": result["difference"], "95% low": result["low"], "95% high": result["high"],
                                  "relative": result["relative"]}
        return pd.DataFrame(rows).T

    def _category_metrics(self, out: SplitOutputs) -> dict[str, float]:
        target = out.points.label_category_id.to_numpy()
        probabilities = out.category_probabilities
        last = np.array([v[-1] if v is not None and len(v) else 0 for v in out.users.recent_category_ids])
        dominant = out.users.dominant_category_30d.fillna(0).to_numpy(np.int64)
        heads = {} if self.head_categories is None else {
            "LSTM heads alone (without the category booster) accuracy@1": accuracy_at_k(self.head_categories, target, 1)}
        return {
            "LSTM accuracy@1": accuracy_at_k(probabilities, target, 1),
            "LSTM accuracy@3": accuracy_at_k(probabilities, target, 3),
            **heads,
            "baseline last category accuracy@1": float(np.mean(last == target)),
            "baseline 30-day dominant category accuracy@1": float(np.mean(dominant == target)),
        }

    def _shift_labels(self, out: SplitOutputs) -> tuple[np.ndarray, np.ndarray]:
        dominant = out.users.dominant_category_30d.fillna(0).to_numpy(np.int64)
        known = dominant > 0
        labels = (out.points.label_category_id.to_numpy() != dominant)[known].astype(int)
        return labels, out.shift_probability[known]

    def _shift_metrics(self, outputs: dict[str, SplitOutputs]) -> dict[str, float]:
        """Observed shifts on test; planted shifts (synthetic ground truth) on every point
        the LSTM did not train on (ranker training, validation and test periods)."""
        labels, probability = self._shift_labels(outputs["test"])
        metrics = {"AUC, next category differs from the 30-day dominant (test)": roc_auc(labels, probability),
                   **({} if self.head_shift is None else {
                       "AUC, the same, LSTM heads alone (without the category booster)": roc_auc(
                           labels, self.head_shift[outputs["test"].users.dominant_category_30d.fillna(0).to_numpy(np.int64) > 0])}),
                   "rate of such shifts (test)": float(labels.mean()) if len(labels) else float("nan")}
        test = outputs["test"]
        horizon = self.training_config["horizon_shift"]
        divergence = horizon_divergence(self.events, test.points, self.vocabulary.n_categories, horizon["past_days"], horizon["future_days"])
        known = ~np.isnan(divergence)
        shifted = (divergence[known] > horizon["threshold"]).astype(int)
        name = f"horizon shift, JSD(next {horizon['future_days']} d, past {horizon['past_days']} d) > {horizon['threshold']}"
        metrics[f"{name}: rate (test)"] = float(shifted.mean()) if len(shifted) else float("nan")
        metrics[f"{name}: AUC of the shift probability (test)"] = roc_auc(shifted, test.shift_probability[known])
        metrics[f"{name}: test points with events on both sides"] = int(known.sum())
        planted = fetch_frame(self.conn, "SELECT user_id, drift_start, drift_end FROM interest.planted_interest_shifts")
        if len(planted):
            in_planted = self._in_planted_shift(test.points, planted)
            metrics[f"{name}: AUC of the divergence against planted shifts (test)"] = roc_auc(in_planted[known], divergence[known])
            held_out = [outputs[s] for s in ("train_ranker", "valid", "test")]
            points = pd.concat([o.points[["user_id", "as_of"]] for o in held_out], ignore_index=True)
            probability = np.concatenate([o.shift_probability for o in held_out])
            in_shift = self._in_planted_shift(points, planted)
            metrics["AUC, planted shift under way (ground truth, held-out points)"] = roc_auc(in_shift, probability)
            metrics["held-out points inside a planted shift"] = int(in_shift.sum())
            metrics["held-out points"] = int(len(in_shift))
        return metrics

    def _in_planted_shift(self, points: pd.DataFrame, planted: pd.DataFrame) -> np.ndarray:
        """(n,) 1 where the point's user is in a planted shift (or ``shift_horizon_days`` after it)."""
        horizon = pd.Timedelta(days=self.training_config["shift_horizon_days"])
        joined = points[["user_id", "as_of"]].merge(planted, on="user_id", how="left")
        start, end = pd.to_datetime(joined.drift_start, utc=True), pd.to_datetime(joined.drift_end, utc=True)
        return ((joined.as_of >= start) & (joined.as_of <= end + horizon)).fillna(False).to_numpy().astype(int)

    def _confusion(self, out: SplitOutputs) -> pd.DataFrame:
        predicted = out.category_probabilities.argmax(axis=1)
        return pd.crosstab(pd.Series(out.points.label_category_id.to_numpy(), name="true"), pd.Series(predicted, name="predicted"))

    def _timelines(self, outputs: dict[str, SplitOutputs]) -> pd.DataFrame:
        frames = []
        for split in ("train_ranker", "valid", "test"):
            out = outputs[split]
            frame = out.points[["user_id", "as_of", "label_category_id"]].copy()
            frame["split"] = split
            frame["predicted_mix"] = list(out.category_probabilities[:, 1:])
            frame["shift_probability"] = out.shift_probability
            frames.append(frame)
        return pd.concat(frames, ignore_index=True)

    def _data_window(self, points: pd.DataFrame) -> dict:
        return {
            "protocol": self.training_config["protocol"],
            **{f"{s}_first_as_of": str(points[points.split == s].as_of.min()) for s in SPLITS},
            **{f"{s}_last_as_of": str(points[points.split == s].as_of.max()) for s in SPLITS},
        }


def train_models(store, conn: psycopg.Connection, session_gap: dt.timedelta,
                 overrides: dict[str, dict] | None = None, device: str | None = None, progress: bool | Stages = False,
                 config_dir: Path | None = None, distributed=None, champion=None, events=None) -> TrainingResult:
    """Train and evaluate everything; see the module docstring.

    Args:
        store: the project's ``feast.FeatureStore`` (applied and built).
        conn: a connection to the project's database: the catalogue (vocabulary), the
            synthetic shop's ground truth, and the raw events unless ``events`` is given.
        session_gap: the pipeline's session gap (decision points are session starts).
        overrides: per config ("training", "lstm", "ranker") keys replacing the YAML's.
        config_dir: a project's config folder whose ``<name>.yaml`` files override the
            packaged ones (``overrides`` win over both).
        device: "cpu", "cuda" or None for CUDA when available.
        progress: True prints a line when each of ``STAGES`` starts and ends (time, sizes)
            and bars over long loops, on stderr; a ``Stages`` whose plan holds ``STAGES``
            numbers them within a longer run.
        distributed: an ``interest_models.training.distributed.Distributed`` (the spark
            profile): the LSTM on DDP processes launched by Spark and the rankers with
            ``xgboost.spark``; None fits both in this process.
        champion: a loaded ``RegisteredModel`` (the serving one) to score on the same test
            points with the same code (``TrainingResult.champion``); its catalogue must be
            this training's.
        events: where decision points, labels, seen items, popularity and the baselines'
            histories are read: an ``event_history.SparkEvents`` (the spark profile's Parquet
            events); None: ``interest.events`` through ``conn``.
    """
    return _Trainer(store, conn, session_gap, overrides, config_dir, device, progress, distributed, champion,
                    events).run()
