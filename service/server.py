"""The gRPC server: request validation, the servicer, health, reflection, model hot-swap.

``build_server`` returns a started ``(Server, port)`` pair so tests bind port 0 and talk
to a real server; ``__main__`` only adds signals and settings around it.
"""

from __future__ import annotations

import functools
import logging
import threading
import uuid
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from omnirec.v1 import recommender_pb2 as pb
from omnirec.v1 import recommender_pb2_grpc as pb_grpc
from service.config import Settings
from service.errors import BadInput, ModelNotFound, StoreUnavailable
from service.events import MAX_ID_LENGTH
from service.features import FeatureStore
from service.recommender import Exclusions, Recommender
from service.registry import ServedModel

log = logging.getLogger(__name__)

SERVICE_NAMES = (pb.DESCRIPTOR.services_by_name["Recommender"].full_name,)

Request = TypeVar("Request")


# --- the served model, swappable while serving ---------------------------------------


@dataclass(frozen=True)
class Engine:
    """A model and its recommender; replaced as a whole when the alias moves."""

    model: ServedModel
    recommender: Recommender


class ModelHolder:
    """Holds the live :class:`Engine`; readers take one reference per request."""

    def __init__(self, model: ServedModel) -> None:
        self.engine = Engine(model, Recommender(model.bundle))

    def swap(self, model: ServedModel) -> None:
        engine = Engine(model, Recommender(model.bundle))
        # One reference assignment: a request sees the old engine or the new one.
        self.engine = engine
        log.info("now serving %s", model.label)


# --- errors at the boundary -----------------------------------------------------------


def _rpc(method: Callable[..., Any]) -> Callable[..., Any]:
    """Maps domain errors to status codes once, so handlers raise, never abort."""

    @functools.wraps(method)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return method(self, request, context)
        except BadInput as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except StoreUnavailable as exc:
            log.warning("%s: %s", method.__name__, exc)
            context.abort(grpc.StatusCode.UNAVAILABLE, f"feature store unavailable: {exc}")
        except ModelNotFound as exc:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        except Exception:
            log.exception("%s failed", method.__name__)
            context.abort(grpc.StatusCode.INTERNAL, "internal error; see the server log")

    return wrapper


def check_id(field: str, value: str) -> str:
    if not value:
        raise BadInput(field, "is required")
    if len(value) > MAX_ID_LENGTH:
        raise BadInput(field, f"is longer than {MAX_ID_LENGTH} characters")
    return value


def check_limit(limit: int, settings: Settings) -> int:
    if limit == 0:
        return settings.default_limit
    if not 1 <= limit <= settings.max_limit:
        raise BadInput(
            "limit",
            f"must be between 1 and {settings.max_limit} (0 means the default, "
            f"{settings.default_limit}); got {limit}",
        )
    return limit


# --- the servicer --------------------------------------------------------------------


class RecommenderService(pb_grpc.RecommenderServicer):
    def __init__(self, settings: Settings, models: ModelHolder, store: FeatureStore) -> None:
        self.settings = settings
        self.models = models
        self.store = store

    @_rpc
    def Recommend(  # noqa: N802 (gRPC method name)
        self, request: pb.RecommendRequest, context: grpc.ServicerContext
    ) -> pb.RecommendResponse:
        user_id = check_id("user_id", request.user_id)
        limit = check_limit(request.limit, self.settings)
        for item in request.exclude_item_ids:
            check_id("exclude_item_ids", item)
        exclusions = Exclusions(
            item_ids=frozenset(request.exclude_item_ids),
            purchased=request.exclude_purchased if request.HasField("exclude_purchased") else True,
            disliked=request.exclude_disliked if request.HasField("exclude_disliked") else True,
        )
        engine = self.models.engine
        view = self.store.serving_view(user_id, engine.recommender.popular_count(limit, exclusions))
        ranked = engine.recommender.recommend(user_id, view, limit, exclusions)
        return pb.RecommendResponse(
            items=[
                pb.RecommendedItem(item_id=r.item_id, score=r.score, reason=r.reason)
                for r in ranked
            ],
            model_version=engine.model.label,
            recommendation_id=uuid.uuid4().hex,
        )


