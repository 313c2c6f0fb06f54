"""Spark's ALS against implicit's on MovieLens 100K: served quality and fit time.

    python bench/bench_spark.py [--factors 32] [--iterations 15] [--regularization 5]
                                [--alpha 1]

Both backends get the same rank, iterations, λ and alpha, and the same confidence
(1 + alpha × summed event weight). Their regularisation differs in kind: implicit adds
λ to every solve, Spark adds regParam × the person's (or item's) number of ratings
("ALS-WR"); ``training/spark_als.py`` sets regParam = λ / (ratings per person), so the
typical person is regularised by λ in both, which is what makes the two comparable
(its docstring says more). Per backend:

* **served**: ``python -m training train --backend B --model als`` on the training part
  (MovieLens ratings as events, bench/movielens.py; the latest 20 % of each person's
  ratings held out by time) → MLflow (sqlite) → a real redis-server → a real gRPC server;
  every held-out person is asked ``Recommend`` (``bench_quality.served_metrics``), so the
  NDCG@10 is that of what the service answers. The serving blend is chosen by validation
  in each run, as in production.
* **alone**: the model's own ranking on the same holdout, no serving blend (recency,
  transitions): the two factorisations compared with nothing else in between.
* **fit**: the factorisation alone on the training part's matrix, timed after the served
  run (Spark's JVM warm); Spark's start-up (once per process) is printed apart, and the
  whole train job's time (validation, holdout and final fits, MLflow, publication) too.

Goal (issue 14): Spark's served NDCG@10 within 5 % of implicit's. ``OMNIREC_SPARK_MASTER``
(default ``local[*]``) says where Spark fits. Skips cleanly, with one line, when the data
set is absent or Spark cannot run here (no Java 17+ or pyspark, which
``scripts/ensure-spark`` installs where it can).
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import movielens  # noqa: E402
from bench_quality import K, served_metrics  # noqa: E402

from service.config import load_settings  # noqa: E402
from service.registry import quiet_mlflow  # noqa: E402
from training import evaluation  # noqa: E402
from training.matrix import DEFAULT_WEIGHTS, build_interactions, index_of  # noqa: E402
from training.models import BACKENDS, ModelParams, fit  # noqa: E402
from training.pipeline import evaluate_holdout  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
#: Spark's served NDCG@10 may trail implicit's by at most this share (issue 14).
TOLERANCE = 0.05


def spark_ready() -> str | None:
    """None when Java 17+ and pyspark are here (installing them where it can), else why
    not, in one line."""
    ensure = subprocess.Popen(
        [str(ROOT / "scripts" / "ensure-spark"), sys.executable],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines = []
    for line in ensure.stderr:
        lines.append(line.strip())
        if line.startswith(("installing", "Spark needs")):
            print(line.strip(), flush=True)
    if ensure.wait() == 0:
        return None
    why = next((line for line in lines if line.startswith("error:")), "?")
    return why.removeprefix("error: ")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--factors", type=int, default=32)
    parser.add_argument("--iterations", type=int, default=15)
    parser.add_argument("--regularization", type=float, default=5.0)
    parser.add_argument("--alpha", type=float, default=1.0)
    args = parser.parse_args()
    folder = movielens.dataset_dir()
    if folder is None:
        print("bench_spark: ml-100k not found (set OMNIREC_ML100K); skipped")
        return 0
    why = spark_ready()
    if why is not None:
        print(f"bench_spark: Spark cannot run here ({why}); skipped")
        return 0
    from training import spark_als

    quiet_mlflow()
    master = load_settings().spark_master
    frame = movielens.events(folder)
    split = evaluation.time_split(frame, 0.2, 5)
    # The matrix the final fit of a served run sees (the whole training part).
    matrix = build_interactions(
        split.train,
        DEFAULT_WEIGHTS,
        user_ids=index_of(frame["user_id"]),
        item_ids=index_of(frame["item_id"]),
    ).matrix
    print(
        f"MovieLens 100K: {len(frame)} ratings, {frame.user_id.nunique()} people, "
        f"{frame.item_id.nunique()} items; time-based holdout 20 %, k={K}; "
        f"ALS {args.factors} factors, {args.iterations} iterations, λ {args.regularization:g}, "
        f"alpha {args.alpha:g} (Spark regParam "
        f"{spark_als.reg_param(matrix, args.regularization):.4f})",
        flush=True,
    )
    started = time.perf_counter()
    try:
        spark_als.session(master)
    except spark_als.SparkUnavailable as exc:
        print(f"bench_spark: {exc}; skipped")
        return 0
    startup = time.perf_counter() - started
    print(f"Spark on {master}: started in {startup:.1f} s", flush=True)

    rows = []
    for backend in BACKENDS:
        params = ModelParams(
            kind="als",
            factors=args.factors,
            iterations=args.iterations,
            regularization=args.regularization,
            alpha=args.alpha,
            backend=backend,
        )
        print(f"{backend}: training (the real job) and serving...", flush=True)
        started = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="omnirec-bench-spark-") as tmp:
            served, _, chosen = served_metrics(frame, split, Path(tmp), params, spark_master=master)
        job_seconds = time.perf_counter() - started
        # After the job's fits, so Spark's JVM is warm: the cost that grows with data.
        print(f"{backend}: fitting on the training part's matrix...", flush=True)
        started = time.perf_counter()
        fit(params, matrix)
        fit_seconds = time.perf_counter() - started
        print(f"{backend}: the model alone on the holdout...", flush=True)
        alone = evaluate_holdout(frame, params, DEFAULT_WEIGHTS, k=K).metrics["als"]["ndcg"]
        rows.append((backend, served, alone, fit_seconds, job_seconds, chosen))
    spark_als.stop()

    (_, base, base_alone, base_fit, base_job, _) = rows[0]
    (_, spark, spark_alone, spark_fit, spark_job, _) = rows[1]
    print(
        f"\n{'backend':<10}{'recall@10':>10}{'ndcg@10':>9}{'map@10':>8}{'coverage':>9}"
        f"{'alone':>8}{'fit s':>8}{'train job s':>12}  serving blend (validation)"
    )
    for backend, m, alone, fit_s, job_s, chosen in rows:
        print(
            f"{backend:<10}{m['recall']:>10.4f}{m['ndcg']:>9.4f}{m['map']:>8.4f}"
            f"{m['coverage']:>9.4f}{alone:>8.4f}{fit_s:>8.2f}{job_s:>12.1f}  "
            f"{chosen.removeprefix('validation: ')}"
        )
    ratio = spark["ndcg"] / base["ndcg"] if base["ndcg"] else float("nan")
    print(
        f"{'spark / implicit':<19}{ratio:>9.3f}{'':>17}{spark_alone / base_alone:>8.3f}"
        f"{spark_fit / base_fit:>7.1f}x{spark_job / base_job:>11.1f}x"
    )
    print(
        "(served: Recommend through gRPC; alone: NDCG@10 of the model's own ranking, no "
        f"serving blend; Spark's start-up, {startup:.1f} s, is in neither time)"
    )
    within = ratio >= 1 - TOLERANCE
    print(
        f"served NDCG@10: spark {'within' if within else 'NOT within'} "
        f"{TOLERANCE:.0%} of implicit ({(ratio - 1):+.1%})"
    )
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    sys.exit(main())
