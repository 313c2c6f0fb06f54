"""Training cost: what `python -m training train --events FILE` with default flags takes,
in wall time and memory, on logs of the shapes people bring, next to ALS alone.

    python bench/bench_training.py [--only NAME ...] [--timeout SECONDS] [--no-baseline]

Each row runs the real command as a child process, as a new user would (default flags:
``--model auto``, so validation picks the model, the recency half-life and the
transitions' blend), against a throw-away redis-server and a fresh MLflow sqlite store,
and reports the log's size, the child's wall time and peak RSS (``os.wait4``), what
validation chose, the holdout NDCG@10 of the registered run's model and of the
popularity baseline (from the MLflow run; from the printed holdout table when the run
did not get that far) and the target with pass or fail:

``ml100k``
    MovieLens 100K (read from ``../shared/datasets``, skipped when absent): the log the
    quality benches use, so what validation chooses there is comparable with them.
    Target 5 minutes.
``grocery``
    synthetic, grocery-shaped: about 2,400 households, 60,000 purchase lines over two
    years, 16,000 distinct products (Zipf popularity within aisles, each household with
    favourite aisles and staples it buys again, baskets of several lines at one
    timestamp). Target 5 minutes.
``catalogue_1m``
    synthetic, a large catalogue: 20,000 people, 3,000,000 views over 90 days, about
    700,000 distinct items of 1,000,000 (Zipf within categories, favourite categories
    per person). Target 15 minutes.
``completejourney``
    the 84.51° Complete Journey grocery sample, its first 80 % of time (the log of
    issue 23), when its raw file is present (``bench/real_logs``). Target 5 minutes.
``onlineretail``
    UCI Online Retail, the whole year (4,300 customers, 3,700 items, 400,000 lines),
    when its raw file is present. Target 5 minutes (under 20,000 items, as the grocery
    target).

After each default run, the same file is trained with ``--model als`` (ALS alone, the
simplest named model: the baseline) and the table shows default ÷ ALS time. A run past
its timeout (by default its row's target: it has failed by then) is killed and reported
as "did not finish in N s" with the stage it was in (its last log line); a crash reports
the signal. Every child's output is kept in ``.omnirec/bench_training/NAME-RUN.log``.

Nothing is asserted: the numbers depend on the machine (and on what else shares it).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import real_logs  # noqa: E402

LOG_DIR = ROOT / ".omnirec" / "bench_training"
STARTED = time.monotonic()
#: Seconds between progress lines while a child runs.
PROGRESS_EVERY = 30.0
DAY = 86_400
EPOCH = 1_672_531_200  # 2023-01-01


def say(message: str) -> None:
    print(f"[{time.monotonic() - STARTED:7.1f}s] {message}", flush=True)


# --- synthetic logs --------------------------------------------------------------------


def zipf(rng: np.random.Generator, n: int, exponent: float, size: int) -> np.ndarray:
    """``size`` draws of 0..n-1, rank r with probability ∝ 1 / (r + 1) ** exponent."""
    p = 1.0 / np.arange(1, n + 1) ** exponent
    return rng.choice(n, size=size, p=p / p.sum())


def taste(
    rng: np.random.Generator,
    owners: np.ndarray,
    favourites: np.ndarray,
    groups: int,
    group_size: int,
    exponent: float,
    loyalty: float,
) -> np.ndarray:
    """An item per entry of ``owners``: of one of the owner's ``favourites`` groups with
    probability ``loyalty``, else of a group drawn by popularity; within the group, by
    popularity. Items are numbered group × group_size + rank."""
    n = len(owners)
    own = favourites[owners, rng.integers(0, favourites.shape[1], n)]
    group = np.where(rng.random(n) < loyalty, own, zipf(rng, groups, exponent, n))
    return group * group_size + zipf(rng, group_size, exponent, n)


def frame_of(
    users: np.ndarray,
    items: np.ndarray,
    kind: str,
    timestamps: np.ndarray,
    channel: str,
    values: np.ndarray | float,
    item_space: int,
    seed: int,
) -> pd.DataFrame:
    """Events with string ids; item numbers are shuffled first, so an id says nothing of
    its popularity."""
    shuffle = np.random.default_rng(seed).permutation(item_space)
    item_codes, item_index = np.unique(shuffle[items], return_inverse=True)
    user_codes, user_index = np.unique(users, return_inverse=True)
    return pd.DataFrame(
        {
            "user_id": pd.Categorical.from_codes(user_index, [f"u{u:06d}" for u in user_codes]),
            "item_id": pd.Categorical.from_codes(item_index, [f"i{i:07d}" for i in item_codes]),
            "event_type": kind,
            "timestamp": timestamps.astype(np.int64),
            "channel": channel,
            "value": values,
        }
    )


def grocery(
    people: int = 2_400, baskets: float = 6.6, lines: float = 4.0, seed: int = 23
) -> pd.DataFrame:
    """A grocery-shaped purchase log: households with favourite aisles and staples they
    buy again, baskets of several lines at one timestamp, each household's trips spread
    over its own part of two years."""
    rng = np.random.default_rng(seed)
    aisles, per_aisle, exponent = 300, 200, 0.95
    favourites = zipf(rng, aisles, exponent, people * 4).reshape(people, 4)
    everyone = np.repeat(np.arange(people), 12)
    staples = taste(rng, everyone, favourites, aisles, per_aisle, exponent, 0.6)
    staples = staples.reshape(people, 12)
    trips = 1 + rng.poisson(baskets - 1, people)
    owner = np.repeat(np.arange(people), trips)
    span = rng.uniform(30, 730, people) * DAY
    start = rng.uniform(0, 730 * DAY - span)
    when = EPOCH + start[owner] + rng.uniform(0, 1, len(owner)) * span[owner]
    sizes = 1 + rng.poisson(lines - 1, len(owner))
    basket = np.repeat(np.arange(len(owner)), sizes)
    who = owner[basket]
    again = rng.random(len(basket)) < 0.4
    fresh = taste(rng, who, favourites, aisles, per_aisle, exponent, 0.6)
    item = np.where(again, staples[who, rng.integers(0, 12, len(basket))], fresh)
    # One line per product and basket, as on a receipt.
    _, first = np.unique(basket * (aisles * per_aisle) + item, return_index=True)
    basket, who, item = basket[first], who[first], item[first]
    price = np.round(np.exp(rng.normal(1.0, 0.6, aisles * per_aisle)), 2)
    quantity = 1 + rng.poisson(0.3, len(item))
    return frame_of(
        who,
        item,
        "purchase",
        when[basket],
        "store",
        price[item] * quantity,
        aisles * per_aisle,
        seed,
    )


def catalogue_1m(people: int = 20_000, views: int = 3_000_000, seed: int = 23) -> pd.DataFrame:
    """Views over a catalogue of 1,000,000 items: people of very different activity, each
    with favourite categories, over 90 days."""
    rng = np.random.default_rng(seed)
    categories, per_category, exponent = 5_000, 200, 0.64
    activity = rng.lognormal(0.0, 1.0, people)
    counts = rng.multinomial(views, activity / activity.sum())
    who = np.repeat(np.arange(people), counts)
    favourites = zipf(rng, categories, exponent, people * 3).reshape(people, 3)
    item = taste(rng, who, favourites, categories, per_category, exponent, 0.7)
    when = EPOCH + rng.integers(0, 90 * DAY, len(who))
    return frame_of(who, item, "view", when, "web", np.nan, categories * per_category, seed)


# --- rows -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    name: str
    title: str
    target_seconds: float
    make: Callable[[], pd.DataFrame | str]
    """The log, or why there is none here (one line)."""


def real(name: str, first: float | None = None) -> Callable[[], pd.DataFrame | str]:
    def make() -> pd.DataFrame | str:
        raw = real_logs.find_raw(name)
        if raw is None:
            return real_logs.missing(name)
        return real_logs.events(name, raw, first)

    return make


def ml100k() -> pd.DataFrame | str:
    import movielens

    folder = movielens.dataset_dir()
    if folder is None:
        return "no ml-100k (OMNIREC_ML100K or ../shared/datasets/ml-100k)"
    return movielens.events(folder)


ROWS = (
    Row("ml100k", "MovieLens 100K", 300, ml100k),
    Row("grocery", "grocery (synthetic)", 300, grocery),
    Row("catalogue_1m", "1M-item catalogue (synthetic)", 900, catalogue_1m),
    Row(
        "completejourney",
        "Complete Journey, first 80 %",
        300,
        real("completejourney", 0.8),
    ),
    Row("onlineretail", "UCI Online Retail", 300, real("onlineretail")),
)


# --- one run of `train` ----------------------------------------------------------------


@dataclass
class Outcome:
    status: str
    """``ok``, ``exit N``, ``crashed (SIGSEGV)`` or ``did not finish in N s``."""
    seconds: float
    peak_rss: int
    """Bytes."""
    chosen: str = ""
    ndcg: float | None = None
    popularity: float | None = None
    last_line: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def timed_out(self) -> bool:
        return self.status.startswith("did not finish")


def last_line(log: Path) -> str:
    """The log's last non-empty line, its time and level stripped."""
    with log.open("rb") as f:
        f.seek(max(0, log.stat().st_size - 8192))
        lines = [line.strip() for line in f.read().decode(errors="replace").splitlines()]
    lines = [line for line in lines if line]
    if not lines:
        return ""
    return re.sub(r"^\d{4}-\d\d-\d\d [\d:,]+ \w+ [\w.]+: ", "", lines[-1])[:160]


