"""The HTTP service end to end: real Postgres (its own embedded server, so the test can
stop and restart it), a trained registered model, and FastAPI's test client."""
from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import quote

import httpx
import psycopg
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, event, given, settings as hypothesis_settings, strategies as st

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


def _rows(client, query: str, params: tuple = ()) -> list[tuple]:
    """A query on one of the service's pooled connections (committed)."""
    with client.app.state.service.connection() as conn:
        rows = conn.execute(query, params).fetchall()
        conn.commit()
    return rows


def _top_user(client) -> int:
    return int(_rows(client, "SELECT user_id FROM interest.events GROUP BY 1 ORDER BY count(*) DESC LIMIT 1")[0][0])


def _item(client) -> int:
    return int(_rows(client, "SELECT min(item_id) FROM interest.items")[0][0])


def _still_ready(client) -> None:
    assert client.app.state.service.healthy
    assert client.get("/ready").status_code == 200


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
    last_time = _rows(client, "SELECT max(event_timestamp) FROM interest.events WHERE user_id = %s", (user,))[0][0]
    category = _rows(client,
        "SELECT i.category_id FROM interest.items i WHERE i.category_id <> ALL(SELECT i2.category_id FROM interest.events e "
        "JOIN interest.items i2 USING (item_id) WHERE e.user_id = %s) LIMIT 1", (user,))
    items = [r[0] for r in _rows(client, "SELECT item_id FROM interest.items WHERE category_id = %s ORDER BY item_id LIMIT 6",
                                 (category[0][0] if category else 1,))]
    for step, item in enumerate(items):
        response = client.post("/events", headers=KEY, json={
            "user_id": user, "item_id": item, "event_type": "view",
            "event_timestamp": (last_time + dt.timedelta(minutes=step + 1)).isoformat()})
        assert response.status_code == 200 and response.json()["stored"] == 1, response.text
    online = _online_after_refresh(client, user, lambda row: list(row["recent_item_ids"][0])[-len(items):] == items)
    assert online["sequence_length"][0] == min(len(items) + _stored_sequence_length(client, user, last_time), 50)
    after = client.post("/recommend", json={"user_id": user, "k": 10}, headers=KEY).json()
    assert [i["item_id"] for i in after["items"]] != [i["item_id"] for i in before["items"]]
    bad = client.post("/events", headers=KEY, json={"user_id": user, "item_id": 99_999_999, "event_type": "view"})
    assert bad.status_code == 422 and "item_id" in bad.text
    ancient = client.post("/events", headers=KEY, json={"user_id": user, "item_id": items[0], "event_type": "view",
                                                        "event_timestamp": "1970-01-01T00:00:00Z"})
    assert ancient.status_code == 422 and "min_event_time" in ancient.text  # as the file loader quarantines it


def _online_after_refresh(client, user: int, done, timeout_s: float = 20.0) -> dict:
    """The user's online features once ``done(features)`` holds (the refresher pushes them
    a round after the events are stored)."""
    recommender = client.app.state.service.recommender
    deadline = time.monotonic() + timeout_s
    while True:
        online = recommender.online_user(user)
        if done(online) or time.monotonic() > deadline:
            return online
        time.sleep(0.05)


def _stored_sequence_length(client, user: int, until: dt.datetime) -> int:
    return int(_rows(client, "SELECT count(*) FROM interest.events WHERE user_id = %s AND event_timestamp <= %s", (user, until))[0][0])


