"""The HTTP service end to end: real Postgres (its own embedded server, so the test can
stop and restart it), a trained registered model, and FastAPI's test client."""
from __future__ import annotations

import datetime as dt
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from interest_models.serving.http_app import RECONNECT_INTERVAL_S, create_app
from interest_models.training.recipe import train_models
from interest_models.registry.model_registry import registry_for
from materialize.pipeline import Pipeline
from materialize.database.server import stop_embedded
from materialize.settings import PostgresSettings
from tests.conftest import new_database, settings_for
from tests.interest_models.training.test_recipe import FAST, GAP, SHOP

KEY = {"X-API-Key": "test-key"}


@pytest.fixture(scope="module")
def service(settings):
    pgdata = Path(tempfile.mkdtemp(prefix="interest-service-pg-"))
    server = PostgresSettings(host=str(pgdata), sslmode="disable", embedded=True)
    try:
        with new_database(server) as pg:
            service_settings = settings_for(settings, pg)
            with Pipeline(service_settings, progress=False) as pipeline:
                pipeline.run(lambda p: p.load_synthetic(SHOP))
                result = train_models(pipeline.store, pipeline.conn, GAP, overrides=FAST, device="cpu")
            home = pgdata.parent / f"{pgdata.name}-home"  # a project folder for `interest serve`
            home.mkdir()
            (home / "feature_repo").symlink_to(service_settings.feature_repo_dir)
            registry = registry_for(home)
            registry.set_serving(registry.register(result))
            app = create_app(service_settings, registry.root, "test-key")
            with TestClient(app) as client:
                yield client, pgdata, pipeline, home
    finally:
        stop_embedded(pgdata)
        shutil.rmtree(pgdata, ignore_errors=True)
        shutil.rmtree(pgdata.parent / f"{pgdata.name}-home", ignore_errors=True)


def _top_user(client) -> int:
    return int(client.app.state.service.conn.execute(
        "SELECT user_id FROM interest.events GROUP BY 1 ORDER BY count(*) DESC LIMIT 1").fetchone()[0])


def test_auth_is_required(service):
    client, *_ = service
    assert client.post("/recommend", json={"user_id": 1}).status_code == 401
    assert client.post("/recommend", json={"user_id": 1}, headers={"X-API-Key": "wrong"}).status_code == 401
    assert client.get("/users/1/interests").status_code == 401
    assert client.post("/events", json={}).status_code == 401
    assert client.get("/health").status_code == 200


@pytest.mark.parametrize(
    "path, payload, field",
    [
        ("/recommend", {"user_id": "abc"}, "user_id"),
        ("/recommend", {"user_id": 5, "k": 0}, "k"),
        ("/events", {"user_id": 5, "item_id": 3, "event_type": "like"}, "event_type"),
        ("/events", {"user_id": 5, "item_id": 3, "event_type": "view", "price": -2}, "price"),
    ],
)
def test_bad_payloads_name_the_field(service, path, payload, field):
    client, *_ = service
    response = client.post(path, json=payload, headers=KEY)
    assert response.status_code == 422
    assert field in [str(part) for error in response.json()["detail"] for part in error["loc"]]


def test_recommend_and_interests_end_to_end(service):
    client, *_ = service
    user = _top_user(client)
    answer = client.post("/recommend", json={"user_id": user, "k": 7}, headers=KEY).json()
    assert len(answer["items"]) == 7 and not answer["cold_start"] and not answer["degraded"]
    assert all(item["reasons"] for item in answer["items"])
    interests = client.get(f"/users/{user}/interests", headers=KEY).json()
    assert abs(sum(interests["next_category"].values()) - 1) < 1e-3
    assert client.get("/openapi.json").status_code == 200


def test_unknown_user_gets_a_flagged_cold_start(service):
    client, *_ = service
    answer = client.post("/recommend", json={"user_id": 123_456_789, "k": 5}, headers=KEY).json()
    assert answer["cold_start"] and len(answer["items"]) == 5


