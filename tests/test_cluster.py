"""omnirec on a Redis Cluster: three masters on loopback (``LocalCluster``), reached by
``REDIS_URL=redis+cluster://…``. Training publishes there through ``python -m training``,
a real gRPC server answers every RPC from it, links merge people whose keys live in
different slots, erasure leaves nothing of a person on any node, and exports read the
stream back. The key schema keeps one person in one slot (checked without a server)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import grpc
import pandas as pd
import pytest
import redis
from google.protobuf.timestamp_pb2 import Timestamp

from omnirec.v1 import engagement_pb2 as epb
from omnirec.v1 import engagement_pb2_grpc as epb_grpc
from omnirec.v1 import identity_pb2 as ipb
from omnirec.v1 import profiles_pb2 as ppb
from omnirec.v1 import profiles_pb2_grpc as ppb_grpc
from omnirec.v1 import recommender_pb2 as pb
from omnirec.v1 import recommender_pb2_grpc as pb_grpc
from service.api.server import build_server
from service.config import feature_store, load_settings
from service.errors import ConfigError
from service.identity import Identities
from service.registry import ModelRegistry
from service.store import FeatureStore
from service.store.codecs import TrackedEvent
from service.store.keys import (
    LIVE_PARTS,
    erased_key,
    identity_key,
    live_key,
    moved_key,
    person_key,
    slot_key,
    slot_of,
    slot_tag,
    stream_erased_key,
    stream_key,
    stream_seen_key,
    user_key,
)
from service.store.plans import parse_cluster_url, run_plan
from tests.conftest import TEST_SECRET, deployment_env, make_settings, publish_log

PREFIX = "cl"


# --- the key schema, without a server ------------------------------------------------


@pytest.mark.parametrize("person", ["u00001", "email:h:0a1b2c", "cookie:c}1", "{x}", "ü ö"])
def test_every_key_of_a_person_shares_one_slot(person):
    keys = [live_key(PREFIX, person, part) for part in LIVE_PARTS]
    keys += [user_key(PREFIX, pub, person) for pub in ("20260101T000000-abc123", "p2")]
    keys += [person_key(PREFIX, person, part) for part in ("tokens", "aliases")]
    keys.append(moved_key(PREFIX, person))
    slots = {slot_of(key) for key in keys}
    assert len(slots) == 1, keys
    # What a write checks beside the person's keys is in their slot too.
    (slot,) = slots
    assert slot_of(slot_key(PREFIX, slot, "erased")) == slot_of(slot_key(PREFIX, slot, "seen"))
    assert slot_of(slot_key(PREFIX, slot, "seen")) == slot


def test_slot_tags_hash_to_their_slot_and_the_streams_keys_share_its_slot():
    # redis-py's own CRC16 checks the table (ours is computed with numpy, all at once).
    assert all(redis.crc.key_slot(slot_tag(s).encode()) == s for s in range(16384))
    assert slot_tag(0) == "0083c"  # part of the key schema: it must never change
    stream = slot_of(stream_key(PREFIX))
    assert slot_of(stream_seen_key(PREFIX)) == stream == slot_of(stream_erased_key(PREFIX))


def test_cluster_urls_and_bad_ones_fail_with_one_line_naming_redis_url():
    parsed = parse_cluster_url("rediss+cluster://me:pw@h1:7000,[::1]:7001/0?ssl_ca_certs=/ca.pem")
    assert parsed.nodes == [("h1", 7000), ("::1", 7001)]
    assert parsed.options["username"] == "me" and parsed.options["ssl_ca_certs"] == "/ca.pem"
    assert parsed.options["connection_class"] is redis.connection.SSLConnection
    assert load_settings({"REDIS_URL": "redis+cluster://a:1,b:2"}).redis_url.endswith("b:2")
    for bad, says in [
        ("redis+cluster://h1", "is not host:port"),
        ("redis+cluster://h1:7000/2", "only database 0"),
        ("redis+cluster://u:secret@h1:7000,,h2:1", "is not host:port"),
        ("redis+cluster://h1:7000?socket_timeout=soon", "socket_timeout"),
        ("redis-cluster://h1:7000", "must start with"),
    ]:
        with pytest.raises(ConfigError) as err:
            load_settings({"REDIS_URL": bad})
        message = str(err.value)
        assert message.startswith("REDIS_URL=") and says in message and "\n" not in message
        assert "secret" not in message


def test_a_key_prefix_with_braces_is_refused():
    with pytest.raises(ConfigError, match="OMNIREC_KEY_PREFIX"):
        load_settings({"OMNIREC_KEY_PREFIX": "a{b}"})


# --- a real cluster --------------------------------------------------------------------


@pytest.fixture(scope="module")
def settings(redis_cluster, tmp_path_factory):
    root = tmp_path_factory.mktemp("cluster-mlflow")
    return make_settings(
        redis_cluster.url, root, key_prefix=PREFIX, port=0, host="127.0.0.1", model_poll_seconds=0
    )


def training_command(settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = os.environ | deployment_env(settings)
    return subprocess.run(
        [sys.executable, "-m", "training", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.fixture(scope="module")
def trained_on_cluster(settings, synthetic):
    """``python -m training train`` against the cluster: catalogue, opt-outs, features."""
    done = training_command(
        settings,
        *("train", "--events", str(synthetic.events), "--items", str(synthetic.items)),
        *("--model", "als", "--factors", "16", "--iterations", "5", "--no-transitions"),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "features published to Redis" in done.stdout
    return settings


@pytest.fixture(scope="module")
def store(trained_on_cluster):
    store = feature_store(trained_on_cluster)
    assert store.cluster and store.ping()
    yield store
    store.close()


@pytest.fixture(scope="module")
def channel(trained_on_cluster, store):
    settings = trained_on_cluster
    model = ModelRegistry(settings).load_alias(settings.model_alias)
    running = build_server(settings, model, feature_store(settings))
    with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        yield channel
    running.stop(grace=1)


def ident(kind: str, value: str) -> ipb.Identifier:
    return ipb.Identifier(kind=kind, value=value)


def recommend(channel, user_id: str, limit: int = 10) -> list[pb.ScoredItem]:
    stub = pb_grpc.RecommenderStub(channel)
    return list(stub.Recommend(pb.RecommendRequest(user_id=user_id, limit=limit), timeout=5).items)


def track(channel, *events: pb.Event) -> pb.TrackEventsResponse:
    stub = pb_grpc.RecommenderStub(channel)
    return stub.TrackEvents(pb.TrackEventsRequest(events=list(events)), timeout=5)


def keys_on_nodes(cluster, pattern: str) -> list[bytes]:
    """Every key matching ``pattern`` on any node, asked of each node alone."""
    found: list[bytes] = []
    for port in cluster.ports:
        node = redis.Redis(host="127.0.0.1", port=port)
        try:
            found += node.scan_iter(match=pattern, count=1000)
        finally:
            node.close()
    return sorted(found)


def keys_of_person(cluster, person: str) -> list[bytes]:
    return keys_on_nodes(cluster, f"{PREFIX}:*{{{person}}}*")


@pytest.mark.integration
def test_recommend_similar_items_and_rank_read_the_published_features(channel, truth):
    user = sorted(truth["users"])[0]
    items = recommend(channel, user)
    assert len(items) == 10
    assert any(i.reason.startswith(("personalised", "recent:", "similar:")) for i in items)
    stub = pb_grpc.RecommenderStub(channel)
    similar = stub.SimilarItems(
        pb.SimilarItemsRequest(item_id=items[0].item_id, limit=5), timeout=5
    )
    assert len(similar.items) == 5 and items[0].item_id not in {i.item_id for i in similar.items}
    ranked = stub.Rank(pb.RankRequest(user_id=user, item_ids=[i.item_id for i in items]), timeout=5)
    assert sorted(i.item_id for i in ranked.items) == sorted(i.item_id for i in items)


@pytest.mark.integration
def test_tracked_events_change_the_next_recommend_and_a_retry_counts_once(channel, store, truth):
    user = sorted(truth["users"])[1]
    first = recommend(channel, user)
    bought = first[0].item_id
    events = [
        pb.Event(user_id=user, item_id=bought, event_type="purchase", event_id="cl-1"),
        pb.Event(user_id="cl-someone", item_id=bought, event_type="view", event_id="cl-2"),
        pb.Event(user_id=user, event_type="unsubscribe", channel="sms", event_id="cl-3"),
    ]
    before = store.client.xlen(stream_key(PREFIX))
    assert track(channel, *events).accepted == 3
    assert track(channel, *events).accepted == 3  # a retry: accepted, written once
    assert store.client.xlen(stream_key(PREFIX)) - before == 3
    assert store.client.llen(live_key(PREFIX, user, "history")) == 1
    after = recommend(channel, user)
    assert bought not in {i.item_id for i in after}
    channels = epb_grpc.EngagementStub(channel).RankChannels(
        epb.RankChannelsRequest(user_id=user), timeout=5
    )
    assert {c.channel: c.opted_out for c in channels.channels}["sms"]


@pytest.mark.integration
def test_a_batch_cut_between_its_two_steps_is_written_once_whole(store):
    events = [TrackedEvent("cl-cut", "i0001", "view", 1_790_000_000, event_id="cl-cut-1")]

    def first_step_only(plan):
        yield next(plan)  # the person scripts ran; the stream step never does

    before = store.client.xlen(stream_key(PREFIX))
    run_plan(store.client, first_step_only(store.record_plan(events, {"view": 1.0})), "cut")
    assert store.client.llen(live_key(PREFIX, "cl-cut", "history")) == 1
    assert store.client.xlen(stream_key(PREFIX)) == before
    # The retry finds the live write done, and makes the stream's share.
    for _ in range(2):
        assert store.record(events, {"view": 1.0}).duplicates == 1
    assert store.client.xlen(stream_key(PREFIX)) == before + 1
    assert store.client.llen(live_key(PREFIX, "cl-cut", "history")) == 1


@pytest.mark.integration
def test_send_time_channels_and_profiles(channel, truth):
    user = sorted(truth["users"])[2]
    engagement = epb_grpc.EngagementStub(channel)
    answer = engagement.PredictSendTime(
        epb.PredictSendTimeRequest(user_id=user, channel="email", window_hours=48), timeout=5
    )
    assert answer.send_at.seconds > 0 and 0 < answer.probability <= 1
    ranked = engagement.RankChannels(epb.RankChannelsRequest(user_id=user), timeout=5)
    assert ranked.channels and ranked.model_version
    profile = ppb_grpc.ProfilesStub(channel).GetProfile(
        ppb.GetProfileRequest(identifier=ident("user_id", user)), timeout=5
    )
    assert profile.person_id == user and profile.top_categories


@pytest.mark.integration
def test_linking_merges_people_from_different_slots(channel, store, redis_cluster):
    cookie, account = "cl-browser", "cl-account"
    assert slot_of(live_key(PREFIX, f"cookie:{cookie}", "history")) != slot_of(
        live_key(PREFIX, account, "history")
    )
    at = 1_790_000_000
    track(
        channel,
        pb.Event(
            identifier=ident("cookie", cookie),
            item_id="i0003",
            event_type="purchase",
            timestamp=Timestamp(seconds=at),
        ),
        pb.Event(
            user_id=account, item_id="i0004", event_type="view", timestamp=Timestamp(seconds=at + 1)
        ),
    )
    profiles = ppb_grpc.ProfilesStub(channel)
    linked = profiles.LinkIdentities(
        ppb.LinkIdentitiesRequest(
            identifiers=[
                ident("cookie", cookie),
                ident("user_id", account),
                ident("email", "a@b.co"),
            ]
        ),
        timeout=5,
    )
    assert (linked.person_id, linked.merged) == (account, 2)  # the cookie and the email
    history = store.client.lrange(live_key(PREFIX, account, "history"), 0, -1)
    assert [json.loads(h)[0] for h in history] == ["i0004", "i0003"]
    assert store.client.smembers(live_key(PREFIX, account, "purchased")) == {b"i0003"}
    # The cookie person is gone, but for the marker that sends racing writes on (and the
    # cookie's own token, which now names the account).
    assert keys_of_person(redis_cluster, f"cookie:{cookie}") == [
        identity_key(PREFIX, f"cookie:{cookie}").encode(),
        moved_key(PREFIX, f"cookie:{cookie}").encode(),
    ]
    # Every identifier now names the account, whichever is asked.
    for identifier in (ident("cookie", cookie), ident("email", "A@b.co")):
        found = profiles.GetProfile(ppb.GetProfileRequest(identifier=identifier), timeout=5)
        assert found.person_id == account
    assert "i0003" not in {i.item_id for i in recommend(channel, account, 50)}


@pytest.mark.integration
def test_an_event_racing_a_link_is_written_under_the_survivor(trained_on_cluster, store):
    settings = replace(trained_on_cluster, key_prefix="clrace")

    class RacingStore(FeatureStore):
        race = True

        def record_plan(self, events, weights, marks=None):
            if self.race:  # the first write only: a link lands just before it
                self.race = False
                Identities(self, TEST_SECRET).link(["cookie:race-ck", "user_id:race-acct"])
            return (yield from super().record_plan(events, weights, marks))

    racing = RacingStore(store.client, "clrace")
    model = ModelRegistry(settings).load_alias("champion")
    running = build_server(settings, model, racing)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            event = pb.Event(
                identifier=ident("cookie", "race-ck"), item_id="i0007", event_type="view"
            )
            assert track(channel, event).accepted == 1
        assert not store.client.exists(live_key("clrace", "cookie:race-ck", "history"))
        history = store.client.lrange(live_key("clrace", "race-acct", "history"), 0, -1)
        assert [json.loads(h)[0] for h in history] == ["i0007"]
    finally:
        running.stop(grace=1)


@pytest.mark.integration
def test_forget_user_leaves_nothing_of_them_on_any_node(channel, store, truth, redis_cluster):
    user = sorted(truth["users"])[4]
    assert any(not i.reason.startswith(("popular", "trending")) for i in recommend(channel, user))
    track(
        channel,
        pb.Event(identifier=ident("cookie", "cl-forget"), item_id="i0001", event_type="view"),
    )
    profiles = ppb_grpc.ProfilesStub(channel)
    profiles.LinkIdentities(
        ppb.LinkIdentitiesRequest(
            identifiers=[ident("user_id", user), ident("cookie", "cl-forget")]
        ),
        timeout=5,
    )
    assert keys_of_person(redis_cluster, user)
    forgotten = profiles.ForgetUser(
        ppb.ForgetUserRequest(identifier=ident("cookie", "cl-forget")), timeout=10
    )
    assert forgotten.keys_removed > 0
    # Nothing of them on any primary but the marker of the cookie merged into them, no
    # stream entry, and every read and write treats them as nobody.
    assert keys_of_person(redis_cluster, user) == []
    assert all(f[b"user_id"].decode() != user for _, f in store.client.xrange(stream_key(PREFIX)))
    assert all(i.reason.startswith(("popular", "trending")) for i in recommend(channel, user))
    refused = track(channel, pb.Event(user_id=user, item_id="i0002", event_type="view"))
    assert refused.accepted == 0 and "erased" in refused.rejections[0].reason
    assert not store.client.exists(live_key(PREFIX, user, "history"))
    identities = Identities(store, TEST_SECRET)
    mark = identities.erasure_mark(user)
    slot = slot_of(live_key(PREFIX, user, "history"))
    for key in (erased_key(PREFIX), stream_erased_key(PREFIX), slot_key(PREFIX, slot, "erased")):
        assert store.client.sismember(key, mark), key
    assert identities.is_erased([user, "u-not-erased"]) == {user}


@pytest.mark.integration
def test_exports_items_and_new_publications_through_the_training_commands(
    trained_on_cluster, store, synthetic, tmp_path, redis_cluster
):
    settings = trained_on_cluster
    store.record(
        [
            TrackedEvent(f"cl-ex-{n}", "i0001", "view", 1_790_000_000 + n, event_id=f"x{n}")
            for n in range(5)
        ],
        {"view": 1.0},
    )
    out = tmp_path / "exported"
    done = training_command(settings, "export-events", "--out", str(out))
    assert done.returncode == 0, done.stderr[-2000:]
    frame = pd.concat(pd.read_parquet(p) for p in sorted(Path(out).glob("*.parquet")))
    assert {f"cl-ex-{n}" for n in range(5)} <= set(frame["user_id"])
    again = training_command(settings, "export-events", "--out", str(out))
    assert "exported 0 events" in again.stdout  # the checkpoint moved past them
    items = tmp_path / "items.csv"
    items.write_text("item_id,category,title,price,in_stock\ncl-new,shoes,New,9.5,true\n")
    done = training_command(settings, "items", "--file", str(items))
    assert done.returncode == 0 and "1 new" in done.stdout, done.stderr[-2000:]
    assert store.catalogue()[1]["cl-new"]["category"] == "shoes"
    # Two more publications: the first goes from every node (SCAN on each primary).
    first = store.current_publication(refresh=True)
    assert keys_on_nodes(redis_cluster, f"{PREFIX}:pub:{first}:*")
    publish_log(store, synthetic)
    publish_log(store, synthetic)
    assert first not in store.publications()
    assert keys_on_nodes(redis_cluster, f"{PREFIX}:pub:{first}:*") == []
