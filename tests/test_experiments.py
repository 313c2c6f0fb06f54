"""A/B experiments (OMNIREC_EXPERIMENTS_FILE, a contract): the file checked, people
assigned by a keyed hash of the resolved person (sticky across servers, a linked cookie in
its login's arm), arms serving other models or options, answers naming experiment and
arm, exposures and attributed events in the exported log."""

from __future__ import annotations

import json
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
from service.errors import ConfigError
from service.experiments import Experiments
from service.registry import ModelRegistry
from training.event_log import load_events
from training.export import export_events

SECRET = "experiments-secret-0123456789"


def write(tmp_path, experiments) -> str:
    path = tmp_path / "experiments.json"
    path.write_text(json.dumps({"experiments": experiments}))
    return str(path)


def two_arms(name="new-model", share=100, weights=(50, 50), **treatment):
    return {
        "name": name,
        "share": share,
        "arms": [
            {"name": "control", "weight": weights[0]},
            {"name": "treatment", "weight": weights[1], **treatment},
        ],
    }


# -- the file and the assignment (pure) --


@pytest.mark.parametrize(
    "experiments, fragment",
    [
        ([{"name": "x y", "arms": []}], r"experiments\[0\]\.name"),
        ([two_arms(share=0)], r"experiments\[0\]\.share"),
        ([two_arms(weights=(50, -1))], r"experiments\[0\]\.arms\[1\]\.weight"),
        ([two_arms(model_alias="a", model_version=2)], "not both"),
        ([two_arms(serving={"colour": 1})], r"arms\[1\]\.serving.*'colour'"),
        ([two_arms("a", 60), two_arms("b", 50)], "more than 100"),
        ([two_arms("a"), two_arms("a", 0.5)], "used twice"),
        ([{"name": "one", "arms": [{"name": "only", "weight": 1}]}], "at least two arms"),
    ],
)
def test_a_bad_experiments_file_is_one_line_naming_the_field(tmp_path, experiments, fragment):
    with pytest.raises(ConfigError, match=f"OMNIREC_EXPERIMENTS_FILE=.*{fragment}"):
        Experiments.load(write(tmp_path, experiments), SECRET)


