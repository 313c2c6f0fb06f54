"""Send-time quality on real public purchase logs: held-out active days (issue 24, point 2).

    python bench/bench_send_time_real.py [--only NAME] [--fraction F]

Logs: ``completejourney``, ``onlineretail`` and ``instacart`` (``bench/real_logs``); a log
whose raw file is absent is skipped with one line saying why. Their events are purchases
with a ``timezone`` column (Instacart's dates are reconstructed from weekdays and days
between orders; its hours are as recorded).

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
learn from the training frame only. Beside them, the best of the family of plain
per-person rules (``engagement_baselines.PLAIN_RULES``: ±0/1/2 h, weekday vs weekend or
not, all history or a half-life of 30/90/365 days) *chosen on the held-out days
themselves*: no method could pick its rule that way, so it is a ceiling for the family,
the bar the learnt mix has to clear.

Prints one table (hit rate within ±1 h per method, people and held-out days counted),
which rule the ceiling is, and omnirec minus the best other column on each log.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

import real_logs  # noqa: E402

from training.engagement_baselines import (  # noqa: E402
    PLAIN_RULES,
    PlainRule,
    own_hours,
    prepare,
)
from training.engagement_regimes import held_out_days  # noqa: E402
from training.regime_evaluation import (  # noqa: E402
    MODEL,
    RANDOM_HIT,
    evaluate,
    hour_metric,
    hour_scores,
)

LOGS = ("completejourney", "onlineretail", "instacart")
#: Label of every query (its metric is ``hit_1h_day``).
LABEL = "day"
#: The own histogram by kind of day, unsmoothed (a rule of the family, shown on its own).
DAY_TYPE_HISTOGRAM = "day_type_histogram"
#: The family's best rule on the held-out days (a ceiling; see the module docstring).
BEST_RULE = "best_plain_rule"
#: Table columns: method key in the report -> heading.
COLUMNS = {
    MODEL: "omnirec",
    "active_hour_histogram": "own hour histogram",
    DAY_TYPE_HISTOGRAM: "own histogram, weekday vs weekend",
    "own_hours_1h": "own hours ±1 h",
    "own_hours_1h_day_type": "own hours ±1 h, weekday vs weekend",
    "last_active_hour": "last active hour",
    "global_best_hour": "global best hour",
    BEST_RULE: "best plain rule (chosen on the held-out days)",
}
STARTED = time.monotonic()


def say(message: str) -> None:
    print(f"[{time.monotonic() - STARTED:6.1f}s] {message}", flush=True)


def score_log(name: str, fraction: float) -> dict[str, object] | str:
    """One table row: people, held-out days and hit rates; or why the log is skipped."""
    raw = real_logs.find_raw(name)
    if raw is None:
        return real_logs.missing(name)
    frame = real_logs.events(name, raw)
    say(real_logs.summary(name, frame))
    regime = held_out_days(frame, name, LABEL, fraction)
    say(f"{name}: {len(regime.frame):,} training events, {len(regime.queries):,} held-out days")
    report = evaluate(regime)
    say(
        f"{name}: model fit {report.seconds['fit']:.1f} s, answers "
        f"{report.seconds['answer']:.1f} s, baselines {report.seconds['baselines']:.1f} s"
    )
    metric = hour_metric(LABEL)
    hits = {m: row[metric] for m, row in report.metrics.items() if metric in row}
    log = prepare(regime.frame, regime.queries)

    def scored(rule: PlainRule) -> float:
        return hour_scores(regime.queries, own_hours(log, regime.queries, rule))[0][metric]

    hits[DAY_TYPE_HISTOGRAM] = scored(PlainRule(0, True, None))
    by_rule = {rule: scored(rule) for rule in PLAIN_RULES}
    best = max(by_rule, key=lambda rule: by_rule[rule])
    hits[BEST_RULE] = by_rule[best]
    say(f"{name}: best plain rule on the held-out days: {best.name} ({by_rule[best]:.3f})")
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