def test_a_batch_is_stored_once_and_answered_per_event(service):
    """An array of events: each is stored, a duplicate or rejected (and quarantined) with its
    reason; sending the same batch again stores nothing; an event_id is stored once
    whatever else the retry changes."""
    client, *_ = service
    user, item = 10**9 + 11, _item(client)  # a user outside the trained shop
    start = dt.datetime(2026, 9, 30, 12, tzinfo=dt.timezone.utc)
    batch = [{"user_id": user, "item_id": item, "event_type": "view", "event_timestamp": (start + dt.timedelta(seconds=i)).isoformat(),
              "event_id": f"batch-{i}"} for i in range(5)]
    batch.append({**batch[0], "event_id": "batch-0-again"})                      # natural key repeated in the batch
    batch.append({**batch[1], "event_timestamp": start.isoformat()})            # event_id repeated in the batch
    batch.append({"user_id": user, "item_id": 99_999_999, "event_type": "view"})  # unknown item
    first = client.post("/events", headers=KEY, json=batch)
    assert first.status_code == 200, first.text
    answer = first.json()
    assert [r["status"] for r in answer["results"]] == ["stored"] * 5 + ["duplicate", "duplicate", "rejected"]
    assert (answer["stored"], answer["duplicate"], answer["rejected"]) == (5, 2, 1)
    assert "item_id" in answer["results"][7]["reason"]
    again = client.post("/events", headers=KEY, json=batch).json()
    assert [r["status"] for r in again["results"]] == ["duplicate"] * 7 + ["rejected"]
    moved = client.post("/events", headers=KEY, json={**batch[2], "event_timestamp": (start + dt.timedelta(hours=1)).isoformat()})
    assert moved.status_code == 200 and moved.json()["duplicate"] == 1  # the retry's time differs, its event_id does not
    assert _rows(client, "SELECT count(*), count(DISTINCT event_id) FROM interest.events WHERE user_id = %s", (user,))[0] == (5, 5)
    too_many = client.post("/events", headers=KEY, json=[batch[0]] * 1001)
    assert too_many.status_code == 422 and "1000" in too_many.text


