"""Our models beside RecBole's sequential recommenders, on exactly our evaluation split.

One run:

1. a throw-away database gets the data (the synthetic shop of ``make run``, or
   MovieLens-100K), its embeddings, features and Feast repo, and ``train_models`` trains
   and evaluates our models as ``interest train`` does (``time_split`` on the shop,
   ``leave_one_out`` with seen items excluded on MovieLens); its test table is the report's;
2. the same decision points (recomputed with ``decision_points`` and checked against the
   training run's) are exported to RecBole's atomic files as pre-split benchmark files
   (``benchmark_filename: [train, valid, test]``), so RecBole uses our split, not its own:
   * ``peers.train.inter``: every next event of the training events (the events before the
     first validation point; on leave-one-out all but each user's last two), with the up
     to ``MAX_ITEM_LIST_LENGTH`` events before it: RecBole's own augmentation;
   * ``peers.valid.inter`` / ``peers.test.inter``: one row per validation / test decision
     point, in our order: the user's events up to the point's ``as_of`` (the same history
     our features see) and the label item;
   * ``peers.item``: every catalogue item, so RecBole ranks the full catalogue as we do;
3. each peer (GRU4Rec, SASRec, CORE by default) is trained in its own process in a separate
   virtualenv (``bench/.peer-venv``, created on first use: RecBole 1.2.1 needs numpy < 2),
   early-stopped on validation NDCG@10, and exports its scores of every catalogue item for
   every test point;
4. those scores are ranked with our metric code (``target_ranks``, ``ranking_metrics``,
   the same seen-item exclusion as our report), beside RecBole's own test figures;
5. one table: our models and baselines (the report's figures) and the peers, with the
   machine, data sizes, seeds and train times; JSON in ``bench/results/peers.json``.

    .venv/bin/python bench/peer_benchmark.py                                  # synthetic shop of `make run`
    .venv/bin/python bench/peer_benchmark.py --data movielens [--movielens-dir PATH]
    .venv/bin/python bench/peer_benchmark.py --events 5000 --items 300 --epochs 1   # smoke run

The database is dropped and the peer processes are stopped however the run ends.
Nothing here asserts on time.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from harness import (
    PROJECT_DIR, RESULTS_DIR, fmt, load_average, machine_info, peak_memory_mib, progress, silence_known_warnings,
    stop_on_sigterm, stop_process_group, table, throwaway_database, timed,
)

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

PEER_VENV = PROJECT_DIR / "bench" / ".peer-venv"
RECBOLE = "recbole==1.2.1"
PEER_TORCH = "torch==2.13.0"  # the CPU build on this disk; a CUDA build elsewhere works the same
# RecBole 1.2.1 is installed with --no-deps (its pins drag in ray 2.6 and more); these are
# what its training, evaluation and logging import.
PEER_REQUIREMENTS = ("numpy<2", "pandas<2.3", "scipy<1.14", "scikit-learn<1.6", "tqdm", "colorlog==4.7.2",
                     "colorama==0.4.4", "pyyaml", "tabulate", "texttable", "tensorboard", "psutil")
DEFAULT_PEERS = ("GRU4Rec", "SASRec", "CORE")
DEFAULT_EPOCHS = {"GRU4Rec": 8, "SASRec": 5, "CORE": 5}  # upper bounds; early stopping may end sooner
DATASET = "peers"  # RecBole's dataset name: files <data_dir>/peers/peers.<split>.inter
ATOMIC_HEADER = "user_id:token\titem_id_list:token_seq\titem_id:token\ttimestamp:float\n"
OUR_ROWS = ("blend (LSTM + XGBoost)", "XGBoost ranker", "LSTM")

_EVENTS_IN_ORDER = """
SELECT user_id, item_id, event_timestamp
FROM interest.events
ORDER BY user_id, event_timestamp, item_id, event_type
"""
"""Every event in the order the decision points and baselines use (user, time, item, type)."""


# ----------------------------------------------------------------------------- the peer virtualenv


def peer_python(venv: Path = PEER_VENV) -> Path:
    """The peer virtualenv's python, created and installed on first use (a few minutes).

    A file ``installed.json`` in the venv records what was installed; the venv is rebuilt
    when it is missing or differs.
    """
    python = venv / "bin" / "python"
    wanted = {"recbole": RECBOLE, "torch": PEER_TORCH, "requirements": list(PEER_REQUIREMENTS)}
    marker = venv / "installed.json"
    with contextlib.suppress(OSError, ValueError):
        if python.exists() and json.loads(marker.read_text()) == wanted:
            return python
    progress(f"creating the peer virtualenv {venv} ({RECBOLE}, {PEER_TORCH}, numpy<2)")
    if venv.exists():
        shutil.rmtree(venv)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    subprocess.run([*pip, PEER_TORCH], check=True)  # first, so nothing later pulls another build
    subprocess.run([*pip, *PEER_REQUIREMENTS, PEER_TORCH], check=True)
    subprocess.run([*pip, "--no-deps", RECBOLE], check=True)
    marker.write_text(json.dumps(wanted))
    return python


def peer_versions(python: Path) -> dict:
    code = ("import json, importlib.metadata as m; print(json.dumps({p: m.version(p) for p in "
            "('recbole', 'torch', 'numpy', 'pandas')}))")
    out = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


# ----------------------------------------------------------------------------- export to atomic files


def _nanoseconds(values) -> np.ndarray:
    import pandas as pd

    return pd.to_datetime(values, utc=True).to_numpy("datetime64[ns]").astype("int64")


def fetch_events(conn) -> pd.DataFrame:
    """user_id, item_id, event_timestamp of every event, ordered as our decision points
    order them (user, time, item, event type)."""
    from materialize.database.tables import fetch_frame

    return fetch_frame(conn, _EVENTS_IN_ORDER)


def training_examples(events: pd.DataFrame, keep, max_len: int) -> pd.DataFrame:
    """RecBole's sequential augmentation of the kept events: for every kept event after a
    user's first kept one, the up to ``max_len`` kept events before it and that event.

    Args:
        events: user_id, item_id, event_timestamp, sorted by user then time (``fetch_events``).
        keep: (len(events),) bool, the training events.

    Returns:
        user_id, history (int64 arrays, oldest first), item_id, timestamp (epoch seconds).
    """
    import numpy as np
    import pandas as pd

    kept = events[np.asarray(keep, bool)]
    users, items = kept.user_id.to_numpy(np.int64), kept.item_id.to_numpy(np.int64)
    seconds = _nanoseconds(kept.event_timestamp) / 1e9
    position = np.arange(len(kept))
    starts = np.r_[0, np.flatnonzero(np.diff(users)) + 1] if len(kept) else np.empty(0, np.int64)
    user_start = np.repeat(starts, np.diff(np.r_[starts, len(kept)]))
    rows = np.flatnonzero(position > user_start)
    histories = [items[max(user_start[i], i - max_len):i] for i in rows]
    return pd.DataFrame({"user_id": users[rows], "history": histories, "item_id": items[rows],
                         "timestamp": seconds[rows]})


def point_examples(events: pd.DataFrame, points: pd.DataFrame, max_len: int) -> tuple[pd.DataFrame, int]:
    """One row per decision point, in the order of ``points``: the user's events up to the
    point's ``as_of`` (the history our point-in-time features see), newest ``max_len``.

    A point whose history up to ``as_of`` is empty (every earlier event in the same
    instant as the label, as can happen with MovieLens' one-second timestamps) gets the
    events ordered before its label event instead; their number is returned.

    Args:
        events: as for ``training_examples``.
        points: user_id, as_of, label_item_id, label_time (``decision_points``).

    Returns:
        (frame with user_id, history, item_id = label, timestamp = label time in epoch
        seconds; number of points that needed the fallback).
    """
    import numpy as np
    import pandas as pd

    users, items = events.user_id.to_numpy(np.int64), events.item_id.to_numpy(np.int64)
    times = _nanoseconds(events.event_timestamp)
    as_of, label_time = _nanoseconds(points.as_of), _nanoseconds(points.label_time)
    point_users, labels = points.user_id.to_numpy(np.int64), points.label_item_id.to_numpy(np.int64)
    first = np.searchsorted(users, point_users, side="left")
    last = np.searchsorted(users, point_users, side="right")
    histories, fallbacks = [], 0
    for n in range(len(points)):
        a, b = first[n], last[n]
        end = a + np.searchsorted(times[a:b], as_of[n], side="right")
        if end == a:  # nothing strictly before the label's instant
            same = np.flatnonzero((times[a:b] == label_time[n]) & (items[a:b] == labels[n]))
            end = a + (same[0] if len(same) else 0)
            fallbacks += 1
        histories.append(items[max(a, end - max_len):end])
    frame = pd.DataFrame({"user_id": point_users, "history": histories, "item_id": labels,
                          "timestamp": label_time / 1e9})
    return frame, fallbacks


def write_inter(path: Path, examples: pd.DataFrame) -> int:
    """One RecBole atomic ``.inter`` file of examples (``ATOMIC_HEADER``); returns its rows.
    Rows with an empty history are not written (RecBole cannot score them)."""
    rows = 0
    with open(path, "w", encoding="utf-8") as out:
        out.write(ATOMIC_HEADER)
        for user, history, item, seconds in zip(examples.user_id, examples.history, examples.item_id,
                                                examples.timestamp):
            if len(history) == 0:
                continue
            out.write(f"{user}\t{' '.join(map(str, history))}\t{item}\t{seconds:.3f}\n")
            rows += 1
    return rows


def write_item_file(path: Path, item_ids) -> None:
    """``peers.item``: every catalogue item, so that items no event names are ranked too."""
    with open(path, "w", encoding="utf-8") as out:
        out.write("item_id:token\n")
        out.writelines(f"{int(item)}\n" for item in item_ids)


@dataclasses.dataclass
class Export:
    """The atomic files of one split, and what they hold."""

    data_dir: Path             # RecBole's data_path; the files are in data_dir / DATASET
    rows: dict[str, int]       # rows per file: train, valid, test
    fallback_histories: dict[str, int]
    test_points: pd.DataFrame  # our test decision points, in file order


def export_split(conn, points: pd.DataFrame, protocol: str, item_ids, data_dir: Path, max_len: int,
                 train_targets: str = "points") -> Export:
    """Write our split as RecBole benchmark files (see the module docstring).

    Args:
        points: our decision points (``decision_points``): user_id, as_of, label_item_id,
            label_time, split.
        protocol: "time_split" (train on the events before the first validation point) or
            "leave_one_out" (train on all but each user's last two events).
        item_ids: the whole catalogue.
        train_targets: "points": the training rows are our models' own training decision
            points (train_sequence and train_ranker splits) with their histories up to
            ``as_of``; "events": every next event of the training events (RecBole's
            augmentation, several times more rows).
    """
    import numpy as np

    events = fetch_events(conn)
    if protocol == "leave_one_out":
        users = events.user_id.to_numpy(np.int64)
        from_end = events.groupby(users, sort=False).cumcount(ascending=False).to_numpy()
        keep = from_end >= 2
    elif protocol == "time_split":
        valid_start = points[points.split == "valid"].as_of.min()
        keep = _nanoseconds(events.event_timestamp) < _nanoseconds([valid_start])[0]
    else:
        raise ValueError(f"unknown protocol {protocol!r}")
    folder = data_dir / DATASET
    folder.mkdir(parents=True, exist_ok=True)
    fallbacks, test_points = {}, None
    if train_targets == "events":
        train = training_examples(events, keep, max_len)
    elif train_targets == "points":
        train, fallbacks["train"] = point_examples(
            events, points[points.split.isin(["train_sequence", "train_ranker"])].reset_index(drop=True), max_len)
    else:
        raise ValueError(f"unknown train_targets {train_targets!r}")
    rows = {"train": write_inter(folder / f"{DATASET}.train.inter", train)}
    for split in ("valid", "test"):
        split_points = points[points.split == split].reset_index(drop=True)
        examples, fallbacks[split] = point_examples(events, split_points, max_len)
        rows[split] = write_inter(folder / f"{DATASET}.{split}.inter", examples)
        if rows[split] != len(split_points):
            raise ValueError(f"{len(split_points) - rows[split]} {split} points have no history at all")
        if split == "test":
            test_points = split_points
    write_item_file(folder / f"{DATASET}.item", item_ids)
    return Export(data_dir, rows, fallbacks, test_points)


# ----------------------------------------------------------------------------- the worker (peer venv)


def worker_main(args: argparse.Namespace) -> None:
    """Train one RecBole model on the exported split and save its test scores.

    Runs in the peer virtualenv; imports RecBole and torch only (nothing of this project).
    Writes ``<model>.scores.npy`` ((test points, RecBole items) float32, file order) and
    ``<model>.json`` (item tokens of the score columns, test targets, times, curves,
    RecBole's own test figures) into ``--out-dir``.
    """
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import get_model, get_trainer, init_logger, init_seed

    out_dir = Path(args.out_dir)
    config_dict = {
        "data_path": str(args.data_dir), "benchmark_filename": ["train", "valid", "test"],
        "USER_ID_FIELD": "user_id", "ITEM_ID_FIELD": "item_id", "TIME_FIELD": "timestamp",
        "load_col": {"inter": ["user_id", "item_id_list", "item_id", "timestamp"], "item": ["item_id"]},
        "MAX_ITEM_LIST_LENGTH": args.max_len,
        "train_neg_sample_args": None, "loss_type": "CE",
        "eval_args": {"mode": "full", "order": "TO", "split": {"LS": "valid_and_test"}, "group_by": "user"},
        "metrics": ["Recall", "NDCG", "MRR", "Hit"], "topk": [10], "valid_metric": "NDCG@10",
        "metric_decimal_place": 12,  # RecBole rounds to 4 places by default
        "epochs": args.epochs, "stopping_step": args.stopping_step, "eval_step": 1,
        "seed": args.seed, "reproducibility": True, "device": "cpu", "use_gpu": False,
        "checkpoint_dir": str(out_dir / f"{args.model}-checkpoint"), "show_progress": False,
        "train_batch_size": args.batch_size, "eval_batch_size": 1024, "worker": 0,
    }
    config = Config(model=args.model, dataset=DATASET, config_dict=config_dict)
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    started = time.perf_counter()
    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    load_s = time.perf_counter() - started
    init_seed(config["seed"], config["reproducibility"])
    model = get_model(config["model"])(config, train_data._dataset).to(config["device"])
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    curve: list[float] = []
    valid_epoch = trainer._valid_epoch

    def recorded_valid_epoch(*a, **kw):
        score, result = valid_epoch(*a, **kw)
        curve.append(float(score))
        return score, result

    trainer._valid_epoch = recorded_valid_epoch
    started = time.perf_counter()
    best_valid, _ = trainer.fit(train_data, valid_data, saved=True, show_progress=False)
    train_s = time.perf_counter() - started
    started = time.perf_counter()
    recbole_test = trainer.evaluate(test_data, load_best_model=True, show_progress=False)
    evaluate_s = time.perf_counter() - started

    test = test_data._dataset.inter_feat  # file order: FullSortEvalDataLoader never shuffles
    model.eval()
    blocks = []
    with torch.no_grad():
        for start in range(0, len(test), 512):
            scores = model.full_sort_predict(test[start:start + 512].to(config["device"]))
            blocks.append(scores.view(-1, dataset.item_num).float().cpu().numpy())
    np.save(out_dir / f"{args.model}.scores.npy", np.concatenate(blocks))
    tokens = dataset.field2id_token[dataset.iid_field]
    summary = {
        "model": args.model, "parameters": int(sum(p.numel() for p in model.parameters())),
        "item_tokens": [str(t) for t in tokens], "test_targets": [str(tokens[i]) for i in test[dataset.iid_field].tolist()],
        "rows": {"train": len(train_data._dataset), "valid": len(valid_data._dataset), "test": len(test)},
        "load_s": round(load_s, 2), "train_s": round(train_s, 2), "evaluate_s": round(evaluate_s, 2),
        "epochs_run": len(curve), "max_epochs": args.epochs, "valid_ndcg_at_10": curve,
        "best_epoch": int(np.argmax(curve)) + 1 if curve else None, "best_valid_ndcg_at_10": float(best_valid),
        "recbole_test": {k: float(v) for k, v in recbole_test.items()},
        "config": {k: config[k] for k in ("embedding_size", "hidden_size", "n_layers", "num_layers", "n_heads",
                                          "inner_size", "dropout_prob", "hidden_dropout_prob", "attn_dropout_prob",
                                          "temperature", "dnn_type", "train_batch_size", "learning_rate",
                                          "loss_type", "MAX_ITEM_LIST_LENGTH", "stopping_step", "seed")
                   if config[k] is not None},
    }
    (out_dir / f"{args.model}.json").write_text(json.dumps(summary))


# ----------------------------------------------------------------------------- running the peers


def run_peer(python: Path, model: str, export: Export, out_dir: Path, args: argparse.Namespace) -> dict:
    """One peer in its own process group (stopped however this ends); its log lines are
    echoed with the model's name. Returns the worker's summary, or the failure."""
    command = [str(python), str(Path(__file__).resolve()), "--worker", "--model", model,
               "--data-dir", str(export.data_dir), "--out-dir", str(out_dir), "--epochs", str(args.peer_epochs[model]),
               "--stopping-step", str(args.stopping_step), "--seed", str(args.seed), "--threads", str(args.threads),
               "--max-len", str(args.max_len), "--batch-size", str(args.batch_size)]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD="1", OMP_NUM_THREADS=str(args.threads), PYTHONUNBUFFERED="1",
               PYTHONWARNINGS="ignore")  # RecBole's pandas and torch deprecation warnings
    work_dir = out_dir / f"{model}-work"  # RecBole writes log/ and log_tensorboard/ into its cwd
    work_dir.mkdir()
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=work_dir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, start_new_session=True)
    timer = threading.Timer(args.peer_timeout_s, lambda: stop_process_group(process, timeout_s=10))
    timer.start()
    tail: list[str] = []
    try:
        for line in process.stdout:
            line = line.rstrip()
            tail = (tail + [line])[-30:]
            if not re.search(r"^\s*$", line):
                print(f"    [{model}] {line}", flush=True)
        process.wait()
    finally:
        timer.cancel()
        stop_process_group(process)
    wall_s = round(time.perf_counter() - started, 1)
    summary_path = out_dir / f"{model}.json"
    if process.returncode != 0 or not summary_path.exists():
        reason = "timed out" if wall_s >= args.peer_timeout_s else f"exit {process.returncode}"
        return {"model": model, "failed": f"{reason} after {wall_s} s", "log_tail": tail, "wall_s": wall_s}
    return {**json.loads(summary_path.read_text()), "wall_s": wall_s}


def peer_metrics(summary: dict, out_dir: Path, export: Export, vocabulary, exclude) -> dict:
    """The peer's test scores ranked with our metric code over our item columns."""
    import numpy as np

    from interest_models.evaluation.metrics import ranking_metrics, target_ranks

    expected = [str(i) for i in export.test_points.label_item_id]
    if summary["test_targets"] != expected:
        raise ValueError(f"{summary['model']}: RecBole's test rows are not our test points in our order")
    recbole_scores = np.load(out_dir / f"{summary['model']}.scores.npy")
    tokens = np.array(summary["item_tokens"])
    real = tokens != "[PAD]"
    columns = vocabulary.index_of(tokens[real].astype(np.int64))
    if (columns == 0).any() or len(set(columns.tolist())) != vocabulary.n_items:
        raise ValueError(f"{summary['model']}: RecBole's items are not our catalogue")
    scores = np.full((len(recbole_scores), vocabulary.n_items + 1), -np.inf, dtype=np.float64)
    scores[:, columns] = recbole_scores[:, real]
    targets = vocabulary.index_of(export.test_points.label_item_id)
    ranks = target_ranks(scores, targets, exclude)
    ours = ranking_metrics(ranks, ks=(10,))
    plain = ranking_metrics(target_ranks(scores, targets), ks=(10,))  # no exclusion, as RecBole ranks
    return {"ours": ours, "ours_without_exclusion": plain, "test_ranks": ranks.tolist(),  # per test point, file order
            "recbole_minus_ours_same_ranking": {
                "NDCG@10": summary["recbole_test"]["ndcg@10"] - plain["NDCG@10"],
                "HR@10": summary["recbole_test"]["hit@10"] - plain["HR@10"]},
            "ties_at_target": int(np.sum(np.sum(scores[:, 1:] == scores[np.arange(len(scores)), targets][:, None],
                                                axis=1) > 1))}


# ----------------------------------------------------------------------------- data


def movielens_from_folder(folder: Path):
    """MovieLens-100K from a folder: RecBole's atomic files (``ml-100k.inter``,
    ``ml-100k.item``), GroupLens' originals (``u.data``, ``u.item``, ``u.genre``), or the
    ``recbole-1.2.1`` wheel; the same events and catalogue as the packaged copy."""
    import pandas as pd

    from materialize.ingest.sources.movielens import MovieLens100K

    class FolderMovieLens(MovieLens100K):
        def _read_atomic(self, file_name: str) -> pd.DataFrame:
            path = folder / file_name
            if path.exists():
                frame = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, quoting=3, encoding="utf-8")
                return frame.rename(columns=lambda column: column.split(":")[0])
            if (folder / "u.data").exists():
                return _grouplens_as_atomic(folder, file_name)
            return super()._read_atomic(file_name)

    return FolderMovieLens(folder)


def load_movielens_folder(pipeline, folder: Path) -> list:
    """``movielens_from_folder`` loaded as ``Pipeline.load_movielens`` loads the packaged copy."""
    from materialize.ingest import loader as ingest

    movielens = movielens_from_folder(folder)
    kwargs = pipeline._load_kwargs()
    return [ingest.load_frames(pipeline.conn, "items", [movielens.items()], source=f"movielens-100k:{folder}:items", **kwargs),
            ingest.load_frames(pipeline.conn, "events", movielens.events(), source=f"movielens-100k:{folder}:events",
                               total_rows=100_000, **kwargs)]


def _grouplens_as_atomic(folder: Path, file_name: str) -> pd.DataFrame:
    """GroupLens' ``u.data`` / ``u.item`` as the columns of RecBole's ml-100k atomic files."""
    import pandas as pd

    if file_name.endswith(".inter"):
        return pd.read_csv(folder / "u.data", sep="\t", header=None, dtype=str,
                           names=["user_id", "item_id", "rating", "timestamp"])
    genres = pd.read_csv(folder / "u.genre", sep="|", header=None, dtype=str).dropna()[0].tolist()
    raw = pd.read_csv(folder / "u.item", sep="|", header=None, dtype=str, encoding="latin-1", keep_default_na=False)
    flags = raw.iloc[:, 5:5 + len(genres)].to_numpy() == "1"
    titles = raw[1].str.replace(r"\s*\(\d{4}\)\s*$", "", regex=True)
    years = raw[1].str.extract(r"\((\d{4})\)\s*$")[0].fillna("unknown")
    return pd.DataFrame({"item_id": raw[0], "movie_title": titles, "release_year": years,
                         "class": [" ".join(g for g, f in zip(genres, row) if f) or "unknown" for row in flags]})


def prepare_data(pipeline, args: argparse.Namespace) -> dict:
    """Load, embed, build and apply; returns what was loaded."""
    from materialize.ingest.sources.synthetic import SyntheticConfig

    with timed() as clock:
        if args.data == "synthetic":
            config = (SyntheticConfig.for_events(args.events, n_items=args.items, seed=args.shop_seed) if args.events
                      else SyntheticConfig(n_items=args.items, seed=args.shop_seed))
            reports = pipeline.load_synthetic(config)
            source = {"data": "synthetic", "shop": {k: str(v) for k, v in config.to_json().items()}}
        elif args.movielens_dir is not None:
            reports = load_movielens_folder(pipeline, args.movielens_dir)
            source = {"data": "movielens-100k", "folder": str(args.movielens_dir)}
        else:
            reports = pipeline.load_movielens()
            source = {"data": "movielens-100k", "folder": "recbole 1.2.1 wheel (project cache)"}
    progress("loaded: " + "; ".join(r.summary() for r in reports) + f" in {clock.seconds:.1f} s")
    with timed() as clock:
        pipeline.embed()
        pipeline.build(full=True)
        import feast  # noqa: F401

        silence_known_warnings()
        pipeline.apply()
    progress(f"embedded, built and applied in {clock.seconds:.1f} s")
    return source


# ----------------------------------------------------------------------------- main


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", choices=["synthetic", "movielens"], default="synthetic")
    parser.add_argument("--movielens-dir", type=Path, default=None,
                        help="folder with ml-100k.inter/.item (RecBole), u.data/u.item/u.genre (GroupLens) or the "
                             "recbole-1.2.1 wheel; default: the wheel in the project's .data cache (pip-downloaded)")
    parser.add_argument("--events", type=int, default=None, help="synthetic events (default: the shop of `make run`)")
    parser.add_argument("--items", type=int, default=3000, help="synthetic catalogue size")
    parser.add_argument("--shop-seed", type=int, default=7, help="seed of the synthetic shop")
    parser.add_argument("--seed", type=int, default=None, help="model seed for our training and the peers "
                        "(default: training.yaml's); it also draws the decision-point sample")
    parser.add_argument("--peers", nargs="+", default=list(DEFAULT_PEERS), help="RecBole sequential models")
    parser.add_argument("--epochs", type=int, default=None, help="epoch limit of every peer (default per model: "
                        + ", ".join(f"{k} {v}" for k, v in DEFAULT_EPOCHS.items()) + ")")
    parser.add_argument("--stopping-step", type=int, default=3, help="peer epochs without validation gain before stopping")
    parser.add_argument("--max-len", type=int, default=None, help="peer history length, RecBole's "
                        "MAX_ITEM_LIST_LENGTH (default: lstm.yaml's max_sequence_length, what our LSTM reads)")
    parser.add_argument("--batch-size", type=int, default=None, help="peer training batch (default: lstm.yaml's "
                        "batch_size, our LSTM's)")
    parser.add_argument("--train-targets", choices=["points", "events"], default="points",
                        help="peer training rows: our models' training decision points (train_sequence and "
                             "train_ranker, with histories up to as_of), or every next training event (RecBole's "
                             "augmentation: about 8x the rows on the synthetic shop)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of each peer (2 is a little faster on "
                        "a quiet 2-core machine, many times slower when other processes hold a core)")
    parser.add_argument("--peer-timeout-s", type=float, default=1800, help="a peer still running then is stopped")
    parser.add_argument("--venv", type=Path, default=PEER_VENV, help="the peer virtualenv (created when missing)")
    parser.add_argument("--keep-db", action="store_true", help="keep the benchmark database")
    parser.add_argument("--keep-files", type=Path, default=None, help="copy the atomic files and peer scores here")
    parser.add_argument("--progress", action="store_true", help="the pipeline's progress bars")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "peers.json")
    # the worker, run by this script inside the peer virtualenv
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", help=argparse.SUPPRESS)
    parser.add_argument("--out-dir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        args.epochs = args.epochs or 1
        args.max_len = args.max_len or 50
        args.batch_size = args.batch_size or 256
        args.seed = 2026 if args.seed is None else args.seed
    else:
        args.peer_epochs = {m: args.epochs or DEFAULT_EPOCHS.get(m, 10) for m in args.peers}
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.worker:
        worker_main(args)
        return {}
    stop_on_sigterm()
    silence_known_warnings()
    results: dict = {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join([Path(sys.argv[0]).as_posix(), *(sys.argv[1:] if argv is None else argv)]),
        "load_average": {"start": load_average()},
    }
    python = peer_python(args.venv)
    results["peer_software"] = peer_versions(python)
    with throwaway_database(keep=args.keep_db, prefix="interest_peers") as pg, \
            tempfile.TemporaryDirectory(prefix="peer_benchmark_") as scratch:
        results.update(_run(args, pg, Path(scratch), python))
        if args.keep_files is not None:
            shutil.copytree(scratch, args.keep_files, dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns("*-checkpoint", "*-work"))
            progress(f"atomic files and peer scores copied to {args.keep_files}")
    results["load_average"]["end"] = load_average()
    results["peak_memory_mib"] = peak_memory_mib()
    print("\n".join(render(results)), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    progress(f"figures written to {args.out}")
    return results


def _run(args: argparse.Namespace, pg, scratch: Path, python: Path) -> dict:
    import numpy as np

    from interest_models.data.decision_points import decision_points, seen_items
    from interest_models.data.vocabulary import load_vocabulary
    from interest_models.training.recipe import train_models
    from materialize.pipeline import Pipeline
    from materialize.settings import load_settings

    settings = dataclasses.replace(load_settings(), postgres=pg)
    protocol = "time_split" if args.data == "synthetic" else "leave_one_out"
    out: dict = {"database": pg.database, "protocol": protocol}
    with Pipeline(settings, progress=args.progress) as pipeline:
        out["machine"] = machine_info(pipeline.conn, packages=("torch", "feast", "pandas", "numpy", "xgboost"))
        out["source"] = prepare_data(pipeline, args)
        session_gap = dt.timedelta(minutes=settings.pipeline.session_gap_minutes)
        training = {"protocol": protocol}  # as interest train sets them (interest_models.training.workflow)
        if protocol == "leave_one_out":
            training["exclude_seen"] = True
        if args.seed is not None:
            training["seed"] = args.seed
        progress(f"training our models ({protocol}) as interest train does")
        with timed() as clock:
            result = train_models(pipeline.store, pipeline.conn, session_gap, overrides={"training": training},
                                  progress=True, config_dir=settings.config_dir)
        config = result.configs["training"]
        args.seed = int(config["seed"])
        args.max_len = args.max_len or int(result.configs["lstm"]["max_sequence_length"])
        args.batch_size = args.batch_size or int(result.configs["lstm"]["batch_size"])
        out["ours"] = {
            "wall_s": round(clock.seconds, 1), "stage_seconds": result.seconds, "sizes": result.sizes,
            "test": {name: row.to_dict() for name, row in result.metrics.iterrows()},
            "lstm": {"best_epoch": result.model.learning_curve.best_epoch,
                     "epochs_run": len(result.model.learning_curve.epoch),
                     "max_sequence_length": result.configs["lstm"]["max_sequence_length"]},
            "blend_lstm_weight": result.blend.lstm_weight,
        }

        points = decision_points(pipeline.conn, config, session_gap)
        trained = result.timelines
        for split in ("valid", "test"):
            ours = points[points.split == split]
            theirs = trained[trained.split == split]
            same = (len(ours) == len(theirs) and np.array_equal(ours.user_id.to_numpy(), theirs.user_id.to_numpy())
                    and np.array_equal(ours.as_of.to_numpy(), theirs.as_of.to_numpy()))
            if not same:
                raise RuntimeError(f"the {split} decision points drawn again differ from the training run's")
        vocabulary = load_vocabulary(pipeline.conn)
        with timed() as clock:
            export = export_split(pipeline.conn, points, protocol, vocabulary.item_ids[1:], scratch / "atomic", args.max_len,
                                  args.train_targets)
        progress(f"exported to RecBole atomic files in {clock.seconds:.1f} s: {export.rows}")
        exclude = seen_items(pipeline.conn, export.test_points, vocabulary) if config["exclude_seen"] else None
        events, users = pipeline.conn.execute("SELECT count(*), count(DISTINCT user_id) FROM interest.events").fetchone()
        pipeline.conn.commit()
        out["sizes"] = {
            "events": events, "users": users, "items": vocabulary.n_items, "categories": vocabulary.n_categories,
            **{f"points_{s}": int((points.split == s).sum()) for s in ("train_sequence", "train_ranker", "valid", "test")},
            "test_users": int(export.test_points.user_id.nunique()),
            "recbole_rows": export.rows, "recbole_history_length": args.max_len, "peer_batch_size": args.batch_size,
            "points_with_history_fallback": export.fallback_histories,
            "seen_items_excluded": bool(config["exclude_seen"]),
        }
        out["seeds"] = {"shop": args.shop_seed if args.data == "synthetic" else None, "models": args.seed}
        out["peer_settings"] = {"train_targets": args.train_targets, "history_length": args.max_len, "batch_size": args.batch_size, "threads": args.threads,
                                "max_epochs": args.peer_epochs, "stopping_step": args.stopping_step, "loss": "CE",
                                "early_stopping_metric": "valid NDCG@10 (RecBole's)"}
        out["checks"] = {"valid and test points equal the training run's": True}

    peers: dict = {}
    for model in args.peers:
        progress(f"training peer {model} (at most {args.peer_epochs[model]} epochs, {args.threads} threads)")
        summary = run_peer(python, model, export, scratch, args)
        if "failed" not in summary:
            summary.update(peer_metrics(summary, scratch, export, vocabulary, exclude))
            progress(f"{model}: NDCG@10 {summary['ours']['NDCG@10']:.4f} (ours on its scores), RecBole's own "
                     f"{summary['recbole_test']['ndcg@10']:.4f}; {summary['epochs_run']} epochs in {summary['train_s']} s")
        else:
            progress(f"{model} failed: {summary['failed']}")
        summary.pop("item_tokens", None)
        summary.pop("test_targets", None)
        peers[model] = summary
    out["peers"] = peers
    return out


def render(results: dict) -> list[str]:
    m, s, ours, p = results["machine"], results["sizes"], results["ours"], results["peer_settings"]
    stage = ours["stage_seconds"]
    ranker_s = stage.get("ranker features", 0) + stage.get("XGBoost training", 0)
    rows = []
    for name, figures in ours["test"].items():
        seconds = {"LSTM": stage.get("LSTM training"), "XGBoost ranker": ranker_s,
                   OUR_ROWS[0]: ours["wall_s"]}.get(name)
        note = {"LSTM": f"best epoch {ours['lstm']['best_epoch']} of {ours['lstm']['epochs_run']}",
                OUR_ROWS[0]: f"whole train_models; LSTM weight {ours['blend_lstm_weight']:.2f}",
                "XGBoost ranker": "ranker features + XGBoost"}.get(name, "")
        rows.append([f"ours: {name}", figures["NDCG@10"], figures["HR@10"], figures["MRR@10"], seconds, note])
    for model, peer in results["peers"].items():
        if "failed" in peer:
            rows.append([f"RecBole {model}", "-", "-", "-", peer["wall_s"], peer["failed"]])
            continue
        f = peer["ours"]
        rows.append([f"RecBole {model}", f["NDCG@10"], f["HR@10"], f["MRR@10"], peer["train_s"],
                     f"best epoch {peer['best_epoch']} of {peer['epochs_run']} (max {peer['max_epochs']}); "
                     f"RecBole's own NDCG@10 {peer['recbole_test']['ndcg@10']:.4f}"])
    rows.sort(key=lambda r: -r[1] if isinstance(r[1], float) else 1.0)
    cells = [[r[0], *(fmt(v, 4) if isinstance(v, float) and i < 3 else fmt(v, 1) for i, v in enumerate(r[1:5])), r[5]]
             for r in rows]
    return [
        "", "=" * 100,
        f"Peers on our split, {results['date']}",
        f"command: {results['command']}",
        f"machine: {m['cpu_model']}, {m['cpu_cores']} cores, {m['ram_gib']} GiB RAM; load average start "
        f"{results['load_average']['start']}, end {results['load_average']['end']}",
        f"software: ours torch {m['torch']}, xgboost {m['xgboost']}, numpy {m['numpy']}; peers RecBole "
        f"{results['peer_software']['recbole']}, torch {results['peer_software']['torch']}, "
        f"numpy {results['peer_software']['numpy']}",
        f"data: {results['source']['data']}, {s['events']:,} events, {s['users']:,} users, {s['items']:,} items; "
        f"protocol {results['protocol']}; seeds: shop {results['seeds']['shop']}, models {results['seeds']['models']}",
        f"decision points: train_sequence {s['points_train_sequence']:,}, train_ranker {s['points_train_ranker']:,}, "
        f"valid {s['points_valid']:,}, test {s['points_test']:,} ({s['test_users']:,} users); RecBole rows "
        f"{s['recbole_rows']}",
        f"peers: trained on {p['train_targets']}, history up to {p['history_length']} events, batch {p['batch_size']}, torch threads {p['threads']}, "
        f"epochs at most {p['max_epochs']}, early stop after {p['stopping_step']} epochs without valid gain",
        f"ranked against all {s['items']:,} items; seen items excluded: {s['seen_items_excluded']}; every NDCG/HR/MRR "
        f"below is computed by interest_models.evaluation.metrics on the same test points",
        "",
        table(["model (test)", "NDCG@10", "HR@10", "MRR@10", "train s", "note"], cells),
        *_metric_check(results["peers"]),
        "=" * 100,
    ]


def _metric_check(peers: dict) -> list[str]:
    """One line: RecBole's own test figures against ours on the same scores and ranking."""
    gaps = [abs(v) for peer in peers.values() if "failed" not in peer
            for v in peer["recbole_minus_ours_same_ranking"].values()]
    if not gaps:
        return []
    return ["", f"check: RecBole's own test NDCG@10 and HR@10 (its topk, no seen-item exclusion) minus ours on the same "
                f"scores without exclusion: largest |difference| {max(gaps):.2e}"]


if __name__ == "__main__":
    main()
