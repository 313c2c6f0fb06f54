"""The champion alias: moved when a new version beats it, forced with --promote, rolled
back with `promote`, and followed by a running server without a restart. (A model that
loses to popularity registers the popularity baseline instead: see test_baseline.)"""

from __future__ import annotations

import time
from dataclasses import replace

import grpc
import pytest

from omnirec.v1 import recommender_pb2 as pb
from omnirec.v1 import recommender_pb2_grpc as pb_grpc
from service.registry import ModelRegistry
from service.server import build_server
from service.store import FeatureStore
from service.store.plans import connect
from tests.conftest import make_settings
from training.__main__ import main as training_main
from training.models import ModelParams
from training.pipeline import TrainConfig, train

pytestmark = pytest.mark.integration


def test_promotion_rules_rollback_and_hot_reload(
    redis_server, synthetic, truth, tmp_path, monkeypatch
):
    settings = make_settings(redis_server.url, tmp_path, key_prefix="promo", model_poll_seconds=0.5)
    first = train(settings, TrainConfig(events=synthetic.events, items=synthetic.items))
    assert first.version == "1" and first.promoted

    # Without transitions: on this data they alone beat popularity.
    weak = ModelParams(factors=2, iterations=1, regularization=100.0)
    second = train(
        settings,
        TrainConfig(events=synthetic.events, params=weak, publish=False, transitions=False),
    )
    assert second.version == "2" and not second.promoted
    # The weak model loses to popularity; the baseline registered loses to the champion.
    assert second.kind == "popularity" and second.selection.startswith("als lost to")
    assert second.decision.startswith("kept omnirec/1: popularity ndcg@10")
    registry = ModelRegistry(settings)
    assert registry.version_behind("champion") == "1"

    model = registry.load_alias("champion")
    running = build_server(
        replace(settings, port=0, host="127.0.0.1"),
        model,
        FeatureStore(connect(settings.redis_url), settings.key_prefix),
        reload_model=registry.load_version,
        current_version=lambda: registry.version_behind("champion"),
    )
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = pb_grpc.RecommenderStub(channel)
            user = sorted(truth["users"])[0]

            def served():
                return stub.Recommend(pb.RecommendRequest(user_id=user), timeout=5).model_version

            assert served() == "omnirec/1"
            forced = train(
                settings,
                TrainConfig(
                    events=synthetic.events,
                    params=weak,
                    promote=True,
                    publish=False,
                    transitions=False,
                ),
            )
            assert forced.version == "3" and forced.promoted
            assert _eventually(lambda: served() == "omnirec/3 (popularity)")

            for name, value in (
                ("REDIS_URL", settings.redis_url),
                ("MLFLOW_TRACKING_URI", settings.mlflow_tracking_uri),
            ):
                monkeypatch.setenv(name, value)
            assert training_main(["promote", "--version", "1"]) == 0
            assert registry.version_behind("champion") == "1"
            assert _eventually(lambda: served() == "omnirec/1")
            assert training_main(["promote", "--version", "99"]) == 2
    finally:
        running.stop(grace=1)


def _eventually(check, timeout=15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.2)
    return False