def test_concurrent_clients_share_commits_and_lose_nothing(service):
    """Eight clients sending one event at a time: every event is stored once, answered
    after its commit, and the users' online sequences follow within a few refresh rounds."""
    client, *_ = service
    item = _item(client)
    start = dt.datetime(2026, 9, 30, 13, tzinfo=dt.timezone.utc)
    users = [10**9 + 100 + c for c in range(8)]
    statuses: list[int] = []

    def send(user: int) -> None:
        for i in range(25):
            statuses.append(client.post("/events", headers=KEY, json={
                "user_id": user, "item_id": item, "event_type": "click",
                "event_timestamp": (start + dt.timedelta(seconds=i)).isoformat()}).status_code)

    threads = [threading.Thread(target=send, args=(user,)) for user in users]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses == [200] * 200
    assert _rows(client, "SELECT count(*) FROM interest.events WHERE user_id = ANY(%s)", (users,))[0][0] == 200
    for user in users:
        assert _online_after_refresh(client, user, lambda row: row["sequence_length"][0] == 25)["sequence_length"][0] == 25
    deadline = time.monotonic() + 20  # every user table follows within an aggregate round or two

    def backlog() -> dict:
        return client.get("/metrics", headers=KEY).json()["refresh_backlog"]

    while backlog()["refresh_queue_rows"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert backlog() == {"refresh_queue_rows": 0, "refresh_queue_sequences_behind": 0, "refresh_queue_oldest_s": 0.0}
    assert _rows(client, "SELECT count(*) FROM interest.online_refresh_queue")[0][0] == 0


def test_requests_that_wait_for_the_writer_share_one_commit(service):
    """While the writer's transaction waits (here on a lock another session holds on
    interest.events), the requests that arrive meanwhile are stored together afterwards:
    five requests, two commits."""
    client, *_ = service
    state = client.app.state.service
    start = dt.datetime(2026, 9, 30, 14, tzinfo=dt.timezone.utc)
    requests = [[{"user_id": 10**9 + 200 + i, "item_id": _item(client), "event_type": "view",
                  "event_timestamp": start + dt.timedelta(seconds=i)}] for i in range(5)]
    commits_before = state.intake_counters.commits
    with psycopg.connect(state.settings.postgres.conninfo()) as blocker:
        blocker.execute("LOCK TABLE interest.events IN ACCESS EXCLUSIVE MODE")
        futures = [state.writer.submit(requests[0], "test")]
        deadline = time.monotonic() + 30
        while not blocker.execute(  # until the writer's insert waits for the lock
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND query LIKE '%%INSERT INTO interest.events%%'").fetchone()[0] and time.monotonic() < deadline:
            time.sleep(0.05)
        futures += [state.writer.submit(events, "test") for events in requests[1:]]
        blocker.rollback()
    assert [future.result(timeout=60).statuses for future in futures] == [["stored"]] * 5
    assert state.intake_counters.commits - commits_before == 2


def test_cli_serves_from_several_worker_processes(service):
    """`interest serve --workers 2`: each worker builds the app from the environment."""
    client, pgdata, _, home = service
    user = _top_user(client)
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


# ---------------------------------------------------------------- hostile requests (issue 14)

def test_a_key_with_any_byte_is_refused_not_a_crash(service):
    client, *_ = service
    for key in (b"cl\xe9", b"\xff" * 12, "test-key\u00e9".encode(), b"test-key\x7f"):
        assert client.post("/recommend", json={"user_id": 1}, headers={"X-API-Key": key}).status_code == 401
    _still_ready(client)


def _event(client, **fields) -> dict:
    return {"user_id": _top_user(client), "item_id": _item(client), "event_type": "view", **fields}


@pytest.mark.parametrize(
    "path, payload, field",
    [
        ("/recommend", {"user_id": 5, "candidates": [3, 2**70]}, "candidates"),  # was a 500 (OverflowError)
        ("/recommend", {"user_id": 2**63}, "user_id"),
        ("/recommend", {"user_id": 5, "note": "x" * 1000}, "note"),              # unknown fields were accepted
        ("/events", {"user_id": 2**63, "item_id": 1, "event_type": "view"}, "user_id"),  # was a 500 (uint64 cast)
        ("/events", {"user_id": 5, "item_id": 2**64, "event_type": "view"}, "item_id"),
        ("/events", {"user_id": 5, "item_id": 1, "event_type": "view", "price": 1e20}, "price"),  # was a 503 (numeric overflow)
        ("/events", {"user_id": 5, "item_id": 1, "event_type": "view", "session_id": "a\x00b"}, "session_id"),  # was a 503
        ("/events", {"user_id": 5, "item_id": 1, "event_type": "view", "referrer": "x"}, "referrer"),
    ],
)
def test_values_out_of_range_are_refused_at_the_edge(service, path, payload, field):
    client, *_ = service
    before = _rows(client, "SELECT count(*) FROM interest.ingest_runs")[0][0]
    response = client.post(path, json=payload, headers=KEY)
    assert response.status_code == 422, response.text
    assert field in [str(part) for error in response.json()["detail"] for part in error["loc"]]
    assert _rows(client, "SELECT count(*) FROM interest.ingest_runs")[0][0] == before  # nothing reached the database
    _still_ready(client)


def test_interests_of_an_id_out_of_range_is_a_422(service):
    client, *_ = service
    for user in (2**63, 2**70, 0, -3, "abc", "1e3"):
        assert client.get(f"/users/{user}/interests", headers=KEY).status_code == 422, user
    _still_ready(client)


def test_infinite_and_nan_prices_are_refused(service):
    """Python's JSON parser reads the non-standard ``Infinity`` and ``NaN`` literals."""
    client, *_ = service
    for literal in ("Infinity", "NaN", "-Infinity"):
        body = json.dumps(_event(client))[:-1] + f', "price": {literal}}}'
        response = client.post("/events", content=body, headers={**KEY, "Content-Type": "application/json"})
        assert response.status_code == 422 and "price" in response.text, literal


def test_large_bodies_are_refused_unread(service):
    client, *_ = service
    big = {"user_id": 5, "k": "9" * (12 * 2**20)}  # 12 MB: was parsed (1.5 s) and echoed back (10.9 MB)
    response = client.post("/recommend", json=big, headers=KEY)
    assert response.status_code == 413 and len(response.content) < 200
    chunks = (b" " * 2**16 for _ in range(40))  # 2.5 MB without a Content-Length (chunked)
    assert client.post("/recommend", content=chunks, headers={**KEY, "Content-Type": "application/json"}).status_code == 413
    noted = client.post("/recommend", json={"user_id": 5, "note": "x" * (10 * 2**20)}, headers=KEY)  # was a 200
    assert noted.status_code == 413
    _still_ready(client)


def test_error_answers_do_not_echo_the_input(service):
    client, *_ = service
    long_text = "y" * 500_000  # under the body limit
    response = client.post("/recommend", json={"user_id": 5, "k": long_text, long_text: 1}, headers=KEY)
    assert response.status_code == 422 and len(response.content) < 2_000
    assert {e["type"] for e in response.json()["detail"]} == {"int_parsing", "extra_forbidden"}
    many = client.post("/recommend", json={"user_id": 5, "candidates": [-1] * 5000}, headers=KEY)
    assert many.status_code == 422 and many.json()["errors"] == 5000 and len(many.json()["detail"]) == 20
    assert len(many.content) < 5_000
    for body in (b'{"user_id": ', b"[" * 100_000, b'{"user_id": ' + b"7" * 5000 + b"}", b"\xff\xfe\x00"):
        answer = client.post("/recommend", content=body, headers={**KEY, "Content-Type": "application/json"})
        assert 400 <= answer.status_code < 500 and len(answer.content) < 2_000, (body[:20], answer.status_code)
    _still_ready(client)


def test_a_value_the_database_refuses_is_the_clients_error_not_an_outage(service):
    """A psycopg error caused by the values (here a CHECK constraint the test adds, since the
    edge refuses what the schema would) answers 422 and leaves the service healthy."""
    client, *_ = service
    conninfo = client.app.state.service.settings.postgres.conninfo()
    with psycopg.connect(conninfo, autocommit=True) as admin:
        admin.execute("ALTER TABLE interest.events ADD CONSTRAINT test_refused CHECK (session_id <> 'refused by the database')")
        try:
            response = client.post("/events", headers=KEY, json=_event(client, session_id="refused by the database"))
        finally:
            admin.execute("ALTER TABLE interest.events DROP CONSTRAINT test_refused")
    assert response.status_code == 422 and "refused the events" in response.json()["detail"], response.text
    _still_ready(client)


def test_readiness_does_not_queue_behind_the_event_intake(service):
    """Each thread has a pooled connection of its own: /ready answers while an /events call
    waits on the database (here on a lock another session holds on interest.events)."""
    client, *_ = service
    conninfo = client.app.state.service.settings.postgres.conninfo()
    event = _event(client, user_id=10**9 + 7)  # a user outside the trained shop
    answers = {}
    with psycopg.connect(conninfo) as blocker:
        blocker.execute("LOCK TABLE interest.events IN ACCESS EXCLUSIVE MODE")
        release = threading.Timer(15, blocker.rollback)  # before the pool, /ready waited for this
        release.start()
        intake = threading.Thread(target=lambda: answers.update(events=client.post("/events", headers=KEY, json=event)))
        intake.start()
        try:
            time.sleep(1.0)  # the event is now waiting on the lock
            assert intake.is_alive()
            started = time.monotonic()
            answers["ready"] = client.get("/ready")
            answers["ready_s"] = time.monotonic() - started
        finally:
            release.cancel()
            blocker.rollback()
            intake.join(timeout=60)
    assert answers["ready"].status_code == 200 and answers["ready_s"] < 5, answers["ready_s"]
    assert answers["events"].status_code == 200, answers["events"].text


def test_quarantine_from_the_api_is_bounded_per_client(service):
    """Rejected events of one client are quarantined up to its quota per minute; then its
    events are refused (429, Retry-After) and counted, while other clients go on."""
    client, *_ = service
    state = client.app.state.service
    other = TestClient(client.app, client=("203.0.113.7", 50000))  # same app and state, another address
    per_minute = state.quota.per_minute
    unknown_item = {"user_id": 5, "item_id": 99_999_999, "event_type": "view"}
    count = "SELECT count(*) FROM interest.quarantine WHERE source LIKE 'api:%%'"
    before, metrics_before = _rows(client, count)[0][0], client.get("/metrics", headers=KEY).json()
    statuses = [other.post("/events", headers=KEY, json={**unknown_item, "user_id": 5 + i}).status_code
                for i in range(per_minute + 5)]
    assert statuses == [422] * per_minute + [429] * 5
    refused = other.post("/events", headers=KEY, json=_event(client))  # a good event too, until the minute is over
    assert refused.status_code == 429 and 1 <= int(refused.headers["Retry-After"]) <= 60
    assert _rows(client, count)[0][0] - before == per_minute
    metrics = client.get("/metrics", headers=KEY).json()
    assert metrics["events_quarantined"] - metrics_before["events_quarantined"] == per_minute
    assert metrics["events_refused_over_quota"] - metrics_before["events_refused_over_quota"] == 6
    assert client.post("/events", headers=KEY, json=unknown_item).status_code == 422  # this client has its own quota
    _still_ready(client)


# Property-based: requests of the right shape with some fields replaced by random JSON of
# wrong types, sizes and bytes (or dropped, or extra ones added). Whatever comes, the answer
# is below 500 (no 503 either: the database is up) and the service stays ready.
HOSTILE_TEXT = st.one_of(
    st.text(max_size=50), st.text(st.characters(exclude_categories=()), max_size=250),  # surrogates included
    st.text(st.sampled_from("\x00\x01\r\n\t\"\\,;'\u2028\ufeff\ud800"), max_size=20), st.just("x" * 5000),
)
HOSTILE_NUMBERS = st.one_of(
    st.sampled_from([0, -1, 2**63 - 1, 2**63, 2**64, 2**70, -(2**63) - 1, 1.5, 1e20, 1e300, True]), st.integers(), st.floats(),
)
JSON = st.recursive(
    st.none() | st.booleans() | HOSTILE_NUMBERS | HOSTILE_TEXT,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(HOSTILE_TEXT, inner, max_size=5), max_leaves=15,
)
# Values at the limits of what JSON, Python, int64, numeric(14, 2) and Postgres text hold.
EDGE_VALUES = st.sampled_from([0, -1, 2**63, 2**64, 2**70, -(2**63) - 1, 1e20, float("inf"), float("nan"), "\x00",
                               "a\x00b", "\ud800", "x" * 5000, [2**70], [], {}])
PLAIN_TEXT = st.text(st.characters(exclude_categories=("Cc", "Cs")), max_size=60)
RECOMMEND = st.fixed_dictionaries(
    {"user_id": st.integers(1, 1200)},  # the shop's users and a few unknown ones
    optional={"k": st.integers(1, 200), "candidates": st.lists(st.integers(1, 130), max_size=40),
              "exclude_seen": st.booleans()})
EVENT = st.fixed_dictionaries(
    {"user_id": st.integers(10**9, 10**9 + 50),  # users outside the shop: stored events touch no trained user
     "item_id": st.integers(1, 130), "event_type": st.sampled_from(["view", "click", "cart", "purchase"])},
    optional={"event_timestamp": st.datetimes(dt.datetime(2026, 1, 1), dt.datetime(2027, 1, 1),
                                              timezones=st.none() | st.just(dt.timezone.utc)).map(dt.datetime.isoformat),
              "price": st.floats(0, 1e6) | st.integers(0, 10**6), "session_id": PLAIN_TEXT})


def corrupted(request: st.SearchStrategy[dict], fields: list[str]) -> st.SearchStrategy[dict]:
    """``request`` with up to two of ``fields`` (or an extra one) set to a value at the limits, to
    random JSON, or removed."""
    changes = st.dictionaries(st.sampled_from([*fields, "extra"]), EDGE_VALUES | JSON | st.just(...), max_size=2)
    return st.builds(lambda body, change: {k: v for k, v in {**body, **change}.items() if v is not ...}, request, changes)


PROPERTY_SETTINGS = hypothesis_settings(max_examples=100, deadline=None, database=None,
                                        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.fixture(scope="module")
def hostile_client(service):
    """Another client address on the same app, so its quarantine quota is its own."""
    client, *_ = service
    return TestClient(client.app, client=("198.51.100.9", 50000))


def _answered_sanely(client, response) -> None:
    event(f"HTTP {response.status_code}")  # pytest --hypothesis-show-statistics
    assert response.status_code < 500, (response.status_code, response.text[:300])
    assert len(response.content) < 100_000  # at most k=200 items; never the input echoed
    assert client.app.state.service.healthy


def _post_json(client, path: str, payload, key: bytes = b"test-key"):
    body = json.dumps(payload)  # NaN and Infinity as Python writes them (its parser reads them)
    return client.post(path, content=body, headers={"X-API-Key": key, "Content-Type": "application/json"})


@PROPERTY_SETTINGS
@given(payload=corrupted(RECOMMEND, ["user_id", "k", "candidates", "exclude_seen"]))
def test_random_recommend_requests_never_fail_the_service(hostile_client, payload):
    _answered_sanely(hostile_client, _post_json(hostile_client, "/recommend", payload))


@PROPERTY_SETTINGS
@given(payload=corrupted(EVENT, ["user_id", "item_id", "event_type", "event_timestamp", "price", "session_id"]))
def test_random_events_never_fail_the_service(hostile_client, payload):
    _answered_sanely(hostile_client, _post_json(hostile_client, "/events", payload))


@PROPERTY_SETTINGS
@given(path=st.sampled_from(["/recommend", "/events", "/users/{}/interests", "/ready", "/metrics"]),
       body=st.binary(max_size=300) | JSON.map(lambda v: json.dumps(v).encode()),
       segment=HOSTILE_TEXT | HOSTILE_NUMBERS.map(str),
       key=st.just(b"test-key") | st.binary(max_size=20).filter(lambda b: not set(b) & set(b"\r\n\x00")),
       content_type=st.sampled_from(["application/json", "text/plain", "application/x-www-form-urlencoded", ""]))
def test_random_bytes_keys_and_paths_never_fail_the_service(hostile_client, path, body, segment, key, content_type):
    headers = {"X-API-Key": key, **({"Content-Type": content_type} if content_type else {})}
    if "{}" in path:
        response = hostile_client.get(path.format(quote(segment, safe="", errors="surrogatepass")), headers=headers)
    else:
        response = hostile_client.request("POST" if path in ("/recommend", "/events") else "GET", path, content=body, headers=headers)
    _answered_sanely(hostile_client, response)


def test_the_service_is_ready_after_the_hostile_requests(service):
    client, *_ = service
    _still_ready(client)
    answer = client.post("/recommend", json={"user_id": _top_user(client), "k": 3}, headers=KEY).json()
    assert len(answer["items"]) == 3 and not answer["degraded"]


def test_postgres_outage_degrades_then_recovers(service):
    client, pgdata, *_ = service
    user = _top_user(client)
    retried = {"user_id": user, "item_id": _item(client), "event_type": "view", "event_id": "outage-retry"}
    assert client.get("/ready").status_code == 200
    loaded = client.app.state.service.recommender
    stop_embedded(pgdata)
    try:
        degraded = client.post("/recommend", json={"user_id": user, "k": 5}, headers=KEY)
        assert degraded.status_code == 200 and degraded.json()["degraded"] and len(degraded.json()["items"]) == 5
        not_ready = client.get("/ready")
        assert not_ready.status_code == 503 and str(pgdata) not in not_ready.text  # no server details without a key
        assert not_ready.json()["reason"].startswith("the database is unreachable")
        refused = client.post("/events", headers=KEY, json=retried)
        assert refused.status_code == 503 and refused.headers["Retry-After"] == "2", refused.text
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
    for _ in range(2):  # the client's retry is stored, a second retry is a duplicate
        assert client.post("/events", headers=KEY, json=retried).status_code == 200
    assert _rows(client, "SELECT count(*) FROM interest.events WHERE event_id = 'outage-retry'")[0][0] == 1
