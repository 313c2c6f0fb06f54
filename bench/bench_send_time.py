"""Send-time quality on real data: MovieLens 100K rating times as engagement.

    python bench/bench_send_time.py

Every rating is an activity event (a `view` at its timestamp); the latest 20 % of the
log's time span is held out. omnirec's send-time model (activity signal, recency,
time-zone segment priors) is scored next to the baselines of
`training.engagement.evaluate_send_time` — global best hour, the person's last active
hour, uniform — on the hit rate of the predicted hour within ±1 h and the mean
log-likelihood of held-out activity hours. The data has no messages, so channel metrics
and the open-histogram baseline do not apply. People's time zones come from their US
zip code's first digit (a coarse map, bench/movielens.py). Skips cleanly when the data
set is absent.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import movielens  # noqa: E402

from training.engagement import evaluate_send_time  # noqa: E402


def main() -> int:
    folder = movielens.dataset_dir()
    if folder is None:
        print("bench_send_time: ml-100k not found (set OMNIREC_ML100K); skipped")
        return 0
    frame = movielens.events(folder, with_timezones=True)
    zones = frame.groupby("user_id").timezone.first().value_counts()
    print(
        f"MovieLens 100K: {len(frame)} ratings as activity; zones: "
        + ", ".join(f"{z} {n}" for z, n in zones.items())
    )
    started = time.perf_counter()
    report = evaluate_send_time(frame, test_fraction=0.2)
    print(report.table())
    model = report.metrics["model"]
    for method, row in report.metrics.items():
        if method == "model":
            continue
        for metric in ("hit_rate_1h", "log_likelihood"):
            if metric in row:
                ratio = model[metric] - row[metric]
                print(f"  model − {method:<18} {metric:<15} {ratio:+.4f}")
    print(f"({time.perf_counter() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    sys.exit(main())
