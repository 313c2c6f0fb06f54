"""EASE: the closed form, its bundle, its size limit, serving with it, and one real
`train --model ease` run served over gRPC."""

from __future__ import annotations

from dataclasses import replace

import grpc
import numpy as np
import pytest
import scipy.linalg.lapack
import scipy.sparse as sp

from omnirec.v1 import recommender_pb2 as pb
from omnirec.v1 import recommender_pb2_grpc as pb_grpc
from service.api.server import build_server
from service.bundle import BundleError, ModelBundle
from service.catalogue import Catalogue
from service.errors import BadInput
from service.recommender import RankingOptions, Recommender
from service.registry import ModelRegistry
from service.store import FeatureStore
from service.store.codecs import UserFeatures
from service.store.plans import connect
from service.store.reads import ServingView
from tests.conftest import deployment_env, make_settings
from training import ease
from training.__main__ import main as training_main
from training.models import ModelParams, fit, to_bundle

# Weighted interactions (users × items); EASE reads any positive value as 1.
MATRIX = sp.csr_matrix(
    np.array(
        [
            [1, 4, 0, 0, 10],
            [1, 1, 1, 0, 0],
            [0, 6, 1, 1, 0],
            [10, 0, 0, 4, 1],
            [1, 1, 0, 0, 1],
            [0, 0, 1, 1, 0],
        ],
        dtype=np.float32,
    )
)
ITEMS = np.array(["a", "b", "c", "d", "e"])


def closed_form(x: np.ndarray, lam: float) -> np.ndarray:
    """Steck's B, worked out independently: P = (XᵀX + λI)⁻¹, B = I − P diag(1/diag P)."""
    n = x.shape[1]
    p = np.linalg.solve(x.T @ x + lam * np.eye(n), np.eye(n))
    return np.eye(n) - p / np.diag(p)[None, :]


def test_fit_matches_the_closed_form_with_a_zero_diagonal():
    b = ease.ease_weights(MATRIX, 2.0)
    expected = closed_form((MATRIX.toarray() > 0).astype(np.float64), 2.0)
    assert b.dtype == np.float32 and b.shape == (5, 5)
    np.testing.assert_allclose(b, expected, rtol=1e-5, atol=1e-6)
    assert np.all(np.diag(b) == 0)


def test_the_default_lambda_is_eases_own_and_an_explicit_one_wins():
    assert ModelParams(kind="ease").regularization == ease.EASE_REGULARIZATION
    assert ModelParams(kind="als").regularization == 5.0
    assert ModelParams(kind="ease", regularization=7.0).relevant() == {
        "kind": "ease",
        "regularization": 7.0,
    }


def test_a_catalogue_over_the_limit_is_refused_naming_limit_and_count(monkeypatch):
    monkeypatch.setattr(ease, "MAX_EASE_ITEMS", 4)
    with pytest.raises(BadInput, match=r"ease fits at most 4 items .*these events have 5"):
        fit(ModelParams(kind="ease"), MATRIX)


def test_bundle_round_trip_keeps_the_dense_matrix(tmp_path):
    model = fit(ModelParams(kind="ease", regularization=1.0), MATRIX)
    bundle = to_bundle(model, ModelParams(kind="ease", regularization=1.0), ITEMS, ITEMS, {})
    bundle.save(tmp_path)
    loaded = ModelBundle.load(tmp_path)
    assert loaded.kind == "ease" and loaded.metadata["params"]["regularization"] == 1.0
    np.testing.assert_array_equal(loaded.similarity, model.similarity)
    with np.load(tmp_path / "arrays.npz", allow_pickle=False) as npz:
        assert "similarity" in npz.files
    with pytest.raises(BundleError, match="ease a dense one"):
        ModelBundle("ease", ITEMS, ITEMS, similarity=sp.csr_matrix(model.similarity))


def test_holdout_ranking_filters_seen_items_best_first():
    model = fit(ModelParams(kind="ease", regularization=1.0), MATRIX)
    ids, scores = model.recommend(np.arange(6), MATRIX, N=2)
    for row, seen in enumerate(MATRIX.toarray() > 0):
        expected = np.asarray(MATRIX[row] @ model.similarity).ravel()
        expected[seen] = -np.inf
        assert ids[row].tolist() == np.argsort(-expected, kind="stable")[:2].tolist()
        assert scores[row, 0] >= scores[row, 1]


