"""Time :func:`training.event_log.load_events` against a bare pyarrow read of the same file.

    python bench/bench_event_log.py [--rows 1000000] [--repeat 3]

Writes synthetic, valid events (CSV with epoch seconds, CSV with ISO 8601 timestamps,
Parquet) to a temporary directory, then prints, per file, the best of ``--repeat`` runs of
the bare read (``pyarrow.csv.read_csv`` / ``pyarrow.parquet.read_table``) and of
``load_events``, and their ratio: what reading, validating and building the frame costs on
top of parsing. Nothing is asserted; the numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from service.events import CHANNELS, EVENT_TYPES, ITEM_EVENT_TYPES
from training.event_log import load_events, write_events

ZONES = ("", "Europe/Berlin", "America/New_York", "Asia/Tokyo", "UTC")


def synthetic_events(rows: int, seed: int = 0) -> pd.DataFrame:
    """``rows`` valid events over 100k people and 20k items, timestamps over one year."""
    rng = np.random.default_rng(seed)
    event_types = np.array(EVENT_TYPES)[rng.integers(0, len(EVENT_TYPES), rows)]
    is_item = np.isin(event_types, ITEM_EVENT_TYPES)
    items = np.char.add("item-", rng.integers(0, 20_000, rows).astype(str))
    return pd.DataFrame(
        {
            "user_id": np.char.add("user-", rng.integers(0, 100_000, rows).astype(str)),
            "item_id": np.where(is_item, items, ""),
            "event_type": event_types,
            "timestamp": 1_700_000_000 + rng.integers(0, 365 * 86_400, rows),
            "channel": np.array(("", *CHANNELS))[rng.integers(0, len(CHANNELS) + 1, rows)],
            "timezone": np.array(ZONES)[rng.integers(0, len(ZONES), rows)],
            "value": np.where(rng.random(rows) < 0.1, rng.random(rows) * 100, np.nan),
        }
    )


def best_of(repeat: int, run: Callable[[], object]) -> float:
    """Fastest wall time of ``repeat`` runs, in seconds."""
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    frame = synthetic_events(args.rows)
    with tempfile.TemporaryDirectory() as tmp:
        files = {
            "csv": Path(tmp, "events.csv"),
            "csv (ISO 8601)": Path(tmp, "events-iso.csv"),
            "parquet": Path(tmp, "events.parquet"),
        }
        write_events(frame, files["csv"])
        write_events(frame, files["parquet"])
        iso = frame.assign(
            timestamp=pd.to_datetime(frame["timestamp"], unit="s", utc=True)
            .dt.tz_convert("Europe/Berlin")
            .map(pd.Timestamp.isoformat)
        )
        # write_events always writes epoch seconds, so the ISO variant goes through pandas.
        iso.to_csv(files["csv (ISO 8601)"], index=False)

        print(f"{args.rows:,} rows, best of {args.repeat}, {os.cpu_count()} CPUs")
        print(f"{'format':<16}{'rows':>11}{'bare s':>9}{'load s':>9}{'rows/s':>13}{'ratio':>8}")
        for name, path in files.items():
            bare_read = pq.read_table if name == "parquet" else pacsv.read_csv
            bare = best_of(args.repeat, lambda p=path, r=bare_read: r(p))
            loaded = best_of(args.repeat, lambda p=path: load_events(p))
            rows = len(load_events(path).frame)
            print(
                f"{name:<16}{rows:>11,}{bare:>9.2f}{loaded:>9.2f}"
                f"{rows / loaded:>13,.0f}{loaded / bare:>7.1f}x"
            )


if __name__ == "__main__":
    main()
