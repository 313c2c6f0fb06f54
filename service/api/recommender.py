"""The Recommender service: Recommend, Rank, SimilarItems, Popular, TrackEvents, the
catalogue RPCs and ForgetUser, checked and translated here, answered by the core
(:mod:`service.recommender`, :mod:`service.identity`, the store)."""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from collections import Counter
from typing import Any

import grpc

from omnirec.v1 import recommender_pb2 as pb
from omnirec.v1 import recommender_pb2_grpc as pb_grpc
from service import metrics
from service.api.rpc import check_id, check_limit, check_timestamp, rpc
from service.catalogue import (
    MAX_CATEGORY_LENGTH,
    MAX_TITLE_LENGTH,
    Catalogue,
    CatalogueCache,
    ItemFilter,
)
from service.config import Settings, repurchase_days
from service.errors import (
    BadInput,
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
from service.identity import Identities
from service.recommender import (
    RankingOptions,
    Recommendation,
    RepurchasePolicy,
    explain,
)
from service.served_model import ModelHolder
from service.store import FeatureStore
from service.store.codecs import TrackedEvent
from service.store.plans import AsyncReader

log = logging.getLogger(__name__)


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
    token = identities.required_token(event)
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
        token = self.identities.required_token(request)
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
        token = self.identities.required_token(request)
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
