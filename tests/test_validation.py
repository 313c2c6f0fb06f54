"""`train --model auto`: the kind and EASE's λ chosen by validation inside the training
part, logged and tagged, and never looking at the final holdout."""

from __future__ import annotations

import pytest

from service.registry import ModelRegistry
from tests.conftest import deployment_env, make_settings
from training import ease, evaluation, validation
from training.__main__ import main as training_main
from training.models import ModelParams

ALL = ["als", "item_knn", "ease_lambda_100", "ease_lambda_300", "ease_lambda_1000"]


def test_candidates_leave_ease_out_above_its_size_limit(monkeypatch):
    base = ModelParams(factors=8, neighbours=20)
    picked = validation.candidates(base, 150)
    assert [validation.metric_key(p) for p in picked] == ALL
    assert picked[0].factors == 8 and picked[1].neighbours == 20
    monkeypatch.setattr(ease, "MAX_EASE_ITEMS", 149)
    assert [p.kind for p in validation.candidates(base, 150)] == ["als", "item_knn"]


def test_choice_ranks_best_first_and_a_tie_keeps_candidate_order():
    als, knn, strong = (
        ModelParams(),
        ModelParams(kind="item_knn"),
        ModelParams(kind="ease", regularization=300.0),
    )
    choice = validation.Choice([(als, 0.2), (knn, 0.2), (strong, 0.25)], 10, 40, 10)
    assert choice.best == strong
    assert choice.text == "validation: ease λ=300 0.2500 > als 0.2000 = item_knn 0.2000"
    assert choice.flat()["validation_ndcg_at_10_ease_lambda_300"] == 0.25
    assert validation.Choice([(als, 0.2), (knn, 0.2)], 10, 40, 10).best == als


@pytest.fixture(scope="module")
def auto_run(redis_server, synthetic, tmp_path_factory):
    """One `train --model auto` run, with every time split it makes recorded."""
    tmp = tmp_path_factory.mktemp("auto")
    settings = make_settings(redis_server.url, tmp, key_prefix="auto")
    splits = []
    real_split = evaluation.time_split

    def spy(frame, *args, **kwargs):
        out = real_split(frame, *args, **kwargs)
        splits.append((set(frame.index), set(out.test.index)))
        return out

    with pytest.MonkeyPatch.context() as mp:
        for name, value in deployment_env(settings).items():
            mp.setenv(name, value)
        mp.setattr(evaluation, "time_split", spy)
        argv = ["train", "--events", str(synthetic.events), "--model", "auto", "--no-publish"]
        assert training_main(argv) == 0
    return settings, splits


@pytest.mark.integration
def test_auto_logs_every_candidate_and_registers_the_best(auto_run):
    settings, _ = auto_run
    registry = ModelRegistry(settings)
    metrics = registry.run_metrics("1")
    logged = {key: metrics[f"validation_ndcg_at_10_{key}"] for key in ALL}
    # max() keeps the first of equals: the candidate order, as the choice does.
    best = max(ALL, key=lambda key: logged[key])
    tags = registry.version_tags("1")
    params = registry.load_version("1").bundle.metadata["params"]
    assert tags["omnirec.kind"] == params["kind"] == best.split("_lambda_")[0]
    if params["kind"] == "ease":
        assert best == f"ease_lambda_{params['regularization']:g}"
    assert tags["omnirec.chosen_by"].startswith(f"validation: {best.replace('_lambda_', ' λ=')} ")
    assert metrics["validation_users"] > 0


@pytest.mark.integration
def test_auto_validates_inside_the_training_part_only(auto_run):
    _, splits = auto_run
    everything = max((frame for frame, _ in splits), key=len)
    held_out = {frozenset(test) for frame, test in splits if frame == everything}
    assert len(held_out) == 1, "the final holdout is one split of all events"
    (final_test,) = held_out
    inner = [(frame, test) for frame, test in splits if frame != everything]
    assert inner, "no validation split was made"
    for frame, test in inner:
        assert frame == everything - final_test
        assert test and test <= frame
