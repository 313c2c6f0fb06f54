"""What a training run shows an ML engineer in MLflow, beyond its metrics and the bundle.

- The experiment opens in MLflow's model-training view, not its GenAI one
  (:func:`experiment`).
- Each run is named by its model and data (:func:`run_name`):
  ``als-f32 · events to 2026-11-20``.
- Tables (:func:`log_view`): ``evaluation.json`` (model and baseline × holdout metrics),
  ``send_time.json`` (methods × send-time metrics), ``events.json`` (the log by event type
  and channel); ``validation.json`` is logged by the pipeline from ``Choice.rows()``.
- Plots, PNG under ``plots/``: ``holdout.png`` (model vs popularity), ``validation.png``
  (the trials that chose the model, its recency and transitions), ``send_time.png``
  (methods vs hit rate, and channel accuracy), ``engagement_week.png`` (activity share
  and open rate by local hour × weekday).
- The training data as an MLflow dataset input (:func:`events_dataset`): the log's summary
  by event type and channel, with the log's location as source; never the log itself.

Why the experiment tag and the link: MLflow 3 marks an experiment's kind with the tag
``mlflow.experimentKind`` (the UI writes ``custom_model_development`` when someone picks
"Machine learning" for an experiment). The UI of MLflow 3.17 shows the view of its sidebar
toggle, remembered per browser and ``GenAI`` at first, whatever the tag; a link with
``?workflowType=machine_learning`` opens it in the model-training view, so the job prints
one (:func:`ui_link`).

Plots are drawn on ``matplotlib.figure.Figure`` without ``pyplot``: no GUI backend is ever
chosen, no window opens, and no global figure state outlives a call.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from service.bundle import EASE, POPULARITY
from service.send_time import HOURS, WEEK_HOURS, EngagementProfile
from training import evaluation
from training.engagement import METHODS, SendTimeReport
from training.models import ModelParams
from training.validation import Choice

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

#: An artifact root with a scheme (``s3://…``, MLflow's short ``mlflow-artifacts:/…``)
#: is a URI; anything else a local folder.
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
log = logging.getLogger(__name__)

#: The experiment tag MLflow 3 reads for an experiment's kind, and the model-training kind.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING = "custom_model_development"
#: The UI's query parameter that picks its model-training view (the sidebar toggle's value).
UI_VIEW_QUERY = "workflowType=machine_learning"

MODEL_COLOUR = "tab:blue"
BASELINE_COLOUR = "tab:gray"
CHOSEN_COLOUR = "tab:orange"
#: Lines of several candidates: the cycle without the chosen one's orange.
LINE_COLOURS = ("tab:blue", "tab:green", "tab:purple", "tab:brown", "tab:pink", "tab:olive")
WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


# --- experiment and run ------------------------------------------------------------------


def experiment(name: str, artifact_root: str) -> str:
    """The id of experiment ``name``, created (artifacts under ``artifact_root``) when
    missing; either way tagged as a model-training experiment, unless it already names a
    kind (someone chose one in the UI: theirs stands)."""
    import mlflow

    found = mlflow.get_experiment_by_name(name)
    if found is None:
        location = (
            artifact_root if _URI.match(artifact_root) else Path(artifact_root).resolve().as_uri()
        )
        return mlflow.create_experiment(
            name, artifact_location=location, tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING}
        )
    if EXPERIMENT_KIND_TAG not in found.tags:
        mlflow.MlflowClient().set_experiment_tag(
            found.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING
        )
        log.info("experiment %r: tagged %s=%s", name, EXPERIMENT_KIND_TAG, MODEL_TRAINING)
    return found.experiment_id


def model_label(params: ModelParams) -> str:
    """``als-f32``, ``bpr-f64``, ``item_knn-k50``, ``ease-λ1000``: the model's kind and
    its defining setting, as runs are named."""
    if params.kind == EASE:
        return f"{EASE}-λ{params.regularization:g}"
    if params.kind == "item_knn":
        return f"item_knn-k{params.neighbours}"
    return f"{params.kind}-f{params.factors}"


def data_label(data_end: int) -> str:
    """``events to 2026-11-20``: the (UTC) day of the newest event."""
    return f"events to {pd.Timestamp(int(data_end), unit='s', tz='UTC'):%Y-%m-%d}"


def run_name(params: ModelParams, data_end: int) -> str:
    """``als-f32 · events to 2026-11-20``: the model and its data."""
    return f"{model_label(params)} · {data_label(data_end)}"


def ui_link(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    """Where the run opens in the MLflow UI, in its model-training view: a full URL when
    the tracking URI is the server's, else the page to open in ``mlflow ui``."""
    page = f"#/experiments/{experiment_id}/runs/{run_id}?{UI_VIEW_QUERY}"
    if tracking_uri.startswith(("http://", "https://")):
        return f"{tracking_uri.rstrip('/')}/{page}"
    return f"mlflow ui --backend-store-uri {tracking_uri}, then {page}"


