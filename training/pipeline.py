"""The training job: events → holdout evaluation → final model → MLflow → Redis."""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd

from service.ann import training_index
from service.bundle import POPULARITY, SIMILARITY_KINDS, ModelBundle
from service.config import Settings, feature_store, identity_secret
from service.errors import BadInput
from service.identity import Identities
from service.recommender import Blend, Recommender
from service.registry import BUNDLE_ARTIFACT_PATH, ModelRegistry
from training import evaluation, mlflow_view, validation
from training.catalogue_file import load_catalogue
from training.engagement import evaluate_send_time, learn_priors, learn_tuning, user_profiles
from training.event_log import load_events
from training.guarded_fit import FitFailed, fit_bundle
from training.matrix import DEFAULT_WEIGHTS, Interactions, build_interactions
from training.models import SPARK, ModelParams, fit, popularity_bundle
from training.publish import popularity, publish
from training.transitions import fit_transitions

log = logging.getLogger(__name__)

#: The metric that decides promotion, at the configured k.
PRIMARY = "ndcg"
#: The holdout ranks everybody held out, but on large catalogues at most as many as keep
#: one ranking under this many scores (a seeded sample; about 30 s on 2 cores), and never
#: fewer than :data:`HOLDOUT_MIN_PEOPLE`: at a million items and 20,000 people, 7,800.
HOLDOUT_MAX_SCORES = 5_000_000_000
HOLDOUT_MIN_PEOPLE = 5000
#: What the popularity baseline's holdout metrics start with in MLflow.
BASELINE_PREFIX = f"baseline_{POPULARITY}_"


def holdout_metric(name: str, metric: str, k: int) -> str:
    """The MLflow name of a holdout metric: ``ndcg_at_10`` for the run's model whatever its
    kind (so every run's model compares in one column), ``baseline_popularity_ndcg_at_10``
    for the baseline. Runs before these names logged ``<name>_<metric>_at_<k>``."""
    prefix = BASELINE_PREFIX if name == POPULARITY else ""
    return f"{prefix}{metric}_at_{k}"


@dataclass
class TrainConfig:
    events: Path | list[Path]
    """One events file or folder, or several (e.g. the base log and live exports)."""
    items: Path | None = None
    params: ModelParams = field(default_factory=ModelParams)
    weights: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    half_life_days: float | None = None
    """Time decay of event weights in the matrix (None: no decay)."""
    test_fraction: float = 0.2
    min_user_events: int = 5
    k: int = 10
    skip_bad_rows: bool = False
    promote: bool = False
    """Move the alias to the new version whatever the holdout says."""
    publish: bool = True
    popularity_half_life_days: float = 30.0
    transitions: bool = True
    """Let validation weigh in item transitions (``--no-transitions``: never)."""
    budget_seconds: float = 120.0
    """``--model auto``: seconds validation may spend on model candidates
    (``OMNIREC_TRAIN_BUDGET_SECONDS``, ``--budget-seconds``); see
    :func:`training.validation.choose`."""
    choose_model: bool = False
    """``--model auto``: choose the kind (and EASE's λ) by validation inside the training
    part (:mod:`training.validation`); ``params`` gives the candidates' other settings.
    The recency half-life and the transitions' blend are chosen there in every run."""


@dataclass
class HoldoutResult:
    metrics: dict[str, dict[str, float]]
    """name (the model kind, ``popularity``) → metric → value."""
    users_evaluated: int
    k: int

    def flat(self) -> dict[str, float]:
        """:func:`holdout_metric` names → value, as logged to MLflow."""
        return {
            holdout_metric(name, metric, self.k): value
            for name, values in self.metrics.items()
            for metric, value in values.items()
        }

    def table(self) -> str:
        names = list(self.metrics)
        lines = [
            f"holdout: {self.users_evaluated} people, k={self.k}",
            f"{'metric':<14}" + "".join(f"{n:>12}" for n in names),
        ]
        for metric in evaluation.METRICS:
            row = "".join(f"{self.metrics[n][metric]:>12.4f}" for n in names)
            lines.append(f"{metric + '@' + str(self.k):<14}{row}")
        return "\n".join(lines)


