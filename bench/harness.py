"""What every benchmark script in ``bench/`` shares.

- the clock: ``timed`` (a stopwatch context manager), ``TimedFrames`` (time spent inside a
  lazy generator), ``rate`` and timestamped ``progress`` lines;
- the description of the run: ``machine_info`` (CPU model, cores, memory, library and
  server versions), ``load_average``, ``peak_memory_mib`` and the text tables;
- clean-up: ``stop_on_sigterm`` (so that ``finally`` blocks run on SIGTERM as on Ctrl-C),
  ``server_process`` (a child started in its own process group and stopped with all its
  children), ``throwaway_database`` (a new database dropped afterwards, and the embedded
  server stopped when the benchmark started it and nobody else uses it);
- the data-plane scaffolding: ``Subject`` (one measured step: its options, the state it
  needs, its measurement and its section of the report), the untimed ``SETUP_STEPS`` that
  bring a throw-away database to the state a subject needs, and ``run_subjects``, the
  ``main`` of every data-plane script (one subject, or all of them in ``data_plane.py``).

Nothing here asserts on time.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import io
import json
import os
import platform
import resource
import signal
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

PROJECT_DIR = Path(__file__).resolve().parents[1]
if str(PROJECT_DIR) not in sys.path:
    sys.path.insert(0, str(PROJECT_DIR))

if TYPE_CHECKING:
    import pandas as pd
    import psycopg

    from materialize.ingest.sources.synthetic import SyntheticConfig
    from materialize.pipeline import Pipeline
    from materialize.settings import PostgresSettings

RESULTS_DIR = PROJECT_DIR / "bench" / "results"
STOP_TIMEOUT_S = 30.0  # how long a stopped process group may take before it is killed
SETUP_TEMP_FILE_LIMIT = "15GB"  # per Postgres process, on the pipeline's connection (the feature build):
# the full build of 10M events wrote more than 43 GB of temp files before it was stopped
DATA_PLANE_PACKAGES = ("torch", "feast", "pandas", "pyarrow", "psycopg")

_STARTED = time.perf_counter()


# ----------------------------------------------------------------------------- clock


@dataclasses.dataclass
class Stopwatch:
    seconds: float = 0.0


@contextlib.contextmanager
def timed() -> Iterator[Stopwatch]:
    """``with timed() as clock: ...``; ``clock.seconds`` is set when the block ends."""
    clock = Stopwatch()
    started = time.perf_counter()
    try:
        yield clock
    finally:
        clock.seconds = time.perf_counter() - started


class TimedFrames:
    """Iterates frames from a generator and adds up the time spent generating them."""

    def __init__(self, frames, transform=None):
        self._frames = iter(frames)
        self._transform = transform
        self.seconds = 0.0
        self.rows = 0

    def __iter__(self):
        return self

    def __next__(self) -> pd.DataFrame:
        started = time.perf_counter()
        try:
            frame = next(self._frames)
            if self._transform is not None:
                frame = self._transform(frame)
        finally:
            self.seconds += time.perf_counter() - started
        self.rows += len(frame)
        return frame


def rate(count: float, seconds: float) -> float | None:
    return round(count / seconds, 1) if seconds > 0 else None


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def progress(message: str) -> None:
    """One timestamped progress line: wall clock, seconds since start, 1-minute load."""
    load_1m = os.getloadavg()[0]
    print(f"[{dt.datetime.now():%H:%M:%S} +{time.perf_counter() - _STARTED:7.1f}s load {load_1m:4.2f}] {message}",
          flush=True)


# ----------------------------------------------------------------------------- machine


def _version(package: str) -> str | None:
    for name in (package, f"{package}-cpu"):  # xgboost-cpu registers under its own name
        try:
            return version(name)
        except PackageNotFoundError:
            continue
    return None


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine_info(conn: psycopg.Connection | None = None, packages: tuple[str, ...] = DATA_PLANE_PACKAGES) -> dict:
    """CPU, memory, Python and library versions; with ``conn``, the server's version and
    the settings that matter to the figures."""
    mem_total_gib = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_total_gib = round(int(line.split()[1]) / 2**20, 1)
    info = {
        "cpu_model": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "ram_gib": mem_total_gib,
        "platform": platform.platform(),
        "python": platform.python_version(),
        **{package: _version(package) for package in packages},
    }
    if conn is not None:
        info["postgres"] = conn.execute("SELECT version()").fetchone()[0]
        info["postgres_settings"] = dict(
            conn.execute(
                "SELECT name, setting || coalesce(unit, '') FROM pg_settings WHERE name IN "
                "('shared_buffers', 'work_mem', 'max_parallel_workers_per_gather', 'effective_cache_size')"
            ).fetchall()
        )
        conn.commit()
    return info


def peak_memory_mib() -> float:
    """Peak resident memory of this process so far, in MiB (child processes and the
    Postgres server are not counted)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # ru_maxrss: KiB on Linux


