"""Opt-outs and fatigue: the pure rules (service/contact.py), then through the real gRPC
server and a real redis-server: unsubscribe / resubscribe events, RankChannels marking,
PredictSendTime refusing or moving later, merges and erasure keeping them right."""

from __future__ import annotations

import time
from dataclasses import replace

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from omnirec.v1 import engagement_pb2 as epb
from omnirec.v1 import engagement_pb2_grpc as epb_grpc
from omnirec.v1 import identity_pb2 as ipb
from omnirec.v1 import profiles_pb2 as ppb
from omnirec.v1 import profiles_pb2_grpc as ppb_grpc
from omnirec.v1 import recommender_pb2 as pb
from omnirec.v1 import recommender_pb2_grpc as pb_grpc
from service.api.server import build_server
from service.config import feature_store
from service.contact import (
    ContactPolicy,
    ContactState,
    allowed,
    earliest_send,
    opted_out_channels,
)
from service.registry import ModelRegistry
from service.store.reads import EngagementView

HOUR = 3600
NOW = 1_800_000_000


# --- the rules ------------------------------------------------------------------------


def test_the_newest_of_unsubscribe_and_resubscribe_decides_and_a_tie_keeps_it_closed():
    marks = {
        "unsubscribe:email": 100.0,
        "resubscribe:email": 200.0,  # reopened
        "unsubscribe:sms": 300.0,
        "resubscribe:sms": 200.0,  # an older resubscribe does not reopen
        "unsubscribe:push": 50.0,
        "resubscribe:push": 50.0,  # same second: stays closed
        "resubscribe:messenger": 10.0,  # never closed
    }
    assert opted_out_channels(marks) == {"sms", "push"}
    state = ContactState(opted_out=frozenset({"sms"}))
    assert allowed(state, ["email", "sms", "push"]) == ["email", "push"]


def test_the_state_comes_from_the_view_deliveries_only():
    view = EngagementView(
        published=[],
        published_until=None,
        live=[
            ("email", "message_open", NOW - 10, "", False),
            ("email", "message_delivered", NOW - 60, "", False),
            ("", "session_start", NOW - 70, "", False),
            ("sms", "message_delivered", NOW - 2 * HOUR, "", False),
        ],
        contact={"unsubscribe:push": 5.0},
    )
    state = ContactState.of(view)
    assert state.opted_out == {"push"}
    assert state.deliveries == (("email", NOW - 60), ("sms", NOW - 2 * HOUR))


def test_the_gap_counts_per_channel_and_only_pushes_later():
    state = ContactState(deliveries=(("email", NOW - 2 * HOUR), ("sms", NOW - 30)))
    policy = ContactPolicy(min_gap_hours=6)
    assert earliest_send(state, "email", policy, NOW) == NOW + 4 * HOUR
    assert earliest_send(state, "email", policy, NOW + 10 * HOUR) == NOW + 10 * HOUR
    assert earliest_send(state, "push", policy, NOW) == NOW  # nothing sent on push
    assert earliest_send(state, "email", ContactPolicy(), NOW) == NOW  # no rules


def test_the_daily_cap_counts_every_channel_and_waits_for_the_oldest_to_leave_the_day():
    sent = (("push", NOW - 1 * HOUR), ("sms", NOW - 5 * HOUR), ("email", NOW - 20 * HOUR))
    state = ContactState(deliveries=sent)
    # Three in the last day, cap 3: the next waits until the oldest is a day old.
    assert earliest_send(state, "messenger", ContactPolicy(max_per_day=3), NOW) == (NOW + 4 * HOUR)
    # Cap 2: two must leave the day; the second oldest leaves at NOW + 19 h.
    assert earliest_send(state, "messenger", ContactPolicy(max_per_day=2), NOW) == (NOW + 19 * HOUR)
    assert earliest_send(state, "messenger", ContactPolicy(max_per_day=4), NOW) == NOW
    # Gap and cap together: the later of the two.
    both = ContactPolicy(min_gap_hours=30, max_per_day=3)
    assert earliest_send(state, "email", both, NOW) == NOW + 10 * HOUR


# --- through the service --------------------------------------------------------------


@pytest.fixture(scope="module")
def server(trained):
    settings = replace(
        trained.settings,
        port=0,
        host="127.0.0.1",
        engagement_half_life_days=3650,
        min_message_gap_hours=12,
        max_messages_per_day=3,
    )
    model = ModelRegistry(settings).load_alias("champion")
    running = build_server(settings, model, feature_store(settings))
    yield running
    running.stop(grace=1)


@pytest.fixture(scope="module")
def stubs(server):
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield (
            pb_grpc.RecommenderStub(channel),
            epb_grpc.EngagementStub(channel),
            ppb_grpc.ProfilesStub(channel),
        )


def track(recommender, *events: pb.Event) -> pb.TrackEventsResponse:
    return recommender.TrackEvents(pb.TrackEventsRequest(events=events), timeout=5)


def at(seconds: float) -> Timestamp:
    out = Timestamp()
    out.FromSeconds(int(seconds))
    return out