def test_serving_ranks_the_co_consumed_item_first_and_says_why():
    # Everybody who has "tent" also has "stove"; "mug" and "map" are common otherwise.
    rng = np.random.default_rng(3)
    items = np.array(["tent", "stove", "mug", "map", "hat", "sock"])
    rows = (rng.random((200, 6)) < 0.25).astype(np.float32)
    rows[:, 2:4] = rng.random((200, 2)) < 0.6
    rows[:40, 0] = rows[:40, 1] = 1
    rows[40:, 0] = 0
    model = fit(ModelParams(kind="ease", regularization=10.0), sp.csr_matrix(rows))
    bundle = to_bundle(model, ModelParams(kind="ease"), np.array(["u"]), items, {})
    recommender = Recommender(bundle)
    person = ServingView("p", UserFeatures([("tent", "view", 1)], set(), set()), [], [])
    recs = recommender.recommend("someone", person, Catalogue(0, {}), RankingOptions(3))
    assert recs[0].item_id == "stove" and recs[0].reason == "recent: tent"
    similar = recommender.similar_items(
        "tent", Catalogue(0, {}), RankingOptions(1), None, [], False
    )
    assert [(r.item_id, r.reason) for r in similar] == [("stove", "similar: tent")]


@pytest.mark.integration
def test_train_model_ease_registers_and_serves(
    redis_server, synthetic, truth, tmp_path, monkeypatch
):
    settings = make_settings(redis_server.url, tmp_path, key_prefix="ease")
    for name, value in deployment_env(settings).items():
        monkeypatch.setenv(name, value)
    argv = ["train", "--events", str(synthetic.events), "--items", str(synthetic.items)]
    assert training_main([*argv, "--model", "ease"]) == 0
    registry = ModelRegistry(settings)
    model = registry.load_alias("champion")
    assert model.bundle.kind == "ease"
    assert model.bundle.metadata["params"] == {
        "kind": "ease",
        "regularization": ease.EASE_REGULARIZATION,
    }
    running = build_server(
        replace(settings, port=0, host="127.0.0.1"),
        model,
        FeatureStore(connect(settings.redis_url), settings.key_prefix),
    )
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = pb_grpc.RecommenderStub(channel)
            reply = stub.Recommend(
                pb.RecommendRequest(user_id=sorted(truth["users"])[0], limit=5), timeout=5
            )
    finally:
        running.stop(grace=1)
    assert reply.model_version == "omnirec/1" and len(reply.items) == 5
    assert any(r.reason.startswith(("recent: ", "similar: ")) for r in reply.items)


def test_the_inverse_falls_back_to_float64_where_float32_is_not_positive_definite():
    # A rank-6 Gram matrix of 40 items with λ 1e-6: exact in float32, but its float32
    # factorisation loses positive definiteness (condition number ~1e8).
    x = (np.random.default_rng(0).random((6, 40)) < 0.5).astype(np.float32)
    gram = x.T @ x
    gram[np.diag_indices(40)] += np.float32(1e-6)
    assert scipy.linalg.lapack.spotrf(gram.copy(), lower=True)[1] > 0
    p = ease.spd_inverse(gram.copy())
    exact = np.linalg.inv(gram.astype(np.float64))
    assert p.dtype == np.float32
    np.testing.assert_allclose(p, exact, rtol=1e-4, atol=1e-4 * np.abs(exact).max())
    with pytest.raises(np.linalg.LinAlgError, match="not positive definite"):
        ease.spd_inverse(np.array([[1.0, 2.0], [2.0, 1.0]], dtype=np.float32))


def test_ease_fits_a_16k_item_shop_on_this_machine():
    """At 16,198 items the general inverse crashed this machine's default OpenBLAS kernel
    (issue 23). The Cholesky fit, in a child process so that a crash fails this test with
    its reason instead of taking pytest down, matches columns of B solved independently
    (conjugate gradients on the sparse Gram matrix, float64)."""
    from scipy.sparse.linalg import cg

    from training.guarded_fit import fit_bundle

    rng = np.random.default_rng(5)
    n_users, n_items, per_user = 2_400, 16_198, 25
    popularity = 1.0 / np.arange(1, n_items + 1) ** 0.7
    cols = rng.choice(n_items, size=n_users * per_user, p=popularity / popularity.sum())
    rows = np.repeat(np.arange(n_users), per_user)
    x = sp.csr_matrix((np.ones(len(cols), np.float32), (rows, cols)), shape=(n_users, n_items))
    x.data[:] = 1.0  # repeats summed: back to binary
    fitted = fit_bundle(
        ModelParams(kind="ease"),
        x,
        np.array([f"u{u}" for u in range(n_users)]),
        np.array([f"i{i}" for i in range(n_items)]),
        {},
    )
    b = fitted.bundle.similarity
    assert b.shape == (n_items, n_items) and b.dtype == np.float32
    gram = (x.T @ x).astype(np.float64) + 300.0 * sp.identity(n_items)
    for j in (0, 1, 57, 4_000, n_items - 1):
        e = np.zeros(n_items)
        e[j] = 1.0
        p, info = cg(gram, e, rtol=1e-12)
        assert info == 0
        expected = -p / p[j]
        expected[j] = 0.0
        np.testing.assert_allclose(b[:, j], expected, atol=1e-5 * np.abs(expected).max())
