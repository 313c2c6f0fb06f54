"""Send-time and channel quality on independent data: one table per regime.

    python bench/bench_send_time.py [--people N] [--seed S] [--no-mlflow]

The send-time model was tuned on training/synthetic.py; this scores it on the regimes of
training/engagement_regimes.py (other open mechanisms, sparse and biased schedules, no
zones, privacy proxies, weekday/weekend habits, habit changes) and on MovieLens 100K
(ratings as activity, each person's latest 20 % held out), next to every baseline of
training/engagement_baselines.py. Each table: methods as rows; hit rate within ±1 h per
query label (a random hour scores 0.125) and channel top-1 accuracy. At the end, model
minus the best baseline per regime and metric.

All metrics go to one MLflow run in experiment ``omnirec-send-time-bench`` under
``MLFLOW_TRACKING_URI`` (default: the project's, service/config.py, anchored at the repo
root). The MovieLens part skips with one line when the data set is absent
(``OMNIREC_ML100K`` or ../shared/datasets/ml-100k).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))

import movielens  # noqa: E402

from service.config import DEFAULT_MLFLOW_URI, Settings  # noqa: E402
from training.engagement_regimes import REGIMES, Regime, activity_holdout  # noqa: E402
from training.regime_evaluation import RegimeReport, evaluate  # noqa: E402

EXPERIMENT = "omnirec-send-time-bench"


def movielens_regime() -> Regime | None:
    """MovieLens 100K ratings as activity with each person's latest 20 % held out (in UTC:
    the data has no zones), or None when the data set is absent."""
    folder = movielens.dataset_dir()
    if folder is None:
        return None
    train, queries = activity_holdout(movielens.events(folder))
    return Regime(
        "movielens_100k",
        "MovieLens 100K ratings as activity (no zones, UTC); latest 20 % per person held out",
        train,
        queries,
    )


def summary(reports: list[RegimeReport]) -> str:
    """Model minus the best baseline per regime and metric, one line each."""
    lines = ["model − best baseline (positive: the model wins)"]
    for report in reports:
        for metric, (best, value, gap) in report.versus_best().items():
            model = report.metrics["model"][metric]
            lines.append(
                f"  {report.regime:<16} {metric:<22} model {model:.3f}  "
                f"{best:<22} {value:.3f}  {gap:+.3f}"
            )
    return "\n".join(lines)


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI``, else the project default with a relative sqlite path
    anchored at the repo root (so the bench logs to the same store wherever it runs)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_MLFLOW_URI
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.removeprefix(prefix).startswith("/"):
        path = ROOT / uri.removeprefix(prefix)
        path.parent.mkdir(parents=True, exist_ok=True)
        uri = f"{prefix}{path}"
    return uri


def log_to_mlflow(reports: list[RegimeReport], params: dict[str, object], seconds: float) -> str:
    """Log every report's metrics in one run; returns a line saying where."""
    import mlflow

    from service.registry import quiet_mlflow

    quiet_mlflow()
    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    found = mlflow.get_experiment_by_name(EXPERIMENT)
    if found is None:
        root = Settings.artifact_root
        location = root if "://" in root else (ROOT / root).resolve().as_uri()
        experiment_id = mlflow.create_experiment(EXPERIMENT, artifact_location=location)
    else:
        experiment_id = found.experiment_id
    with mlflow.start_run(experiment_id=experiment_id, run_name="send-time-regimes") as run:
        mlflow.log_params(params)
        for report in reports:
            mlflow.log_metrics(report.flat())
        mlflow.log_metric("bench_seconds", seconds)
    return f"MLflow: run {run.info.run_id} in experiment {EXPERIMENT!r} at {uri}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--people", type=int, default=1500, help="people per regime")
    parser.add_argument("--seed", type=int, default=0, help="added to each regime's seed")
    parser.add_argument("--no-mlflow", action="store_true", help="print only")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    reports: list[RegimeReport] = []
    failed: list[str] = []

    def run(regime: Regime) -> None:
        # One regime breaking the model must not hide the others' tables; it still fails
        # the bench (exit status 1) and is named at the end.
        try:
            reports.append(evaluate(regime))
        except Exception as error:  # noqa: BLE001 - reported and turned into the exit status
            failed.append(regime.name)
            print(f"== {regime.name}: FAILED: {type(error).__name__}: {error}\n", flush=True)
            logging.getLogger(__name__).debug("regime %s failed", regime.name, exc_info=True)
            return
        print(reports[-1].table(), "\n", flush=True)

    for offset, generate in enumerate(REGIMES.values(), start=1):
        run(generate(seed=args.seed + offset, people=args.people))
    regime = movielens_regime()
    if regime is None:
        print("movielens_100k: ml-100k not found (set OMNIREC_ML100K); skipped\n")
    else:
        run(regime)
    print(summary(reports))
    if failed:
        print(f"FAILED regimes: {', '.join(failed)}")
    seconds = time.perf_counter() - started
    print(f"\n({seconds:.1f} s for {len(reports)} regimes)")
    if not args.no_mlflow:
        params = {"people": args.people, "seed": args.seed, "regimes": ",".join(REGIMES)}
        print(log_to_mlflow(reports, params, seconds))
    return 1 if failed else 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    sys.exit(main())
