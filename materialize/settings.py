"""Configuration of the data plane: environment variables and the pipeline YAML.

Connection (all optional): either one URL,
    INTEREST_DATABASE_URL  ``postgresql://user:password@host:5432/db?sslmode=require``
                           (``postgresql+psycopg://`` and ``postgresql+psycopg2://`` too;
                           a socket directory as ``?host=/path``), parsed by SQLAlchemy,
or the same values one by one (the URL wins when both are set; set ``INTEREST_PG_HOST`` to
use your own server over TCP):
    INTEREST_PG_HOST      host name or socket directory of an external PostgreSQL
    INTEREST_PG_PORT      port (default 5432)
    INTEREST_PG_DB        database (default ``interest``)
    INTEREST_PG_USER      user (default ``postgres``)
    INTEREST_PG_PASSWORD  password (default empty)
    INTEREST_PG_SSLMODE   libpq sslmode (default ``prefer`` external, ``disable`` embedded)
Without ``INTEREST_PG_HOST`` an embedded server (pgserver) runs in ``INTEREST_PGDATA``
(default ``<project>/.pgdata``).

Project:
    INTEREST_HOME         the project folder (``interest init DIR`` writes one): its
                          ``feature_repo/``, optional ``config/*.yaml`` overrides, and the
                          models, reports and embedded database it accumulates. Default:
                          the source checkout when running from one, else the current folder.
    INTEREST_CONFIG       YAML file whose keys override the pipeline settings (after
                          ``materialize/pipeline.yaml`` and ``$INTEREST_HOME/config/pipeline.yaml``)

Profile (issue 12): ``INTEREST_PROFILE`` is ``postgres`` (default: everything in one
PostgreSQL database) or ``spark`` (raw events and feature tables as Parquet in a warehouse,
computed and joined by Apache Spark; registry, catalogue bookkeeping and online store stay
in PostgreSQL). The spark profile reads:
    INTEREST_WAREHOUSE               folder or URI of the Parquet warehouse (default
                                     ``<project>/.warehouse``; ``s3a://bucket/path`` on a cluster)
    INTEREST_SPARK_MASTER            ``spark.master`` (default ``local[2]``)
    INTEREST_SPARK_SHUFFLE_PARTITIONS ``spark.sql.shuffle.partitions`` (default 8)
    INTEREST_SPARK_DRIVER_MEMORY     ``spark.driver.memory`` of a session this process starts
                                     (default ``4g``; in ``local[N]`` the executors live in it too)
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Mapping

import yaml

_PACKAGE_DIR = Path(__file__).resolve().parent
DEFAULT_DATABASE = "interest"
URL_DRIVERS = ("postgresql", "postgresql+psycopg", "postgresql+psycopg2")
"""Accepted URL schemes; the project always connects with psycopg 3 (as Feast's Postgres
stores do), the scheme only says how the URL was written."""


class SettingsError(ValueError):
    """Configuration that cannot be used; the message names the setting."""


@dataclass(frozen=True)
class PostgresSettings:
    """Where PostgreSQL is and how to log in."""

    host: str
    port: int = 5432
    database: str = DEFAULT_DATABASE
    user: str = "postgres"
    password: str = field(default="", repr=False)
    sslmode: str = "prefer"
    embedded: bool = False

    def conninfo(self, database: str | None = None) -> str:
        """A libpq connection string (psycopg quotes every value)."""
        from psycopg.conninfo import make_conninfo

        return make_conninfo(
            host=self.host,
            port=self.port,
            dbname=database or self.database,
            user=self.user,
            password=self.password,
            sslmode=self.sslmode,
        )

    def with_database(self, database: str) -> "PostgresSettings":
        return replace(self, database=database)

    def registry_url(self) -> str:
        """SQLAlchemy URL of Feast's SQL registry (host and port as query parameters, so a
        socket directory works as well as a host name)."""
        from sqlalchemy.engine import URL

        url = URL.create("postgresql+psycopg", username=self.user, password=self.password, database=self.database,
                         query={"host": self.host, "port": str(self.port), "sslmode": self.sslmode})
        return url.render_as_string(hide_password=False)

    @classmethod
    def from_url(cls, text: str) -> "PostgresSettings":
        """Settings from a SQLAlchemy-style URL (see ``URL_DRIVERS``).

        Raises:
            SettingsError: not such a URL (the message never repeats the password).
        """
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            url = make_url(text)
        except ArgumentError:
            raise SettingsError("INTEREST_DATABASE_URL is not a database URL (expected postgresql://user:password@host:port/db)") from None
        if url.drivername not in URL_DRIVERS:
            raise SettingsError(f"INTEREST_DATABASE_URL: scheme {url.drivername!r} is not one of {', '.join(URL_DRIVERS)}")
        query = dict(url.query)
        unknown = sorted(set(query) - {"host", "sslmode"})
        if unknown:
            raise SettingsError(f"INTEREST_DATABASE_URL: unsupported query parameters {unknown} (host and sslmode are)")
        host = url.host or query.get("host")
        if not host:
            raise SettingsError("INTEREST_DATABASE_URL names no host (give host[:port] or ?host=/socket/directory)")
        return cls(host=host, port=url.port or 5432, database=url.database or DEFAULT_DATABASE, user=url.username or "postgres",
                   password=url.password or "", sslmode=query.get("sslmode", "prefer"), embedded=False)

    def feast_environment(self, pgvector: bool) -> dict[str, str]:
        """Variables that ``feature_repo/feature_store.yaml`` substitutes."""
        return {
            "INTEREST_REGISTRY_URL": self.registry_url(),
            "INTEREST_PG_HOST": self.host,
            "INTEREST_PG_PORT": str(self.port),
            "INTEREST_PG_DB": self.database,
            "INTEREST_PG_USER": self.user,
            "INTEREST_PG_PASSWORD": self.password,
            "INTEREST_PG_SSLMODE": self.sslmode,
            "INTEREST_PGVECTOR": "true" if pgvector else "false",
        }


@dataclass(frozen=True)
class PipelineConfig:
    """Tunables of ingestion and feature computation (see ``pipeline.yaml``)."""

    sequence_length: int
    interest_embedding_events: int
    session_gap_minutes: int
    future_tolerance_seconds: int
    min_event_time: datetime        # earlier event timestamps are quarantined (UTC when no offset)
    ingest_chunk_rows: int
    embedding_batch_size: int
    feature_ttl_days: int

    @classmethod
    def load(cls, *overrides: Path) -> "PipelineConfig":
        """``pipeline.yaml`` with the keys of each override file applied in order."""
        values = yaml.safe_load((_PACKAGE_DIR / "pipeline.yaml").read_text())
        for override in overrides:
            values.update(yaml.safe_load(Path(override).read_text()) or {})
            unknown = set(values) - set(cls.__dataclass_fields__)
            if unknown:
                raise SettingsError(f"unknown pipeline config keys in {override}: {sorted(unknown)}")
        values["min_event_time"] = _utc_time(values["min_event_time"], "min_event_time")
        return cls(**values)


PROFILES = ("postgres", "spark")


@dataclass(frozen=True)
class SparkSettings:
    """Where the spark profile keeps its Parquet warehouse and which Spark it runs on."""

    warehouse: str
    master: str = "local[2]"
    shuffle_partitions: int = 8
    driver_memory: str = "4g"

    @property
    def staging(self) -> str:
        """Where Feast's Spark offline store writes retrieval results (``staging_location``):
        ``<warehouse>/staging``, as ``s3://`` where the warehouse is ``s3a://`` (Feast lists
        and reads it with the AWS SDK and pyarrow, and hands Spark the ``s3a://`` form)."""
        staging = f"{self.warehouse.rstrip('/')}/staging"
        return "s3://" + staging[len("s3a://"):] if staging.startswith("s3a://") else staging

    def feast_environment(self) -> dict[str, str]:
        """Variables that ``feature_store.spark.yaml`` and ``data_sources.py`` read."""
        return {
            "INTEREST_PROFILE": "spark",
            "INTEREST_WAREHOUSE": self.warehouse,
            "INTEREST_SPARK_MASTER": self.master,
            "INTEREST_SPARK_SHUFFLE_PARTITIONS": str(self.shuffle_partitions),
            "INTEREST_SPARK_DRIVER_MEMORY": self.driver_memory,
            "INTEREST_SPARK_STAGING": self.staging,
        }


