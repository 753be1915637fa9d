"""The model commands of ``interest``: train, models (list, serve), serve.

``commands`` is a click group whose commands the root ``interest`` command line
(``interest_shift.cli``) mounts at its top level. Heavy modules are imported inside
commands, so ``interest --help`` stays fast.
"""
from __future__ import annotations

import click

from materialize.cli import open_pipeline
from materialize.settings import load_settings


@click.group()
def commands() -> None:
    """Model commands (mounted at the top level of ``interest``)."""


def train_and_report(pipeline, protocol: str, device: str | None, serve: bool):
    from interest_models.training.workflow import train_register_report

    return train_register_report(pipeline, protocol=protocol, device=device, serve=serve)


def print_training(run) -> None:
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


@commands.command()
@click.option("--protocol", type=click.Choice(["time_split", "leave_one_out"]), default="time_split", show_default=True)
@click.option("--device", default=None, help="cpu or cuda (default: cuda when available).")
@click.option("--serve", is_flag=True, help="Mark the new version as the serving one.")
def train(protocol, device, serve) -> None:
    """Train, evaluate and register the LSTM, the ranker and their blend."""
    with open_pipeline() as pipeline:
        print_training(train_and_report(pipeline, protocol, device, serve))


@commands.group()
def models() -> None:
    """The model registry (models/registry)."""


@models.command("list")
def models_list() -> None:
    """List registered versions with their test metrics."""
    from interest_models.registry.model_registry import registry_for

    listing = registry_for(load_settings().project_dir).listing()
    click.echo("no versions registered" if listing.empty else listing.to_string(index=False))


@models.command("serve")
@click.argument("version")
def models_serve(version) -> None:
    """Mark VERSION as the serving version (after verifying its checksums)."""
    from interest_models.registry.model_registry import RegistryError, registry_for

    try:
        registry_for(load_settings().project_dir).set_serving(version)
    except RegistryError as error:
        raise click.ClickException(str(error))
    click.echo(f"serving {version}")


@commands.command()
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
    uvicorn.run("interest_models.serving.http_app:app_from_environment", factory=True, host=host, port=port, workers=workers,
                log_level="warning")
