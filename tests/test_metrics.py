"""Prometheus metrics (OMNIREC_METRICS_PORT, a contract): the standard gRPC server series,
the served model, event intake, Redis and caches — scraped over HTTP from a real
`python -m service serve`, with one process and with several behind one endpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from devtools.redis_server import free_port
from omnirec.v1 import recommender_pb2 as pb
from omnirec.v1 import recommender_pb2_grpc as pb_grpc
from service.access import key_entry, new_key
from service.config import ConfigError, load_settings
from tests.conftest import deployment_env

pytestmark = pytest.mark.integration

RECOMMENDER = "omnirec.v1.Recommender"


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``/metrics`` as (sample name, sorted labels) → value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples, name: str, **labels: str) -> float:
    """Sum of ``name`` over the samples whose labels include ``labels``."""
    return sum(
        v for (n, have), v in samples.items() if n == name and set(labels.items()) <= set(have)
    )


def start(settings, *args: str, **env: str) -> tuple[subprocess.Popen, int, int]:
    port, metrics_port = free_port(), free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "service", "serve", "--port", str(port), *args],
        env={
            **os.environ,
            **deployment_env(settings),
            "OMNIREC_METRICS_PORT": str(metrics_port),
            "OMNIREC_GRACE_SECONDS": "5",
            "OMNIREC_DRAIN_SECONDS": "0",
            **env,
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    return proc, port, metrics_port


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_several_processes_are_summed_behind_one_endpoint(trained, truth):
    proc, port, metrics_port = start(trained.settings, "--processes", "2")
    try:
        lines = [proc.stdout.readline(), proc.stdout.readline()]
        assert all(f"on port {port}" in line for line in lines), lines
        user = sorted(truth["users"])[0]
        for n in range(12):  # a new connection each time: both processes answer some
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = pb_grpc.RecommenderStub(channel)
                if n < 10:
                    assert len(stub.Recommend(pb.RecommendRequest(user_id=user, limit=3)).items)
                else:
                    with pytest.raises(grpc.RpcError) as err:
                        stub.Recommend(pb.RecommendRequest(user_id=user, limit=-1), timeout=10)
                    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            reply = pb_grpc.RecommenderStub(channel).TrackEvents(
                pb.TrackEventsRequest(
                    events=[
                        pb.Event(user_id="metrics-1", item_id="i0001", event_type="view"),
                        pb.Event(user_id="metrics-1", item_id="i0002", event_type="view"),
                        pb.Event(user_id="metrics-1", item_id="i0003", event_type="purchase"),
                        pb.Event(user_id="metrics-1", item_id="i0004", event_type="teleport"),
                    ]
                ),
                timeout=10,
            )
            assert (reply.accepted, reply.rejected) == (3, 1)
        samples = scrape(metrics_port)
        recommend = {"grpc_service": RECOMMENDER, "grpc_method": "Recommend"}
        assert value(samples, "grpc_server_started_total", **recommend) == 12
        assert value(samples, "grpc_server_handled_total", **recommend, grpc_code="OK") == 10
        assert (
            value(samples, "grpc_server_handled_total", **recommend, grpc_code="INVALID_ARGUMENT")
            == 2
        )
        assert value(samples, "grpc_server_handling_seconds_count", **recommend) == 12
        assert value(samples, "grpc_server_handling_seconds_bucket", **recommend, le="+Inf") == 12
        assert value(samples, "grpc_server_handled_total", grpc_method="TrackEvents") == 1
        assert value(samples, "omnirec_model_info", model_version="omnirec/1") == 1
        assert value(samples, "omnirec_events_total", event_type="view", outcome="accepted") == 2
        assert value(samples, "omnirec_events_total", event_type="purchase") == 1
        assert value(samples, "omnirec_events_total", event_type="other", outcome="rejected") == 1
        assert value(samples, "omnirec_redis_round_trip_seconds_count") >= 11
        lookups = value(samples, "omnirec_cache_lookups_total", cache="published_features")
        assert lookups >= 10
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        stop(proc)


def test_refused_calls_are_counted_with_their_code(trained, tmp_path):
    key = new_key()
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps({"keys": [key_entry("web", ["recommend"], key)]}))
    proc, port, metrics_port = start(
        trained.settings, OMNIREC_API_KEYS_FILE=str(keys), OMNIREC_HOST="127.0.0.1"
    )
    try:
        assert f"on port {port}" in proc.stdout.readline()
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.RecommenderStub(channel)
            with pytest.raises(grpc.RpcError) as err:
                stub.Recommend(pb.RecommendRequest(user_id="x", limit=3), timeout=10)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            bearer = (("authorization", f"Bearer {key}"),)
            with pytest.raises(grpc.RpcError) as err:
                stub.TrackEvents(pb.TrackEventsRequest(), metadata=bearer, timeout=10)
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
            stub.Recommend(pb.RecommendRequest(user_id="x", limit=3), metadata=bearer, timeout=10)
        samples = scrape(metrics_port)
        handled = "grpc_server_handled_total"
        assert value(samples, handled, grpc_method="Recommend", grpc_code="UNAUTHENTICATED") == 1
        assert (
            value(samples, handled, grpc_method="TrackEvents", grpc_code="PERMISSION_DENIED") == 1
        )
        assert value(samples, handled, grpc_method="Recommend", grpc_code="OK") == 1
    finally:
        stop(proc)


def test_a_busy_metrics_port_stops_serve_with_one_line(trained):
    proc, port, metrics_port = start(trained.settings)
    try:
        assert f"on port {port}" in proc.stdout.readline()
        other = subprocess.run(
            [sys.executable, "-m", "service", "serve", "--port", str(free_port())],
            env={
                **os.environ,
                **deployment_env(trained.settings),
                "OMNIREC_METRICS_PORT": str(metrics_port),
            },
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert other.returncode == 2
        assert other.stderr.strip().splitlines()[-1].startswith("omnirec serve: error:")
    finally:
        stop(proc)


def test_metrics_port_must_differ_from_the_grpc_port():
    with pytest.raises(ConfigError, match="OMNIREC_METRICS_PORT"):
        load_settings({"OMNIREC_PORT": "9000", "OMNIREC_METRICS_PORT": "9000"})
    assert load_settings({"OMNIREC_METRICS_PORT": "9100"}).metrics_port == 9100
