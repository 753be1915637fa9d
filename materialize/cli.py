"""``interest``: the command line of the pipeline and the models.

The application layer over both packages: data commands use ``materialize``, ``train``
and ``models`` import ``interest_models`` when run. Every command works on the database
configured by the environment (see ``materialize.settings``): the embedded server by
default, started on first use.
"""
from __future__ import annotations

import logging
import shlex
import sys
import warnings
from pathlib import Path

import click

from materialize.settings import load_settings


def _pipeline(progress: bool = True):
    from materialize.pipeline import Pipeline

    return Pipeline(load_settings(), progress=progress)


def _print_loads(reports) -> None:
    for report in reports:
        click.echo(report.summary())
        for example in report.examples[:5]:
            click.secho(f"  quarantined: {example}", fg="yellow")
        if report.quarantined > 5:
            click.secho(f"  ... {report.quarantined - 5} more in interest.quarantine (see `interest status`)", fg="yellow")


def _synthetic_config(users: int | None, items: int | None, events: int | None, seed: int):
    from materialize.sources.synthetic import SyntheticConfig

    overrides = {"seed": seed, "n_items": items or SyntheticConfig.n_items}
    if events:
        return SyntheticConfig.for_events(events, **overrides)
    return SyntheticConfig(n_users=users or SyntheticConfig.n_users, **overrides)


@click.group()
@click.option("-v", "--verbose", is_flag=True, help="Log each step.")
def main(verbose: bool) -> None:
    """Feast feature pipeline for e-commerce interest shifts (PostgreSQL)."""
    # Feast's own Postgres code reads with pandas over psycopg and flags its on-demand views
    # as experimental on every call: neither is actionable here.
    warnings.filterwarnings("ignore", message="pandas only supports SQLAlchemy", category=UserWarning)
    warnings.filterwarnings("ignore", message="On demand feature view is an experimental feature", category=RuntimeWarning)
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


@main.group()
def load() -> None:
    """Validate and bulk-load data (bad rows are quarantined, reloading is safe)."""


@load.command("synthetic")
@click.option("--users", type=int, default=None, help="Number of users (default 2000).")
@click.option("--items", type=int, default=None, help="Number of items (default 3000).")
@click.option("--events", type=int, default=None, help="Target number of events (overrides --users).")
@click.option("--seed", type=int, default=7, show_default=True)
def load_synthetic(users, items, events, seed) -> None:
    """Generate the synthetic shop with planted interest shifts and load it."""
    with _pipeline() as pipeline:
        _print_loads(pipeline.load_synthetic(_synthetic_config(users, items, events, seed)))


@load.command("movielens")
def load_movielens() -> None:
    """Load MovieLens-100K from the recbole 1.2.1 wheel (downloaded once from PyPI)."""
    with _pipeline() as pipeline:
        _print_loads(pipeline.load_movielens())


@load.command("files")
@click.option("--items", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="Item catalogue CSV/Parquet.")
@click.option("--events", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="Events CSV/Parquet.")
@click.option("--strict", is_flag=True, help="Exit with status 1 when any row was quarantined.")
def load_files(items, events, strict) -> None:
    """Load your own files in the documented schema (see README)."""
    from materialize.validation import SchemaError

    if items is None and events is None:
        raise click.UsageError("give --items and/or --events")
    with _pipeline() as pipeline:
        try:
            reports = pipeline.load_files(items=items, events=events)
        except SchemaError as error:
            raise click.ClickException(str(error))
    _print_loads(reports)
    if strict and any(r.quarantined for r in reports):
        sys.exit(1)


@main.command()
@click.option("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available).")
def embed(device) -> None:
    """Embed item texts that are new or changed (all-MiniLM-L6-v2)."""
    with _pipeline() as pipeline:
        report = pipeline.embed(device=device)
    click.echo(f"embedded {report.texts_embedded:,} texts ({report.texts_cached:,} cached), "
               f"{report.item_versions_added:,} item versions added")


