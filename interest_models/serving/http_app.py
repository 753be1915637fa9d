"""HTTP service: recommendations, interest predictions and event intake (FastAPI).

The model and the Feast store are loaded once per worker process. When PostgreSQL cannot
be reached the service answers recommendations from the popular items it cached at
start-up, marks those answers ``degraded``, reports not-ready, and reconnects by itself on
a later request once the database is back. Every endpoint but ``/health`` and ``/ready``
needs the ``X-API-Key`` header.

Whatever a client sends is answered with a 4xx, never a 500 or a 503: requests are
checked at the edge (ids within int64, prices within the database column, no NUL in text,
no unknown fields, a body size limit), error answers never quote more than a short piece
of the input, a value the database refuses is the client's error, and only a lost
connection degrades the service. Rejected events are quarantined up to a quota per client.
"""
from __future__ import annotations

import asyncio
import datetime as dt
import gc
import json
import logging
import math
import os
import secrets
import threading
import time
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Annotated, Iterator, Literal

import psycopg
from fastapi import Depends, FastAPI, HTTPException, Path as PathParameter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader
from psycopg_pool import ConnectionPool
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from interest_models.config import load_config
from interest_models.feedback.impression_log import ImpressionLogger
from interest_models.serving.event_intake import EventWriter, IntakeCounters, OnlineRefresher, RequestOutcome, refresh_queue_status
from interest_models.serving.recommender import Recommender
from materialize.feature_store.repo import open_store
from materialize.database.server import connect, has_pgvector
from materialize.settings import Settings

log = logging.getLogger(__name__)
RECONNECT_INTERVAL_S = 2.0
POOL_SIZE = 6                    # the service's own connections (event writer, the two refresher tiers, readiness, metrics); reads use the online store's pool
POOL_TIMEOUT_S = 5.0             # wait for a pooled connection before answering "unreachable"
QUOTA_WINDOW_S = 60.0            # the window of the per-client quarantine quota
INT64_MAX = 2**63 - 1
PRICE_MAX = 999_999_999_999.99   # interest.events.price is numeric(14, 2)
SHOWN_CHARS = 200                # error answers quote at most this much of any text
SHOWN_ERRORS = 20                # and list at most this many validation errors

# A lost or refused connection degrades the service; a value the database refuses is the client's error.
_OUTAGE_ERRORS = (psycopg.OperationalError, psycopg.InterfaceError, OSError)
_INPUT_ERRORS = (psycopg.DataError, psycopg.IntegrityError)


def _no_nul(text: str) -> str:
    if "\x00" in text:
        raise ValueError("must not contain NUL characters")
    return text


PositiveId = Annotated[int, Field(gt=0, le=INT64_MAX)]
TextWithoutNul = Annotated[str, AfterValidator(_no_nul)]


class RecommendRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: PositiveId = Field(description="The shopper")
    k: int = Field(10, ge=1, le=200, description="Number of items to return")
    candidates: list[PositiveId] | None = Field(None, max_length=5000, description="Item ids to rank (default: retrieved)")
    exclude_seen: bool = Field(True, description="Leave out items in the user's recent sequence")
    policy: Literal["greedy", "bandit"] = Field("greedy", description="greedy: the blend's order; bandit: the learned policy")


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
    recommendation_id: str | None = Field(None, description="Send it with the events that answer this list (none when degraded)")
    policy: str = Field("greedy", description="The policy that chose the list (popular for a cold start)")
    policy_version: str = ""


class InterestsResponse(BaseModel):
    user_id: int
    next_category: dict[str, float]
    shift_probability: float | None
    dominant_category_30d: str | None
    cold_start: bool
    model_version: str


class EventIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: PositiveId
    item_id: PositiveId
    event_type: Literal["view", "click", "cart", "purchase"]
    event_timestamp: dt.datetime | None = Field(None, description="Default: now (UTC); give it, or an event_id, for safe retries")
    price: float | None = Field(None, ge=0, le=PRICE_MAX, allow_inf_nan=False)
    session_id: TextWithoutNul | None = Field(None, max_length=200)
    event_id: TextWithoutNul | None = Field(None, max_length=200, description=(
        "Idempotency key: an event_id is stored once (without one, the natural key user, time, item, type is)"))
    recommendation_id: TextWithoutNul | None = Field(None, max_length=200, description="The /recommend answer this event responds to")


class EventResult(BaseModel):
    status: Literal["stored", "duplicate", "rejected"]
    reason: str | None = Field(None, description="Why a rejected event was quarantined")


class EventsAccepted(BaseModel):
    stored: int = Field(description="Events stored by this request")
    duplicate: int = Field(description="Events already stored (a retry, or a repeated key in the batch)")
    rejected: int = Field(description="Events quarantined with their reason (only in a batch; one event is answered 422)")
    results: list[EventResult] = Field(description="One per event, in request order")


def _shown(text: str) -> str:
    return text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS] + "..."


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return _shown(text.splitlines()[0]) if text else type(error).__name__


class QuarantineQuota:
    """How many rejected events each client may have quarantined per minute (from its
    first one); past that, the client's events are refused (429) until its minute is over.
    Counts are per worker process; a client is its address (behind a proxy: the proxy's)."""

    def __init__(self, per_minute: int):
        self.per_minute = per_minute
        self.lock = threading.Lock()
        self.windows: dict[str, tuple[float, int]] = {}  # client -> (start of its minute, quarantined in it)
        self.quarantined = 0   # rejected events written to interest.quarantine
        self.refused = 0       # events refused because their client's quota was used up

    def refusal_s(self, client: str) -> int | None:
        """None when ``client`` may send an event, else the seconds until it may (counted as refused)."""
        with self.lock:
            start, count = self.windows.get(client, (0.0, 0))
            left_s = start + QUOTA_WINDOW_S - time.monotonic()
            if left_s <= 0 or count < self.per_minute:
                return None
            self.refused += 1
            return max(1, math.ceil(left_s))

    def add(self, client: str, events: int = 1) -> None:
        """Count quarantined events of ``client``."""
        with self.lock:
            now = time.monotonic()
            start, count = self.windows.get(client, (0.0, 0))
            if now - start >= QUOTA_WINDOW_S:  # a new minute for this client: forget the clients whose minute is over
                self.windows = {c: w for c, w in self.windows.items() if now - w[0] < QUOTA_WINDOW_S}
                start, count = now, 0
            self.windows[client] = (start, count + events)
            self.quarantined += events


