"""Approximate top-k for factor models (ALS, BPR) over large catalogues, with faiss.

Exact scoring reads every item's factors on every request: at a million items that is
tens of milliseconds per Recommend. Above :data:`AUTO_MIN_ITEMS` items a bundle may ship
an index that finds the best items by inner product in well under a millisecond, and
serving asks it for candidates instead (``OMNIREC_ANN``, :func:`serving_index`).

Why maximum inner product: a person's score for an item is ``user · item``, and the
folded-in user vector is not normalised (nor are item vectors: popular items have longer
ones). Inner-product search ranks exactly by that score; cosine would not.

Why HNSW by default (``bench/bench_ann.py``, 1M clustered 64-factor items, 2 shared
cores): faiss's HNSW graph with the inner-product metric (``hnsw``: 32 links per node,
construction effort 80, vectors as 8-bit codes) found 0.974-0.976 of the exact top 10 of
folded-in vectors at ``efSearch`` 192, about 0.5 ms a search; Recommend's p99 through
gRPC was 0.96-1.6x that of 10k items scored exactly (2.1x on a busier machine, before
the 8-bit codes). It builds in 115-165 s into 336 MB.
IVF-Flat (``ivf``, 4·√n lists, inner product) needed 256 of its 4,000 lists for 0.98:
twice HNSW's time per Recommend, and 2.4x the 10k p99. Reducing MIPS to L2 search (an
extra coordinate per item) left HNSW's graph useless (recall 0.1 at 100k).

What HNSW gives up: with the inner product, its graph reaches only part of the items (a
third of 100k here) - the long vectors that win plain searches are among them, but a
filter that passes 1 item in 20 needs the best items far down the ranking, and there HNSW
found 0.60-0.84 of the exact answer where IVF, exact inside the lists it probes, found
0.92-0.94. ``ivf`` is the kind for traffic that mostly filters by category; it also
builds faster (70 s at 1M) into less memory (265 MB).

Why the search effort is stored with the index: each build measures it. A sample of the
model's own user vectors is searched at rising effort (HNSW's ``efSearch``, IVF's
``nprobe``) until :data:`TARGET_RECALL` of their exact top 10 is found; serving uses that
effort (and more when it asks for more candidates). The recall found is kept beside it,
so a bundle says how approximate it is.

An index is a faiss index serialised to bytes (faiss's own format, never pickle) and
travels inside the bundle's ``arrays.npz`` (``service/bundle.py``). ``faiss`` is imported
only where an index is built or read, so settings and bundles without one never load it.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

HNSW = "hnsw"
IVF = "ivf"
#: Index kinds, the default (chosen by measurement, above) first.
KINDS = (HNSW, IVF)
AUTO = "auto"
OFF = "off"
#: What ``OMNIREC_ANN`` may say.
SETTINGS = (AUTO, OFF, *KINDS)
#: ``auto`` searches approximately above this many items. At 100k, exact scoring costs
#: about 6 ms of a core per Recommend and a server answers a seventh of the calls it
#: answers at 10k, where the index answers in under 1 ms (``bench/bench_ann.py``); below
#: it, answers stay exact.
AUTO_MIN_ITEMS = 100_000
#: Share of the exact top :data:`RECALL_AT` a build's effort must find on its sample.
#: Above the 0.95 serving is held to: folded-in vectors are not quite the sample.
TARGET_RECALL = 0.97
RECALL_AT = 10
#: User vectors an effort is measured on.
SAMPLE_QUERIES = 200
#: HNSW links per node and construction effort (see the module docstring).
HNSW_LINKS = 32
HNSW_CONSTRUCTION = 80
#: The efforts tried, least first: ``efSearch`` for HNSW, ``nprobe`` for IVF.
EFFORTS: Mapping[str, tuple[int, ...]] = {
    HNSW: (16, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024),
    IVF: (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048),
}
#: Exact scores are computed this many items at a time while measuring (memory bound).
EXACT_CHUNK = 65_536


class AnnIndex:
    """An index over a bundle's item factors: row ``j`` of the factors is id ``j``.

    Thread-safe for searching (faiss searches are read-only; effort travels per call)."""

    def __init__(self, kind: str, index: Any, effort: int, facts: Mapping[str, Any]) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown index kind {kind!r}; expected one of {KINDS}")
        self.kind = kind
        self.index = index
        self.effort = effort
        """Search effort measured at build time (``efSearch`` / ``nprobe``)."""
        self.facts = dict(facts)
        """What the build measured (recall, seconds, sample size); kept in the manifest."""

    @property
    def size(self) -> int:
        """Items indexed."""
        return int(self.index.ntotal)

    @property
    def dimension(self) -> int:
        return int(self.index.d)

    def search(self, vector: np.ndarray, k: int) -> np.ndarray:
        """Item indices of (about) the ``k`` largest inner products with ``vector``, best
        first; fewer when the index cannot find ``k``."""
        query = np.ascontiguousarray(vector, dtype=np.float32).reshape(1, -1)
        k = min(k, self.size)
        _, found = self.index.search(query, k, params=self._params(k))
        found = found[0]
        return found[found >= 0]

    def _params(self, k: int) -> Any:
        import faiss

        if self.kind == HNSW:
            # The graph walk keeps efSearch candidates: never fewer than asked for.
            return faiss.SearchParametersHNSW(efSearch=max(self.effort, k))
        # Probing more lists for more candidates keeps the measured recall for their
        # top 10 when many are filtered out: the lists of ``effort`` hold about
        # ``effort × size / nlist`` items.
        nlist = int(self.index.nlist)
        per_list = max(self.size / nlist, 1.0)
        nprobe = max(self.effort, math.ceil(2 * k / per_list))
        return faiss.SearchParametersIVF(nprobe=min(nprobe, nlist))

    def describe(self) -> dict[str, Any]:
        """The manifest's ``ann`` entry."""
        return {"kind": self.kind, "effort": self.effort, "items": self.size, **self.facts}

    def to_array(self) -> np.ndarray:
        """The index as bytes (a ``uint8`` array) for the bundle's ``.npz``."""
        import faiss

        return faiss.serialize_index(self.index)

    @classmethod
    def from_array(cls, data: np.ndarray, described: Mapping[str, Any]) -> AnnIndex:
        """What :meth:`to_array` wrote, with its :meth:`describe` entry."""
        import faiss

        facts = {k: v for k, v in described.items() if k not in ("kind", "effort", "items")}
        index = faiss.deserialize_index(np.ascontiguousarray(data, dtype=np.uint8))
        return cls(str(described["kind"]), index, int(described["effort"]), facts)


