"""The Campaigns service: ``Audience`` over gRPC. Validation and translation only; the
audience itself is :mod:`service.campaigns`, shared with ``python -m training
export-audience``."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc

from omnirec.v1 import campaigns_pb2 as cpb
from omnirec.v1 import campaigns_pb2_grpc as cpb_grpc
from service.api.rpc import check_timestamp, rpc, to_timestamp
from service.campaigns import (
    DEFAULT_AUDIENCE_LIMIT,
    LEFT_OUT,
    MAX_AUDIENCE_LIMIT,
    Audience,
    AudienceModel,
    Campaign,
    Member,
    PageToken,
    Rankings,
)
from service.catalogue import CatalogueCache
from service.config import Settings
from service.contact import ContactPolicy
from service.errors import BadInput
from service.identity import Identities
from service.served_model import ModelHolder
from service.store.plans import AsyncReader, Plan


def audience_limit(limit: int) -> int:
    """``limit`` of an Audience page: 0 means the default; :class:`BadInput` outside."""
    if limit == 0:
        return DEFAULT_AUDIENCE_LIMIT
    if not 1 <= limit <= MAX_AUDIENCE_LIMIT:
        raise BadInput(
            "limit",
            f"must be between 1 and {MAX_AUDIENCE_LIMIT} (0 means {DEFAULT_AUDIENCE_LIMIT}); "
            f"got {limit}",
        )
    return limit


def campaign_of(request: cpb.AudienceRequest, now: float) -> Campaign:
    def optional(name: str) -> int | None:
        return getattr(request, name) if request.HasField(name) else None

    not_before = (
        check_timestamp("not_before", request.not_before)
        if request.HasField("not_before")
        else None
    )
    return Campaign.of(
        request.item_ids,
        request.category,
        request.channels,
        not_before,
        request.window_hours,
        optional("quiet_start_hour"),
        optional("quiet_end_hour"),
        request.ignore_quiet_hours,
        now=now,
    )


class CampaignsService(cpb_grpc.CampaignsServicer):
    def __init__(
        self,
        settings: Settings,
        models: ModelHolder,
        identities: Identities,
        reader: AsyncReader,
        catalogue: CatalogueCache,
    ) -> None:
        self.settings = settings
        self.models = models
        self.identities = identities
        self.reader = reader
        self.catalogue = catalogue
        self.policy = ContactPolicy.of(settings)
        self.rankings = Rankings()
        self._model: tuple[object, AudienceModel] | None = None

    def _audience_model(self, bundle: object) -> AudienceModel:
        # Rebuilt when the served model swaps; experiment arms do not apply (there is no
        # one person to assign).
        held = self._model
        if held is None or held[0] is not bundle:
            held = (bundle, AudienceModel(bundle))  # type: ignore[arg-type]
            self._model = held
        return held[1]

    @rpc
    async def Audience(  # noqa: N802
        self, request: cpb.AudienceRequest, context: grpc.aio.ServicerContext
    ) -> cpb.AudienceResponse:
        now = time.time()
        campaign = campaign_of(request, now)
        limit = audience_limit(request.limit)
        token = PageToken.decode(request.page_token) if request.page_token else None
        engine = self.models.engine
        label = engine.model.label
        if token is not None:
            token.check(campaign, label)
        model = self._audience_model(engine.model.bundle)
        model.check(label)
        # The catalogue (categories) as of now: one round trip for its version.
        found = await self.reader.run(
            self.identities.view_plan(None, popular_count=0), "reading the catalogue version"
        )
        assert found.serving is not None
        catalogue = await self.catalogue.get_async(found.serving.catalogue_version)
        promotion = model.promote(campaign, catalogue)
        if token is not None:
            token.check_promoted(promotion)
        offset = token.offset if token is not None else 0
        if token is not None:
            start = token.start
        else:
            start = now if campaign.not_before is None else campaign.not_before
        # Scoring everybody, and sorting as far as this page reaches, off the loop.
        ranking = await asyncio.to_thread(self.rankings.get, label, model, promotion)
        audience = Audience(
            campaign,
            start,
            promotion,
            ranking,
            model,
            engine.recommender,
            engine.priors,
            self.policy,
            self.settings,
            self.identities,
            catalogue,
        )
        await asyncio.to_thread(ranking.prefix, offset + audience.examine_at_most(limit))
        page = await run_off_loop(
            self.reader, audience.page_plan(offset, limit), "reading the audience"
        )
        next_token = (
            PageToken(label, campaign.fingerprint(), promotion.key, page.next_offset, start)
            if page.next_offset is not None
            else None
        )
        return cpb.AudienceResponse(
            members=[_member(m) for m in page.members],
            next_page_token=next_token.encode() if next_token is not None else "",
            model_version=label,
            left_out=cpb.LeftOut(**{why: page.left_out.get(why, 0) for why in LEFT_OUT}),
            candidates=ranking.size,
        )


def _member(member: Member) -> cpb.AudienceMember:
    return cpb.AudienceMember(
        user_id=member.user_id,
        score=member.score,
        reason=member.reason,
        send_at=to_timestamp(member.send_at),
        channel=member.channel,
        probability=member.probability,
        item_ids=member.item_ids,
        explanation=member.explanation,
        local_hour=member.local_hour,
        timezone=member.timezone,
    )


async def run_off_loop(reader: AsyncReader, plan: Plan[Any], doing: str) -> Any:
    """Run ``plan`` with its round trips on ``reader`` (coalesced with other requests')
    and its own work between them on a worker thread: planning a page is milliseconds
    per member, which on the loop would hold up every other call."""
    done, value = await asyncio.to_thread(_step, plan, None)
    while not done:
        replies = await reader.run(_once(value), doing)
        done, value = await asyncio.to_thread(_step, plan, replies)
    return value


def _step(plan: Plan[Any], replies: list[Any] | None) -> tuple[bool, Any]:
    # StopIteration cannot cross a future: it becomes (True, value).
    try:
        return False, next(plan) if replies is None else plan.send(replies)
    except StopIteration as finished:
        return True, finished.value


def _once(commands: list[Any]) -> Plan[list[Any]]:
    replies = yield commands
    return replies
