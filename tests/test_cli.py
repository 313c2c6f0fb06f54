"""Command-line errors: one readable line, exit code 2, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


def error_line(stderr: str) -> tuple[str, list[str]]:
    """The one error line (progress logs come before it) and the report lines after it."""
    lines = stderr.strip().splitlines()
    at = next(n for n, line in enumerate(lines) if line.startswith("omnirec "))
    return lines[at], lines[at + 1 :]


def run(*args, cwd):
    # A deployment's secret is set: `train` checks it before anything else, and these
    # tests are about what comes after.
    env = {**os.environ, "OMNIREC_IDENTITY_SECRET": "cli-test-secret-0123456789"}
    return subprocess.run(
        [sys.executable, "-m", "training", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
    )


def test_bad_rows_refuse_the_file_with_one_line_and_a_report(tmp_path):
    events = tmp_path / "events.csv"
    events.write_text(
        "user_id,item_id,event_type,timestamp\n"
        "u1,i1,view,1700000000\n"
        "u1,i2,teleport,1700000001\n"
        "u2,,purchase,1700000002\n"
    )
    done = run("train", "--events", str(events), "--no-publish", cwd=tmp_path)
    assert done.returncode == 2
    line, report = error_line(done.stderr)
    assert line.startswith("omnirec train: error: ")
    assert "2 bad rows of 3" in line
    assert any("line 3" in r and "event_type" in r for r in report)
    assert any("line 4" in r and "item_id" in r for r in report)
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--events", "missing.csv"], "no such file"),
        (["--events", "e.csv", "--event-weights", "dislike=2"], "event_weights"),
        (["--events", "e.csv", "--test-fraction", "1.5"], "--test-fraction"),
        (["--events", "e.csv", "--half-life-days", "0"], "--half-life-days"),
    ],
)
def test_bad_train_arguments_name_what_is_wrong(tmp_path, args, fragment):
    (tmp_path / "e.csv").write_text("user_id,item_id,event_type,timestamp\nu,i,view,1\n")
    done = run("train", *args, cwd=tmp_path)
    assert done.returncode == 2
    assert fragment in error_line(done.stderr)[0]
    assert "Traceback" not in done.stderr


def test_generate_rejects_a_non_positive_size(tmp_path):
    done = run("generate", "--users", "0", "--out", str(tmp_path), cwd=tmp_path)
    assert done.returncode == 2
    assert "--users" in done.stderr and "Traceback" not in done.stderr
