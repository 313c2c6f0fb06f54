"""Campaigns.Audience and ``python -m training export-audience``: the pure core on toy
bundles, then the real path (a real training run on the synthetic log with planted tastes,
channels and opt-outs; a real redis-server; a real gRPC server) with a fatigue gap."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from datetime import UTC, datetime

import grpc
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import scipy.sparse as sp
from google.protobuf.timestamp_pb2 import Timestamp

from omnirec.v1 import campaigns_pb2 as cpb
from omnirec.v1 import campaigns_pb2_grpc as cpb_grpc
from omnirec.v1 import recommender_pb2 as pb
from omnirec.v1 import recommender_pb2_grpc as pb_grpc
from service import campaigns as campaigns_core
from service.api.server import build_server
from service.bundle import ModelBundle
from service.campaigns import (
    AudienceModel,
    Campaign,
    NoAudienceModel,
    PageToken,
    Placement,
    Recipient,
    place,
    place_all,
    top_order,
)
from service.catalogue import Catalogue
from service.config import feature_store
from service.contact import ContactPolicy, ContactState, allowed, earliest_send
from service.engagement import open_window
from service.errors import BadInput, NotAllowed, NotFound
from service.events import MESSAGE_CHANNELS
from service.registry import ModelRegistry
from service.send_time import EngagementProfile, Priors, plan_send, rank_channels
from tests.conftest import deployment_env, publish_log
from tests.test_send_time import varied_person, varied_priors

NOW = 1_790_000_000.0
HOUR = 3600

# --- the pure core ----------------------------------------------------------------------

ITEMS = np.array(["a1", "a2", "b1", "b2"])
CATALOGUE = Catalogue(
    1,
    {
        "a1": {"category": "shoes"},
        "a2": {"category": "shoes"},
        "b1": {"category": "bags"},
        "b2": {"category": "bags"},
        "a-new": {"category": "shoes"},
        "loose": {},
    },
)
PEOPLE = np.array(["likes_a", "likes_b", "likes_both", "cold"])


def factor_bundle() -> ModelBundle:
    return ModelBundle(
        "als",
        user_ids=PEOPLE,
        item_ids=ITEMS,
        user_factors=np.array([[1, 0], [0, 1], [0.6, 0.6], [0, 0]], dtype=np.float32),
        item_factors=np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9]], dtype=np.float32),
    )


def interactions() -> sp.csr_matrix:
    return sp.csr_matrix(
        np.array([[5, 1, 0, 0], [0, 0, 5, 1], [1, 0, 1, 0], [0, 0, 0, 0]], dtype=np.float32)
    )


def similarity_bundle(kind: str, with_matrix: bool = True) -> ModelBundle:
    sim = np.array(
        [[0, 0.9, 0, 0], [0.9, 0, 0, 0.1], [0, 0, 0, 0.9], [0, 0.1, 0.9, 0]], dtype=np.float32
    )
    return ModelBundle(
        kind,
        user_ids=PEOPLE,
        item_ids=ITEMS,
        similarity=sp.csr_matrix(sim) if kind == "item_knn" else sim,
        interactions=interactions() if with_matrix else None,
    )


def campaign(**fields) -> Campaign:
    return Campaign.of(now=NOW, **fields)


def order_of(bundle: ModelBundle, **fields) -> list[str]:
    model = AudienceModel(bundle)
    ranking = model.rank(model.promote(campaign(**fields), CATALOGUE))
    return [str(PEOPLE[r]) for r in ranking.prefix(10)]


@pytest.mark.parametrize(
    "bundle", [factor_bundle, *(lambda k=k: similarity_bundle(k) for k in ("ease", "item_knn"))]
)
def test_every_personalised_kind_ranks_the_people_who_like_the_items_first(bundle):
    assert order_of(bundle(), item_ids=["a2"])[:2] == ["likes_a", "likes_both"]
    assert order_of(bundle(), category="bags")[:2] == ["likes_b", "likes_both"]


def test_similarity_kinds_leave_out_people_with_no_path_to_the_items():
    assert "cold" not in order_of(similarity_bundle("ease"), item_ids=["a1"])
    assert "cold" in order_of(factor_bundle(), item_ids=["a1"])  # every row scores


def test_models_that_cannot_rank_people_are_a_failed_precondition_saying_why():
    for bundle, says in [
        (similarity_bundle("ease", with_matrix=False), "retrain"),
        (
            ModelBundle(
                "popularity",
                user_ids=np.array([], dtype=np.str_),
                item_ids=ITEMS,
                item_scores=np.ones(4, dtype=np.float32),
            ),
            "popularity baseline",
        ),
    ]:
        with pytest.raises(NoAudienceModel, match=says):
            AudienceModel(bundle).check("omnirec/9")


def test_promoted_items_resolve_through_the_model_and_the_catalogue():
    model = AudienceModel(factor_bundle())
    both = model.promote(campaign(item_ids=["b1"], category="shoes"), CATALOGUE)
    assert both.item_ids == ("b1", "a-new", "a1", "a2") and both.named == 1
    assert both.scored.tolist() == [0, 1, 2]
    # An item new to the model stands in by the known items of its category.
    new = model.promote(campaign(item_ids=["a-new"]), CATALOGUE)
    assert new.item_ids == ("a-new",) and new.scored.tolist() == [0, 1]
    for fields, field in [
        ({"item_ids": ["a1", "nowhere"]}, "item_ids[1]"),
        ({"item_ids": ["loose"]}, "item_ids[0]"),
        ({"category": "hats"}, "category"),
    ]:
        with pytest.raises(NotFound) as err:
            model.promote(campaign(**fields), CATALOGUE)
        assert str(err.value).startswith(f"{field}:")


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({}, "item_ids"),
        ({"item_ids": ["ok", ""]}, "item_ids[1]"),
        ({"item_ids": ["x"] * 1001}, "item_ids"),
        ({"category": " "}, "category"),
        ({"category": "c" * 129}, "category"),
        ({"category": "c", "channels": ["email", "web"]}, "channels[1]"),
        ({"category": "c", "window_hours": 169}, "window_hours"),
        ({"category": "c", "window_hours": -1}, "window_hours"),
        ({"category": "c", "quiet_start": 24}, "quiet_start_hour"),
        ({"category": "c", "quiet_end": -1}, "quiet_end_hour"),
        ({"category": "c", "not_before": NOW + 400 * 86_400}, "not_before"),
    ],
)
def test_bad_campaigns_name_the_field(fields, field):
    with pytest.raises(BadInput) as err:
        campaign(**fields)
    assert err.value.field == field


def test_top_order_is_exact_under_ties_and_longer_prefixes_extend_shorter_ones():
    rng = np.random.default_rng(3)
    scores = np.round(rng.random(5000), 2)  # many ties
    scores[rng.integers(0, 5000, 300)] = -np.inf
    full = top_order(scores, 10_000)
    expected = sorted(np.flatnonzero(np.isfinite(scores)), key=lambda i: (-scores[i], i))
    assert full.tolist() == expected
    for k in (1, 7, 100, 999):
        assert top_order(scores, k).tolist() == expected[:k]


def test_page_tokens_round_trip_and_refuse_what_they_were_not_issued_for():
    request = campaign(category="shoes")
    token = PageToken("omnirec/3", request.fingerprint(), "p", 40, NOW)
    back = PageToken.decode(token.encode())
    assert back == token
    back.check(request, "omnirec/3")
    with pytest.raises(BadInput, match="another request") as err:
        back.check(campaign(category="shoes", window_hours=48), "omnirec/3")
    assert err.value.field == "page_token"
    with pytest.raises(NotAllowed, match="omnirec/3 to omnirec/4") as changed:
        back.check(request, "omnirec/4")
    assert changed.value.field == "page_token"
    text = token.encode()
    for bad in [
        "",
        "garbage",
        text[:-3],
        text[:10] + ("A" if text[10] != "A" else "B") + text[11:],
    ]:
        with pytest.raises(BadInput):
            PageToken.decode(bad)


def contact(opted_out=(), deliveries=()) -> ContactState:
    return ContactState(frozenset(opted_out), tuple(deliveries))


def planned(state, channels=("email", "sms"), gap=0.0, window=24, quiet=None, start=NOW):
    return place(
        EngagementProfile(),
        state,
        Priors.flat(),
        ContactPolicy(gap, 0),
        channels,
        start,
        window,
        quiet,
        "UTC",
    )


def test_a_member_gets_an_allowed_open_channel_inside_the_window():
    first = planned(contact())
    assert first.channel in ("email", "sms")
    assert NOW <= first.send_at.timestamp() < NOW + 24 * HOUR
    other = "sms" if first.channel == "email" else "email"
    # Opted out of the best channel: the other one; of both: nobody.
    assert planned(contact([first.channel])).channel == other
    assert planned(contact(["email", "sms"])) == "opted_out"


def test_the_fatigue_gap_moves_send_at_or_the_channel_and_never_plans_inside_it():
    first = planned(contact()).channel
    other = "sms" if first == "email" else "email"
    recent = [(first, int(NOW - HOUR))]
    # A 48 h gap closes the best channel for the whole 24 h window: the other one.
    assert planned(contact(deliveries=recent), gap=48).channel == other
    # Only that channel allowed: left out as fatigued.
    assert planned(contact(deliveries=recent), channels=(first,), gap=48) == "fatigued"
    # A 10 h gap leaves part of the window: send_at after it.
    later = planned(contact(deliveries=recent), channels=(first,), gap=10)
    assert later.send_at.timestamp() >= NOW - HOUR + 10 * HOUR


def test_a_window_left_only_with_quiet_hours_is_quiet():
    night = datetime(2026, 11, 2, 23, tzinfo=UTC).timestamp()
    assert planned(contact(), window=5, quiet=(22, 8), start=night) == "quiet"


def placed_alone(
    member: Recipient,
    priors: Priors,
    policy: ContactPolicy,
    channels: tuple[str, ...],
    start: float,
    window: int,
    quiet: tuple[int, int] | None,
    zone: str,
    explore_rate: float,
) -> Placement | str:
    """A member planned as before pages were planned together: channel after channel,
    one ``plan_send`` each."""
    open_ = set(allowed(member.contact, channels))
    if not open_:
        return "opted_out"
    why = "fatigued"
    here = member.profile.timezone or zone
    for channel, _, _ in rank_channels(member.profile, priors, member.contact.unanswered):
        if channel not in open_:
            continue
        allowed_from = earliest_send(member.contact, channel, policy, start)
        begin, hours = open_window(start, window, allowed_from)
        if hours < 1:
            continue
        plan = plan_send(
            member.profile,
            channel,
            priors,
            here,
            datetime.fromtimestamp(begin, UTC),
            hours,
            quiet,
            explore_rate,
            member.rng,
            alternatives=0,
            counted_in=zone,
        )
        if not plan.slots:
            why = "quiet"
            continue
        slot = plan.slots[0]
        return Placement(channel, slot.send_at, slot.probability, slot.local_hour, here)
    return why


def varied_members(rng: np.random.Generator, count: int) -> list[Recipient]:
    """People in many zones (or none; some with no profile at all), some opted out of
    channels, some with recent deliveries and unanswered streaks."""
    members = []
    for _ in range(count):
        opted_out = frozenset(c for c in MESSAGE_CHANNELS if rng.random() < 0.25)
        deliveries = tuple(
            (str(rng.choice(MESSAGE_CHANNELS)), int(NOW - rng.integers(60, 72 * HOUR)))
            for _ in range(rng.integers(0, 4))
        )
        unanswered = {c: int(rng.integers(1, 5)) for c, _ in deliveries}
        members.append(
            Recipient(varied_person(rng), ContactState(opted_out, deliveries, unanswered))
        )
    return members


def with_rngs(members: list[Recipient], seed: int | None) -> list[Recipient]:
    """``members``, each with a fresh generator seeded from ``seed`` (None: none, not
    exploring): two calls give two sets that draw the same numbers."""
    if seed is None:
        return members
    seeds = np.random.default_rng(seed).integers(1 << 31, size=len(members))
    return [
        replace(m, rng=np.random.default_rng(int(s))) for m, s in zip(members, seeds, strict=True)
    ]


@pytest.mark.parametrize("explore_rate", [0.0, 0.3])
def test_a_page_planned_together_gets_what_each_member_gets_alone(explore_rate):
    rng = np.random.default_rng(15)
    priors = varied_priors(rng)
    seed = 7 if explore_rate else None
    outcomes = set()
    for channels, start, window, quiet, gap, cap in [
        (MESSAGE_CHANNELS, NOW, 24, (22, 8), 0.0, 0),
        (("email", "sms", "push"), NOW + 1234, 72, (20, 9), 48.0, 0),
        (("email", "push"), NOW - NOW % HOUR, 3, (9, 21), 10.0, 2),
        (("sms",), NOW, 168, None, 24.0, 1),
        (MESSAGE_CHANNELS, NOW + 5 * HOUR, 1, (3, 3), 1.5, 0),
    ]:
        rules = (priors, ContactPolicy(gap, cap), channels, start, window, quiet, "Asia/Tokyo")
        members = varied_members(rng, 120)
        together = place_all(with_rngs(members, seed), *rules, explore_rate)
        alone = [placed_alone(m, *rules, explore_rate) for m in with_rngs(members, seed)]
        assert together == alone
        assert together == [
            place(m.profile, m.contact, *rules, explore_rate, m.rng)
            for m in with_rngs(members, seed)
        ]
        outcomes |= {o if isinstance(o, str) else "placed" for o in together}
    assert outcomes == {"placed", "opted_out", "fatigued", "quiet"}


def test_bundles_keep_their_interactions_matrix(tmp_path):
    bundle = similarity_bundle("item_knn")
    back = ModelBundle.load(bundle.save(tmp_path / "b"))
    assert (back.interactions != bundle.interactions).nnz == 0
    assert back.interactions.shape == (4, 4)


# --- the real path ----------------------------------------------------------------------

PREFIX = "campaigns"
GAP_HOURS = 48


def stamp(seconds: float) -> Timestamp:
    ts = Timestamp()
    ts.FromSeconds(int(seconds))
    return ts


@pytest.fixture(scope="module")
def settings(trained):
    return replace(
        trained.settings,
        key_prefix=PREFIX,
        port=0,
        host="127.0.0.1",
        min_message_gap_hours=GAP_HOURS,
    )


@pytest.fixture(scope="module")
def server(settings, synthetic):
    store = feature_store(settings)
    stale = list(store.client.scan_iter(match=f"{PREFIX}:*", count=1_000))
    if stale:
        store.client.delete(*stale)
    publish_log(store, synthetic)
    running = build_server(settings, ModelRegistry(settings).load_alias("champion"), store)
    yield running
    running.stop(grace=1)


@pytest.fixture(scope="module")
def channel(server):
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        yield ch


@pytest.fixture(scope="module")
def campaigns(channel):
    return cpb_grpc.CampaignsStub(channel)


@pytest.fixture(scope="module")
def events(synthetic):
    return pd.read_parquet(synthetic.events)


@pytest.fixture(scope="module")
def start():
    """The window's start: a whole hour, so the RPC and the export plan alike."""
    return float(int(time.time()) // HOUR * HOUR)


def audience(stub, **fields) -> cpb.AudienceResponse:
    return stub.Audience(cpb.AudienceRequest(**fields), timeout=20)


def everybody(stub, limit, **fields) -> list[cpb.AudienceMember]:
    members, token = [], ""
    while True:
        reply = audience(stub, limit=limit, page_token=token, **fields)
        members += reply.members
        token = reply.next_page_token
        if not token:
            return members


@pytest.mark.integration
def test_the_audience_of_a_category_is_mostly_its_planted_fans_well_above_its_top_buyers(
    campaigns, truth, events, synthetic, start
):
    """Precision against the people who planted-like the category, at k = how many they
    are (R-precision; at k = 25 both methods are near 1: the heaviest buyers of a
    category are its fans), for every category, next to the baseline: the people with
    the most purchases in it (ties by id)."""
    fans = {
        c: {u for u, t in truth["users"].items() if c in t["tastes"]} for c in truth["categories"]
    }
    items = pd.read_parquet(synthetic.items)
    category_of = dict(zip(items["item_id"], items["category"], strict=True))
    bought = events[events["event_type"] == "purchase"].assign(
        category=lambda f: f["item_id"].map(category_of)
    )
    ours, baseline = [], []
    for category in truth["categories"]:
        k = len(fans[category])
        reply = audience(campaigns, category=category, limit=k, not_before=stamp(start))
        people = [m.user_id for m in reply.members]
        assert len(people) == k
        ours.append(len(set(people) & fans[category]) / k)
        counts = bought[bought["category"] == category]["user_id"].value_counts()
        top = sorted(counts.items(), key=lambda pair: (-pair[1], pair[0]))[:k]
        baseline.append(len({u for u, _ in top} & fans[category]) / k)
    precision, base = float(np.mean(ours)), float(np.mean(baseline))
    print(
        f"\naudience R-precision over {len(ours)} categories: {precision:.3f}; "
        f"most purchases in the category: {base:.3f}"
    )
    assert precision >= 0.75
    assert precision >= base + 0.07


@pytest.mark.integration
def test_members_are_planned_inside_the_window_on_allowed_open_channels(campaigns, truth, start):
    allowed = ["email", "push"]
    members = everybody(
        campaigns,
        100,
        category=truth["categories"][0],
        channels=allowed,
        not_before=stamp(start),
        window_hours=12,
    )
    assert members
    scores = [m.score for m in members]
    assert scores == sorted(scores, reverse=True) and scores[0] == pytest.approx(1.0)
    for m in members:
        at = m.send_at.ToSeconds()
        assert start <= at < start + 12 * HOUR, m
        assert m.channel in allowed and m.channel not in truth["users"][m.user_id]["opted_out"]
        assert 0 < m.probability <= 1 and m.reason and m.explanation and m.item_ids
    # Somebody who unsubscribed (in the log) from an allowed channel is still reached on
    # the other one when the model ranks them.
    closed = [m for m in members if set(truth["users"][m.user_id]["opted_out"]) & set(allowed)]
    assert closed
    assert all(m.channel not in truth["users"][m.user_id]["opted_out"] for m in closed)


@pytest.mark.integration
def test_opt_outs_and_the_fatigue_gap_leave_people_out_or_move_them(
    campaigns, channel, start, truth
):
    recommender = pb_grpc.RecommenderStub(channel)
    fields = {"category": "bags", "channels": ["email", "sms"], "not_before": stamp(start)}
    first = audience(campaigns, limit=40, **fields).members
    # Those moved to their other channel must have it open (the log closed some).
    both_open = [
        m for m in first[6:] if not {"email", "sms"} & set(truth["users"][m.user_id]["opted_out"])
    ]
    assert len(first) == 40 and len(both_open) >= 6
    gone_opted, gone_tired, moved, pushed = first[:3], first[3:6], both_open[:3], both_open[3:6]

    def event(user, kind, channel, at):
        return pb.Event(user_id=user, event_type=kind, channel=channel, timestamp=stamp(at))

    recent = start - HOUR
    planted = []
    for m in gone_opted:
        planted += [event(m.user_id, "unsubscribe", c, recent) for c in ("email", "sms")]
    for m in gone_tired:
        planted += [event(m.user_id, "message_delivered", c, recent) for c in ("email", "sms")]
    for m in moved:
        planted.append(event(m.user_id, "unsubscribe", m.channel, recent))
    for m in pushed:
        planted.append(event(m.user_id, "message_delivered", m.channel, recent))
    assert recommender.TrackEvents(pb.TrackEventsRequest(events=planted), timeout=10).rejected == 0

    reply = audience(campaigns, limit=1000, **fields)
    now = {m.user_id: m for m in reply.members}
    assert not {m.user_id for m in gone_opted + gone_tired} & set(now)
    assert reply.left_out.opted_out >= 3 and reply.left_out.fatigued >= 3
    for m in moved + pushed:
        # The other channel, since a 48 h gap covers the whole 24 h window.
        assert now[m.user_id].channel != m.channel
    # Nobody is planned inside a gap: no member's channel had a delivery within 48 h
    # before their send_at (the planted ones are the only recent deliveries).
    tired = {(m.user_id, c) for m in gone_tired for c in ("email", "sms")}
    tired |= {(m.user_id, m.channel) for m in pushed}
    assert not {(u, m.channel) for u, m in now.items()} & tired


@pytest.mark.integration
def test_pages_are_disjoint_and_cover_what_one_big_page_holds(campaigns, truth, start):
    fields = {"category": truth["categories"][1], "not_before": stamp(start)}
    big = audience(campaigns, limit=1000, **fields)
    assert not big.next_page_token and big.candidates >= len(big.members) > 60
    pages = everybody(campaigns, 17, **fields)
    ids = [m.user_id for m in pages]
    assert len(ids) == len(set(ids))
    assert ids == [m.user_id for m in big.members]
    assert big.model_version == "omnirec/1"


@pytest.mark.integration
def test_pages_planned_together_answer_as_members_planned_one_by_one(
    campaigns, truth, start, monkeypatch
):
    requests = [
        {"category": truth["categories"][0], "limit": 50},
        {"category": "bags", "channels": ["sms", "push"], "window_hours": 72, "limit": 33},
        # Three hours, most of them quiet somewhere: some are left out as quiet.
        {"category": truth["categories"][1], "window_hours": 3, "quiet_start_hour": 23},
    ]

    def pages(fields: dict) -> list[cpb.AudienceResponse]:
        replies, token = [], ""
        while True:
            replies.append(audience(campaigns, page_token=token, not_before=stamp(start), **fields))
            token = replies[-1].next_page_token
            if not token:
                return replies

    together = [pages(fields) for fields in requests]
    batched = campaigns_core.place_all
    monkeypatch.setattr(
        campaigns_core,
        "place_all",
        lambda members, *rules: [batched([m], *rules)[0] for m in members],
    )
    assert [pages(fields) for fields in requests] == together
    assert sum(r.left_out.quiet for r in together[2]) > 0
    assert sum(len(r.members) for replies in together for r in replies) > 100


@pytest.mark.integration
@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({}, "item_ids"),
        ({"item_ids": ["i0001", ""]}, "item_ids[1]"),
        ({"category": "bags", "limit": 1001}, "limit"),
        ({"category": "bags", "limit": -1}, "limit"),
        ({"category": "bags", "channels": ["web"]}, "channels[0]"),
        ({"category": "bags", "window_hours": 169}, "window_hours"),
        ({"category": "bags", "quiet_start_hour": 24}, "quiet_start_hour"),
        ({"category": "bags", "page_token": "nope"}, "page_token"),
        ({"category": "bags", "not_before": Timestamp(seconds=1, nanos=-1)}, "not_before"),
    ],
)
def test_bad_requests_are_invalid_argument_naming_the_field(campaigns, fields, field):
    with pytest.raises(grpc.RpcError) as err:
        audience(campaigns, **fields)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith(f"{field}:")


