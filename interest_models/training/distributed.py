"""Distributed fit paths of the spark profile: the XGBoost ranker with ``xgboost.spark`` and
the LSTM with PyTorch distributed data-parallel launched by Spark's ``TorchDistributor``.

Both end in the same objects as the single-process ``fit``: an ``ItemRanker`` whose
booster came from ``SparkXGBRanker`` (saved as the same ``ranker.json``) and an
``InterestShiftLSTM`` whose weights came from the DDP run (saved as the same ``lstm.pt``),
so the registry and the service do not change.

The LSTM's DDP step is the single-process step split across processes: every process
draws the same shuffled order (same seed), each takes its share of every global batch,
and DDP averages the gradients, so one step sees the same ``batch_size`` sequences as
``InterestShiftLSTM.fit``. Process 0 evaluates validation NDCG@10 after each epoch, keeps
the best weights and tells the others when to stop. Data and weights travel between the
driver and the processes as ``torch.save`` files of tensors read back with
``weights_only=True`` (no pickle of objects).
"""
from __future__ import annotations

import json
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from interest_models.data.frame_staging import remove_staged, write_staged
from interest_models.models.item_ranker import MARGIN_ATTRIBUTE, ItemRanker


@dataclass(frozen=True)
class Distributed:
    """How the recipe fits its models in the spark profile.

    Attributes:
        spark: the active ``SparkSession``.
        ranker_workers: ``SparkXGBRanker(num_workers=...)``; each query group stays in one partition.
        lstm_processes: DDP processes (``TorchDistributor(num_processes=...)``).
        local_mode: run the DDP processes on the driver (``local[*]`` masters) or in Spark tasks.
        threads_per_process: torch threads of each DDP process.
        staging: a folder or URI that the driver and the executors both reach, for the
            ranker's rows; None: a local temporary folder (local masters only).
    """

    spark: object
    ranker_workers: int = 2
    lstm_processes: int = 2
    local_mode: bool = True
    threads_per_process: int = 1
    staging: str | None = None


# ------------------------------------------------------------------------- ranker


def fit_ranker_spark_frame(ranker: ItemRanker, frame, feature_columns: list[str] | None = None,
                           label_col: str = "label", qid_col: str = "qid", valid_col: str = "is_valid",
                           num_workers: int = 2) -> ItemRanker:
    """``SparkXGBRanker`` on a Spark DataFrame: no row passes through the driver.

    The hyper-parameters are the ranker's (``ranker.yaml``), early stopping runs on the
    validation rows, and the booster is loaded into ``ranker.model`` so that ``save`` writes
    the usual ``ranker.json``.

    Args:
        frame: one row per (query, candidate): the features, the relevance, the query id
            and a boolean marking validation rows. Query ids of training and validation
            rows must not overlap.
        feature_columns: the frame's columns in ``ranker.columns`` order (default: those
            names); numeric, null or NaN = missing.
        num_workers: XGBoost workers (Spark tasks); the rows are repartitioned by query id
            and sorted within partitions, so no query group is split between workers.
    """
    from pyspark.ml.feature import VectorAssembler
    from pyspark.sql import functions as F
    from xgboost.spark import SparkXGBRanker

    names = [f"f{i}" for i in range(len(ranker.columns))]  # plain names for the assembler
    rows = frame.select(
        *[F.col(f"`{c}`").cast("double").alias(n) for c, n in zip(feature_columns or ranker.columns, names)],
        F.col(label_col).cast("double").alias("label"), F.col(qid_col).cast("long").alias("qid"),
        F.col(valid_col).cast("boolean").alias("is_valid"))
    margin = {}
    if ranker.margin_column is not None:  # boosting starts from that column, as ItemRanker.fit
        rows = rows.withColumn("margin", F.col(names[ranker.columns.index(ranker.margin_column)]))
        margin = {"base_margin_col": "margin"}
    assembled = VectorAssembler(inputCols=names, outputCol="features", handleInvalid="keep").transform(
        rows).select("features", "label", "qid", "is_valid", *margin.values())  # null and NaN stay missing
    grouped = assembled.repartition(num_workers, "qid").sortWithinPartitions("qid")
    # the hyper-parameters set on the ranker (ranker.yaml), not the wrapper's own settings
    params = {k: v for k, v in ranker.model.get_params().items()
              if v is not None and k not in ("n_jobs", "callbacks", "missing", "device", "random_state", "kwargs",
                                             "enable_categorical")}
    estimator = SparkXGBRanker(
        features_col="features", label_col="label", qid_col="qid",
        validation_indicator_col="is_valid", num_workers=num_workers, device="cpu",
        random_state=ranker.model.get_params()["random_state"], **margin, **params,
    )
    booster = estimator.fit(grouped).get_booster()
    booster.feature_names = list(ranker.columns)
    booster.set_attr(**{MARGIN_ATTRIBUTE: ranker.margin_column})
    ranker.model.load_model(bytearray(booster.save_raw("json")))
    return ranker


