"""EASE: the closed-form item-item model (Steck 2019, "Embarrassingly Shallow
Autoencoders for Sparse Data").

B minimises ‖X − XB‖² + λ‖B‖² subject to diag(B) = 0, and has a closed form:

    P = (XᵀX + λI)⁻¹        B = I − P · diag(1 / diag(P))     (so B_ij = −P_ij / P_jj)

A person's scores are their history row times B, the way item-kNN scores with its
similarity, so serving treats both alike (``service/recommender.py``).

Why binarised input: X is 1 where a person has any positive event with an item. On
MovieLens 100K's time holdout (the bench split, people ranked by their event-weighted
history as serving does), the binary fit reached NDCG@10 0.2047 at its best λ (300) and
0.2025–0.2047 over λ 200–800; fitting on the summed event weights peaked at 0.2000
(λ 5000). The weights still count at request time, in the history vector that
multiplies B.

Why a size limit: the fit inverts a dense items × items matrix — O(items³) time (4,000
items: 1.3 s on 2 cores, so about 3 minutes at the limit) and up to three items²-sized
arrays at its peak — and the bundle stores B dense (items² float32). At
:data:`MAX_EASE_ITEMS` that is about 10 GB while fitting and a 1.6 GB bundle.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg
import scipy.sparse as sp

from service.errors import BadInput

#: Largest catalogue EASE fits (items with a positive event).
MAX_EASE_ITEMS = 20_000
#: λ when none is given. It penalises a Gram matrix of co-occurrence counts, so it lives
#: in the hundreds: on MovieLens 100K's time holdout (the bench split) NDCG@10 was
#: 0.1964 / 0.2029 / 0.2047 / 0.2034 / 0.2025 / 0.1985 at λ 100 / 200 / 300 / 500 / 800 /
#: 1500.
EASE_REGULARIZATION = 300.0
#: Users scored per block when ranking many people at once (bounds memory to
#: ``BLOCK × items`` floats).
BLOCK = 1024


def check_size(n_items: int) -> None:
    """Raise :class:`BadInput` (field ``model``) when EASE cannot fit ``n_items``."""
    if n_items > MAX_EASE_ITEMS:
        raise BadInput(
            "model",
            f"ease fits at most {MAX_EASE_ITEMS:,} items (O(items³) time, items² memory); "
            f"these events have {n_items:,}: use als, bpr or item_knn",
        )


def ease_weights(matrix: sp.csr_matrix, regularization: float) -> np.ndarray:
    """B (items × items, float32, zero diagonal) for ``matrix`` (users × items), read
    as binary: any stored positive value is a 1."""
    n_items = matrix.shape[1]
    check_size(n_items)
    # Co-occurrence counts are exact in float32 and halve the sparse product's memory.
    x = sp.csr_matrix(matrix, dtype=np.float32, copy=True)
    x.data = (x.data > 0).astype(np.float32)
    gram = (x.T @ x).toarray().astype(np.float64)
    gram[np.diag_indices(n_items)] += regularization
    p = scipy.linalg.inv(gram, overwrite_a=True, check_finite=False)
    p /= -np.diag(p)  # column j divided by −P_jj
    p[np.diag_indices(n_items)] = 0.0
    return p.astype(np.float32)


class EaseModel:
    """Fits B with :func:`ease_weights`; ranks like implicit's models (``recommend``), so
    the holdout evaluates it the way it evaluates the others."""

    def __init__(self, regularization: float) -> None:
        self.regularization = regularization
        self.similarity: np.ndarray | None = None
        """B: ``similarity[i, j]`` is what history item ``i`` adds to item ``j``'s score."""

    def fit(self, user_items: sp.csr_matrix) -> None:
        self.similarity = ease_weights(user_items, self.regularization)

    def recommend(
        self,
        userid: np.ndarray,
        user_items: sp.csr_matrix,
        N: int = 10,  # noqa: N803 - implicit's name
        filter_already_liked_items: bool = True,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top ``N`` items (and scores) for each row of ``user_items`` (their weighted
        histories); ``userid`` is accepted for implicit's signature and not needed."""
        if self.similarity is None:
            raise RuntimeError("EaseModel.recommend before fit")
        rows = sp.csr_matrix(user_items, dtype=np.float32)
        n = min(N, rows.shape[1])
        ids = np.empty((rows.shape[0], n), dtype=np.int64)
        scores = np.empty((rows.shape[0], n), dtype=np.float32)
        for start in range(0, rows.shape[0], BLOCK):
            block = rows[start : start + BLOCK]
            s = np.asarray(block @ self.similarity)
            if filter_already_liked_items:
                r, c = block.nonzero()
                s[r, c] = -np.inf
            top = np.argpartition(-s, n - 1, axis=1)[:, :n]
            order = np.argsort(-np.take_along_axis(s, top, axis=1), axis=1, kind="stable")
            top = np.take_along_axis(top, order, axis=1)
            ids[start : start + len(top)] = top
            scores[start : start + len(top)] = np.take_along_axis(s, top, axis=1)
        return ids, scores
