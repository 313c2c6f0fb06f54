"""From events to the user × item confidence matrix the implicit models learn from."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

from service.errors import BadInput
from service.events import ITEM_EVENT_TYPES

#: Confidence each event adds to a (person, item) pair. Stronger intent weighs more;
#: a dislike is never positive: any dislike removes the pair from the matrix.
DEFAULT_WEIGHTS: Mapping[str, float] = {
    "view": 1.0,
    "click": 1.0,
    "favourite": 4.0,
    "add_to_cart": 6.0,
    "purchase": 10.0,
}

SECONDS_PER_DAY = 86_400.0


def parse_weights(text: str) -> dict[str, float]:
    """``"view=1,purchase=8"`` → weights, starting from the defaults.

    Raises :class:`BadInput` (field ``event_weights``) on unknown types, negative
    weights, or any attempt to give ``dislike`` a weight.
    """
    weights = dict(DEFAULT_WEIGHTS)
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, raw = part.partition("=")
        name = name.strip()
        if not sep:
            raise BadInput("event_weights", f"{part!r} is not event_type=weight")
        if name == "dislike":
            raise BadInput("event_weights", "dislike cannot be weighted: it is never positive")
        if name not in ITEM_EVENT_TYPES:
            raise BadInput("event_weights", f"{name!r} is not an item event type")
        try:
            value = float(raw)
        except ValueError:
            raise BadInput("event_weights", f"{raw!r} is not a number (for {name})") from None
        if not np.isfinite(value) or value < 0:
            raise BadInput("event_weights", f"{name} weight must be finite and ≥ 0")
        weights[name] = value
    return weights


@dataclass
class Interactions:
    """A confidence matrix and the ids of its rows and columns."""

    matrix: sp.csr_matrix
    """users × items, float32; entry = summed (decayed) event weights, 0 = unknown."""
    user_ids: np.ndarray
    item_ids: np.ndarray

    @property
    def shape(self) -> tuple[int, int]:
        return self.matrix.shape


def index_of(values: pd.Series) -> np.ndarray:
    """Sorted unique ids: a stable, reproducible row/column order."""
    return np.asarray(np.sort(values.unique()), dtype=np.str_)


def build_interactions(
    frame: pd.DataFrame,
    weights: Mapping[str, float] = DEFAULT_WEIGHTS,
    *,
    half_life_days: float | None = None,
    now: int | None = None,
    user_ids: np.ndarray | None = None,
    item_ids: np.ndarray | None = None,
) -> Interactions:
    """Sum weighted item events per (person, item).

    ``half_life_days`` decays each event by its age relative to ``now`` (default: the
    newest event), so an old purchase counts less than last week's. ``user_ids`` and
    ``item_ids`` fix the row and column order (e.g. the full data's, when building a
    training split); events of ids outside them are dropped.
    """
    items = frame[frame["event_type"].isin(ITEM_EVENT_TYPES)]
    if user_ids is None:
        user_ids = index_of(items["user_id"])
    if item_ids is None:
        item_ids = index_of(items["item_id"])
    rows = pd.Index(user_ids).get_indexer(items["user_id"])
    cols = pd.Index(item_ids).get_indexer(items["item_id"])
    types = items["event_type"].astype(str).to_numpy()
    w = np.array([weights.get(t, 0.0) for t in ITEM_EVENT_TYPES], dtype=np.float64)
    type_code = pd.Index(ITEM_EVENT_TYPES).get_indexer(types)
    values = w[type_code]
    if half_life_days:
        ts = items["timestamp"].to_numpy(dtype=np.float64)
        ref = float(now if now is not None else ts.max())
        age_days = np.maximum(ref - ts, 0.0) / SECONDS_PER_DAY
        values = values * np.exp2(-age_days / half_life_days)
    known = (rows >= 0) & (cols >= 0)
    disliked = known & (types == "dislike")
    keep = known & (values > 0)
    shape = (len(user_ids), len(item_ids))
    matrix = sp.csr_matrix((values[keep].astype(np.float32), (rows[keep], cols[keep])), shape=shape)
    matrix.sum_duplicates()
    if disliked.any():
        veto = sp.csr_matrix(
            (np.ones(disliked.sum(), dtype=np.float32), (rows[disliked], cols[disliked])),
            shape=shape,
        )
        # Zero every pair the person disliked, whatever else they did with it.
        matrix = matrix - matrix.multiply(veto.astype(bool))
        matrix.eliminate_zeros()
    return Interactions(matrix.tocsr().astype(np.float32), user_ids, item_ids)
