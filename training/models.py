"""The models omnirec trains: the implicit ones and EASE by name, fitting with progress,
bundling; and the popularity baseline's bundle, registered when none of them beats it."""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
from implicit.utils import ParameterWarning
from threadpoolctl import threadpool_limits

from service.bundle import EASE, PERSONALISED_KINDS, POPULARITY, ModelBundle
from service.errors import BadInput
from training.ease import EASE_REGULARIZATION, EaseModel, peak_bytes, predicted_seconds

log = logging.getLogger(__name__)

#: What ``--model`` may name; the bundle format owns the list.
MODEL_KINDS = PERSONALISED_KINDS
#: Regularisation when none is given: ALS's and BPR's L2.
REGULARIZATION = 5.0
#: Where a model is fitted (``--backend``): in this process (the implicit library; EASE
#: by numpy), or ALS on a Spark cluster (:mod:`training.spark_als`).
IMPLICIT, SPARK = "implicit", "spark"
BACKENDS = (IMPLICIT, SPARK)


@dataclass(frozen=True)
class ModelParams:
    """Hyper-parameters; each model reads the ones it knows."""

    kind: str = "als"
    factors: int = 32
    regularization: float | None = None
    """L2 for ALS / BPR, λ for EASE; None: :data:`EASE_REGULARIZATION` for EASE, else
    :data:`REGULARIZATION`."""
    alpha: float = 1.0
    """ALS: confidence = 1 + alpha × summed event weight."""
    iterations: int = 15
    learning_rate: float = 0.01
    """BPR only."""
    neighbours: int = 50
    """item-kNN only: neighbours kept per item."""
    seed: int = 42
    backend: str = IMPLICIT
    """:data:`BACKENDS`: ``spark`` fits ALS only."""

    def __post_init__(self) -> None:
        if self.regularization is None:
            default = EASE_REGULARIZATION if self.kind == EASE else REGULARIZATION
            object.__setattr__(self, "regularization", default)

    def validate(self) -> None:
        if self.kind not in MODEL_KINDS:
            raise BadInput("model", f"{self.kind!r} is not one of {', '.join(MODEL_KINDS)}")
        if self.backend not in BACKENDS:
            raise BadInput("backend", f"{self.backend!r} is not one of {', '.join(BACKENDS)}")
        if self.backend == SPARK and self.kind != "als":
            raise BadInput("backend", f"spark fits als only, not {self.kind}")
        for name in ("factors", "iterations", "neighbours"):
            if getattr(self, name) < 1:
                raise BadInput(name, "must be at least 1")
        for name in ("regularization", "alpha", "learning_rate"):
            value = getattr(self, name)
            if not np.isfinite(value) or value < 0:
                raise BadInput(name, "must be a finite number ≥ 0")

    def relevant(self) -> dict[str, Any]:
        """The parameters that matter for this kind (what gets logged)."""
        keys = {
            "als": ("kind", "factors", "regularization", "alpha", "iterations", "seed", "backend"),
            "bpr": ("kind", "factors", "regularization", "learning_rate", "iterations", "seed"),
            "item_knn": ("kind", "neighbours"),
            EASE: ("kind", "regularization"),
        }[self.kind]
        return {k: v for k, v in asdict(self).items() if k in keys}


IterationHook = Callable[[int, float, str, float], None]
"""``(iteration, seconds, metric name, value)`` after each training iteration: ALS reports
its training loss, BPR the share of sampled pairs it already ranks correctly."""


def make_model(params: ModelParams) -> Any:
    """An unfitted model: implicit's (CPU), or EASE."""
    params.validate()
    if params.kind == EASE:
        return EaseModel(params.regularization)
    if params.kind == "als":
        from implicit.cpu.als import AlternatingLeastSquares

        return AlternatingLeastSquares(
            factors=params.factors,
            regularization=params.regularization,
            # implicit uses the matrix values as the confidence itself; ``confidence``
            # below gives it 1 + alpha × weight, so its own scaling stays neutral.
            alpha=1.0,
            iterations=params.iterations,
            calculate_training_loss=True,
            random_state=params.seed,
        )
    if params.kind == "bpr":
        from implicit.cpu.bpr import BayesianPersonalizedRanking

        return BayesianPersonalizedRanking(
            factors=params.factors,
            learning_rate=params.learning_rate,
            regularization=params.regularization,
            iterations=params.iterations,
            random_state=params.seed,
        )
    from implicit.nearest_neighbours import CosineRecommender

    return CosineRecommender(K=params.neighbours)


