"""``python -m training <command>``: generate data, train, promote, list models, demo.

Every error a person can cause (bad files, bad flags, unreachable stores) ends with one
readable line on stderr and exit code 2; reports (bad rows) follow on extra lines.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from pathlib import Path

from service.bundle import PERSONALISED_KINDS
from service.config import Settings, load_settings
from service.errors import OmnirecError
from training.ease import EASE_REGULARIZATION
from training.validation import AUTO, EASE_LAMBDAS

log = logging.getLogger("training")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training",
        description="omnirec training job (settings: environment variables, see README.md)",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="write a synthetic omnichannel event log")
    gen.add_argument("--users", type=_positive_int, default=2000)
    gen.add_argument("--items", type=_positive_int, default=500)
    gen.add_argument("--days", type=_positive_int, default=60)
    gen.add_argument("--seed", type=int, default=7)
    gen.add_argument("--out", type=Path, required=True, help="output folder")
    gen.add_argument("--format", choices=("parquet", "csv"), default="parquet")

    tr = sub.add_parser("train", help="train, evaluate, log to MLflow, register, publish")
    tr.add_argument(
        "--events",
        type=Path,
        nargs="+",
        required=True,
        help="events CSV / Parquet files or folders (e.g. the base log and live exports)",
    )
    tr.add_argument("--items", type=Path, help="item catalogue CSV / Parquet")
    tr.add_argument(
        "--model",
        choices=(*PERSONALISED_KINDS, AUTO),
        default=AUTO,
        help="registered only if it beats the popularity baseline on the holdout; "
        "auto (default): the best of als, item_knn and ease (λ "
        + "/".join(f"{lam:g}" for lam in EASE_LAMBDAS)
        + ") by validation on the latest part of the training part",
    )
    tr.add_argument(
        "--budget-seconds",
        type=float,
        help="--model auto: seconds validation may spend on model candidates "
        "(default: OMNIREC_TRAIN_BUDGET_SECONDS, 120)",
    )
    tr.add_argument(
        "--backend",
        choices=("implicit", "spark"),
        default="implicit",
        help="where models are fitted: implicit (default: this process) or spark (ALS only, "
        "on OMNIREC_SPARK_MASTER; needs the spark extra and Java 17+; --model auto then "
        "means als)",
    )
    tr.add_argument("--factors", type=_positive_int, default=32)
    tr.add_argument("--iterations", type=_positive_int, help="default: 15 for ALS, 100 for BPR")
    tr.add_argument(
        "--regularization",
        type=float,
        help=f"ALS / BPR L2 (default 5), EASE λ (default {EASE_REGULARIZATION:g}); "
        "with --model auto, ALS's only",
    )
    tr.add_argument(
        "--alpha", type=float, default=1.0, help="ALS: confidence = 1 + alpha × event weight"
    )
    tr.add_argument("--learning-rate", type=float, default=0.01, help="BPR step size")
    tr.add_argument("--neighbours", type=_positive_int, default=50, help="item-kNN K")
    tr.add_argument("--seed", type=int, default=42)
    tr.add_argument(
        "--event-weights",
        default="",
        help="e.g. 'view=1,favourite=4,add_to_cart=6,purchase=10' (dislike is never positive)",
    )
    tr.add_argument("--half-life-days", type=float, help="time decay of event weights")
    tr.add_argument("--test-fraction", type=float, default=0.2)
    tr.add_argument("--min-user-events", type=_positive_int, default=5)
    tr.add_argument("--k", type=_positive_int, default=10, help="metric cut-off")
    tr.add_argument("--skip-bad-rows", action="store_true", help="skip bad rows (still reported)")
    tr.add_argument(
        "--promote", action="store_true", help="move the alias to this run's version regardless"
    )
    tr.add_argument("--no-publish", action="store_true", help="do not write features to Redis")
    tr.add_argument(
        "--no-transitions",
        action="store_true",
        help="leave out the order-aware part (what follows what); e.g. to measure its worth "
        "or where the order of events means nothing",
    )
    tr.add_argument("--popularity-half-life-days", type=float, default=30.0)

    ex = sub.add_parser("export-events", help="write live events (TrackEvents) to Parquet")
    ex.add_argument("--out", type=Path, required=True, help="folder for the Parquet files")

    au = sub.add_parser(
        "export-audience",
        help="a campaign audience (who, which items, when, which channel) as Parquet",
        description="The members Campaigns.Audience pages through, for batch senders; "
        "resumable by page (--resume).",
    )
    au.add_argument("--category", help="promote every item of this catalogue category")
    au.add_argument("--items", nargs="+", metavar="ID", default=[], help="promoted item ids")
    au.add_argument("--out", type=Path, required=True, help="the Parquet file to write")
    au.add_argument(
        "--channels", nargs="+", metavar="CHANNEL", default=[], help="allowed (default: all)"
    )
    au.add_argument("--not-before", help="ISO 8601 window start (default: now)")
    au.add_argument("--window-hours", type=int, default=0, help="1-168 (default 24)")
    au.add_argument(
        "--quiet-hours",
        default="",
        metavar="START-END",
        help="local quiet hours, e.g. 22-8 (the default); 'none' plans at any hour",
    )
    au.add_argument("--page-size", type=_positive_int, default=1000)
    au.add_argument("--max-members", type=_positive_int, help="stop after the best N")
    au.add_argument(
        "--pages", type=_positive_int, help="stop after N pages (--resume continues later)"
    )
    au.add_argument(
        "--resume", action="store_true", help="continue the interrupted export into --out"
    )
    au.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")

    it = sub.add_parser("items", help="add or update catalogue items from a file")
    it.add_argument("--file", type=Path, required=True, help="catalogue CSV / Parquet")

    pr = sub.add_parser("promote", help="point the alias at a registered version (roll back)")
    pr.add_argument("--version", required=True)
    pr.add_argument("--alias", help="default: OMNIREC_MODEL_ALIAS (champion)")

    sub.add_parser("models", help="list registered versions and their aliases")

    up = sub.add_parser(
        "up", help="leave redis-server, a trained demo model and the service running (make up)"
    )
    up.add_argument("--users", type=_positive_int, default=2000)
    up.add_argument("--items", type=_positive_int, default=500)
    up.add_argument("--days", type=_positive_int, default=60)
    up.add_argument("--seed", type=int, default=7)
    sub.add_parser("down", help="stop what `up` started (make down); its data stays")

    ab = sub.add_parser(
        "experiment-report",
        help="an A/B experiment's arms: exposures, attributed rates, lifts, sample ratio",
    )
    ab.add_argument("--experiment", required=True, help="its name in the experiments file")
    ab.add_argument(
        "--events",
        type=Path,
        nargs="+",
        required=True,
        help="events CSV / Parquet files or folders holding exposures and attributed events",
    )
    ab.add_argument("--experiments-file", help="default: OMNIREC_EXPERIMENTS_FILE")
    ab.add_argument(
        "--window-hours",
        type=float,
        default=24.0,
        help="an event counts when at most this long after the exposure it names",
    )
    ab.add_argument("--no-mlflow", action="store_true", help="print only; log no MLflow run")

    demo = sub.add_parser("demo", help="generate → train → serve → print recommendations")
    demo.add_argument("--users", type=_positive_int, default=2000)
    demo.add_argument("--items", type=_positive_int, default=500)
    demo.add_argument("--days", type=_positive_int, default=60)
    demo.add_argument("--seed", type=int, default=7)
    demo.add_argument("--workdir", type=Path, default=Path(".omnirec/demo"))
    return parser


def run(args: argparse.Namespace, settings: Settings) -> int:
    if args.command == "generate":
        from training.synthetic import generate

        out = generate(args.users, args.items, args.days, args.seed, args.out, fmt=args.format)
        print(f"events: {out.events}\nitems:  {out.items}\ntruth:  {out.truth}")
        return 0
    if args.command == "train":
        return _train(args, settings)
    if args.command == "up":
        from devtools.stack import up

        return up(args.users, args.items, args.days, args.seed)
    if args.command == "down":
        from devtools.stack import down

        return down()
    if args.command == "export-events":
        from service.config import feature_store
        from training.export import export_events

        result = export_events(feature_store(settings, 30.0), args.out)
        if result.gap:
            print("warning: events were trimmed from the stream before they were exported")
        print(f"exported {result.events} events" + (f" to {result.path}" if result.path else ""))
        return 0
    if args.command == "export-audience":
        return _export_audience(args, settings)
    if args.command == "items":
        from service.config import feature_store
        from training.catalogue_file import load_catalogue

        catalogue = load_catalogue(args.file)
        created = feature_store(settings, 30.0).upsert_items(list(catalogue.items()))
        print(f"catalogue: {len(catalogue)} items written, {created} new")
        return 0
    if args.command == "promote":
        from service.registry import ModelRegistry, ensure_version_exists

        registry = ModelRegistry(settings)
        ensure_version_exists(registry, args.version)
        alias = args.alias or settings.model_alias
        registry.set_alias(alias, args.version)
        print(f"{alias} → {registry.name}/{args.version}")
        return 0
    if args.command == "models":
        from service.registry import ModelRegistry

        rows = ModelRegistry(settings).versions()
        if not rows:
            print(f"no versions of {settings.model_name!r} registered yet")
        for row in rows:
            label = f"{settings.model_name}/{row['version']}"
            print(
                f"{label:<16} {row['aliases'] or '-':<12} {row['kind'] or '?':<11} "
                f"run {row['run_id']}"
            )
            if row["decision"]:
                print(f"{'':<16} {row['decision']}")
        return 0
    if args.command == "experiment-report":
        from training import experiment_report

        return experiment_report.run(
            settings,
            args.experiment,
            args.events,
            args.experiments_file,
            args.window_hours,
            log_run=not args.no_mlflow,
        )
    if args.command == "demo":
        from devtools.demo import run_demo

        return run_demo(settings, args)
    raise AssertionError(args.command)


def _train(args: argparse.Namespace, settings: Settings) -> int:
    from training.matrix import parse_weights
    from training.models import ModelParams
    from training.pipeline import TrainConfig, train

    if not 0 < args.test_fraction < 1:
        raise OmnirecError(f"--test-fraction: must be between 0 and 1, got {args.test_fraction}")
    for flag in ("half_life_days", "popularity_half_life_days", "budget_seconds"):
        value = getattr(args, flag)
        if value is not None and value <= 0:
            raise OmnirecError(f"--{flag.replace('_', '-')}: must be positive, got {value}")
    # auto validates every candidate from ALS's settings; each candidate sets its kind.
    kind = "als" if args.model == AUTO else args.model
    spark = args.backend == "spark"
    if spark and kind != "als":
        raise OmnirecError(f"--backend spark fits als only: use --model als, not {kind}")
    if spark and args.model == AUTO:
        # Spark has one model to choose from; what serving blends in is still validated.
        print("--backend spark: fitting als, the one model Spark fits", flush=True)
    cfg = TrainConfig(
        events=args.events,
        items=args.items,
        params=ModelParams(
            kind=kind,
            factors=args.factors,
            regularization=args.regularization,
            alpha=args.alpha,
            iterations=args.iterations or (100 if args.model == "bpr" else 15),
            learning_rate=args.learning_rate,
            neighbours=args.neighbours,
            seed=args.seed,
            backend=args.backend,
        ),
        weights=parse_weights(args.event_weights),
        half_life_days=args.half_life_days,
        test_fraction=args.test_fraction,
        min_user_events=args.min_user_events,
        k=args.k,
        skip_bad_rows=args.skip_bad_rows,
        promote=args.promote,
        publish=not args.no_publish,
        transitions=not args.no_transitions,
        popularity_half_life_days=args.popularity_half_life_days,
        choose_model=args.model == AUTO and not spark,
        budget_seconds=args.budget_seconds or settings.train_budget_seconds,
    )
    result = train(settings, cfg)
    print(f"registered {settings.model_name}/{result.version} ({result.kind}, run {result.run_id})")
    print(f"{settings.model_alias}: {result.decision}")
    if result.publication:
        print(f"features published to Redis as {result.publication}")
    return 0


#: Request fields as export-audience's flags, for its error lines.
_AUDIENCE_FLAGS = (
    (re.compile(r"^item_ids(\[\d+\])?"), "--items"),
    (re.compile(r"^category"), "--category"),
    (re.compile(r"^channels(\[\d+\])?"), "--channels"),
    (re.compile(r"^window_hours"), "--window-hours"),
    (re.compile(r"^quiet_(start|end)_hour"), "--quiet-hours"),
    (re.compile(r"^not_before"), "--not-before"),
)


def _export_audience(args: argparse.Namespace, settings: Settings) -> int:
    import time

    import pandas as pd

    from service.campaigns import Campaign
    from service.errors import BadInput, NotFound
    from training.audience import export_audience, summary

    if not args.items and not args.category:
        raise OmnirecError("give --category or --items (or both)")
    not_before = None
    if args.not_before:
        try:
            when = pd.Timestamp(args.not_before)
        except ValueError:
            raise OmnirecError(f"--not-before: {args.not_before!r} is not ISO 8601") from None
        when = when.tz_localize("UTC") if when.tzinfo is None else when
        not_before = when.timestamp()
    quiet: tuple[int | None, int | None] = (None, None)
    text = args.quiet_hours.strip().lower()
    if text and text != "none":
        start, dash, end = text.partition("-")
        if not (dash and start.isdigit() and end.isdigit()):
            raise OmnirecError(f"--quiet-hours: {args.quiet_hours!r} is not START-END, e.g. 22-8")
        quiet = (int(start), int(end))
    try:
        campaign = Campaign.of(
            args.items,
            args.category or "",
            args.channels,
            not_before,
            args.window_hours,
            *quiet,
            ignore_quiet_hours=text == "none",
            now=time.time(),
        )
        result = export_audience(
            settings,
            campaign,
            args.out,
            page_size=args.page_size,
            max_members=args.max_members,
            pages=args.pages,
            resume=args.resume,
            progress=not args.no_progress,
        )
    except (BadInput, NotFound) as exc:
        message = str(exc)
        for pattern, flag in _AUDIENCE_FLAGS:
            message = pattern.sub(flag, message, count=1)
        raise OmnirecError(message) from None
    print(summary(result))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings()
        logging.basicConfig(
            level=settings.log_level.upper(),
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
        from service.registry import quiet_mlflow

        quiet_mlflow()
        return run(args, settings)
    except OmnirecError as exc:
        print(f"omnirec {args.command}: error: {exc}", file=sys.stderr)
        report = getattr(exc, "report", None)
        if report is not None:
            print(report.details(), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
