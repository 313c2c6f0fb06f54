"""Trust, through real gRPC servers over a real redis-server: erasure that takes effect at
once on every replica, idempotent ingestion, identity integrity, bounds, and store
failures on the identity RPCs."""

from __future__ import annotations

import json
from dataclasses import replace

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from devtools.redis_server import LocalRedis
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
from service.store.identities import MAX_ALIASES
from service.store.keys import live_key, person_key, stream_key
from service.store.live import MAX_PERSON_ITEMS
from tests.conftest import publish_log

pytestmark = pytest.mark.integration

PREFIX = "trust"
PERSONAL = ("personalised", "recent:", "similar:", "bought together:")


@pytest.fixture(scope="module")
def settings(trained):
    return replace(trained.settings, key_prefix=PREFIX, port=0, host="127.0.0.1")


@pytest.fixture(scope="module")
def store(settings, synthetic):
    store = feature_store(settings)
    publish_log(store, synthetic)
    return store


@pytest.fixture(scope="module")
def replicas(settings, store):
    """Two server processes' worth of servers (each its own caches) on one Redis."""
    model = ModelRegistry(settings).load_alias("champion")
    running = [build_server(settings, model, feature_store(settings)) for _ in range(2)]
    channels = [grpc.insecure_channel(f"127.0.0.1:{r.port}") for r in running]
    yield channels
    for channel in channels:
        channel.close()
    for server in running:
        server.stop(grace=1)


def ident(kind: str, value: str) -> ipb.Identifier:
    return ipb.Identifier(kind=kind, value=value)


def reasons(channel: grpc.Channel, user_id: str) -> list[str]:
    response = pb_grpc.RecommenderStub(channel).Recommend(
        pb.RecommendRequest(user_id=user_id, limit=10), timeout=5
    )
    return [item.reason for item in response.items]


def is_personal(found: list[str]) -> bool:
    return any(r.startswith(PERSONAL) for r in found)