@main.command()
@click.option("--full", is_flag=True, help="Recompute everything instead of only what changed.")
def build(full) -> None:
    """Compute the feature-source tables in SQL (incremental by default)."""
    with _pipeline() as pipeline:
        report = pipeline.build(full=full)
    click.echo(f"{report.mode}: {report.new_events:,} new events, {report.users_recomputed:,} users and "
               f"{report.items_recomputed:,} items recomputed")
    for table, rows in report.rows.items():
        click.echo(f"  {table:<28} {rows:>12,} rows  {report.seconds.get(table, 0):>7.2f} s")


@main.command()
def apply() -> None:
    """Register the feature repo (same as `feast apply` in feature_repo/)."""
    with _pipeline() as pipeline:
        pipeline.apply()


@main.command()
def materialize() -> None:
    """Load the latest feature values into the online store."""
    with _pipeline() as pipeline:
        report = pipeline.materialize()
    _print_materialize(report)


def _print_materialize(report) -> None:
    click.echo(f"materialized {report.views} views up to {report.end:%Y-%m-%d %H:%M} UTC in {report.seconds:.1f} s")
    for view, entities in sorted(report.online_rows.items()):
        click.echo(f"  {view:<26} {entities:>10,} entities online")


@main.command()
@click.argument("user_id", type=int)
def lookup(user_id) -> None:
    """Print a user's features from the online store."""
    with _pipeline(progress=False) as pipeline:
        _print_lookup(pipeline.lookup(user_id))


def _print_lookup(features: dict) -> None:
    for name, values in sorted(features.items()):
        value = values[0]
        if isinstance(value, list) and len(value) > 8:
            value = f"[{', '.join(f'{v:.3g}' if isinstance(v, float) else str(v) for v in value[-8:])}] (last 8 of {len(value)})"
        click.echo(f"  {name:<28} {value}")


@main.command()
def status() -> None:
    """Row counts, watermarks, recent loads and the quarantine summary."""
    import pandas as pd

    with _pipeline(progress=False) as pipeline:
        sections = pipeline.status()
    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.max_colwidth", 60):
        for title, frame in sections.items():
            click.secho(f"\n{title}", bold=True)
            click.echo("  (none)" if frame.empty else frame.to_string(index=False))


@main.command()
@click.option("--source", type=click.Choice(["synthetic", "movielens"]), default="synthetic", show_default=True)
@click.option("--users", type=int, default=None, help="Synthetic users (default 2000).")
@click.option("--items", type=int, default=None, help="Synthetic items (default 3000).")
@click.option("--events", type=int, default=None, help="Synthetic target events (overrides --users).")
@click.option("--seed", type=int, default=7, show_default=True)
@click.option("--train/--no-train", default=True, show_default=True, help="Also train, evaluate and register models.")
def run(source, users, items, events, seed, train) -> None:
    """Run everything end to end: load, embed, build, apply, materialize, train, then a sample lookup."""
    with _pipeline() as pipeline:
        if source == "synthetic":
            config = _synthetic_config(users, items, events, seed)
            summary = pipeline.run(lambda p: p.load_synthetic(config))
        else:
            summary = pipeline.run(lambda p: p.load_movielens())
        training = _train(pipeline, "time_split" if source == "synthetic" else "leave_one_out", None, True) if train else None
        sample_user = pipeline.conn.execute(
            "SELECT user_id FROM interest.events GROUP BY user_id ORDER BY count(*) DESC, user_id LIMIT 1"
        ).fetchone()[0]
        features = pipeline.lookup(sample_user)
    click.secho("\nSummary", bold=True)
    _print_loads(summary.loads)
    e = summary.embedding
    click.echo(f"embeddings: {e.texts_embedded:,} item texts embedded, {e.texts_cached:,} reused from the cache")
    f = summary.features
    click.echo(f"features ({f.mode}): " + ", ".join(f"{t} {n:,}" for t, n in f.rows.items()))
    _print_materialize(summary.materialize)
    click.echo("step seconds: " + ", ".join(f"{k} {v}" for k, v in summary.seconds.items()))
    click.secho(f"\nOnline features of user {sample_user} (the most active):", bold=True)
    _print_lookup(features)
    if training is not None:
        _print_training(training)