def test_not_json_or_missing_says_so(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(ConfigError, match="not JSON"):
        Experiments.load(str(bad), SECRET)
    with pytest.raises(ConfigError, match="cannot read it"):
        Experiments.load(str(tmp_path / "absent.json"), SECRET)


def test_assignment_follows_the_shares_and_weights_and_is_stable(tmp_path):
    path = write(tmp_path, [two_arms("a", 30, (20, 80)), two_arms("b", 50)])
    experiments = Experiments.load(path, SECRET)
    people = [f"p{n}" for n in range(20_000)]
    got = [experiments.assign(p) for p in people]
    share_a = sum(g is not None and g.experiment.name == "a" for g in got) / len(people)
    share_b = sum(g is not None and g.experiment.name == "b" for g in got) / len(people)
    assert abs(share_a - 0.30) < 0.015 and abs(share_b - 0.50) < 0.015
    in_a = [g for g in got if g is not None and g.experiment.name == "a"]
    treated = sum(g.arm.name == "treatment" for g in in_a) / len(in_a)
    assert abs(treated - 0.80) < 0.02
    # The same file and secret: the same arms, in any process; another secret reshuffles.
    again = Experiments.load(path, SECRET)
    assert [again.assign(p) for p in people[:500]] == got[:500]
    other = Experiments.load(path, "another-secret-0123456789")
    assert [other.assign(p) for p in people[:500]] != got[:500]


# -- through the real server --


@pytest.fixture(scope="module")
def served(trained, tmp_path_factory):
    """Two servers (two processes' worth) on one store, with one experiment: control
    serves the champion as is, treatment the same version without transitions."""
    tmp = tmp_path_factory.mktemp("experiments")
    path = write(tmp, [two_arms(model_version=1, serving={"transition_weight": 0})])
    settings = replace(
        trained.settings, port=0, host="127.0.0.1", experiments_file=path, model_poll_seconds=0
    )
    registry = ModelRegistry(settings)
    model = registry.load_alias(settings.model_alias)
    store = feature_store(settings)
    servers = [
        build_server(
            settings,
            model,
            store,
            reload_model=registry.load_version,
            version_of=registry.version_behind,
        )
        for _ in range(2)
    ]
    channels = [grpc.insecure_channel(f"127.0.0.1:{s.port}") for s in servers]
    yield settings, store, [pb_grpc.RecommenderStub(c) for c in channels], channels[0]
    for channel in channels:
        channel.close()
    for server in servers:
        server.stop(grace=1)


@pytest.mark.integration
def test_answers_name_their_arm_which_sticks_across_servers(served, truth):
    _, _, (one, two), _ = served
    arms = {}
    reasons = {"control": set(), "treatment": set()}
    for user in sorted(truth["users"])[:60]:
        first = one.Recommend(pb.RecommendRequest(user_id=user, limit=10), timeout=5)
        assert first.experiment == "new-model" and first.arm in ("control", "treatment")
        assert first.recommendation_id.startswith(f"new-model:{first.arm}:")
        assert first.model_version == "omnirec/1"
        again = two.Recommend(pb.RecommendRequest(user_id=user, limit=10), timeout=5)
        assert again.arm == first.arm  # another process, the same arm
        arms[user] = first.arm
        reasons[first.arm] |= {r.reason.split(":")[0] for r in first.items}
    assert 15 <= sum(a == "treatment" for a in arms.values()) <= 45
    # Treatment serves the model without its transition part; control with it.
    assert "after" in reasons["control"] and "after" not in reasons["treatment"]


@pytest.mark.integration
def test_a_cookie_linked_to_a_login_lands_in_the_logins_arm(served):
    _, _, (one, _), channel = served
    profiles = ppb_grpc.ProfilesStub(channel)
    account = one.Recommend(pb.RecommendRequest(user_id="ab-account-7", limit=3), timeout=5)
    cookie = ipb.Identifier(kind="cookie", value="ab-cookie-7")
    profiles.LinkIdentities(
        ppb.LinkIdentitiesRequest(
            identifiers=[cookie, ipb.Identifier(kind="user_id", value="ab-account-7")]
        ),
        timeout=5,
    )
    by_cookie = one.Recommend(pb.RecommendRequest(identifier=cookie, limit=3), timeout=5)
    assert by_cookie.arm == account.arm


@pytest.mark.integration
def test_exposures_and_attributed_events_reach_the_exported_log(served, tmp_path):
    _, store, (one, _), _ = served
    export_events(store, tmp_path / "before")  # what earlier tests left
    reply = one.Recommend(pb.RecommendRequest(user_id="ab-buyer", limit=3), timeout=5)
    bought = reply.items[0].item_id
    tracked = one.TrackEvents(
        pb.TrackEventsRequest(
            events=[
                pb.Event(
                    user_id="ab-buyer",
                    item_id=bought,
                    event_type=kind,
                    recommendation_id=reply.recommendation_id,
                )
                for kind in ("click", "purchase")
            ]
        ),
        timeout=5,
    )
    assert tracked.accepted == 2
    result = export_events(store, tmp_path / "after")
    frame = load_events(result.path).frame
    mine = frame[frame.recommendation_id == reply.recommendation_id]
    assert sorted(mine.event_type.astype(str)) == ["click", "exposure", "purchase"]
    exposure = mine[mine.event_type == "exposure"].iloc[0]
    assert exposure.user_id == "ab-buyer" and exposure.item_id == ""


@pytest.mark.integration
def test_clients_cannot_send_exposures_or_bad_recommendation_ids(served):
    _, _, (one, _), _ = served
    reply = one.TrackEvents(
        pb.TrackEventsRequest(
            events=[
                pb.Event(user_id="x", event_type="exposure", recommendation_id="a:b:c"),
                pb.Event(user_id="x", item_id="i1", event_type="view", recommendation_id="r" * 129),
            ]
        ),
        timeout=5,
    )
    assert reply.accepted == 0
    assert [(r.field, r.reason.split(" ")[-1]) for r in reply.rejections][0][0] == "event_type"
    assert reply.rejections[1].field == "recommendation_id"


@pytest.mark.integration
def test_an_arm_on_an_unknown_alias_stops_the_start_with_one_line(trained, tmp_path):
    path = write(tmp_path, [two_arms(model_alias="nobody-has-this")])
    settings = replace(trained.settings, port=0, host="127.0.0.1", experiments_file=path)
    registry = ModelRegistry(settings)
    with pytest.raises(ConfigError, match="alias 'nobody-has-this' names no version"):
        build_server(
            settings,
            registry.load_alias(settings.model_alias),
            feature_store(settings),
            reload_model=registry.load_version,
            version_of=registry.version_behind,
        )
