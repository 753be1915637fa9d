"""The model commands of ``interest``: train, retrain, models (list, serve), serve, policy (update, evaluate, drift).

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


EXIT_PROMOTED, EXIT_NOT_PROMOTED, EXIT_NOTHING_TO_DO = 0, 3, 99


@commands.command(epilog="Exit status: 0 a new version was promoted (restart `interest serve` to load it); "
                         "3 retrained but not promoted (the serving model stays); 99 nothing to do (no drift, or the "
                         "drift was already retrained on; Airflow's BashOperator marks the task skipped); "
                         "1 an error; 2 a usage error.")
@click.option("--if-drift", is_flag=True, help="Retrain only when the drift monitor flags one of the last --days days "
                                               "(once per drift episode). Without it: retrain now.")
@click.option("--days", default=1, show_default=True, type=click.IntRange(1), help="Days, up to the newest event, whose "
                                                                                   "drift triggers a retraining.")
@click.option("--window", default=7, show_default=True, type=click.IntRange(2), help="Days each day is compared with.")
@click.option("--min-gain", default=0.0, show_default=True, type=float,
              help="Test NDCG@10 the new version must gain over the serving one to be promoted.")
@click.option("--no-build", is_flag=True, help="Skip the incremental feature build (already run by the pipeline).")
@click.option("--device", default=None, help="cpu or cuda (default: cuda when available).")
def retrain(if_drift, days, window, min_gain, no_build, device) -> None:
    """Retrain on drift (or now), compare with the serving model on the same recent test points, promote if better."""
    from interest_models.training.retraining import RetrainingError, retrain as run_retraining

    with open_pipeline() as pipeline:
        try:
            outcome = run_retraining(pipeline, if_drift, days, window, min_gain, build=not no_build, device=device,
                                     say=lambda line: click.echo(line, err=True))
        except RetrainingError as error:
            raise click.ClickException(str(error))
    if outcome.challenger is None:
        click.echo(f"{outcome.action}: {outcome.reason}; nothing retrained")
        click.get_current_context().exit(EXIT_NOTHING_TO_DO)
    click.echo(f"new version {outcome.challenger} ({outcome.action}): {outcome.reason}")
    if outcome.promoted:
        click.echo(f"now serving {outcome.challenger} (was {outcome.serving or 'none'}); restart `interest serve` to load it")
    else:
        click.echo(f"still serving {outcome.serving}")
    click.echo(f"report: {outcome.report}")
    click.get_current_context().exit(EXIT_PROMOTED if outcome.promoted else EXIT_NOT_PROMOTED)


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


@commands.group()
def policy() -> None:
    """The recommendation policies: learn the bandit from the impression log, evaluate off-policy."""


def _logged_window(conn, days: int):
    """The log of the ``days`` days up to its newest list, and the window's bounds."""
    import datetime as dt

    from interest_models.feedback.impression_log import read_feedback

    newest = conn.execute("SELECT max(served_at) FROM interest.recommendations").fetchone()[0]
    if newest is None:
        raise click.ClickException("the impression log is empty: serve /recommend first")
    until = newest + dt.timedelta(microseconds=1)
    since = until - dt.timedelta(days=days)
    recommendations, impressions = read_feedback(conn, since, until)
    return recommendations, impressions, since, until


def _embedding_lookup(conn):
    """item ids -> their newest text embeddings (L2-normalised), from interest.item_embeddings."""
    import numpy as np

    rows = conn.execute("SELECT DISTINCT ON (item_id) item_id, embedding FROM interest.item_embeddings "
                        "ORDER BY item_id, event_timestamp DESC").fetchall()
    conn.commit()
    if not rows:
        return None
    index = {int(item): n for n, (item, _) in enumerate(rows)}
    matrix = np.array([e for _, e in rows], np.float64)
    matrix /= np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)
    zeros = np.zeros(matrix.shape[1])
    return lambda ids: np.array([matrix[index[int(i)]] if int(i) in index else zeros for i in ids])


def _context_columns(recommendations):
    from interest_models.policies.context import CONTEXT_COLUMNS, context_columns

    dims = set(recommendations.context_dim[recommendations.context_dim > 0])
    if len(dims) != 1:
        raise click.ClickException(f"the logged lists have contexts of {len(dims)} widths: evaluate a shorter window")
    return context_columns(dims.pop() - len(CONTEXT_COLUMNS))


