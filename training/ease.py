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

Why a Cholesky factorisation: XᵀX + λI is symmetric positive definite, so P comes from
its Cholesky factor (LAPACK ``potrf`` then ``potri``), about half the work of a general
inverse (``getrf`` + ``getri``) and through other kernels: at 16,198 items the general
inverse crashed this machine's default OpenBLAS kernel, while ``spotrf``/``spotri`` took
37 s on 2 cores. Why float32: λ ≥ 100 bounds the condition number by 1 + ‖XᵀX‖/λ, and at
4,000 items the float32 factorisation left a residual ‖GP − I‖∞ of 5e-7 (float64: the
same order; the top 10 per person unchanged, ``tests/test_ease.py``). A matrix LAPACK
finds not positive definite in float32 (a tiny λ) is factorised again in float64.

Why a size limit: the fit factorises a dense items × items matrix — O(items³) time (37 s
at 16k items on 2 cores, so about 70 s at the limit) and two items²-sized float32 arrays
at its peak — and the bundle stores B dense (items² float32). At :data:`MAX_EASE_ITEMS`
that is about 3.2 GB while fitting and a 1.6 GB bundle. Training's validation predicts
the fit's time from this cube law and leaves EASE out when it would pass the budget
(``training/validation.py``).
"""

from __future__ import annotations

import time

import numpy as np
import scipy.linalg.lapack
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


#: Side of the matrix timed to predict a fit's time (about 0.1 s on 2 cores). Small
#: factorisations run less efficiently than large ones, so the cube law from it
#: overestimates: the safe side of a budget.
CALIBRATION_ITEMS = 2048
_calibrated: list[float] = []


def predicted_seconds(n_items: int) -> float:
    """How long :func:`ease_weights` will take for ``n_items``: the factorisation's cube
    law from one timed factorisation of :data:`CALIBRATION_ITEMS` on this machine (once
    per process), plus a fifth for the Gram matrix, the copies and the bundle's trip
    back from the fit's process. At 16,198 items it predicted 50 s where the
    factorisation took 37 s on 2 cores; on a busy machine both grow."""
    if not _calibrated:
        rng = np.random.default_rng(0)
        a = rng.random((CALIBRATION_ITEMS, CALIBRATION_ITEMS), dtype=np.float32)
        gram = a @ a.T
        gram[np.diag_indices(CALIBRATION_ITEMS)] += CALIBRATION_ITEMS
        timings = []
        for _ in range(4):  # the best of four, the first warming BLAS up: a busy core
            started = time.perf_counter()  # must not scare a fit off
            _cholesky_inverse(gram.copy())
            timings.append(time.perf_counter() - started)
        _calibrated.append(min(timings))
    return 1.2 * _calibrated[0] * (n_items / CALIBRATION_ITEMS) ** 3


def peak_bytes(n_items: int) -> int:
    """Memory the fit needs at its peak: the dense Gram matrix, factorised and inverted in
    place, and one more items² float32 array while B is normalised and saved."""
    return 2 * 4 * n_items**2


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
    gram = (x.T @ x).toarray()
    gram[np.diag_indices(n_items)] += regularization
    p = spd_inverse(gram)
    p /= -np.diag(p)  # column j divided by −P_jj
    p[np.diag_indices(n_items)] = 0.0
    return p


def spd_inverse(gram: np.ndarray) -> np.ndarray:
    """The inverse of a symmetric positive definite float32 matrix, by its Cholesky
    factor; ``gram`` is overwritten. Falls back to float64 where float32 finds it not
    positive definite; raises :class:`numpy.linalg.LinAlgError` where float64 does too."""
    diagonal = np.diag(gram).astype(np.float64)
    p, info = _cholesky_inverse(gram)
    if info > 0:
        # potrf overwrote the lower triangle and the diagonal only: the matrix is still
        # there in the upper triangle and the diagonal kept aside.
        original = np.triu(gram, 1).astype(np.float64)
        original += original.T
        original[np.diag_indices(len(original))] = diagonal
        p, info = _cholesky_inverse(original)
        if info > 0:
            raise np.linalg.LinAlgError(f"matrix not positive definite (LAPACK info {info})")
        p = p.astype(np.float32)
    _mirror_lower(p)
    return p


def _mirror_lower(p: np.ndarray) -> None:
    """Copy the lower triangle onto the upper one in place (potri fills only the lower),
    a band of rows at a time: whole-matrix triangle indices would cost 16 bytes an entry."""
    n = len(p)
    for start in range(0, n, BLOCK):
        stop = min(start + BLOCK, n)
        p[start:stop, stop:] = p[stop:, start:stop].T
        block = p[start:stop, start:stop]
        p[start:stop, start:stop] = np.tril(block) + np.tril(block, -1).T


def _cholesky_inverse(a: np.ndarray) -> tuple[np.ndarray, int]:
    """(P, info) from LAPACK ``potrf`` + ``potri`` (lower triangle of P); info > 0: not
    positive definite (P is then garbage)."""
    potrf, potri = scipy.linalg.lapack.get_lapack_funcs(("potrf", "potri"), (a,))
    factor, info = potrf(a, lower=True, overwrite_a=True, clean=False)
    if info != 0:
        return factor, info
    p, info = potri(factor, lower=True, overwrite_c=True)
    return p, info


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
