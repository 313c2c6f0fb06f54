"""`make bench`: every benchmark, each printing its table next to its baseline."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHES = (
    ("recommendation quality, served through gRPC (MovieLens 100K)", ["bench_quality.py"]),
    ("send-time quality (independent regimes, MovieLens 100K)", ["bench_send_time.py"]),
    (
        "send-time quality on real logs: held-out active days, first activity hour",
        ["bench_send_time_real.py"],
    ),
    ("latency and throughput vs a bare gRPC echo server", ["bench_latency.py"]),
    ("scoring cost against catalogue size vs a bare top-k", ["bench_scoring.py"]),
    ("approximate search at 10k, 100k and 1M items: recall, Recommend p99", ["bench_ann.py"]),
    ("event loading", ["bench_event_log.py", "--rows", "1000000"]),
    ("Spark ALS vs implicit ALS: served NDCG@10 and fit time (MovieLens 100K)", ["bench_spark.py"]),
    ("campaign audiences: people ranked and planned per second", ["bench_audience.py"]),
    (
        "sizing: Redis bytes, bundle size and load, training time against events",
        ["bench_sizing.py"],
    ),
    (
        "training cost: default `train` on grocery, 1M-item and real logs vs ALS alone",
        ["bench_training.py"],
    ),
)


def main() -> int:
    failed = 0
    for title, args in BENCHES:
        print(f"\n=== {title} ===", flush=True)
        failed |= subprocess.call([sys.executable, str(HERE / args[0]), *args[1:]])
    return failed


if __name__ == "__main__":
    sys.exit(main())
