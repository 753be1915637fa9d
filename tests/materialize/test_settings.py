"""Settings from the environment: one database URL or INTEREST_PG_* values, and clear
errors for values that cannot work (never echoing a password)."""
from __future__ import annotations

import pytest
from click.testing import CliRunner

from interest_shift.cli import main
from materialize.settings import PostgresSettings, SettingsError, load_settings


def test_url_in_each_accepted_scheme_gives_the_same_settings():
    expected = PostgresSettings(host="db.example", port=5433, database="shop", user="app@corp", password="p:ss/w rd",
                                sslmode="require", embedded=False)
    for scheme in ("postgresql", "postgresql+psycopg", "postgresql+psycopg2"):
        url = f"{scheme}://app%40corp:p%3Ass%2Fw%20rd@db.example:5433/shop?sslmode=require"
        assert load_settings({"INTEREST_DATABASE_URL": url}).postgres == expected


def test_url_with_a_socket_directory_and_defaults():
    pg = load_settings({"INTEREST_DATABASE_URL": "postgresql://postgres@/interest?host=/var/run/postgresql"}).postgres
    assert (pg.host, pg.port, pg.database, pg.user, pg.password, pg.sslmode) == (
        "/var/run/postgresql", 5432, "interest", "postgres", "", "prefer")


def test_url_takes_precedence_over_single_values():
    env = {"INTEREST_DATABASE_URL": "postgresql://u:p@urlhost/db", "INTEREST_PG_HOST": "other", "INTEREST_PG_DB": "x"}
    pg = load_settings(env).postgres
    assert (pg.host, pg.database) == ("urlhost", "db")


def test_registry_url_round_trips_through_sqlalchemy():
    from sqlalchemy.engine import make_url

    pg = PostgresSettings(host="/tmp/pg data", port=5432, database="d b", user="u@x", password="p&q=/", sslmode="disable")
    url = make_url(pg.registry_url())
    assert (url.username, url.password, url.database, dict(url.query)) == (
        "u@x", "p&q=/", "d b", {"host": "/tmp/pg data", "port": "5432", "sslmode": "disable"})


@pytest.mark.parametrize(("url", "message"), [
    ("not a url", "is not a database URL"),
    ("mysql://u:secret@h/db", "scheme 'mysql'"),
    ("postgresql://u:secret@h/db?application_name=x", "unsupported query parameters ['application_name']"),
    ("postgresql://u:secret@/db", "names no host"),
])
def test_bad_urls_are_named_without_the_password(url, message):
    with pytest.raises(SettingsError, match=message.replace("[", r"\[").replace("]", r"\]")) as error:
        load_settings({"INTEREST_DATABASE_URL": url})
    assert "secret" not in str(error.value)


def test_bad_settings_reach_the_cli_as_one_line(monkeypatch):
    monkeypatch.setenv("INTEREST_DATABASE_URL", "postgresql://u:secret@h/db?application_name=x")
    result = CliRunner().invoke(main, ["status"])
    assert result.exit_code == 1
    assert "INTEREST_DATABASE_URL" in result.output and "Traceback" not in result.output and "secret" not in result.output
    monkeypatch.delenv("INTEREST_DATABASE_URL")
    monkeypatch.setenv("INTEREST_PG_HOST", "h")
    monkeypatch.setenv("INTEREST_PG_PORT", "fivefourthreetwo")
    result = CliRunner().invoke(main, ["status"])
    assert result.exit_code == 1 and "INTEREST_PG_PORT must be a port number" in result.output


def test_min_event_time_from_the_pipeline_config(tmp_path):
    assert load_settings({}).pipeline.min_event_time.isoformat() == "1995-01-01T00:00:00+00:00"
    override = tmp_path / "pipeline.yaml"
    override.write_text("min_event_time: 2010-06-01T12:00:00+02:00\n")
    assert load_settings({"INTEREST_CONFIG": str(override)}).pipeline.min_event_time.isoformat() == "2010-06-01T12:00:00+02:00"
    override.write_text("min_event_time: long ago\n")
    with pytest.raises(SettingsError, match="min_event_time: not an ISO 8601 date or time: 'long ago'"):
        load_settings({"INTEREST_CONFIG": str(override)})


def test_spark_profile_driver_memory_and_staging():
    spark = load_settings({"INTEREST_PROFILE": "spark", "INTEREST_WAREHOUSE": "s3a://bucket/shop/",
                           "INTEREST_SPARK_DRIVER_MEMORY": "6g"}).spark
    assert (spark.driver_memory, spark.staging) == ("6g", "s3://bucket/shop/staging")  # Feast lists s3://, not s3a://
    assert spark.feast_environment()["INTEREST_SPARK_STAGING"] == "s3://bucket/shop/staging"
    local = load_settings({"INTEREST_PROFILE": "spark", "INTEREST_WAREHOUSE": "/data/shop"}).spark
    assert (local.driver_memory, local.staging) == ("4g", "/data/shop/staging")
    with pytest.raises(SettingsError, match="INTEREST_SPARK_DRIVER_MEMORY must be a JVM size"):
        load_settings({"INTEREST_PROFILE": "spark", "INTEREST_SPARK_DRIVER_MEMORY": "6 GB"})
