"""``interest``: the command line of the whole project.

The root group mounts the data commands of ``materialize.cli`` and the model commands of
``interest_models.cli`` at its top level, and adds the two that span both packages or
neither: ``run`` (the pipeline, then training) and ``init`` (a new project folder).
"""
from __future__ import annotations

import logging
import warnings
from pathlib import Path

import click

from interest_models import cli as model_cli
from materialize import cli as data_cli
from materialize.feature_store.repo import FeatureRepoNotFound
from materialize.settings import SettingsError


class _Root(click.Group):
    """Turns configuration errors (bad settings, no feature repo) into a one-line error
    instead of a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (FeatureRepoNotFound, SettingsError) as error:
            raise click.ClickException(str(error)) from error


@click.group(cls=_Root)
@click.option("-v", "--verbose", is_flag=True, help="Log each step.")
def main(verbose: bool) -> None:
    """Feast feature store on PostgreSQL for e-commerce interest shifts: data, models, service."""
    # Feast's own Postgres code reads with pandas over psycopg and flags its on-demand views
    # as experimental on every call: neither is actionable here.
    warnings.filterwarnings("ignore", message="pandas only supports SQLAlchemy", category=UserWarning)
    warnings.filterwarnings("ignore", message="On demand feature view is an experimental feature", category=RuntimeWarning)
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


for group in (data_cli.commands, model_cli.commands):
    for command in group.commands.values():
        main.add_command(command)


@main.command()
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
def init(directory: Path) -> None:
    """Write a project folder: a Feast feature repo and the YAML configs."""
    from interest_shift.project import ProjectExists, init_project

    try:
        written = init_project(directory)
    except ProjectExists as error:
        raise click.ClickException(str(error)) from error
    home = directory.resolve()
    click.echo(f"wrote {len(written)} files into {home}:")
    for path in written:
        click.echo(f"  {path.relative_to(home)}")
    click.echo(f"\nnext:\n  export INTEREST_HOME={home}\n  interest run            # or: interest load files --items ... --events ...")


@main.command()
@click.option("--source", type=click.Choice(["synthetic", "movielens"]), default="synthetic", show_default=True)
@click.option("--users", type=int, default=None, help="Synthetic users (default 2000).")
@click.option("--items", type=int, default=None, help="Synthetic items (default 3000).")
@click.option("--events", type=int, default=None, help="Synthetic target events (overrides --users).")
@click.option("--seed", type=int, default=7, show_default=True)
@click.option("--train/--no-train", default=True, show_default=True, help="Also train, evaluate and register models.")
def run(source, users, items, events, seed, train) -> None:
    """Run everything end to end: load, embed, build, apply, materialize, train, then a sample lookup."""
    with data_cli.open_pipeline() as pipeline:
        if source == "synthetic":
            config = data_cli.synthetic_config(users, items, events, seed)
            summary = pipeline.run(lambda p: p.load_synthetic(config))
        else:
            summary = pipeline.run(lambda p: p.load_movielens())
        protocol = "time_split" if source == "synthetic" else "leave_one_out"
        training = model_cli.train_and_report(pipeline, protocol, None, True) if train else None
        sample_user = pipeline.conn.execute(
            "SELECT user_id FROM interest.events GROUP BY user_id ORDER BY count(*) DESC, user_id LIMIT 1"
        ).fetchone()[0]
        features = pipeline.lookup(sample_user)
    click.secho("\nSummary", bold=True)
    data_cli.print_loads(summary.loads)
    e = summary.embedding
    click.echo(f"embeddings: {e.texts_embedded:,} item texts embedded, {e.texts_cached:,} reused from the cache")
    f = summary.features
    click.echo(f"features ({f.mode}): " + ", ".join(f"{t} {n:,}" for t, n in f.rows.items()))
    data_cli.print_materialize(summary.materialize)
    click.echo("step seconds: " + ", ".join(f"{k} {v}" for k, v in summary.seconds.items()))
    click.secho(f"\nOnline features of user {sample_user} (the most active):", bold=True)
    data_cli.print_lookup(features)
    if training is not None:
        model_cli.print_training(training)


if __name__ == "__main__":
    main()