# --- tables ------------------------------------------------------------------------------


def evaluation_rows(
    metrics: Mapping[str, Mapping[str, float]],
    users: int,
    k: int,
    model: str,
    registered: str,
) -> dict[str, list[Any]]:
    """The holdout (``HoldoutResult.metrics``) as a table: the model's row (``model``: its
    label) then the popularity baseline's, a column per metric at ``k``; ``registered`` is
    the kind the run registered."""
    names = [n for n in metrics if n != POPULARITY] + [POPULARITY]
    rows: dict[str, list[Any]] = {
        "model": [model if n != POPULARITY else POPULARITY for n in names],
        "role": ["model" if n != POPULARITY else "baseline" for n in names],
        "registered": [n == registered for n in names],
        "people": [users] * len(names),
    }
    for metric in evaluation.METRICS:
        rows[f"{metric}_at_{k}"] = [float(metrics[n][metric]) for n in names]
    return rows


def send_time_rows(report: SendTimeReport) -> dict[str, list[Any]]:
    """Methods × send-time metrics (None where a method has no value)."""
    methods = [m for m in METHODS if m in report.metrics]
    methods += [m for m in report.metrics if m not in methods]
    columns = sorted({c for row in report.metrics.values() for c in row})
    rows: dict[str, list[Any]] = {"method": methods}
    for column in columns:
        rows[column] = [report.metrics[m].get(column) for m in methods]
    return rows


def events_summary(frame: pd.DataFrame) -> pd.DataFrame:
    """The log by event type and channel: events, people, first and last (ISO, UTC)."""
    grouped = frame.groupby(["event_type", "channel"], observed=True, sort=True)
    out = grouped.agg(
        events=("timestamp", "size"),
        people=("user_id", "nunique"),
        first=("timestamp", "min"),
        last=("timestamp", "max"),
    ).reset_index()
    for column in ("first", "last"):
        out[column] = pd.to_datetime(out[column], unit="s", utc=True).dt.strftime(
            "%Y-%m-%dT%H:%M:%SZ"
        )
    out["event_type"] = out["event_type"].astype(str)
    out["channel"] = out["channel"].astype(str)
    return out


def events_dataset(summary: pd.DataFrame, sources: Sequence[Path], name: str) -> Any:
    """An MLflow dataset for the training log: ``summary`` (:func:`events_summary`) with the
    log's location as its source. Its digest changes when any count, person count or
    time range of any event type and channel does."""
    import mlflow.data

    paths = [str(Path(p).resolve()) for p in sources]
    source = paths[0] if len(paths) == 1 else os.path.commonpath(paths)
    digest = hashlib.md5(summary.to_csv(index=False).encode(), usedforsecurity=False)
    with warnings.catch_warnings():
        # MLflow registers local files twice (an "ambiguous source" warning) and hints
        # about integer columns; neither says anything about our data.
        warnings.filterwarnings("ignore", module=r"mlflow\.")
        dataset = mlflow.data.from_pandas(
            summary, source=source, name=name, digest=digest.hexdigest()[:8]
        )
        dataset.schema  # noqa: B018 - inferred once here, inside the filter
    return dataset


# --- plots -------------------------------------------------------------------------------


def _figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _label_bars(ax: Axes, bars: Any) -> None:
    ax.bar_label(bars, fmt="%.3f", fontsize=7, padding=2)


def _bars(ax: Axes, labels: Sequence[str], values: Sequence[float], colours: list[str]) -> None:
    """One labelled bar per value; positions are numbers, so labels such as ``10`` stay
    labels (matplotlib would otherwise log about category units)."""
    x = np.arange(len(labels))
    _label_bars(ax, ax.bar(x, values, color=colours, width=0.6))
    ax.set_xticks(x, labels)
    ax.margins(y=0.15)
    # A lone bar (or two) keeps a bar's width instead of filling the panel.
    pad = max(0.0, (3 - len(labels)) / 2)
    ax.set_xlim(-0.6 - pad, len(labels) - 0.4 + pad)


