"""What an ML engineer finds in MLflow after `train`: a model-training experiment, runs
named by model and data, metrics that compare across model kinds in one column, the
evaluation tables and plots, the training data as a dataset input, and the decision on the
registered version (ties reported as ties)."""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import pandas as pd
import pytest

from service.bundle import EASE
from service.recommender import Blend
from service.send_time import EngagementProfile
from tests.conftest import make_settings
from training import mlflow_view
from training.engagement import SendTimeReport
from training.models import ModelParams
from training.pipeline import TrainConfig, train
from training.validation import Choice, Trial

PNG = b"\x89PNG\r\n\x1a\n"


def client_of(settings):
    from mlflow import MlflowClient

    return MlflowClient(settings.mlflow_tracking_uri, registry_uri=settings.mlflow_tracking_uri)


# --- names and links ---------------------------------------------------------------------


def test_runs_are_named_by_model_and_the_day_of_the_newest_event():
    end = int(pd.Timestamp("2026-11-20T23:59:59Z").timestamp())
    names = {
        mlflow_view.run_name(params, end)
        for params in (
            ModelParams(),
            ModelParams(kind="bpr", factors=64),
            ModelParams(kind="item_knn", neighbours=20),
            ModelParams(kind=EASE, regularization=1000.0),
        )
    }
    assert names == {
        "als-f32 · events to 2026-11-20",
        "bpr-f64 · events to 2026-11-20",
        "item_knn-k20 · events to 2026-11-20",
        "ease-λ1000 · events to 2026-11-20",
    }


def test_the_ui_link_opens_the_model_training_view():
    server = mlflow_view.ui_link("http://mlflow:5000/", "3", "abc")
    assert server == "http://mlflow:5000/#/experiments/3/runs/abc?workflowType=machine_learning"
    local = mlflow_view.ui_link("sqlite:///x.db", "3", "abc")
    assert local.startswith("mlflow ui --backend-store-uri sqlite:///x.db")
    assert local.endswith("#/experiments/3/runs/abc?workflowType=machine_learning")


# --- plots without data to show ----------------------------------------------------------


def test_plots_leave_out_what_was_not_evaluated():
    assert mlflow_view.send_time_figure(SendTimeReport(metrics={}, users=0, events=0)) is None
    assert mlflow_view.week_figure({"p1": EngagementProfile()}) is None
    # No transitions tried (--no-transitions): two panels, not three.
    trials = [
        Trial("model", ModelParams(), Blend(), 0, 0.20),
        Trial("model", ModelParams(kind="item_knn"), Blend(), 0, 0.25),
        Trial("recency", ModelParams(kind="item_knn"), Blend(recency_half_life_events=3), 0, 0.3),
    ]
    figure = mlflow_view.validation_figure(Choice(trials, people=10, events=50, k=10))
    assert len(figure.axes) == 2


def test_the_dataset_is_built_without_warnings(synthetic):
    from training.event_log import load_events

    frame = load_events(synthetic.events).frame
    summary = mlflow_view.events_summary(frame)
    assert summary["events"].sum() == len(frame)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dataset = mlflow_view.events_dataset(summary, [synthetic.events], "events to x")
    assert dataset.name == "events to x" and len(dataset.digest) == 8
    assert [c.name for c in dataset.schema.inputs][:2] == ["event_type", "channel"]


# --- a real run --------------------------------------------------------------------------


@pytest.mark.integration
def test_the_experiment_opens_in_the_model_training_view(trained):
    s = trained.settings
    found = client_of(s).get_experiment_by_name(s.experiment)
    assert found.tags["mlflow.experimentKind"] == "custom_model_development"


@pytest.mark.integration
def test_the_run_is_named_and_its_metrics_compare_across_model_kinds(trained):
    client = client_of(trained.settings)
    result = trained.result
    run = client.get_run(result.run_id)
    day = run.data.params["data_end"][:10]
    assert run.info.run_name == result.run_name == f"als-f32 · events to {day}"
    metrics = run.data.metrics
    holdout = result.holdout.metrics
    assert metrics["ndcg_at_10"] == holdout["als"]["ndcg"]
    assert metrics["baseline_popularity_ndcg_at_10"] == holdout["popularity"]["ndcg"]
    assert metrics["coverage_at_10"] == holdout["als"]["coverage"]
    assert not any(name.startswith(("als_", "popularity_")) for name in metrics)
    # The validation metrics are kind-independent per column already, and unchanged.
    assert "validation_ndcg_at_10_chosen" in metrics


