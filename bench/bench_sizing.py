"""Sizing figures for a deployment: Redis bytes per person and per item, the bundle's size
and load time per million items, and training time against the number of events.

    python bench/bench_sizing.py [--people 5000] [--events 1000000 10000000]
                                 [--bundle-items 1000000] [--factors 64]

Three tables, each with what it is measured against:

``Redis``
    a synthetic log of ``--people`` people is published to a throw-away redis-server as
    ``train`` publishes it (``training.publish.publish``), then 50 live events are tracked
    for 300 of them through the same write as ``TrackEvents``. ``MEMORY USAGE`` over a
    sample of each kind of key gives bytes per person (published features, live layer) and
    per item (catalogue entry, bought-together list); ``used_memory`` before and after the
    publication gives the whole publication per person, overheads included.
``bundle``
    an ALS bundle of ``--bundle-items`` items and ``--factors`` float32 factors (synthetic
    factors, 1,000 people) saved with ``ModelBundle.save`` and read back with
    ``ModelBundle.load``: bytes on disk and seconds to load, the cost every serving
    process pays at start and at every model switch.
``training``
    for each of ``--events``, a synthetic log of about that many events
    (``training.synthetic.generate``), then the steps of a training run that grow with it,
    timed apart: reading the file, the confidence matrix, the ALS fit (64 factors, 15
    iterations, implicit on this machine's cores) and the transitions. Validation,
    evaluation and MLflow come on top and repeat fits (``train`` prints their times).

Nothing is asserted: the numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

STARTED = time.monotonic()
#: People given live events in the Redis part, and events each.
LIVE_PEOPLE, LIVE_EVENTS = 300, 50
#: Keys of each kind MEMORY USAGE is asked about.
SAMPLE = 300


def say(message: str) -> None:
    print(f"[{time.monotonic() - STARTED:6.1f}s] {message}", flush=True)


def mib(n: float) -> str:
    return f"{n / 2**20:,.1f} MiB"


# --- Redis ---------------------------------------------------------------------------


def redis_sizes(people: int, tmp: Path) -> list[tuple[str, str, str]]:
    import pandas as pd

    from devtools.redis_server import LocalRedis
    from service.store import FeatureStore
    from service.store.codecs import TrackedEvent
    from service.store.keys import cobuy_key, item_key, live_key, user_key
    from service.store.plans import connect
    from training.catalogue_file import load_catalogue
    from training.matrix import DEFAULT_WEIGHTS
    from training.publish import publish
    from training.synthetic import generate

    data = generate(people, max(200, people // 10), 60, 7, tmp / "log")
    frame = pd.read_parquet(data.events)
    catalogue = load_catalogue(data.items)
    redis_server = LocalRedis(tmp / "redis")
    try:
        client = connect(redis_server.url)
        store = FeatureStore(client, "size")
        before = int(client.info("memory")["used_memory"])
        pub = publish(
            store,
            frame,
            catalogue,
            DEFAULT_WEIGHTS,
            {"data_end": int(frame["timestamp"].max())},
            history_length=200,
            popularity_half_life_days=30,
            keep=2,
        )
        published = int(client.info("memory")["used_memory"]) - before
        users = sorted(frame["user_id"].unique())
        rng = np.random.default_rng(1)
        sample = [str(u) for u in rng.choice(users, min(SAMPLE, len(users)), replace=False)]
        items = sorted(catalogue)
        now = int(time.time())
        events = [
            TrackedEvent(person, str(rng.choice(items)), kind, now - n, "app", "", 0.0, False, "")
            for person in sample[:LIVE_PEOPLE]
            for n, kind in enumerate(
                rng.choice(["view", "view", "view", "add_to_cart", "purchase"], LIVE_EVENTS)
            )
        ]
        for start in range(0, len(events), 1000):
            store.record(events[start : start + 1000], DEFAULT_WEIGHTS)

        def usage(keys: Sequence[str]) -> float:
            sizes = [client.memory_usage(k, samples=0) or 0 for k in keys]
            return float(np.mean(sizes)) if sizes else 0.0

        p = store.prefix
        per_published = usage([user_key(p, pub, u) for u in sample])
        live_parts = ("history", "purchased", "purchased_at", "engagement")
        per_live = sum(
            usage([live_key(p, u, part) for u in sample[:LIVE_PEOPLE]]) for part in live_parts
        )
        item_sample = [str(i) for i in rng.choice(items, min(SAMPLE, len(items)), replace=False)]
        per_item = usage([item_key(p, i) for i in item_sample])
        per_cobuy = usage([cobuy_key(p, pub, i) for i in item_sample])
        return [
            (
                "published features, per person",
                f"{per_published:,.0f} B",
                f"history ≤ 200 events; {len(sample)} sampled",
            ),
            (
                f"live layer, per person with {LIVE_EVENTS} events",
                f"{per_live:,.0f} B",
                "history, purchases, engagement lists",
            ),
            ("catalogue entry, per item", f"{per_item:,.0f} B", "category, title, price, stock"),
            ("bought-together list, per item", f"{per_cobuy:,.0f} B", "≤ 50 partners (0: none)"),
            (
                "whole publication, per person",
                f"{published / len(users):,.0f} B",
                f"used_memory growth {mib(published)} over {len(users):,} people",
            ),
        ]
    finally:
        redis_server.stop()


# --- bundle ------------------------------------------------------------------------------


def bundle_sizes(items: int, factors: int, tmp: Path) -> list[tuple[str, str, str]]:
    from service.bundle import ModelBundle

    rng = np.random.default_rng(3)
    people = 1_000  # few: the figures are per item
    bundle = ModelBundle(
        "als",
        user_ids=np.array([f"u{i:07d}" for i in range(people)]),
        item_ids=np.array([f"i{j:08d}" for j in range(items)]),
        user_factors=rng.standard_normal((people, factors), dtype=np.float32),
        item_factors=rng.standard_normal((items, factors), dtype=np.float32),
        metadata={"params": {"alpha": 1.0, "regularization": 0.05}},
    )
    folder = tmp / "bundle"
    started = time.perf_counter()
    bundle.save(folder)
    saved = time.perf_counter() - started
    size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    started = time.perf_counter()
    ModelBundle.load(folder)
    loaded = time.perf_counter() - started
    scale = 1_000_000 / items
    return [
        (
            f"ALS bundle, {items:,} items × {factors} factors, {people:,} people",
            mib(size),
            f"saved in {saved:.1f} s",
        ),
        ("per 1M items (factors and ids)", mib(size * scale), "people add rows alike"),
        ("load time", f"{loaded:.2f} s", f"{loaded * scale:.2f} s per 1M items"),
    ]


# --- training ----------------------------------------------------------------------------


def training_times(targets: Sequence[int], tmp: Path) -> list[tuple[str, ...]]:
    import pandas as pd

    from training.matrix import DEFAULT_WEIGHTS, build_interactions
    from training.models import ModelParams, fit
    from training.synthetic import generate
    from training.transitions import fit_transitions

    rows = []
    for target in targets:
        # The generator makes about 300 events per person over 60 days.
        people = max(1000, target // 300)
        say(f"training: generating about {target:,} events ({people:,} people) ...")
        data = generate(people, max(500, people // 3), 60, 11, tmp / f"log-{target}")
        started = time.perf_counter()
        frame = pd.read_parquet(data.events)
        read = time.perf_counter() - started
        say(f"training: {len(frame):,} events; building the matrix ...")
        started = time.perf_counter()
        interactions = build_interactions(frame, DEFAULT_WEIGHTS, half_life_days=90)
        matrix = time.perf_counter() - started
        say(f"training: fitting ALS on {interactions.shape[0]:,} × {interactions.shape[1]:,} ...")
        started = time.perf_counter()
        fit(ModelParams(kind="als", factors=64, iterations=15), interactions.matrix)
        als = time.perf_counter() - started
        say("training: transitions ...")
        started = time.perf_counter()
        fit_transitions(frame, DEFAULT_WEIGHTS, interactions.item_ids)
        transitions = time.perf_counter() - started
        rows.append(
            (
                f"{len(frame):,}",
                f"{interactions.shape[0]:,} × {interactions.shape[1]:,}",
                f"{read:.1f}",
                f"{matrix:.1f}",
                f"{als:.1f}",
                f"{transitions:.1f}",
                f"{len(frame) / (read + matrix + als + transitions) / 1000:,.0f}k",
            )
        )
        shutil.rmtree(tmp / f"log-{target}", ignore_errors=True)
        del frame, interactions
    return rows


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(r[n])) for r in [header, *rows]) for n in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(header, widths, strict=True))]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--people", type=int, default=5000)
    parser.add_argument("--events", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--bundle-items", type=int, default=1_000_000)
    parser.add_argument("--factors", type=int, default=64)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    tmp = Path(tempfile.mkdtemp(prefix="omnirec-bench-sizing-"))
    try:
        say(f"Redis: publishing a synthetic log of {args.people:,} people ...")
        redis_rows = redis_sizes(args.people, tmp)
        say(f"bundle: {args.bundle_items:,} items × {args.factors} factors ...")
        bundle_rows = bundle_sizes(args.bundle_items, args.factors, tmp)
        train_rows = training_times(args.events, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print("\nRedis memory (MEMORY USAGE over sampled keys):")
    print(table(("what", "bytes", "note"), redis_rows))
    print("\nBundle on disk and load time:")
    print(table(("what", "size", "note"), bundle_rows))
    print("\nTraining time against events (seconds; ALS 64 factors, 15 iterations):")
    print(
        table(
            ("events", "people × items", "read", "matrix", "ALS fit", "transitions", "events/s"),
            train_rows,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