def fit(
    params: ModelParams, matrix: sp.csr_matrix, on_iteration: IterationHook | None = None
) -> Any:
    """Fit a fresh model on ``matrix`` (users × items), logging progress."""
    if params.backend == SPARK:
        from training import spark_als

        return spark_als.fit(params, matrix, on_iteration)
    total = params.iterations if params.kind != "item_knn" else 1
    started = time.perf_counter()

    def callback(iteration: int, elapsed: float, *progress: float) -> None:
        # implicit calls back with (loss) for ALS and (correct, skipped) for BPR.
        name = "train_loss" if params.kind == "als" else "train_correct"
        value = float(progress[0]) if progress else float("nan")
        log.info(
            "%s iteration %d/%d: %.2f s, %s %.5f",
            params.kind,
            iteration + 1,
            total,
            elapsed,
            name,
            value,
        )
        if on_iteration is not None:
            on_iteration(iteration, elapsed, name, value)

    log.info(
        "fitting %s on %d users × %d items (%d interactions)",
        params.kind,
        matrix.shape[0],
        matrix.shape[1],
        matrix.nnz,
    )
    if params.kind == EASE:
        # One dense inverse: all of it is BLAS, so BLAS keeps its threads.
        model = make_model(params)
        model.fit(matrix)
    else:
        # implicit parallelises itself; a multi-threaded BLAS underneath only fights it.
        with threadpool_limits(1, "blas"):
            model = make_model(params)
            if params.kind == "item_knn":
                with warnings.catch_warnings():
                    # implicit converts its own normalised matrix and warns about it.
                    warnings.simplefilter("ignore", ParameterWarning)
                    model.fit(matrix, show_progress=False)
            else:
                model.fit(confidence(matrix, params), show_progress=False, callback=callback)
    log.info("fitted %s in %.1f s", params.kind, time.perf_counter() - started)
    return model


@dataclass(frozen=True)
class Cost:
    """What a fit is predicted to take, before it runs (:func:`predicted_cost`)."""

    seconds: float
    memory_bytes: int


#: Seconds per unit of each kind's work on 2 cores, measured on a 1M-item catalogue
#: (20,000 people, 2.9M interactions): ALS 31 s for (interactions + rows) × factors² ×
#: iterations; implicit's cosine item-kNN 11 s for 440M co-occurring pairs (Σ per person
#: of their items²). Rounded up: a budget should be overestimated, not passed.
ALS_SECONDS_PER_UNIT = 7e-10
KNN_SECONDS_PER_PAIR = 3.5e-8


def predicted_cost(params: ModelParams, matrix: sp.csr_matrix) -> Cost:
    """The time and memory a fit of ``params`` on ``matrix`` should take here. EASE's is
    timed on this machine (:func:`training.ease.predicted_seconds`): its O(items³) is
    what puts large catalogues out of reach; the others grow with the data."""
    n_users, n_items = matrix.shape
    if params.kind == EASE:
        return Cost(predicted_seconds(n_items), peak_bytes(n_items))
    if params.kind == "item_knn":
        per_person = np.diff(matrix.indptr).astype(np.float64)
        pairs = float(per_person @ per_person)
        # The similarity it keeps: K neighbours per item, as CSR (value + index).
        return Cost(KNN_SECONDS_PER_PAIR * pairs, 12 * params.neighbours * n_items)
    units = (matrix.nnz + n_users + n_items) * params.factors**2 * params.iterations
    return Cost(ALS_SECONDS_PER_UNIT * units, 8 * params.factors * (n_users + n_items))


def confidence(matrix: sp.csr_matrix, params: ModelParams) -> sp.csr_matrix:
    """ALS confidence 1 + alpha × weight on observed pairs (Hu, Koren & Volinsky 2008);
    BPR only reads which pairs are observed."""
    if params.kind != "als":
        return matrix
    out = matrix.copy()
    out.data = 1.0 + params.alpha * out.data
    return out


def to_bundle(
    model: Any,
    params: ModelParams,
    user_ids: np.ndarray,
    item_ids: np.ndarray,
    metadata: dict[str, Any],
) -> ModelBundle:
    """Package a fitted model with its id mappings in the serving format."""
    meta = {"params": params.relevant(), **metadata}
    if params.kind == "item_knn":
        return ModelBundle(
            kind="item_knn",
            user_ids=user_ids,
            item_ids=item_ids,
            similarity=sp.csr_matrix(model.similarity, dtype=np.float32),
            metadata=meta,
        )
    if params.kind == EASE:
        return ModelBundle(
            kind=EASE,
            user_ids=user_ids,
            item_ids=item_ids,
            similarity=model.similarity,
            metadata=meta,
        )
    return ModelBundle(
        kind=params.kind,
        user_ids=user_ids,
        item_ids=item_ids,
        user_factors=np.asarray(model.user_factors, dtype=np.float32),
        item_factors=np.asarray(model.item_factors, dtype=np.float32),
        metadata=meta,
    )


def popularity_bundle(popularity: Mapping[str, float], metadata: dict[str, Any]) -> ModelBundle:
    """The popularity baseline in the serving format: item → score, most popular first."""
    ranked = sorted(popularity.items(), key=lambda pair: (-pair[1], pair[0]))
    return ModelBundle(
        kind=POPULARITY,
        user_ids=np.array([], dtype=np.str_),
        item_ids=np.array([item for item, _ in ranked], dtype=np.str_),
        item_scores=np.array([score for _, score in ranked], dtype=np.float32),
        metadata={"params": {"kind": POPULARITY}, **metadata},
    )