@dataclass(frozen=True)
class Selection:
    """What a run registers: the winner on the holdout's primary metric."""

    kind: str
    """The personalised model's kind, or ``popularity``."""
    score: float
    """Its primary metric on the holdout."""
    text: str
    """Why, in words (logged, tagged, printed)."""


@dataclass
class TrainResult:
    run_id: str
    version: str
    kind: str
    """The kind of the registered version (the model's, or ``popularity``)."""
    selection: str
    promoted: bool
    decision: str
    holdout: HoldoutResult
    publication: str | None
    validation: str = ""
    """What validation chose, in words (``Choice.text``)."""
    run_name: str = ""
    """The MLflow run's name (``als-f32 · events to 2026-11-20``)."""


def one_person_each(frame: pd.DataFrame, identities: Identities) -> pd.DataFrame:
    """Relabel every linked user id to its person, and drop the events of erased people,
    so training sees one person per human and never brings an erased one back."""
    links = identities.links()
    if links:
        frame = frame.assign(user_id=frame["user_id"].map(lambda u: links.get(u, u)))
        log.info("identity links: %d user ids relabelled to their person", len(links))
    erased = identities.is_erased(frame["user_id"].unique().tolist())
    if erased:
        frame = frame[~frame["user_id"].isin(erased)].reset_index(drop=True)
        log.info("left out the events of %d erased people", len(erased))
    return frame


def evaluate_holdout(
    frame: pd.DataFrame,
    params: ModelParams,
    weights: Mapping[str, float],
    *,
    half_life_days: float | None = None,
    test_fraction: float = 0.2,
    min_user_events: int = 5,
    k: int = 10,
    blend: Blend | None = None,
    window: int = 0,
    history_length: int = 200,
) -> HoldoutResult:
    """Fit on the past of each person, score the latest part: model vs popularity.

    With a ``blend``, the model is ranked as serving ranks (``evaluation.served_ranker``:
    recency-weighted history, and transitions of ``window`` steps when it is > 0), fitted
    in a process of its own (:func:`training.guarded_fit.fit_bundle`, which raises
    :class:`~training.guarded_fit.FitFailed`); without one, by the model's own
    ``recommend`` (how the bench scores its peers)."""
    prepared = evaluation.prepare(
        frame,
        weights,
        half_life_days=half_life_days,
        test_fraction=test_fraction,
        min_user_events=min_user_events,
    )
    train, n_items = prepared.train, prepared.train.matrix.shape[1]
    log.info(
        "holdout: %d held-out events, %d people with something new to find",
        len(prepared.split.test),
        len(prepared.relevant),
    )
    limit = evaluation.people_for(n_items, HOLDOUT_MAX_SCORES, HOLDOUT_MIN_PEOPLE, None)
    relevant = evaluation.sample(prepared.relevant, limit, "holdout", n_items, HOLDOUT_MAX_SCORES)
    if blend is None:
        ranker = evaluation.model_ranker(fit(params, train.matrix), train.matrix)
    else:
        bundle = fit_bundle(
            params,
            train.matrix,
            train.user_ids,
            train.item_ids,
            {"weights": dict(weights), "serving": blend.to_metadata()},
            label=f"{validation.label(params)} (holdout)",
        ).bundle
        if window:
            bundle.transitions = fit_transitions(
                prepared.split.train, weights, train.item_ids, window=window
            )
        history = evaluation.histories(prepared.split.train, train.user_ids, history_length)
        ranker = evaluation.served_ranker(Recommender(bundle), history, train.matrix)
    metrics = {
        params.kind: evaluation.evaluate(ranker, relevant, n_items, k),
        "popularity": evaluation.evaluate(
            evaluation.popularity_ranker(train.matrix), relevant, n_items, k
        ),
    }
    return HoldoutResult(metrics, len(relevant), k)


