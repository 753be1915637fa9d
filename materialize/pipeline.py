"""The pipeline facade: raw data -> Postgres -> SQL features -> embeddings -> Feast.

Each verb is one step and safe to repeat; ``run`` chains them. The CLI is a thin layer
over this class, and tests drive it directly on a throw-away database.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import psycopg
from psycopg.types.json import Jsonb

from materialize.ingest import loader as ingest
from materialize.database.tables import create_schema, fetch_frame
from materialize.features.builder import FeatureBuildReport, build_features
from materialize.ingest.loader import IngestReport
from materialize.database.server import connect, enable_pgvector, ensure_database
from materialize.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class RunSummary:
    """What one end-to-end run did (printed by ``interest run``)."""

    loads: list[IngestReport] = field(default_factory=list)
    features: FeatureBuildReport | None = None
    embedding: object | None = None
    materialize: object | None = None
    seconds: dict[str, float] = field(default_factory=dict)


class Pipeline:
    """Steps of the feature pipeline against one database.

    Args:
        settings: connection, project folder and pipeline config (``load_settings()``).
        progress: show progress bars.
    """

    def __init__(self, settings: Settings, progress: bool = True):
        self.settings = settings
        self.progress = progress
        ensure_database(settings.postgres)
        self.conn: psycopg.Connection = connect(settings.postgres)
        self.pgvector = enable_pgvector(self.conn)
        create_schema(self.conn)
        self._store = None

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> "Pipeline":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ loading

    def _load_kwargs(self) -> dict:
        return {"future_tolerance_s": self.settings.pipeline.future_tolerance_seconds,
                "min_event_time": self.settings.pipeline.min_event_time, "progress": self.progress}

    def load_files(self, items: Path | None = None, events: Path | None = None) -> list[IngestReport]:
        """Load a catalogue and/or an events file (CSV or Parquet, documented schema)."""
        reports = []
        chunk_rows = self.settings.pipeline.ingest_chunk_rows
        if items is not None:
            reports.append(ingest.load_file(self.conn, "items", Path(items), chunk_rows, **self._load_kwargs()))
        if events is not None:
            reports.append(ingest.load_file(self.conn, "events", Path(events), chunk_rows, **self._load_kwargs()))
        return reports

    def load_synthetic(self, config) -> list[IngestReport]:
        """Generate and load the synthetic shop, and keep its planted shifts."""
        from materialize.ingest.sources.synthetic import SyntheticShop

        config = self._shop_loaded_before(config)
        shop = SyntheticShop(config)
        fingerprint = hashlib.sha256(repr(config).encode()).hexdigest()[:12]
        source = f"synthetic(users={config.n_users}, items={config.n_items}, seed={config.seed}, config={fingerprint})"
        reports = [
            ingest.load_frames(self.conn, "items", [shop.items()], source=f"{source}:items", **self._load_kwargs()),
            ingest.load_frames(
                self.conn, "events", shop.events(), source=f"{source}:events",
                total_rows=int(config.n_users * config.expected_events_per_user), **self._load_kwargs(),
            ),
        ]
        shifts = shop.interest_shifts()
        with self.conn.cursor() as cur:
            cur.execute("CREATE TEMP TABLE stage_shifts (LIKE interest.planted_interest_shifts) ON COMMIT DROP")
            with cur.copy(
                "COPY stage_shifts (user_id, shift_at, drift_start, drift_end, from_category, to_category, kind, source) FROM STDIN"
            ) as copy:
                for row in shifts.itertuples(index=False):
                    copy.write_row((row.user_id, row.shift_at, row.drift_start, row.drift_end,
                                    row.from_category, row.to_category, row.kind, source))
            cur.execute("INSERT INTO interest.planted_interest_shifts SELECT * FROM stage_shifts ON CONFLICT (user_id) DO NOTHING")
            cur.execute("INSERT INTO interest.synthetic_shops VALUES (%s, %s) ON CONFLICT (source) DO NOTHING",
                        (source, Jsonb(config.to_json())))
        self.conn.commit()
        return reports

    def _shop_loaded_before(self, config):
        """The config of a shop this database already holds that differs from ``config`` only
        in ``end`` (a default end moves with the day; loading that shop again at other times
        would give its users a second history), else ``config``."""
        import dataclasses

        from materialize.ingest.sources.synthetic import SyntheticConfig

        for (values,) in self.conn.execute("SELECT config FROM interest.synthetic_shops").fetchall():
            stored = SyntheticConfig.from_json(values)
            if stored != config and dataclasses.replace(stored, end=config.end) == config:
                log.info("the synthetic shop is already loaded, ending %s; loading it again as it was", stored.end)
                return stored
        return config

    def load_movielens(self) -> list[IngestReport]:
        """Load MovieLens-100K (ratings as events, first genre as category)."""
        from materialize.ingest.sources.movielens import MovieLens100K

        movielens = MovieLens100K(self.settings.cache_dir / "recbole")
        return [
            ingest.load_frames(self.conn, "items", [movielens.items()], source="movielens-100k:items", **self._load_kwargs()),
            ingest.load_frames(self.conn, "events", movielens.events(), source="movielens-100k:events",
                               total_rows=100_000, **self._load_kwargs()),
        ]

    # ------------------------------------------------------------------ features

    def embed(self, device: str | None = None):
        """Embed item texts not embedded before (see ``materialize.embeddings.item_embeddings``)."""
        from materialize.embeddings.embedder import TextEmbedder
        from materialize.embeddings.item_embeddings import embed_new_item_texts

        embedder = TextEmbedder(device=device, batch_size=self.settings.pipeline.embedding_batch_size)
        return embed_new_item_texts(self.conn, embedder, progress=self.progress)

    def build(self, full: bool = False) -> FeatureBuildReport:
        """Bring the feature-source tables up to date (incrementally unless ``full``)."""
        return build_features(self.conn, self.settings.pipeline, full=full, progress=self.progress)

    # ------------------------------------------------------------------ feast

    @property
    def store(self):
        """The ``feast.FeatureStore`` of ``feature_repo/`` on this database."""
        if self._store is None:
            from materialize.feature_store.repo import open_store

            self._store = open_store(self.settings.feature_repo_dir, self.settings.postgres, self.pgvector, self.settings.spark)
        return self._store

    def apply(self) -> None:
        """``feast apply`` of the feature repo."""
        from materialize.feature_store.repo import apply_repo

        apply_repo(self.settings.feature_repo_dir, self.settings.postgres, self.pgvector, self.settings.spark)
        self._store = None

    def materialize(self, end: dt.datetime | None = None):
        """Load the latest feature values into the online store."""
        from materialize.feature_store.repo import materialize_online

        return materialize_online(self.store, end)

    def lookup(self, user_id: int) -> dict:
        """A user's profile features from the online store."""
        service = self.store.get_feature_service("user_profile_serving")
        return self.store.get_online_features(features=service, entity_rows=[{"user_id": int(user_id)}]).to_dict()

    # ------------------------------------------------------------------ reporting

    def status(self) -> dict[str, pd.DataFrame]:
        """Row counts, watermarks, recent loads and the quarantine summary."""
        tables = ["items", "categories", "events", "quarantine", "text_embeddings", "item_embeddings",
                  "user_daily_features", "user_recent_sequence", "user_interest_embedding",
                  "item_daily_features", "category_daily_features", "planted_interest_shifts"]
        counts = pd.DataFrame(
            [(t, self.conn.execute(f"SELECT count(*) FROM interest.{t}").fetchone()[0]) for t in tables],  # names are constants
            columns=["table", "rows"],
        )
        return {
            "tables": counts,
            "watermarks": fetch_frame(self.conn, "SELECT * FROM interest.feature_watermarks ORDER BY feature_set"),
            "recent loads": fetch_frame(
                self.conn,
                "SELECT run_id, kind, left(source, 60) AS source, status, rows_read, loaded, updated, quarantined, duplicate, "
                "finished_at, left(error, 80) AS error FROM interest.ingest_runs ORDER BY run_id DESC LIMIT 8",
            ),
            "quarantine": fetch_frame(
                self.conn,
                "SELECT kind, coalesce(field, '(malformed line)') AS field, count(*) AS rows, min(reason) AS example "
                "FROM interest.quarantine GROUP BY 1, 2 ORDER BY 1, 3 DESC",
            ),
        }

    def run(self, load_step) -> RunSummary:
        """Everything end to end: ``load_step(self)`` returns ingest reports, then embed,
        build, apply and materialize."""
        summary = RunSummary()
        steps = [
            ("load", lambda: summary.loads.extend(load_step(self))),
            ("embed", lambda: setattr(summary, "embedding", self.embed())),
            ("build", lambda: setattr(summary, "features", self.build())),
            ("apply", self.apply),
            ("materialize", lambda: setattr(summary, "materialize", self.materialize())),
        ]
        for name, step in steps:
            started = time.perf_counter()
            log.info("step %s", name)
            step()
            summary.seconds[name] = round(time.perf_counter() - started, 2)
        return summary