def rss_now(pid: int) -> int:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    found = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
    return int(found.group(1)) * 1024 if found else 0


def wait(proc: subprocess.Popen[bytes], timeout: float, label: str, log: Path) -> tuple[str, int]:
    """Wait for ``proc`` (killing its process group past ``timeout``), printing progress;
    its status and peak RSS in bytes."""
    started = time.monotonic()
    next_note = started + PROGRESS_EVERY
    status = None
    while True:
        pid, code, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        now = time.monotonic()
        if now - started > timeout:
            os.killpg(proc.pid, signal.SIGKILL)
            pid, code, usage = os.wait4(proc.pid, 0)
            status = f"did not finish in {timeout:.0f} s"
            break
        if now >= next_note:
            next_note += PROGRESS_EVERY
            say(
                f"  {label}: {now - started:.0f} s, RSS {gib(rss_now(proc.pid))}, "
                f"at: {last_line(log)}"
            )
        time.sleep(0.2)
    proc.returncode = os.waitstatus_to_exitcode(code)
    if status is None:
        if proc.returncode == 0:
            status = "ok"
        elif proc.returncode < 0:
            status = f"crashed ({signal.Signals(-proc.returncode).name})"
        else:
            status = f"exit {proc.returncode}"
    return status, usage.ru_maxrss * 1024


