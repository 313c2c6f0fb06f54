"""Campaigns.Audience against audience size: people ranked per second for 10k, 100k and
1M people in-process, and people planned per second in-process and through gRPC.

    python bench/bench_audience.py [--sizes 10000 100000 1000000] [--items 5000]
                                   [--factors 32] [--planned 10000] [--page 100]

**Ranking** (no I/O): for each size, synthetic bundles built in memory — ALS (float32
factors from numpy's ``default_rng``) and item-kNN (50 neighbours per item, and the
person × item training matrix training ships, 30 items per person) — and a catalogue
of ``--items`` items in 50 categories. One audience request for one category (~100
items) costs ``AudienceModel.rank`` (everybody against the items: one product) plus the
order of the first page's reach (``Ranking.prefix``); timed with ``time.perf_counter``,
the median of 5 after a warm-up. ``people/s`` is the size over that time: how fast a
first page can be ranked.

**Planning** (one size, ``--planned`` people, ALS): a throw-away redis-server holds each
person's live events (12 each: views, a purchase, deliveries and opens, tracked through
``TrackEvents``), so every member costs what it costs in production: their features and
engagement read (one round trip per batch), ``Recommender.rank`` over the promoted items,
``rank_channels`` and ``plan_send``. The whole audience is paged through with ``--page``
members per page, once by the core in-process (``Audience.page_plan`` on the sync
client, as ``export-audience`` runs it) and once through a real gRPC server on loopback
(``Campaigns.Audience``, as the orchestrator calls it). ``people/s`` counts the people
examined (members and those left out), ``first page`` is the first call's latency
(ranking included).

Nothing is asserted; the numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import scipy.sparse as sp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from service.bundle import ModelBundle  # noqa: E402
from service.campaigns import AudienceModel, Campaign  # noqa: E402
from service.catalogue import Catalogue  # noqa: E402

CATEGORIES = 50
NEIGHBOURS = 50
PER_PERSON = 30
REPEATS = 5


def catalogue(items: int) -> Catalogue:
    return Catalogue(1, {f"i{j:06d}": {"category": f"c{j % CATEGORIES:02d}"} for j in range(items)})


def als_bundle(people: int, items: int, factors: int, rng: np.random.Generator) -> ModelBundle:
    return ModelBundle(
        "als",
        user_ids=np.array([f"u{i:07d}" for i in range(people)]),
        item_ids=np.array([f"i{j:06d}" for j in range(items)]),
        user_factors=rng.standard_normal((people, factors), dtype=np.float32),
        item_factors=rng.standard_normal((items, factors), dtype=np.float32) / factors,
        metadata={"params": {"alpha": 1.0, "regularization": 0.05}},
    )


def knn_bundle(people: int, items: int, rng: np.random.Generator) -> ModelBundle:
    rows = np.repeat(np.arange(items), NEIGHBOURS)
    similarity = sp.csr_matrix(
        (rng.random(len(rows), dtype=np.float32), (rows, rng.integers(0, items, len(rows)))),
        shape=(items, items),
    )
    rows = np.repeat(np.arange(people), PER_PERSON)
    weights = rng.integers(1, 11, len(rows)).astype(np.float32)
    matrix = sp.csr_matrix(
        (weights, (rows, rng.integers(0, items, len(rows)))), shape=(people, items)
    )
    return ModelBundle(
        "item_knn",
        user_ids=np.array([f"u{i:07d}" for i in range(people)]),
        item_ids=np.array([f"i{j:06d}" for j in range(items)]),
        similarity=similarity,
        interactions=matrix,
    )


def time_ranking(bundle: ModelBundle, shop: Catalogue, page: int) -> float:
    """Median seconds to rank everybody for one category and order a first page's reach."""
    model = AudienceModel(bundle)
    promotion = model.promote(Campaign.of(category="c07", now=time.time()), shop)
    reach = 5 * page + 50
    model.rank(promotion).prefix(reach)  # warm-up
    runs = []
    for _ in range(REPEATS):
        began = time.perf_counter()
        model.rank(promotion).prefix(reach)
        runs.append(time.perf_counter() - began)
    return statistics.median(runs)


def ranking_table(args: argparse.Namespace) -> None:
    rng = np.random.default_rng(0)
    shop = catalogue(args.items)
    print(f"ranking: {args.items} items, one category (~{args.items // CATEGORIES} items)")
    print(f"{'people':>10} {'kind':>9} {'ms':>9} {'people/s':>14}")
    for people in args.sizes:
        for kind, build in (
            ("als", lambda p=people: als_bundle(p, args.items, args.factors, rng)),
            ("item_knn", lambda p=people: knn_bundle(p, args.items, rng)),
        ):
            bundle = build()
            seconds = time_ranking(bundle, shop, args.page)
            print(f"{people:>10} {kind:>9} {seconds * 1e3:>9.1f} {people / seconds:>14,.0f}")
            del bundle


