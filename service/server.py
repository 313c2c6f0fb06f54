"""The gRPC server: request validation, the servicer, health, reflection, model hot-swap.

``build_server`` returns a started server (its port, a ``stop``) so tests bind port 0 and
talk to a real server; ``__main__`` only adds signals and settings around it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import math
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from omnirec.v1 import campaigns_pb2 as cpb
from omnirec.v1 import campaigns_pb2_grpc as cpb_grpc
from omnirec.v1 import engagement_pb2 as epb
from omnirec.v1 import engagement_pb2_grpc as epb_grpc
from omnirec.v1 import profiles_pb2 as ppb
from omnirec.v1 import profiles_pb2_grpc as ppb_grpc
from omnirec.v1 import recommender_pb2 as pb
from omnirec.v1 import recommender_pb2_grpc as pb_grpc
from service import metrics
from service.campaigns_service import CampaignsService
from service.catalogue import (
    MAX_CATEGORY_LENGTH,
    MAX_TITLE_LENGTH,
    Catalogue,
    CatalogueCache,
    ItemFilter,
)
from service.config import Settings, identity_secret, repurchase_days
from service.engagement import priors_of
from service.engagement_service import EngagementService
from service.errors import (
    BadInput,
    ConfigError,
    DeadlineExpired,
    NotFound,
    StoreUnavailable,
    quote,
)
from service.events import (
    EVENT_TYPES,
    MAX_ID_LENGTH,
    MAX_RECOMMENDATION_ID_LENGTH,
    id_problem,
    validate_event,
)
from service.experiments import Arm, Assignment, Experiments
from service.identity import Identities
from service.interceptors import Guard, Measure
from service.profiles import ProfilesService
from service.recommender import (
    RankingOptions,
    Recommendation,
    Recommender,
    RepurchasePolicy,
    ServingParams,
    explain,
)
from service.registry import ServedModel
from service.rpc import check_id, check_limit, check_timestamp, rpc
from service.security import ServerSecurity, server_security
from service.send_time import Priors
from service.store import FeatureStore
from service.store.codecs import TrackedEvent
from service.store.plans import AsyncReader

log = logging.getLogger(__name__)

SERVICE_NAMES = (
    pb.DESCRIPTOR.services_by_name["Recommender"].full_name,
    epb.DESCRIPTOR.services_by_name["Engagement"].full_name,
    ppb.DESCRIPTOR.services_by_name["Profiles"].full_name,
    cpb.DESCRIPTOR.services_by_name["Campaigns"].full_name,
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
    """Holds the live :class:`Engine`, and one per experiment arm that serves another
    model or other options; readers take one reference per request."""

    def __init__(
        self,
        model: ServedModel,
        params: ServingParams,
        experiments: Experiments | None = None,
        load_arm: Callable[[Arm], ServedModel] | None = None,
    ) -> None:
        self.params = params
        self.engine = Engine.of(model, params)
        self.experiments = experiments or Experiments.none()
        self._load_arm = load_arm
        self.arm_engines: dict[tuple[str, str], Engine] = {}
        metrics.show_model(model.label)
        self.refresh_arms()

    def engine_for(self, assignment: Assignment | None) -> Engine:
        if assignment is None:
            return self.engine
        key = (assignment.experiment.name, assignment.arm.name)
        return self.arm_engines.get(key, self.engine)

    def swap(self, model: ServedModel) -> None:
        engine = Engine.of(model, self.params)
        previous = self.engine.model.label
        # One reference assignment: a request sees the old engine or the new one.
        self.engine = engine
        metrics.show_model(model.label, previous)
        log.info("now serving %s", model.label)
        self.refresh_arms()

    def refresh_arms(self) -> None:
        """(Re)build the arms' engines: an arm on an alias follows it; an arm on the
        default model follows the default. Arms that would serve exactly the default
        share its engine. Blocking (registry calls, model loads)."""
        engines: dict[tuple[str, str], Engine] = {}
        loaded: dict[str, ServedModel] = {}
        for experiment, arm in self.experiments.arms():
            model = self.engine.model
            if arm.model != "default":
                if self._load_arm is None:
                    raise ConfigError(f"experiment {experiment.name!r}: cannot load arm models")
                model = self._load_arm(arm)
                model = loaded.setdefault(model.version, model)
            params = replace(self.params, **arm.serving)  # type: ignore[arg-type]
            if model.version == self.engine.model.version and params == self.params:
                continue
            key = (experiment.name, arm.name)
            old = self.arm_engines.get(key)
            same = old is not None and old.model.version == model.version
            engines[key] = old if same else Engine.of(model, params)  # type: ignore[assignment]
            if not same:
                log.info("experiment %s, arm %s: %s", experiment.name, arm.name, model.label)
        self.arm_engines = engines


def _flag(request: Any, name: str, default: bool) -> bool:
    return getattr(request, name) if request.HasField(name) else default


#: Popular items read when a fallback must find some of one category.
MAX_POPULAR = 1000
#: Most items one Rank request may order (a results page is far fewer).
MAX_RANK_ITEMS = 1000
#: The modes of SimilarItems.
SIMILAR_MODES = ("similar", "bought_together")
#: Newest events a live timestamp may be ahead of the server clock (clock skew).
MAX_FUTURE_SECONDS = 86_400
#: Longest ``Event.event_id`` (a UUID is 36).
MAX_EVENT_ID_LENGTH = 128
#: Rounds of resolve-and-write before events racing identity links give up.
MAX_RECORD_ATTEMPTS = 5


def to_tracked(event: pb.Event, now: float, identities: Identities) -> TrackedEvent:
    """Validate one live event; raises :class:`BadInput` naming the field. The event's
    ``user_id`` is its identity token until the caller resolves it to a person."""
    token = identities.request_token(event)
    if token is None:
        raise BadInput("user_id", "is required (or give an identifier)")
    validate_event(token, event.item_id, event.event_type, event.channel, event.timezone)
    if event.HasField("timestamp"):
        seconds = int(check_timestamp("timestamp", event.timestamp))
        if seconds > now + MAX_FUTURE_SECONDS:
            raise BadInput("timestamp", "is more than a day in the future")
    else:
        seconds = int(now)
    if not math.isfinite(event.value):
        raise BadInput("value", "must be a finite number")
    if event.event_id and (problem := id_problem(event.event_id)) is not None:
        raise BadInput("event_id", problem)
    if len(event.event_id) > MAX_EVENT_ID_LENGTH:
        raise BadInput("event_id", f"is longer than {MAX_EVENT_ID_LENGTH} characters")
    rid = event.recommendation_id
    if rid and (problem := id_problem(rid)) is not None:
        raise BadInput("recommendation_id", problem)
    if len(rid) > MAX_RECOMMENDATION_ID_LENGTH:
        raise BadInput(
            "recommendation_id", f"is longer than {MAX_RECOMMENDATION_ID_LENGTH} characters"
        )
    return TrackedEvent(
        token,
        event.item_id,
        event.event_type,
        int(seconds),
        event.channel,
        event.timezone,
        event.value,
        event.automated,
        event.event_id,
        recommendation_id=rid,
    )


def to_item_fields(item: pb.Item) -> dict[str, Any]:
    check_id("item_id", item.item_id)
    fields_: dict[str, Any] = {}
    if item.HasField("category"):
        if not item.category or len(item.category) > MAX_CATEGORY_LENGTH:
            raise BadInput("category", f"must be 1 to {MAX_CATEGORY_LENGTH} characters")
        fields_["category"] = item.category
    if item.HasField("title"):
        if len(item.title) > MAX_TITLE_LENGTH:
            raise BadInput("title", f"is longer than {MAX_TITLE_LENGTH} characters")
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
        self,
        settings: Settings,
        models: ModelHolder,
        store: FeatureStore,
        identities: Identities,
        reader: AsyncReader,
    ) -> None:
        self.settings = settings
        self.models = models
        self.store = store
        self.identities = identities
        self.reader = reader
        self.catalogue = CatalogueCache(store.catalogue)
        self.repurchase_after = {
            category: days * 86_400 for category, days in repurchase_days(settings).items()
        }

    @rpc
    async def Recommend(  # noqa: N802 (gRPC method name)
        self, request: pb.RecommendRequest, context: grpc.aio.ServicerContext
    ) -> pb.RecommendResponse:
        token = self.identities.request_token(request)
        if token is None:
            raise BadInput("user_id", "is required (or give an identifier)")
        now = time.time()
        # exclude_seen left unset: the shop default, not what was seen in the last hours.
        options = self._options(request, check_limit(request.limit, self.settings), now, True)
        engine = self.models.engine
        found = await self.reader.run(
            self.identities.view_plan(
                token, popular_count=engine.recommender.popular_count(options)
            ),
            "reading features",
        )
        view = found.serving
        assert view is not None
        rid = uuid.uuid4().hex
        # An erased person takes part in nothing.
        assignment = None if found.erased else self.models.experiments.assign(found.person)
        if assignment is not None:
            engine = self.models.engine_for(assignment)
            experiment, arm = assignment.experiment.name, assignment.arm.name
            rid = f"{experiment}:{arm}:{rid}"
            # The exposure rides along with the next round trip; the answer does not wait.
            self.reader.send(
                [self.store.exposure_command(found.person, rid, int(now))], "logging an exposure"
            )
            metrics.EXPOSURES.labels(experiment, arm).inc()
        catalogue = await self.catalogue.get_async(view.catalogue_version)
        ranked = engine.recommender.recommend(found.scored_as, view, catalogue, options)
        return pb.RecommendResponse(
            items=_items(ranked, catalogue),
            model_version=engine.model.label,
            recommendation_id=rid,
            experiment=assignment.experiment.name if assignment else "",
            arm=assignment.arm.name if assignment else "",
        )

    def _options(
        self, request: Any, limit: int, now: float, hide_recently_seen: bool
    ) -> RankingOptions:
        """A Recommend or Rank request's filters. With ``hide_recently_seen``, an unset
        ``exclude_seen`` leaves out what the person looked at in the last
        ``recently_seen_hours`` (the shop default for suggestions)."""
        recent = self.settings.recently_seen_hours
        seen_since = (
            int(now - recent * 3600)
            if hide_recently_seen and recent and not request.HasField("exclude_seen")
            else 0
        )
        if len(request.context_item_id) > MAX_ID_LENGTH:
            raise BadInput("context_item_id", f"is longer than {MAX_ID_LENGTH} characters")
        return RankingOptions(
            limit=limit,
            item_filter=ItemFilter.from_request(request),
            exclude_purchased=_flag(request, "exclude_purchased", True),
            exclude_disliked=_flag(request, "exclude_disliked", True),
            exclude_seen=_flag(request, "exclude_seen", False),
            context_item_id=request.context_item_id,
            seen_since=seen_since,
            repurchase=RepurchasePolicy(self.repurchase_after, now)
            if self.repurchase_after
            else None,
        )

    @rpc
    async def Rank(  # noqa: N802
        self, request: pb.RankRequest, context: grpc.aio.ServicerContext
    ) -> pb.RankResponse:
        token = self.identities.request_token(request)
        if token is None:
            raise BadInput("user_id", "is required (or give an identifier)")
        if not request.item_ids:
            raise BadInput("item_ids", "must name at least one item")
        if len(request.item_ids) > MAX_RANK_ITEMS:
            raise BadInput(
                "item_ids", f"at most {MAX_RANK_ITEMS} items, got {len(request.item_ids)}"
            )
        for n, item_id in enumerate(request.item_ids):
            check_id(f"item_ids[{n}]", item_id)
        options = self._options(request, len(request.item_ids), time.time(), False)
        engine = self.models.engine
        # A person with nothing to go on is ranked by trending and popular items, which
        # the caller's items may sit deep in.
        found = await self.reader.run(
            self.identities.view_plan(token, popular_count=MAX_POPULAR), "reading features"
        )
        view = found.serving
        assert view is not None
        catalogue = await self.catalogue.get_async(view.catalogue_version)
        ranked = engine.recommender.rank(
            found.scored_as, request.item_ids, view, catalogue, options
        )
        return pb.RankResponse(
            items=_items(ranked, catalogue),
            model_version=engine.model.label,
            recommendation_id=uuid.uuid4().hex,
        )

    @rpc
    async def SimilarItems(  # noqa: N802
        self, request: pb.SimilarItemsRequest, context: grpc.aio.ServicerContext
    ) -> pb.SimilarItemsResponse:
        item_id = check_id("item_id", request.item_id)
        mode = request.mode or "similar"
        if mode not in SIMILAR_MODES:
            raise BadInput("mode", f"{mode!r} is not one of {', '.join(SIMILAR_MODES)}")
        token = self.identities.request_token(request)
        options = RankingOptions(
            limit=check_limit(request.limit, self.settings),
            item_filter=ItemFilter.from_request(request),
            exclude_purchased=token is not None,
            exclude_disliked=token is not None,
        )
        engine = self.models.engine
        # The person's view also brings popular/trending items and the catalogue version.
        # An item the model does not know falls back on popular items of its category,
        # which may sit deep in the popular list.
        known = engine.recommender.knows_item(item_id)
        popular = engine.recommender.popular_count(options) if known else MAX_POPULAR
        cobuy = (item_id, options.limit + 50)
        found = await self.reader.run(
            self.identities.view_plan(token, popular_count=popular, together=cobuy),
            "reading features",
        )
        view = found.serving
        assert view is not None
        catalogue = await self.catalogue.get_async(view.catalogue_version)
        together = view.bought_together
        # An item in the catalogue without metadata (seen only in events) still counts.
        if not (known or together or catalogue.meta(item_id) is not None):
            raise NotFound(f"item_id: {quote(item_id)} is unknown to the model and the catalogue")
        ranked = engine.recommender.similar_items(
            item_id, catalogue, options, view, together, mode == "bought_together"
        )
        return pb.SimilarItemsResponse(
            items=_items(ranked, catalogue),
            model_version=engine.model.label,
            recommendation_id=uuid.uuid4().hex,
        )

    @rpc
    async def TrackEvents(  # noqa: N802
        self, request: pb.TrackEventsRequest, context: grpc.aio.ServicerContext
    ) -> pb.TrackEventsResponse:
        if len(request.events) > self.settings.max_batch:
            raise BadInput(
                "events", f"at most {self.settings.max_batch} per call, got {len(request.events)}"
            )
        now = time.time()
        accepted: list[TrackedEvent] = []
        rejections: list[pb.RejectedEvent] = []
        position_of: dict[int, int] = {}  # id of an accepted event -> its index
        for n, event in enumerate(request.events):
            try:
                tracked = to_tracked(event, now, self.identities)
            except BadInput as exc:
                rejections.append(pb.RejectedEvent(index=n, field=exc.field, reason=exc.reason))
                continue
            accepted.append(tracked)
            position_of[id(tracked)] = n
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            # The caller gave up: write nothing it would not know about.
            raise DeadlineExpired("the deadline expired before the events were written")
        erased, duplicates = await self._record(accepted)
        _count_events(request.events, rejections, erased, accepted, duplicates)
        for event in erased:
            rejections.append(
                pb.RejectedEvent(
                    index=position_of[id(event)],
                    field="user_id",
                    reason="names an erased person",
                )
            )
        rejections.sort(key=lambda r: r.index)
        return pb.TrackEventsResponse(
            accepted=len(accepted) - len(erased),
            rejected=len(rejections),
            rejections=rejections,
        )

    async def _record(self, events: list[TrackedEvent]) -> tuple[list[TrackedEvent], int]:
        """Write ``events`` (each naming an identifier token in ``user_id``) under their
        people; returns those refused because their person was erased, and how many were
        retries of events already recorded. Usually two round
        trips: resolve, then one script call on the loop, like every read (a worker
        thread costs a hand-off each way and fights the loop for the GIL). Events whose
        token a concurrent link moved to another person are resolved and written again."""
        for event in events:
            event.token = event.user_id
        weights = self.models.engine.recommender.weights
        erased: list[TrackedEvent] = []
        duplicates = 0
        pending = events
        for _ in range(MAX_RECORD_ATTEMPTS):
            tokens = sorted({e.token for e in pending})
            people = await self.reader.run(
                self.identities.resolve_plan(tokens), "resolving identities"
            )
            person_of = dict(zip(tokens, people, strict=True))
            for event in pending:
                event.user_id = person_of[event.token]
            marks = {p: self.identities.erasure_mark(p) for p in set(people)}
            recorded = await self.reader.run(
                self.store.record_plan(pending, weights, marks), "recording events"
            )
            erased += [pending[n] for n in recorded.erased]
            duplicates += recorded.duplicates
            if not recorded.moved:
                return erased, duplicates
            pending = [pending[n] for n in recorded.moved]
        raise StoreUnavailable("events kept racing identity links; retry them")

    @rpc
    async def UpsertItems(  # noqa: N802
        self, request: pb.UpsertItemsRequest, context: grpc.aio.ServicerContext
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
        # Rare and batched: the sync client on a worker thread.
        created = await asyncio.to_thread(self.store.upsert_items, items)
        return pb.UpsertItemsResponse(upserted=len(items), created=created)


def _count_events(
    events: Any,
    rejections: list[pb.RejectedEvent],
    erased: list[TrackedEvent],
    accepted: list[TrackedEvent],
    duplicates: int,
) -> None:
    """``omnirec_events_total`` by type and outcome for one batch (a few increments per
    batch, not one per event)."""
    outcome = Counter(
        (kind if kind in EVENT_TYPES else "other", "rejected")
        for kind in (events[r.index].event_type for r in rejections)
    )
    outcome.update((e.event_type, "erased") for e in erased)
    outcome.update((e.event_type, "accepted") for e in accepted)
    outcome.subtract((e.event_type, "accepted") for e in erased)
    for (kind, result), count in outcome.items():
        if count:
            metrics.EVENTS.labels(kind, result).inc(count)
    if duplicates:
        metrics.DUPLICATES.inc(duplicates)


def _items(ranked: list[Recommendation], catalogue: Catalogue) -> list[pb.RecommendedItem]:
    return [
        pb.RecommendedItem(
            item_id=r.item_id,
            score=r.score,
            reason=r.reason,
            explanation=explain(r.reason, catalogue),
        )
        for r in ranked
    ]


# --- building and running -------------------------------------------------------------


class Supervisor:
    """Background upkeep on the server's loop: health follows Redis, and the model follows
    its alias (registry calls and model loads run on a worker thread)."""

    HEALTH_EVERY_SECONDS = 1.0

    def __init__(
        self,
        settings: Settings,
        health_servicer: health.aio.HealthServicer,
        reader: AsyncReader,
        models: ModelHolder,
        reload_model: Callable[[str], ServedModel] | None,
        current_version: Callable[[], str | None] | None,
    ) -> None:
        self.settings = settings
        self.health = health_servicer
        self.reader = reader
        self.models = models
        self.reload_model = reload_model
        self.current_version = current_version
        self._serving: bool | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.check_health()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def check_health(self) -> bool:
        ok = await self.reader.ping()
        if ok != self._serving:
            status = (
                health_pb2.HealthCheckResponse.SERVING
                if ok
                else health_pb2.HealthCheckResponse.NOT_SERVING
            )
            for name in ("", *SERVICE_NAMES):
                await self.health.set(name, status)
            if ok:
                log.info("Redis reachable: SERVING")
            else:
                log.warning("Redis unreachable: NOT_SERVING until it is back")
            self._serving = ok
        return ok

    async def check_model(self) -> None:
        if self.reload_model is None or self.current_version is None:
            return
        try:
            version = await asyncio.to_thread(self.current_version)
            if version is not None and version != self.models.engine.model.version:
                model = await asyncio.to_thread(self.reload_model, version)
                await asyncio.to_thread(self.models.swap, model)
            elif self.models.experiments.experiments:
                # Arms on an alias follow it as the default follows its own.
                await asyncio.to_thread(self.models.refresh_arms)
        except Exception:
            # The registry may be briefly unreachable; keep serving the loaded model.
            log.exception("checking the model alias failed; still serving the loaded model")

    async def _run(self) -> None:
        poll = self.settings.model_poll_seconds
        waited = 0.0
        while True:
            await asyncio.sleep(self.HEALTH_EVERY_SECONDS)
            await self.check_health()
            waited += self.HEALTH_EVERY_SECONDS
            if poll and waited >= poll:
                waited = 0.0
                await self.check_model()


@dataclass
class RunningServer:
    """A server answering on its own thread's asyncio loop; stop it from any thread."""

    server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer
    supervisor: Supervisor
    models: ModelHolder
    reader: AsyncReader
    loop: asyncio.AbstractEventLoop
    thread: threading.Thread
    stopped: asyncio.Event

    def stop(self, grace: float | None, drain: float = 0.0) -> None:
        """SIGTERM order: NOT_SERVING → keep answering for ``drain`` seconds (load
        balancers see the health change and stop sending) → refuse new calls and finish
        in-flight ones within ``grace`` → stop upkeep."""
        if not self.thread.is_alive():
            return
        asyncio.run_coroutine_threadsafe(self._stop(grace, drain), self.loop).result()
        self.thread.join(timeout=30)

    async def _stop(self, grace: float | None, drain: float) -> None:
        await self.health.enter_graceful_shutdown()
        if drain > 0:
            await asyncio.sleep(drain)
        await self.server.stop(grace)
        await self.supervisor.stop()
        await self.reader.close()
        self.stopped.set()