def test_pushed_events_change_the_sequence_and_the_answer(service):
    client, _, pipeline, _ = service
    user = _top_user(client)
    before = client.post("/recommend", json={"user_id": user, "k": 10}, headers=KEY).json()
    conn = client.app.state.service.conn
    last_time = conn.execute("SELECT max(event_timestamp) FROM interest.events WHERE user_id = %s", (user,)).fetchone()[0]
    category = conn.execute(
        "SELECT i.category_id FROM interest.items i WHERE i.category_id <> ALL(SELECT i2.category_id FROM interest.events e "
        "JOIN interest.items i2 USING (item_id) WHERE e.user_id = %s) LIMIT 1", (user,)).fetchone()
    conn.commit()
    items = [r[0] for r in conn.execute("SELECT item_id FROM interest.items WHERE category_id = %s ORDER BY item_id LIMIT 6",
                                        (category[0] if category else 1,))]
    conn.commit()
    for step, item in enumerate(items):
        response = client.post("/events", headers=KEY, json={
            "user_id": user, "item_id": item, "event_type": "view",
            "event_timestamp": (last_time + dt.timedelta(minutes=step + 1)).isoformat()})
        assert response.status_code == 200, response.text
    online = client.app.state.service.recommender.online_user(user)
    assert list(online["recent_item_ids"][0])[-len(items):] == items
    after = client.post("/recommend", json={"user_id": user, "k": 10}, headers=KEY).json()
    assert [i["item_id"] for i in after["items"]] != [i["item_id"] for i in before["items"]]
    bad = client.post("/events", headers=KEY, json={"user_id": user, "item_id": 99_999_999, "event_type": "view"})
    assert bad.status_code == 422 and "item_id" in bad.text


def test_cli_serves_from_several_worker_processes(service):
    """`interest serve --workers 2`: each worker builds the app from the environment."""
    client, pgdata, _, home = service
    user = _top_user(client)
    client.app.state.service.conn.commit()
    database = client.app.state.service.settings.postgres.database
    env = {k: v for k, v in os.environ.items() if not k.startswith("INTEREST_")}
    env.update(INTEREST_HOME=str(home), INTEREST_PGDATA=str(pgdata), INTEREST_PG_DB=database, INTEREST_API_KEY="cli-key")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "interest_shift.cli", "serve", "--port", str(port), "--workers", "2"],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            assert server.poll() is None, server.stderr.read().decode()[-3000:]
            try:
                if httpx.get(f"{base}/ready", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        answers = [httpx.post(f"{base}/recommend", json={"user_id": user, "k": 5}, headers={"X-API-Key": "cli-key"}, timeout=30)
                   for _ in range(6)]
        assert all(a.status_code == 200 for a in answers), answers[0].text
        assert len({tuple(i["item_id"] for i in a.json()["items"]) for a in answers}) == 1  # every worker answers alike
        assert len(answers[0].json()["items"]) == 5 and not answers[0].json()["degraded"]
        assert httpx.post(f"{base}/recommend", json={"user_id": user}, timeout=30).status_code == 401
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_postgres_outage_degrades_then_recovers(service):
    client, pgdata, *_ = service
    user = _top_user(client)
    assert client.get("/ready").status_code == 200
    loaded = client.app.state.service.recommender
    stop_embedded(pgdata)
    try:
        degraded = client.post("/recommend", json={"user_id": user, "k": 5}, headers=KEY)
        assert degraded.status_code == 200 and degraded.json()["degraded"] and len(degraded.json()["items"]) == 5
        not_ready = client.get("/ready")
        assert not_ready.status_code == 503 and str(pgdata) not in not_ready.text  # no server details without a key
        assert not_ready.json()["reason"].startswith("the database is unreachable")
        assert client.post("/events", headers=KEY, json={"user_id": user, "item_id": 1, "event_type": "view"}).status_code == 503
    finally:
        # A fresh process: pgserver caches the handle of a server it started in this one.
        subprocess.run([sys.executable, "-c", f"from pathlib import Path; from materialize.database.server import start_embedded; "
                        f"start_embedded(Path({str(pgdata)!r}))"], check=True, capture_output=True)
    deadline = time.monotonic() + 30
    while client.get("/ready").status_code != 200 and time.monotonic() < deadline:
        time.sleep(RECONNECT_INTERVAL_S)
    assert client.get("/ready").status_code == 200
    recovered = client.post("/recommend", json={"user_id": user, "k": 5}, headers=KEY).json()
    assert not recovered["degraded"]
    # the loaded model and its store served again: the store's pool reconnected by itself
    assert client.app.state.service.recommender is loaded