def train(settings: Settings, cfg: TrainConfig) -> TrainResult:
    """Run the whole job; see the README for what each step writes where."""
    import mlflow

    cfg.params.validate()
    # Settings first: the secret is checked before minutes of loading and fitting.
    secret = identity_secret(settings)
    if cfg.params.backend == SPARK:
        if cfg.choose_model:
            raise BadInput("model", "the spark backend fits als only: name it, not auto")
        # Before minutes of loading too: no Java, or a master that does not answer, fails
        # now; validation, the holdout and the final fit then share this session.
        from training import spark_als

        spark_als.session(settings.spark_master)
    started = time.perf_counter()
    sources = cfg.events if isinstance(cfg.events, list) else [cfg.events]
    logs = [load_events(path, skip_bad_rows=cfg.skip_bad_rows) for path in sources]
    frame = pd.concat([one.frame for one in logs], ignore_index=True)
    bad_rows = sum(one.report.bad_rows for one in logs)
    frame = one_person_each(frame, Identities(feature_store(settings), secret))
    catalogue = load_catalogue(cfg.items) if cfg.items else {}
    full = build_interactions(frame, cfg.weights, half_life_days=cfg.half_life_days)

    # Validation and the holdout rank from the history serving will hold.
    choice = _choose(frame, cfg, full.matrix.shape[1], settings.history_length)
    print(choice.table(), flush=True)
    print(f"chosen by {choice.text}", flush=True)
    served = _holdout_and_fit(frame, full, cfg, choice, settings.history_length)
    cfg = replace(cfg, params=served.params)
    holdout = served.holdout
    print(holdout.table(), flush=True)
    sendtime = evaluate_send_time(
        frame,
        cfg.test_fraction,
        settings.engagement_half_life_days,
        settings.default_timezone,
    )
    print(sendtime.table(), flush=True)
    data_end = int(frame["timestamp"].max())
    tuning = learn_tuning(frame, settings.engagement_half_life_days, settings.default_timezone)
    print(tuning.summary(), flush=True)
    priors = learn_priors(
        frame, settings.engagement_half_life_days, settings.default_timezone, tuning=tuning.tuning
    )
    message_half_life, activity_half_life = tuning.tuning.recency(
        settings.engagement_half_life_days
    )
    # Published to Redis, and summed for the run's engagement-by-week plot.
    profiles = user_profiles(
        frame, message_half_life, settings.default_timezone, activity_half_life
    )

    chosen = served.selection
    print(chosen.text, flush=True)

    registry = ModelRegistry(settings)
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    experiment_id = mlflow_view.experiment(settings.experiment, settings.artifact_root)
    name = mlflow_view.run_name(cfg.params, data_end)
    table = mlflow_view.evaluation_rows(
        holdout.metrics,
        holdout.users_evaluated,
        cfg.k,
        mlflow_view.model_label(cfg.params),
        chosen.kind,
    )
    summary = mlflow_view.events_summary(frame)
    with mlflow.start_run(experiment_id=experiment_id, run_name=name) as run:
        mlflow.log_params(_params(cfg, sources, frame, bad_rows))
        mlflow.log_params(served.params_logged())
        mlflow.log_metrics(holdout.flat())
        mlflow.log_metrics(sendtime.flat())
        mlflow.log_metrics(tuning.flat())
        mlflow.log_metric("holdout_users", holdout.users_evaluated)
        mlflow.log_metrics(choice.flat())
        mlflow.log_metric("validation_users", choice.people)
        mlflow.log_table(choice.rows(), "validation.json")
        mlflow_view.log_view(
            evaluation=table,
            k=cfg.k,
            choice=choice,
            send_time=sendtime,
            profiles=profiles,
            summary=summary,
            dataset=mlflow_view.events_dataset(summary, sources, mlflow_view.data_label(data_end)),
        )

        meta = {
            **_bundle_meta(cfg, full, frame, holdout, run.info.run_id),
            "engagement_priors": priors.to_dict(),
        }
        if chosen.kind == POPULARITY:
            log.info("registering the popularity baseline; %s is not refitted", cfg.params.kind)
            bundle = popularity_bundle(
                popularity(frame, cfg.weights, cfg.popularity_half_life_days), meta
            )
        else:
            for iteration, _seconds, metric, value in served.progress:
                mlflow.log_metric(metric, value, step=iteration)
            meta["serving"] = served.blend.to_metadata()
            meta["transition_window"] = served.window
            bundle = served.bundle
            bundle.metadata = {**bundle.metadata, **meta}
            if bundle.kind in SIMILARITY_KINDS:
                # Campaigns.Audience ranks everybody with it (the factor kinds have their
                # user factors for that).
                bundle.interactions = full.matrix
            if served.window:
                bundle.transitions = fit_transitions(
                    frame, cfg.weights, full.item_ids, window=served.window
                )
            # The approximate-search index serving will use (OMNIREC_ANN; by default only
            # for catalogues above its threshold), with the recall its build measured.
            bundle.ann = training_index(bundle, settings.ann)
            if bundle.ann is not None:
                mlflow.log_metrics({f"ann_{k}": v for k, v in bundle.ann.facts.items()})
        with tempfile.TemporaryDirectory(prefix="omnirec-bundle-") as tmp:
            bundle.save(tmp)
            mlflow.log_artifacts(tmp, artifact_path=BUNDLE_ARTIFACT_PATH)
        source = mlflow.get_artifact_uri(BUNDLE_ARTIFACT_PATH)
        promoted, decision = decide(registry, settings.model_alias, chosen, cfg)
        tags = {
            "omnirec.kind": chosen.kind,
            "omnirec.selection": chosen.text,
            "omnirec.promoted": str(promoted).lower(),
            "omnirec.decision": decision,
        }
        tags["omnirec.chosen_by"] = choice.text
        if choice.skipped:
            tags["omnirec.validation_skipped"] = _clip(
                "; ".join(f"{s.label} {s.reason}" for s in choice.skipped)
            )
        if served.fallback:
            tags["omnirec.fallback"] = _clip(served.fallback)
        headline = mlflow_view.headline_tags(
            holdout.metrics[chosen.kind], holdout.users_evaluated, cfg.k, data_end
        )
        version = registry.register(
            run.info.run_id,
            source,
            tags={**tags, **headline},
            description=mlflow_view.version_description(
                [chosen.text, f"{settings.model_alias}: {decision}", choice.text], table, cfg.k
            ),
        )
        if promoted:
            registry.set_alias(settings.model_alias, version)
        mlflow.set_tags({"omnirec.model_version": version, **tags})
        publication = None
        if cfg.publish:
            # Publishing writes large pipelines: allow more than a request's timeout.
            store = feature_store(settings, max(settings.redis_timeout_seconds, 10.0))
            publication = publish(
                store,
                frame,
                catalogue,
                cfg.weights,
                {"run_id": run.info.run_id, "model_version": version, "data_end": data_end},
                history_length=settings.history_length,
                popularity_half_life_days=cfg.popularity_half_life_days,
                keep=settings.keep_publications,
                engagement={user: p.to_json() for user, p in profiles.items()},
            )
            mlflow.set_tag("omnirec.publication", publication)
        mlflow.log_metric("train_seconds", time.perf_counter() - started)
    log.info("done in %.1f s", time.perf_counter() - started)
    link = mlflow_view.ui_link(settings.mlflow_tracking_uri, experiment_id, run.info.run_id)
    print(f"MLflow run {name!r}: {link}", flush=True)
    return TrainResult(
        run.info.run_id,
        version,
        chosen.kind,
        chosen.text,
        promoted,
        decision,
        holdout,
        publication,
        choice.text,
        name,
    )