def channels_of(engagement, user: str) -> list[epb.ChannelScore]:
    return list(engagement.RankChannels(epb.RankChannelsRequest(user_id=user), timeout=5).channels)


def send_time_code(engagement, user: str, channel: str, **extra) -> grpc.StatusCode:
    try:
        engagement.PredictSendTime(
            epb.PredictSendTimeRequest(user_id=user, channel=channel, **extra), timeout=5
        )
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def test_unsubscribe_closes_a_channel_until_resubscribe(stubs):
    recommender, engagement, _ = stubs
    user = "contact-a"
    now = time.time()
    before = channels_of(engagement, user)
    assert not any(c.opted_out for c in before)
    best = before[0].channel
    reply = track(
        recommender,
        pb.Event(user_id=user, event_type="unsubscribe", channel=best, timestamp=at(now - 60)),
    )
    assert reply.accepted == 1
    ranked = channels_of(engagement, user)
    assert ranked[-1].channel == best and ranked[-1].opted_out
    assert not any(c.opted_out for c in ranked[:-1])
    with pytest.raises(grpc.RpcError) as caught:
        engagement.PredictSendTime(
            epb.PredictSendTimeRequest(user_id=user, channel=best), timeout=5
        )
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert caught.value.details().startswith("channel: ") and best in caught.value.details()
    # A resubscribe older than the unsubscribe (arriving late) changes nothing ...
    track(
        recommender,
        pb.Event(user_id=user, event_type="resubscribe", channel=best, timestamp=at(now - 120)),
    )
    assert send_time_code(engagement, user, best) == grpc.StatusCode.FAILED_PRECONDITION
    # ... a newer one reopens the channel; the unsubscribe sent again (a retry) does not
    # close it again.
    track(recommender, pb.Event(user_id=user, event_type="resubscribe", channel=best))
    track(
        recommender,
        pb.Event(user_id=user, event_type="unsubscribe", channel=best, timestamp=at(now - 60)),
    )
    assert send_time_code(engagement, user, best) == grpc.StatusCode.OK
    assert not any(c.opted_out for c in channels_of(engagement, user))


def test_contact_events_need_a_message_channel_and_no_item(stubs):
    recommender, _, _ = stubs
    reply = track(
        recommender,
        pb.Event(user_id="contact-b", event_type="unsubscribe"),
        pb.Event(user_id="contact-b", event_type="unsubscribe", channel="web"),
        pb.Event(user_id="contact-b", event_type="resubscribe", channel="sms", item_id="i1"),
    )
    assert reply.accepted == 0
    assert [(r.index, r.field) for r in reply.rejections] == [
        (0, "channel"),
        (1, "channel"),
        (2, "item_id"),
    ]


def test_the_gap_and_the_cap_move_send_times_later(stubs):
    recommender, engagement, _ = stubs
    user = "contact-c"
    now = time.time()
    track(
        recommender,
        pb.Event(
            user_id=user,
            event_type="message_delivered",
            channel="email",
            timestamp=at(now - 2 * HOUR),
        ),
    )
    # Email: 12 h gap after a delivery 2 h ago → not before now + 10 h.
    reply = engagement.PredictSendTime(
        epb.PredictSendTimeRequest(
            user_id=user, channel="email", ignore_quiet_hours=True, window_hours=48
        ),
        timeout=5,
    )
    assert reply.send_at.ToSeconds() >= now - 2 * HOUR + 12 * HOUR - 1
    assert reply.send_at.ToSeconds() <= now + 48 * HOUR
    # A 6 h window ends before the gap does: refused, naming the window and the reason.
    with pytest.raises(grpc.RpcError) as caught:
        engagement.PredictSendTime(
            epb.PredictSendTimeRequest(user_id=user, channel="email", window_hours=6), timeout=5
        )
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert caught.value.details().startswith("window_hours: ")
    assert "OMNIREC_MIN_MESSAGE_GAP_HOURS" in caught.value.details()
    ranked = {c.channel: c for c in channels_of(engagement, user)}
    assert abs(ranked["email"].next_allowed.ToSeconds() - (now + 10 * HOUR)) <= 2
    assert ranked["sms"].next_allowed.ToSeconds() <= time.time() + 1  # free now
    # Two more deliveries today on other channels: the cap of 3 holds every channel back
    # until the oldest of the three is a day old.
    track(
        recommender,
        pb.Event(
            user_id=user, event_type="message_delivered", channel="sms", timestamp=at(now - HOUR)
        ),
        pb.Event(
            user_id=user, event_type="message_delivered", channel="push", timestamp=at(now - 60)
        ),
    )
    ranked = {c.channel: c for c in channels_of(engagement, user)}
    assert abs(ranked["messenger"].next_allowed.ToSeconds() - (now + 22 * HOUR)) <= 2


