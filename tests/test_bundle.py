import json

import numpy as np
import pytest
import scipy.sparse as sp

from service.bundle import BundleError, ModelBundle


def factor_bundle():
    return ModelBundle(
        kind="als",
        user_ids=np.array(["u1", "u2"]),
        item_ids=np.array(["i1", "i2", "i3"]),
        user_factors=np.arange(4, dtype=np.float32).reshape(2, 2),
        item_factors=np.arange(6, dtype=np.float32).reshape(3, 2),
        metadata={"run_id": "r1", "weights": {"view": 1.0}},
    )


def test_factor_bundle_round_trip_without_pickle(tmp_path):
    original = factor_bundle()
    original.save(tmp_path / "b")
    loaded = ModelBundle.load(tmp_path / "b")
    assert loaded.kind == "als"
    assert loaded.user_ids.tolist() == ["u1", "u2"]
    np.testing.assert_array_equal(loaded.item_factors, original.item_factors)
    np.testing.assert_array_equal(loaded.user_factors, original.user_factors)
    assert loaded.metadata == original.metadata
    # Everything loads with allow_pickle=False: no object arrays in the file.
    with np.load(tmp_path / "b" / "arrays.npz", allow_pickle=False) as npz:
        assert all(npz[name].dtype != object for name in npz.files)


def test_knn_bundle_round_trip(tmp_path):
    sim = sp.csr_matrix(np.array([[0, 0.5], [0.5, 0]], dtype=np.float32))
    ModelBundle("item_knn", np.array(["u"]), np.array(["a", "b"]), similarity=sim).save(tmp_path)
    loaded = ModelBundle.load(tmp_path)
    assert loaded.similarity.toarray().tolist() == [[0, 0.5], [0.5, 0]]


def test_inconsistent_bundles_are_refused():
    with pytest.raises(BundleError, match="item_factors rows"):
        ModelBundle(
            "als",
            np.array(["u"]),
            np.array(["a", "b"]),
            user_factors=np.zeros((1, 2)),
            item_factors=np.zeros((3, 2)),
        )
    with pytest.raises(BundleError, match="unknown model kind"):
        ModelBundle("magic", np.array(["u"]), np.array(["a"]))


def test_missing_or_foreign_bundles_say_what_is_wrong(tmp_path):
    with pytest.raises(BundleError, match="no manifest.json"):
        ModelBundle.load(tmp_path)
    factor_bundle().save(tmp_path)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    manifest["format_version"] = 99
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="bundle format 99"):
        ModelBundle.load(tmp_path)