def _train(pipeline, protocol: str, device: str | None, serve: bool):
    from interest_models.workflow import train_register_report

    return train_register_report(pipeline, protocol=protocol, device=device, serve=serve)


def _print_training(run) -> None:
    import pandas as pd

    result = run.result
    click.secho(f"\nModels ({result.data_window['protocol']}, {result.device}); test, ranked against all items:", bold=True)
    with pd.option_context("display.width", 200, "display.float_format", "{:.4f}".format):
        click.echo(result.metrics[["HR@10", "NDCG@10", "MRR@10", "MRR"]].to_string())
    for name, value in {**result.category_metrics, **result.shift_metrics}.items():
        click.echo(f"  {name}: {value:.4f}" if isinstance(value, float) else f"  {name}: {value}")
    click.echo(f"blend weight on the LSTM: {result.blend.lstm_weight:.2f} (chosen on validation)")
    if run.version:
        click.echo(f"registered version {run.version}" + (" (now serving)" if run.serving else ""))
    click.echo(f"report: {run.report}")


@main.command()
@click.option("--protocol", type=click.Choice(["time_split", "leave_one_out"]), default="time_split", show_default=True)
@click.option("--device", default=None, help="cpu or cuda (default: cuda when available).")
@click.option("--serve", is_flag=True, help="Mark the new version as the serving one.")
def train(protocol, device, serve) -> None:
    """Train, evaluate and register the LSTM, the ranker and their blend."""
    with _pipeline() as pipeline:
        _print_training(_train(pipeline, protocol, device, serve))


@main.group()
def models() -> None:
    """The model registry (models/registry)."""


@models.command("list")
def models_list() -> None:
    """List registered versions with their test metrics."""
    from interest_models.workflow import registry_for

    listing = registry_for(load_settings().project_dir).listing()
    click.echo("no versions registered" if listing.empty else listing.to_string(index=False))


@models.command("serve")
@click.argument("version")
def models_serve(version) -> None:
    """Mark VERSION as the serving version (after verifying its checksums)."""
    from interest_models.registry import RegistryError
    from interest_models.workflow import registry_for

    try:
        registry_for(load_settings().project_dir).set_serving(version)
    except RegistryError as error:
        raise click.ClickException(str(error))
    click.echo(f"serving {version}")


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1), help="Worker processes (each loads the model).")
@click.option("--version", "model_version", default=None, help="Model version (default: the serving one).")
def serve(host, port, workers, model_version) -> None:
    """Start the HTTP service (needs INTEREST_API_KEY); docs at /docs."""
    import os

    import uvicorn

    if not os.environ.get("INTEREST_API_KEY"):
        raise click.ClickException("set INTEREST_API_KEY: clients send it in the X-API-Key header")
    load_settings()  # fail here, not in every worker, on bad configuration
    if model_version:
        os.environ["INTEREST_MODEL_VERSION"] = model_version
    uvicorn.run("interest_models.service:app_from_environment", factory=True, host=host, port=port, workers=workers,
                log_level="warning")


@main.command()
def env() -> None:
    """Print `export` lines for the stock `feast` CLI: eval "$(interest env)"."""
    from materialize.postgres import connect, enable_pgvector, ensure_database

    settings = load_settings()
    ensure_database(settings.postgres)
    with connect(settings.postgres) as conn:
        pgvector = enable_pgvector(conn)
    for name, value in settings.postgres.feast_environment(pgvector).items():
        click.echo(f"export {name}={shlex.quote(value)}")


@main.command()
def stop() -> None:
    """Stop the embedded PostgreSQL server."""
    from materialize.postgres import stop_embedded

    settings = load_settings()
    if not settings.postgres.embedded:
        raise click.ClickException("INTEREST_PG_HOST is set: the server is external, not ours to stop")
    stopped = stop_embedded(Path(settings.postgres.host))
    click.echo("stopped" if stopped else "not running")


if __name__ == "__main__":
    main()
