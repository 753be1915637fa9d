"""HTTP service: recommendations, interest predictions and event intake (FastAPI).

The model and the Feast store are loaded once per worker process. When PostgreSQL cannot be reached the
service answers recommendations from the popular items it cached at start-up, marks
those answers ``degraded``, reports not-ready, and reconnects by itself on a later
request once the database is back. Every endpoint but ``/health`` and ``/ready`` needs
the ``X-API-Key`` header.
"""
from __future__ import annotations

import datetime as dt
import logging
import os
import secrets
import threading
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Literal

import pandas as pd
import psycopg
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader
from pydantic import BaseModel, Field

from interest_models.config import load_config
from interest_models.serving.recommender import Recommender
from materialize.ingest import loader as ingest
from materialize.database.tables import fetch_frame
from materialize.features.builder import refresh_users
from materialize.feature_store.repo import open_store
from materialize.database.server import connect, has_pgvector
from materialize.settings import Settings

log = logging.getLogger(__name__)
RECONNECT_INTERVAL_S = 2.0
PUSHED_TABLES = {"user_daily_push": "user_daily_features", "user_sequence_push": "user_recent_sequence"}


class RecommendRequest(BaseModel):
    user_id: int = Field(gt=0, description="The shopper")
    k: int = Field(10, ge=1, le=200, description="Number of items to return")
    candidates: list[int] | None = Field(None, max_length=5000, description="Item ids to rank (default: retrieved)")
    exclude_seen: bool = Field(True, description="Leave out items in the user's recent sequence")


class RecommendedItemOut(BaseModel):
    item_id: int
    score: float
    reasons: list[str]


class RecommendResponse(BaseModel):
    user_id: int
    items: list[RecommendedItemOut]
    cold_start: bool = Field(description="Unknown user: popular items")
    degraded: bool = Field(description="Database unreachable: popular items from the start-up cache")
    model_version: str


class InterestsResponse(BaseModel):
    user_id: int
    next_category: dict[str, float]
    shift_probability: float | None
    dominant_category_30d: str | None
    cold_start: bool
    model_version: str


class EventIn(BaseModel):
    user_id: int = Field(gt=0)
    item_id: int = Field(gt=0)
    event_type: Literal["view", "click", "cart", "purchase"]
    event_timestamp: dt.datetime | None = Field(None, description="Default: now (UTC)")
    price: float | None = Field(None, ge=0)
    session_id: str | None = Field(None, max_length=200)


class EventAccepted(BaseModel):
    accepted: bool
    duplicate: bool
    sequence_length: int


class ServiceState:
    """The loaded model and store, the service's own connection, and whether the database
    currently answers.

    The model and the Feast store load once. An outage closes only the service's connection:
    the online store plugin's pool reconnects by itself, so on recovery the loaded model
    serves again without a reload.
    """

    def __init__(self, settings: Settings, registry_root: Path, version: str | None, serving_config: dict | None):
        self.settings, self.registry_root, self.version, self.serving_config = settings, registry_root, version, serving_config
        self.lock = threading.RLock()
        self.recommender: Recommender | None = None
        self.conn: psycopg.Connection | None = None
        self.healthy = False
        self.fallback: list[int] = []
        self.fallback_version = ""
        self.last_attempt = 0.0
        self.last_error: str | None = None

    def connect(self) -> None:
        """Open the service's connection; load the model and store the first time."""
        with self.lock:
            conn = connect(self.settings.postgres)
            if self.recommender is None:
                store = open_store(self.settings.feature_repo_dir, self.settings.postgres, has_pgvector(conn))
                names = dict(conn.execute("SELECT category_id, category FROM interest.categories"))
                conn.commit()
                recommender = Recommender.from_registry(self.registry_root, store, names, self.version,
                                                        self.serving_config, self.settings.config_dir)
                self.recommender = recommender
                self.fallback = [int(recommender.vocabulary.item_ids[i]) for i in recommender.index.popular]
                self.fallback_version = recommender.registered.version
            self.conn, self.healthy, self.last_error = conn, True, None

    def failed(self, error: Exception) -> None:
        with self.lock:
            log.warning("database unavailable, serving degraded answers: %s", error)
            self.last_error = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            if self.conn is not None:
                try:
                    self.conn.close()
                except Exception:  # already broken
                    pass
            self.conn, self.healthy = None, False

    def available(self) -> Recommender | None:
        """The recommender while the database answers; reconnects (at most every few
        seconds) when it did not."""
        if self.healthy:  # the common case takes no lock (an /events call may hold it)
            return self.recommender
        with self.lock:
            if not self.healthy and time.monotonic() - self.last_attempt >= RECONNECT_INTERVAL_S:
                self.last_attempt = time.monotonic()
                try:
                    self.connect()
                except Exception as error:  # noqa: BLE001 - any failure means "not ready"
                    self.failed(error)
            return self.recommender if self.healthy else None

    def ping(self) -> bool:
        with self.lock:
            if self.available() is None:
                return False
            try:
                self.conn.execute("SELECT 1").fetchone()
                self.conn.commit()
                return True
            except psycopg.Error as error:
                self.failed(error)
                return False


