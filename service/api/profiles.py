"""The Profiles service: identity links, a person's profile for staff, and erasure.

The identity logic lives in ``identity``; this module validates requests and shapes
answers. Profiles show identifier *kinds*, never their values.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter

import grpc
import numpy as np
from google.protobuf.timestamp_pb2 import Timestamp

from omnirec.v1 import profiles_pb2 as ppb
from omnirec.v1 import profiles_pb2_grpc as ppb_grpc
from service.access import audit
from service.api.rpc import rpc
from service.catalogue import CatalogueCache
from service.config import Settings
from service.engagement import profile_of
from service.errors import BadInput
from service.identity import Identities, all_tokens
from service.send_time import channel_source, hour_probabilities, rank_channels
from service.served_model import ModelHolder
from service.store import FeatureStore
from service.store.codecs import HistoryEntry
from service.store.plans import AsyncReader

log = logging.getLogger(__name__)

MAX_LINKED = 20
DEFAULT_PROFILE_ITEMS = 10
MAX_PROFILE_ITEMS = 100
PREFERRED_HOURS = 3


class ProfilesService(ppb_grpc.ProfilesServicer):
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

    def _token(self, message: object, field: str = "identifier") -> str:
        if not message.HasField("identifier"):  # type: ignore[attr-defined]
            raise BadInput(field, "is required")
        identifier = message.identifier  # type: ignore[attr-defined]
        return self.identities.token(identifier.kind, identifier.value, field)

    @rpc
    async def LinkIdentities(  # noqa: N802
        self, request: ppb.LinkIdentitiesRequest, context: grpc.aio.ServicerContext
    ) -> ppb.LinkIdentitiesResponse:
        if not 2 <= len(request.identifiers) <= MAX_LINKED:
            raise BadInput("identifiers", f"must name 2 to {MAX_LINKED} identifiers")
        tokens = [
            self.identities.token(i.kind, i.value, f"identifiers[{n}]")
            for n, i in enumerate(request.identifiers)
        ]
        if len(set(tokens)) < len(tokens):
            raise BadInput("identifiers", "an identifier cannot be linked to itself")
        audit("LinkIdentities", ",".join(tokens))
        # Rare, and it waits on a lock: the sync client on a worker thread.
        person, merged = await asyncio.to_thread(
            self.identities.link, tokens, request.merge_accounts
        )
        log.info("linked %d identifiers, %d people merged", len(tokens), merged)
        return ppb.LinkIdentitiesResponse(person_id=person, merged=merged)

    @rpc
    async def GetProfile(  # noqa: N802
        self, request: ppb.GetProfileRequest, context: grpc.aio.ServicerContext
    ) -> ppb.GetProfileResponse:
        token = self._token(request)
        audit("GetProfile", token)
        limit = request.limit or DEFAULT_PROFILE_ITEMS
        if not 1 <= limit <= MAX_PROFILE_ITEMS:
            raise BadInput("limit", f"must be between 1 and {MAX_PROFILE_ITEMS}; got {limit}")
        found = await self.reader.run(
            self.identities.view_plan(token, popular_count=1, engagement=True, tokens=True),
            "reading a profile",
        )
        person, view = found.person, found.serving
        assert view is not None and found.engagement is not None
        catalogue = (await self.catalogue.get_async(view.catalogue_version)).items
        history = view.user.history

        def items(entries: list[HistoryEntry]) -> list[ppb.ProfileItem]:
            out = []
            for item, _, ts in entries[:limit]:
                meta = catalogue.get(item, {})
                out.append(
                    ppb.ProfileItem(
                        item_id=item,
                        timestamp=Timestamp(seconds=ts),
                        category=meta.get("category", ""),
                        title=meta.get("title", ""),
                        price=float(meta.get("price", 0.0)),
                    )
                )
            return out

        def of(kind: str) -> list[HistoryEntry]:
            seen: set[str] = set()
            out = []
            for entry in history:
                if entry[1] == kind and entry[0] not in seen:
                    seen.add(entry[0])
                    out.append(entry)
            return out

        bought = {item for item, kind, _ in history if kind == "purchase"} | view.user.purchased
        cart = [e for e in of("add_to_cart") if e[0] not in bought]
        categories = Counter(
            catalogue.get(item, {}).get("category")
            for item, kind, _ in history
            if kind != "dislike"
        )
        categories.pop(None, None)
        s = self.settings
        priors = self.models.engine.priors  # type: ignore[attr-defined]
        engagement = profile_of(found.engagement, s, priors)
        channel = rank_channels(engagement, priors)[0][0]
        zone = engagement.timezone or s.default_timezone
        probabilities, hours_source, _ = hour_probabilities(engagement, channel, priors, zone)
        hours = [int(h) for h in np.argsort(-probabilities, kind="stable")[:PREFERRED_HOURS]]
        kinds = sorted({t.partition(":")[0] for t in all_tokens(person, found.tokens)})
        return ppb.GetProfileResponse(
            person_id=person,
            recent_views=items(of("view")),
            favourites=items(of("favourite")),
            cart=items(cart),
            purchases=items(of("purchase")),
            top_categories=[
                ppb.CategoryCount(category=c, events=n) for c, n in categories.most_common(5)
            ],
            preferred_channel=channel,
            preferred_hours=hours,
            timezone=zone,
            identifier_kinds=kinds,
            preferred_channel_source=channel_source(engagement),
            preferred_hours_source=hours_source,
        )

    @rpc
    async def ForgetUser(  # noqa: N802
        self, request: ppb.ForgetUserRequest, context: grpc.aio.ServicerContext
    ) -> ppb.ForgetUserResponse:
        token = self._token(request)
        audit("ForgetUser", token)
        forgotten = await asyncio.to_thread(self.identities.forget, token)
        log.info(
            "erased a person: %d keys, %d stream events",
            forgotten.keys_removed,
            forgotten.events_removed,
        )
        return ppb.ForgetUserResponse(
            keys_removed=forgotten.keys_removed, events_removed=forgotten.events_removed
        )
