"""One person across channels, through the real gRPC server and a real redis-server:
identifiers, links and merges, staff profiles, privacy and erasure."""

from __future__ import annotations

import logging
import threading
from dataclasses import replace

import grpc
import pytest

from omnirec.v1 import engagement_pb2 as epb
from omnirec.v1 import engagement_pb2_grpc as epb_grpc
from omnirec.v1 import identity_pb2 as ipb
from omnirec.v1 import profiles_pb2 as ppb
from omnirec.v1 import profiles_pb2_grpc as ppb_grpc
from omnirec.v1 import recommender_pb2 as pb
from omnirec.v1 import recommender_pb2_grpc as pb_grpc
from service.api.server import build_server
from service.config import feature_store
from service.registry import ModelRegistry
from service.store.plans import connect
from tests.conftest import make_settings
from training.catalogue_file import load_catalogue
from training.engagement import user_profiles
from training.event_log import load_events
from training.matrix import DEFAULT_WEIGHTS
from training.publish import publish

pytestmark = pytest.mark.integration

EMAIL = "Jane.Doe+Shop@Example.com"
PHONE = "+49 151 2345 6789"


@pytest.fixture(scope="module")
def settings(trained):
    return replace(trained.settings, key_prefix="prof", port=0, host="127.0.0.1")


@pytest.fixture(scope="module")
def catalogue(synthetic):
    return load_catalogue(synthetic.items)


@pytest.fixture(scope="module")
def server(settings, synthetic, catalogue):
    store = feature_store(settings)
    frame = load_events(synthetic.events).frame
    end = int(frame.timestamp.max())
    publish(
        store,
        frame,
        catalogue,
        DEFAULT_WEIGHTS,
        {"model_version": "1", "data_end": end},
        history_length=200,
        popularity_half_life_days=30,
        keep=2,
        engagement={u: p.to_json() for u, p in user_profiles(frame).items()},
    )
    running = build_server(settings, ModelRegistry(settings).load_alias("champion"), store)
    yield running
    running.stop(grace=1)


@pytest.fixture(scope="module")
def channel(server):
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        yield ch


@pytest.fixture(scope="module")
def rec(channel):
    return pb_grpc.RecommenderStub(channel)


@pytest.fixture(scope="module")
def profiles(channel):
    return ppb_grpc.ProfilesStub(channel)


def ident(kind, value):
    return ipb.Identifier(kind=kind, value=value)


def views(identifier, items, kind="view"):
    return [
        pb.Event(identifier=identifier, item_id=i, event_type=kind, channel="web") for i in items
    ]


def items_of(catalogue, category, n):
    return sorted(i for i, m in catalogue.items() if m.get("category") == category)[:n]