@policy.command("evaluate")
@click.option("--days", default=7, show_default=True, type=click.IntRange(1), help="Days of the log, up to its newest list.")
@click.option("--version", "policy_version", default=None, help="Bandit version (default: the serving one, else its prior).")
@click.option("--boot", default=500, show_default=True, type=click.IntRange(50), help="Bootstrap resamples.")
def policy_evaluate(days, policy_version, boot) -> None:
    """Off-policy CTR and CVR of greedy and bandit from the logged lists (IPS, SNIPS, DR, 95 % intervals)."""
    import datetime as dt

    import pandas as pd

    from interest_models.config import load_config
    from interest_models.evaluation.replay import off_policy_table
    from interest_models.feedback.impression_log import read_feedback
    from interest_models.policies.reranking import BanditPolicy, GreedyPolicy
    from interest_models.registry.model_registry import RegistryError, registry_for
    from interest_models.registry.policy_registry import PolicyRegistry
    from materialize.database.server import connect

    settings = load_settings()
    registry = PolicyRegistry(registry_for(settings.project_dir).root / "policies")
    with connect(settings.postgres) as conn:
        recommendations, impressions, since, until = _logged_window(conn, days)
        columns = _context_columns(recommendations)
        config = load_config("policy", None, settings.config_dir)
        try:
            bandit = (registry.load(policy_version, columns) if policy_version or registry.serving_version()
                      else BanditPolicy.untrained(columns, config))
            learned_until = registry.manifest(bandit.version).get("learned_until") if bandit.version else None
        except RegistryError as error:
            raise click.ClickException(str(error))
        learned_until = dt.datetime.fromisoformat(learned_until) if learned_until else None
        # A version fitted to the log's own clicks (its item effects above all) looks better on
        # that log than it is: evaluate it on the lists logged after it learned, where there are any.
        sample_note = ""
        if learned_until and learned_until > since:
            held_out, held_out_impressions = read_feedback(conn, learned_until, until)
            if len(held_out):
                sample_note = (f"only the {len(held_out):,} lists logged after bandit {bandit.version} learned "
                               f"({learned_until:%Y-%m-%d %H:%M} UTC) of {len(recommendations):,}")
                recommendations, impressions, since = held_out, held_out_impressions, learned_until
            else:
                sample_note = (f"IN-SAMPLE: bandit {bandit.version} learned from every one of these lists, so its rows "
                               f"are optimistic (it is fitted to these very clicks); evaluate it again once lists logged "
                               f"after {learned_until:%Y-%m-%d %H:%M} UTC exist")
        exploit = BanditPolicy(bandit.bandit, {**bandit.config, "exploration": 0.0, "exploration_min": 0.0}, bandit.version,
                               bandit.effects)
        targets = {"greedy": GreedyPolicy(), f"bandit {bandit.version or '(prior)'}": bandit,
                   f"bandit {bandit.version or '(prior)'}, no exploration": exploit}
        try:
            table, exponent = off_policy_table(recommendations, impressions, targets, _embedding_lookup(conn), n_boot=boot)
        except ValueError as error:
            raise click.ClickException(str(error))
    click.echo(f"log {since:%Y-%m-%d %H:%M} to {until:%Y-%m-%d %H:%M} UTC: {len(recommendations):,} lists, "
               f"{len(impressions):,} impressions; examination fitted on the random lists: theta_j = j ** -{exponent:.2f}")
    if sample_note:
        click.echo(sample_note)
    with pd.option_context("display.width", 200, "display.float_format", "{:.4f}".format, "display.max_rows", 200):
        click.echo(table.to_string(index=False))


@policy.command("update")
@click.option("--days", default=7, show_default=True, type=click.IntRange(1),
              help="Days of the log to learn from when the bandit has learned nothing yet.")
@click.option("--serve", is_flag=True, help="Mark the new version as the one /recommend uses for policy: bandit.")
def policy_update(days, serve) -> None:
    """Learn the bandit from the lists logged since its last update and register a new version."""
    import datetime as dt

    from interest_models.config import load_config
    from interest_models.feedback.impression_log import read_feedback
    from interest_models.policies.learning import learn_from_log
    from interest_models.policies.reranking import BanditPolicy
    from interest_models.registry.model_registry import registry_for
    from interest_models.registry.policy_registry import PolicyRegistry
    from materialize.database.server import connect

    settings = load_settings()
    registry = PolicyRegistry(registry_for(settings.project_dir).root / "policies")
    with connect(settings.postgres) as conn:
        recommendations, _, since, until = _logged_window(conn, days)
        columns = _context_columns(recommendations)
        serving = registry.serving_version()
        if serving:
            bandit = registry.load(serving, columns)
            since = dt.datetime.fromisoformat(registry.manifest(serving)["learned_until"])
        else:
            bandit = BanditPolicy.untrained(columns, load_config("policy", None, settings.config_dir))
        learned, day = 0, since
        while day < until:  # one day at a time, forgetting a share of the past after each
            end = min(until, day + dt.timedelta(days=1))
            recommendations, impressions = read_feedback(conn, day, end)
            learned += learn_from_log(bandit, recommendations[recommendations.context_dim > 0], impressions)
            if end - day == dt.timedelta(days=1):
                bandit.end_day()
            day = end
    version = registry.register(bandit, columns, {"learned_from": since.isoformat(), "learned_until": until.isoformat(),
                                                   "learned_impressions": learned, "previous": serving})
    if serve:
        registry.set_serving(version)
    click.echo(f"policy {version}: learned from {learned:,} impressions logged {since:%Y-%m-%d %H:%M} to "
               f"{until:%Y-%m-%d %H:%M} UTC" + (" (now serving)" if serve else ""))


@policy.command("drift")
@click.option("--days", default=7, show_default=True, type=click.IntRange(1), help="Days to report, up to the newest event.")
@click.option("--window", default=7, show_default=True, type=click.IntRange(1), help="Days each day is compared with.")
def policy_drift(days, window) -> None:
    """Drift of the population's category mix (events answering no recommendation), the logged CTR and the shift rate, day by day."""
    from interest_models.feedback.drift import daily_signals
    from materialize.database.server import connect

    with connect(load_settings().postgres) as conn:
        signals = daily_signals(conn, days, window)
    if not signals:
        raise click.ClickException("no events to monitor")
    click.echo(f"{'day':<10}  {'JS div.':>8}  {'p-value':>9}  {'CTR':>7}  {f'CTR {window}d':>7}  {'shift':>6}  "
               f"{f'sh. {window}d':>6}  drift")
    for s in signals:
        click.echo(f"{s.day!s:<10}  {s.divergence:8.4f}  {s.p_value:9.2e}  {s.ctr:7.4f}  {s.baseline_ctr:7.4f}  "
                   f"{s.shift_rate:6.3f}  {s.baseline_shift_rate:6.3f}  " + (f"DRIFT: {', '.join(s.reasons)}" if s.drifted else "-"))
