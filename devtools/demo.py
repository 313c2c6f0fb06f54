"""``python -m training demo``: the whole path on an embedded default, in one command.

Starts a local redis-server (unless ``REDIS_URL`` is set), uses the local sqlite MLflow
store, generates synthetic data, trains, serves over real gRPC on loopback with an API key
(made afresh each run, its SHA-256 in ``<workdir>/api-keys.json``), and prints a few
people's recommendations next to what they were planted to like.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import grpc

from devtools.redis_server import LocalRedis
from omnirec.v1 import engagement_pb2 as epb
from omnirec.v1 import engagement_pb2_grpc as epb_grpc
from omnirec.v1 import identity_pb2 as ipb
from omnirec.v1 import profiles_pb2 as ppb
from omnirec.v1 import profiles_pb2_grpc as ppb_grpc
from omnirec.v1 import recommender_pb2 as pb
from omnirec.v1 import recommender_pb2_grpc as pb_grpc
from service.access import add_entry, key_entry, new_key
from service.api.server import build_server
from service.config import Settings, feature_store
from service.registry import ModelRegistry
from training.catalogue_file import load_catalogue
from training.pipeline import TrainConfig, train
from training.synthetic import generate


def run_demo(settings: Settings, args: argparse.Namespace) -> int:
    work: Path = args.workdir
    if not settings.identity_secret:
        # A throw-away key for a throw-away store; deployments set their own.
        settings = replace(settings, identity_secret=secrets.token_hex(32))
    local = None
    if not os.environ.get("REDIS_URL"):
        local = LocalRedis(work / "redis")
        settings = replace(settings, redis_url=local.url)
        print(f"started redis-server on port {local.port}")
    try:
        return _demo(settings, args, work)
    finally:
        if local is not None:
            local.stop()


def _demo(settings: Settings, args: argparse.Namespace, work: Path) -> int:
    print(f"\n== 1. synthetic data: {args.users} people, {args.items} items, {args.days} days")
    # The log ends today, as a live brand's would, so recency weights look like real ones.
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    data = generate(args.users, args.items, args.days, args.seed, work / "data", end=today)
    print(f"wrote {data.events}, {data.items}, {data.truth}")

    print("\n== 2. train (model chosen by validation) → MLflow → Redis")
    # As `train` with default flags: the model kind chosen by validation.
    result = train(settings, TrainConfig(events=data.events, items=data.items, choose_model=True))
    print(f"registered {settings.model_name}/{result.version} ({result.selection})")
    print(f"{settings.model_alias}: {result.decision}")

    print("\n== 3. serve over gRPC on loopback, with an API key")
    keys_file = work / "api-keys.json"
    # The key is printed, never stored: the keys file holds its SHA-256 only.
    key = new_key()
    add_entry(keys_file, key_entry("demo", ["admin"], key))
    registry = ModelRegistry(settings)
    model = registry.load_alias(settings.model_alias)
    store = feature_store(settings)
    running = build_server(
        replace(settings, port=0, host="127.0.0.1", api_keys_file=str(keys_file)), model, store
    )
    print(f"serving {model.label} on 127.0.0.1:{running.port}; keys file {keys_file}")

    truth = json.loads(Path(data.truth).read_text())["users"]
    catalogue = load_catalogue(data.items)
    category = {item: meta.get("category", "?") for item, meta in catalogue.items()}
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as plain:
            channel = grpc.intercept_channel(plain, _Bearer(key))
            stub = pb_grpc.RecommenderStub(channel)
            print("\n== 4. recommendations (top 5, with reasons)")
            people = sorted(truth)[:3] + ["someone-new"]
            for user in people:
                reply = stub.Recommend(pb.RecommendRequest(user_id=user, limit=5), timeout=5)
                planted = truth.get(user, {}).get("tastes", [])
                print(
                    f"\n{user}  (planted tastes: {', '.join(planted) or 'unknown: new'})"
                    f"  model {reply.model_version}"
                )
                for it in reply.items:
                    print(
                        f"  {it.item_id:<8} {category.get(it.item_id, '?'):<12} "
                        f"{it.score:8.3f}  {it.reason}"
                    )
            _taste_summary(stub, truth, category)
            _engagement(epb_grpc.EngagementStub(channel), truth, people[:3])
            _one_person(channel, people[0], category)
    finally:
        running.stop(grace=1)
    uri = settings.mlflow_tracking_uri
    print(
        f"\nMLflow UI: .venv/bin/mlflow ui --backend-store-uri {uri} --port 5000"
        "  (then open http://127.0.0.1:5000)"
    )
    # This demo's Redis and key go with it; `make up` keeps a stack running to call.
    print(
        "Keep one running to call yourself: make up   (grpcurl lines, metrics; make down stops it)"
    )
    return 0


class _Bearer(grpc.UnaryUnaryClientInterceptor):
    """Sends ``authorization: Bearer <key>`` with every call, as any client of a server
    with API keys must."""

    def __init__(self, key: str) -> None:
        self.metadata = (("authorization", f"Bearer {key}"),)

    def intercept_unary_unary(
        self, continuation: Callable[[Any, Any], Any], details: Any, request: Any
    ) -> Any:
        metadata = (*(details.metadata or ()), *self.metadata)
        return continuation(details._replace(metadata=metadata), request)


def _taste_summary(stub: pb_grpc.RecommenderStub, truth: dict, category: dict) -> None:
    """Share of top-10 items in each person's planted taste categories (200 people),
    for their own recommendations and for the popular list a stranger gets."""
    hits: Counter[str] = Counter()
    people = sorted(truth)[:200]
    popular = stub.Recommend(pb.RecommendRequest(user_id="someone-new", limit=10), timeout=5)
    for user in people:
        reply = stub.Recommend(pb.RecommendRequest(user_id=user, limit=10), timeout=5)
        tastes = set(truth[user]["tastes"])
        hits["personal"] += sum(category.get(i.item_id) in tastes for i in reply.items)
        hits["shown"] += len(reply.items)
        hits["popular"] += sum(category.get(i.item_id) in tastes for i in popular.items)
        hits["popular_shown"] += len(popular.items)
    print(
        f"\nplanted tastes recovered ({len(people)} people, top 10): "
        f"{hits['personal'] / max(hits['shown'], 1):.0%} of personalised items vs "
        f"{hits['popular'] / max(hits['popular_shown'], 1):.0%} of the popular list"
    )


def _engagement(stub: epb_grpc.EngagementStub, truth: dict, people: list[str]) -> None:
    """Best channel and send time for a few people, next to what was planted."""
    print("\n== 5. when and where to reach them (Engagement)")
    for user in people:
        planted = truth[user]
        channels = stub.RankChannels(epb.RankChannelsRequest(user_id=user), timeout=5).channels
        best = channels[0].channel
        slot = stub.PredictSendTime(
            epb.PredictSendTimeRequest(user_id=user, channel=best), timeout=5
        )
        local = slot.send_at.ToDatetime(tzinfo=UTC).astimezone(ZoneInfo(slot.timezone))
        ranked = ", ".join(f"{c.channel} {c.score:.2f}" for c in channels[:3])
        print(
            f"{user}: channels {ranked} (planted {planted['preferred_channel']}); "
            f"send {best} at {local:%a %H:%M} {slot.timezone} p={slot.probability:.2f} "
            f"[{slot.source}] (planted active hour {planted['active_hour_local']}:00)"
        )


def _one_person(channel: grpc.Channel, account: str, category: dict) -> None:
    """Anonymous browsing → login → store visit by phone, as the README tells it."""
    print("\n== 6. one person across channels (Profiles)")
    rec = pb_grpc.RecommenderStub(channel)
    profiles = ppb_grpc.ProfilesStub(channel)
    cookie = ipb.Identifier(kind="cookie", value="demo-cookie-1")
    phone = ipb.Identifier(kind="phone", value="+49 151 23456789")
    viewed = [i for i, c in sorted(category.items()) if c == "bags"][:3]
    rec.TrackEvents(
        pb.TrackEventsRequest(
            events=[
                pb.Event(identifier=cookie, item_id=i, event_type="view", channel="web")
                for i in viewed
            ]
        ),
        timeout=5,
    )
    anonymous = rec.Recommend(pb.RecommendRequest(identifier=cookie, limit=3), timeout=5)
    print(
        f"anonymous cookie viewed {', '.join(viewed)} (bags) → "
        + ", ".join(
            f"{r.item_id} ({category.get(r.item_id, '?')}, {r.reason})" for r in anonymous.items
        )
    )
    account_id = ipb.Identifier(kind="user_id", value=account)
    merged = profiles.LinkIdentities(
        ppb.LinkIdentitiesRequest(identifiers=[cookie, account_id]), timeout=5
    )
    print(f"login as {account}: linked, person {merged.person_id}, {merged.merged} merged")
    profiles.LinkIdentities(ppb.LinkIdentitiesRequest(identifiers=[account_id, phone]), timeout=5)
    found = profiles.GetProfile(
        ppb.GetProfileRequest(
            identifier=ipb.Identifier(kind="phone", value="0049151 23456789"), limit=3
        ),
        timeout=5,
    )
    print(
        f"store clerk types the phone → person {found.person_id}: recent views "
        + ", ".join(v.item_id for v in found.recent_views)
        + f"; top categories {', '.join(c.category for c in found.top_categories[:3])}; "
        f"best channel {found.preferred_channel} at {list(found.preferred_hours)} h; "
        f"identifiers: {', '.join(found.identifier_kinds)} (values never stored raw)"
    )