@pytest.mark.integration
def test_unknown_items_and_categories_are_not_found_and_foreign_tokens_refused(campaigns, start):
    for fields, field in [
        ({"item_ids": ["i9999"]}, "item_ids[0]"),
        ({"category": "x"}, "category"),
    ]:
        with pytest.raises(grpc.RpcError) as err:
            audience(campaigns, **fields)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert err.value.details().startswith(f"{field}:")
    token = audience(campaigns, category="bags", limit=5, not_before=stamp(start)).next_page_token
    with pytest.raises(grpc.RpcError) as err:
        audience(campaigns, category="shoes", page_token=token, not_before=stamp(start))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith("page_token:")


# --- the batch export ------------------------------------------------------------------


def export(settings, monkeypatch, *args: str) -> int:
    from training.__main__ import main

    for name, value in deployment_env(settings).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("OMNIREC_MIN_MESSAGE_GAP_HOURS", str(GAP_HOURS))
    return main(["export-audience", *args])


@pytest.mark.integration
def test_the_export_writes_the_rpc_members_and_resumes_by_page(
    campaigns, settings, monkeypatch, tmp_path, truth, start
):
    category = truth["categories"][2]
    when = datetime.fromtimestamp(start, UTC).isoformat()
    out = tmp_path / "audience.parquet"
    common = ["--category", category, "--not-before", when, "--page-size", "20", "--out", str(out)]
    assert export(settings, monkeypatch, *common, "--pages", "2", "--no-progress") == 0
    assert not out.exists()
    state = json.loads((tmp_path / "audience.parquet.parts" / "state.json").read_text())
    assert state["pages"] == 2
    assert export(settings, monkeypatch, *common, "--resume", "--no-progress") == 0
    assert out.exists() and not (tmp_path / "audience.parquet.parts").exists()
    table = pq.read_table(out).to_pandas()
    rpc = everybody(campaigns, 20, category=category, not_before=stamp(start))
    assert table["user_id"].tolist() == [m.user_id for m in rpc]
    assert table["channel"].tolist() == [m.channel for m in rpc]
    assert [list(i) for i in table["item_ids"]] == [list(m.item_ids) for m in rpc]
    assert table["send_at"].map(lambda t: t.timestamp()).tolist() == [
        m.send_at.ToSeconds() for m in rpc
    ]
    assert set(table.columns) >= {
        "user_id",
        "item_ids",
        "score",
        "reason",
        "send_at",
        "channel",
        "probability",
    }


@pytest.mark.integration
def test_bad_export_input_is_one_line_and_a_non_zero_exit(settings, monkeypatch, tmp_path, capsys):
    out = str(tmp_path / "x.parquet")
    for args, says in [
        (["--out", out], "--category or --items"),
        (["--category", "no-such-thing", "--out", out], "--category"),
        (["--items", "i0001", "--channels", "fax", "--out", out], "--channels"),
        (["--category", "bags", "--out", out, "--resume"], "--resume"),
    ]:
        assert export(settings, monkeypatch, *args) != 0
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and says in err[0], err