def code_of(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value.code()


def test_erasure_takes_effect_at_once_on_every_replica(replicas, store, truth):
    a, b = replicas
    user = sorted(truth["users"])[3]
    # Both replicas have served (and cached) the person before the erasure.
    assert is_personal(reasons(a, user)) and is_personal(reasons(b, user))
    profiles = ppb_grpc.ProfilesStub(a)
    phone = ident("phone", "+49 151 7000 0003")
    profiles.LinkIdentities(
        ppb.LinkIdentitiesRequest(identifiers=[ident("user_id", user), phone]), timeout=5
    )
    profiles.ForgetUser(ppb.ForgetUserRequest(identifier=phone), timeout=10)
    # The very next call, on either replica: nothing learnt from them, not even the
    # factor row training gave them.
    for channel in (b, a):
        found = reasons(channel, user)
        assert found and not is_personal(found), found
    # Their events are gone from the stream, and new ones naming them are refused.
    stream = store.client.xrange(stream_key(PREFIX))
    assert all(fields[b"user_id"].decode() != user for _, fields in stream)
    response = pb_grpc.RecommenderStub(b).TrackEvents(
        pb.TrackEventsRequest(
            events=[
                pb.Event(user_id=user, item_id="i0001", event_type="view"),
                pb.Event(user_id="trust-someone-else", item_id="i0001", event_type="view"),
            ]
        ),
        timeout=5,
    )
    assert (response.accepted, response.rejected) == (1, 1)
    assert response.rejections[0].index == 0
    assert response.rejections[0].field == "user_id"
    assert "erased" in response.rejections[0].reason
    assert not store.client.exists(live_key(PREFIX, user, "history"))
    assert not is_personal(reasons(a, user))


def test_a_retried_batch_is_recorded_once(replicas, store):
    rec = pb_grpc.RecommenderStub(replicas[0])
    events = [
        pb.Event(user_id="trust-retry", item_id=f"i{n:04d}", event_type="view", event_id=f"e-{n}")
        for n in range(5)
    ]
    before = store.client.xlen(stream_key(PREFIX))
    first = rec.TrackEvents(pb.TrackEventsRequest(events=events), timeout=5)
    # The retry after a lost answer, on the other replica, with one new event.
    extra = pb.Event(user_id="trust-retry", item_id="i0099", event_type="view", event_id="e-99")
    second = pb_grpc.RecommenderStub(replicas[1]).TrackEvents(
        pb.TrackEventsRequest(events=[*events, extra]), timeout=5
    )
    assert (first.accepted, second.accepted) == (5, 6)
    assert store.client.xlen(stream_key(PREFIX)) - before == 6
    assert store.client.llen(live_key(PREFIX, "trust-retry", "history")) == 6


def test_an_event_id_must_be_an_id(replicas):
    rec = pb_grpc.RecommenderStub(replicas[0])
    event = pb.Event(user_id="trust-x", item_id="i0001", event_type="view", event_id="x" * 200)
    response = rec.TrackEvents(pb.TrackEventsRequest(events=[event]), timeout=5)
    assert response.rejections[0].field == "event_id"


@pytest.mark.parametrize(
    ("user_id", "says"),
    [
        ("cookie:ck1", "identifier"),
        ("email:someone", "identifier"),
        ("   ", "blank"),
        ("a\x01b", "control characters"),
        ("a\nb", "control characters"),
    ],
)
def test_user_ids_are_never_tokens_blank_or_control_characters(replicas, user_id, says):
    rec = pb_grpc.RecommenderStub(replicas[0])
    with pytest.raises(grpc.RpcError) as err:
        rec.Recommend(pb.RecommendRequest(user_id=user_id), timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith("user_id:") and says in err.value.details()
    event = pb.Event(user_id=user_id, item_id="i0001", event_type="view")
    response = rec.TrackEvents(pb.TrackEventsRequest(events=[event]), timeout=5)
    assert response.rejected == 1 and response.rejections[0].field == "user_id"


def test_linking_another_accounts_email_is_refused_unless_explicit(replicas):
    profiles = ppb_grpc.ProfilesStub(replicas[0])
    victim, attacker = ident("user_id", "trust-victim"), ident("user_id", "trust-attacker")
    email = ident("email", "victim@example.com")
    profiles.LinkIdentities(ppb.LinkIdentitiesRequest(identifiers=[victim, email]), timeout=5)
    takeover = ppb.LinkIdentitiesRequest(identifiers=[attacker, email])
    with pytest.raises(grpc.RpcError) as err:
        profiles.LinkIdentities(takeover, timeout=5)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "merge_accounts" in err.value.details()
    # The victim's user id still names the victim, and the email still leads to them.
    found = profiles.GetProfile(ppb.GetProfileRequest(identifier=victim), timeout=5)
    assert found.person_id == "trust-victim"
    found = profiles.GetProfile(ppb.GetProfileRequest(identifier=email), timeout=5)
    assert found.person_id == "trust-victim"
    # An anonymous cookie joins an account without ceremony; two accounts only when asked.
    cookie = ident("cookie", "trust-ck")
    profiles.LinkIdentities(ppb.LinkIdentitiesRequest(identifiers=[cookie, email]), timeout=5)
    merged = profiles.LinkIdentities(
        ppb.LinkIdentitiesRequest(identifiers=[victim, attacker], merge_accounts=True), timeout=5
    )
    assert merged.person_id == "trust-victim" and merged.merged == 1


def test_per_person_sets_and_alias_chains_are_bounded(replicas, store):
    rec = pb_grpc.RecommenderStub(replicas[0])
    buyer = "trust-buyer"
    for start in (0, 600):
        events = [
            pb.Event(
                user_id=buyer,
                item_id=f"bulk-{n}",
                event_type="purchase",
                timestamp=Timestamp(seconds=1_790_000_000 + n),
            )
            for n in range(start, start + 600)
        ]
        assert rec.TrackEvents(pb.TrackEventsRequest(events=events), timeout=10).accepted == 600
    purchased = {m.decode() for m in store.client.smembers(live_key(PREFIX, buyer, "purchased"))}
    assert len(purchased) == MAX_PERSON_ITEMS
    # The newest purchases are the ones kept.
    assert "bulk-1199" in purchased and "bulk-0" not in purchased
    assert store.client.zcard(live_key(PREFIX, buyer, "purchased_at")) == MAX_PERSON_ITEMS

    profiles = ppb_grpc.ProfilesStub(replicas[0])
    account = ident("user_id", "trust-chain")
    for n in range(MAX_ALIASES + 6):
        cookie = ident("cookie", f"trust-chain-{n}")
        event = pb.Event(identifier=cookie, item_id=f"i{n % 90:04d}", event_type="view")
        rec.TrackEvents(pb.TrackEventsRequest(events=[event]), timeout=5)
        profiles.LinkIdentities(ppb.LinkIdentitiesRequest(identifiers=[account, cookie]), timeout=5)
    assert store.client.scard(person_key(PREFIX, "trust-chain", "aliases")) <= MAX_ALIASES
    # Every cookie's history was merged into the account all the same.
    history = store.client.llen(live_key(PREFIX, "trust-chain", "history"))
    assert history == MAX_ALIASES + 6
    assert rec.Recommend(pb.RecommendRequest(user_id="trust-chain"), timeout=5).items


def test_send_time_windows_beyond_the_calendar_are_invalid_argument(replicas):
    stub = epb_grpc.EngagementStub(replicas[0])
    far = Timestamp(seconds=253_402_000_000)  # 9999-12-31
    bad = [
        epb.PredictSendTimeRequest(user_id="u1", channel="email", not_before=far, window_hours=168),
        epb.PredictSendTimeRequest(
            user_id="u1", channel="email", not_before=Timestamp(seconds=1, nanos=-5)
        ),
        epb.PredictSendTimeRequest(
            user_id="u1", channel="email", not_before=Timestamp(seconds=-100)
        ),
    ]
    for request in bad:
        with pytest.raises(grpc.RpcError) as err:
            stub.PredictSendTime(request, timeout=5)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.value.details().startswith("not_before")


def test_identity_calls_are_unavailable_while_redis_is_down(trained, tmp_path):
    own = LocalRedis(tmp_path)
    settings = replace(
        trained.settings, redis_url=own.url, key_prefix="down", port=0, host="127.0.0.1"
    )
    running = build_server(
        settings, ModelRegistry(settings).load_alias("champion"), feature_store(settings)
    )
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            profiles = ppb_grpc.ProfilesStub(channel)
            link = ppb.LinkIdentitiesRequest(
                identifiers=[ident("user_id", "d1"), ident("cookie", "d1c")]
            )
            profiles.LinkIdentities(link, timeout=5)
            own.stop()
            calls = [
                lambda: profiles.LinkIdentities(link, timeout=15),
                lambda: profiles.ForgetUser(
                    ppb.ForgetUserRequest(identifier=ident("cookie", "d1c")), timeout=15
                ),
                lambda: profiles.GetProfile(
                    ppb.GetProfileRequest(identifier=ident("cookie", "d1c")), timeout=15
                ),
            ]
            for call in calls:
                with pytest.raises(grpc.RpcError) as err:
                    call()
                assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value.details()
                assert "Redis" in err.value.details()
    finally:
        running.stop(grace=1)
        own.stop()


def test_a_redis_crash_loses_no_accepted_event_and_retries_count_once(trained, tmp_path):
    """redis-server with ``appendfsync always`` is SIGKILLed and restarted while a client
    tracks batches and retries each failed one with the same event ids: every event the
    service accepted is in the stream afterwards, and none twice."""
    own = LocalRedis(tmp_path, ("--appendonly", "yes", "--appendfsync", "always"))
    settings = replace(
        trained.settings, redis_url=own.url, key_prefix="crash", port=0, host="127.0.0.1"
    )
    store = feature_store(settings)
    running = build_server(settings, ModelRegistry(settings).load_alias("champion"), store)
    accepted: set[str] = set()
    unavailable = 0
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            rec = pb_grpc.RecommenderStub(channel)
            for batch in range(40):
                ids = [f"b{batch}-{n}" for n in range(50)]
                request = pb.TrackEventsRequest(
                    events=[
                        pb.Event(
                            user_id=f"c{n % 7}", item_id="i0001", event_type="view", event_id=i
                        )
                        for n, i in enumerate(ids)
                    ]
                )
                if batch == 15:
                    own.kill()
                if batch == 18:
                    own.start()
                for _ in range(100):  # retried with the same ids until it goes through
                    try:
                        response = rec.TrackEvents(request, timeout=5)
                    except grpc.RpcError as exc:
                        assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc.details()
                        unavailable += 1
                        if batch in (15, 16, 17):
                            break  # Redis is down for good for now: the batch is given up
                        continue
                    assert response.accepted == 50
                    accepted.update(ids)
                    break
        assert unavailable >= 3  # the crash was seen
        assert len(accepted) >= 35 * 50
        entries = store.client.xrange(stream_key("crash"))
        recorded = [fields[b"user_id"] for _, fields in entries]
        assert len(recorded) == len(accepted)
    finally:
        running.stop(grace=1)
        own.stop()


def test_health_answers_while_heavy_calls_flood_the_server(replicas):
    """The largest requests the bounds allow, many at once, never starve health checks;
    oversized ones are refused by size, not served."""
    import contextlib
    import threading

    from grpc_health.v1 import health_pb2, health_pb2_grpc

    channel = replicas[1]
    rec = pb_grpc.RecommenderStub(channel)
    heavy = pb.RecommendRequest(
        user_id="u00001",
        limit=100,
        exclude_item_ids=[f"x{n:0250d}" for n in range(1000)],
        include_categories=[f"c{n:0120d}" for n in range(1000)],
    )
    assert heavy.ByteSize() < 1_048_576
    too_big = pb.RecommendRequest(user_id="u00001", exclude_item_ids=["y" * 250] * 5000)
    assert code_of(lambda: rec.Recommend(too_big, timeout=5)) == grpc.StatusCode.RESOURCE_EXHAUSTED
    stop = threading.Event()

    def flood() -> None:
        while not stop.is_set():
            # Shed load is fine; only health matters here.
            with contextlib.suppress(grpc.RpcError):
                rec.Recommend(heavy, timeout=10)

    threads = [threading.Thread(target=flood) for _ in range(12)]
    for t in threads:
        t.start()
    try:
        health = health_pb2_grpc.HealthStub(channel)
        for _ in range(10):
            answer = health.Check(health_pb2.HealthCheckRequest(), timeout=2)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        stop.set()
        for t in threads:
            t.join()


def test_an_event_racing_a_link_is_written_under_the_survivor(trained, store, synthetic):
    """A link commits between TrackEvents resolving a cookie and writing its event: the
    write sees the move and the event lands under the account, not the merged-away
    cookie person."""
    from service.identity import Identities
    from service.store import FeatureStore
    from tests.conftest import TEST_SECRET

    settings = replace(trained.settings, key_prefix="race", port=0, host="127.0.0.1")

    class RacingStore(FeatureStore):
        race = True

        def record_plan(self, events, weights, marks=None):
            if self.race:  # the first write only: a link lands just before it
                self.race = False
                Identities(self, TEST_SECRET).link(["cookie:race-ck", "user_id:race-acct"])
            return (yield from super().record_plan(events, weights, marks))

    plain = feature_store(settings)
    racing = RacingStore(plain.client, "race")
    running = build_server(settings, ModelRegistry(settings).load_alias("champion"), racing)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            rec = pb_grpc.RecommenderStub(channel)
            event = pb.Event(
                identifier=ident("cookie", "race-ck"), item_id="i0007", event_type="view"
            )
            response = rec.TrackEvents(pb.TrackEventsRequest(events=[event]), timeout=5)
            assert response.accepted == 1
        assert not plain.client.exists(live_key("race", "cookie:race-ck", "history"))
        history = plain.client.lrange(live_key("race", "race-acct", "history"), 0, -1)
        assert [json.loads(h)[0] for h in history] == ["i0007"]
    finally:
        running.stop(grace=1)
