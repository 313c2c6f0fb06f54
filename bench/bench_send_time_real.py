"""Send-time quality on real public purchase logs: held-out active days (issue 24, point 2).

    python bench/bench_send_time_real.py [--only NAME] [--fraction F]

Logs: ``completejourney`` and ``onlineretail`` (``bench/real_logs``); a log whose raw file
is absent is skipped with one line saying why. Their events are purchases with a
``timezone`` column.

Protocol. A person's *active days* are the distinct local days (in their latest zone in
the log, else UTC) with at least one event. The latest ``floor(fraction * days)`` of them
(default fraction 0.2, the latest fifth) are held out; people with fewer than
``1 / fraction`` active days keep everything in training and get no question. The
training frame is every event on a person's other days. For each held-out day the
question is "at which local hour of that day will she be active?", asked as a
:class:`~training.engagement_regimes.Query` for that day's window: from its local
midnight to the next (23, 24 or 25 h across a change of clock), in her zone, channel
``email``. The answer that counts is the local hour of her FIRST activity that day: a hit
when the predicted hour is within ±1 h (circular) of it (a random hour scores 3/24).

The model is the served send-time model (``training.regime_evaluation.served_model``)
fitted on the training frame and asked through ``regime_evaluation.evaluate`` with quiet
hours off; the baselines of ``training.engagement_baselines`` come from the same call and
learn from the training frame only. One baseline is added here: the person's own activity
hour histogram on the query day's kind of day (weekdays or weekends; distinct clock
hours), falling back to the all-days histogram, then the global best hour.

Prints one table (hit rate within ±1 h per method, people and held-out days counted) and
which method is best on each log.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

import real_logs  # noqa: E402

from training.engagement_baselines import (  # noqa: E402
    TrainingLog,
    active_hour_histogram,
    prepare,
)
from training.engagement_regimes import Query, Regime  # noqa: E402
from training.regime_evaluation import (  # noqa: E402
    MODEL,
    RANDOM_HIT,
    evaluate,
    hour_metric,
    hour_scores,
)

LOGS = ("completejourney", "onlineretail")
#: Label of every query (its metric is ``hit_1h_day``).
LABEL = "day"
#: Own weekday-vs-weekend histogram, computed here (not in engagement_baselines).
DAY_TYPE_HISTOGRAM = "day_type_histogram"
#: Table columns: method key in the report -> heading.
COLUMNS = {
    MODEL: "omnirec",
    "active_hour_histogram": "own hour histogram",
    DAY_TYPE_HISTOGRAM: "own histogram, weekday vs weekend",
    "last_active_hour": "last active hour",
    "global_best_hour": "global best hour",
}
STARTED = time.monotonic()


def say(message: str) -> None:
    print(f"[{time.monotonic() - STARTED:6.1f}s] {message}", flush=True)


def held_out_days(frame: pd.DataFrame, name: str, fraction: float = 0.2) -> Regime:
    """The log split by active days (see the module docstring) as a :class:`Regime`: the
    training frame and one query per held-out day, its first local activity hour the
    target."""
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be between 0 and 1, got {fraction}")
    frame = frame.reset_index(drop=True)
    users = frame["user_id"].astype(str)
    zoned = frame.assign(user_id=users)
    zoned = zoned[zoned["timezone"].fillna("").astype(str) != ""]
    latest = zoned.sort_values("timestamp", kind="stable").groupby("user_id")["timezone"].last()
    zone = users.map(latest).fillna("UTC").to_numpy(dtype=object)

    ts = frame["timestamp"].to_numpy(dtype=np.int64)
    day = np.empty(len(frame), dtype="datetime64[D]")
    hour = np.empty(len(frame), dtype=np.int64)
    for name_ in pd.unique(zone):
        rows = np.flatnonzero(zone == name_)
        local = pd.DatetimeIndex(pd.to_datetime(ts[rows], unit="s", utc=True)).tz_convert(
            str(name_)
        )
        day[rows] = local.tz_localize(None).normalize().to_numpy().astype("datetime64[D]")
        hour[rows] = local.hour

    days = pd.DataFrame({"u": users, "day": day, "ts": ts, "hour": hour, "zone": zone})
    first = days.sort_values("ts", kind="stable").groupby(["u", "day"], sort=True).first()
    first = first.reset_index()
    rank = first.groupby("u").cumcount(ascending=False).to_numpy()  # 0: latest day
    count = first.groupby("u")["day"].transform("size").to_numpy()
    first["held"] = rank < np.floor(fraction * count)

    held_keys = pd.MultiIndex.from_frame(first.loc[first["held"], ["u", "day"]])
    row_keys = pd.MultiIndex.from_arrays([users, day])
    train = frame[~row_keys.isin(held_keys)].reset_index(drop=True)

    queries = []
    for row in first[first["held"]].itertuples(index=False):
        local_zone = ZoneInfo(str(row.zone))
        date = pd.Timestamp(row.day).date()
        midnight = datetime(date.year, date.month, date.day, tzinfo=local_zone)
        following = midnight.date() + timedelta(days=1)
        next_midnight = datetime(following.year, following.month, following.day, tzinfo=local_zone)
        start = midnight.astimezone(UTC)
        window = round((next_midnight.astimezone(UTC) - start).total_seconds() / 3600)
        queries.append(
            Query(
                str(row.u),
                "email",
                start,
                window,
                str(row.zone),
                (int(row.hour),),
                LABEL,
                day_type="weekend" if date.weekday() >= 5 else "weekday",
            )
        )
    return Regime(name, f"{name}: latest {fraction:.0%} of active days held out", train, queries)


def day_type_histogram(log: TrainingLog, queries: list[Query]) -> np.ndarray:
    """The person's most frequent activity hour on the query day's kind of day (distinct
    clock hours; ties: the earliest), else :func:`active_hour_histogram` (which falls back
    to the global best hour)."""
    fallback = active_hour_histogram(log, queries)
    at = np.asarray(log.users.get_indexer([q.user_id for q in queries]), dtype=np.int64)
    out = fallback.copy()
    for kind, on_weekend in (("weekday", False), ("weekend", True)):
        counts = log.per_person(log.active & (log.weekend == on_weekend))
        has = counts.sum(axis=1) > 0
        best = np.argmax(counts, axis=1)
        for k, query in enumerate(queries):
            if query.day_type == kind and at[k] >= 0 and has[at[k]]:
                out[k] = best[at[k]]
    return out


def score_log(name: str, fraction: float) -> dict[str, object] | str:
    """One table row: people, held-out days and hit rates; or why the log is skipped."""
    raw = real_logs.find_raw(name)
    if raw is None:
        return real_logs.missing(name)
    frame = real_logs.events(name, raw)
    say(real_logs.summary(name, frame))
    regime = held_out_days(frame, name, fraction)
    say(f"{name}: {len(regime.frame):,} training events, {len(regime.queries):,} held-out days")
    report = evaluate(regime)
    say(
        f"{name}: model fit {report.seconds['fit']:.1f} s, answers "
        f"{report.seconds['answer']:.1f} s, baselines {report.seconds['baselines']:.1f} s"
    )
    metric = hour_metric(LABEL)
    hits = {m: row[metric] for m, row in report.metrics.items() if metric in row}
    log = prepare(regime.frame, regime.queries)
    extra, _ = hour_scores(regime.queries, day_type_histogram(log, regime.queries))
    hits[DAY_TYPE_HISTOGRAM] = extra[metric]
    return {"people": report.people, "days": report.counts[metric], "hits": hits}


def table(rows: dict[str, dict[str, object]]) -> str:
    heads = ["log", "people", "held-out days", *COLUMNS.values()]
    lines = ["| " + " | ".join(heads) + " |", "|" + "|".join("---" for _ in heads) + "|"]
    for name, row in rows.items():
        hits = row["hits"]
        cells = [name, f"{row['people']:,}", f"{row['days']:,}"]
        cells += [f"{hits[m]:.3f}" for m in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=LOGS, action="append", help="score only this log")
    parser.add_argument("--fraction", type=float, default=0.2, help="share of active days held out")
    args = parser.parse_args(argv)
    rows: dict[str, dict[str, object]] = {}
    for name in args.only or LOGS:
        row = score_log(name, args.fraction)
        if isinstance(row, str):
            print(f"{name}: skipped: {row}", flush=True)
            continue
        rows[name] = row
    if not rows:
        return 0
    print(
        f"\nhit rate within ±1 h of the first local activity hour of each held-out day "
        f"(random hour: {RANDOM_HIT:.3f})\n"
    )
    print(table(rows))
    for name, row in rows.items():
        hits = row["hits"]
        best = max(COLUMNS, key=lambda m: hits[m])
        margin = hits[MODEL] - max(hits[m] for m in COLUMNS if m != MODEL)
        print(
            f"{name}: best is {COLUMNS[best]} ({hits[best]:.3f}); omnirec minus the best "
            f"baseline: {margin:+.3f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