def test_anonymous_browsing_then_login_then_store_visit(rec, profiles, catalogue):
    cookie = ident("cookie", "c-anon-1")
    bags = items_of(catalogue, "bags", 4)
    # 1. Anonymous on the site: the cookie alone already gets personal answers.
    rec.TrackEvents(pb.TrackEventsRequest(events=views(cookie, bags)), timeout=5)
    anon = rec.Recommend(pb.RecommendRequest(identifier=cookie, limit=5), timeout=5)
    assert not {r.reason for r in anon.items} & {"popular", "trending"}
    # 2. She logs in: the account inherits the cookie's history.
    linked = profiles.LinkIdentities(
        ppb.LinkIdentitiesRequest(identifiers=[cookie, ident("user_id", "acct-42")]), timeout=5
    )
    assert linked.person_id == "acct-42" and linked.merged == 1
    account = rec.Recommend(pb.RecommendRequest(user_id="acct-42", limit=5), timeout=5)
    assert [r.item_id for r in account.items] == [r.item_id for r in anon.items]
    # 3. At the till she gives her phone; the clerk finds her by it, written another way.
    profiles.LinkIdentities(
        ppb.LinkIdentitiesRequest(identifiers=[ident("user_id", "acct-42"), ident("phone", PHONE)]),
        timeout=5,
    )
    rec.TrackEvents(
        pb.TrackEventsRequest(events=views(ident("phone", PHONE), bags[:1], "purchase")),
        timeout=5,
    )
    profile = profiles.GetProfile(
        ppb.GetProfileRequest(identifier=ident("phone", "0049 151 23456789")), timeout=5
    )
    assert profile.person_id == "acct-42"
    assert {v.item_id for v in profile.recent_views} == set(bags)
    assert [p.item_id for p in profile.purchases] == bags[:1]
    assert profile.purchases[0].category == "bags" and profile.purchases[0].timestamp.seconds > 0
    assert profile.top_categories[0].category == "bags"
    assert list(profile.identifier_kinds) == ["cookie", "phone", "user_id"]
    assert profile.preferred_channel in ("email", "sms", "push", "messenger")
    assert len(profile.preferred_hours) == 3
    # She was never sent a message and visited in one hour: both are defaults, and say so.
    assert profile.preferred_channel_source == "global_prior"
    assert profile.preferred_hours_source in ("segment_prior", "global_prior")
    # The purchase made by phone is excluded for the account too, and in SimilarItems
    # filters for her whichever identifier the page knows her by.
    again = rec.Recommend(pb.RecommendRequest(user_id="acct-42", limit=20), timeout=5)
    assert bags[0] not in {r.item_id for r in again.items}
    anyone = rec.SimilarItems(pb.SimilarItemsRequest(item_id=bags[1], limit=50), timeout=5)
    assert bags[0] in {r.item_id for r in anyone.items}
    hers = rec.SimilarItems(
        pb.SimilarItemsRequest(item_id=bags[1], limit=50, identifier=cookie), timeout=5
    )
    assert bags[0] not in {r.item_id for r in hers.items}


def test_merging_two_people_with_histories_keeps_both(rec, profiles, truth, catalogue):
    known = sorted(truth["users"])[7]
    cookie = ident("cookie", "c-merge")
    hats = items_of(catalogue, "hats", 2) or items_of(catalogue, "watches", 2)
    rec.TrackEvents(pb.TrackEventsRequest(events=views(cookie, hats)), timeout=5)
    rec.TrackEvents(
        pb.TrackEventsRequest(events=views(ident("user_id", known), hats[:1], "purchase")),
        timeout=5,
    )
    before = profiles.GetProfile(
        ppb.GetProfileRequest(identifier=ident("user_id", known), limit=100), timeout=5
    )
    reply = profiles.LinkIdentities(
        ppb.LinkIdentitiesRequest(identifiers=[cookie, ident("user_id", known)]), timeout=5
    )
    assert reply.person_id == known and reply.merged == 1
    after = profiles.GetProfile(ppb.GetProfileRequest(identifier=cookie, limit=100), timeout=5)
    assert after.person_id == known
    assert {v.item_id for v in after.recent_views} >= set(hats) | {
        v.item_id for v in before.recent_views
    }
    assert hats[0] in {p.item_id for p in after.purchases}


def test_links_are_transitive(profiles):
    a, b, c = ident("device_id", "d-1"), ident("loyalty_card", "L-77"), ident("email", "t@x.io")
    first = profiles.LinkIdentities(ppb.LinkIdentitiesRequest(identifiers=[a, b]), timeout=5)
    second = profiles.LinkIdentities(ppb.LinkIdentitiesRequest(identifiers=[b, c]), timeout=5)
    assert second.person_id == first.person_id
    found = profiles.GetProfile(ppb.GetProfileRequest(identifier=c), timeout=5)
    assert found.person_id == first.person_id
    assert list(found.identifier_kinds) == ["device_id", "email", "loyalty_card"]


def test_engagement_answers_by_any_identifier(channel, profiles):
    engagement = epb_grpc.EngagementStub(channel)
    profiles.LinkIdentities(
        ppb.LinkIdentitiesRequest(
            identifiers=[ident("user_id", "u00001"), ident("email", "a@b.co")]
        ),
        timeout=5,
    )
    by_id = engagement.RankChannels(epb.RankChannelsRequest(user_id="u00001"), timeout=5)
    by_email = engagement.RankChannels(
        epb.RankChannelsRequest(identifier=ident("email", " A@B.CO ")), timeout=5
    )
    assert [c.channel for c in by_email.channels] == [c.channel for c in by_id.channels]
    evidence = [c.evidence for c in by_id.channels]
    assert [c.evidence for c in by_email.channels] == evidence and sum(evidence) > 0