_DATABASE_ERRORS = (psycopg.Error, OSError)


def create_app(settings: Settings, registry_root: Path, api_key: str, version: str | None = None,
               serving_config: dict | None = None) -> FastAPI:
    """The FastAPI application; the model and store load at start-up.

    Args:
        serving_config: overrides of ``interest_models/config/serving.yaml``.
    """
    if not api_key:
        raise ValueError("an API key is required (set INTEREST_API_KEY)")
    load_config("serving", serving_config, settings.config_dir)  # unknown keys fail now, not as a "database down" later
    state = ServiceState(settings, registry_root, version, serving_config)

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        state.available()
        yield

    app = FastAPI(title="Interest-shift recommender", version="0.1.0", lifespan=lifespan,
                  description="Recommendations and interest predictions from the Feast online store.")
    app.state.service = state
    key_header = APIKeyHeader(name="X-API-Key", auto_error=False)

    async def require_key(key: str | None = Depends(key_header)) -> None:
        if key is None or not secrets.compare_digest(key, api_key):
            raise HTTPException(status_code=401, detail="missing or wrong X-API-Key")

    async def loaded() -> Recommender | None:
        # Reconnecting may wait on the network, so it runs in a thread; a loaded model does not.
        return state.recommender if state.healthy else await run_in_threadpool(state.available)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/ready")
    def ready():
        if state.ping():
            return {"ready": True, "model_version": state.recommender.registered.version}
        # No key is needed here, so the error itself (hosts, socket paths) stays in the service log.
        reason = "the model is not loaded" if state.recommender is None else "the database is unreachable"
        return JSONResponse(status_code=503, content={"ready": False, "reason": f"{reason} (see the service log)"})

    @app.post("/recommend", response_model=RecommendResponse, dependencies=[Depends(require_key)])
    async def recommend(request: RecommendRequest) -> RecommendResponse:
        # Scoring is a few milliseconds of CPU, so it runs on the event loop: a thread hand-off
        # would cost more than it saves, as threads cannot score in parallel under the GIL.
        # Worker processes (``interest serve --workers``) use the cores.
        recommender = await loaded()
        if recommender is not None:
            try:
                answer = await recommender.recommend_async(request.user_id, request.k, request.candidates, request.exclude_seen)
                return RecommendResponse(
                    user_id=answer.user_id, items=[RecommendedItemOut(**i.__dict__) for i in answer.items],
                    cold_start=answer.cold_start, degraded=False, model_version=answer.model_version,
                )
            except _DATABASE_ERRORS as error:
                state.failed(error)
        if not state.fallback:
            raise HTTPException(status_code=503, detail="the database is unreachable and no fallback is cached yet")
        pool = [i for i in state.fallback if request.candidates is None or i in set(request.candidates)]
        return RecommendResponse(
            user_id=request.user_id, cold_start=False, degraded=True, model_version=state.fallback_version,
            items=[RecommendedItemOut(item_id=i, score=0.0, reasons=["popular right now"]) for i in pool[: request.k]],
        )

    @app.get("/users/{user_id}/interests", response_model=InterestsResponse, dependencies=[Depends(require_key)])
    async def interests(user_id: int) -> InterestsResponse:
        if user_id <= 0:
            raise HTTPException(status_code=422, detail=[{"loc": ["path", "user_id"], "msg": "must be a positive integer"}])
        recommender = await loaded()
        if recommender is not None:
            try:
                answer = await recommender.interests_async(user_id)
                return InterestsResponse(**{k: v for k, v in answer.__dict__.items() if k != "extra"})
            except _DATABASE_ERRORS as error:
                state.failed(error)
        raise HTTPException(status_code=503, detail="interest predictions need the database, which is unreachable")

    @app.post("/events", response_model=EventAccepted, dependencies=[Depends(require_key)])
    def events(event: EventIn) -> EventAccepted:
        with state.lock:
            recommender = state.available()
            if recommender is None:
                raise HTTPException(status_code=503, detail="the database is unreachable; the event was not stored")
            try:
                return _store_and_push(state, recommender, event)
            except _DATABASE_ERRORS as error:
                state.failed(error)
                raise HTTPException(status_code=503, detail="the database is unreachable; the event was not stored")

    @app.exception_handler(ValueError)
    def value_error(_: Request, error: ValueError):
        return JSONResponse(status_code=422, content={"detail": str(error)})

    return app