def test_a_merge_keeps_an_opt_out_and_erasure_takes_it_away(stubs, trained):
    recommender, engagement, profiles = stubs
    track(recommender, pb.Event(user_id="contact-d", event_type="unsubscribe", channel="sms"))
    profiles.LinkIdentities(
        ppb.LinkIdentitiesRequest(
            identifiers=[
                ipb.Identifier(kind="user_id", value="contact-e"),
                ipb.Identifier(kind="user_id", value="contact-d"),
            ],
            merge_accounts=True,
        ),
        timeout=5,
    )
    for name in ("contact-d", "contact-e"):
        assert send_time_code(engagement, name, "sms") == grpc.StatusCode.FAILED_PRECONDITION
    store = feature_store(trained.settings)
    prefix = trained.settings.key_prefix
    kept = [
        store.client.exists(f"{prefix}:live:user:{{{n}}}:contact")
        for n in ("contact-d", "contact-e")
    ]
    assert sum(kept) == 1  # the survivor's, merged
    profiles.ForgetUser(
        ppb.ForgetUserRequest(identifier=ipb.Identifier(kind="user_id", value="contact-e")),
        timeout=5,
    )
    left = [
        key
        for name in ("contact-d", "contact-e")
        for key in store.client.scan_iter(match=f"{prefix}:live:user:{{{name}}}:*")
    ]
    assert left == []


# --- fatigue learnt from the log ------------------------------------------------------


def fatigue_log(decay: float, people: int = 2000, deliveries: int = 40, seed: int = 1):
    """A daily email to each person; each is opened with the person's own rate times
    ``decay`` per unanswered delivery before it in a row (up to 5)."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    rate = rng.beta(2, 6, people)
    rows = []
    for person in range(people):
        streak = 0
        for n in range(deliveries):
            ts = 1_700_000_000 + n * 86_400
            rows.append((f"p{person}", "message_delivered", ts))
            if rng.random() < rate[person] * decay ** min(streak, 5):
                rows.append((f"p{person}", "message_open", ts + 60))
                streak = 0
            else:
                streak += 1
    frame = pd.DataFrame(rows, columns=["user_id", "event_type", "timestamp"])
    frame["item_id"], frame["channel"], frame["timezone"] = "", "email", ""
    frame["value"], frame["automated"] = float("nan"), False
    return frame


def test_fatigue_is_learnt_where_people_tire_and_not_where_they_do_not():
    from training.engagement import _events, learn_fatigue

    tired = learn_fatigue(_events(fatigue_log(0.7), "UTC"))
    # Planted 0.7, 0.49, 0.34 for 1-3 unanswered; learnt closer to 1 (a person's own rate,
    # which predicts each delivery, is itself lowered by their fatigue) but falling.
    assert tired[0] == 1.0
    assert 0.6 < tired[1] < 0.85 and 0.4 < tired[2] < 0.7 and tired[3] < 0.55
    assert tired == sorted(tired, reverse=True)
    fresh = learn_fatigue(_events(fatigue_log(1.0), "UTC"))
    assert min(fresh) > 0.9


def test_unanswered_deliveries_lower_a_channels_score_by_the_learnt_fatigue():
    from service.send_time import EngagementProfile, Priors, rank_channels

    priors = replace(Priors.flat(), fatigue=[1.0, 0.8, 0.5])
    fresh = dict((c, s) for c, s, _ in rank_channels(EngagementProfile(), priors))
    tired = rank_channels(EngagementProfile(), priors, {"email": 1, "sms": 7})
    scores = {c: s for c, s, _ in tired}
    assert scores["email"] == pytest.approx(0.8 * fresh["email"])
    assert scores["sms"] == pytest.approx(0.5 * fresh["sms"])  # 7 or more: the last entry
    assert [c for c, _, _ in tired][-2:] == ["email", "sms"]
    view = EngagementView(
        published=[],
        published_until=None,
        live=[
            ("email", "message_delivered", NOW - 10, "", False),
            ("email", "message_open", NOW - 20, "", True),  # a mail proxy: not an answer
            ("email", "message_delivered", NOW - 30, "", False),
            ("email", "message_open", NOW - 40, "", False),
            ("email", "message_delivered", NOW - 50, "", False),
            ("sms", "message_delivered", NOW - 60, "", False),
        ],
    )
    assert ContactState.of(view).unanswered == {"email": 2, "sms": 1}


def test_opt_outs_in_the_training_log_are_served(stubs, truth):
    """The generator's planted unsubscribes (and the resubscribes after some) reach
    Redis with the training run's publication."""
    _, engagement, _ = stubs
    closed = {u: t["opted_out"] for u, t in truth["users"].items() if t["opted_out"]}
    never = sorted(u for u, t in truth["users"].items() if not t["opted_out"])
    assert len(closed) >= 10
    for user, channels in sorted(closed.items())[:10]:
        marked = {c.channel for c in channels_of(engagement, user) if c.opted_out}
        assert marked == set(channels)
        assert send_time_code(engagement, user, channels[0]) == (
            grpc.StatusCode.FAILED_PRECONDITION
        )
    assert not any(c.opted_out for c in channels_of(engagement, never[0]))
