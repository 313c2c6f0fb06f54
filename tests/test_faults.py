"""Faults with real parts: Redis going away and coming back, no model yet, SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from devtools.redis_server import LocalRedis, free_port
from omnirec.v1 import recommender_pb2 as pb
from omnirec.v1 import recommender_pb2_grpc as pb_grpc
from service.api.server import build_server
from service.registry import ModelRegistry
from service.store import FeatureStore
from service.store.codecs import UserFeatures
from service.store.plans import command, connect
from tests.conftest import deployment_env

pytestmark = pytest.mark.integration


def wait_for(check, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return False


def test_redis_outage_is_unavailable_then_recovers_by_itself(trained, truth, tmp_path):
    own_redis = LocalRedis(tmp_path)
    settings = replace(trained.settings, redis_url=own_redis.url, port=0, host="127.0.0.1")
    model = ModelRegistry(settings).load_alias("champion")
    store = FeatureStore(connect(own_redis.url), "outage")
    user = sorted(truth["users"])[0]
    store.publish([(user, UserFeatures([("i0001", "view", 1)]))], {"i0001": 1.0}, {}, {})
    running = build_server(settings, model, store)
    request = pb.RecommendRequest(user_id=user, limit=5)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = pb_grpc.RecommenderStub(channel)
            health = health_pb2_grpc.HealthStub(channel)

            def status():
                return health.Check(health_pb2.HealthCheckRequest(), timeout=5).status

            assert len(stub.Recommend(request, timeout=5).items) == 5
            own_redis.stop()
            with pytest.raises(grpc.RpcError) as err:
                stub.Recommend(request, timeout=5)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "Redis unreachable" in err.value.details()
            assert wait_for(lambda: status() == health_pb2.HealthCheckResponse.NOT_SERVING)

            own_redis.start()
            assert wait_for(lambda: status() == health_pb2.HealthCheckResponse.SERVING)
            assert len(stub.Recommend(request, timeout=5).items) == 5
    finally:
        running.stop(grace=1)
        own_redis.stop()


def serve_env(settings, **extra):
    return {**os.environ, **deployment_env(settings), "OMNIREC_GRACE_SECONDS": "5", **extra}


def test_serve_without_a_registered_model_says_so_and_exits(tmp_path, redis_server):
    env = serve_env(replace_settings_for(tmp_path, redis_server.url), OMNIREC_PORT=str(free_port()))
    done = subprocess.run(
        [sys.executable, "-m", "service", "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert done.returncode == 2
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("omnirec serve: error: no model version of 'omnirec'")
    assert "champion" in last and "Traceback" not in done.stderr


def replace_settings_for(tmp_path, redis_url):
    from tests.conftest import make_settings

    return make_settings(redis_url, tmp_path)


def test_sigterm_finishes_calls_in_flight_then_exits_cleanly(trained, truth):
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "service", "serve", "--port", str(port)],
        env=serve_env(trained.settings),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        assert f"on port {port}" in line
        codes: list = []
        ok = [0]
        stop = threading.Event()

        def client():
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = pb_grpc.RecommenderStub(channel)
                user = sorted(truth["users"])[1]
                while not stop.is_set():
                    try:
                        stub.Recommend(pb.RecommendRequest(user_id=user, limit=10), timeout=5)
                        ok[0] += 1
                    except grpc.RpcError as exc:
                        codes.append((time.monotonic(), exc.code()))
                        return

        threads = [threading.Thread(target=client) for _ in range(4)]
        for t in threads:
            t.start()
        time.sleep(1.0)
        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        stop.set()
        for t in threads:
            t.join(timeout=10)
        stderr = proc.stderr.read()
        assert ok[0] > 10
        # Only calls made after the signal are refused; nothing failed before it.
        assert all(at >= signalled for at, _ in codes)
        assert {code for _, code in codes} <= {
            grpc.StatusCode.UNAVAILABLE,
            grpc.StatusCode.CANCELLED,
        }
        assert "SIGTERM received" in stderr and "stopped" in stderr
    finally:
        if proc.poll() is None:
            proc.kill()


class SlowStore(FeatureStore):
    """The real store, but each read first waits a second on Redis (a blocking pop of a
    list nobody fills): a call that is surely in flight."""

    def person_plan(self, *args, **kwargs):
        yield [command("blpop", ["slow-store:never"], timeout=1)]
        return (yield from super().person_plan(*args, **kwargs))


def test_stop_lets_a_call_in_flight_finish(trained, truth):
    settings = replace(trained.settings, port=0, host="127.0.0.1")
    model = ModelRegistry(settings).load_alias("champion")
    store = SlowStore(connect(settings.redis_url, timeout_seconds=5), settings.key_prefix)
    running = build_server(settings, model, store)
    result: dict = {}
    with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        stub = pb_grpc.RecommenderStub(channel)
        request = pb.RecommendRequest(user_id=sorted(truth["users"])[0], limit=3)
        call = threading.Thread(
            target=lambda: result.setdefault("reply", stub.Recommend(request, timeout=10))
        )
        call.start()
        time.sleep(0.3)
        started = time.monotonic()
        running.stop(grace=5)
        call.join()
    assert len(result["reply"].items) == 3
    # stop() waited for the call rather than cutting it off.
    assert time.monotonic() - started >= 0.5


def test_several_processes_share_the_port_and_stop_together(trained, truth):
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "service", "serve", "--port", str(port), "--processes", "2"],
        env=serve_env(trained.settings),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lines = [proc.stdout.readline(), proc.stdout.readline()]
        assert all(f"on port {port}" in line for line in lines), lines
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        assert len(children) == 2
        user = sorted(truth["users"])[0]
        for _ in range(10):  # new connections land on either process
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                reply = pb_grpc.RecommenderStub(channel).Recommend(
                    pb.RecommendRequest(user_id=user, limit=3), timeout=10
                )
                assert len(reply.items) == 3
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert not any(Path(f"/proc/{child}").exists() for child in children)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_serve_and_train_refuse_to_start_without_the_identity_secret(trained, tmp_path):
    env = serve_env(trained.settings, OMNIREC_PORT=str(free_port()))
    env.pop("OMNIREC_IDENTITY_SECRET")
    served = subprocess.run(
        [sys.executable, "-m", "service", "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert served.returncode == 2
    assert "OMNIREC_IDENTITY_SECRET must be set" in served.stderr.strip().splitlines()[-1]
    events = tmp_path / "e.csv"
    events.write_text("user_id,item_id,event_type,timestamp\nu,i,view,1\n")
    trained_ = subprocess.run(
        [sys.executable, "-m", "training", "train", "--events", str(events)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert trained_.returncode == 2
    assert "OMNIREC_IDENTITY_SECRET must be set" in trained_.stderr
    assert "Traceback" not in served.stderr + trained_.stderr