@dataclass
class Served:
    """What the run registers when the model wins: validation's choice, or the best
    candidate after it whose fits succeeded (:func:`_holdout_and_fit`)."""

    params: ModelParams
    blend: Blend
    window: int
    holdout: HoldoutResult
    selection: Selection
    bundle: ModelBundle | None
    """Fitted on every event; None when the popularity baseline won the holdout."""
    progress: list[tuple[int, float, str, float]]
    """The final fit's per-iteration figures, for MLflow."""
    fallback: str = ""
    """Why validation's first choice is not the one served, in words ("" when it is)."""

    def params_logged(self) -> dict[str, Any]:
        return validation.serving_params(self.blend, self.window)


def _holdout_and_fit(
    frame: pd.DataFrame,
    full: Interactions,
    cfg: TrainConfig,
    choice: validation.Choice,
    history_length: int,
) -> Served:
    """The holdout of validation's choice and, when it beats popularity, its fit on every
    event, both in processes of their own. Where either fit fails (crash, memory), the
    next candidate by validation NDCG takes its place with the default blend (the chosen
    one was tuned for the model that failed), so no candidate can take the run down."""
    failures: list[str] = []
    for params in choice.fallbacks():
        first = params == choice.params
        blend, window = (choice.blend, choice.window) if first else (Blend(), 0)
        try:
            holdout = evaluate_holdout(
                frame,
                params,
                cfg.weights,
                half_life_days=cfg.half_life_days,
                test_fraction=cfg.test_fraction,
                min_user_events=cfg.min_user_events,
                k=cfg.k,
                blend=blend,
                window=window,
                history_length=history_length,
            )
            selection = select(holdout, params.kind)
            bundle, progress = None, []
            if selection.kind != POPULARITY:
                log.info("fitting the final model on all %d events", len(frame))
                fitted = fit_bundle(
                    params,
                    full.matrix,
                    full.user_ids,
                    full.item_ids,
                    {},
                    label=validation.label(params),
                )
                bundle, progress = fitted.bundle, fitted.progress
        except FitFailed as exc:
            failures.append(str(exc))
            log.warning("%s: trying the next candidate", exc)
            print(f"{exc}: trying the next candidate", flush=True)
            continue
        fallback = ""
        if failures:
            fallback = f"{'; '.join(failures)}: serving {validation.label(params)} instead"
        return Served(params, blend, window, holdout, selection, bundle, progress, fallback)
    raise FitFailed("training", "every candidate's fit failed: " + "; ".join(failures))