@pytest.mark.integration
def test_the_run_logs_tables_plots_and_its_dataset(trained, synthetic):
    client = client_of(trained.settings)
    run_id = trained.result.run_id
    listed = {a.path: a.file_size for a in client.list_artifacts(run_id)}
    for table in ("evaluation.json", "validation.json", "send_time.json", "events.json"):
        assert listed.get(table, 0) > 0, table
    plots = {a.path: a.file_size for a in client.list_artifacts(run_id, "plots")}
    expected = ("holdout", "validation", "send_time", "engagement_week")
    assert set(plots) == {f"plots/{name}.png" for name in expected}
    assert all(size > 1000 for size in plots.values())
    folder = Path(client.download_artifacts(run_id, "plots"))
    assert all((folder / f"{name}.png").read_bytes().startswith(PNG) for name in expected)

    # (MlflowClient.load_table searches runs through the global tracking URI: read it here.)
    logged = json.loads(Path(client.download_artifacts(run_id, "evaluation.json")).read_text())
    table = pd.DataFrame(logged["data"], columns=logged["columns"])
    assert table["model"].tolist() == ["als-f32", "popularity"]
    assert table["registered"].tolist() == [True, False]
    # MLflow writes tables with 10 significant digits.
    assert table["ndcg_at_10"].tolist() == pytest.approx(
        [
            trained.result.holdout.metrics["als"]["ndcg"],
            trained.result.holdout.metrics["popularity"]["ndcg"],
        ]
    )

    (used,) = client.get_run(run_id).inputs.dataset_inputs
    assert {t.key: t.value for t in used.tags}["mlflow.data.context"] == "training"
    assert used.dataset.name == f"events to {trained.result.run_name.split(' to ')[1]}"
    assert str(Path(synthetic.events).resolve()) in used.dataset.source
    assert '"num_rows"' in used.dataset.profile


@pytest.mark.integration
def test_the_version_carries_the_decision_and_headline_metrics(trained):
    s = trained.settings
    result = trained.result
    version = client_of(s).get_model_version(s.model_name, result.version)
    tags = version.tags
    assert tags["omnirec.decision"] == result.decision
    assert tags["omnirec.selection"] == result.selection
    assert tags["omnirec.promoted"] == "true"
    assert tags["omnirec.ndcg_at_10"] == f"{result.holdout.metrics['als']['ndcg']:.4f}"
    assert int(tags["omnirec.holdout_people"]) == result.holdout.users_evaluated
    for text in (result.selection, f"champion: {result.decision}", result.validation):
        assert text in version.description
    assert re.search(r"^\| als-f32 \| yes \| 0\.\d{4} \|", version.description, re.MULTILINE)


@pytest.mark.integration
def test_an_older_experiment_is_tagged_and_a_tie_is_reported_as_a_tie(
    redis_server, synthetic, tmp_path
):
    """Two runs of one deterministic model on one log score the same: the second ties the
    champion, and its version says so."""
    from mlflow import MlflowClient

    settings = make_settings(redis_server.url, tmp_path, key_prefix="view")
    client = MlflowClient(settings.mlflow_tracking_uri)
    # As omnirec created it before the kind tag.
    created = client.create_experiment(
        settings.experiment, artifact_location=(tmp_path / "artifacts").as_uri()
    )
    assert "mlflow.experimentKind" not in client.get_experiment(created).tags

    cfg = TrainConfig(
        events=synthetic.events,
        params=ModelParams(kind="item_knn"),
        publish=False,
        transitions=False,
    )
    first = train(settings, cfg)
    second = train(settings, cfg)
    assert client.get_experiment(created).tags["mlflow.experimentKind"] == (
        "custom_model_development"
    )
    assert first.run_name == second.run_name and first.run_name.startswith("item_knn-k50 · ")
    scores = [client.get_run(r.run_id).data.metrics["ndcg_at_10"] for r in (first, second)]
    assert scores[0] == scores[1]
    assert second.promoted and second.decision.startswith(f"tied {settings.model_name}/1")
    version = client_of(settings).get_model_version(settings.model_name, second.version)
    assert version.tags["omnirec.decision"] == second.decision
    assert f"champion: {second.decision}" in version.description
    assert "beat" not in second.decision