class ServiceState:
    """The loaded model and store, the service's own connection pool, and whether the
    database currently answers.

    The model and the Feast store load once. An outage closes only the service's pool (a
    new one opens on recovery): the online store plugin's pool reconnects by itself, so on
    recovery the loaded model serves again without a reload.
    """

    def __init__(self, settings: Settings, registry_root: Path, version: str | None, serving_config: dict | None,
                 quarantine_per_minute: int, intake_config: dict):
        self.settings, self.registry_root, self.version, self.serving_config = settings, registry_root, version, serving_config
        self.lock = threading.RLock()
        self.intake_config = intake_config
        self.intake_counters = IntakeCounters()
        self.writer: EventWriter | None = None
        self.refresher: OnlineRefresher | None = None
        self.recommender: Recommender | None = None
        self.pool: ConnectionPool | None = None
        self.healthy = False
        self.fallback: list[int] = []
        self.fallback_version = ""
        self.last_attempt = 0.0
        self.quota = QuarantineQuota(quarantine_per_minute)

    def connect(self) -> None:
        """Open the service's connection pool; load the model and store the first time."""
        with self.lock:
            # One plain connection first: it fails at once when the server is down, where a
            # pool would keep retrying in the background until its timeout.
            with connect(self.settings.postgres) as conn:
                if self.recommender is None:
                    store = open_store(self.settings.feature_repo_dir, self.settings.postgres, has_pgvector(conn))
                    names = dict(conn.execute("SELECT category_id, category FROM interest.categories"))
                    recommender = Recommender.from_registry(self.registry_root, store, names, self.version,
                                                            self.serving_config, self.settings.config_dir)
                    self.recommender = recommender
                    self.fallback = [int(recommender.vocabulary.item_ids[i]) for i in recommender.index.popular]
                    self.fallback_version = recommender.registered.version
                    # The model, the store and the imports live as long as the process: frozen out of
                    # the collector's sight, a full collection no longer walks them. Measured with a
                    # model loaded: 0.4-0.7 s per full collection, one every few item-feature refreshes,
                    # each stalling every request; 0.5 ms once frozen.
                    gc.collect()
                    gc.freeze()
                    self._start_intake()
            pool = ConnectionPool(self.settings.postgres.conninfo(), min_size=1, max_size=POOL_SIZE, timeout=POOL_TIMEOUT_S,
                                  check=ConnectionPool.check_connection, name="interest-service", open=False)
            try:
                pool.open(wait=True, timeout=POOL_TIMEOUT_S)
            except BaseException:
                pool.close()
                raise
            self.pool, self.healthy = pool, True

    def _start_intake(self) -> None:
        """The event writer and the online refresher (once the store is loaded)."""
        config, pipeline = self.intake_config, self.settings.pipeline
        self.writer = EventWriter(self.connection, pipeline, config["max_write_events"], self.intake_counters)
        self.refresher = OnlineRefresher(self.connection, pipeline, lambda: self.recommender.store if self.healthy else None,
                                         config, self.intake_counters)

    def failed(self, error: Exception) -> None:
        with self.lock:
            log.warning("database unavailable, serving degraded answers: %s", error)
            pool, self.pool, self.healthy = self.pool, None, False
        if pool is not None:  # closing waits for its workers: not in the request
            threading.Thread(target=pool.close, name="interest-service-pool-close", daemon=True).start()

    def close(self) -> None:
        for worker in (self.writer, self.refresher):  # the writer first: its waiting requests are stored
            if worker is not None:
                worker.close()
        with self.lock:
            pool, self.pool, self.healthy = self.pool, None, False
        if pool is not None:
            pool.close()

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection]:
        """A pooled connection for this thread alone (returned, rolled back if need be, on exit)."""
        pool = self.pool
        if pool is None:
            raise psycopg.OperationalError("the database is unreachable")
        with pool.connection() as conn:
            yield conn

    def available(self) -> Recommender | None:
        """The recommender while the database answers; reconnects (at most every few
        seconds) when it did not."""
        if self.healthy:  # the common case takes no lock
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
        if self.available() is None:
            return False
        try:
            with self.connection() as conn:
                conn.execute("SELECT 1").fetchone()
                conn.commit()
            return True
        except _OUTAGE_ERRORS as error:
            self.failed(error)
            return False


