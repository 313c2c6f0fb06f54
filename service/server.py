"""The gRPC server: request validation, the servicer, health, reflection, model hot-swap.

``build_server`` returns a started ``(Server, port)`` pair so tests bind port 0 and talk
to a real server; ``__main__`` only adds signals and settings around it.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from omnirec.v1 import engagement_pb2 as epb
from omnirec.v1 import engagement_pb2_grpc as epb_grpc
from omnirec.v1 import profiles_pb2 as ppb
from omnirec.v1 import profiles_pb2_grpc as ppb_grpc
from omnirec.v1 import recommender_pb2 as pb
from omnirec.v1 import recommender_pb2_grpc as pb_grpc
from service.catalogue import MAX_CATEGORY_LENGTH, CatalogueCache, ItemFilter
from service.config import Settings, identity_secret
from service.engagement import EngagementService, priors_of
from service.errors import BadInput, NotFound
from service.events import MAX_ID_LENGTH, validate_event
from service.features import FeatureStore, TrackedEvent
from service.identity import Identities
from service.profiles import ProfilesService
from service.recommender import RankingOptions, Recommendation, Recommender, ServingParams
from service.registry import ServedModel
from service.rpc import check_id, check_limit, rpc
from service.send_time import Priors

log = logging.getLogger(__name__)

SERVICE_NAMES = (
    pb.DESCRIPTOR.services_by_name["Recommender"].full_name,
    epb.DESCRIPTOR.services_by_name["Engagement"].full_name,
    ppb.DESCRIPTOR.services_by_name["Profiles"].full_name,
)


# --- the served model, swappable while serving ---------------------------------------


@dataclass(frozen=True)
class Engine:
    """A model and its recommender; replaced as a whole when the alias moves."""

    model: ServedModel
    recommender: Recommender
    priors: Priors
    """Send-time and channel priors learnt with this model."""

    @classmethod
    def of(cls, model: ServedModel, params: ServingParams) -> Engine:
        return cls(model, Recommender(model.bundle, params), priors_of(model.bundle.metadata))


class ModelHolder:
    """Holds the live :class:`Engine`; readers take one reference per request."""

    def __init__(self, model: ServedModel, params: ServingParams) -> None:
        self.params = params
        self.engine = Engine.of(model, params)

    def swap(self, model: ServedModel) -> None:
        engine = Engine.of(model, self.params)
        # One reference assignment: a request sees the old engine or the new one.
        self.engine = engine
        log.info("now serving %s", model.label)


def _flag(request: Any, name: str, default: bool) -> bool:
    return getattr(request, name) if request.HasField(name) else default


#: Popular items read when a fallback must find some of one category.
MAX_POPULAR = 1000
#: The modes of SimilarItems.
SIMILAR_MODES = ("similar", "bought_together")
#: Newest events a live timestamp may be ahead of the server clock (clock skew).
MAX_FUTURE_SECONDS = 86_400


def to_tracked(event: pb.Event, now: float, identities: Identities) -> TrackedEvent:
    """Validate one live event; raises :class:`BadInput` naming the field. The event's
    ``user_id`` is its identity token until the caller resolves it to a person."""
    token = identities.request_token(event)
    if token is None:
        raise BadInput("user_id", "is required (or give an identifier)")
    validate_event(token, event.item_id, event.event_type, event.channel, event.timezone)
    if event.HasField("timestamp"):
        seconds = event.timestamp.seconds
        if seconds < 0:
            raise BadInput("timestamp", "is before 1970")
        if seconds > now + MAX_FUTURE_SECONDS:
            raise BadInput("timestamp", "is more than a day in the future")
    else:
        seconds = int(now)
    if not math.isfinite(event.value):
        raise BadInput("value", "must be a finite number")
    return TrackedEvent(
        token,
        event.item_id,
        event.event_type,
        int(seconds),
        event.channel,
        event.timezone,
        event.value,
        event.automated,
    )


def to_item_fields(item: pb.Item) -> dict[str, Any]:
    check_id("item_id", item.item_id)
    fields_: dict[str, Any] = {}
    if item.HasField("category"):
        if not item.category or len(item.category) > MAX_CATEGORY_LENGTH:
            raise BadInput("category", f"must be 1 to {MAX_CATEGORY_LENGTH} characters")
        fields_["category"] = item.category
    if item.HasField("title"):
        fields_["title"] = item.title
    if item.HasField("price"):
        if not math.isfinite(item.price) or item.price < 0:
            raise BadInput("price", "must be a finite number ≥ 0")
        fields_["price"] = item.price
    if item.HasField("in_stock"):
        fields_["in_stock"] = item.in_stock
    return fields_


# --- the servicer --------------------------------------------------------------------


class RecommenderService(pb_grpc.RecommenderServicer):
    def __init__(
        self, settings: Settings, models: ModelHolder, store: FeatureStore, identities: Identities
    ) -> None:
        self.settings = settings
        self.models = models
        self.store = store
        self.identities = identities
        self.catalogue = CatalogueCache(store.catalogue)

    @rpc
    def Recommend(  # noqa: N802 (gRPC method name)
        self, request: pb.RecommendRequest, context: grpc.ServicerContext
    ) -> pb.RecommendResponse:
        user_id = self.identities.person_of(request)
        options = RankingOptions(
            limit=check_limit(request.limit, self.settings),
            item_filter=ItemFilter.from_request(request),
            exclude_purchased=_flag(request, "exclude_purchased", True),
            exclude_disliked=_flag(request, "exclude_disliked", True),
            exclude_seen=_flag(request, "exclude_seen", False),
            context_item_id=request.context_item_id,
        )
        if len(request.context_item_id) > MAX_ID_LENGTH:
            raise BadInput("context_item_id", f"is longer than {MAX_ID_LENGTH} characters")
        engine = self.models.engine
        view = self.store.serving_view(user_id, engine.recommender.popular_count(options))
        catalogue = self.catalogue.get(view.catalogue_version)
        ranked = engine.recommender.recommend(user_id, view, catalogue, options)
        return pb.RecommendResponse(
            items=_items(ranked),
            model_version=engine.model.label,
            recommendation_id=uuid.uuid4().hex,
        )

    @rpc
    def SimilarItems(  # noqa: N802
        self, request: pb.SimilarItemsRequest, context: grpc.ServicerContext
    ) -> pb.SimilarItemsResponse:
        item_id = check_id("item_id", request.item_id)
        mode = request.mode or "similar"
        if mode not in SIMILAR_MODES:
            raise BadInput("mode", f"{mode!r} is not one of {', '.join(SIMILAR_MODES)}")
        token = self.identities.request_token(request)
        person = self.identities.person(token) if token else None
        options = RankingOptions(
            limit=check_limit(request.limit, self.settings),
            item_filter=ItemFilter.from_request(request),
            exclude_purchased=person is not None,
            exclude_disliked=person is not None,
        )
        engine = self.models.engine
        # The person's view also brings popular/trending items and the catalogue version.
        # An item the model does not know falls back on popular items of its category,
        # which may sit deep in the popular list.
        known = engine.recommender.knows_item(item_id)
        popular = engine.recommender.popular_count(options) if known else MAX_POPULAR
        # Without a person, "\x00" (never a valid id) reads no one's features.
        view = self.store.serving_view(person or "\x00", popular)
        catalogue = self.catalogue.get(view.catalogue_version)
        together = self.store.bought_together(item_id, options.limit + 50)
        # An item in the catalogue without metadata (seen only in events) still counts.
        if not (known or together or catalogue.meta(item_id) is not None):
            raise NotFound(f"item_id: {item_id!r} is unknown to the model and the catalogue")
        ranked = engine.recommender.similar_items(
            item_id, catalogue, options, view, together, mode == "bought_together"
        )
        return pb.SimilarItemsResponse(
            items=_items(ranked),
            model_version=engine.model.label,
            recommendation_id=uuid.uuid4().hex,
        )

    @rpc
    def TrackEvents(  # noqa: N802
        self, request: pb.TrackEventsRequest, context: grpc.ServicerContext
    ) -> pb.TrackEventsResponse:
        if len(request.events) > self.settings.max_batch:
            raise BadInput(
                "events", f"at most {self.settings.max_batch} per call, got {len(request.events)}"
            )
        now = time.time()
        accepted: list[TrackedEvent] = []
        rejections: list[pb.RejectedEvent] = []
        for n, event in enumerate(request.events):
            try:
                accepted.append(to_tracked(event, now, self.identities))
            except BadInput as exc:
                rejections.append(pb.RejectedEvent(index=n, field=exc.field, reason=exc.reason))
        # One round trip resolves every event's person.
        people = self._people({e.user_id for e in accepted})
        for event in accepted:
            event.user_id = people[event.user_id]
        self.store.record(accepted, self.models.engine.recommender.weights)
        return pb.TrackEventsResponse(
            accepted=len(accepted), rejected=len(rejections), rejections=rejections
        )

    def _people(self, tokens: set[str]) -> dict[str, str]:
        ordered = sorted(tokens)
        return dict(zip(ordered, self.identities.resolve(ordered), strict=True))

    @rpc
    def UpsertItems(  # noqa: N802
        self, request: pb.UpsertItemsRequest, context: grpc.ServicerContext
    ) -> pb.UpsertItemsResponse:
        if len(request.items) > self.settings.max_batch:
            raise BadInput(
                "items", f"at most {self.settings.max_batch} per call, got {len(request.items)}"
            )
        items = []
        for n, item in enumerate(request.items):
            try:
                items.append((item.item_id, to_item_fields(item)))
            except BadInput as exc:
                # One bad item refuses the call: a catalogue half-applied is worse.
                raise BadInput(f"items[{n}].{exc.field}", exc.reason) from None
        created = self.store.upsert_items(items)
        return pb.UpsertItemsResponse(upserted=len(items), created=created)


def _items(ranked: list[Recommendation]) -> list[pb.RecommendedItem]:
    return [pb.RecommendedItem(item_id=r.item_id, score=r.score, reason=r.reason) for r in ranked]


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
    reuse_port: bool = False,
) -> RunningServer:
    """Start a gRPC server on ``address`` (default ``host:port`` from settings).

    ``reload_model`` / ``current_version`` let the server follow the alias; leave them
    out to serve ``model`` for good. ``reuse_port`` lets several processes share the port.
    """
    models = ModelHolder(
        model,
        ServingParams(settings.recency_half_life_events, settings.recent_events),
    )
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=settings.workers, thread_name_prefix="rpc"),
        # Off unless asked: a second server on a busy port must fail, not share it.
        options=[("grpc.so_reuseport", 1 if reuse_port else 0)],
    )
    identities = Identities(store, identity_secret(settings))
    pb_grpc.add_RecommenderServicer_to_server(
        RecommenderService(settings, models, store, identities), server
    )
    epb_grpc.add_EngagementServicer_to_server(
        EngagementService(settings, models, store, identities), server
    )
    ppb_grpc.add_ProfilesServicer_to_server(
        ProfilesService(settings, models, store, identities), server
    )
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