# --- building and running -------------------------------------------------------------


class Supervisor:
    """Background upkeep: health follows Redis, and the model follows its alias."""

    HEALTH_EVERY_SECONDS = 1.0

    def __init__(
        self,
        settings: Settings,
        health_servicer: health.HealthServicer,
        store: FeatureStore,
        models: ModelHolder,
        reload_model: Callable[[str], ServedModel] | None,
        current_version: Callable[[], str | None] | None,
    ) -> None:
        self.settings = settings
        self.health = health_servicer
        self.store = store
        self.models = models
        self.reload_model = reload_model
        self.current_version = current_version
        self._stop = threading.Event()
        self._serving: bool | None = None
        self._thread = threading.Thread(target=self._run, name="omnirec-supervisor", daemon=True)

    def start(self) -> None:
        self.check_health()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def check_health(self) -> bool:
        ok = self.store.ping()
        if ok != self._serving:
            status = (
                health_pb2.HealthCheckResponse.SERVING
                if ok
                else health_pb2.HealthCheckResponse.NOT_SERVING
            )
            for name in ("", *SERVICE_NAMES):
                self.health.set(name, status)
            if ok:
                log.info("Redis reachable: SERVING")
            else:
                log.warning("Redis unreachable: NOT_SERVING until it is back")
            self._serving = ok
        return ok

    def check_model(self) -> None:
        if self.reload_model is None or self.current_version is None:
            return
        try:
            version = self.current_version()
            if version is not None and version != self.models.engine.model.version:
                self.models.swap(self.reload_model(version))
        except Exception:
            # The registry may be briefly unreachable; keep serving the loaded model.
            log.exception("checking the model alias failed; still serving the loaded model")

    def _run(self) -> None:
        poll = self.settings.model_poll_seconds
        waited = 0.0
        while not self._stop.wait(self.HEALTH_EVERY_SECONDS):
            self.check_health()
            waited += self.HEALTH_EVERY_SECONDS
            if poll and waited >= poll:
                waited = 0.0
                self.check_model()


@dataclass
class RunningServer:
    server: grpc.Server
    port: int
    health: health.HealthServicer
    supervisor: Supervisor
    models: ModelHolder

    def stop(self, grace: float | None) -> None:
        """SIGTERM order: NOT_SERVING → finish in-flight calls → stop upkeep."""
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait()
        self.supervisor.stop()


def build_server(
    settings: Settings,
    model: ServedModel,
    store: FeatureStore,
    *,
    reload_model: Callable[[str], ServedModel] | None = None,
    current_version: Callable[[], str | None] | None = None,
    address: str | None = None,
) -> RunningServer:
    """Start a gRPC server on ``address`` (default ``host:port`` from settings).

    ``reload_model`` / ``current_version`` let the server follow the alias; leave them
    out to serve ``model`` for good.
    """
    models = ModelHolder(model)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=settings.workers, thread_name_prefix="rpc"),
        options=[("grpc.so_reuseport", 0)],
    )
    pb_grpc.add_RecommenderServicer_to_server(RecommenderService(settings, models, store), server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (
            *SERVICE_NAMES,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ),
        server,
    )
    port = server.add_insecure_port(address or f"{settings.host}:{settings.port}")
    if port == 0:
        raise OSError(f"cannot bind {address or settings.host}:{settings.port}")
    supervisor = Supervisor(settings, health_servicer, store, models, reload_model, current_version)
    server.start()
    supervisor.start()
    log.info("omnirec serving %s on port %d", model.label, port)
    return RunningServer(server, port, health_servicer, supervisor, models)
