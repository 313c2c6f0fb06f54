"""Shared fixtures. Integration fixtures start real servers: a redis-server process on a
free loopback port, an MLflow sqlite store in a temporary folder, a gRPC server on port 0.

``OMNIREC_TEST_REDIS=cluster`` runs every test that uses the shared Redis against a
three-master Redis Cluster on loopback instead (tests that start a Redis of their own,
to stop or crash it, keep a single server).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from devtools.redis_server import LocalCluster, LocalRedis
from service.config import Settings, load_settings
from service.registry import quiet_mlflow

quiet_mlflow()

TEST_SECRET = "test-secret-0123456789abcdef"
#: The Redis the shared fixture starts: ``standalone`` (default) or ``cluster``.
TEST_REDIS = os.environ.get("OMNIREC_TEST_REDIS", "standalone")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRedis | LocalCluster]:
    """The Redis most tests share: ``url`` reaches it (see ``OMNIREC_TEST_REDIS``)."""
    if TEST_REDIS not in ("standalone", "cluster"):
        raise pytest.UsageError(f"OMNIREC_TEST_REDIS={TEST_REDIS!r}: standalone or cluster")
    folder = tmp_path_factory.mktemp("redis")
    server = LocalCluster(folder) if TEST_REDIS == "cluster" else LocalRedis(folder)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_cluster(redis_server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A three-master Redis Cluster on loopback (the shared one when it is a cluster)."""
    if isinstance(redis_server, LocalCluster):
        yield redis_server
        return
    cluster = LocalCluster(tmp_path_factory.mktemp("cluster"))
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def synthetic(tmp_path_factory: pytest.TempPathFactory):
    """A small seeded omnichannel log (events, items, planted truth)."""
    from training.synthetic import generate

    return generate(400, 150, 45, 11, tmp_path_factory.mktemp("synthetic"))


@pytest.fixture(scope="session")
def truth(synthetic) -> dict:
    return json.loads(Path(synthetic.truth).read_text())


def make_settings(redis_url: str, root: Path, **extra: object) -> Settings:
    return load_settings(
        {},
        redis_url=redis_url,
        mlflow_tracking_uri=f"sqlite:///{root / 'mlflow.db'}",
        artifact_root=str(root / "artifacts"),
        identity_secret=TEST_SECRET,
        **extra,
    )


def deployment_env(settings: Settings) -> dict[str, str]:
    """The variables a deployment sets for ``train`` and ``serve`` (as DESIGN.md names
    them), taken from ``settings``."""
    return {
        "REDIS_URL": settings.redis_url,
        "MLFLOW_TRACKING_URI": settings.mlflow_tracking_uri,
        "OMNIREC_ARTIFACT_ROOT": settings.artifact_root,
        "OMNIREC_KEY_PREFIX": settings.key_prefix,
        "OMNIREC_IDENTITY_SECRET": settings.identity_secret,
    }


def publish_log(store, synthetic) -> None:
    """The synthetic log's features published under ``store``'s prefix, as training
    does: a module with a prefix of its own keeps its live events to itself."""
    from training.catalogue_file import load_catalogue
    from training.event_log import load_events
    from training.matrix import DEFAULT_WEIGHTS
    from training.publish import publish

    publish(
        store,
        load_events(synthetic.events).frame,
        load_catalogue(synthetic.items),
        DEFAULT_WEIGHTS,
        {"model_version": "1"},
        history_length=200,
        popularity_half_life_days=30,
        keep=2,
    )


@dataclass
class Trained:
    settings: Settings
    result: object


@pytest.fixture(scope="session")
def trained(redis_server, synthetic, tmp_path_factory) -> Trained:
    """One real training run on the synthetic log: MLflow sqlite store + real Redis."""
    from training.pipeline import TrainConfig, train

    settings = make_settings(
        redis_server.url, tmp_path_factory.mktemp("mlflow"), key_prefix="it", model_poll_seconds=0.5
    )
    result = train(settings, TrainConfig(events=synthetic.events, items=synthetic.items))
    return Trained(settings, result)
