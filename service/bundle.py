"""The model bundle: the one artifact format a trained model travels in.

A bundle is a folder with ``manifest.json`` (small, human-readable metadata) and
``arrays.npz`` (numbers and ids, saved without pickle so loading a bundle never runs code).
The training job writes it (``save``), MLflow stores it as a run artifact, the service
reads it (``load``). Nothing else knows the layout.

Kinds:

``als`` / ``bpr``
    matrix factorisation: ``user_factors`` (users × f) and ``item_factors`` (items × f);
    score(user, item) = user_factors[user] · item_factors[item]. BPR's item bias is the
    last factor column, paired with a constant 1 in the user factors.
``item_knn``
    item-item neighbourhood: a sparse ``similarity`` (items × items); a person's scores
    are their (weighted) history times ``similarity``.
``ease``
    EASE (Steck 2019): the same scoring with a dense ``similarity`` (items × items,
    float32, zero diagonal), saved as one array. Training caps the catalogue
    (``training/ease.py``), since the array grows with items².
``popularity``
    the baseline every run is measured against, registered when no personalised model
    beats it on the holdout: ``item_scores`` (one per item, most popular first) and no
    users. It scores nobody personally; serving answers with trending, then popular items.

The similarity kinds may also carry ``interactions`` (sparse users × items, the weighted
matrix they were trained on): ``Campaigns.Audience`` ranks everybody against a few items
with it in one sparse product (the factor kinds have their user factors for that).
Bundles without it (older runs) cannot answer Audience; nothing else reads it.

Any personalised kind may also carry ``transitions`` (sparse items × items: row ``a`` is
what tends to follow item ``a``, ``training/transitions.py``); serving blends it with the
kind's own scores using the weights in ``metadata["serving"]``, which training chose by
validation. A bundle without them (older runs) is served by the kind alone.

A factor bundle may also carry ``ann``: an approximate-search index over its item factors
(``service/ann.py``), stored in ``arrays.npz`` as faiss's own bytes (``ann_index``) and
described in the manifest (``ann``: kind, search effort, measured recall). Serving
searches it for large catalogues; bundles without one (older runs, small catalogues) are
scored exactly.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp

from service.errors import OmnirecError

if TYPE_CHECKING:
    from service.ann import AnnIndex

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
ARRAYS = "arrays.npz"
FACTOR_KINDS = ("als", "bpr")
EASE = "ease"
#: Kinds that score a person's history times an items × items ``similarity``.
SIMILARITY_KINDS = ("item_knn", EASE)
#: The kinds training fits (``python -m training train --model``).
PERSONALISED_KINDS = (*FACTOR_KINDS, *SIMILARITY_KINDS)
POPULARITY = "popularity"
KINDS = (*PERSONALISED_KINDS, POPULARITY)


class BundleError(OmnirecError):
    """A bundle folder is missing, incomplete, or of a format this code cannot read."""


@dataclass
class ModelBundle:
    """A trained model plus the id mappings needed to use it."""

    kind: str
    user_ids: np.ndarray
    """Row ``i`` of ``user_factors`` belongs to ``user_ids[i]`` (unicode array)."""
    item_ids: np.ndarray
    """Row ``j`` of ``item_factors`` / ``similarity`` belongs to ``item_ids[j]``."""
    user_factors: np.ndarray | None = None
    item_factors: np.ndarray | None = None
    similarity: sp.csr_matrix | np.ndarray | None = None
    """``item_knn``: sparse; ``ease``: dense. Row ``i`` is what history item ``i`` adds
    to each item's score."""
    transitions: sp.csr_matrix | None = None
    """Optional, personalised kinds: row ``a`` scores what tends to come after item ``a``."""
    interactions: sp.csr_matrix | None = None
    """Optional, similarity kinds: the users × items training matrix (rows as
    ``user_ids``), for ranking every person against a few items at once."""
    item_scores: np.ndarray | None = None
    """``popularity`` only: ``item_scores[j]`` is the popularity of ``item_ids[j]``."""
    metadata: dict[str, Any] = field(default_factory=dict)
    """Free-form facts: params, event weights, data cut-off, metrics, run id."""
    ann: AnnIndex | None = None
    """Optional, factor kinds: approximate-search index over ``item_factors``."""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise BundleError(f"unknown model kind {self.kind!r}; expected one of {KINDS}")
        n_items = len(self.item_ids)
        if self.kind in FACTOR_KINDS:
            if self.user_factors is None or self.item_factors is None:
                raise BundleError(f"a {self.kind} bundle needs user and item factors")
            if self.item_factors.shape[0] != n_items:
                raise BundleError("item_factors rows do not match item_ids")
            if self.user_factors.shape[0] != len(self.user_ids):
                raise BundleError("user_factors rows do not match user_ids")
            if self.user_factors.shape[1] != self.item_factors.shape[1]:
                raise BundleError("user and item factors differ in width")
        elif self.kind == POPULARITY:
            if self.item_scores is None or self.item_scores.shape != (n_items,):
                raise BundleError("a popularity bundle needs one item score per item")
        elif self.similarity is None or self.similarity.shape != (n_items, n_items):
            raise BundleError(f"an {self.kind} bundle needs an items × items similarity")
        elif (self.kind == EASE) == sp.issparse(self.similarity):
            raise BundleError("item_knn stores a sparse similarity, ease a dense one")
        if self.interactions is not None and self.interactions.shape != (
            len(self.user_ids),
            n_items,
        ):
            raise BundleError("interactions must be users × items")
        if self.transitions is not None:
            if self.kind == POPULARITY:
                raise BundleError("a popularity bundle carries no transitions")
            if self.transitions.shape != (n_items, n_items):
                raise BundleError("transitions must be items × items")
        if self.ann is not None:
            if self.kind not in FACTOR_KINDS:
                raise BundleError(f"an {self.kind} bundle has no factors to index")
            if (self.ann.size, self.ann.dimension) != self.item_factors.shape:
                raise BundleError("the ann index does not match item_factors")

    def save(self, folder: str | Path) -> Path:
        """Write the bundle into ``folder`` (created); returns the folder."""
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        arrays: dict[str, np.ndarray] = {
            "user_ids": np.asarray(self.user_ids, dtype=np.str_),
            "item_ids": np.asarray(self.item_ids, dtype=np.str_),
        }
        if self.kind in FACTOR_KINDS:
            arrays["user_factors"] = np.ascontiguousarray(self.user_factors, dtype=np.float32)
            arrays["item_factors"] = np.ascontiguousarray(self.item_factors, dtype=np.float32)
        elif self.kind == POPULARITY:
            arrays["item_scores"] = np.ascontiguousarray(self.item_scores, dtype=np.float32)
        elif self.kind == EASE:
            arrays["similarity"] = np.ascontiguousarray(self.similarity, dtype=np.float32)
        else:
            arrays |= _sparse("similarity", self.similarity)
        if self.transitions is not None:
            arrays |= _sparse("transitions", self.transitions)
        if self.interactions is not None:
            arrays |= _sparse("interactions", self.interactions)
        if self.ann is not None:
            arrays["ann_index"] = self.ann.to_array()
        np.savez(out / ARRAYS, **arrays)
        manifest = {
            "format_version": FORMAT_VERSION,
            "kind": self.kind,
            "users": len(self.user_ids),
            "items": len(self.item_ids),
            "metadata": self.metadata,
        }
        if self.ann is not None:
            manifest["ann"] = self.ann.describe()
        (out / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str))
        return out

    @classmethod
    def load(cls, folder: str | Path) -> ModelBundle:
        """Read a bundle written by :meth:`save`. Raises :class:`BundleError`."""
        src = Path(folder)
        try:
            manifest = json.loads((src / MANIFEST).read_text())
        except FileNotFoundError:
            raise BundleError(f"{src}: not a model bundle (no {MANIFEST})") from None
        except json.JSONDecodeError as exc:
            raise BundleError(f"{src / MANIFEST}: unreadable ({exc})") from None
        if manifest.get("format_version") != FORMAT_VERSION:
            raise BundleError(
                f"{src}: bundle format {manifest.get('format_version')!r}, "
                f"this omnirec reads {FORMAT_VERSION}"
            )
        try:
            with np.load(src / ARRAYS, allow_pickle=False) as npz:
                arrays = {name: npz[name] for name in npz.files}
        except FileNotFoundError:
            raise BundleError(f"{src}: incomplete bundle (no {ARRAYS})") from None
        kind = manifest["kind"]
        n = len(arrays["item_ids"])
        similarity = arrays.get("similarity")  # ease: dense, as saved
        if kind == "item_knn":
            similarity = _unsparse("similarity", arrays, n)
        ann = None
        if "ann_index" in arrays:
            from service.ann import AnnIndex

            ann = AnnIndex.from_array(arrays.pop("ann_index"), manifest["ann"])
        return cls(
            kind=kind,
            user_ids=arrays["user_ids"],
            item_ids=arrays["item_ids"],
            user_factors=arrays.get("user_factors"),
            item_factors=arrays.get("item_factors"),
            similarity=similarity,
            transitions=_unsparse("transitions", arrays, n),
            interactions=_unsparse("interactions", arrays, n, len(arrays["user_ids"])),
            item_scores=arrays.get("item_scores"),
            metadata=manifest.get("metadata", {}),
            ann=ann,
        )


def _sparse(name: str, matrix: sp.spmatrix) -> dict[str, np.ndarray]:
    """A sparse matrix as three named arrays (npz holds arrays, never pickles)."""
    csr = sp.csr_matrix(matrix, dtype=np.float32)
    return {f"{name}_data": csr.data, f"{name}_indices": csr.indices, f"{name}_indptr": csr.indptr}


def _unsparse(
    name: str, arrays: dict[str, np.ndarray], n: int, rows: int | None = None
) -> sp.csr_matrix | None:
    """What :func:`_sparse` wrote as a ``rows`` (default ``n``) × ``n`` matrix, or None
    when absent."""
    if f"{name}_data" not in arrays:
        return None
    parts = (arrays[f"{name}_data"], arrays[f"{name}_indices"], arrays[f"{name}_indptr"])
    return sp.csr_matrix(parts, shape=(n if rows is None else rows, n))
