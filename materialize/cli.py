"""The data commands of ``interest``: load, embed, build, apply, materialize, status, lookup.

``commands`` is a click group whose commands the root ``interest`` command line
(``interest_shift.cli``) mounts at its top level, beside those of ``interest_models``.
Every command works on the database configured by the environment (see
``materialize.settings``): the embedded server by default, started on first use. Heavy
modules are imported inside commands, so ``interest --help`` stays fast.
"""
from __future__ import annotations

import shlex
import sys
from pathlib import Path

import click

from materialize.settings import load_settings


def open_pipeline(progress: bool = True):
    """A ``Pipeline`` on the configured database (use it as a context manager)."""
    from materialize.pipeline import Pipeline

    return Pipeline(load_settings(), progress=progress)


def print_loads(reports) -> None:
    for report in reports:
        click.echo(report.summary())
        for example in report.examples[:5]:
            click.secho(f"  quarantined: {example}", fg="yellow")
        if report.quarantined > 5:
            click.secho(f"  ... {report.quarantined - 5} more in interest.quarantine (see `interest status`)", fg="yellow")


def synthetic_config(users: int | None, items: int | None, events: int | None, seed: int):
    from materialize.ingest.sources.synthetic import SyntheticConfig

    overrides = {"seed": seed, "n_items": items or SyntheticConfig.n_items}
    if events:
        return SyntheticConfig.for_events(events, **overrides)
    return SyntheticConfig(n_users=users or SyntheticConfig.n_users, **overrides)


@click.group()
def commands() -> None:
    """Data commands (mounted at the top level of ``interest``)."""


@commands.group()
def load() -> None:
    """Validate and bulk-load data (bad rows are quarantined, reloading is safe)."""


@load.command("synthetic")
@click.option("--users", type=int, default=None, help="Number of users (default 2000).")
@click.option("--items", type=int, default=None, help="Number of items (default 3000).")
@click.option("--events", type=int, default=None, help="Target number of events (overrides --users).")
@click.option("--seed", type=int, default=7, show_default=True)
def load_synthetic(users, items, events, seed) -> None:
    """Generate the synthetic shop with planted interest shifts and load it."""
    with open_pipeline() as pipeline:
        print_loads(pipeline.load_synthetic(synthetic_config(users, items, events, seed)))


@load.command("movielens")
def load_movielens() -> None:
    """Load MovieLens-100K from the recbole 1.2.1 wheel (downloaded once from PyPI)."""
    with open_pipeline() as pipeline:
        print_loads(pipeline.load_movielens())


@load.command("files")
@click.option("--items", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="Item catalogue CSV/Parquet.")
@click.option("--events", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="Events CSV/Parquet.")
@click.option("--strict", is_flag=True, help="Exit with status 1 when any row was quarantined.")
def load_files(items, events, strict) -> None:
    """Load your own files in the documented schema (see README)."""
    from materialize.ingest.validation import UnreadableInput

    if items is None and events is None:
        raise click.UsageError("give --items and/or --events")
    with open_pipeline() as pipeline:
        try:
            reports = pipeline.load_files(items=items, events=events)
        except UnreadableInput as error:
            raise click.ClickException(str(error))
    print_loads(reports)
    if strict and any(r.quarantined for r in reports):
        sys.exit(1)


@commands.command()
@click.option("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available).")
def embed(device) -> None:
    """Embed item texts that are new or changed (all-MiniLM-L6-v2)."""
    with open_pipeline() as pipeline:
        report = pipeline.embed(device=device)
    click.echo(f"embedded {report.texts_embedded:,} texts ({report.texts_cached:,} cached), "
               f"{report.item_versions_added:,} item versions added")


@commands.command()
@click.option("--full", is_flag=True, help="Recompute everything instead of only what changed.")
def build(full) -> None:
    """Compute the feature-source tables in SQL (incremental by default)."""
    with open_pipeline() as pipeline:
        report = pipeline.build(full=full)
    click.echo(f"{report.mode}: {report.new_events:,} new events, {report.users_recomputed:,} users and "
               f"{report.items_recomputed:,} items recomputed")
    for table, rows in report.rows.items():
        click.echo(f"  {table:<28} {rows:>12,} rows  {report.seconds.get(table, 0):>7.2f} s")


@commands.command()
def apply() -> None:
    """Register the feature repo (same as `feast apply` in feature_repo/)."""
    with open_pipeline() as pipeline:
        pipeline.apply()


@commands.command()
def materialize() -> None:
    """Load the latest feature values into the online store."""
    with open_pipeline() as pipeline:
        report = pipeline.materialize()
    print_materialize(report)


def print_materialize(report) -> None:
    click.echo(f"materialized {report.views} views up to {report.end:%Y-%m-%d %H:%M} UTC in {report.seconds:.1f} s")
    for view, entities in sorted(report.online_rows.items()):
        click.echo(f"  {view:<26} {entities:>10,} entities online")


@commands.command()
@click.argument("user_id", type=int)
def lookup(user_id) -> None:
    """Print a user's features from the online store."""
    with open_pipeline(progress=False) as pipeline:
        print_lookup(pipeline.lookup(user_id))


def print_lookup(features: dict) -> None:
    """One line per feature; floats rounded to 4 decimals, lists as their last 8 values."""
    def shown(value) -> str:
        return str(round(value, 4)) if isinstance(value, float) else str(value)

    for name, values in sorted(features.items()):
        value = values[0]
        if isinstance(value, list):
            text = f"[{', '.join(shown(v) for v in value[-8:])}]" + (f" (last 8 of {len(value)})" if len(value) > 8 else "")
        else:
            text = shown(value)
        click.echo(f"  {name:<28} {text}")


@commands.command()
def status() -> None:
    """Row counts, watermarks, recent loads and the quarantine summary."""
    import pandas as pd

    with open_pipeline(progress=False) as pipeline:
        sections = pipeline.status()
    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.max_colwidth", 60):
        for title, frame in sections.items():
            click.secho(f"\n{title}", bold=True)
            click.echo("  (none)" if frame.empty else frame.to_string(index=False))


@commands.command()
def env() -> None:
    """Print `export` lines for the stock `feast` CLI: eval "$(interest env)"."""
    from materialize.database.server import connect, enable_pgvector, ensure_database

    settings = load_settings()
    ensure_database(settings.postgres)
    with connect(settings.postgres) as conn:
        pgvector = enable_pgvector(conn)
    variables = settings.postgres.feast_environment(pgvector) | (settings.spark.feast_environment() if settings.spark else {})
    for name, value in variables.items():
        click.echo(f"export {name}={shlex.quote(value)}")


@commands.command()
def stop() -> None:
    """Stop the embedded PostgreSQL server."""
    from materialize.database.server import stop_embedded

    settings = load_settings()
    if not settings.postgres.embedded:
        raise click.ClickException("INTEREST_PG_HOST is set: the server is external, not ours to stop")
    stopped = stop_embedded(Path(settings.postgres.host))
    click.echo("stopped" if stopped else "not running")