def wanted(setting: str, model_kind: str, items: int) -> str | None:
    """The index kind ``OMNIREC_ANN=setting`` asks for a ``model_kind`` bundle of ``items``
    items (``auto``: the default kind above :data:`AUTO_MIN_ITEMS`), or None: exact.

    Only factor models have vectors to search; the others always score exactly."""
    # Here, not at the top: settings import this module and need nothing of the bundle's.
    from service.bundle import FACTOR_KINDS

    if setting not in SETTINGS:
        raise ValueError(f"OMNIREC_ANN={setting!r}: expected one of {', '.join(SETTINGS)}")
    if model_kind not in FACTOR_KINDS or setting == OFF:
        return None
    if setting == AUTO:
        return KINDS[0] if items > AUTO_MIN_ITEMS else None
    return setting


def serving_index(bundle: Any, setting: str) -> AnnIndex | None:
    """The index to search when serving ``bundle`` under ``OMNIREC_ANN=setting``, or
    None to score every item.

    ``auto`` uses the index the bundle ships, of whatever kind, above the threshold, and
    warns when there is none (a bundle from before indexes, or trained with ``off``).
    A named kind is honoured at any size: the bundle's index when it is of that kind,
    else one built now (logged, with its time)."""
    kind = wanted(setting, bundle.kind, len(bundle.item_ids))
    if kind is None:
        return None
    shipped = bundle.ann
    if setting == AUTO:
        if shipped is None:
            log.warning(
                "%d items, above the %d where OMNIREC_ANN=auto searches approximately, but "
                "the bundle ships no index: scoring every item. Retrain to ship one, or "
                "set OMNIREC_ANN=%s to build one at start.",
                len(bundle.item_ids),
                AUTO_MIN_ITEMS,
                KINDS[0],
            )
            return None
        return shipped
    if shipped is not None and shipped.kind == kind:
        return shipped
    log.info("OMNIREC_ANN=%s: the bundle ships no %s index; building one now", setting, kind)
    return build(bundle.item_factors, kind, bundle.user_factors)


def training_index(bundle: Any, setting: str) -> AnnIndex | None:
    """The index training ships with ``bundle`` under ``OMNIREC_ANN=setting``: the kind
    serving would search (:func:`wanted`), built and measured; None when it would not."""
    kind = wanted(setting, bundle.kind, len(bundle.item_ids))
    return None if kind is None else build(bundle.item_factors, kind, bundle.user_factors)