def fit_ranker_spark(ranker: ItemRanker, spark, features: pd.DataFrame, relevance: np.ndarray, query: np.ndarray,
                     valid: tuple[pd.DataFrame, np.ndarray, np.ndarray], num_workers: int = 2,
                     staging: str | None = None) -> ItemRanker:
    """``ItemRanker.fit`` with ``xgboost.spark.SparkXGBRanker`` (``fit_ranker_spark_frame``)
    on rows held by this process: they are written to Parquet in row groups and read by
    the executors, not shipped through the driver JVM (``spark.createDataFrame`` would hold
    all of them there).

    Args:
        features, relevance, query, valid: as ``ItemRanker.fit``.
        num_workers: XGBoost workers (Spark tasks).
        staging: a folder or URI that this process and the executors both reach; None: a
            local temporary folder (local masters only). The file is removed afterwards.
    """
    columns = ranker.columns
    valid_features, valid_relevance, valid_query = valid
    offset = int(np.max(query)) + 1 - int(np.min(valid_query))  # validation query ids follow the training ones

    def rows(frame: pd.DataFrame, label: np.ndarray, qid: np.ndarray, is_valid: bool) -> pd.DataFrame:
        out = frame[columns].astype("float64").reset_index(drop=True)
        out.columns = [f"f{i}" for i in range(len(columns))]  # plain names for Parquet and Spark
        return out.assign(label=np.asarray(label, dtype="float64"), qid=np.asarray(qid, dtype="int64"), is_valid=is_valid)

    with tempfile.TemporaryDirectory(prefix="interest-ranker-") as local:
        folder = f"{(staging or local).rstrip('/')}/ranker-rows-{uuid.uuid4().hex}"
        file = write_staged([rows(features, relevance, query, False),
                             rows(valid_features, valid_relevance, np.asarray(valid_query) + offset, True)], folder)
        try:
            return fit_ranker_spark_frame(ranker, spark.read.parquet(file), [f"f{i}" for i in range(len(columns))],
                                          num_workers=num_workers)
        finally:
            remove_staged([file])


# ------------------------------------------------------------------------- LSTM

_BATCH_FILE, _STATE_FILE, _BEST_FILE, _SPEC_FILE, _CURVE_FILE = "{}.pt", "initial.pt", "best.pt", "spec.json", "curve.json"


def _save_batch(batch, path: Path) -> None:
    import torch

    torch.save({k: v for k, v in batch.__dict__.items() if isinstance(v, torch.Tensor)}, path)


def _load_batch(path: Path):
    import torch

    from interest_models.data.sequences import SequenceBatch

    return SequenceBatch(**torch.load(path, weights_only=True))