def _clip(text: str) -> str:
    """MLflow tag values are limited in length: long lists of reasons are cut."""
    return text if len(text) <= 4000 else text[:3997] + "..."


def _choose(
    frame: pd.DataFrame, cfg: TrainConfig, n_items: int, history_length: int
) -> validation.Choice:
    """Validate the candidates (``--model auto``; else the named kind) and the serving
    blend on the final holdout's training part only."""
    training_part = evaluation.time_split(frame, cfg.test_fraction, cfg.min_user_events).train
    return validation.choose(
        training_part,
        validation.candidates(cfg.params, n_items) if cfg.choose_model else [cfg.params],
        cfg.weights,
        budget_seconds=cfg.budget_seconds if cfg.choose_model else None,
        history_length=history_length,
        transitions=cfg.transitions,
        half_life_days=cfg.half_life_days,
        test_fraction=cfg.test_fraction,
        min_user_events=cfg.min_user_events,
        k=cfg.k,
    )


def select(holdout: HoldoutResult, kind: str) -> Selection:
    """The personalised model when it beats the popularity baseline on the holdout's
    primary metric, else the baseline. A tie is no win: the simpler model stays."""
    model = holdout.metrics[kind][PRIMARY]
    baseline = holdout.metrics[POPULARITY][PRIMARY]
    shown, shown_baseline = _pair(model, baseline)
    on = f"{PRIMARY}@{holdout.k} {shown} {{}} {shown_baseline}, {holdout.users_evaluated} people"
    if model > baseline:
        return Selection(kind, model, f"{kind} beat {POPULARITY}: {on.format('>')}")
    verb, sign = ("tied", "=") if model == baseline else ("lost to", "<")
    return Selection(
        POPULARITY,
        baseline,
        f"{kind} {verb} {POPULARITY} ({on.format(sign)}): registered the {POPULARITY} baseline",
    )