def build(
    item_factors: np.ndarray,
    kind: str = KINDS[0],
    user_factors: np.ndarray | None = None,
    *,
    seed: int = 0,
) -> AnnIndex:
    """Index ``item_factors`` (items × f) and measure its search effort on a sample of
    ``user_factors`` (the model's own people; without them, of the items themselves)."""
    import faiss

    if kind not in KINDS:
        raise ValueError(f"unknown index kind {kind!r}; expected one of {KINDS}")
    items = np.ascontiguousarray(item_factors, dtype=np.float32)
    n, dim = items.shape
    started = time.perf_counter()
    if kind == HNSW:
        # Vectors kept as 8-bit codes: candidates are rescored exactly anyway, and a
        # million items take 336 MB instead of 528, with no loss of recall (measured).
        index = faiss.IndexHNSWSQ(
            dim, faiss.ScalarQuantizer.QT_8bit, HNSW_LINKS, faiss.METRIC_INNER_PRODUCT
        )
        index.hnsw.efConstruction = HNSW_CONSTRUCTION
        index.train(items)
    else:
        # faiss's guide: 4·√n lists, each trained on at least 39 points.
        nlist = max(1, min(int(4 * math.sqrt(n)), n // 39))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = seed
        # k-means on 64 items per list (faiss asks at least 39): on all of a million items
        # it took 280 s on 2 cores, and the lists found no more at the same nprobe.
        index.cp.max_points_per_centroid = 64
        index.train(items)
    index.add(items)
    built = time.perf_counter() - started
    queries = _sample(user_factors if user_factors is not None else items, seed)
    effort, recall = _measure(kind, index, items, queries)
    log.info(
        "%s index over %d items built in %.1f s; effort %d finds %.3f of the exact top %d",
        kind,
        n,
        built,
        effort,
        recall,
        RECALL_AT,
    )
    if recall < TARGET_RECALL:
        log.warning(
            "%s index: at its largest effort (%d) it finds only %.3f of the exact top %d "
            "(target %.2f); serving will be that approximate",
            kind,
            effort,
            recall,
            RECALL_AT,
            TARGET_RECALL,
        )
    facts = {
        "recall_at_10": round(recall, 4),
        "build_seconds": round(built, 2),
        "sample_queries": len(queries),
    }
    return AnnIndex(kind, index, effort, facts)


def _sample(vectors: np.ndarray, seed: int) -> np.ndarray:
    rows = np.random.default_rng(seed).permutation(len(vectors))[:SAMPLE_QUERIES]
    return np.ascontiguousarray(vectors[np.sort(rows)], dtype=np.float32)


def _measure(kind: str, index: Any, items: np.ndarray, queries: np.ndarray) -> tuple[int, float]:
    """The least effort of :data:`EFFORTS` whose recall on ``queries`` reaches
    :data:`TARGET_RECALL` (else the largest useful one), and that recall."""
    exact = exact_top(items, queries, RECALL_AT)
    efforts = list(EFFORTS[kind])
    if kind == IVF:
        # Probing every list is exact: no effort beyond it.
        efforts = [e for e in efforts if e < index.nlist] + [int(index.nlist)]
    trial = AnnIndex(kind, index, efforts[0], {})
    k = min(RECALL_AT, len(items))
    recall = 0.0
    for effort in efforts:
        trial.effort = effort
        _, found = index.search(queries, k, params=trial._params(k))
        recall = recall_of(found, exact)
        if recall >= TARGET_RECALL:
            break
    return trial.effort, recall


def exact_top(items: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Each query's exact top ``k`` item indices by inner product (as a set per row; the
    order within a row is not meaningful), computed a chunk of items at a time."""
    k = min(k, len(items))
    best_scores = np.full((len(queries), 0), -np.inf, dtype=np.float32)
    best = np.empty((len(queries), 0), dtype=np.int64)
    for start in range(0, len(items), EXACT_CHUNK):
        scores = queries @ items[start : start + EXACT_CHUNK].T
        ids = np.arange(start, start + scores.shape[1])
        best_scores = np.hstack([best_scores, scores])
        best = np.hstack([best, np.broadcast_to(ids, scores.shape)])
        keep = np.argpartition(-best_scores, k - 1, axis=1)[:, :k]
        best_scores = np.take_along_axis(best_scores, keep, axis=1)
        best = np.take_along_axis(best, keep, axis=1)
    return best


def recall_of(found: np.ndarray, exact: np.ndarray) -> float:
    """Mean share of each row of ``exact`` that the same row of ``found`` holds."""
    if not exact.size:
        return 1.0
    hits = sum(len(set(f.tolist()) & set(e.tolist())) for f, e in zip(found, exact, strict=True))
    return hits / exact.size