@dataclass(frozen=True)
class Settings:
    project_dir: Path
    postgres: PostgresSettings
    pipeline: PipelineConfig
    spark: SparkSettings | None = None   # None: the postgres profile

    @property
    def profile(self) -> str:
        return "postgres" if self.spark is None else "spark"

    @property
    def feature_store_yaml(self) -> Path:
        """The Feast config of the profile: ``feature_store.yaml`` or ``feature_store.spark.yaml``."""
        return self.feature_repo_dir / ("feature_store.yaml" if self.spark is None else "feature_store.spark.yaml")

    @property
    def pgdata_dir(self) -> Path:
        return Path(self.postgres.host) if self.postgres.embedded else self.project_dir / ".pgdata"

    @property
    def cache_dir(self) -> Path:
        """Downloaded and generated input files (git-ignored)."""
        return self.project_dir / ".data"

    @property
    def feature_repo_dir(self) -> Path:
        return self.project_dir / "feature_repo"

    @property
    def config_dir(self) -> Path:
        """Optional per-project overrides of the packaged YAML configs (``<name>.yaml``)."""
        return self.project_dir / "config"


def default_project_dir() -> Path:
    """The source checkout this package runs from, else the current folder."""
    checkout = _PACKAGE_DIR.parent
    if (checkout / "pyproject.toml").is_file() and (checkout / "feature_repo").is_dir():
        return checkout
    return Path.cwd()


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Read settings from the environment (``os.environ`` by default)."""
    env = os.environ if environ is None else environ
    project_dir = Path(env.get("INTEREST_HOME") or default_project_dir()).resolve()
    project_config = project_dir / "config" / "pipeline.yaml"
    overrides = [project_config] if project_config.is_file() else []
    if env.get("INTEREST_CONFIG"):
        overrides.append(Path(env["INTEREST_CONFIG"]))
    pipeline = PipelineConfig.load(*overrides)
    if env.get("INTEREST_DATABASE_URL"):  # takes precedence over INTEREST_PG_*
        postgres = PostgresSettings.from_url(env["INTEREST_DATABASE_URL"])
    elif env.get("INTEREST_PG_HOST"):
        postgres = PostgresSettings(
            host=env["INTEREST_PG_HOST"],
            port=_port(env.get("INTEREST_PG_PORT", "5432")),
            database=env.get("INTEREST_PG_DB", DEFAULT_DATABASE),
            user=env.get("INTEREST_PG_USER", "postgres"),
            password=env.get("INTEREST_PG_PASSWORD", ""),
            sslmode=env.get("INTEREST_PG_SSLMODE", "prefer"),
            embedded=False,
        )
    else:
        pgdata = Path(env.get("INTEREST_PGDATA") or project_dir / ".pgdata").resolve()
        postgres = PostgresSettings(
            host=str(pgdata),
            database=env.get("INTEREST_PG_DB", DEFAULT_DATABASE),
            sslmode="disable",
            embedded=True,
        )
    return Settings(project_dir=project_dir, postgres=postgres, pipeline=pipeline, spark=_spark(env, project_dir))


def _spark(env: Mapping[str, str], project_dir: Path) -> SparkSettings | None:
    profile = env.get("INTEREST_PROFILE", "postgres")
    if profile not in PROFILES:
        raise SettingsError(f"INTEREST_PROFILE must be one of {', '.join(PROFILES)}, not {profile!r}")
    if profile == "postgres":
        return None
    partitions = env.get("INTEREST_SPARK_SHUFFLE_PARTITIONS", "8")
    if not partitions.isdigit() or int(partitions) < 1:
        raise SettingsError(f"INTEREST_SPARK_SHUFFLE_PARTITIONS must be a positive integer, not {partitions!r}")
    warehouse = env.get("INTEREST_WAREHOUSE") or str(project_dir / ".warehouse")
    if "://" not in warehouse:
        warehouse = str(Path(warehouse).resolve())
    driver_memory = env.get("INTEREST_SPARK_DRIVER_MEMORY", "4g")
    if not re.fullmatch(r"[1-9][0-9]*[kmgt]", driver_memory.lower()):
        raise SettingsError(f"INTEREST_SPARK_DRIVER_MEMORY must be a JVM size such as 4g or 512m, not {driver_memory!r}")
    return SparkSettings(warehouse=warehouse, master=env.get("INTEREST_SPARK_MASTER", "local[2]"),
                         shuffle_partitions=int(partitions), driver_memory=driver_memory)


def _utc_time(value: object, key: str) -> datetime:
    """A YAML date, datetime or ISO 8601 text as an aware datetime (UTC when no offset)."""
    if isinstance(value, date) and not isinstance(value, datetime):
        value = datetime(value.year, value.month, value.day)
    elif not isinstance(value, datetime):
        try:
            value = datetime.fromisoformat(str(value))
        except ValueError:
            raise SettingsError(f"pipeline config {key}: not an ISO 8601 date or time: {value!r}") from None
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def _port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise SettingsError(f"INTEREST_PG_PORT must be a port number, not {text!r}")
    return int(text)
