"""The Engagement service: best send time and best channel for the message orchestrator.

The model lives in ``send_time`` (pure) and the shared rules in ``engagement``; this
module validates requests, reads one person's engagement from Redis (published profile +
live events since, opt-outs and deliveries), and answers.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime

import grpc
import numpy as np

from omnirec.v1 import engagement_pb2 as epb
from omnirec.v1 import engagement_pb2_grpc as epb_grpc
from service.api.rpc import check_timestamp, rpc, to_timestamp
from service.config import Settings
from service.contact import ContactPolicy, ContactState, earliest_send
from service.engagement import (
    check_ahead,
    check_quiet_hours,
    check_window,
    open_window,
    profile_of,
)
from service.errors import BadInput, NotAllowed, quote
from service.events import MESSAGE_CHANNELS, is_valid_timezone
from service.identity import Identities
from service.send_time import (
    EngagementProfile,
    Priors,
    channel_source,
    plan_send,
    rank_channels,
)
from service.served_model import ModelHolder
from service.store.plans import AsyncReader

log = logging.getLogger(__name__)

ALTERNATIVES = 3


class EngagementService(epb_grpc.EngagementServicer):
    def __init__(
        self, settings: Settings, models: ModelHolder, identities: Identities, reader: AsyncReader
    ) -> None:
        self.settings = settings
        self.models = models
        self.identities = identities
        self.reader = reader
        self.policy = ContactPolicy.of(settings)
        self._rng = np.random.default_rng()

    def _priors(self) -> tuple[Priors, str]:
        engine = self.models.engine  # type: ignore[attr-defined]
        return engine.priors, engine.model.label

    async def _profile(self, token: str, priors: Priors) -> tuple[EngagementProfile, ContactState]:
        found = await self.reader.run(
            self.identities.view_plan(token, engagement=True), "reading engagement"
        )
        assert found.engagement is not None
        return profile_of(found.engagement, self.settings, priors), ContactState.of(
            found.engagement
        )

    @rpc
    async def PredictSendTime(  # noqa: N802
        self, request: epb.PredictSendTimeRequest, context: grpc.aio.ServicerContext
    ) -> epb.PredictSendTimeResponse:
        token = self.identities.required_token(request)
        if request.channel not in MESSAGE_CHANNELS:
            raise BadInput(
                "channel", f"{quote(request.channel)} is not one of {', '.join(MESSAGE_CHANNELS)}"
            )
        window = check_window(request.window_hours)
        if request.timezone and not is_valid_timezone(request.timezone):
            raise BadInput("timezone", f"{quote(request.timezone)} is not a known IANA time zone")
        quiet = check_quiet_hours(
            request.quiet_start_hour if request.HasField("quiet_start_hour") else None,
            request.quiet_end_hour if request.HasField("quiet_end_hour") else None,
            request.ignore_quiet_hours,
        )
        now = time.time()
        not_before = datetime.fromtimestamp(now, UTC)
        if request.HasField("not_before"):
            check_ahead(check_timestamp("not_before", request.not_before), now)
            not_before = request.not_before.ToDatetime(tzinfo=UTC)
        priors, label = self._priors()
        profile, contact = await self._profile(token, priors)
        if request.channel in contact.opted_out:
            raise NotAllowed(
                "channel",
                f"the person unsubscribed from {request.channel!r} (a 'resubscribe' event "
                "lifts it)",
            )
        # The fatigue gap and the daily cap move the window's start later, never its end.
        allowed_from = earliest_send(contact, request.channel, self.policy, not_before.timestamp())
        start, window = open_window(not_before.timestamp(), window, allowed_from)
        not_before = datetime.fromtimestamp(start, UTC)
        if window < 1:
            raise NotAllowed(
                "window_hours",
                f"no message on {request.channel!r} may go out before "
                f"{not_before.isoformat(timespec='minutes')} (OMNIREC_MIN_MESSAGE_GAP_HOURS"
                " / OMNIREC_MAX_MESSAGES_PER_DAY), after the window ends",
            )
        zone = request.timezone or profile.timezone or self.settings.default_timezone
        plan = plan_send(
            profile,
            request.channel,
            priors,
            zone,
            not_before,
            window,
            quiet,
            explore_rate=self.settings.explore_rate,
            rng=self._rng,
            alternatives=ALTERNATIVES,
            counted_in=self.settings.default_timezone,
        )
        slots, source, evidence = plan.slots, plan.source, plan.evidence
        if not slots:
            raise BadInput(
                "window_hours",
                f"every hour of the {window} h window falls in the quiet hours "
                f"{quiet[0]}→{quiet[1]} ({zone}); widen the window or set ignore_quiet_hours"
                if quiet
                else f"the {window} h window has no hour to plan",
            )
        best, rest = slots[0], slots[1:]
        return epb.PredictSendTimeResponse(
            send_at=to_timestamp(best.send_at),
            probability=best.probability,
            alternatives=[
                epb.SendSlot(
                    send_at=to_timestamp(s.send_at),
                    probability=s.probability,
                    local_hour=s.local_hour,
                )
                for s in rest
            ],
            source=source,
            evidence=evidence,
            timezone=zone,
            model_version=label,
            local_hour=best.local_hour,
            evidence_detail=epb.Evidence(
                deliveries=plan.detail.deliveries,
                engagements=plan.detail.engagements,
                activity_events=plan.detail.activity_events,
                rule=plan.detail.rule,
            ),
        )

    @rpc
    async def RankChannels(  # noqa: N802
        self, request: epb.RankChannelsRequest, context: grpc.aio.ServicerContext
    ) -> epb.RankChannelsResponse:
        token = self.identities.required_token(request)
        priors, label = self._priors()
        profile, contact = await self._profile(token, priors)
        now = time.time()
        ranked = rank_channels(profile, priors, contact.unanswered)
        # Channels the person left go last, marked: "take the first" never picks one.
        ranked.sort(key=lambda r: r[0] in contact.opted_out)
        return epb.RankChannelsResponse(
            channels=[
                epb.ChannelScore(
                    channel=c,
                    score=score,
                    evidence=evidence,
                    opted_out=c in contact.opted_out,
                    next_allowed=to_timestamp(datetime.fromtimestamp(allowed_from, UTC))
                    if (allowed_from := earliest_send(contact, c, self.policy, now)) > now
                    else None,
                )
                for c, score, evidence in ranked
            ],
            model_version=label,
            source=channel_source(profile),
        )