def scan_everything(url: str, prefix: str) -> str:
    """Every key of this deployment (``prefix``) and every value, as one text to search."""
    client = connect(url)  # a cluster too: SCAN then walks every primary
    parts = []
    for key in client.scan_iter(match=f"{prefix}:*", count=1000):
        parts.append(key.decode(errors="replace"))
        kind = client.type(key).decode()
        if kind == "string":
            parts.append(client.get(key).decode(errors="replace"))
        elif kind == "hash":
            parts += [f"{k!r}{v!r}" for k, v in client.hgetall(key).items()]
        elif kind == "list":
            parts += [repr(v) for v in client.lrange(key, 0, -1)]
        elif kind == "set":
            parts += [repr(v) for v in client.smembers(key)]
        elif kind == "zset":
            parts += [repr(v) for v in client.zrange(key, 0, -1)]
        elif kind == "stream":
            parts += [repr(e) for e in client.xrange(key)]
    return "\n".join(parts)


def test_raw_emails_and_phones_are_never_stored_or_logged(rec, profiles, settings, caplog):
    caplog.set_level(logging.DEBUG)
    email = ident("email", EMAIL)
    profiles.LinkIdentities(
        ppb.LinkIdentitiesRequest(identifiers=[email, ident("cookie", "c-private")]), timeout=5
    )
    rec.TrackEvents(pb.TrackEventsRequest(events=views(email, ["i0001"])), timeout=5)
    with pytest.raises(grpc.RpcError):
        profiles.GetProfile(
            ppb.GetProfileRequest(identifier=ident("email", "jane@@bad")), timeout=5
        )
    # The phone was linked in the store-visit test, against the same Redis.
    dump = scan_everything(settings.redis_url, settings.key_prefix).lower()
    for secret in ("jane.doe", "example.com", "15123456789"):
        assert secret not in dump
    assert "jane.doe" not in caplog.text.lower() and "15123456789" not in caplog.text


def test_forget_user_leaves_no_trace_and_retraining_keeps_them_out(
    rec, profiles, settings, truth, synthetic, redis_server, tmp_path
):
    from training.pipeline import TrainConfig, train

    victim = sorted(truth["users"])[9]
    email = ident("email", "victim@example.org")
    profiles.LinkIdentities(
        ppb.LinkIdentitiesRequest(identifiers=[ident("user_id", victim), email]), timeout=5
    )
    rec.TrackEvents(pb.TrackEventsRequest(events=views(email, ["i0002", "i0003"])), timeout=5)
    assert victim in scan_everything(settings.redis_url, settings.key_prefix)
    reply = profiles.ForgetUser(ppb.ForgetUserRequest(identifier=email), timeout=5)
    assert reply.keys_removed >= 4 and reply.events_removed == 2
    dump = scan_everything(settings.redis_url, settings.key_prefix)
    assert victim not in dump and "victim@" not in dump
    empty = profiles.GetProfile(ppb.GetProfileRequest(identifier=email), timeout=5)
    assert not empty.recent_views and not empty.purchases
    # The base log still holds the person's events; training leaves them out.
    retrain = make_settings(redis_server.url, tmp_path, key_prefix="prof")
    result = train(retrain, TrainConfig(events=synthetic.events, publish=False))
    bundle = ModelRegistry(retrain).load_version(result.version).bundle
    assert victim not in set(bundle.user_ids.tolist())
    assert sorted(truth["users"])[8] in set(bundle.user_ids.tolist())


def test_training_sees_one_person_per_human(profiles, synthetic, truth, redis_server, tmp_path):
    from training.pipeline import TrainConfig, train

    a, b = sorted(truth["users"])[20:22]
    profiles.LinkIdentities(
        ppb.LinkIdentitiesRequest(
            identifiers=[ident("user_id", a), ident("user_id", b)], merge_accounts=True
        ),
        timeout=5,
    )
    settings = make_settings(redis_server.url, tmp_path, key_prefix="prof")
    result = train(settings, TrainConfig(events=synthetic.events, publish=False))
    users = set(ModelRegistry(settings).load_version(result.version).bundle.user_ids.tolist())
    assert a in users and b not in users


