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
then their channel and time (``place_all``: ``channel_rankings`` and ``plan_sends``). The
whole audience is paged through with ``--page`` members per page, by the core in-process
(``Audience.page_plan`` on the sync client, as ``export-audience`` runs it) and through a
real gRPC server on loopback (``Campaigns.Audience``, as the orchestrator calls it); and
the channel and time alone (``place_all`` over the same people, read and decoded
beforehand, pages of ``--page``). Each path runs twice in the same process: ``per
member/s`` with ``place_all`` swapped for one call per member (pages planned as before
they were planned together), then ``batched/s`` as served; ``ratio`` is the second over
the first. Both must give identical answers (the bench stops if not). ``people/s`` counts
the people examined (members and those left out); ``first page`` is the batched run's
first call (ranking included).

Nothing else is asserted; the numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from service import campaigns  # noqa: E402
from service.bundle import ModelBundle  # noqa: E402
from service.campaigns import Audience, AudienceModel, Campaign  # noqa: E402
from service.catalogue import Catalogue  # noqa: E402
from service.config import Settings  # noqa: E402
from service.contact import ContactPolicy, ContactState  # noqa: E402
from service.engagement import profile_of  # noqa: E402
from service.identity import Identities, default_token  # noqa: E402
from service.store import FeatureStore  # noqa: E402
from service.store.reads import together  # noqa: E402

if TYPE_CHECKING:
    from omnirec.v1.campaigns_pb2_grpc import CampaignsStub
    from service.served_model import Engine

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


@contextmanager
def one_at_a_time() -> Iterator[None]:
    """Audience pages planned member by member (``place_all`` of one, each), as before
    pages were planned together."""
    together = campaigns.place_all

    def alone(members, *rules):
        return [together([member], *rules)[0] for member in members]

    campaigns.place_all = alone
    try:
        yield
    finally:
        campaigns.place_all = together


Run = tuple[float, float, int, int, list]
"""(seconds, first call's seconds, people examined, members, what came back)."""


def both_ways(run: Callable[[], Run]) -> tuple[Run, Run]:
    """``run`` one member at a time, then batched; the answers must be the same."""
    with one_at_a_time():
        alone = run()
    together = run()
    if alone[4] != together[4]:
        raise SystemExit("batched planning answered differently from planning one by one")
    return alone, together


def planning_table(args: argparse.Namespace) -> None:
    import grpc

    from devtools.redis_server import LocalRedis
    from omnirec.v1 import campaigns_pb2_grpc as cpb_grpc
    from omnirec.v1 import recommender_pb2 as pb
    from omnirec.v1 import recommender_pb2_grpc as pb_grpc
    from service.config import feature_store, load_settings
    from service.recommender import ServingParams
    from service.registry import ServedModel
    from service.served_model import Engine, build_server

    people, items = args.planned, args.items
    rng = np.random.default_rng(1)
    bundle = als_bundle(people, items, args.factors, rng)
    model = ServedModel("bench", "1", "", bundle)
    shop = catalogue(items)
    rows: list[tuple[str, Run, Run]] = []
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
                    world = World(
                        bundle,
                        shop,
                        store,
                        Identities(store, settings.identity_secret),
                        Engine.of(model, ServingParams()),
                        settings,
                        Campaign.of(category="c07", not_before=now, now=now),
                        now,
                        args.page,
                    )
                    recipients = world.recipients()
                    stub = cpb_grpc.CampaignsStub(channel)
                    for label, run in (
                        ("channel and time alone", lambda: world.placed(recipients)),
                        ("core, in-process", world.paged),
                        ("Audience over gRPC", lambda: world.served(stub)),
                    ):
                        rows.append((label, *both_ways(run)))
            finally:
                running.stop(grace=1)
                store.close()
        finally:
            redis.stop()
    print(f"\nplanning: {people} people with 12 live events each, pages of {args.page}")
    print(
        f"{'path':>24} {'people':>7} {'members':>8} {'per member/s':>13} {'batched/s':>10} "
        f"{'ratio':>6} {'first page':>11}"
    )
    for label, alone, batched in rows:
        rates = [run[2] / run[0] for run in (alone, batched)]
        print(
            f"{label:>24} {batched[2]:>7} {batched[3]:>8} {rates[0]:>13,.0f} {rates[1]:>10,.0f} "
            f"{rates[1] / rates[0]:>6.1f} {batched[1] * 1e3:>9.0f}ms"
        )