def ddp_train_lstm(workdir: str) -> None:
    """The body of each DDP process (run by ``TorchDistributor``): train, and on process 0
    write the best epoch's weights and the learning curve into ``workdir``."""
    import torch
    import torch.distributed as dist
    from torch import nn
    from torch.nn.parallel import DistributedDataParallel

    from interest_models.evaluation.metrics import ndcg_at_k, target_ranks
    from interest_models.models.interest_shift_lstm import InterestShiftLSTM, predict_all
    from materialize.devices import seed_everything

    work = Path(workdir)
    spec = json.loads((work / _SPEC_FILE).read_text())
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(spec["threads"])
    seed_everything(spec["seed"] + rank)  # dropout differs per process; the data order does not
    arguments = dict(spec["arguments"])
    text_dim = arguments.pop("text_dim")
    arguments["inputs"] = tuple(arguments["inputs"])
    model = InterestShiftLSTM(text_embeddings=torch.zeros(arguments["n_items"] + 1, text_dim), **arguments)
    model.load_state_dict(torch.load(work / _STATE_FILE, weights_only=True))
    train, valid = _load_batch(work / _BATCH_FILE.format("train")), _load_batch(work / _BATCH_FILE.format("valid"))
    config = spec["config"]

    class LossOf(nn.Module):  # DDP wraps a module whose forward is the training loss
        def __init__(self, inner: InterestShiftLSTM):
            super().__init__()
            self.inner = inner

        def forward(self, batch):
            return self.inner.calculate_loss(batch, config["loss_weights"])[0]

    ddp = DistributedDataParallel(LossOf(model), find_unused_parameters=True)
    optimizer = torch.optim.Adam(model.parameters(), lr=config["learning_rate"], weight_decay=config["weight_decay"])
    generator = torch.Generator().manual_seed(spec["seed"])
    curve = {"epoch": [], "train_loss": [], "valid_loss": [], "valid_ndcg_at_10": [], "seconds": [], "best_epoch": 0}
    best, waited, trained, train_seconds = -1.0, 0, 0, 0.0
    device = torch.device("cpu")
    for epoch in range(1, config["max_epochs"] + 1):
        ddp.train()
        started, losses = time.perf_counter(), []
        order = torch.randperm(len(train), generator=generator)
        for start in range(0, len(train), config["batch_size"]):
            index = order[start:start + config["batch_size"]][rank::world]
            if len(index) == 0:  # a last global batch smaller than the process count
                index = order[start:start + 1]
            loss = ddp(train.select(index))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            optimizer.step()
            losses.append(loss.item())
        seconds = time.perf_counter() - started
        trained, train_seconds = trained + len(train), train_seconds + seconds
        stop = torch.zeros(1)
        if rank == 0:
            scores, _, _, _, valid_loss = predict_all(model, valid, device, loss_weights=config["loss_weights"])
            ndcg = float(ndcg_at_k(target_ranks(scores, valid.target_item.numpy()), 10))
            curve["epoch"].append(epoch)
            curve["train_loss"].append(float(np.mean(losses)))
            curve["valid_loss"].append(float(valid_loss))
            curve["valid_ndcg_at_10"].append(ndcg)
            curve["seconds"].append(seconds)
            if ndcg > best:
                best, waited, curve["best_epoch"] = ndcg, 0, epoch
                torch.save(model.state_dict(), work / _BEST_FILE)
            else:
                waited += 1
            stop[0] = float(waited >= config["patience"])
        dist.broadcast(stop, src=0)
        if stop.item():
            break
    if rank == 0:
        curve["sequences_per_second"] = trained * world / max(train_seconds, 1e-9)
        (work / _CURVE_FILE).write_text(json.dumps(curve))
    dist.destroy_process_group()


def fit_lstm_ddp(model, train, valid, config: dict, seed: int, distributed: Distributed, progress: bool = False):
    """``InterestShiftLSTM.fit`` on ``distributed.lstm_processes`` DDP processes (CPU,
    gloo), then the same head refit in this process. Returns ``model`` with the best
    epoch's weights and its ``learning_curve``."""
    import torch
    from pyspark.ml.torch.distributor import TorchDistributor

    from interest_models.models.interest_shift_lstm import LearningCurve

    with tempfile.TemporaryDirectory(prefix="interest-ddp-") as workdir:
        work = Path(workdir)
        model = model.cpu()
        torch.save(model.state_dict(), work / _STATE_FILE)
        _save_batch(train, work / _BATCH_FILE.format("train"))
        _save_batch(valid, work / _BATCH_FILE.format("valid"))
        arguments = dict(model._arguments)
        arguments["inputs"] = list(arguments["inputs"])
        (work / _SPEC_FILE).write_text(json.dumps({"arguments": arguments, "config": config, "seed": seed,
                                                   "threads": distributed.threads_per_process}))
        TorchDistributor(num_processes=distributed.lstm_processes, local_mode=distributed.local_mode,
                         use_gpu=False).run(ddp_train_lstm, workdir)
        model.load_state_dict(torch.load(work / _BEST_FILE, weights_only=True))
        values = json.loads((work / _CURVE_FILE).read_text())
    curve = LearningCurve(max_epochs=config["max_epochs"], **{k: values[k] for k in (
        "epoch", "train_loss", "valid_loss", "valid_ndcg_at_10", "seconds", "best_epoch")})
    curve.stopped_early = len(curve.epoch) < config["max_epochs"]
    curve.sequences_per_second = values["sequences_per_second"]
    model.learning_curve = curve
    if config.get("head_epochs", 0) > 0:
        model.fit_heads(train, valid, config, torch.device("cpu"), torch.Generator().manual_seed(seed))
    return model