def holdout_figure(rows: Mapping[str, list[Any]], k: int) -> Figure:
    """Model vs popularity, a pair of bars per holdout metric (``rows``:
    :func:`evaluation_rows`)."""
    fig = _figure(7, 3.6)
    ax = fig.subplots()
    x = np.arange(len(evaluation.METRICS))
    width = 0.38
    for i, (label, role) in enumerate(zip(rows["model"], rows["role"], strict=True)):
        values = [rows[f"{m}_at_{k}"][i] for m in evaluation.METRICS]
        colour = MODEL_COLOUR if role == "model" else BASELINE_COLOUR
        offset = (i - 0.5) * width
        _label_bars(ax, ax.bar(x + offset, values, width, label=label, color=colour))
    ax.set_xticks(x, [f"{m}@{k}" for m in evaluation.METRICS])
    ax.set_ylabel("holdout value")
    ax.set_title(f"holdout: {' vs '.join(rows['model'])} ({rows['people'][0]} people, k={k})")
    ax.legend(frameon=False)
    ax.margins(y=0.15)
    return fig


def validation_figure(choice: Choice) -> Figure:
    """The validation trials: model candidates, recency half-lives (with the chosen model)
    and, when tried, transition blends (best over the query length, per window and
    weight)."""
    k = choice.k
    best = choice.best
    models = choice.stage("model")
    chosen_model = next(t for t in models if t.params == best.params)
    recency = sorted(
        [chosen_model, *choice.stage("recency")], key=lambda t: t.blend.recency_half_life_events
    )
    transitions = choice.stage("transitions")
    fig = _figure(12 if transitions else 8, 3.6)
    axes = fig.subplots(1, 3 if transitions else 2)

    ax = axes[0]
    colours = [CHOSEN_COLOUR if t is chosen_model else MODEL_COLOUR for t in models]
    _bars(ax, [t.label for t in models], [t.ndcg for t in models], colours)
    ax.set_title("model (default recency, no transitions)")
    ax.set_ylabel(f"validation ndcg@{k}")
    ax.tick_params(axis="x", labelrotation=30, labelsize=8)

    # Lines, not bars, from here on: the differences are small and worth a zoomed axis.
    ax = axes[1]
    half_life = best.blend.recency_half_life_events
    half_lives = [t.blend.recency_half_life_events for t in recency]
    ax.plot(half_lives, [t.ndcg for t in recency], marker="o", color=MODEL_COLOUR)
    chosen = next(t for t in recency if t.blend.recency_half_life_events == half_life)
    _star(ax, half_life, chosen.ndcg)
    ax.set_xscale("log")
    ax.set_xticks(half_lives, [f"{h:g}" for h in half_lives])
    ax.minorticks_off()
    ax.set_title(f"recency ({chosen_model.label}, no transitions)")
    ax.set_xlabel("history half-life (events)")

    if transitions:
        ax = axes[2]
        weights = sorted({t.blend.transition_weight for t in transitions})
        for window in sorted({t.window for t in transitions}):
            scores = [
                max(
                    t.ndcg
                    for t in transitions
                    if t.window == window and t.blend.transition_weight == w
                )
                for w in weights
            ]
            colour = LINE_COLOURS[len(ax.lines) % len(LINE_COLOURS)]
            ax.plot(
                weights, scores, marker="o", markersize=3, color=colour, label=f"window {window}"
            )
        ax.axhline(choice.alone, color=BASELINE_COLOUR, linestyle="--", label="no transitions")
        if choice.window:
            _star(ax, best.blend.transition_weight, best.ndcg, "chosen")
        ax.set_title("transitions (best over query length)")
        ax.set_xlabel("transition weight")
        ax.legend(frameon=False, fontsize=7)
    fig.suptitle(
        f"validation: {choice.people} people, {choice.events} events\n{choice.text}", fontsize=8
    )
    return fig


def _star(ax: Axes, x: float, y: float, label: str | None = None) -> None:
    ax.plot([x], [y], marker="*", markersize=13, color=CHOSEN_COLOUR, ls="none", label=label)


def send_time_figure(report: SendTimeReport) -> Figure | None:
    """Methods vs hit rate (±1 h) on the held-out period, and channel accuracy when there
    are opens to check it on; None when nothing was evaluated."""
    panels = [
        (title, [(m, r[metric]) for m, r in report.metrics.items() if metric in r])
        for title, metric in (
            ("hit rate ±1 h", "hit_rate_1h"),
            ("channel accuracy", "channel_accuracy"),
        )
    ]
    panels = [(title, values) for title, values in panels if values]
    if not panels:
        return None
    fig = _figure(5 + 3 * (len(panels) - 1), 3.6)
    axes = np.atleast_1d(fig.subplots(1, len(panels)))
    for ax, (title, values) in zip(axes, panels, strict=True):
        names = [m for m, _ in values]
        colours = [MODEL_COLOUR if m == "model" else BASELINE_COLOUR for m in names]
        _bars(ax, names, [v for _, v in values], colours)
        ax.set_title(title)
        ax.tick_params(axis="x", labelrotation=30, labelsize=8)
    fig.suptitle(
        f"send time on the held-out period: {report.users} people, {report.events} events",
        fontsize=9,
    )
    return fig


