"""Fits in a process of their own: the same model as an in-process fit; a fit that
segfaults, raises or passes its time limit is reported in one line; a `train` run whose
EASE candidate crashes goes on with the others and says why (printed and in MLflow)."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import numpy as np
import pytest

from service.registry import ModelRegistry
from tests.conftest import deployment_env, make_settings
from training import evaluation, validation
from training.__main__ import main as training_main
from training.event_log import load_events
from training.guarded_fit import FitFailed, fit_bundle
from training.matrix import DEFAULT_WEIGHTS
from training.models import ModelParams, fit, to_bundle

#: Loaded by every Python started with this folder on PYTHONPATH: the fit children of
#: the process under test (never that process itself, which is already running).
CRASHING_EASE = """
    import os
    import signal

    import training.ease


    def crash(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGSEGV)  # what OpenBLAS did at 16k items


    training.ease.ease_weights = crash
"""


@pytest.fixture
def ease_segfaults(tmp_path, monkeypatch):
    """Fit children whose EASE dies of SIGSEGV, as a LAPACK kernel would."""
    (tmp_path / "sitecustomize.py").write_text(textwrap.dedent(CRASHING_EASE))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), *_pythonpath()]))


def _pythonpath() -> list[str]:
    return [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]


@pytest.fixture(scope="module")
def prepared(synthetic):
    return evaluation.prepare(load_events(synthetic.events).frame, DEFAULT_WEIGHTS)


def _fit(prepared, params, **kwargs):
    train = prepared.train
    return fit_bundle(
        params, train.matrix, train.user_ids, train.item_ids, {"weights": {"view": 1.0}}, **kwargs
    )


@pytest.mark.parametrize("kind", ["ease", "item_knn", "als"])
def test_a_guarded_fit_is_the_fit_made_in_process(prepared, kind):
    params = ModelParams(kind=kind, factors=8, iterations=3)
    train = prepared.train
    here = to_bundle(fit(params, train.matrix), params, train.user_ids, train.item_ids, {})
    fitted = _fit(prepared, params)
    there = fitted.bundle
    assert there.kind == kind and list(there.item_ids) == list(train.item_ids)
    assert there.metadata["weights"] == {"view": 1.0}
    assert there.metadata["params"] == params.relevant()
    if kind == "als":
        # implicit's threads sum in their own order: equal up to float32 rounding.
        np.testing.assert_allclose(there.item_factors, here.item_factors, atol=1e-4)
        assert len(fitted.progress) == 3 and fitted.progress[0][2] == "train_loss"
    elif kind == "ease":
        np.testing.assert_array_equal(there.similarity, here.similarity)
    else:
        assert (there.similarity != here.similarity).nnz == 0


def test_a_fit_that_segfaults_is_reported_not_fatal(prepared, ease_segfaults):
    with pytest.raises(FitFailed) as failed:
        _fit(prepared, ModelParams(kind="ease"), label="ease λ=300")
    assert failed.value.reason == "crashed (SIGSEGV)"
    assert str(failed.value) == "ease λ=300: crashed (SIGSEGV)"
    # Only EASE was made to crash: the next fit in a fresh child works.
    assert _fit(prepared, ModelParams(kind="item_knn")).bundle.kind == "item_knn"


def test_a_fit_that_raises_is_reported_in_one_line(prepared):
    with pytest.raises(FitFailed) as failed:
        _fit(prepared, ModelParams(kind="als", alpha=-1.0))
    assert failed.value.reason == "failed: BadInput: alpha: must be a finite number ≥ 0"


def test_a_fit_past_its_time_limit_is_stopped(prepared):
    with pytest.raises(FitFailed) as failed:
        _fit(prepared, ModelParams(kind="als", iterations=500), time_limit=0.5)
    assert failed.value.reason == "passed its time limit of 0.5 s"


def test_validation_goes_on_without_a_crashing_candidate(prepared, synthetic, ease_segfaults):
    frame = load_events(synthetic.events).frame
    part = evaluation.time_split(frame).train
    options = validation.candidates(ModelParams(factors=8, iterations=3), 150)
    choice = validation.choose(part, options, DEFAULT_WEIGHTS, transitions=False)
    assert [t.params.kind for t in choice.stage("model")] == ["als", "item_knn"]
    assert [s.label for s in choice.skipped] == [validation.label(p) for p in options[2:]]
    assert {s.reason for s in choice.skipped} == {"skipped: its fit crashed (SIGSEGV)"}
    assert f"{'ease λ=300':<24}skipped: its fit crashed (SIGSEGV)" in choice.table()


def test_a_budget_leaves_out_what_it_cannot_afford(synthetic):
    frame = load_events(synthetic.events).frame
    part = evaluation.time_split(frame).train
    options = validation.candidates(ModelParams(factors=8, iterations=3), 150)
    choice = validation.choose(
        part, options, DEFAULT_WEIGHTS, transitions=False, budget_seconds=1e-3
    )
    # The first candidate always runs; nothing is predicted to fit in a millisecond.
    assert [t.params.kind for t in choice.stage("model")] == ["als"]
    assert len(choice.skipped) == len(options) - 1
    assert all(s.reason.startswith("left out: its fit should take about ") for s in choice.skipped)


@pytest.mark.integration
def test_train_with_defaults_survives_a_crashing_candidate(
    redis_server, synthetic, tmp_path, ease_segfaults, monkeypatch, capsys
):
    settings = make_settings(redis_server.url, tmp_path, key_prefix="crash")
    for name, value in deployment_env(settings).items():
        monkeypatch.setenv(name, value)
    assert training_main(["train", "--events", str(synthetic.events), "--no-publish"]) == 0
    out = capsys.readouterr().out
    assert f"{'ease λ=300':<24}skipped: its fit crashed (SIGSEGV)" in out
    tags = ModelRegistry(settings).version_tags("1")
    assert tags["omnirec.kind"] in ("als", "item_knn", "popularity")
    assert "ease λ=300 skipped: its fit crashed (SIGSEGV)" in tags["omnirec.validation_skipped"]


def test_the_crash_hook_reaches_children_only():
    # The fixture's sitecustomize must not have patched this process.
    import training.ease

    assert training.ease.ease_weights.__module__ == "training.ease"
    assert Path(training.ease.__file__).name == "ease.py"
