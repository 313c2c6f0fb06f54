"""A throw-away redis-server on a free loopback port, for the demo, tests and benchmarks,
and a throw-away Redis Cluster of three such servers.

No persistence: it holds what a run writes and vanishes with it. ``stop`` then
``start`` restarts it on the same port (empty), which is how tests simulate an outage.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import redis

from service.errors import OmnirecError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find_redis_server(name: str = "redis-server") -> str:
    """The ``redis-server`` binary (or ``redis-cli``, its sibling in the same package), or
    :class:`OmnirecError` saying how to get one."""
    binary = shutil.which(name)
    if binary is None:
        raise OmnirecError(
            f"{name} not found: install it (Debian: apt-get install redis-server; "
            "`make` does it for you as root) or set REDIS_URL to a running Redis"
        )
    return binary


def cluster_port() -> int:
    """A free loopback port whose cluster bus port (the port + 10000) is free too."""
    for _ in range(100):
        port = free_port()
        if port + 10_000 <= 65_535:
            with socket.socket() as bus:
                try:
                    bus.bind(("127.0.0.1", port + 10_000))
                except OSError:
                    continue
            return port
    raise OmnirecError("found no free pair of ports for a Redis Cluster node")


def answers(url: str, timeout_seconds: float, gone: Callable[[], bool] = lambda: False) -> bool:
    """Whether the Redis at ``url`` answers a PING within ``timeout_seconds`` of trying;
    False at once when ``gone()`` says the server has exited."""
    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + timeout_seconds
    try:
        while True:
            try:
                client.ping()
                return True
            except redis.ConnectionError:
                if time.monotonic() > deadline or gone():
                    return False
                time.sleep(0.05)
    finally:
        client.close()


class LocalRedis:
    """Starts at construction; ``url`` points at it."""

    def __init__(
        self, workdir: Path, extra_args: Sequence[str] = (), port: int | None = None
    ) -> None:
        """``extra_args`` override the defaults (no persistence), e.g. ``("--appendonly",
        "yes", "--appendfsync", "always")``; ``port``: a free one when None."""
        self.binary = find_redis_server()
        self.workdir = Path(workdir).resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port() if port is None else port
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.extra_args = list(extra_args)
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self, timeout_seconds: float = 10.0) -> None:
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
                *self.extra_args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        process = self.process
        if not answers(self.url, timeout_seconds, gone=lambda: process.poll() is not None):
            self.stop()
            raise OmnirecError(f"redis-server did not start on port {self.port}")

    def kill(self) -> None:
        """SIGKILL, as a crash: nothing is flushed that was not already."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)
            self.process = None

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None


class LocalCluster:
    """A Redis Cluster of ``masters`` throw-away redis-servers (no replicas) on loopback,
    joined by ``redis-cli --cluster create``; starts at construction, ready once every
    node says ``cluster_state:ok``. ``url`` is its ``redis+cluster://`` URL."""

    def __init__(self, workdir: Path, masters: int = 3, timeout_seconds: float = 30.0) -> None:
        self.workdir = Path(workdir).resolve()
        self.nodes: list[LocalRedis] = []
        try:
            for n in range(masters):
                folder = self.workdir / f"node-{n}"
                # A node that finds an old cluster's layout would refuse to join this one.
                (folder / "nodes.conf").unlink(missing_ok=True)
                port = cluster_port()
                self.nodes.append(
                    LocalRedis(
                        folder,
                        (
                            "--cluster-enabled",
                            "yes",
                            "--cluster-config-file",
                            str(folder / "nodes.conf"),
                            # A lost node is noticed in a second (tests stop nodes).
                            "--cluster-node-timeout",
                            "1000",
                        ),
                        port=port,
                    )
                )
            self.ports = [node.port for node in self.nodes]
            self.url = "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.ports)
            self._create(timeout_seconds)
        except BaseException:
            self.stop()
            raise

    def _create(self, timeout_seconds: float) -> None:
        created = subprocess.run(
            [
                find_redis_server("redis-cli"),
                "--cluster",
                "create",
                *(f"127.0.0.1:{p}" for p in self.ports),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            capture_output=True,
            text=True,
            timeout=timeout_seconds,
            check=False,
        )
        if created.returncode != 0:
            tail = (created.stdout + created.stderr).strip().splitlines()[-1:]
            raise OmnirecError(f"redis-cli --cluster create failed: {' '.join(tail)}")
        # Every node must agree before a client asks any of them for the layout.
        deadline = time.monotonic() + timeout_seconds
        for port in self.ports:
            client = redis.Redis(host="127.0.0.1", port=port)
            try:
                while client.cluster("info").get("cluster_state") != "ok":
                    if time.monotonic() > deadline:
                        raise OmnirecError(f"Redis Cluster node {port} never reached state ok")
                    time.sleep(0.05)
            finally:
                client.close()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