def week_figure(profiles: Mapping[str, EngagementProfile]) -> Figure | None:
    """Activity share and open rate per delivery by local hour × weekday, summed over
    everybody's profile (so recency-weighted and in each person's zone, as the send-time
    model counts them); None when the profiles hold neither."""
    activity = np.zeros(WEEK_HOURS)
    deliveries = np.zeros(WEEK_HOURS)
    engaged = np.zeros(WEEK_HOURS)
    for profile in profiles.values():
        activity += profile.weekly_activity
        for counts in profile.channels.values():
            deliveries += counts.weekly_deliveries
            engaged += counts.weekly_engaged()
    panels = []
    if activity.sum() > 0:
        panels.append(("share of active hours", activity / activity.sum(), "Blues"))
    if deliveries.sum() > 0:
        # Hours the brand hardly ever sent at say nothing: left blank.
        sent = deliveries >= 0.05 * deliveries.sum() / WEEK_HOURS
        rate = np.where(sent, engaged / np.where(sent, deliveries, 1.0), np.nan)
        panels.append(("opens per delivery (blank: hardly any sent)", rate, "Oranges"))
    if not panels:
        return None
    fig = _figure(9, 2.6 * len(panels))
    axes = np.atleast_1d(fig.subplots(len(panels), 1))
    for ax, (title, values, colours) in zip(axes, panels, strict=True):
        image = ax.imshow(values.reshape(len(WEEKDAYS), HOURS), aspect="auto", cmap=colours)
        ax.set_yticks(range(len(WEEKDAYS)), WEEKDAYS)
        ax.set_xticks(range(0, HOURS, 3))
        ax.set_title(title, fontsize=9)
        fig.colorbar(image, ax=ax, fraction=0.03)
    axes[-1].set_xlabel("local hour")
    fig.suptitle(f"engagement by local hour of the week: {len(profiles)} people", fontsize=9)
    return fig


# --- the registered version --------------------------------------------------------------


def headline_tags(
    metrics: Mapping[str, float], users: int, k: int, data_end: int
) -> dict[str, str]:
    """Version tags with the registered kind's holdout ``metrics`` (4 decimals: for people;
    promotion reads the run's metrics), the people they are over and the data's end."""
    tags = {f"omnirec.{m}_at_{k}": f"{metrics[m]:.4f}" for m in evaluation.METRICS}
    tags["omnirec.holdout_people"] = str(users)
    tags["omnirec.data_end"] = pd.Timestamp(int(data_end), unit="s", tz="UTC").isoformat()
    return tags


def version_description(lines: Sequence[str], rows: Mapping[str, list[Any]], k: int) -> str:
    """Markdown: ``lines`` (the selection, promotion and validation texts) as paragraphs,
    then the holdout table (``rows``: :func:`evaluation_rows`)."""
    metrics = [f"{m}_at_{k}" for m in evaluation.METRICS]
    head = ["model", "registered", *(m.replace(f"_at_{k}", f"@{k}") for m in metrics)]
    table = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for i, model in enumerate(rows["model"]):
        cells = [model, "yes" if rows["registered"][i] else ""]
        cells += [f"{rows[m][i]:.4f}" for m in metrics]
        table.append("| " + " | ".join(cells) + " |")
    people = f"holdout: {rows['people'][0]} people, k={k}"
    return "\n\n".join([*lines, people, "\n".join(table)])


# --- logging -----------------------------------------------------------------------------


def log_view(
    *,
    evaluation: Mapping[str, list[Any]],
    k: int,
    choice: Choice,
    send_time: SendTimeReport,
    profiles: Mapping[str, EngagementProfile],
    summary: pd.DataFrame,
    dataset: Any,
) -> None:
    """Log the tables, plots and dataset input of the active run (see the module doc)."""
    import mlflow

    started = time.perf_counter()
    mlflow.log_input(dataset, context="training")
    mlflow.log_table(dict(evaluation), "evaluation.json")
    if send_time.metrics:
        mlflow.log_table(send_time_rows(send_time), "send_time.json")
    mlflow.log_table(summary, "events.json")
    figures = {
        "holdout.png": holdout_figure(evaluation, k),
        "validation.png": validation_figure(choice),
        "send_time.png": send_time_figure(send_time),
        "engagement_week.png": week_figure(profiles),
    }
    for name, figure in figures.items():
        if figure is not None:
            mlflow.log_figure(figure, f"plots/{name}")
    log.info("logged tables and plots in %.2fs", time.perf_counter() - started)
