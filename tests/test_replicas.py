"""Two servers on one Redis, as two processes (or replicas) behind one port are: each keeps
its own caches (published features, popular items, the publication pointer), yet what one
of them accepts or erases shapes the very next answer of the other."""

from __future__ import annotations

from dataclasses import replace

import grpc
import pytest

from omnirec.v1 import identity_pb2 as ipb
from omnirec.v1 import profiles_pb2 as ppb
from omnirec.v1 import profiles_pb2_grpc as ppb_grpc
from omnirec.v1 import recommender_pb2 as pb
from omnirec.v1 import recommender_pb2_grpc as pb_grpc
from service.api.server import build_server
from service.config import feature_store
from service.registry import ModelRegistry
from tests.conftest import publish_log

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def replicas(trained, synthetic):
    settings = replace(trained.settings, key_prefix="replicas", port=0, host="127.0.0.1")
    publish_log(feature_store(settings), synthetic)
    model = ModelRegistry(settings).load_alias("champion")
    # Each server gets a store of its own: nothing cached is shared between them.
    running = [build_server(settings, model, feature_store(settings)) for _ in range(2)]
    channels = [grpc.insecure_channel(f"127.0.0.1:{r.port}") for r in running]
    yield [(pb_grpc.RecommenderStub(c), ppb_grpc.ProfilesStub(c)) for c in channels]
    for channel in channels:
        channel.close()
    for r in running:
        r.stop(grace=1)


def recommend(stub, user):
    reply = stub.Recommend(pb.RecommendRequest(user_id=user, limit=10), timeout=5)
    return [(r.item_id, r.reason) for r in reply.items]


def test_events_tracked_on_one_server_change_the_next_answer_of_the_other(replicas, truth):
    (first, _), (second, _) = replicas
    user = sorted(truth["users"])[3]
    before = recommend(second, user)  # the second server has cached this person now
    fresh = [item for item, _ in recommend(first, f"stranger-{user}")[:3]]
    events = [pb.Event(user_id=user, item_id=i, event_type="purchase") for i in fresh]
    assert first.TrackEvents(pb.TrackEventsRequest(events=events), timeout=5).accepted == 3
    after = recommend(second, user)
    assert after != before
    # Bought a moment ago on the other server: excluded here at once.
    assert not {item for item, _ in after} & set(fresh)


def test_erasure_on_one_server_is_seen_by_the_other_at_once(replicas, truth):
    (first, first_profiles), (second, second_profiles) = replicas
    user = sorted(truth["users"])[5]
    identifier = ipb.Identifier(kind="user_id", value=user)
    profile = second_profiles.GetProfile(ppb.GetProfileRequest(identifier=identifier), timeout=5)
    assert profile.recent_views or profile.purchases or profile.favourites
    before = recommend(second, user)
    assert any(reason.startswith(("recent:", "similar:")) for _, reason in before)

    first_profiles.ForgetUser(ppb.ForgetUserRequest(identifier=identifier), timeout=5)

    # The second server had this person's published history cached: it must not use it.
    gone = second_profiles.GetProfile(ppb.GetProfileRequest(identifier=identifier), timeout=5)
    assert not (gone.recent_views or gone.purchases or gone.favourites or gone.cart)
    assert not gone.top_categories
    after = recommend(second, user)
    assert not any(reason.startswith(("recent:", "similar:")) for _, reason in after)
