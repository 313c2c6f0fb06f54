"""Golden answers: a fixed scenario of RPCs against a fixed world, compared with a snapshot.

The world is built from the real parts, deterministically: a real redis-server (the
session ``redis_server``, under the key prefix ``golden``), features published with
``training.publish.publish`` (histories, popularity, bought-together, catalogue, each
person's send-time profile from ``training.engagement.user_profiles``), and three model
bundles made from ``numpy.random.default_rng`` (ALS, item-kNN, popularity; no implicit
training, whose output varies across machines) saved and loaded as ``ModelBundle``s,
each served by its own ``build_server`` on port 0. Every event, before and after
publishing, has a timestamp fixed relative to :data:`EPOCH`, and every PredictSendTime
request names its ``not_before``, so answers do not depend on the clock, with these
exceptions:

* **Trending scores** decay with the time between an event and the request (the server
  reads ``time.time()`` when it records an event and when it reads trending items, and
  the API cannot fix either). The scenario makes items trend with events a few hours
  before the wall clock, so their order is fixed and their scores vary by ~3e-5 per
  second of delay: items whose reason is ``trending`` have their scores compared with
  :data:`TRENDING_REL_TOL`. Events at :data:`EPOCH` (long past) add exactly 0 to
  trending, so those items trend with a score of 0 whenever the test runs.
* **PredictSendTime without ``not_before``** plans from now: only its time-independent
  fields (source, evidence, time zone, model version, how many alternatives) are kept.

Everything else is compared exactly (ids, reasons, sources, channels, status codes and
details, field names), floats with a relative tolerance of :data:`REL_TOL`.

Re-recording (``OMNIREC_RECORD_ANSWERS=1 .venv/bin/pytest tests/test_answers_unchanged.py``
writes ``tests/data/answers_unchanged.json`` and skips) is legitimate only when an answer
is *meant* to change: a deliberate change of ranking, reasons, send-time model or error
text, or a change of this scenario. Review the JSON diff of the snapshot with the change
and say why in the commit. A refactoring or speed-up must pass without re-recording.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from omnirec.v1 import engagement_pb2 as epb
from omnirec.v1 import engagement_pb2_grpc as epb_grpc
from omnirec.v1 import identity_pb2 as ipb
from omnirec.v1 import profiles_pb2 as ppb
from omnirec.v1 import profiles_pb2_grpc as ppb_grpc
from omnirec.v1 import recommender_pb2 as pb
from omnirec.v1 import recommender_pb2_grpc as pb_grpc
from service.api.server import RunningServer, build_server
from service.bundle import ModelBundle
from service.config import feature_store
from service.registry import ServedModel
from service.send_time import Priors
from tests.conftest import make_settings
from training.engagement import user_profiles
from training.event_log import load_events, write_events
from training.publish import publish

pytestmark = pytest.mark.integration

SNAPSHOT = Path(__file__).parent / "data" / "answers_unchanged.json"
RECORD_ENV = "OMNIREC_RECORD_ANSWERS"
REL_TOL = 1e-6
#: Scores this close to 0 compare as equal (a relative tolerance means nothing there).
ABS_TOL = 1e-9
#: Trending scores: ~3.2e-5 relative per second between recording and reading; this
#: allows minutes of difference in how long the scenario takes to get there.
TRENDING_REL_TOL = 5e-3
#: Differences shown per step, and steps shown, when answers changed.
SHOWN_DIFFS = 6
SHOWN_STEPS = 5

PREFIX = "golden"
SEED = 20250303
#: 2025-03-03T00:00:00Z, a Monday. Every event of the world is fixed relative to it.
EPOCH = 1_740_960_000
HOUR = 3600
DAY = 86_400

ITEMS = [f"i{j:03d}" for j in range(300)]
USERS = [f"u{k:02d}" for k in range(60)]
CATEGORIES = ("bags", "shoes", "tops", "outdoor", "home", "beauty")
#: Bundle item without catalogue metadata; catalogue items without model factors.
UNCATALOGUED = "i299"
CATALOGUE_ONLY = {"new-bag-1": "bags", "new-lamp-1": "home"}
#: Items the first 20 people buy in overlapping pairs (bought-together counts).
COBUY_POOL = ["i010", "i011", "i012", "i013", "i014", "i015"]
WEIGHTS = {"view": 1.0, "click": 1.5, "favourite": 4.0, "add_to_cart": 6.0, "purchase": 10.0}
ITEM_KINDS = ["view", "view", "view", "view", "click", "favourite", "add_to_cart", "purchase"]


def zone_of(k: int) -> str:
    """Users 0-9 live in Berlin, 10-14 in New York, 20-29 in Tokyo; the rest name none."""
    if k < 10:
        return "Europe/Berlin"
    if k < 15:
        return "America/New_York"
    if 20 <= k < 30:
        return "Asia/Tokyo"
    return ""


# --- the world -------------------------------------------------------------------------


def catalogue() -> dict[str, dict[str, Any]]:
    items = {
        item: {
            "category": CATEGORIES[j % len(CATEGORIES)],
            "title": f"{CATEGORIES[j % len(CATEGORIES)]} no. {j}",
            "price": round(4.99 + (j * 37) % 195, 2),
            "in_stock": j % 7 != 3,
        }
        for j, item in enumerate(ITEMS)
        if item != UNCATALOGUED
    }
    for n, (item, category) in enumerate(CATALOGUE_ONLY.items()):
        items[item] = {"category": category, "title": item, "price": 20.0 + n, "in_stock": True}
    return items


def curve(base: float, peak: int, amplitude: float = 0.6) -> list[float]:
    return [
        round(base * (1 + amplitude * math.cos(2 * math.pi * (h - peak) / 24)), 6)
        for h in range(24)
    ]


def share(peak: int) -> list[float]:
    raw = np.array(curve(1.0, peak, 0.5))
    return (raw / raw.sum()).tolist()


def priors() -> dict[str, Any]:
    """Send-time priors as training stores them (``Priors.to_dict``), made by hand."""
    rates = {"email": 0.18, "sms": 0.09, "push": 0.06, "messenger": 0.24}
    peaks = {"email": 19, "sms": 12, "push": 20, "messenger": 21}
    made = {
        "channel_rate": rates,
        "channel_hour_rate": {c: curve(r, peaks[c]) for c, r in rates.items()},
        "segment_hour_rate": {
            "Europe/Berlin": {"email": curve(0.22, 8), "sms": curve(0.1, 13)},
            "America/New_York": {"email": curve(0.15, 21)},
        },
        "activity": share(20),
        "segment_activity": {"Europe/Berlin": share(7), "Asia/Tokyo": share(22)},
        "tuning": {
            "strength": 6.0,
            "activity_strength": 10.0,
            "activity_exponent": 0.75,
            "activity_smoothing_hours": 1.5,
            "day_type_strength": 8.0,
            "half_life_days": 21.0,
            "activity_half_life_days": 45.0,
            "channel_strength": {"email": 12.0, "push": 4.0},
        },
    }
    Priors.from_dict(made)  # fails loudly if the priors format moved on
    return made


def published_events(rng: np.random.Generator) -> pd.DataFrame:
    """Three weeks of item events, co-purchases and message / visit events before EPOCH."""
    rows: list[dict[str, Any]] = []

    def add(user: str, item: str, kind: str, ts: int, channel: str, zone: str, auto=False):
        rows.append(
            {
                "user_id": user,
                "item_id": item,
                "event_type": kind,
                "timestamp": int(ts),
                "channel": channel,
                "timezone": zone,
                "automated": auto,
            }
        )

    for k, user in enumerate(USERS[:50]):
        zone, n = zone_of(k), 4 + k % 9
        items = rng.choice(len(ITEMS) - 1, n, replace=False)
        kinds = rng.choice(ITEM_KINDS, n)
        stamps = EPOCH - 20 * DAY + np.sort(rng.integers(0, 16 * DAY, n))
        for j, kind, ts in zip(items, kinds, stamps, strict=True):
            add(user, ITEMS[j], str(kind), ts, "web" if k % 2 else "app", zone)
        if k % 6 == 1:
            add(user, ITEMS[int(items[0])], "dislike", EPOCH - 4 * DAY + k, "app", zone)
        if k < 20:
            bought = {COBUY_POOL[k % 6], COBUY_POOL[(k + 1) % 6]}
            if k % 3 == 0:
                bought.add(COBUY_POOL[(k + 3) % 6])
            for m, item in enumerate(sorted(bought)):
                add(user, item, "purchase", EPOCH - 3 * DAY + k * 600 + m, "web", zone)

    for k in range(10):  # Berlin (UTC+1): email at 9:00 and 19:00 local, read at 19:00
        user, zone = USERS[k], zone_of(k)
        for d in range(14):
            sent = EPOCH - 28 * DAY + 2 * d * DAY + (18 if d % 2 else 8) * HOUR + k * 60
            add(user, "", "message_delivered", sent, "email", zone)
            if d % 2 or d % 4 == 0:
                add(user, "", "message_open", sent + 25 * 60 + k, "email", zone)
            if d % 5 == 0:
                add(user, "", "message_open", sent + 30, "email", zone, auto=True)
            if d % 2 == 0:
                add(user, "", "session_start", sent - 90 * 60, "app", zone)
        for d in range(3):
            sent = EPOCH - 10 * DAY + d * DAY + 12 * HOUR
            add(user, "", "message_delivered", sent, "sms", zone)
            if k % 2 == 0:
                add(user, "", "message_click", sent + 600, "sms", zone)
    for k in range(10, 15):  # New York: two emails at 20:00 local, one read
        user, zone = USERS[k], zone_of(k)
        for d in range(2):
            sent = EPOCH - 6 * DAY + d * DAY + HOUR
            add(user, "", "message_delivered", sent, "email", zone)
        add(user, "", "message_open", sent + 40 * 60, "email", zone)
    for k in range(15, 20):  # no zone: a dozen morning visits, nothing sent
        for d in range(12):
            add(
                USERS[k],
                "",
                "session_start",
                EPOCH - 14 * DAY + d * DAY + (6 + d % 3) * HOUR,
                "web",
                "",
            )
    for k in range(20, 30):  # Tokyo (UTC+9): push at 21:00 local, messenger twice
        user, zone = USERS[k], zone_of(k)
        for d in range(6):
            sent = EPOCH - 12 * DAY + 2 * d * DAY + 12 * HOUR
            add(user, "", "message_delivered", sent, "push", zone)
            if (k + d) % 3:
                add(user, "", "message_open", sent + 5 * 60, "push", zone)
        for d in range(2):
            add(
                user,
                "",
                "message_delivered",
                EPOCH - 5 * DAY + d * DAY + 3 * HOUR,
                "messenger",
                zone,
            )
    return pd.DataFrame(rows)


def bundles(rng: np.random.Generator, meta: dict[str, Any]) -> dict[str, ModelBundle]:
    users, items = np.array(USERS), np.array(ITEMS)
    als = ModelBundle(
        "als",
        users,
        items,
        user_factors=rng.normal(0.0, 0.35, (len(USERS), 16)),
        item_factors=rng.normal(0.0, 0.35, (len(ITEMS), 16)),
        metadata={**meta, "params": {"factors": 16, "alpha": 2.0, "regularization": 0.1}},
    )
    n = len(ITEMS)
    rows = np.repeat(np.arange(n), 8)
    cols = (rows + rng.integers(1, n, rows.size)) % n  # never the item itself
    knn = sp.coo_matrix((rng.uniform(0.05, 1.0, rows.size), (rows, cols)), shape=(n, n)).tocsr()
    knn = knn.maximum(knn.T)
    item_knn = ModelBundle(
        "item_knn", users, items, similarity=knn, metadata={**meta, "params": {"k": 8}}
    )
    scores = rng.gamma(2.0, 10.0, n)
    order = np.argsort(-scores, kind="stable")
    popularity = ModelBundle(
        "popularity",
        np.array([], dtype=str),
        items[order],
        item_scores=np.round(scores[order], 4),
        metadata=meta,
    )
    return {"als": als, "item_knn": item_knn, "popularity": popularity}


@pytest.fixture(scope="module")
def servers(redis_server, tmp_path_factory) -> Iterator[dict[str, RunningServer]]:
    """One server per model kind, all on the same published features."""
    root = tmp_path_factory.mktemp("golden")
    settings = make_settings(
        redis_server.url, root, key_prefix=PREFIX, port=0, host="127.0.0.1", model_poll_seconds=0
    )
    store = feature_store(settings)
    for key in store.client.scan_iter(match=f"{PREFIX}:*", count=1000):
        store.client.delete(key)
    rng = np.random.default_rng(SEED)
    write_events(published_events(rng), root / "events.csv")
    frame = load_events(root / "events.csv").frame
    data_end = int(frame["timestamp"].max())
    publish(
        store,
        frame,
        catalogue(),
        WEIGHTS,
        {"model_version": "7", "data_end": data_end},
        history_length=settings.history_length,
        popularity_half_life_days=30.0,
        keep=settings.keep_publications,
        engagement={
            user: profile.to_json()
            for user, profile in user_profiles(frame, 21.0, "UTC", 45.0).items()
        },
    )
    meta = {"weights": WEIGHTS, "engagement_priors": priors(), "data_end": data_end}
    servers = {}
    for version, (kind, bundle) in enumerate(bundles(rng, meta).items(), start=7):
        loaded = ModelBundle.load(bundle.save(root / kind))
        model = ServedModel("omnirec", str(version), f"golden-{kind}", loaded)
        servers[kind] = build_server(replace(settings, port=0), model, store)
    yield servers
    for running in servers.values():
        running.stop(grace=1)


# --- answers as plain JSON -------------------------------------------------------------


def plain(reply: Message) -> dict[str, Any]:
    """The answer as JSON: every field (defaults too), items as ``[id, score, reason]``,
    without the per-answer ``recommendation_id``."""
    out = MessageToDict(
        reply, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    out.pop("recommendation_id", None)
    # Fields added since the snapshot, left empty outside an A/B experiment.
    for added in ("experiment", "arm"):
        if out.get(added) == "":
            del out[added]
    # Added with opt-outs and fatigue (issue 15): false / unset while neither applies.
    for channel in out.get("channels", []) if isinstance(reply, epb.RankChannelsResponse) else []:
        if channel.get("opted_out") is False:
            del channel["opted_out"]
    if isinstance(reply, pb.RecommendResponse | pb.SimilarItemsResponse):
        out["items"] = [[r.item_id, float(r.score), r.reason] for r in reply.items]
    return out


#: Keeps the part of an answer that is compared.
Keep = Callable[[dict[str, Any]], dict[str, Any]]


class Scenario:
    """Runs RPCs on one server and keeps each answer (or status code and details) under
    a step name, in ``steps`` (shared by the scenarios of several servers)."""

    def __init__(self, channel: grpc.Channel, steps: list[dict[str, Any]], label: str = ""):
        self.steps = steps
        self.label = label
        self.rec = pb_grpc.RecommenderStub(channel)
        self.eng = epb_grpc.EngagementStub(channel)
        self.prof = ppb_grpc.ProfilesStub(channel)

    def call(
        self,
        step: str,
        method: Callable[..., Message],
        request: Message,
        keep: Keep | None = None,
    ) -> Message | None:
        step = self.label + step
        if any(s["step"] == step for s in self.steps):
            raise ValueError(f"two steps are called {step!r}")
        reply = None
        try:
            reply = method(request, timeout=10)
            answer = plain(reply)
            if keep is not None:
                answer = keep(answer)
        except grpc.RpcError as exc:
            answer = {"code": exc.code().name, "details": exc.details()}
        self.steps.append({"step": step, "answer": answer})
        return reply

    def recommend(self, step: str, **fields: Any) -> Message | None:
        return self.call(f"Recommend {step}", self.rec.Recommend, pb.RecommendRequest(**fields))

    def similar(self, step: str, **fields: Any) -> Message | None:
        request = pb.SimilarItemsRequest(**fields)
        return self.call(f"SimilarItems {step}", self.rec.SimilarItems, request)

    def track(self, step: str, events: list[pb.Event]) -> None:
        request = pb.TrackEventsRequest(events=events)
        self.call(f"TrackEvents {step}", self.rec.TrackEvents, request)

    def upsert(self, step: str, items: list[pb.Item]) -> None:
        request = pb.UpsertItemsRequest(items=items)
        self.call(f"UpsertItems {step}", self.rec.UpsertItems, request)

    def send_time(self, step: str, keep: Keep | None = None, **fields: Any) -> None:
        request = epb.PredictSendTimeRequest(**fields)
        self.call(f"PredictSendTime {step}", self.eng.PredictSendTime, request, keep)

    def channels(self, step: str, **fields: Any) -> None:
        request = epb.RankChannelsRequest(**fields)
        self.call(f"RankChannels {step}", self.eng.RankChannels, request)

    def profile(self, step: str, **fields: Any) -> None:
        self.call(f"GetProfile {step}", self.prof.GetProfile, ppb.GetProfileRequest(**fields))

    def link(self, step: str, *identifiers: ipb.Identifier) -> None:
        request = ppb.LinkIdentitiesRequest(identifiers=identifiers)
        self.call(f"LinkIdentities {step}", self.prof.LinkIdentities, request)

    def forget(self, step: str, **fields: Any) -> None:
        self.call(f"ForgetUser {step}", self.prof.ForgetUser, ppb.ForgetUserRequest(**fields))


def ident(kind: str, value: str) -> ipb.Identifier:
    return ipb.Identifier(kind=kind, value=value)


def at(seconds: int) -> Timestamp:
    return Timestamp(seconds=seconds)


def event(user: str, item: str, kind: str, ts: int | None, channel="app", **more) -> pb.Event:
    """An event of ``user`` (or of ``more["identifier"]``); ``ts`` None: unset (now)."""
    if ts is not None:
        more["timestamp"] = at(ts)
    return pb.Event(user_id=user, item_id=item, event_type=kind, channel=channel, **more)


def time_free(answer: dict[str, Any]) -> dict[str, Any]:
    """What a PredictSendTime answer planned from now says whatever the clock."""
    kept = ("source", "evidence", "evidence_detail", "timezone", "model_version")
    return {k: answer[k] for k in kept} | {"alternatives": len(answer["alternatives"])}


def ids(reply: Message | None) -> list[str]:
    return [r.item_id for r in reply.items] if reply is not None else []


MONDAY_10 = at(EPOCH + 10 * HOUR)
#: Live events: two days after EPOCH (after everything published).
LIVE = EPOCH + 2 * DAY
EMAIL, PHONE, COOKIE = "Jane.Doe@Example.com", "+49 151 2345 6789", "ck-1"


def published_world(s: Scenario) -> None:
    """Answers from the published features alone, before any live event."""
    s.recommend("u03 default limit", user_id="u03")
    s.recommend("u03 limit 1", user_id="u03", limit=1)
    s.recommend("u03 limit 50", user_id="u03", limit=50)
    s.recommend("u04 limit 15", user_id="u04", limit=15)
    s.recommend("u55 (in the model, no history)", user_id="u55", limit=5)
    s.recommend("stranger", user_id="nobody", limit=12)
    s.recommend("stranger limit 50", user_id="nobody", limit=50)
    s.recommend("u07 context i100", user_id="u07", limit=8, context_item_id="i100")
    s.recommend("stranger context i100", user_id="nobody", limit=6, context_item_id="i100")
    s.recommend("u07 context unknown item", user_id="u07", limit=5, context_item_id="zzz")
    s.recommend("u07 bags+shoes", user_id="u07", include_categories=["bags", "shoes"])
    s.recommend(
        "u07 no bags, in stock", user_id="u07", exclude_categories=["bags"], in_stock_only=True
    )
    first = s.recommend("u07 limit 6", user_id="u07", limit=6)
    s.recommend("u07 without its first three", user_id="u07", exclude_item_ids=ids(first)[:3])
    s.recommend(
        "u07 home in stock, limit 50",
        user_id="u07",
        limit=50,
        include_categories=["home"],
        in_stock_only=True,
    )
    for user in ("u06", "u07"):  # buyers of the co-buy pool; u07 disliked an item too
        s.recommend(f"{user} default filters", user_id=user, limit=40)
        s.recommend(
            f"{user} exclude_purchased=false", user_id=user, limit=40, exclude_purchased=False
        )
        s.recommend(
            f"{user} exclude_disliked=false", user_id=user, limit=40, exclude_disliked=False
        )
        s.recommend(f"{user} exclude_seen", user_id=user, limit=40, exclude_seen=True)
    s.recommend(
        "stranger home in stock",
        user_id="nobody",
        limit=8,
        include_categories=["home"],
        in_stock_only=True,
    )

    s.similar("i010", item_id="i010", limit=10)
    s.similar("i010 default limit", item_id="i010")
    s.similar("i010 bought_together", item_id="i010", limit=10, mode="bought_together")
    s.similar(
        "i010 bought_together for u04",
        item_id="i010",
        limit=10,
        mode="bought_together",
        user_id="u04",
    )
    s.similar(
        "i010 shoes in stock",
        item_id="i010",
        limit=8,
        include_categories=["shoes"],
        in_stock_only=True,
    )
    s.similar(
        "i010 no tops, not i011",
        item_id="i010",
        limit=8,
        exclude_categories=["tops"],
        exclude_item_ids=["i011"],
    )
    s.similar("i200 bought_together (none)", item_id="i200", limit=6, mode="bought_together")
    s.similar("catalogue-only new-bag-1", item_id="new-bag-1", limit=6)
    s.similar("catalogue-only new-bag-1 for u04", item_id="new-bag-1", limit=6, user_id="u04")
    s.similar("uncatalogued i299", item_id=UNCATALOGUED, limit=6)
    s.similar("uncatalogued i299, bags", item_id=UNCATALOGUED, limit=6, include_categories=["bags"])
    s.similar("unknown item", item_id="no-such-item", limit=5)

    s.send_time("u02 email", user_id="u02", channel="email", not_before=MONDAY_10)
    s.send_time("u02 sms 72h", user_id="u02", channel="sms", not_before=MONDAY_10, window_hours=72)
    s.send_time(
        "u02 push, no quiet hours",
        user_id="u02",
        channel="push",
        not_before=MONDAY_10,
        ignore_quiet_hours=True,
    )
    s.send_time(
        "u02 messenger in Tokyo, quiet 23-7",
        user_id="u02",
        channel="messenger",
        not_before=MONDAY_10,
        timezone="Asia/Tokyo",
        quiet_start_hour=23,
        quiet_end_hour=7,
    )
    s.send_time(
        "u02 email from 10:17:05, 6h",
        user_id="u02",
        channel="email",
        not_before=at(EPOCH + 10 * HOUR + 17 * 60 + 5),
        window_hours=6,
    )
    s.send_time(
        "u02 email across the DST change",
        user_id="u02",
        channel="email",
        not_before=at(EPOCH + 26 * DAY + 20 * HOUR),
        window_hours=48,
    )
    s.send_time("u11 email (New York)", user_id="u11", channel="email", not_before=MONDAY_10)
    s.send_time("u16 email (no zone)", user_id="u16", channel="email", not_before=MONDAY_10)
    s.send_time(
        "u16 email in New York",
        user_id="u16",
        channel="email",
        not_before=MONDAY_10,
        timezone="America/New_York",
    )
    s.send_time(
        "u22 push (Tokyo) 168h",
        user_id="u22",
        channel="push",
        not_before=MONDAY_10,
        window_hours=168,
    )
    s.send_time("stranger email", user_id="nobody", channel="email", not_before=MONDAY_10)
    s.send_time(
        "stranger sms, quiet 5-5 (none)",
        user_id="nobody",
        channel="sms",
        not_before=MONDAY_10,
        quiet_start_hour=5,
        quiet_end_hour=5,
    )
    s.send_time("u02 email from now", keep=time_free, user_id="u02", channel="email")
    for user in ("u02", "u11", "u16", "u22", "nobody"):
        s.channels(user, user_id=user)
    for user, limit in (("u02", 0), ("u04", 3), ("nobody", 0)):
        s.profile(f"{user} limit {limit}", identifier=ident("user_id", user), limit=limit)


def live_events(s: Scenario) -> None:
    """Catalogue changes and tracked events, then the answers they change."""
    s.upsert(
        "new shoe, i050 out of stock, i051 price",
        [
            pb.Item(item_id="new-shoe-1", category="shoes", title="new", price=79.0, in_stock=True),
            pb.Item(item_id="i050", in_stock=False),
            pb.Item(item_id="i051", price=12.5),
        ],
    )
    s.upsert(
        "a negative price",
        [pb.Item(item_id="i052", price=3.0), pb.Item(item_id="i053", price=-1.0)],
    )
    s.recommend(
        "u07 bags+shoes in stock after the upsert",
        user_id="u07",
        include_categories=["bags", "shoes"],
        in_stock_only=True,
    )
    s.track(
        "accepted and rejected",
        [
            event("u03", "i120", "view", LIVE),
            event("u03", "i121", "view", LIVE + 60),
            event("u03", "i122", "add_to_cart", LIVE + 120, timezone="Europe/Berlin"),
            event("u03", "i123", "purchase", LIVE + 180, "web", value=59.9),
            event("u04", "i124", "dislike", LIVE + 200),
            event("u04", "i125", "favourite", LIVE + 210),
            event("walk-in-1", "i130", "view", LIVE + 300, "store"),
            event("walk-in-1", "i131", "click", LIVE + 310, "store"),
            event("walk-in-1", "new-shoe-1", "view", LIVE + 320, "store"),
            event("u02", "", "message_delivered", LIVE + 9 * HOUR, "email"),
            event("u02", "", "message_open", LIVE + 9 * HOUR + 30, "email", automated=True),
            event("u02", "", "message_open", LIVE + 9 * HOUR + 900, "email"),
            event("u02", "", "session_start", LIVE + 10 * HOUR, "app"),
            event("u11", "", "message_delivered", LIVE + HOUR, "sms", timezone="America/New_York"),
            event("u11", "", "message_click", LIVE + HOUR + 120, "sms"),
            event("u03", "i126", "teleport", LIVE),
            event("u03", "", "view", LIVE),
            event("u03", "i127", "view", LIVE, "fax"),
            event("u03", "i127", "view", LIVE, timezone="Mars/Olympus"),
            event("u03", "i127", "view", 4_102_444_800),  # 2100
            event("u03", "i127", "view", -5),
            event("", "i127", "view", LIVE),
            event("u03", "i127", "view", LIVE, value=float("nan")),
            event("u" * 300, "i127", "view", LIVE),
            event("u03", "i" * 300, "view", LIVE),
            event("", "i127", "view", LIVE, identifier=ident("passport", "X1")),
            event("", "i127", "view", LIVE, identifier=ident("email", "not-an-email")),
        ],
    )
    # Trending follows the clock: these are hours before now (see the module docstring).
    now = int(time.time())
    s.track(
        "trending (clock-relative)",
        [
            event("trend-a", "i140", "view", now - HOUR),
            event("trend-a", "i141", "add_to_cart", now - 2 * HOUR),
            event("trend-b", "i142", "purchase", now - 5 * HOUR),
            event("trend-b", "i140", "click", now - 3 * HOUR),
            event("trend-c", "i143", "view", None),
            event("trend-c", "i144", "dislike", now - HOUR),
        ],
    )
    s.track("empty", [])
    s.track("1001 events", [event("u09", "i001", "view", LIVE)] * 1001)
    s.recommend("u03 after its events", user_id="u03")
    s.recommend("u03 after, exclude_seen", user_id="u03", limit=50, exclude_seen=True)
    s.recommend(
        "u03 after, exclude_purchased=false", user_id="u03", limit=50, exclude_purchased=False
    )
    s.recommend("u04 after its events", user_id="u04", limit=15)
    s.recommend("walk-in-1 after its events", user_id="walk-in-1", limit=8)
    s.recommend("stranger with trending", user_id="nobody", limit=30)
    s.recommend(
        "stranger with trending, shoes", user_id="nobody", limit=6, include_categories=["shoes"]
    )
    s.similar("new-shoe-1 (upserted)", item_id="new-shoe-1", limit=6)
    s.similar("i123 for u03", item_id="i123", limit=6, user_id="u03")
    later = at(EPOCH + 3 * DAY + 6 * HOUR)
    s.send_time("u02 email after live events", user_id="u02", channel="email", not_before=later)
    s.send_time("u11 sms after live events", user_id="u11", channel="sms", not_before=later)
    s.send_time("walk-in-1 push", user_id="walk-in-1", channel="push", not_before=later)
    for user in ("u02", "u11", "walk-in-1"):
        s.channels(f"{user} after live events", user_id=user)
    for user in ("u03", "u04", "walk-in-1"):
        s.profile(f"{user} after live events", identifier=ident("user_id", user))


def identities(s: Scenario) -> None:
    """Links, merges, and answers by identifier."""
    s.link("u05 + email", ident("user_id", "u05"), ident("email", EMAIL))
    s.recommend(
        "by email (other spelling)", identifier=ident("email", " jane.doe@EXAMPLE.com "), limit=8
    )
    s.recommend("u05", user_id="u05", limit=8)
    s.link("email + phone", ident("email", EMAIL), ident("phone", PHONE))
    cookie = ident("cookie", COOKIE)
    s.track(
        "by cookie",
        [
            event("", item, "view", LIVE + 400 + n, "web", identifier=cookie)
            for n, item in enumerate(["i150", "i151", "i152"])
        ]
        + [event("", "", "message_open", LIVE + 500, "push", identifier=cookie)],
    )
    s.recommend("by cookie", identifier=cookie, limit=8)
    s.link("cookie + u06", cookie, ident("user_id", "u06"))
    s.recommend("u06 after the merge", user_id="u06", limit=8)
    s.recommend("by cookie after the merge", identifier=cookie, limit=8)
    s.profile("by phone (other spelling)", identifier=ident("phone", "0049 151 23456789"))
    s.profile("by cookie", identifier=cookie)
    s.send_time("by email", identifier=ident("email", EMAIL), channel="email", not_before=MONDAY_10)
    s.channels("by phone", identifier=ident("phone", PHONE))
    s.similar(
        "i010 bought_together for the email",
        item_id="i010",
        limit=6,
        mode="bought_together",
        identifier=ident("email", EMAIL),
    )
    s.link("one identifier", ident("user_id", "u05"))
    s.link("the same twice", ident("email", EMAIL), ident("email", EMAIL.upper()))
    s.link("bad email", ident("user_id", "u05"), ident("email", "jane"))
    s.link("bad phone", ident("user_id", "u05"), ident("phone", "12345"))
    s.link("unknown kind", ident("user_id", "u05"), ident("passport", "X"))


def bad_requests(s: Scenario) -> None:
    s.recommend("limit -1", user_id="u03", limit=-1)
    s.recommend("limit 101", user_id="u03", limit=101)
    s.recommend("nobody named", limit=5)
    s.recommend("user_id too long", user_id="u" * 257)
    s.recommend("empty category", user_id="u03", include_categories=[""])
    s.recommend("long category", user_id="u03", exclude_categories=["c" * 129])
    s.recommend("empty excluded item", user_id="u03", exclude_item_ids=[""])
    s.recommend("context_item_id too long", user_id="u03", context_item_id="i" * 257)
    s.similar("no item", limit=5)
    s.similar("unknown mode", item_id="i010", mode="cheapest")
    s.similar("limit 500", item_id="i010", limit=500)
    s.send_time("channel web", user_id="u02", channel="web", not_before=MONDAY_10)
    s.send_time("no channel", user_id="u02", not_before=MONDAY_10)
    s.send_time("window 169", user_id="u02", channel="email", window_hours=169)
    s.send_time("window -1", user_id="u02", channel="email", window_hours=-1)
    s.send_time("unknown zone", user_id="u02", channel="email", timezone="Mars/Olympus")
    s.send_time("quiet hour 24", user_id="u02", channel="email", quiet_start_hour=24)
    s.send_time(
        "all quiet",
        user_id="u02",
        channel="email",
        not_before=at(EPOCH + 23 * HOUR),
        window_hours=2,
        timezone="UTC",
    )
    s.send_time("nobody named", channel="email")
    s.channels("nobody named")
    s.profile("no identifier")
    s.profile("limit 101", identifier=ident("user_id", "u02"), limit=101)
    s.profile("unknown kind", identifier=ident("passport", "X"))


def other_kinds(s: Scenario) -> None:
    """The same questions to an item-kNN and a popularity model, on the same features."""
    for user, limit in (("u03", 10), ("u55", 5), ("walk-in-1", 8), ("nobody", 8)):
        s.recommend(user, user_id=user, limit=limit)
    s.recommend("u07 context i100", user_id="u07", limit=8, context_item_id="i100")
    s.recommend(
        "u07 shoes in stock",
        user_id="u07",
        limit=8,
        include_categories=["shoes"],
        in_stock_only=True,
    )
    s.similar("i010", item_id="i010", limit=8)
    s.similar("i010 bought_together", item_id="i010", limit=8, mode="bought_together")
    s.similar("i299", item_id=UNCATALOGUED, limit=5)
    s.similar("new-bag-1", item_id="new-bag-1", limit=5)
    s.similar("unknown item", item_id="no-such-item")
    s.send_time("u02 email", user_id="u02", channel="email", not_before=MONDAY_10)
    s.channels("u22", user_id="u22")


def erasure(s: Scenario) -> None:
    """Last: it removes what the steps above built on."""
    s.forget("by cookie (u06)", identifier=ident("cookie", COOKIE))
    s.recommend("u06 after ForgetUser", user_id="u06", limit=8)
    s.profile("u06 after ForgetUser", identifier=ident("user_id", "u06"))
    s.forget("no identifier")


def run_scenario(servers: dict[str, RunningServer]) -> list[dict[str, Any]]:
    steps: list[dict[str, Any]] = []
    address = {kind: f"127.0.0.1:{running.port}" for kind, running in servers.items()}
    with (
        grpc.insecure_channel(address["als"]) as als,
        grpc.insecure_channel(address["item_knn"]) as knn,
        grpc.insecure_channel(address["popularity"]) as popularity,
    ):
        s = Scenario(als, steps)
        for part in (published_world, live_events, identities, bad_requests):
            part(s)
        other_kinds(Scenario(knn, steps, "item_knn: "))
        other_kinds(Scenario(popularity, steps, "popularity: "))
        erasure(s)
    return steps


def check_scenario(steps: list[dict[str, Any]]) -> None:
    """What makes the scenario worth pinning, whatever was recorded: tracked events
    change the next answers, and trending items show up."""
    answer = {s["step"]: s["answer"] for s in steps}
    for before, after in (
        ("Recommend u03 default limit", "Recommend u03 after its events"),
        ("Recommend u04 limit 15", "Recommend u04 after its events"),
        ("Recommend stranger", "Recommend stranger with trending"),
    ):
        assert answer[before]["items"] != answer[after]["items"], f"{after!r} did not change"
    reasons = {r for _, _, r in answer["Recommend stranger with trending"]["items"]}
    assert {"trending", "popular"} <= reasons, reasons


# --- comparing -------------------------------------------------------------------------


def _is_item(value: Any) -> bool:
    return (
        isinstance(value, list)
        and len(value) == 3
        and isinstance(value[0], str)
        and isinstance(value[2], str)
        and isinstance(value[1], int | float)
    )


def _close(expected: float, got: float, rel: float) -> bool:
    return math.isclose(expected, got, rel_tol=rel, abs_tol=ABS_TOL)


def short(value: Any, width: int = 160) -> str:
    text = repr(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def differences(expected: Any, got: Any, path: str = "") -> Iterator[str]:
    """Readable differences between two answers, in field order."""
    where = path or "answer"
    if _is_item(expected) and _is_item(got):
        rel = TRENDING_REL_TOL if expected[2] == "trending" else REL_TOL
        same = expected[0] == got[0] and expected[2] == got[2]
        if not (same and _close(expected[1], got[1], rel)):
            yield f"{where}: expected {expected!r}, got {got!r}"
    elif isinstance(expected, dict) and isinstance(got, dict):
        for key, value in expected.items():
            if key not in got:
                yield f"{where}: field {key!r} is gone (expected {short(value)})"
            else:
                yield from differences(value, got[key], f"{path}.{key}" if path else key)
        for key in got.keys() - expected.keys():
            yield f"{where}: new field {key!r} = {short(got[key])}"
    elif isinstance(expected, list) and isinstance(got, list):
        if len(expected) != len(got):
            yield f"{where}: expected {len(expected)} entries, got {len(got)}"
        for n, (e, g) in enumerate(zip(expected, got, strict=False)):
            yield from differences(e, g, f"{path}[{n}]")
        for n in range(len(got), len(expected)):
            yield f"{path}[{n}]: missing, expected {short(expected[n])}"
        for n in range(len(expected), len(got)):
            yield f"{path}[{n}]: extra {short(got[n])}"
    elif (
        isinstance(expected, float | int)
        and isinstance(got, float | int)
        and not isinstance(expected, bool)
        and not isinstance(got, bool)
        and (isinstance(expected, float) or isinstance(got, float))
    ):
        if not _close(float(expected), float(got), REL_TOL):
            yield f"{where}: expected {expected!r}, got {got!r}"
    elif type(expected) is not type(got) or expected != got:
        yield f"{where}: expected {short(expected)}, got {short(got)}"


def mismatch_report(recorded: list[dict[str, Any]], answered: list[dict[str, Any]]) -> str:
    """'' when every answer matches the snapshot; else the first differences, per step."""
    names = [s["step"] for s in recorded]
    run = [s["step"] for s in answered]
    if names != run:
        gone = [n for n in names if n not in run]
        new = [n for n in run if n not in names]
        return (
            "the scenario's steps differ from the snapshot's (the test changed?): "
            f"only in the snapshot {gone[:5]}, only in the run {new[:5]}; re-record only if "
            f"the scenario change is intended ({RECORD_ENV}=1, see the module docstring)"
        )
    changed = []
    for old, new in zip(recorded, answered, strict=True):
        found = list(differences(old["answer"], new["answer"]))
        if found:
            changed.append((old["step"], found))
    if not changed:
        return ""
    lines = [
        f"answers changed in {len(changed)} of {len(recorded)} steps "
        f"(snapshot {SNAPSHOT.relative_to(Path(__file__).parent.parent)}):"
    ]
    for step, found in changed[:SHOWN_STEPS]:
        lines.append(f"- step {step!r}:")
        lines += [f"    {d}" for d in found[:SHOWN_DIFFS]]
        if len(found) > SHOWN_DIFFS:
            lines.append(f"    … and {len(found) - SHOWN_DIFFS} more differences")
    rest = [step for step, _ in changed[SHOWN_STEPS:]]
    if rest:
        named = ", ".join(repr(step) for step in rest[:SHOWN_STEPS])
        lines.append(
            f"- and {len(rest)} more steps: {named}" + (", …" if len(rest) > SHOWN_STEPS else "")
        )
    return "\n".join(lines)


def to_json(value: Any, indent: str = "") -> str:
    """JSON with one line per field and per list entry, lists of plain values on one line
    (an item ``[id, score, reason]`` per line), so snapshot diffs stay readable."""
    inner = indent + " "
    if isinstance(value, dict) and value:
        body = ",\n".join(f"{inner}{json.dumps(k)}: {to_json(v, inner)}" for k, v in value.items())
        return "{\n" + body + "\n" + indent + "}"
    if isinstance(value, list) and any(isinstance(v, dict | list) for v in value):
        body = ",\n".join(inner + to_json(v, inner) for v in value)
        return "[\n" + body + "\n" + indent + "]"
    return json.dumps(value, ensure_ascii=False)


def test_answers_are_unchanged(servers: dict[str, RunningServer]) -> None:
    answered = run_scenario(servers)
    check_scenario(answered)
    if os.environ.get(RECORD_ENV) == "1":
        SNAPSHOT.parent.mkdir(parents=True, exist_ok=True)
        SNAPSHOT.write_text(to_json({"steps": answered}) + "\n", encoding="utf-8")
        pytest.skip(f"recorded {len(answered)} answers to {SNAPSHOT} ({RECORD_ENV}=1)")
    if not SNAPSHOT.exists():
        pytest.fail(f"no snapshot at {SNAPSHOT}: record it with {RECORD_ENV}=1")
    recorded = json.loads(SNAPSHOT.read_text(encoding="utf-8"))["steps"]
    report = mismatch_report(recorded, answered)
    if report:
        pytest.fail(report, pytrace=False)