def holdout_from_mlflow(tracking_uri: str) -> tuple[float, float] | None:
    """(model, popularity) NDCG@10 of the one run in the store, or None."""
    from mlflow.tracking import MlflowClient

    from training.pipeline import holdout_metric

    client = MlflowClient(tracking_uri=tracking_uri)
    ids = [e.experiment_id for e in client.search_experiments()]
    for run in client.search_runs(ids) if ids else []:
        metrics = run.data.metrics
        model, baseline = holdout_metric("", "ndcg", 10), holdout_metric("popularity", "ndcg", 10)
        if model in metrics and baseline in metrics:
            return metrics[model], metrics[baseline]
    return None


def holdout_from_log(text: str) -> tuple[float, float] | None:
    """(model, popularity) NDCG@10 from the printed holdout table, or None."""
    _, printed, table = text.partition("\nholdout: ")
    found = re.search(r"^ndcg@10\s+([\d.]+)\s+([\d.]+)", table, re.M) if printed else None
    return (float(found.group(1)), float(found.group(2))) if found else None


def train(events: Path, flags: Sequence[str], timeout: float, label: str) -> Outcome:
    """``python -m training train --events EVENTS *flags`` against a throw-away Redis and
    MLflow store."""
    from devtools.redis_server import LocalRedis

    LOG_DIR.mkdir(parents=True, exist_ok=True)
    log = LOG_DIR / f"{label.replace(' ', '-')}.log"
    with tempfile.TemporaryDirectory(prefix="omnirec-bench-train-") as tmp:
        work = Path(tmp)
        redis_server = LocalRedis(work / "redis")
        tracking_uri = f"sqlite:///{work / 'mlflow.db'}"
        env = {
            **os.environ,
            "REDIS_URL": redis_server.url,
            "MLFLOW_TRACKING_URI": tracking_uri,
            "OMNIREC_ARTIFACT_ROOT": str(work / "artifacts"),
            "OMNIREC_KEY_PREFIX": "bench",
            "OMNIREC_IDENTITY_SECRET": "bench-training-secret-0123456789",
            "OMNIREC_LOG_LEVEL": "INFO",
            "PYTHONUNBUFFERED": "1",
        }
        command = [sys.executable, "-m", "training", "train", "--events", str(events), *flags]
        started = time.monotonic()
        try:
            with log.open("wb") as out:
                proc = subprocess.Popen(
                    command,
                    cwd=ROOT,
                    env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )
            status, peak = wait(proc, timeout, label, log)
        finally:
            redis_server.stop()
        outcome = Outcome(status, time.monotonic() - started, peak, last_line=last_line(log))
        text = log.read_text(errors="replace")
        chosen = re.search(r"^chosen by (.*)$", text, re.M)
        outcome.chosen = chosen.group(1).removeprefix("validation: ") if chosen else ""
        found = holdout_from_mlflow(tracking_uri) if outcome.ok else None
        outcome.ndcg, outcome.popularity = found or holdout_from_log(text) or (None, None)
    return outcome


