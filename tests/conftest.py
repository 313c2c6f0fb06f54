"""Shared fixtures. Integration fixtures start real servers: a redis-server process on a
free loopback port, an MLflow sqlite store in a temporary folder, a gRPC server on port 0.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from service.config import Settings, load_settings
from service.registry import quiet_mlflow

quiet_mlflow()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisProcess:
    """A real redis-server on loopback that a test may stop and start again."""

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail(
                "redis-server is missing; `make test` installs it (scripts/ensure-system-deps)"
            )
        self.binary = binary
        self.workdir = workdir
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    server = RedisProcess(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


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
        **extra,
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
