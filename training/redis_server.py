"""A throw-away redis-server on a free loopback port, for the demo, tests and benchmarks.

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


def find_redis_server() -> str:
    """The ``redis-server`` binary, or :class:`OmnirecError` saying how to get one."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise OmnirecError(
            "redis-server not found: install it (Debian: apt-get install redis-server; "
            "`make` does it for you as root) or set REDIS_URL to a running Redis"
        )
    return binary


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

    def __init__(self, workdir: Path, extra_args: Sequence[str] = ()) -> None:
        """``extra_args`` override the defaults (no persistence), e.g. ``("--appendonly",
        "yes", "--appendfsync", "always")``."""
        self.binary = find_redis_server()
        self.workdir = Path(workdir).resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
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
