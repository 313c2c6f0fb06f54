"""Public purchase logs of real shops as omnirec event logs, for the benches.

    python bench/real_logs NAME [--raw PATH] [--out FILE] [--first FRACTION]
    python bench/real_logs --list

``completejourney``
    84.51° Complete Journey grocery receipts, the 75,000-line sample of the R package
    (``transactions_sample.rda``; the whole log ``transactions.rds`` reads the same way):
    :mod:`real_logs.completejourney` holds its source, licence and citation.
``onlineretail``
    UCI Online Retail, a UK gift shop's invoices of 2010-11 (``onlineretail.rda``):
    :mod:`real_logs.onlineretail`.
``instacart``
    Instacart Online Grocery Shopping 2017: weekday, hour and days since the one before
    of the first 49,999 orders (users 1-3,106) of ``orders.csv``, which has no dates, so
    they are reconstructed: :mod:`real_logs.instacart`.

Nothing here downloads: a log's raw file is looked for at ``--raw`` (the file or its
folder) when it is given, else in this order in ``$OMNIREC_REAL_LOGS/NAME/``, in
``.omnirec/real_logs/NAME/`` (git-ignored: the place to download to) and in
``../shared/datasets/NAME/``. Each
module's ``URL`` says where to fetch it from, e.g.::

    mkdir -p .omnirec/real_logs/completejourney
    curl -L -o .omnirec/real_logs/completejourney/transactions_sample.rda \\
        https://github.com/bradleyboehmke/completejourney/raw/master/data/transactions_sample.rda

Converting writes the events (Parquet or CSV, :func:`training.event_log.write_events`;
default ``.omnirec/real_logs/NAME.parquet``) and prints one line: people, items, events
and the time span. ``--first 0.8`` keeps the events of the first 80 % of the log's time
span (how a log is cut into a past to train on and a future to check against).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pandas as pd

from . import completejourney, instacart, onlineretail

ROOT = Path(__file__).resolve().parents[2]
#: Where a download belongs: git-ignored, beside the other local state.
LOCAL_DIR = ROOT / ".omnirec" / "real_logs"
SHARED_DIR = ROOT.parent / "shared" / "datasets"
ENV = "OMNIREC_REAL_LOGS"


@dataclass(frozen=True)
class RealLog:
    """One public log: what its raw file is called and where it comes from."""

    name: str
    title: str
    files: tuple[str, ...]
    """Names its raw file may have, the preferred first."""
    url: str
    repository: str
    licence: str
    citation: str
    convert: Callable[[Path], pd.DataFrame]
    """Raw file → events (the contract's columns)."""

    @classmethod
    def of(cls, name: str, title: str, module: ModuleType) -> RealLog:
        return cls(
            name,
            title,
            module.FILES,
            module.URL,
            module.REPOSITORY,
            module.LICENCE,
            module.CITATION,
            module.events,
        )


LOGS: dict[str, RealLog] = {
    log.name: log
    for log in (
        RealLog.of(
            "completejourney",
            "84.51° Complete Journey grocery receipts (75k-line sample)",
            completejourney,
        ),
        RealLog.of("onlineretail", "UCI Online Retail invoices", onlineretail),
        RealLog.of(
            "instacart",
            "Instacart Online Grocery Shopping 2017 orders (first 49,999: users 1-3,106)",
            instacart,
        ),
    )
}


def places(name: str, given: Path | None = None) -> list[Path]:
    """The folders (or the file) searched for ``name``'s raw file, in order: only
    ``given`` when it is given."""
    if given is not None:
        return [given]
    found = [Path(os.environ[ENV]) / name] if os.environ.get(ENV) else []
    return [*found, LOCAL_DIR / name, SHARED_DIR / name]


def find_raw(name: str, given: Path | None = None) -> Path | None:
    """``name``'s raw file, or None when none of :func:`places` holds it."""
    log = LOGS[name]
    for place in places(name, given):
        if place.is_file():
            return place
        for file in log.files:
            if (place / file).is_file():
                return place / file
    return None


def missing(name: str, given: Path | None = None) -> str:
    """Why ``name`` cannot be read, in one line that says how to get it."""
    log = LOGS[name]
    where = ", ".join(str(p) for p in places(name, given))
    return f"no {' or '.join(log.files)} in {where}; download {log.url} into {LOCAL_DIR / name}/"


def events(name: str, raw: Path, first: float | None = None) -> pd.DataFrame:
    """``name``'s events from its raw file, sorted by time; with ``first``, only those of
    the first ``first`` of the time span."""
    frame = LOGS[name].convert(raw)
    frame = frame.sort_values("timestamp", kind="stable", ignore_index=True)
    if first is not None:
        start, end = int(frame["timestamp"].iloc[0]), int(frame["timestamp"].iloc[-1])
        frame = frame[frame["timestamp"] <= start + first * (end - start)]
    return frame


def summary(label: str, frame: pd.DataFrame) -> str:
    """``label: 2,377 people, 20,815 items, 74,584 events, 2017-01-01 → 2017-12-31
    (364 days)``."""
    start, end = (pd.Timestamp(int(t), unit="s") for t in frame["timestamp"].agg(["min", "max"]))
    return (
        f"{label}: {frame['user_id'].nunique():,} people, {frame['item_id'].nunique():,} "
        f"items, {len(frame):,} events, {start:%Y-%m-%d} → {end:%Y-%m-%d} "
        f"({(end - start).days} days)"
    )


def label(name: str, first: float | None) -> str:
    return name if first is None else f"{name}, first {first:.0%} of time"


def default_out(name: str, first: float | None) -> Path:
    suffix = "" if first is None else f"-first{round(first * 100)}"
    return LOCAL_DIR / f"{name}{suffix}.parquet"


def main(argv: Sequence[str] | None = None) -> int:
    from training.event_log import write_events

    parser = argparse.ArgumentParser(
        prog="python bench/real_logs", description=__doc__.splitlines()[0]
    )
    parser.add_argument("name", nargs="?", choices=sorted(LOGS))
    parser.add_argument("--raw", type=Path, help="the raw file or its folder")
    parser.add_argument("--out", type=Path, help="default: .omnirec/real_logs/NAME.parquet")
    parser.add_argument("--first", type=float, help="keep the first FRACTION of the time span")
    parser.add_argument("--list", action="store_true", help="the logs, their sources, licences")
    args = parser.parse_args(argv)
    if args.list or args.name is None:
        for log in LOGS.values():
            found = find_raw(log.name)
            print(f"{log.name}: {log.title}\n  from {log.repository}, {log.url}")
            print(f"  licence: {log.licence}\n  cite: {log.citation}")
            print(f"  raw file: {found or 'not here (' + missing(log.name) + ')'}")
        return 0
    if args.first is not None and not 0 < args.first <= 1:
        parser.error(f"--first: a fraction in (0, 1], got {args.first}")
    raw = find_raw(args.name, args.raw)
    if raw is None:
        print(f"real_logs: {args.name}: {missing(args.name, args.raw)}", file=sys.stderr)
        return 2
    frame = events(args.name, raw, args.first)
    out = args.out or default_out(args.name, args.first)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_events(frame, out)
    print(f"{summary(label(args.name, args.first), frame)}; written to {out}")
    return 0