@dataclass
class World:
    """What the planning runs share: the model, the catalogue, the store with everybody's
    live events, the served engine and settings, and the campaign."""

    bundle: ModelBundle
    shop: Catalogue
    store: FeatureStore
    identities: Identities
    engine: Engine
    settings: Settings
    campaign: Campaign
    now: float
    page: int

    def recipients(self) -> list[campaigns.Recipient]:
        """Everybody as planning sees them, read and decoded (pages of :attr:`page`)."""
        users = [str(u) for u in self.bundle.user_ids]
        views = []
        for at in range(0, len(users), self.page):
            plans = [
                self.identities.view_plan(default_token(u), popular_count=0, engagement=True)
                for u in users[at : at + self.page]
            ]
            views += self.store.run(together(plans), "bench")
        return [
            campaigns.Recipient(
                profile_of(v.engagement, self.settings, self.engine.priors),
                ContactState.of(v.engagement),
            )
            for v in views
        ]

    def placed(self, recipients: list[campaigns.Recipient]) -> Run:
        """``place_all`` over ``recipients``, pages of :attr:`page`."""
        began, first, placed = time.perf_counter(), None, []
        for at in range(0, len(recipients), self.page):
            placed += campaigns.place_all(
                recipients[at : at + self.page],
                self.engine.priors,
                ContactPolicy.of(self.settings),
                self.campaign.channels,
                self.now,
                self.campaign.window_hours,
                self.campaign.quiet,
                self.settings.default_timezone,
            )
            first = first or time.perf_counter() - began
        members = sum(not isinstance(p, str) for p in placed)
        return time.perf_counter() - began, first, len(placed), members, placed

    def paged(self) -> Run:
        """The whole audience through ``Audience.page_plan`` on the sync client."""
        began = time.perf_counter()
        ranker = AudienceModel(self.bundle)
        promotion = ranker.promote(self.campaign, Catalogue(*self.store.catalogue()))
        audience = Audience(
            self.campaign,
            self.now,
            promotion,
            ranker.rank(promotion),
            ranker,
            self.engine.recommender,
            self.engine.priors,
            ContactPolicy.of(self.settings),
            self.settings,
            self.identities,
            self.shop,
        )
        offset: int | None = 0
        examined, members, first = 0, [], None
        while offset is not None:
            page = self.store.run(audience.page_plan(offset, self.page), "bench")
            first = first or time.perf_counter() - began
            examined += page.examined
            members += page.members
            offset = page.next_offset
        return time.perf_counter() - began, first, examined, len(members), members

    def served(self, stub: CampaignsStub) -> Run:
        """The whole audience through ``Campaigns.Audience``."""
        from omnirec.v1 import campaigns_pb2 as cpb

        token, replies, examined, first = "", [], 0, None
        began = time.perf_counter()
        while True:
            reply = stub.Audience(
                cpb.AudienceRequest(
                    category="c07", not_before=_stamp(self.now), limit=self.page, page_token=token
                ),
                timeout=60,
            )
            first = first or time.perf_counter() - began
            replies.append(reply)
            examined += len(reply.members) + sum(
                getattr(reply.left_out, f.name) for f in reply.left_out.DESCRIPTOR.fields
            )
            token = reply.next_page_token
            if not token:
                break
        members = sum(len(r.members) for r in replies)
        return time.perf_counter() - began, first, examined, members, replies


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