def decide(
    registry: ModelRegistry, alias: str, chosen: Selection, cfg: TrainConfig
) -> tuple[bool, str]:
    """Whether ``alias`` moves to the run's version, and why in words."""
    new = f"{chosen.kind} {PRIMARY}@{cfg.k} {chosen.score:.4f}"
    if cfg.promote:
        return True, f"promoted by request ({new})"
    current = registry.version_behind(alias)
    if current is None:
        return True, f"first champion ({new})"
    held = f"{registry.name}/{current}"
    champion = _champion_metric(registry, current, cfg.k)
    if champion is None:
        return False, f"kept {held}: it logged no {PRIMARY}@{cfg.k} to compare; use --promote"
    shown, shown_champion = _pair(chosen.score, champion)
    on = f"{PRIMARY}@{cfg.k} {shown} {{}} {shown_champion}"
    if chosen.score > champion:
        return True, f"beat {held}: {chosen.kind} {on.format('>')}"
    if chosen.score == champion:
        # Ties go to the new version: it has seen fresher data.
        return True, f"tied {held} ({chosen.kind} {on.format('=')}): the newer version serves"
    return False, f"kept {held}: {chosen.kind} {on.format('<')}"


def _pair(a: float, b: float) -> tuple[str, str]:
    """Both numbers at 4 decimals, or at as many more as it takes to show they differ."""
    for digits in range(4, 10):
        shown = f"{a:.{digits}f}", f"{b:.{digits}f}"
        if a == b or shown[0] != shown[1]:
            return shown
    return repr(a), repr(b)


def _champion_metric(registry: ModelRegistry, version: str, k: int) -> float | None:
    """The champion's logged holdout metric at ``k``: that of the kind it was registered
    as (``omnirec.kind``; versions from before the tag: the personalised model's), under
    :func:`holdout_metric`'s name or, for versions of older runs, ``<kind>_ndcg_at_<k>``."""
    metrics = registry.run_metrics(version)
    kind = registry.version_tags(version).get("omnirec.kind")
    if kind:
        for name in (holdout_metric(kind, PRIMARY, k), f"{kind}_{PRIMARY}_at_{k}"):
            if name in metrics:
                return metrics[name]
        return None
    # Only runs from before the kind tag (and before today's names) registered without it.
    found = [
        value
        for name, value in metrics.items()
        if name.endswith(f"_{PRIMARY}_at_{k}")
        and not name.startswith(("popularity_", "sendtime_", BASELINE_PREFIX))
    ]
    return found[0] if found else None


def _params(
    cfg: TrainConfig, sources: list[Path], frame: pd.DataFrame, bad_rows: int
) -> dict[str, Any]:
    return {
        **{f"model.{k}": v for k, v in cfg.params.relevant().items()},
        "model.chosen_by": "validation" if cfg.choose_model else "flag",
        **{f"weight.{k}": v for k, v in cfg.weights.items()},
        "half_life_days": cfg.half_life_days or "none",
        "test_fraction": cfg.test_fraction,
        "min_user_events": cfg.min_user_events,
        "k": cfg.k,
        "events_path": ", ".join(str(p) for p in sources)[:500],
        "items_path": str(cfg.items or ""),
        "events_rows": len(frame),
        "events_bad_rows_skipped": bad_rows,
        "events_users": frame["user_id"].nunique(),
        "events_items": frame.loc[frame["item_id"] != "", "item_id"].nunique(),
        "data_start": _iso(frame["timestamp"].min()),
        "data_end": _iso(frame["timestamp"].max()),
    }


def _bundle_meta(
    cfg: TrainConfig, full: Interactions, frame: pd.DataFrame, holdout: HoldoutResult, run_id: str
) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "weights": dict(cfg.weights),
        "half_life_days": cfg.half_life_days,
        "data_end": int(frame["timestamp"].max()),
        "interactions": int(full.matrix.nnz),
        "holdout": holdout.flat(),
        "trained_at": int(time.time()),
    }


def _iso(ts: Any) -> str:
    return pd.Timestamp(int(ts), unit="s", tz="UTC").isoformat() if pd.notna(ts) else ""
