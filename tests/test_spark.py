"""``train --backend spark`` with real parts: Spark ``local[2]``, an MLflow sqlite store,
a redis-server and a gRPC server on loopback.

Spark needs Java 17+ and pyspark (the ``spark`` extra): ``scripts/ensure-spark`` installs
them for these tests, as ``make`` installs redis-server for the others, and where they
cannot be had the tests that need them skip with the line saying why. The error-line
tests need neither.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import grpc
import numpy as np
import pytest
import scipy.sparse as sp

from devtools.redis_server import free_port
from omnirec.v1 import recommender_pb2 as pb
from omnirec.v1 import recommender_pb2_grpc as pb_grpc
from service.api.server import build_server
from service.config import Settings
from service.registry import ModelRegistry
from service.store import FeatureStore
from service.store.plans import connect
from tests.conftest import deployment_env, make_settings
from training.__main__ import main as training_main
from training.event_log import load_events
from training.matrix import DEFAULT_WEIGHTS, build_interactions
from training.models import ModelParams, fit, to_bundle

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
#: Two cores, as on the machines the suite runs on; few iterations keep it fast.
MASTER = "local[2]"
ITERATIONS = 5


@pytest.fixture(scope="module")
def spark(request):
    """Java 17+ and pyspark installed (or a skip saying why), then a running session."""
    # Installing takes a minute or two the first time: let the person see it happen.
    capture = request.config.pluginmanager.getplugin("capturemanager")
    lines = []
    with capture.global_and_fixture_disabled():
        ensure = subprocess.Popen(
            [str(ROOT / "scripts" / "ensure-spark"), sys.executable],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for line in ensure.stderr:
            lines.append(line.strip())
            if line.startswith(("installing", "Spark needs")):
                print(f"\n{line.strip()}", file=sys.stderr, flush=True)
    if ensure.wait() != 0:
        why = next((line for line in lines if line.startswith("error:")), lines[-1:] or "?")
        pytest.skip(f"spark tests skipped: {str(why).removeprefix('error: ')}")
    importlib.invalidate_caches()
    from training import spark_als

    spark_als.session(MASTER)
    yield spark_als
    spark_als.stop()


def test_fit_maps_ids_back_and_leaves_unrated_rows_zero(spark):
    """Two taste groups, interleaved by id (user u and item i belong to group id % 2), one
    person and one item with no rating: each person's best items come back from their own
    group, so every id went to Spark and back to its own row."""
    rng = np.random.default_rng(3)
    users, items = 61, 41
    rows, cols = [], []
    for u in range(users - 1):
        own = [i for i in range(items - 1) if i % 2 == u % 2]
        for i in rng.choice(own, 8, replace=False):
            rows.append(u)
            cols.append(i)
    weights = rng.choice([1.0, 4.0, 10.0], len(rows)).astype(np.float32)
    matrix = sp.csr_matrix((weights, (rows, cols)), shape=(users, items))
    params = ModelParams(factors=8, iterations=ITERATIONS, regularization=0.5, backend="spark")
    losses = []
    model = fit(params, matrix, on_iteration=lambda *step: losses.append(step))

    assert model.user_factors.shape == (users, 8) and model.item_factors.shape == (items, 8)
    assert model.user_factors.dtype == np.float32 == model.item_factors.dtype
    assert not model.user_factors[-1].any() and not model.item_factors[-1].any()
    scores = model.user_factors[:-1] @ model.item_factors[:-1].T
    same = (np.arange(users - 1)[:, None] % 2) == (np.arange(items - 1)[None, :] % 2)
    assert scores[same].mean() > scores[~same].mean() + 0.1
    # implicit's own recommend works on Spark's factors (the holdout's model ranker).
    ids, _ = model.recommend(np.arange(users - 1), matrix[:-1], N=3)
    assert ((ids % 2) == (np.arange(users - 1)[:, None] % 2)).mean() > 0.9
    # One loss, after the fit, under implicit's name and step numbering.
    assert [(step, name) for step, _, name, _ in losses] == [(ITERATIONS - 1, "train_loss")]
    assert np.isfinite(losses[0][3])


@dataclass
class SparkRun:
    settings: Settings
    events: object


@pytest.fixture(scope="module")
def spark_run(spark, redis_server, synthetic, tmp_path_factory) -> SparkRun:
    """The training command a person runs, with the spark backend, on the synthetic log."""
    settings = make_settings(
        redis_server.url,
        tmp_path_factory.mktemp("spark-mlflow"),
        key_prefix="spark",
        spark_master=MASTER,
    )
    env = {**deployment_env(settings), "OMNIREC_SPARK_MASTER": MASTER}
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        argv = ["train", "--backend", "spark", "--iterations", str(ITERATIONS)]
        argv += ["--events", str(synthetic.events), "--items", str(synthetic.items)]
        assert training_main(argv) == 0
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    return SparkRun(settings, load_events(synthetic.events).frame)


def test_run_records_the_backend_and_the_metrics_of_an_implicit_run(spark_run):
    registry = ModelRegistry(spark_run.settings)
    version = registry.client.get_model_version(registry.name, "1")
    run = registry.client.get_run(version.run_id)
    assert run.data.params["model.backend"] == "spark"
    assert run.data.params["model.kind"] == "als"
    assert run.data.params["model.iterations"] == str(ITERATIONS)
    for name in ("ndcg_at_10", "baseline_popularity_ndcg_at_10", "train_seconds"):
        assert name in run.data.metrics
    assert run.data.metrics["ndcg_at_10"] > 1.2 * run.data.metrics["baseline_popularity_ndcg_at_10"]
    assert len(registry.client.get_metric_history(run.info.run_id, "train_loss")) == 1
    artifacts = {a.path for a in registry.client.list_artifacts(run.info.run_id, "bundle")}
    assert {"bundle/manifest.json", "bundle/arrays.npz"} <= artifacts
    assert registry.version_tags("1")["omnirec.kind"] == "als"


def test_bundle_has_the_implicit_bundles_shape_and_ids(spark_run):
    bundle = ModelRegistry(spark_run.settings).load_alias("champion").bundle
    assert bundle.metadata["params"]["backend"] == "spark"
    full = build_interactions(spark_run.events, DEFAULT_WEIGHTS)
    params = ModelParams(iterations=ITERATIONS)
    implicit = to_bundle(fit(params, full.matrix), params, full.user_ids, full.item_ids, {})
    assert np.array_equal(bundle.user_ids, implicit.user_ids)
    assert np.array_equal(bundle.item_ids, implicit.item_ids)
    for name in ("user_factors", "item_factors"):
        ours, theirs = getattr(bundle, name), getattr(implicit, name)
        assert ours.shape == theirs.shape and ours.dtype == theirs.dtype
    # Ids round-trip: each person's strongest item ranks near the top of their own
    # Spark factors, which holds only if row u of the factors is the bundle's user u.
    scores = bundle.user_factors @ bundle.item_factors.T
    rank_of_top = [
        int((scores[u] > scores[u, full.matrix[u].toarray().argmax()]).sum())
        for u in range(full.matrix.shape[0])
    ]
    assert np.median(rank_of_top) < 0.1 * full.matrix.shape[1]


def test_spark_model_serves_known_people_personal_items(spark_run):
    settings = replace(spark_run.settings, port=0, host="127.0.0.1")
    registry = ModelRegistry(settings)
    store = FeatureStore(connect(settings.redis_url), settings.key_prefix)
    running = build_server(settings, registry.load_alias("champion"), store)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = pb_grpc.RecommenderStub(channel)
            for user in sorted(spark_run.events["user_id"].unique())[:10]:
                reply = stub.Recommend(pb.RecommendRequest(user_id=user, limit=10), timeout=10)
                assert len(reply.items) == 10
                assert reply.model_version == "omnirec/1"
                assert all(
                    r.reason.startswith(("recent: ", "similar: ", "after: ", "personalised"))
                    for r in reply.items
                )
    finally:
        running.stop(grace=1)


def _without_pyspark(tmp_path: Path, env: dict[str, str]) -> None:
    """``env`` as where pyspark is not installed: a ``pyspark`` that fails to import comes
    first on the path, and a stand-in Java 17 answers, whatever this machine has."""
    folder = tmp_path / "no-pyspark"
    (folder / "pyspark").mkdir(parents=True)
    (folder / "pyspark" / "__init__.py").write_text("raise ImportError('no pyspark here')\n")
    env["PYTHONPATH"] = os.pathsep.join([str(folder), str(ROOT)])
    java = tmp_path / "java17" / "bin" / "java"
    java.parent.mkdir(parents=True)
    java.write_text("#!/bin/sh\necho 'openjdk version \"17.0.1\" 2021-10-19' >&2\n")
    java.chmod(0o755)
    env["JAVA_HOME"] = str(java.parent.parent)


@pytest.mark.parametrize(
    "case, fragment",
    [
        ("--model bpr", "--backend spark fits als only"),
        ("master nonsense", "OMNIREC_SPARK_MASTER='nonsense': must be local"),
        ("master not answering", "no Spark master answers"),
        ("no java", "needs Java 17+: JAVA_HOME="),
        ("no pyspark", "needs pyspark, which is not installed"),
    ],
)
def test_what_spark_cannot_do_is_one_readable_line(tmp_path, case, fragment):
    (tmp_path / "e.csv").write_text("user_id,item_id,event_type,timestamp\nu,i,view,1\n")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PYSPARK_GATEWAY")},
        "OMNIREC_IDENTITY_SECRET": "spark-test-secret-0123456789",
        "OMNIREC_SPARK_MASTER": MASTER,
    }
    args = ["train", "--backend", "spark", "--events", "e.csv", "--no-publish"]
    if case == "--model bpr":
        args += ["--model", "bpr"]
    elif case == "master nonsense":
        env["OMNIREC_SPARK_MASTER"] = "nonsense"
    elif case == "master not answering":
        env["OMNIREC_SPARK_MASTER"] = f"spark://127.0.0.1:{free_port()}"
    elif case == "no java":
        env["JAVA_HOME"] = str(tmp_path / "no-java")
    else:
        _without_pyspark(tmp_path, env)
    done = subprocess.run(
        [sys.executable, "-m", "training", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("omnirec ")]
    assert len(errors) == 1 and lines[-1] == errors[0], done.stderr
    assert errors[0].startswith("omnirec train: error: ")
    assert fragment in errors[0]
    assert "Traceback" not in done.stderr