def build_server(
    settings: Settings,
    model: ServedModel,
    store: FeatureStore,
    *,
    reload_model: Callable[[str], ServedModel] | None = None,
    current_version: Callable[[], str | None] | None = None,
    address: str | None = None,
    reuse_port: bool = False,
    security: ServerSecurity | None = None,
    version_of: Callable[[str], str | None] | None = None,
) -> RunningServer:
    """Start a gRPC server on ``address`` (default ``host:port`` from settings).

    The server is ``grpc.aio`` on an asyncio loop in a thread of its own, reading Redis
    with the asyncio client: no thread hand-off per call, and concurrent calls share
    round trips (:class:`~service.features.AsyncReader`). ``reload_model`` /
    ``current_version`` let the server follow the alias; leave them out to serve
    ``model`` for good. ``reuse_port`` lets several processes share the port.
    ``security`` (keys, TLS, bind address) defaults to what the settings say.
    ``version_of`` (alias → version) lets experiment arms name aliases.
    """
    security = security or server_security(settings)
    experiments = (
        Experiments.load(settings.experiments_file, identity_secret(settings))
        if settings.experiments_file
        else None
    )

    def load_arm(arm: Arm) -> ServedModel:
        version = arm.model_version
        if version is None and arm.model_alias is not None:
            version = version_of(arm.model_alias) if version_of is not None else None
            if version is None:
                raise ConfigError(
                    f"experiment arm {arm.name!r}: alias {arm.model_alias!r} names no version"
                )
        if reload_model is None or version is None:
            raise ConfigError(f"experiment arm {arm.name!r}: its model cannot be loaded here")
        return reload_model(version)

    # Arm models load here, before the loop runs: a bad arm stops the start with one line.
    models = ModelHolder(
        model,
        ServingParams(
            settings.recency_half_life_events or None, settings.recent_events, ann=settings.ann
        ),
        experiments,
        load_arm,
    )
    ready: concurrent.futures.Future[RunningServer] = concurrent.futures.Future()
    loop = asyncio.new_event_loop()

    async def main() -> None:
        try:
            running = await _start(
                settings,
                models,
                store,
                reload_model,
                current_version,
                address,
                reuse_port,
                security,
            )
        except BaseException as exc:  # reported to the caller of build_server
            ready.set_exception(exc)
            return
        ready.set_result(running)
        await running.stopped.wait()

    def run() -> None:
        asyncio.set_event_loop(loop)
        # The worker threads of the rare blocking work: catalogue reloads, identity
        # links and erasures, catalogue writes, model reloads.
        loop.set_default_executor(
            concurrent.futures.ThreadPoolExecutor(settings.workers, thread_name_prefix="omnirec")
        )
        try:
            loop.run_until_complete(main())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            loop.close()

    thread = threading.Thread(target=run, name="omnirec-grpc", daemon=True)
    thread.start()
    running = ready.result()
    running.thread = thread
    log.info("omnirec serving %s on port %d: %s", model.label, running.port, security.summary)
    return running


