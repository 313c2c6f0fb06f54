"""Holdout quality on real data: MovieLens 100K, served through the real gRPC path.

    python bench/bench_quality.py [--grid small|none]

Ratings 1–3 read as views, 4 as favourites, 5 as purchases (bench/movielens.py); the
latest 20 % of each person's ratings are held out by time (the split of
`python -m training train`). In one run:

* **served**: `python -m training train` on the training part with default flags →
  MLflow (sqlite) → features in a real redis-server → a real gRPC server; every held-out
  person is asked `Recommend(limit=10, exclude_seen=true)` over loopback. Default flags
  mean `--model auto`: the kind, EASE's λ, the recency half-life and the transitions'
  blend are chosen by validation on the latest part of the training part (never this
  holdout); the chosen blend is printed beside the row.
* **served ALS**: the same with `--model als` (the blend still chosen by validation).
* **served, no order**: default flags plus `--no-transitions`: what the order-aware part
  is worth, on the same path.
* **peers**, in-process on the same split, each ranked by its own ``recommend`` from the
  event-weighted history without recency or order: popularity; implicit ALS tuned over
  a small grid; item-kNN (cosine, best K of a small grid); BPR; EASE (best λ of a small
  grid). Their grids are scored on this very holdout, so the peers are if anything
  flattered; omnirec's own choices never see it.

Skips cleanly when the data set is absent.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import grpc  # noqa: E402
import movielens  # noqa: E402
import numpy as np  # noqa: E402

from devtools.redis_server import LocalRedis  # noqa: E402
from omnirec.v1 import recommender_pb2 as pb  # noqa: E402
from omnirec.v1 import recommender_pb2_grpc as pb_grpc  # noqa: E402
from service.api.server import build_server  # noqa: E402
from service.config import feature_store, load_settings  # noqa: E402
from service.registry import ModelRegistry, quiet_mlflow  # noqa: E402
from training import evaluation  # noqa: E402
from training.event_log import write_events  # noqa: E402
from training.matrix import DEFAULT_WEIGHTS, build_interactions, index_of  # noqa: E402
from training.models import ModelParams  # noqa: E402
from training.pipeline import TrainConfig, evaluate_holdout, train  # noqa: E402

K = 10
ALS_GRID = {"factors": (16, 32, 64, 128), "regularization": (0.05, 1.0, 5.0), "alpha": (1.0, 3.0)}
KNN_GRID = (20, 50, 100, 200)
EASE_GRID = (100, 200, 300, 500, 800)


def served_metrics(
    frame,
    split,
    workdir: Path,
    params: ModelParams,
    choose_model: bool = False,
    transitions: bool = True,
    spark_master: str | None = None,
) -> tuple[dict[str, float], float, str]:
    """Train on the training part with the real job, then ask the real gRPC server
    (``spark_master``: where ``params.backend == "spark"`` fits; None: the default)."""
    redis_server = LocalRedis(workdir / "redis")
    try:
        settings = load_settings(
            {},
            redis_url=redis_server.url,
            mlflow_tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}",
            artifact_root=str(workdir / "artifacts"),
            key_prefix="bench",
            identity_secret="bench-secret-0123456789abcdef",
            spark_master=spark_master,
        )
        events = workdir / "train.parquet"
        write_events(split.train, events)
        result = train(
            settings,
            TrainConfig(
                events=events, params=params, choose_model=choose_model, transitions=transitions
            ),
        )
        model = ModelRegistry(settings).load_alias("champion")
        running = build_server(
            replace(settings, port=0, host="127.0.0.1"), model, feature_store(settings)
        )
        try:
            user_ids, item_ids = index_of(frame["user_id"]), index_of(frame["item_id"])
            train_matrix = build_interactions(
                split.train, DEFAULT_WEIGHTS, user_ids=user_ids, item_ids=item_ids
            ).matrix
            relevant = evaluation.relevant_items(
                split.test, train_matrix, user_ids, item_ids, DEFAULT_WEIGHTS
            )
            index = {item: j for j, item in enumerate(item_ids)}
            users = sorted(relevant)
            ranked = np.full((len(users), K), -1, dtype=np.int64)
            started = time.perf_counter()
            with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
                stub = pb_grpc.RecommenderStub(channel)
                for n, u in enumerate(users):
                    reply = stub.Recommend(
                        pb.RecommendRequest(user_id=str(user_ids[u]), limit=K, exclude_seen=True),
                        timeout=10,
                    )
                    got = [index.get(r.item_id, -1) for r in reply.items]
                    ranked[n, : len(got)] = got
            seconds = time.perf_counter() - started
            metrics = evaluation.ranking_metrics(
                ranked, [relevant[u] for u in users], len(item_ids), K
            )
            return metrics, seconds / max(len(users), 1), result.validation
        finally:
            running.stop(grace=1)
    finally:
        redis_server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", choices=("small", "none"), default="small")
    args = parser.parse_args()
    folder = movielens.dataset_dir()
    if folder is None:
        print("bench_quality: ml-100k not found (set OMNIREC_ML100K); skipped")
        return 0
    quiet_mlflow()
    frame = movielens.events(folder)
    split = evaluation.time_split(frame, 0.2, 5)
    print(
        f"MovieLens 100K: {len(frame)} ratings, {frame.user_id.nunique()} people, "
        f"{frame.item_id.nunique()} items; time-based holdout 20 %, k={K}",
        flush=True,
    )
    rows: list[tuple[str, dict[str, float], str]] = []

    for name, choose, order in (
        ("served", True, True),
        ("served ALS", False, True),
        ("served, no order", True, False),
    ):
        started = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="omnirec-bench-") as tmp:
            served, per_call, chosen = served_metrics(
                frame, split, Path(tmp), ModelParams(), choose_model=choose, transitions=order
            )
        rows.append(
            (
                name,
                served,
                f"gRPC, {per_call * 1000:.1f} ms/call, "
                f"train {time.perf_counter() - started:.0f} s; "
                f"{chosen.removeprefix('validation: ')}",
            )
        )

    def holdout(params: ModelParams) -> dict[str, dict[str, float]]:
        return evaluate_holdout(frame, params, DEFAULT_WEIGHTS, k=K).metrics

    grid = [ModelParams()]
    if args.grid == "small":
        grid = [
            ModelParams(factors=f, regularization=r, alpha=a)
            for f, r, a in itertools.product(*ALS_GRID.values())
        ]
    als = [(p, holdout(p)) for p in grid]
    best_params, best = max(als, key=lambda pm: pm[1]["als"]["ndcg"])
    rows.append(
        (
            "ALS tuned",
            best["als"],
            f"best of {len(grid)}: factors={best_params.factors} "
            f"reg={best_params.regularization} alpha={best_params.alpha}",
        )
    )
    knn = [(k, holdout(ModelParams(kind="item_knn", neighbours=k))["item_knn"]) for k in KNN_GRID]
    best_k, knn_best = max(knn, key=lambda km: km[1]["ndcg"])
    rows.append(("item-kNN", knn_best, f"cosine, best K of {KNN_GRID}: {best_k}"))
    bpr = holdout(ModelParams(kind="bpr", factors=64, iterations=100, regularization=0.01))
    rows.append(("BPR", bpr["bpr"], "64 factors, 100 iterations"))
    eases = [
        (lam, holdout(ModelParams(kind="ease", regularization=lam))["ease"]) for lam in EASE_GRID
    ]
    best_lam, ease_best = max(eases, key=lambda lm: lm[1]["ndcg"])
    rows.append(("EASE", ease_best, f"binary fit, best λ of {EASE_GRID}: {best_lam:g}"))
    rows.append(("popularity", best["popularity"], "most people, minus own items"))

    pop, tuned = best["popularity"]["ndcg"], best["als"]["ndcg"]
    print(
        f"\n{'model':<17}{'recall@10':>10}{'ndcg@10':>9}{'map@10':>8}{'coverage':>9}"
        f"{'vs pop':>8}{'vs ALS':>8}  notes"
    )
    for name, m, note in rows:
        print(
            f"{name:<17}{m['recall']:>10.4f}{m['ndcg']:>9.4f}{m['map']:>8.4f}"
            f"{m['coverage']:>9.4f}{m['ndcg'] / pop:>7.2f}x{m['ndcg'] / tuned:>7.2f}x  {note}"
        )
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    sys.exit(main())
