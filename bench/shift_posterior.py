"""The LSTM against both ceilings of the synthetic shop, on the same test decision points.

Two forecasts bound what a model of the events can reach:

* the oracle (``synthetic_oracle``) knows each user's hidden preference: no model can
  match it, as the events do not carry that state exactly;
* the posterior (``synthetic_posterior``) knows the generator's priors and constants but
  sees only the user's events: it is the best forecast from the information a model has.

``train_models`` runs as ``interest train`` does (nothing registered), then the posterior is
sampled for every test decision point, and ``compare_with_oracle`` prints next-category
accuracy@1 and log-loss, shift AUC and log-loss, and the item rankings that know the
popularity within each category, for the LSTM, the posterior and the oracle.

    .venv/bin/python bench/shift_posterior.py                 # the shop of make run
    .venv/bin/python bench/shift_posterior.py --sweeps 900    # longer chains

It reads the configured database (``interest env``); figures in
``bench/results/shift_posterior_seed<training seed>.json``. Nothing here asserts on time.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import time
from pathlib import Path

import numpy as np

from harness import load_average, machine_info, peak_memory_mib, progress, silence_known_warnings

RESULTS = Path(__file__).parent / "results"
"""Where ``shift_posterior_seed<training seed>.json`` goes (one file per training seed)."""
VIEW = 0  # interest.events.event_type of a view (materialize.ingest.schema.EVENT_TYPES)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sweeps", type=int, default=450, help="Metropolis-Hastings sweeps per chain")
    parser.add_argument("--burn-in", type=int, default=150, help="sweeps discarded before averaging")
    parser.add_argument("--chains", type=int, default=2, help="chains per decision point")
    parser.add_argument("--seed", type=int, default=None, help="training seed (default: training.yaml's)")
    args = parser.parse_args(argv)
    silence_known_warnings()
    import pandas as pd

    from interest_models.data.decision_points import decision_points
    from interest_models.data.feature_frames import service_features, user_features
    from interest_models.data.vocabulary import load_vocabulary
    from interest_models.evaluation.oracle import compare_with_oracle, synthetic_config_of
    from interest_models.training.recipe import BLEND, RANKER, train_models
    from materialize.cli import open_pipeline
    from materialize.database.tables import fetch_frame
    from materialize.ingest.sources.synthetic import SyntheticShop
    from materialize.ingest.sources.synthetic_posterior import posterior_forecast, session_histories

    with open_pipeline(progress=False) as pipeline:
        conn, store = pipeline.conn, pipeline.store
        config, reason = synthetic_config_of(conn)
        if config is None:
            raise SystemExit(f"no synthetic shop to compare with: {reason}")
        info = machine_info(conn)
        shop = SyntheticShop(config)
        progress("training as interest train does")
        started = time.perf_counter()
        overrides = {"training": {"seed": args.seed}} if args.seed is not None else None
        result = train_models(store, conn, dt.timedelta(minutes=pipeline.settings.pipeline.session_gap_minutes),
                              overrides=overrides, config_dir=pipeline.settings.config_dir)
        training_seconds = time.perf_counter() - started

        points = decision_points(conn, result.configs["training"], dt.timedelta(minutes=pipeline.settings.pipeline.session_gap_minutes))
        points = points[points.split == "test"].reset_index(drop=True)
        trained = result.timelines[result.timelines.split == "test"].reset_index(drop=True)
        if not (np.array_equal(points.user_id, trained.user_id) and np.array_equal(points.as_of, trained.as_of)):
            raise RuntimeError("the test decision points drawn again differ from the training run's")
        users = user_features(store, points, service_features(store))
        mix = np.stack(trained.predicted_mix.to_numpy())
        category_probabilities = np.hstack([np.zeros((len(mix), 1)), mix])  # column = category_id

        views = fetch_frame(conn, "SELECT e.user_id, e.session_id, e.event_timestamp, c.category "
                                  "FROM interest.events e JOIN interest.items i USING (item_id) "
                                  "JOIN interest.categories c USING (category_id) "
                                  "WHERE e.event_type = %(view)s AND e.user_id = ANY(%(users)s)",
                           {"view": VIEW, "users": sorted(set(points.user_id.tolist()))})
        histories = session_histories(shop, views, points.user_id.to_numpy(), points.label_time)
        progress(f"posterior of {len(points):,} test points ({args.chains} chains x {args.sweeps} sweeps, "
                 f"up to {histories.start.shape[1]} earlier sessions)")
        started = time.perf_counter()
        posterior = posterior_forecast(shop, histories, sweeps=args.sweeps, burn_in=args.burn_in, chains=args.chains,
                                       progress=True)
        posterior_seconds = time.perf_counter() - started
        comparison = compare_with_oracle(conn, points, users, category_probabilities, trained.shift_probability.to_numpy(),
                                         load_vocabulary(conn), posterior=posterior.next_category)

    spread = np.percentile(posterior.chain_spread, [50, 90, 99, 100])
    models = result.metrics.loc[[BLEND, RANKER, "LSTM"], ["HR@10", "NDCG@10"]]
    pd.set_option("display.width", 200)
    print(f"\nmachine: {info}\nload average {load_average()}; peak RSS {peak_memory_mib():,.0f} MiB; "
          f"training {training_seconds:.0f} s, posterior {posterior_seconds:.0f} s")
    print(f"\n{comparison.note}\n\n{comparison.table.round(4).to_string()}")
    print(f"\nItem rankings against all items, beside the models':\n{pd.concat([comparison.ranking, models]).round(4).to_string()}")
    print(f"\nchains: largest difference between two chains' forecasts, p50 {spread[0]:.3f}, p90 {spread[1]:.3f}, "
          f"p99 {spread[2]:.3f}, max {spread[3]:.3f}; acceptance "
          + ", ".join(f"{k} {v:.2f}" for k, v in posterior.acceptance.items()))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"shift_posterior_seed{result.configs['training']['seed']}.json").write_text(json.dumps({
        "machine": info, "load_average_end": load_average(), "sweeps": args.sweeps, "burn_in": args.burn_in,
        "chains": args.chains, "training_seconds": training_seconds, "posterior_seconds": posterior_seconds,
        "note": comparison.note, "table": comparison.table.to_dict(orient="index"),
        "ranking": pd.concat([comparison.ranking, models]).to_dict(orient="index"),
        "chain_spread_percentiles": {"50": spread[0], "90": spread[1], "99": spread[2], "100": spread[3]},
        "acceptance": posterior.acceptance,
    }, indent=2, default=str))


if __name__ == "__main__":
    main()