class BodyLimit:
    """ASGI middleware: a request body over ``max_bytes`` is answered 413 before it is parsed
    (by its Content-Length, or once a chunked body passes the limit)."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length", b"0")
        if not declared.isdigit() or int(declared) > self.max_bytes:
            return await self.too_large()(scope, receive, send)
        received = 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise HTTPException(status_code=413, detail=f"the request body is over {self.max_bytes} bytes")
            return message

        await self.app(scope, limited_receive, send)

    def too_large(self) -> JSONResponse:
        return JSONResponse(status_code=413, content={"detail": f"the request body is over {self.max_bytes} bytes"})


def create_app(settings: Settings, registry_root: Path, api_key: str, version: str | None = None,
               serving_config: dict | None = None) -> FastAPI:
    """The FastAPI application; the model and store load at start-up.

    Args:
        serving_config: overrides of ``interest_models/config/serving.yaml``.
    """
    if not api_key:
        raise ValueError("an API key is required (set INTEREST_API_KEY)")
    config = load_config("serving", serving_config, settings.config_dir)  # unknown keys fail now, not as a "database down" later
    state = ServiceState(settings, registry_root, version, serving_config, config["quarantine_per_client_per_minute"],
                         config["intake"])
    expected_key = api_key.encode()

    impression_log = ImpressionLogger(lambda: connect(settings.postgres))  # answers of /recommend (issue 13)

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        state.available()
        yield
        state.close()
        impression_log.close()

    app = FastAPI(title="Interest-shift recommender", version="0.1.0", lifespan=lifespan,
                  description="Recommendations and interest predictions from the Feast online store.")
    app.add_middleware(BodyLimit, max_bytes=config["max_request_bytes"])
    app.state.service = state
    key_header = APIKeyHeader(name="X-API-Key", auto_error=False)

    async def require_key(key: str | None = Depends(key_header)) -> None:
        # Header values arrive as Latin-1 text: compared as the bytes sent (any byte, no exception).
        if key is None or not secrets.compare_digest(key.encode("latin-1"), expected_key):
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

    @app.get("/metrics", dependencies=[Depends(require_key)])
    def metrics() -> dict:
        """This worker process's counters of the event intake, and the online refresh's
        backlog (all workers'; null while the database is unreachable)."""
        backlog = None
        if state.available() is not None:
            try:
                with state.connection() as conn:
                    backlog = refresh_queue_status(conn)
            except _OUTAGE_ERRORS as error:
                state.failed(error)
        return {"events_quarantined": state.quota.quarantined, "events_refused_over_quota": state.quota.refused,
                "quarantine_per_client_per_minute": state.quota.per_minute,
                **{f"intake_{name}": value for name, value in state.intake_counters.__dict__.items()},
                "refresh_backlog": backlog, **impression_log.counters()}

    @app.post("/recommend", response_model=RecommendResponse, dependencies=[Depends(require_key)])
    async def recommend(request: RecommendRequest) -> RecommendResponse:
        # Scoring is a few milliseconds of CPU, so it runs on the event loop: a thread hand-off
        # would cost more than it saves, as threads cannot score in parallel under the GIL.
        # Worker processes (``interest serve --workers``) use the cores.
        recommender = await loaded()
        if recommender is not None:
            try:
                answer = await recommender.recommend_async(request.user_id, request.k, request.candidates, request.exclude_seen,
                                                           request.policy)
                if answer.logged is not None:
                    impression_log.submit(answer.logged)
                return RecommendResponse(
                    user_id=answer.user_id, items=[RecommendedItemOut(**i.__dict__) for i in answer.items],
                    cold_start=answer.cold_start, degraded=False, model_version=answer.model_version,
                    recommendation_id=answer.recommendation_id if answer.logged is not None else None,
                    policy=answer.policy, policy_version=answer.policy_version,
                )
            except _OUTAGE_ERRORS as error:
                state.failed(error)
        if not state.fallback:
            raise HTTPException(status_code=503, detail="the database is unreachable and no fallback is cached yet")
        pool = [i for i in state.fallback if request.candidates is None or i in set(request.candidates)]
        return RecommendResponse(
            user_id=request.user_id, cold_start=False, degraded=True, model_version=state.fallback_version,
            items=[RecommendedItemOut(item_id=i, score=0.0, reasons=["popular right now"]) for i in pool[: request.k]],
            policy="popular", policy_version="popular",  # not logged: no recommendation_id
        )

    @app.get("/users/{user_id}/interests", response_model=InterestsResponse, dependencies=[Depends(require_key)])
    async def interests(user_id: Annotated[int, PathParameter(gt=0, le=INT64_MAX)]) -> InterestsResponse:
        recommender = await loaded()
        if recommender is not None:
            try:
                answer = await recommender.interests_async(user_id)
                return InterestsResponse(**{k: v for k, v in answer.__dict__.items() if k != "extra"})
            except _OUTAGE_ERRORS as error:
                state.failed(error)
        raise HTTPException(status_code=503, detail="interest predictions need the database, which is unreachable")

    max_batch = state.intake_config["max_batch_events"]
    single_event, event_batch = TypeAdapter(EventIn), TypeAdapter(Annotated[list[EventIn], Field(min_length=1, max_length=max_batch)])

    @app.post("/events", response_model=EventsAccepted, dependencies=[Depends(require_key)], openapi_extra={
        "requestBody": {"required": True, "content": {"application/json": {"schema": {"oneOf": [
            EventIn.model_json_schema(), {"type": "array", "items": EventIn.model_json_schema(), "maxItems": max_batch}]}}}}})
    async def events(request: Request) -> EventsAccepted:
        """Store one event (an object) or a batch (an array of up to ``max_batch_events``).
        Answered once the events are durably stored; the user's online features follow
        within about ``refresh_interval_ms`` plus one refresh. Retries are safe: an
        event_id, or else the natural key (user, time, item, type), is stored once."""
        client = request.client.host if request.client else "unknown"
        wait_s = state.quota.refusal_s(client)
        if wait_s is not None:
            raise HTTPException(status_code=429, headers={"Retry-After": str(wait_s)}, detail=(
                f"over {state.quota.per_minute} rejected events from this client within a minute: "
                f"events are refused for {wait_s} s"))
        try:
            body = json.loads(await request.body())
        except (ValueError, RecursionError) as error:  # not JSON, not UTF-8, nested too deep
            raise RequestValidationError([{"loc": ("body",), "msg": f"not JSON: {error}", "type": "json_invalid"}]) from None
        try:
            batch = event_batch.validate_python(body) if isinstance(body, list) else [single_event.validate_python(body)]
        except ValidationError as error:
            raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in error.errors()]) from None
        if await loaded() is None:
            raise _intake_unavailable()
        now = dt.datetime.now(dt.timezone.utc)
        events = [{**event.model_dump(), "event_timestamp": _utc(event.event_timestamp or now)} for event in batch]
        try:
            outcome: RequestOutcome = await asyncio.wrap_future(state.writer.submit(events, client))
        except _INPUT_ERRORS as error:
            state.quota.add(client, len(batch))
            raise HTTPException(status_code=422, detail=f"the database refused the events: {_first_line(error)}")
        except _OUTAGE_ERRORS as error:
            state.failed(error)
            raise _intake_unavailable()
        if outcome.reasons:
            state.quota.add(client, len(outcome.reasons))
        if not isinstance(body, list) and outcome.reasons:
            raise HTTPException(status_code=422, detail=_shown(outcome.reasons[0]))
        return EventsAccepted(stored=outcome.count("stored"), duplicate=outcome.count("duplicate"),
                              rejected=outcome.count("rejected"),
                              results=[EventResult(status=status, reason=_shown(outcome.reasons[i]) if i in outcome.reasons else None)
                                       for i, status in enumerate(outcome.statuses)])

    @app.exception_handler(RequestValidationError)
    def invalid_request(_: Request, error: RequestValidationError):
        # FastAPI's default answer repeats each invalid input in full (megabytes for a large one).
        errors = error.errors()
        return JSONResponse(status_code=422, content={"errors": len(errors), "detail": [
            {"loc": [part if isinstance(part, int) else _shown(str(part)) for part in e["loc"]],
             "msg": _shown(e["msg"]), "type": e["type"]} for e in errors[:SHOWN_ERRORS]]})

    @app.exception_handler(ValueError)
    def value_error(_: Request, error: ValueError):
        return JSONResponse(status_code=422, content={"detail": _shown(str(error))})

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


def _utc(timestamp: dt.datetime) -> dt.datetime:
    """``timestamp`` in UTC (one without an offset is taken as UTC)."""
    return timestamp.replace(tzinfo=dt.timezone.utc) if timestamp.tzinfo is None else timestamp.astimezone(dt.timezone.utc)


def _intake_unavailable() -> HTTPException:
    return HTTPException(status_code=503, headers={"Retry-After": str(math.ceil(RECONNECT_INTERVAL_S))}, detail=(
        "the database is unreachable: retry later; events already stored are recognised by their event_id "
        "(or user, time, item and type) and not stored twice"))