def planning_table(args: argparse.Namespace) -> None:
    import grpc

    from omnirec.v1 import campaigns_pb2 as cpb
    from omnirec.v1 import campaigns_pb2_grpc as cpb_grpc
    from omnirec.v1 import recommender_pb2 as pb
    from omnirec.v1 import recommender_pb2_grpc as pb_grpc
    from service.campaigns import Audience
    from service.config import feature_store, load_settings
    from service.contact import ContactPolicy
    from service.identity import Identities
    from service.recommender import ServingParams
    from service.registry import ServedModel
    from service.server import Engine, build_server
    from training.redis_server import LocalRedis

    people, items = args.planned, args.items
    rng = np.random.default_rng(1)
    bundle = als_bundle(people, items, args.factors, rng)
    model = ServedModel("bench", "1", "", bundle)
    shop = catalogue(items)
    with tempfile.TemporaryDirectory(prefix="omnirec-bench-audience-") as tmp:
        redis = LocalRedis(Path(tmp))
        try:
            settings = load_settings(
                {},
                redis_url=redis.url,
                identity_secret="bench-secret-0123456789abcdef",
                key_prefix="bench",
            )
            settings = replace(settings, port=0, host="127.0.0.1")
            store = feature_store(settings, 10.0)
            store.upsert_items(list(shop.items.items()))
            running = build_server(settings, model, store)
            try:
                with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
                    track(pb_grpc.RecommenderStub(channel), pb, people, items, rng)
                    now = float(int(time.time()) // 3600 * 3600)
                    campaign = Campaign.of(category="c07", not_before=now, now=now)

                    engine = Engine.of(model, ServingParams())
                    ranker = AudienceModel(bundle)
                    began = time.perf_counter()
                    promotion = ranker.promote(campaign, Catalogue(*store.catalogue()))
                    audience = Audience(
                        campaign,
                        now,
                        promotion,
                        ranker.rank(promotion),
                        ranker,
                        engine.recommender,
                        engine.priors,
                        ContactPolicy.of(settings),
                        settings,
                        Identities(store, settings.identity_secret),
                        shop,
                    )
                    offset: int | None = 0
                    examined = members = 0
                    first = None
                    while offset is not None:
                        page = store.run(audience.page_plan(offset, args.page), "bench")
                        first = first or time.perf_counter() - began
                        examined += page.examined
                        members += len(page.members)
                        offset = page.next_offset
                    core = (time.perf_counter() - began, first, examined, members)

                    stub = cpb_grpc.CampaignsStub(channel)
                    token = ""
                    examined = members = 0
                    began = time.perf_counter()
                    first = None
                    while True:
                        reply = stub.Audience(
                            cpb.AudienceRequest(
                                category="c07",
                                not_before=_stamp(now),
                                limit=args.page,
                                page_token=token,
                            ),
                            timeout=60,
                        )
                        first = first or time.perf_counter() - began
                        members += len(reply.members)
                        examined += len(reply.members) + sum(
                            getattr(reply.left_out, f.name)
                            for f in reply.left_out.DESCRIPTOR.fields
                        )
                        token = reply.next_page_token
                        if not token:
                            break
                    served = (time.perf_counter() - began, first, examined, members)
            finally:
                running.stop(grace=1)
                store.close()
        finally:
            redis.stop()
    print(f"\nplanning: {people} people with 12 live events each, pages of {args.page}")
    print(f"{'path':>22} {'people':>8} {'members':>8} {'s':>7} {'people/s':>10} {'first page':>11}")
    for label, (seconds, first_page, seen, kept) in (
        ("core, in-process", core),
        ("Audience over gRPC", served),
    ):
        print(
            f"{label:>22} {seen:>8} {kept:>8} {seconds:>7.2f} {seen / seconds:>10,.0f} "
            f"{first_page * 1e3:>9.0f}ms"
        )


def track(stub, pb, people: int, items: int, rng: np.random.Generator) -> None:
    """12 live events per person: 6 views and a purchase on the site, 3 email deliveries
    and 2 opens, spread over the last 30 days."""
    now = int(time.time())
    batch = []
    for i in range(people):
        user = f"u{i:07d}"
        stamps = now - rng.integers(3600, 30 * 86_400, 12)
        picks = rng.integers(0, items, 7)
        for n in range(6):
            batch.append(_event(pb, user, f"i{picks[n]:06d}", "view", "web", stamps[n]))
        batch.append(_event(pb, user, f"i{picks[6]:06d}", "purchase", "web", stamps[6]))
        for n in range(7, 10):
            batch.append(_event(pb, user, "", "message_delivered", "email", stamps[n]))
        for n in range(10, 12):
            batch.append(_event(pb, user, "", "message_open", "email", stamps[n]))
        if len(batch) > 1000 - 12:
            stub.TrackEvents(pb.TrackEventsRequest(events=batch), timeout=60)
            batch = []
    if batch:
        stub.TrackEvents(pb.TrackEventsRequest(events=batch), timeout=60)


def _event(pb, user, item, kind, channel, at):
    return pb.Event(
        user_id=user, item_id=item, event_type=kind, channel=channel, timestamp=_stamp(at)
    )


def _stamp(seconds: float):
    from google.protobuf.timestamp_pb2 import Timestamp

    ts = Timestamp()
    ts.FromSeconds(int(seconds))
    return ts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--items", type=int, default=5000)
    parser.add_argument("--factors", type=int, default=32)
    parser.add_argument("--planned", type=int, default=10_000, help="people planned (Redis)")
    parser.add_argument("--page", type=int, default=100, help="members per page")
    args = parser.parse_args()
    ranking_table(args)
    if args.planned:
        planning_table(args)


if __name__ == "__main__":
    main()
