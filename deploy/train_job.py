#!/usr/bin/env python3
"""The compose ``train`` job: train on the files mounted at ``/input``, or on demo data.

``/input`` (``OMNIREC_INPUT_DIR`` on the host, ``deploy/data`` by default) may hold:

- ``items.parquet`` / ``items.csv`` / ``items.csv.gz``: the catalogue (``--items``);
- every other ``.parquet`` / ``.csv`` / ``.csv.gz`` file, and every folder (of Parquet
  files, e.g. what ``python -m training export-events`` wrote): events (``--events``).

With no events there, synthetic demo data is generated once into the ``demo`` volume
(``python -m training generate``) and trained on. Arguments given to the job are passed
on to ``python -m training train`` (e.g. ``--model als``). The job then *becomes* the
training process, so its exit status is the compose job's.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

INPUT = Path("/input")
DEMO = Path("/var/lib/omnirec/demo")

EVENT_SUFFIXES = (".parquet", ".csv", ".csv.gz")
ITEMS_NAMES = tuple(f"items{suffix}" for suffix in EVENT_SUFFIXES)


def inputs(folder: Path) -> tuple[list[Path], Path | None]:
    """The events files and folders under ``folder`` (sorted) and its catalogue, if any.

    Hidden entries and other files (a README, a ``.gitignore``) are left alone.
    """
    events: list[Path] = []
    items = None
    if not folder.is_dir():
        return events, items
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue
        if path.is_dir():
            events.append(path)
        elif path.name in ITEMS_NAMES:
            items = path
        elif path.name.endswith(EVENT_SUFFIXES):
            events.append(path)
    return events, items


def commands(
    folder: Path, demo: Path, extra: list[str], python: str = sys.executable
) -> list[list[str]]:
    """What the job runs, in order: maybe ``generate``, then ``train``."""
    events, items = inputs(folder)
    steps = []
    if not events:
        demo_events, demo_items = demo / "events.parquet", demo / "items.parquet"
        if not (demo_events.exists() and demo_items.exists()):
            steps.append([python, "-m", "training", "generate", "--out", str(demo)])
        events, items = [demo_events], demo_items
    train = [python, "-m", "training", "train", "--events", *map(str, events)]
    if items is not None:
        train += ["--items", str(items)]
    steps.append(train + extra)
    return steps


def main(argv: list[str]) -> int:
    """Run the steps; returns only when a step before ``train`` fails."""
    *first, last = commands(INPUT, DEMO, argv)
    for step in first:
        print("train job:", " ".join(step), flush=True)
        done = subprocess.run(step, check=False)
        if done.returncode != 0:
            return done.returncode
    print("train job:", " ".join(last), flush=True)
    os.execv(last[0], last)  # the job's exit status is training's


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