def app_from_environment() -> FastAPI:
    """``create_app`` configured from the environment (the factory each uvicorn worker
    process calls): ``INTEREST_API_KEY``, optional ``INTEREST_MODEL_VERSION``, optional
    ``INTEREST_SERVING_CONFIG`` (a YAML file of serving.yaml overrides) and the usual
    ``INTEREST_*`` database settings."""
    import torch
    import yaml
    from threadpoolctl import threadpool_limits

    from interest_models.registry.model_registry import registry_for
    from materialize.settings import load_settings

    # One request is a few small matrix products: thread pools (torch, OpenMP, BLAS) would
    # spin on the cores the other workers need. Measured: 8.2 ms of CPU per retrieved-candidate
    # request with the default BLAS threads, 3.2 ms with one.
    torch.set_num_threads(1)
    threadpool_limits(limits=1)
    settings = load_settings()
    config_path = os.environ.get("INTEREST_SERVING_CONFIG")
    serving_config = yaml.safe_load(Path(config_path).read_text()) if config_path else None
    return create_app(settings, registry_for(settings.project_dir).root, os.environ.get("INTEREST_API_KEY", ""),
                      os.environ.get("INTEREST_MODEL_VERSION") or None, serving_config)


def _store_and_push(state: ServiceState, recommender: Recommender, event: EventIn) -> EventAccepted:
    """Validate and store the raw event, recompute the user's features, push them online."""
    from feast.data_source import PushMode

    timestamp = pd.Timestamp(event.event_timestamp or dt.datetime.now(dt.timezone.utc))
    timestamp = timestamp.tz_localize("UTC") if timestamp.tzinfo is None else timestamp.tz_convert("UTC")
    frame = pd.DataFrame([{**event.model_dump(), "event_timestamp": timestamp}])
    conn = state.conn
    report = ingest.load_frames(conn, "events", [frame], source=f"api:{event.user_id}:{timestamp.isoformat()}",
                                future_tolerance_s=state.settings.pipeline.future_tolerance_seconds)
    if report.quarantined:
        reason = report.examples[0].split(": ", 1)[-1]
        raise ValueError(reason)
    refresh_users(conn, state.settings.pipeline, [event.user_id])
    store = recommender.store
    for push_source, table in PUSHED_TABLES.items():
        latest = fetch_frame(
            conn, f"SELECT * FROM interest.{table} WHERE user_id = %s ORDER BY event_timestamp DESC LIMIT 1",  # table is a constant
            (event.user_id,),
        )
        conn.commit()
        store.push(push_source, latest, to=PushMode.ONLINE)
    length = conn.execute(
        "SELECT sequence_length FROM interest.user_recent_sequence WHERE user_id = %s ORDER BY event_timestamp DESC LIMIT 1",
        (event.user_id,),
    ).fetchone()[0]
    conn.commit()
    return EventAccepted(accepted=True, duplicate=report.duplicate > 0, sequence_length=int(length))
