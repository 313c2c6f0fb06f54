"""`make up` / `make down` (python -m training up|down): a local omnirec left running, the
grpcurl lines it prints working as printed, /metrics showing the calls, `make serve`'s
path (serve --env-file) serving the same model and features, and down stopping it all."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import grpc
import pytest

from devtools.redis_server import free_port
from omnirec.v1 import recommender_pb2 as pb
from omnirec.v1 import recommender_pb2_grpc as pb_grpc

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    folder = tmp_path_factory.mktemp("stack") / "s"
    env = {
        **os.environ,
        "OMNIREC_STACK_DIR": str(folder),
        "OMNIREC_PORT": str(free_port()),
        "OMNIREC_METRICS_PORT": str(free_port()),
        "OMNIREC_STACK_REDIS_PORT": str(free_port()),
        # grpcurl comes with the dev dependencies, next to this interpreter.
        "PATH": f"{BIN}:{os.environ.get('PATH', '')}",
    }
    for name in ("REDIS_URL", "MLFLOW_TRACKING_URI", "OMNIREC_IDENTITY_SECRET"):
        env.pop(name, None)
    yield folder, env
    subprocess.run([sys.executable, "-m", "training", "down"], env=env, timeout=120)


def alive(pid: int) -> bool:
    """Running (an exited process nobody reaped yet is not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def training(env, *args):
    return subprocess.run(
        [sys.executable, "-m", "training", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_up_leaves_a_service_whose_printed_lines_work_and_down_stops_it(stack):
    folder, env = stack
    first = training(env, "up", "--users", "300", "--items", "200", "--days", "20")
    assert first.returncode == 0, first.stderr[-2000:]
    assert "training (the model chosen by validation" in first.stdout
    lines = [line.strip() for line in first.stdout.splitlines()]
    calls = [line for line in lines if line.startswith(("grpcurl ", "curl "))]
    assert len(calls) == 5
    for line in calls[:-1]:
        done = subprocess.run(line, shell=True, env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, (line, done.stderr)
        assert done.stdout.strip()
    assert (
        '"items"'
        in subprocess.run(calls[1], shell=True, env=env, capture_output=True, text=True).stdout
    )
    if shutil.which("curl"):
        scraped = subprocess.run(calls[-1], shell=True, env=env, capture_output=True, text=True)
        text = scraped.stdout
    else:  # a minimal Debian has no curl: read the same address without it
        url = calls[-1].split()[2]
        with urllib.request.urlopen(url, timeout=5) as reply:
            text = reply.read().decode()
    assert 'grpc_method="Recommend"' in text
    assert 'grpc_method="TrackEvents"' in text
    # The settings file holds a secret made once; only its owner reads it.
    assert oct((folder / "env").stat().st_mode & 0o777) == "0o600"
    again = training(env, "up")
    assert again.returncode == 0 and "already up" in again.stdout

    pids = [int((folder / f"{name}.pid").read_text()) for name in ("service", "redis")]
    stopped = training(env, "down")
    assert stopped.returncode == 0 and "stopped service" in stopped.stdout
    assert not any(alive(pid) for pid in pids)

    # Up again: the model and data are kept, nothing is retrained.
    back = training(env, "up")
    assert back.returncode == 0, back.stderr[-2000:]
    assert "already trained" in back.stdout and "generating" not in back.stdout


def test_serve_with_the_stacks_env_file_serves_the_same_model(stack):
    """`make serve` after `make up`: `serve --env-file` takes the stack's settings;
    a variable set in the environment (here the port) wins over the file."""
    folder, env = stack
    assert training(env, "up").returncode == 0
    port = free_port()
    serve_env = {**env, "OMNIREC_PORT": str(port), "OMNIREC_METRICS_PORT": "0"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "service", "serve", "--env-file", str(folder / "env")],
        env=serve_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert f"on port {port}" in proc.stdout.readline()
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            reply = pb_grpc.RecommenderStub(channel).Recommend(
                pb.RecommendRequest(user_id="u00000", limit=3), timeout=10
            )
        assert reply.model_version == "omnirec/1" and len(reply.items) == 3
        assert any(r.reason != "popular" for r in reply.items)  # features are there
        metrics_port = next(
            line.split("=", 1)[1]
            for line in (folder / "env").read_text().splitlines()
            if line.startswith("OMNIREC_METRICS_PORT=")
        )
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as r:
            assert b"omnirec_model_info" in r.read()  # the stack's own service, still up
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


def test_a_broken_env_file_is_one_line(tmp_path):
    bad = tmp_path / "env"
    bad.write_text("REDIS_URL=redis://127.0.0.1:1/0\nnot a setting\n")
    done = subprocess.run(
        [sys.executable, "-m", "service", "serve", "--env-file", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.strip() == f"omnirec serve: error: --env-file {bad}, line 2: not NAME=value"


def test_the_readmes_python_client_works(stack):
    """The README's client, as printed, against the stack (its port swapped in)."""
    folder, env = stack
    assert training(env, "up").returncode == 0
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    code = readme.split("```python\n", 1)[1].split("```", 1)[0]
    code = code.replace("127.0.0.1:50051", f"127.0.0.1:{env['OMNIREC_PORT']}")
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 10 and all(len(line.split(" ", 2)) == 3 for line in lines)