async def _start(
    settings: Settings,
    models: ModelHolder,
    store: FeatureStore,
    reload_model: Callable[[str], ServedModel] | None,
    current_version: Callable[[], str | None] | None,
    address: str | None,
    reuse_port: bool,
    security: ServerSecurity,
) -> RunningServer:
    server = grpc.aio.server(
        interceptors=[Measure(), Guard(security.keys, settings.max_concurrent_calls)],
        options=[
            # Off unless asked: a second server on a busy port must fail, not share it.
            ("grpc.so_reuseport", 1 if reuse_port else 0),
            ("grpc.max_receive_message_length", settings.max_request_bytes),
        ],
    )
    reader = store.async_reader()
    identities = Identities(store, identity_secret(settings))
    recommender = RecommenderService(settings, models, store, identities, reader)
    pb_grpc.add_RecommenderServicer_to_server(recommender, server)
    epb_grpc.add_EngagementServicer_to_server(
        EngagementService(settings, models, identities, reader), server
    )
    ppb_grpc.add_ProfilesServicer_to_server(
        ProfilesService(settings, models, store, identities, reader), server
    )
    # Shares the Recommender's catalogue copy: one reload per catalogue change.
    cpb_grpc.add_CampaignsServicer_to_server(
        CampaignsService(settings, models, identities, reader, recommender.catalogue), server
    )
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (
            *SERVICE_NAMES,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ),
        server,
    )
    where = address or f"{security.host}:{settings.port}"
    try:
        if security.credentials is None:
            port = server.add_insecure_port(where)
        else:
            port = server.add_secure_port(where, security.credentials)
    except RuntimeError as exc:  # grpc.aio raises where the sync server returned 0
        raise OSError(f"cannot bind {where}: {exc}") from None
    if port == 0:
        raise OSError(f"cannot bind {where}")
    supervisor = Supervisor(
        settings, health_servicer, reader, models, reload_model, current_version
    )
    await server.start()
    await supervisor.start()
    return RunningServer(
        server,
        port,
        health_servicer,
        supervisor,
        models,
        reader,
        asyncio.get_running_loop(),
        threading.current_thread(),
        asyncio.Event(),
    )