# --- the table -------------------------------------------------------------------------


def gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


@dataclass
class Line:
    row: Row
    people: int
    items: int
    events: int
    default: Outcome
    baseline: Outcome | None


def verdict(outcome: Outcome, target: float) -> str:
    if outcome.ok and outcome.seconds <= target:
        return "pass"
    if outcome.ok:
        return f"FAIL: {outcome.seconds:.0f} s"
    if outcome.timed_out and outcome.seconds < target:
        # --timeout below the target: too early to tell.
        return f"unknown: {outcome.status}"
    return f"FAIL: {outcome.status}"


def ratio(line: Line) -> str:
    if line.baseline is None or not line.baseline.ok:
        return ""
    times = line.default.seconds / line.baseline.seconds
    return f"default {'≥ ' if not line.default.ok else ''}{times:.1f}× als"


def report(lines: Sequence[Line], skipped: Sequence[str]) -> str:
    head = (
        f"{'log':<31}{'people':>8}{'items':>10}{'events':>11}  {'train':<11}{'wall':>8}"
        f"{'peak RSS':>10}{'ndcg@10':>9}{'popularity':>11}{'target':>8}  verdict"
    )
    out = [head] if lines else []
    notes = []
    for line in lines:
        size = f"{line.people:>8,}{line.items:>10,}{line.events:>11,}"
        runs = [("default", line.default)]
        if line.baseline is not None:
            runs.append(("--model als", line.baseline))
        for n, (flags, run) in enumerate(runs):
            first = n == 0
            out.append(
                f"{line.row.title if first else '':<31}{size if first else ' ' * 29}  "
                f"{flags:<11}{run.seconds:>6.0f} s{gib(run.peak_rss):>10}"
                f"{number(run.ndcg):>9}{number(run.popularity):>11}"
                + (
                    f"{line.row.target_seconds:>6.0f} s  {verdict(run, line.row.target_seconds)}"
                    if first
                    else f"{'':>8}  {ratio(line) or ('' if run.ok else run.status)}"
                )
            )
            what = f"{line.row.name} {flags}"
            if run.chosen:
                notes.append(f"{what}: chosen by validation: {run.chosen}")
            if not run.ok:
                notes.append(f"{what}: {run.status}; last log line: {run.last_line}")
    return "\n".join([*out, "", *notes, *skipped])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--only",
        action="append",
        choices=[row.name for row in ROWS],
        metavar="NAME",
        help=f"run only this row (repeatable): {', '.join(row.name for row in ROWS)}",
    )
    parser.add_argument(
        "--timeout", type=float, help="seconds per run before it is killed (default: its target)"
    )
    parser.add_argument(
        "--no-baseline", action="store_true", help="skip the --model als run of each log"
    )
    args = parser.parse_args(argv)
    load = ", ".join(f"{n:.1f}" for n in os.getloadavg())
    say(f"training cost of the default `train`: {os.cpu_count()} cores, load average {load}")
    lines: list[Line] = []
    skipped: list[str] = []
    tmp = Path(tempfile.mkdtemp(prefix="omnirec-bench-training-"))
    try:
        for row in ROWS:
            if args.only and row.name not in args.only:
                continue
            made = time.monotonic()
            frame = row.make()
            if isinstance(frame, str):
                skipped.append(f"{row.name}: skipped: {frame}")
                say(skipped[-1])
                continue
            from training.event_log import write_events

            events = tmp / f"{row.name}.parquet"
            write_events(frame, events)
            people, items = frame["user_id"].nunique(), frame["item_id"].nunique()
            say(
                f"{row.name}: {people:,} people, {items:,} items, {len(frame):,} events "
                f"(made in {time.monotonic() - made:.1f} s); training with default flags ..."
            )
            timeout = args.timeout or row.target_seconds
            default = train(events, [], timeout, f"{row.name} default")
            say(f"{row.name} default: {default.status} after {default.seconds:.0f} s")
            baseline = None
            if not args.no_baseline:
                baseline = train(events, ["--model", "als"], timeout, f"{row.name} als")
                say(f"{row.name} --model als: {baseline.status} after {baseline.seconds:.0f} s")
            lines.append(Line(row, people, items, len(frame), default, baseline))
            del frame
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\n{report(lines, skipped)}\nlogs of every run: {LOG_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