def test_concurrent_links_never_lose_history(rec, profiles):
    people = [ident("cookie", f"c-par-{n}") for n in range(8)]
    for n, who in enumerate(people):
        rec.TrackEvents(pb.TrackEventsRequest(events=views(who, [f"i{n + 10:04d}"])), timeout=5)
    errors: list = []

    def link(pair):
        try:
            profiles.LinkIdentities(ppb.LinkIdentitiesRequest(identifiers=list(pair)), timeout=20)
        except grpc.RpcError as exc:  # collected: asserted below
            errors.append(exc)

    threads = [threading.Thread(target=link, args=((people[n], people[n + 1]),)) for n in range(7)]
    threads += [threading.Thread(target=link, args=((people[0], people[7]),))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    found = [
        profiles.GetProfile(ppb.GetProfileRequest(identifier=p, limit=100), timeout=5)
        for p in people
    ]
    assert len({f.person_id for f in found}) == 1
    assert {v.item_id for v in found[0].recent_views} == {f"i{n + 10:04d}" for n in range(8)}


@pytest.mark.parametrize(
    "request_, field",
    [
        (
            ppb.LinkIdentitiesRequest(identifiers=[ident("fax", "1"), ident("cookie", "c")]),
            "identifiers[0].kind",
        ),
        (
            ppb.LinkIdentitiesRequest(identifiers=[ident("cookie", "c"), ident("email", "nope")]),
            "identifiers[1].value",
        ),
        (
            ppb.LinkIdentitiesRequest(
                identifiers=[ident("phone", "0151 2345678"), ident("cookie", "c")]
            ),
            "identifiers[0].value",
        ),
        (
            ppb.LinkIdentitiesRequest(identifiers=[ident("cookie", "c"), ident("cookie", " c ")]),
            "identifiers",
        ),
        (ppb.LinkIdentitiesRequest(identifiers=[ident("cookie", "c")]), "identifiers"),
    ],
)
def test_bad_links_are_invalid_argument_naming_the_field(profiles, request_, field):
    with pytest.raises(grpc.RpcError) as err:
        profiles.LinkIdentities(request_, timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith(f"{field}:")


def test_requests_and_events_without_a_person_are_refused(rec):
    with pytest.raises(grpc.RpcError) as err:
        rec.Recommend(pb.RecommendRequest(limit=3), timeout=5)
    assert err.value.details().startswith("user_id:")
    reply = rec.TrackEvents(
        pb.TrackEventsRequest(
            events=[
                pb.Event(item_id="i1", event_type="view"),
                pb.Event(identifier=ident("sms", "x"), item_id="i1", event_type="view"),
            ]
        ),
        timeout=5,
    )
    assert [(r.index, r.field) for r in reply.rejections] == [
        (0, "user_id"),
        (1, "identifier.kind"),
    ]


def test_an_event_racing_a_merge_still_counts(rec, profiles, settings):
    from service.store.codecs import TrackedEvent
    from service.store.keys import live_key

    cookie = ident("cookie", "c-race")
    rec.TrackEvents(pb.TrackEventsRequest(events=views(cookie, ["i0020"])), timeout=5)
    profiles.LinkIdentities(
        ppb.LinkIdentitiesRequest(identifiers=[cookie, ident("user_id", "acct-race")]),
        timeout=5,
    )
    # A TrackEvents call that resolved the cookie just before the merge committed: its
    # write is refused as moved (TrackEvents then resolves it again), never written under
    # the merged-away person, where nobody would read it.
    store = feature_store(settings)
    late = TrackedEvent("cookie:c-race", "i0021", "view", 1_790_000_000, token="cookie:c-race")
    assert store.record([late], DEFAULT_WEIGHTS).moved == [0]
    assert not store.client.exists(live_key(settings.key_prefix, "cookie:c-race", "history"))
    found = profiles.GetProfile(
        ppb.GetProfileRequest(identifier=ident("user_id", "acct-race")), timeout=5
    )
    assert "i0020" in {v.item_id for v in found.recent_views}