# ----------------------------------------------------------------------------- text output


def fmt(value, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def table(headers: list[str], rows: list[list]) -> str:
    cells = [[str(h) for h in headers]] + [[c if isinstance(c, str) else fmt(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for n, row in enumerate(cells):
        lines.append("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def silence_known_warnings() -> None:
    """Hide two harmless warnings Feast prints on every apply and retrieval (they would bury
    the progress lines). Call again after ``import feast``, which puts its own
    ``simplefilter("once", RuntimeWarning)`` in front of ours."""
    warnings.filterwarnings("ignore", message="pandas only supports SQLAlchemy connectable")
    warnings.filterwarnings("ignore", message="On demand feature view is an experimental feature")


@contextlib.contextmanager
def quiet(enabled: bool):
    """Swallow what Feast prints to stdout (apply and materialize banners)."""
    if not enabled:
        yield
        return
    with contextlib.redirect_stdout(io.StringIO()):
        yield


# ----------------------------------------------------------------------------- processes


def stop_on_sigterm() -> None:
    """Turn SIGTERM into ``SystemExit`` so that ``finally`` blocks and context managers
    stop children and drop databases, as they do on Ctrl-C. Call it from ``main``."""
    def _exit(signum, _frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _exit)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a member we may not signal still exists
        return True
    return True


def stop_process_group(process: subprocess.Popen, timeout_s: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM to the child's whole process group (it was started with
    ``start_new_session=True``, so its group id is its pid), SIGKILL to what is left after
    ``timeout_s``; returns when the leader is reaped and no member of the group remains."""
    pgid = process.pid
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=0.2)
        if process.returncode is not None and not _group_alive(pgid):
            return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    process.wait()
    deadline = time.monotonic() + 5
    while _group_alive(pgid) and time.monotonic() < deadline:  # orphans are reaped by init
        time.sleep(0.1)


@dataclasses.dataclass
class ServerProcess:
    """A started server: the ``Popen`` and the file its stderr goes to."""

    process: subprocess.Popen
    log_path: Path

    def log_tail(self, chars: int = 3000) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-chars:]
        return ""


@contextlib.contextmanager
def server_process(command: list[str], **popen_kwargs) -> Iterator[ServerProcess]:
    """Start ``command`` in a new session (its own process group, out of reach of the
    terminal's Ctrl-C) with stderr to a temporary file (a pipe nobody reads would block it
    once full), and stop the group, workers included, however the block ends."""
    with tempfile.TemporaryDirectory(prefix="bench_server_") as log_dir:
        log_path = Path(log_dir) / "stderr.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log, start_new_session=True,
                                       **popen_kwargs)
        try:
            yield ServerProcess(process, log_path)
        finally:
            stop_process_group(process)


def wait_ready(port: int, path: str, server: ServerProcess, timeout_s: float = 180) -> None:
    """Poll ``GET path`` on loopback ``port`` until it answers 200; raise with the server's
    log when the server exits or ``timeout_s`` passes."""
    import http.client

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"the server exited: {server.log_tail()}")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            connection.request("GET", path)
            if connection.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"the server on port {port} was not ready after {timeout_s} s: {server.log_tail()}")


# ----------------------------------------------------------------------------- database


def _embedded_server_running(pg: PostgresSettings) -> bool:
    pid_file = Path(pg.host) / "postmaster.pid"
    with contextlib.suppress(OSError, ValueError, IndexError):
        os.kill(int(pid_file.read_text().split()[0]), 0)
        return True
    return False


def _other_sessions(pg: PostgresSettings) -> int:
    import psycopg

    with psycopg.connect(pg.conninfo("postgres"), autocommit=True) as conn:
        return conn.execute("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' "
                            "AND pid <> pg_backend_pid()").fetchone()[0]


@contextlib.contextmanager
def embedded_server_stopped_if_started(pg: PostgresSettings) -> Iterator[None]:
    """Stop the embedded server at the end if it was not running at the start (this run
    started it) and no other client is connected to it then."""
    started_here = pg.embedded and not _embedded_server_running(pg)
    try:
        yield
    finally:
        if started_here and _embedded_server_running(pg):
            if _other_sessions(pg):
                progress(f"left the embedded server in {pg.host} running: other clients are connected")
            else:
                from materialize.database.server import stop_embedded

                stop_embedded(Path(pg.host))
                progress(f"stopped the embedded server in {pg.host} (this run started it)")


@contextlib.contextmanager
def throwaway_database(keep: bool = False, prefix: str = "interest_bench") -> Iterator[PostgresSettings]:
    """Settings of a new database ``<prefix>_<hex>`` on the configured server, dropped at
    the end (unless ``keep``), however the block ends."""
    from materialize.database.server import drop_database
    from materialize.settings import load_settings

    pg = load_settings().postgres.with_database(f"{prefix}_{uuid.uuid4().hex[:10]}")
    progress(f"benchmark database {pg.database} on {'embedded' if pg.embedded else 'external'} server {pg.host}")
    with embedded_server_stopped_if_started(pg):
        try:
            yield pg
        finally:
            if keep:
                progress(f"kept database {pg.database}")
            elif pg.embedded and not _embedded_server_running(pg):
                progress(f"database {pg.database} not dropped: the embedded server is not running")
            else:
                drop_database(pg)
                progress(f"dropped database {pg.database}")


def feature_repo_copy(source_dir: Path, dest_dir: Path, offline_store_type: str | None = None,
                      online_store_type: str | None = None, batch_engine_type: str | None = None) -> Path:
    """A copy of a Feast repo whose ``feature_store.yaml`` differs only in the ``type:``
    line of its ``offline_store``, ``online_store`` and/or ``batch_engine`` block (``None``
    keeps it).

    Both copies of one repo can share a registry and database: they hold the same objects,
    and a store type only changes which class reads and writes them.
    """
    import shutil

    shutil.copytree(source_dir, dest_dir, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "data"))
    wanted = {"offline_store:": offline_store_type, "online_store:": online_store_type,
              "batch_engine:": batch_engine_type}
    lines, block = [], None
    for line in (dest_dir / "feature_store.yaml").read_text().splitlines(keepends=True):
        if line and not line[0].isspace() and not line.startswith("#"):
            block = line.strip() if line.strip() in wanted else None
        elif block is not None and wanted[block] is not None and line.lstrip().startswith("type:"):
            indent = line[: len(line) - len(line.lstrip())]
            line = f"{indent}type: {wanted[block]}\n"
            wanted[block] = None  # replaced
        lines.append(line)
    missing = [key for key, value in wanted.items() if value is not None]
    if missing:
        raise ValueError(f"{source_dir}/feature_store.yaml has no 'type:' line under {missing}")
    (dest_dir / "feature_store.yaml").write_text("".join(lines))
    return dest_dir


def database_temp_bytes(pg: PostgresSettings, settle_s: float = 0.6, attempts: int = 8) -> int:
    """``pg_stat_database.temp_bytes`` of ``pg.database``, read once it has stopped moving.

    Backends report their temporary files when they end or go idle (at most once a second),
    so the figure can lag a call by a moment: it is read again until two reads ``settle_s``
    apart agree (at most ``attempts`` reads).
    """
    import psycopg

    last = None
    with psycopg.connect(pg.conninfo(), autocommit=True) as conn:
        for _ in range(attempts):
            conn.execute("SELECT pg_stat_clear_snapshot()")
            value = int(conn.execute("SELECT coalesce(temp_bytes, 0) FROM pg_stat_database WHERE datname = %s",
                                     (pg.database,)).fetchone()[0])
            if value == last:
                return value
            last = value
            time.sleep(settle_s)
    return last


def percentiles_ms(seconds: list[float]) -> dict:
    """p50, p99, mean and max of call durations (seconds in, milliseconds out)."""
    import numpy as np

    values = np.asarray(seconds) * 1000.0
    return {"calls": len(values), "p50_ms": round(float(np.percentile(values, 50)), 3),
            "p99_ms": round(float(np.percentile(values, 99)), 3), "mean_ms": round(float(values.mean()), 3),
            "max_ms": round(float(values.max()), 3)}


# ----------------------------------------------------------------------------- synthetic shop


def shop_config(args: argparse.Namespace) -> SyntheticConfig:
    """The synthetic shop of ``--events`` (when the script has it), ``--items``, ``--seed``."""
    import pandas as pd

    from materialize.ingest.sources.synthetic import SyntheticConfig, start_of_today

    end = start_of_today() - pd.Timedelta(days=1)  # room for a next day of events (feature_build_benchmark)
    if getattr(args, "events", None) is None:  # only the catalogue is used
        return SyntheticConfig(n_items=args.items, seed=args.seed, end=end)
    return SyntheticConfig.for_events(args.events, n_items=args.items, seed=args.seed, end=end)


def _shop_source(config: SyntheticConfig) -> str:
    return f"bench-synthetic(users={config.n_users}, items={config.n_items}, seed={config.seed}, end={config.end}, days={config.days})"


def load_catalogue(pipeline: Pipeline, config: SyntheticConfig) -> dict:
    """Generate the shop's catalogue and load it, each timed."""
    from materialize.ingest import loader as ingest
    from materialize.ingest.sources.synthetic import SyntheticShop

    with timed() as generation:
        items = SyntheticShop(config).items()
    progress(f"catalogue of {len(items):,} items generated in {generation.seconds:.2f} s")
    with timed() as load:
        report = ingest.load_frames(pipeline.conn, "items", [items], source=f"{_shop_source(config)}:items",
                                    **pipeline._load_kwargs())
    progress(f"items loaded: {report.summary()} in {load.seconds:.2f} s")
    return {"catalogue_generation_s": round(generation.seconds, 3),
            "items": {"rows_read": report.rows_read, "loaded": report.loaded, "quarantined": report.quarantined,
                      "seconds": round(load.seconds, 3), "rows_per_s": rate(report.loaded, load.seconds)}}


def load_events(pipeline: Pipeline, config: SyntheticConfig, session_suffix: str = "") -> dict:
    """Generate the shop's events lazily and load them; generation and loading timed apart.

    Args:
        session_suffix: appended to every session id, so that the sessions of a later load
            cannot merge with those already loaded.
    """
    from materialize.ingest import loader as ingest
    from materialize.ingest.sources.synthetic import SyntheticShop

    def rename_sessions(frame):
        frame["session_id"] = frame["session_id"] + session_suffix
        return frame

    frames = TimedFrames(SyntheticShop(config).events(), transform=rename_sessions if session_suffix else None)
    with timed() as total:
        report = ingest.load_frames(pipeline.conn, "events", frames, source=f"{_shop_source(config)}:events",
                                    total_rows=int(config.n_users * config.expected_events_per_user),
                                    **pipeline._load_kwargs())
    load_s = total.seconds - frames.seconds
    progress(f"events loaded: {report.summary()} in {total.seconds:.2f} s ({frames.seconds:.2f} s of it generating)")
    return {"users": config.n_users, "rows_read": report.rows_read, "loaded": report.loaded,
            "quarantined": report.quarantined, "duplicate": report.duplicate,
            "generation_s": round(frames.seconds, 3), "load_s": round(load_s, 3), "total_s": round(total.seconds, 3),
            "rows_per_s": rate(report.loaded, load_s), "rows_per_s_with_generation": rate(report.loaded, total.seconds)}


def ingest_shop(pipeline: Pipeline, config: SyntheticConfig) -> dict:
    """Catalogue, then events of a synthetic shop, each load timed on its own.

    The same loads as ``Pipeline.load_synthetic`` minus the planted-shift ground truth (an
    evaluation table that no feature reads).
    """
    catalogue = load_catalogue(pipeline, config)
    return {"config": {"n_users": config.n_users, "n_items": config.n_items, "n_categories": config.n_categories,
                       "days": config.days, "end": str(config.end), "seed": config.seed},
            **catalogue, "events": load_events(pipeline, config)}


# ----------------------------------------------------------------------------- subjects


@dataclasses.dataclass
class BenchRun:
    """What a subject measures on: the pipeline on the throw-away database, the options,
    the shop loaded first, and the sizes to report (steps add to them)."""

    pipeline: Pipeline
    args: argparse.Namespace
    shop: SyntheticConfig
    sizes: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Subject:
    """One measured step of the data plane.

    Attributes:
        key: its key in the results (and JSON).
        title: its name in the report header.
        needs: setup steps (keys of ``SETUP_STEPS``) that must have run before it.
        provides: the state it leaves behind, so that later subjects need no setup for it.
        measure: runs the step and returns its figures.
        render: its lines of the report, from its figures.
        add_options: adds its own command-line options.
        uses_events: whether it needs ``--events`` (the catalogue alone otherwise).
    """

    key: str
    title: str
    needs: tuple[str, ...]
    provides: tuple[str, ...]
    measure: Callable[[BenchRun], dict]
    render: Callable[[dict], list[str]]
    add_options: Callable[[argparse.ArgumentParser], None] = lambda parser: None
    uses_events: bool = True


def _setup_catalogue(run: BenchRun) -> None:
    load_catalogue(run.pipeline, run.shop)


def _setup_shop(run: BenchRun) -> None:
    ingest_shop(run.pipeline, run.shop)


def _setup_embeddings(run: BenchRun) -> None:
    with timed() as clock:
        report = run.pipeline.embed()
    progress(f"embedded {report.texts_embedded:,} item texts in {clock.seconds:.2f} s")


def _setup_features(run: BenchRun) -> None:
    with timed() as clock:
        report = run.pipeline.build(full=True)
    run.sizes["feature_tables"] = report.rows
    progress(f"full feature build in {clock.seconds:.2f} s")


def _setup_feast(run: BenchRun) -> None:
    with timed() as clock:
        import feast  # noqa: F401

        silence_known_warnings()
        with quiet(not run.args.progress):
            run.pipeline.apply()
    progress(f"feast imported and applied in {clock.seconds:.2f} s")


SETUP_STEPS: dict[str, Callable[[BenchRun], None]] = {
    "catalogue": _setup_catalogue,   # items only
    "shop": _setup_shop,             # items and events
    "embeddings": _setup_embeddings,  # item text embeddings
    "features": _setup_features,      # full feature build
    "feast": _setup_feast,            # feast apply
}
"""Untimed steps that bring the database to the state a subject needs, in this order."""
_IMPLIES = {"shop": ("catalogue",)}


def parse_args(subjects: list[Subject], description: str, out_name: str, argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    if any(subject.uses_events for subject in subjects):
        parser.add_argument("--events", type=int, default=1_000_000, help="synthetic events to generate (about)")
    parser.add_argument("--items", type=int, default=3000, help="catalogue size")
    parser.add_argument("--seed", type=int, default=7, help="seed of the synthetic shop (and of samples drawn from it)")
    for subject in subjects:
        subject.add_options(parser)
    parser.add_argument("--keep-db", action="store_true", help="keep the benchmark database afterwards")
    parser.add_argument("--progress", action="store_true", help="show the pipeline's progress bars and Feast output")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / out_name, help="JSON file for the figures")
    return parser.parse_args(argv)


def database_sizes(run: BenchRun) -> dict:
    conn = run.pipeline.conn
    events, users = conn.execute("SELECT count(*), count(DISTINCT user_id) FROM interest.events").fetchone()
    items = conn.execute("SELECT count(*) FROM interest.items").fetchone()[0]
    conn.commit()
    return {"events": events, "users": users, "items": items, **run.sizes}


def render_header(results: dict, title: str) -> list[str]:
    m, s = results["machine"], results["sizes"]
    return [
        "",
        "=" * 100,
        f"{title}, {results['date']}",
        f"command: {results['command']}",
        f"machine: {m['cpu_model']}, {m['cpu_cores']} cores, {m['ram_gib']} GiB RAM; {m['platform']}",
        f"software: Python {m['python']}, torch {m['torch']}, feast {m['feast']}, pandas {m['pandas']}, "
        f"pyarrow {m['pyarrow']}, psycopg {m['psycopg']}",
        f"postgres: {m['postgres']}",
        f"postgres settings: {m['postgres_settings']}",
        f"load average (1/5/15 min): start {results['load_average']['start']}, end {results['load_average']['end']}"
        f" ({m['cpu_cores']} cores; other work may have run concurrently)",
        f"peak memory of the benchmark process: {results['peak_memory_mib']:,} MiB (children and Postgres not counted)",
        "",
        "Sizes",
        table(["what", "rows"], [["events", s["events"]], ["users", s["users"]], ["items", s["items"]],
                                 *[[f"feature table {k}", v] for k, v in s.get("feature_tables", {}).items()],
                                 *([["online store rows (entity x feature)", s["online_rows"]]]
                                   if "online_rows" in s else [])]),
    ]


def run_subjects(subjects: list[Subject], title: str, description: str, out_name: str, argv=None,
                 summary: Callable[[dict], list[str]] | None = None) -> dict:
    """The ``main`` of a data-plane script: a throw-away database brought to the state the
    first subject needs, then each subject measured in turn; a report of every figure with
    machine info is printed and the same figures are written as JSON to ``--out``.

    The database is dropped (unless ``--keep-db``) and child processes are stopped however
    the run ends, Ctrl-C and SIGTERM included. ``summary``, when given, gets the results
    once every subject has run and returns the last lines of the report (it may add keys
    to the results, which go into the JSON).
    """
    from psycopg import sql

    from materialize.pipeline import Pipeline
    from materialize.settings import load_settings

    stop_on_sigterm()
    silence_known_warnings()
    args = parse_args(subjects, description, out_name, argv)
    results: dict = {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join([Path(sys.argv[0]).as_posix(), *(sys.argv[1:] if argv is None else argv)]),
        "load_average": {"start": load_average()},
    }
    with throwaway_database(keep=args.keep_db) as pg:
        results["database"] = pg.database
        try:
            settings = dataclasses.replace(load_settings(), postgres=pg)
            with Pipeline(settings, progress=args.progress) as pipeline:
                # a guard for the shared disk: a step whose temp files would fill it fails instead
                pipeline.conn.execute(sql.SQL("SET temp_file_limit = {}").format(sql.Literal(SETUP_TEMP_FILE_LIMIT)))
                pipeline.conn.commit()
                results["machine"] = machine_info(pipeline.conn)
                run = BenchRun(pipeline, args, shop_config(args))
                done: set[str] = set()
                for subject in subjects:
                    for step, setup in SETUP_STEPS.items():
                        if step in subject.needs and step not in done:
                            progress(f"setup for {subject.title.lower()}: {step}")
                            setup(run)
                            done.update((step, *_IMPLIES.get(step, ())))
                    progress(f"measuring: {subject.title.lower()}")
                    results[subject.key] = subject.measure(run)
                    done.update(subject.provides)
                    _write_json(args.out, {**results, "partial": True})  # what finished, should a later step fail
                results["sizes"] = database_sizes(run)
        finally:
            results["load_average"]["end"] = load_average()
            results["peak_memory_mib"] = peak_memory_mib()

    lines = render_header(results, title)
    for subject in subjects:
        lines += ["", *subject.render(results[subject.key])]
    if summary is not None:
        lines += ["", *summary(results)]
    print("\n".join([*lines, "=" * 100]), flush=True)
    _write_json(args.out, results)
    progress(f"figures written to {args.out}")
    return results


def _write_json(path: Path, results: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, default=str) + "\n")
