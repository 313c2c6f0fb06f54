"""The A/B report: planted lifts found (and an A/A found null), sample ratio mismatches
flagged, the attribution window, and the command's output and one-line errors."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from training.event_log import write_events
from training.experiment_report import (
    AFTER_WINDOW,
    ANOTHER_PERSON,
    BEFORE_EXPOSURE,
    SEVERAL_ARMS,
    UNKNOWN_ID,
    attribute,
    build_report,
    proportion_test,
    relative_lift,
    sample_ratio,
)

START = 1_767_225_600  # 2026-01-01 UTC
HOUR = 3600
PEOPLE = 4000


def bucket(person: str) -> float:
    """A fixed hash of a person into [0, 1): the split of the planted data."""
    return int.from_bytes(hashlib.sha256(person.encode()).digest()[:8], "big") / 2**64


def planted(
    purchase: dict[str, float],
    seed: int,
    *,
    people: int = PEOPLE,
    split: float = 0.5,
    experiment: str = "new-model",
) -> pd.DataFrame:
    """A log of ``people`` split between two arms (the first ``split`` of the hash range in
    the first arm): each person sees 1–4 answers over two weeks, clicks some, and buys
    with the arm's probability within 24 h of one of them; plus noise the report must
    not attribute: late purchases (30 h after), unknown ids, events without ids, events
    of another experiment."""
    rng = np.random.default_rng(seed)
    first, second = purchase
    rows: list[tuple[str, str, str, int, str]] = []

    def rid(arm: str, name: str = experiment) -> str:
        return f"{name}:{arm}:{rng.bytes(16).hex()}"

    for n in range(people):
        person = f"u{n}"
        arm = first if bucket(person) < split else second
        shown = []
        for _ in range(int(rng.integers(1, 5))):
            at = START + int(rng.integers(0, 14 * 24 * HOUR))
            shown.append((at, rid(arm)))
            rows.append((person, "", "exposure", at, shown[-1][1]))
        for at, r in shown:
            if rng.random() < 0.3:
                rows.append((person, f"i{n % 97}", "click", at + int(rng.integers(1, 600)), r))
        if rng.random() < purchase[arm]:
            at, r = shown[int(rng.integers(len(shown)))]
            late = at + int(rng.integers(60, 20 * HOUR))
            rows.append((person, f"i{n % 89}", "add_to_cart", late - 30, r))
            rows.append((person, f"i{n % 89}", "purchase", late, r))
        if rng.random() < 0.05:  # bought a day and a half later: outside the window
            at, r = shown[0]
            rows.append((person, "i1", "purchase", at + 30 * HOUR, r))
        if rng.random() < 0.02:  # an id nobody was shown
            rows.append((person, "i2", "purchase", shown[0][0] + 60, rid(arm)))
        if rng.random() < 0.05:  # no id at all, and another experiment's
            rows.append((person, "i3", "purchase", shown[0][0] + 90, ""))
            rows.append((person, "i4", "purchase", shown[0][0] + 90, rid(arm, "other")))
    return pd.DataFrame(
        rows, columns=["user_id", "item_id", "event_type", "timestamp", "recommendation_id"]
    )


@pytest.fixture(scope="module")
def ab() -> pd.DataFrame:
    return planted({"control": 0.05, "treatment": 0.08}, seed=13)


@pytest.fixture(scope="module")
def aa() -> pd.DataFrame:
    return planted({"control": 0.05, "twin": 0.05}, seed=14)


def test_a_planted_lift_is_found_with_the_right_sign(ab):
    report = build_report(ab, "new-model", {"control": 50, "treatment": 50})
    purchase = report.lift("treatment", "purchase")
    # Planted: 0.08 / 0.05 - 1 = +60 %.
    assert purchase.low > 0 and purchase.lift > 0
    assert purchase.low < 0.6 < purchase.high
    assert purchase.p_value < 0.001 and purchase.test == "z"
    assert report.lift("treatment", "add_to_cart").significant
    # Clicks were planted equal.
    assert not report.lift("treatment", "click").significant
    control, treatment = report.arms
    assert control.people + treatment.people == PEOPLE
    assert abs(control.per_person("purchase") - 0.05) < 0.015
    assert abs(treatment.per_person("purchase") - 0.08) < 0.015
    assert not report.sample_ratio.mismatch
    # Late purchases and unknown ids are counted, not attributed; no-id and other
    # experiments' events are not this report's.
    assert report.attribution.unattributed[AFTER_WINDOW] > 100
    assert report.attribution.unattributed[UNKNOWN_ID] > 40
    assert report.attribution.unattributed[ANOTHER_PERSON] == 0
    print(
        f"\nplanted A/B: lift {purchase.lift:+.1%} [{purchase.low:+.1%}, {purchase.high:+.1%}]"
        f" p={purchase.p_value:.2g}; SRM p={report.sample_ratio.p_value:.3g}"
    )


def test_an_a_a_split_finds_no_lift(aa):
    report = build_report(aa, "new-model", {"control": 50, "twin": 50})
    for kind in ("click", "add_to_cart", "purchase"):
        x = report.lift("twin", kind)
        assert x.low < 0 < x.high, kind
        assert x.p_value > 0.05, kind
    assert not report.sample_ratio.mismatch
    purchase = report.lift("twin", "purchase")
    print(
        f"\nplanted A/A: lift {purchase.lift:+.1%} [{purchase.low:+.1%}, {purchase.high:+.1%}]"
        f" p={purchase.p_value:.2g}; SRM p={report.sample_ratio.p_value:.3g}"
    )


def test_a_broken_split_is_flagged_and_a_fair_one_is_not():
    broken = planted({"control": 0.05, "treatment": 0.05}, seed=15, split=0.6)
    report = build_report(broken, "new-model", {"control": 50, "treatment": 50})
    assert report.sample_ratio.mismatch
    assert "WARNING: sample ratio mismatch" in report.table()
    print(f"\n60/40 against 50/50: SRM p={report.sample_ratio.p_value:.3g}")
    # The same people against the weights they were split by: no alarm.
    fair = build_report(broken, "new-model", {"control": 60, "treatment": 40})
    assert not fair.sample_ratio.mismatch
    assert "WARNING" not in fair.table()


def test_sample_ratio_on_counts():
    assert sample_ratio([2400, 1600], [50, 50]).mismatch
    assert not sample_ratio([2030, 1970], [50, 50]).mismatch
    assert not sample_ratio([1000, 2000, 1000], [1, 2, 1]).mismatch
    assert sample_ratio([0, 0], [1, 1]).p_value == 1.0


def test_lift_and_tests_on_counts():
    lift, low, high = relative_lift(100, 2000, 160, 2000)
    assert lift == pytest.approx(0.6)
    # Delta method: SE of the log ratio is sqrt(1/160 - 1/2000 + 1/100 - 1/2000).
    se = np.sqrt(1 / 160 + 1 / 100 - 2 / 2000)
    assert low == pytest.approx(1.6 * np.exp(-1.959964 * se) - 1, rel=1e-5)
    assert high == pytest.approx(1.6 * np.exp(1.959964 * se) - 1, rel=1e-5)
    assert relative_lift(0, 100, 3, 100) == (None, None, None)
    assert relative_lift(3, 100, 0, 100) == (-1.0, None, None)
    p_value, test = proportion_test(100, 2000, 160, 2000)
    assert test == "z" and p_value < 0.001
    p_value, test = proportion_test(1, 20, 4, 20)
    assert test == "fisher" and 0.1 < p_value < 1
    assert proportion_test(0, 0, 1, 10) == (None, "")


def exposure_and(delay_hours: float, **extra: object) -> pd.DataFrame:
    rid = "exp:control:" + "a" * 32
    rows = [
        {"user_id": "p", "event_type": "exposure", "timestamp": START, "recommendation_id": rid},
        {
            "user_id": "q",
            "event_type": "exposure",
            "timestamp": START,
            "recommendation_id": "exp:b:" + "b" * 32,
        },
        {
            "user_id": "p",
            "event_type": "purchase",
            "timestamp": START + int(delay_hours * HOUR),
            "recommendation_id": rid,
        }
        | extra,
    ]
    return pd.DataFrame(rows)


@pytest.mark.parametrize(
    ("delay", "window", "attributed", "reason"),
    [
        (23, 24, 1, None),
        (24, 24, 1, None),
        (25, 24, 0, AFTER_WINDOW),
        (25, 26, 1, None),
        (-0.01, 24, 0, BEFORE_EXPOSURE),
    ],
)
def test_the_attribution_window(delay, window, attributed, reason):
    counts = attribute(exposure_and(delay), "exp", {"control": 1, "b": 1}, window)
    assert counts.attributed == attributed
    assert counts.arms[0].people_with["purchase"] == attributed
    if reason:
        assert counts.unattributed[reason] == 1


def test_another_persons_event_is_not_attributed():
    counts = attribute(exposure_and(1, user_id="q"), "exp", {"control": 1, "b": 1})
    assert counts.attributed == 0 and counts.unattributed[ANOTHER_PERSON] == 1


# --- the command -------------------------------------------------------------------------


def run(*args, cwd, env=None):
    return subprocess.run(
        [sys.executable, "-m", "training", "experiment-report", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env=env,
    )


@pytest.fixture(scope="module")
def files(tmp_path_factory, ab):
    root = tmp_path_factory.mktemp("ab")
    # Exposures in one file, the events attributed to them in another, as exports come.
    exposures = ab["event_type"] == "exposure"
    write_events(ab[exposures], root / "exposures.parquet")
    write_events(ab[~exposures], root / "events.parquet")
    config = {
        "experiments": [
            {
                "name": "new-model",
                "share": 50,
                "arms": [
                    {"name": "control", "weight": 50, "model_alias": "champion"},
                    {"name": "treatment", "weight": 50, "model_version": 3},
                ],
            },
            {
                "name": "ranking",
                "share": 10,
                "arms": [{"name": "a", "weight": 1}, {"name": "b", "weight": 1}],
            },
        ]
    }
    (root / "experiments.json").write_text(json.dumps(config))
    return root


def test_the_command_prints_the_report(files):
    done = run(
        "--experiment",
        "new-model",
        "--events",
        str(files / "exposures.parquet"),
        str(files / "events.parquet"),
        "--experiments-file",
        str(files / "experiments.json"),
        "--no-mlflow",
        cwd=files,
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "A/B experiment new-model: control arm control" in out
    assert "sample ratio:" in out and "no mismatch" in out
    line = next(
        x for x in out.splitlines() if x.startswith("treatment") and "purchases" in x and "*" in x
    )
    assert "z" in line


def test_the_command_logs_a_run_to_mlflow(files, tmp_path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = os.environ | {
        "MLFLOW_TRACKING_URI": uri,
        "OMNIREC_ARTIFACT_ROOT": str(tmp_path / "artifacts"),
        "OMNIREC_EXPERIMENTS_FILE": str(files / "experiments.json"),
    }
    done = run(
        "--experiment",
        "new-model",
        "--events",
        str(files / "exposures.parquet"),
        str(files / "events.parquet"),
        cwd=tmp_path,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert "logged to MLflow as 'ab · new-model · 2026-01-14'" in done.stdout
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("omnirec-ab")
    (found,) = client.search_runs([experiment.experiment_id])
    assert found.info.run_name == "ab · new-model · 2026-01-14"
    metrics = found.data.metrics
    assert metrics["treatment_purchase_lift_ci_low"] > 0
    assert 0.03 < metrics["control_purchase_rate_per_person"] < 0.07
    assert metrics["srm_p_value"] > 0.001
    artifacts = {a.path for a in client.list_artifacts(found.info.run_id)}
    assert {"arms.json", "report.txt"} <= artifacts


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--experiment", "nope"], "'nope' is not in"),
        (["--experiment", "ranking"], "no exposures of experiment 'ranking'"),
        (["--experiment", "new-model", "--window-hours", "0"], "--window-hours"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(files, args, fragment):
    done = run(
        *args,
        "--events",
        str(files / "exposures.parquet"),
        "--experiments-file",
        str(files / "experiments.json"),
        "--no-mlflow",
        cwd=files,
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    (line,) = [x for x in done.stderr.strip().splitlines() if x.startswith("omnirec ")]
    assert fragment in line, line
    if "nope" in args:
        assert "it has: new-model, ranking" in line
    if "ranking" in args:
        assert "exposures found: new-model" in line


def test_missing_files_are_one_line_and_exit_2(files, tmp_path):
    config = str(files / "experiments.json")
    events = str(files / "exposures.parquet")
    env_without = {k: v for k, v in os.environ.items() if k != "OMNIREC_EXPERIMENTS_FILE"}
    for args, fragment in [
        (
            ["--events", str(tmp_path / "gone.parquet"), "--experiments-file", config],
            "no such file",
        ),
        (["--events", events, "--experiments-file", str(tmp_path / "gone.json")], "cannot read"),
        (["--events", events], "no experiments file"),
    ]:
        done = run("--experiment", "new-model", *args, "--no-mlflow", cwd=tmp_path, env=env_without)
        assert done.returncode == 2, done.stdout
        assert "Traceback" not in done.stderr
        assert fragment in done.stderr.strip().splitlines()[-1]


def test_duplicate_exposures_count_once_and_people_in_two_arms_are_left_out():
    one = "exp:control:" + "a" * 32
    rows = [
        ("p", "exposure", START, one),
        ("p", "exposure", START + 5, one),  # the same answer exported twice
        ("p", "purchase", START + 60, one),
        ("r", "exposure", START, "exp:control:" + "c" * 32),
        ("r", "exposure", START, "exp:b:" + "d" * 32),  # weights changed mid-way
        ("r", "purchase", START + 60, "exp:b:" + "d" * 32),
        ("s", "exposure", START, "exp:gone:" + "e" * 32),  # an arm the file no longer has
    ]
    frame = pd.DataFrame(rows, columns=["user_id", "event_type", "timestamp", "recommendation_id"])
    counts = attribute(frame, "exp", {"control": 1, "b": 1})
    control, b = counts.arms
    assert (control.people, control.exposures, control.people_with["purchase"]) == (1, 1, 1)
    assert (b.people, b.exposures) == (0, 0)
    assert counts.several_arms_people == 1 and counts.unknown_arm_exposures == 1
    assert counts.unattributed[SEVERAL_ARMS] == 1
