"""Holdout quality on real data: MovieLens 100K through omnirec's training code.

    python bench/bench_quality.py

Ratings 1–3 read as views, 4 as favourites, 5 as purchases (bench/movielens.py); the
latest 20 % of each person's ratings are held out by time. Every model and the
popularity baseline are scored in the same run with the same split and metrics as
`python -m training train`. Skips cleanly when the data set is absent.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import movielens  # noqa: E402

from training.matrix import DEFAULT_WEIGHTS  # noqa: E402
from training.models import ModelParams  # noqa: E402
from training.pipeline import evaluate_holdout  # noqa: E402

CANDIDATES = (
    ModelParams(kind="als"),
    ModelParams(kind="bpr", iterations=100, regularization=0.01, factors=64),
    ModelParams(kind="item_knn"),
)


def main() -> int:
    folder = movielens.dataset_dir()
    if folder is None:
        print("bench_quality: ml-100k not found (set OMNIREC_ML100K); skipped")
        return 0
    frame = movielens.events(folder)
    print(
        f"MovieLens 100K: {len(frame)} ratings, {frame.user_id.nunique()} people, "
        f"{frame.item_id.nunique()} items; time-based holdout 20 %, k=10\n"
    )
    rows = []
    for params in CANDIDATES:
        started = time.perf_counter()
        result = evaluate_holdout(frame, params, DEFAULT_WEIGHTS)
        seconds = time.perf_counter() - started
        rows.append((params.kind, result.metrics[params.kind], seconds))
        popularity = result.metrics["popularity"]
    rows.append(("popularity", popularity, 0.0))
    base = popularity["ndcg"]
    print(
        f"{'model':<12}{'recall@10':>11}{'ndcg@10':>10}{'map@10':>9}{'coverage':>10}"
        f"{'ndcg/pop':>10}{'fit+eval s':>12}"
    )
    for name, m, seconds in rows:
        print(
            f"{name:<12}{m['recall']:>11.4f}{m['ndcg']:>10.4f}{m['map']:>9.4f}"
            f"{m['coverage']:>10.4f}{m['ndcg'] / base:>10.2f}{seconds:>12.1f}"
        )
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    sys.exit(main())
