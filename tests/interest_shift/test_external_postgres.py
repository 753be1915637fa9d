"""The same pipeline against an external PostgreSQL over TCP with a password and no
pgvector: Debian's PostgreSQL 15, started in a temporary cluster for this module.

Skipped when the server binaries are not installed (apt-get install postgresql-15).
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from sqlalchemy.engine import URL

from interest_shift.cli import main
from materialize.database.tables import fetch_frame
from materialize.pipeline import Pipeline
from materialize.settings import load_settings
from materialize.ingest.sources.synthetic import SyntheticConfig
from tests.conftest import new_database, settings_for

PG_BIN = Path("/usr/lib/postgresql/15/bin")
PASSWORD = "s3cret p@ss/word:1"  # characters that need quoting in URLs and conninfo
CONFIG = SyntheticConfig(n_users=1000, n_items=60, n_categories=5, days=40, sessions_per_user_mean=2.0, seed=9)

pytestmark = pytest.mark.skipif(not (PG_BIN / "initdb").exists(), reason="Debian PostgreSQL 15 is not installed")


def _as_postgres(args: list[str]) -> list[str]:
    return ["su", "postgres", "-c", " ".join(map(str, args))] if os.geteuid() == 0 else list(map(str, args))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def external_env():
    root = Path(tempfile.mkdtemp(prefix="interest-pg15-"))
    root.chmod(0o777)
    data, password_file = root / "data", root / "password"
    password_file.write_text(PASSWORD + "\n")
    password_file.chmod(0o644)
    port = _free_port()
    subprocess.run(
        _as_postgres([PG_BIN / "initdb", "-D", data, "-U", "postgres", "--auth-host=scram-sha-256",
                      "--auth-local=peer", f"--pwfile={password_file}"]),
        check=True, capture_output=True,
    )
    subprocess.run(
        _as_postgres([PG_BIN / "pg_ctl", "-D", data, "-w", "-l", root / "log",
                      "-o", f"'-p {port} -k {root} -c listen_addresses=127.0.0.1'", "start"]),
        check=True, capture_output=True,
    )
    env = {
        "INTEREST_PG_HOST": "127.0.0.1",
        "INTEREST_PG_PORT": str(port),
        "INTEREST_PG_USER": "postgres",
        "INTEREST_PG_PASSWORD": PASSWORD,
        "INTEREST_PG_DB": "interest_external",
        "INTEREST_PG_SSLMODE": "disable",
    }
    try:
        yield env
    finally:
        subprocess.run(_as_postgres([PG_BIN / "pg_ctl", "-D", data, "-w", "-m", "fast", "stop"]), capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def test_cli_run_end_to_end_on_external_server(external_env, monkeypatch):
    """Configured by one URL, written as psycopg2 users have it (the project connects with psycopg 3)."""
    e = external_env
    url = URL.create("postgresql+psycopg2", username=e["INTEREST_PG_USER"], password=e["INTEREST_PG_PASSWORD"],
                     host=e["INTEREST_PG_HOST"], port=int(e["INTEREST_PG_PORT"]), database=e["INTEREST_PG_DB"],
                     query={"sslmode": e["INTEREST_PG_SSLMODE"]})
    monkeypatch.setenv("INTEREST_DATABASE_URL", url.render_as_string(hide_password=False))
    settings = load_settings()
    assert not settings.postgres.embedded and settings.postgres.host == "127.0.0.1"
    assert settings.postgres.password == PASSWORD
    result = CliRunner().invoke(main, ["run", "--users", "200", "--items", "60", "--no-train"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "quarantined 0" in result.output and "Online features of user" in result.output
    assert "user_activity" in result.output and "view_count_30d" in result.output
    with Pipeline(settings, progress=False) as pipeline:
        assert pipeline.pgvector is False
        assert pipeline.conn.execute("SELECT count(*) FROM interest.user_interest_embedding").fetchone()[0] > 0
        status = CliRunner().invoke(main, ["status"], catch_exceptions=False)
        assert status.exit_code == 0 and "user_daily_features" in status.output


def test_portable_sql_equals_pgvector_sql(external_env, monkeypatch, pg_server, settings):
    """Features built without pgvector (external) equal those built with it (embedded)."""
    tables = ("user_interest_embedding", "user_daily_features", "item_daily_features")
    built = {}
    with new_database(pg_server) as embedded_pg:
        with Pipeline(settings_for(settings, embedded_pg), progress=False) as pipeline:
            assert pipeline.pgvector
            pipeline.load_synthetic(CONFIG)
            pipeline.embed()
            pipeline.build()
            built["pgvector"] = {t: fetch_frame(pipeline.conn, f"SELECT * FROM interest.{t} ORDER BY 1, 2") for t in tables}
    for name, value in {**external_env, "INTEREST_PG_DB": "interest_portable"}.items():
        monkeypatch.setenv(name, value)
    with Pipeline(load_settings(), progress=False) as pipeline:
        assert not pipeline.pgvector
        pipeline.load_synthetic(CONFIG)
        pipeline.embed()
        pipeline.build()
        built["portable"] = {t: fetch_frame(pipeline.conn, f"SELECT * FROM interest.{t} ORDER BY 1, 2") for t in tables}
    for table in tables:
        a, b = (built[k][table].drop(columns="created_timestamp") for k in ("pgvector", "portable"))
        assert len(a) == len(b) > 0
        arrays = [c for c in a.columns if isinstance(a[c].iloc[0], list)]
        for column in arrays:
            np.testing.assert_allclose(np.stack(a[column]), np.stack(b[column]), atol=1e-5, err_msg=f"{table}.{column}")
        pd.testing.assert_frame_equal(a.drop(columns=arrays), b.drop(columns=arrays), check_dtype=False, obj=table)
