"""Fits that cannot take the training run down: each model fit runs in a child process.

Why a process and not a thread or a ``try``: the failures seen on users' data are not
Python exceptions. A LAPACK kernel that segfaults (EASE's inverse at 16k items on this
machine's default OpenBLAS kernel), the kernel's OOM killer, or a fit that runs for an
hour all end the process they happen in. In a child they end only the child: the parent
reads how it ended (:class:`FitFailed`'s ``reason``: ``crashed (SIGSEGV)``, ``ran out of
memory``, ``passed its time limit of 90 s``, or the exception's one line) and the run goes
on with the other candidates.

What crosses the boundary is what a bundle is made of, never pickles: the matrix as
``.npz`` (scipy's own format), the params and metadata as JSON, and the fitted model as a
saved :class:`~service.bundle.ModelBundle` (``.npz`` + manifest). The child is a fresh
interpreter (``python -m training.guarded_fit``), not a fork: a fork of a process whose
OpenMP runtime has run (implicit's fits) can hang in the child. Starting one costs about
a second of imports, small beside any fit worth guarding.

The child logs to the same stderr, so a long fit still shows its progress; per-iteration
figures (ALS loss, BPR's share correct) come back in a JSON file (:attr:`Fitted.progress`),
which the run logs to MLflow.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from service.bundle import ModelBundle
from service.errors import OmnirecError
from training.models import SPARK, ModelParams, fit, to_bundle

log = logging.getLogger(__name__)

_MATRIX, _USERS, _ITEMS, _JOB = "matrix.npz", "users.npy", "items.npy", "job.json"
_BUNDLE, _PROGRESS, _ERROR = "bundle", "progress.json", "error.txt"
#: Exit status of a child whose fit raised MemoryError (so it reads as memory, not a bug).
_EXIT_MEMORY = 3
_EXIT_ERROR = 4


class FitFailed(OmnirecError):
    """A guarded fit did not produce a model; ``reason`` says how it ended, in words."""

    def __init__(self, label: str, reason: str) -> None:
        super().__init__(f"{label}: {reason}")
        self.label = label
        self.reason = reason


@dataclass(frozen=True)
class Fitted:
    """A guarded fit's model, as a bundle, and how long the child took."""

    bundle: ModelBundle
    seconds: float
    progress: list[tuple[int, float, str, float]]
    """Per-iteration ``(iteration, seconds, metric, value)`` of the fit (ALS's loss,
    BPR's share correct), for MLflow."""


def fit_bundle(
    params: ModelParams,
    matrix: sp.csr_matrix,
    user_ids: np.ndarray,
    item_ids: np.ndarray,
    metadata: dict[str, Any],
    *,
    label: str | None = None,
    time_limit: float | None = None,
) -> Fitted:
    """Fit ``params`` on ``matrix`` in a child process and bundle it with the ids and
    ``metadata`` (:func:`training.models.to_bundle`).

    Raises
    ------
    FitFailed
        when the child crashes, runs out of memory, raises, or runs past ``time_limit``
        seconds (it is then killed).
    """
    label = label or params.kind
    started = time.perf_counter()
    if params.backend == SPARK:
        # The fit runs in Spark's own JVM (or cluster) already, through the session the
        # run opened; its failures come back as the exceptions spark_als raises.
        progress: list[tuple[int, float, str, float]] = []
        model = fit(params, matrix, on_iteration=lambda *step: progress.append(step))
        bundle = to_bundle(model, params, user_ids, item_ids, metadata)
        return Fitted(bundle, time.perf_counter() - started, progress)
    with tempfile.TemporaryDirectory(prefix="omnirec-fit-") as tmp:
        work = Path(tmp)
        sp.save_npz(work / _MATRIX, sp.csr_matrix(matrix), compressed=False)
        np.save(work / _USERS, np.asarray(user_ids, dtype=np.str_), allow_pickle=False)
        np.save(work / _ITEMS, np.asarray(item_ids, dtype=np.str_), allow_pickle=False)
        job = {"params": asdict(params), "metadata": metadata}
        (work / _JOB).write_text(json.dumps(job, default=str), encoding="utf-8")
        child = subprocess.Popen(
            [sys.executable, "-m", "training.guarded_fit", str(work)], env=_child_env()
        )
        try:
            code = child.wait(timeout=time_limit)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
            raise FitFailed(label, f"passed its time limit of {time_limit:g} s") from None
        except BaseException:
            # Ctrl-C or an error here: never leave a fit running behind the parent.
            child.kill()
            child.wait()
            raise
        if code != 0:
            raise FitFailed(label, _how_it_ended(code, work / _ERROR))
        bundle = ModelBundle.load(work / _BUNDLE)
        steps = [tuple(step) for step in json.loads((work / _PROGRESS).read_text())]
    return Fitted(bundle, time.perf_counter() - started, steps)


def _child_env() -> dict[str, str]:
    """This process's environment, with the folder that holds ``training`` on the path,
    so the child imports this very code even where it is run from a checkout that is not
    installed (a bench that put the checkout on ``sys.path``)."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH", ""), root) if p)
    return env


def available_memory() -> int | None:
    """Bytes of memory the kernel says new work can have (``MemAvailable``), or None
    where it does not say (not Linux)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _how_it_ended(code: int, error_file: Path) -> str:
    if code < 0:
        name = signal.Signals(-code).name
        if -code == signal.SIGKILL:
            # Nobody here sent it: on Linux that is the OOM killer.
            return f"was killed ({name}): most likely out of memory"
        return f"crashed ({name})"
    if code == _EXIT_MEMORY:
        return "ran out of memory"
    if error_file.exists():
        return f"failed: {error_file.read_text(encoding='utf-8').strip()}"
    return f"exited with status {code}"


def _child(work: Path) -> int:
    """The child's side: fit, bundle, save; the exit status says how it went."""
    from service.config import load_settings

    logging.basicConfig(
        level=load_settings().log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    job = json.loads((work / _JOB).read_text(encoding="utf-8"))
    params = ModelParams(**job["params"])
    matrix = sp.load_npz(work / _MATRIX).tocsr()
    progress: list[tuple[int, float, str, float]] = []
    try:
        model = fit(params, matrix, on_iteration=lambda *step: progress.append(step))
        bundle = to_bundle(
            model,
            params,
            np.load(work / _USERS, allow_pickle=False),
            np.load(work / _ITEMS, allow_pickle=False),
            job["metadata"],
        )
        bundle.save(work / _BUNDLE)
    except MemoryError:
        return _EXIT_MEMORY
    except Exception as exc:  # noqa: BLE001 - whatever it was, the parent reports it
        (work / _ERROR).write_text(f"{type(exc).__name__}: {exc}", encoding="utf-8")
        return _EXIT_ERROR
    (work / _PROGRESS).write_text(json.dumps(progress), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(_child(Path(sys.argv[1])))
