"""The champion alias: moved when a new version beats it, forced with --promote, rolled
back with `promote`, and followed by a running server without a restart; champions are
compared by the metric names of the run that registered them, old or new. (A model that
loses to popularity registers the popularity baseline instead: see test_baseline.)"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import grpc
import pytest

from omnirec.v1 import recommender_pb2 as pb
from omnirec.v1 import recommender_pb2_grpc as pb_grpc
from service.api.server import build_server
from service.registry import ModelRegistry
from service.store import FeatureStore
from service.store.plans import connect
from tests.conftest import make_settings
from training.__main__ import main as training_main
from training.models import ModelParams
from training.pipeline import HoldoutResult, TrainConfig, decide, select, train

# --- champions logged under old and new metric names ------------------------------------

#: What runs before kind-independent names logged (``<kind>_<metric>_at_<k>``).
OLD_ALS = {"als_ndcg_at_10": 0.30, "popularity_ndcg_at_10": 0.10}
OLD_POPULARITY = {"als_ndcg_at_10": 0.05, "popularity_ndcg_at_10": 0.20}
#: What runs log now: the model's ``ndcg_at_10`` whatever its kind, the baseline's apart.
NEW_EASE = {"ndcg_at_10": 0.30, "baseline_popularity_ndcg_at_10": 0.10}
NEW_POPULARITY = {"ndcg_at_10": 0.05, "baseline_popularity_ndcg_at_10": 0.20}


class Champion:
    """The registry facts ``decide`` reads, for one champion version 4."""

    name = "omnirec"

    def __init__(self, kind: str | None, metrics: dict[str, float]) -> None:
        self.kind, self.metrics = kind, metrics

    def version_behind(self, alias: str) -> str | None:
        return "4"

    def version_tags(self, version: str) -> dict[str, str]:
        return {"omnirec.kind": self.kind} if self.kind else {}

    def run_metrics(self, version: str) -> dict[str, float]:
        return self.metrics


def candidate(model: float, kind: str = "als"):
    metrics = {"recall": 0.0, "map": 0.0, "coverage": 0.0}
    result = HoldoutResult(
        {kind: {**metrics, "ndcg": model}, "popularity": {**metrics, "ndcg": 0.01}}, 40, 10
    )
    return select(result, kind)


@pytest.mark.parametrize(
    ("kind", "metrics", "score"),
    [
        ("als", OLD_ALS, 0.30),
        ("popularity", OLD_POPULARITY, 0.20),
        (None, OLD_ALS, 0.30),  # registered before the kind tag
        ("ease", NEW_EASE, 0.30),
        ("popularity", NEW_POPULARITY, 0.20),
    ],
)
def test_new_runs_compare_with_old_and_new_champions(kind, metrics, score):
    cfg = TrainConfig(events=Path("unused"))
    registry = Champion(kind, metrics)
    shown = f"{score:.4f}"
    promoted, text = decide(registry, "champion", candidate(score + 0.01), cfg)
    assert promoted and text.startswith("beat omnirec/4") and f"> {shown}" in text
    promoted, text = decide(registry, "champion", candidate(score), cfg)
    assert promoted and text.startswith("tied omnirec/4") and f"{shown} = {shown}" in text
    promoted, text = decide(registry, "champion", candidate(score - 0.01), cfg)
    assert not promoted and text.startswith("kept omnirec/4") and f"< {shown}" in text


def test_a_champion_without_the_metric_is_kept_and_says_why():
    cfg = TrainConfig(events=Path("unused"))
    promoted, text = decide(Champion("als", {"recall_at_10": 0.3}), "champion", candidate(0.9), cfg)
    assert not promoted and "logged no ndcg@10" in text


# --- the alias in a running system -------------------------------------------------------


@pytest.mark.integration
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
