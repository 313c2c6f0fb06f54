"""The popularity baseline as a model of its own: a run registers whichever of the
personalised model and the baseline wins the holdout, so a fresh deployment always ends
with a champion and serves — even when its first data is mostly messages."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import grpc
import numpy as np
import pandas as pd
import pytest

from omnirec.v1 import engagement_pb2 as epb
from omnirec.v1 import engagement_pb2_grpc as epb_grpc
from omnirec.v1 import identity_pb2 as ipb
from omnirec.v1 import profiles_pb2 as ppb
from omnirec.v1 import profiles_pb2_grpc as ppb_grpc
from omnirec.v1 import recommender_pb2 as pb
from omnirec.v1 import recommender_pb2_grpc as pb_grpc
from service.api.server import build_server
from service.bundle import ModelBundle
from service.catalogue import Catalogue
from service.events import ITEM_EVENT_TYPES
from service.recommender import RankingOptions, Recommender
from service.registry import ModelRegistry
from service.store import FeatureStore
from service.store.codecs import UserFeatures
from service.store.plans import connect
from service.store.reads import ServingView
from tests.conftest import make_settings
from training.__main__ import main as training_main
from training.models import popularity_bundle
from training.pipeline import HoldoutResult, TrainConfig, decide, select, train

# --- the decision text -----------------------------------------------------------------


def holdout(model: float, baseline: float, people: int = 40) -> HoldoutResult:
    metrics = {"recall": 0.0, "map": 0.0, "coverage": 0.0}
    return HoldoutResult(
        {"als": {**metrics, "ndcg": model}, "popularity": {**metrics, "ndcg": baseline}},
        people,
        10,
    )


def test_a_tie_with_popularity_is_no_win_and_says_tied():
    chosen = select(holdout(0.1234, 0.1234), "als")
    assert chosen.kind == "popularity"
    assert chosen.text.startswith("als tied popularity")
    assert "beat" not in chosen.text and "≥" not in chosen.text
    assert "0.1234 = 0.1234" in chosen.text


def test_the_model_registers_only_when_it_beats_popularity():
    won = select(holdout(0.2, 0.1), "als")
    assert (won.kind, won.score) == ("als", 0.2)
    assert won.text.startswith("als beat popularity") and "0.2000 > 0.1000" in won.text
    lost = select(holdout(0.05, 0.1), "als")
    assert lost.kind == "popularity" and lost.text.startswith("als lost to popularity")
    # Numbers that differ only past 4 decimals are printed so that they differ.
    close = select(holdout(0.123412, 0.123398), "als")
    assert (
        close.kind == "als"
        and "0.12341 > 0.12340" in close.text
        and "0.1234 > 0.1234" not in close.text
    )


class FakeRegistry:
    """The few registry facts ``decide`` reads."""

    name = "omnirec"

    def __init__(self, champion: str | None, kind: str, metrics: dict[str, float]) -> None:
        self.champion, self.kind, self.metrics = champion, kind, metrics

    def version_behind(self, alias: str) -> str | None:
        return self.champion

    def version_tags(self, version: str) -> dict[str, str]:
        return {"omnirec.kind": self.kind}

    def run_metrics(self, version: str) -> dict[str, float]:
        return self.metrics


def test_promotion_texts_say_tied_first_kept_and_forced():
    cfg = TrainConfig(events=Path("unused"))
    chosen = select(holdout(0.3, 0.1), "als")
    champion = {"als_ndcg_at_10": 0.3, "popularity_ndcg_at_10": 0.1}
    promoted, text = decide(FakeRegistry("4", "als", champion), "champion", chosen, cfg)
    assert promoted and text.startswith("tied omnirec/4") and "beat" not in text
    promoted, text = decide(FakeRegistry(None, "", {}), "champion", chosen, cfg)
    assert promoted and text.startswith("first champion")
    # A popularity champion is compared by the metric of what it was registered as.
    popular = {"als_ndcg_at_10": 0.9, "popularity_ndcg_at_10": 0.2}
    promoted, text = decide(FakeRegistry("4", "popularity", popular), "champion", chosen, cfg)
    assert promoted and text.startswith("beat omnirec/4") and "0.3000 > 0.2000" in text
    weak = select(holdout(0.0, 0.05), "als")
    promoted, text = decide(FakeRegistry("4", "als", champion), "champion", weak, cfg)
    assert not promoted and text.startswith("kept omnirec/4")
    promoted, text = decide(
        FakeRegistry("4", "als", champion), "champion", weak, replace(cfg, promote=True)
    )
    assert promoted and text.startswith("promoted by request")


# --- the popularity bundle and how it serves --------------------------------------------


def test_popularity_bundle_round_trips_and_serves_trending_then_popular(tmp_path):
    original = popularity_bundle({"b": 1.0, "a": 3.0, "c": 2.0}, {"weights": {"view": 1.0}})
    loaded = ModelBundle.load(original.save(tmp_path))
    assert loaded.kind == "popularity" and loaded.item_ids.tolist() == ["a", "c", "b"]
    assert loaded.item_scores.tolist() == [3.0, 2.0, 1.0] and len(loaded.user_ids) == 0

    rec = Recommender(loaded)
    features = UserFeatures([("a", "view", 10)], {"c"}, set())
    view = ServingView("p1", features, [("b", 5.0), ("a", 4.0)], [("x", 9.0)])
    recs = rec.recommend("p1", view, Catalogue(0, {}), RankingOptions(3))
    assert [(r.item_id, r.reason) for r in recs] == [
        ("x", "trending"),
        ("b", "popular"),
        ("a", "popular"),
    ]
    assert not rec.knows_item("a")
    # Nothing published: the bundle's own ranking still answers.
    empty = ServingView("p1", UserFeatures([], set(), set()), [], [])
    recs = rec.recommend("p1", empty, Catalogue(0, {}), RankingOptions(2, context_item_id="a"))
    assert [(r.item_id, r.reason) for r in recs] == [("a", "popular"), ("c", "popular")]


# --- a fresh deployment whose first data is mostly messages -------------------------------


def message_heavy_log(synthetic, out: Path) -> Path:
    """Every message and session event of the synthetic log, but only each person's first
    two item events: nobody has enough item history to be held out."""
    frame = pd.read_parquet(synthetic.events)
    is_item = frame["event_type"].isin(ITEM_EVENT_TYPES)
    items = frame[is_item].sort_values(["user_id", "timestamp"], kind="stable")
    first_two = items.groupby("user_id").head(2)
    kept = pd.concat([frame[~is_item], first_two]).sort_values("timestamp", kind="stable")
    assert (~kept["event_type"].isin(ITEM_EVENT_TYPES)).mean() > 0.9
    path = out / "messages.parquet"
    kept.to_parquet(path, index=False)
    return path


@pytest.mark.integration
def test_message_heavy_first_run_still_gets_a_champion_that_serves_everything(
    redis_server, synthetic, tmp_path, capsys
):
    settings = make_settings(redis_server.url, tmp_path, key_prefix="fresh")
    events = message_heavy_log(synthetic, tmp_path)
    first = train(settings, TrainConfig(events=events, items=synthetic.items))
    assert first.kind == "popularity" and first.version == "1" and first.promoted
    assert first.selection.startswith("als tied popularity")
    assert first.decision.startswith("first champion (popularity")

    registry = ModelRegistry(settings)
    assert registry.version_behind("champion") == "1"
    tags = registry.version_tags("1")
    assert tags["omnirec.kind"] == "popularity" and tags["omnirec.decision"] == first.decision
    assert tags["omnirec.selection"] == first.selection
    mv = registry.client.get_model_version(registry.name, "1")
    assert first.selection in mv.description
    run = registry.client.get_run(first.run_id)
    assert run.data.tags["omnirec.kind"] == "popularity"
    assert run.data.tags["omnirec.decision"] == first.decision

    model = registry.load_alias("champion")
    assert model.bundle.kind == "popularity" and model.bundle.metadata["engagement_priors"]
    store = FeatureStore(connect(settings.redis_url), settings.key_prefix)
    running = build_server(replace(settings, port=0, host="127.0.0.1"), model, store)
    frame = pd.read_parquet(events)
    reader = frame.loc[frame["event_type"] == "message_open", "user_id"].iloc[0]
    item = str(frame.loc[frame["event_type"] == "view", "item_id"].iloc[0])
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            rec = pb_grpc.RecommenderStub(channel)
            reply = rec.Recommend(pb.RecommendRequest(user_id=reader, limit=5), timeout=5)
            assert reply.model_version == "omnirec/1 (popularity)"
            assert len(reply.items) == 5
            assert {r.reason for r in reply.items} <= {"popular", "trending"}
            scores = [r.score for r in reply.items]
            assert scores == sorted(scores, reverse=True)

            similar = rec.SimilarItems(pb.SimilarItemsRequest(item_id=item, limit=5), timeout=5)
            assert similar.model_version == "omnirec/1 (popularity)"
            assert similar.items and item not in {r.item_id for r in similar.items}
            assert all(
                r.reason in ("popular", "trending") or "together" in r.reason for r in similar.items
            )

            engagement = epb_grpc.EngagementStub(channel)
            send = engagement.PredictSendTime(
                epb.PredictSendTimeRequest(user_id=reader, channel="email"), timeout=5
            )
            assert send.send_at.seconds > 0 and 0 < send.probability < 1
            assert send.model_version == "omnirec/1 (popularity)"
            channels = engagement.RankChannels(epb.RankChannelsRequest(user_id=reader), timeout=5)
            assert channels.channels and channels.channels[0].score > 0

            profiles = ppb_grpc.ProfilesStub(channel)
            profile = profiles.GetProfile(
                ppb.GetProfileRequest(identifier=ipb.Identifier(kind="user_id", value=reader)),
                timeout=5,
            )
            assert profile.person_id == reader and profile.preferred_channel
    finally:
        running.stop(grace=1)

    # The next run has item data: the model beats the popularity champion on what that
    # champion was registered as.
    second = train(settings, TrainConfig(events=synthetic.events, publish=False))
    assert second.kind == "als" and second.promoted
    assert second.decision.startswith("beat omnirec/1: als ndcg@10")
    assert registry.version_behind("champion") == "2"
    assert registry.load_alias("champion").label == "omnirec/2"


@pytest.mark.integration
def test_models_command_names_each_alias_on_its_version(tmp_path, monkeypatch, capsys):
    import mlflow

    monkeypatch.chdir(tmp_path)  # MLflow's default experiment keeps artifacts in ./mlruns
    settings = make_settings("redis://127.0.0.1:1", tmp_path)
    registry = ModelRegistry(settings)
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    bundle = popularity_bundle({"a": 1.0}, {})
    with mlflow.start_run() as run:
        mlflow.log_artifacts(str(bundle.save(tmp_path / "bundle")), artifact_path="bundle")
        source = mlflow.get_artifact_uri("bundle")
    first = registry.register(run.info.run_id, source, tags={"omnirec.kind": "popularity"})
    second = registry.register(run.info.run_id, source, tags={"omnirec.kind": "als"})
    registry.set_alias("champion", first)
    registry.set_alias("challenger", second)
    rows = {row["version"]: row for row in registry.versions()}
    assert rows[first]["aliases"] == "champion" and rows[second]["aliases"] == "challenger"

    monkeypatch.setenv("MLFLOW_TRACKING_URI", settings.mlflow_tracking_uri)
    capsys.readouterr()
    assert training_main(["models"]) == 0
    lines = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()}
    assert lines[f"omnirec/{first}"][1:3] == ["champion", "popularity"]
    assert lines[f"omnirec/{second}"][1:3] == ["challenger", "als"]
    np.testing.assert_array_equal(registry.load_alias("champion").bundle.item_ids, ["a"])
