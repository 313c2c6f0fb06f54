"""Scoring cost against catalogue size: omnirec's request-time ranking next to the bare
top-k it cannot avoid, for catalogues of 10k, 100k and 1M items.

    python bench/bench_scoring.py [--sizes 10000 100000 1000000] [--factors 64]
                                  [--users 5000] [--seconds 2] [--blas-threads N]

For each size it builds, in memory, a synthetic ALS bundle (``service.bundle.ModelBundle``,
float32 factors from numpy's ``default_rng``, the metadata training writes: event weights,
alpha, regularization) and a catalogue with a category, title, price and stock flag for
every item (what ``CatalogueCache`` holds), then times, single-threaded with
``time.perf_counter``, one call after another:

``bare top-k``
    the baseline, measured in the same run: ``item_factors @ x`` and ``np.argpartition``
    for the best 10, the work any exact scorer has to do.
``Recommend``
    ``Recommender.recommend`` for a known person with 20–50 history events, so the
    request-time fold-in (the ALS user solve) runs, ``limit=10``.
``Recommend, 1 category``
    the same with ``include_categories`` naming one of 20 categories: the catalogue mask.
``SimilarItems``
    ``Recommender.similar_items`` for a known item, with a short bought-together list.

The calls cycle over a few hundred people (or items); each row gets a short warm-up, then
``--seconds`` of calls, at least 20 (so at 1M items a p99 rests on few calls). The table gives
p50 and p99 per call, calls per second and the p50 next to the bare top-k's at the same size
(``x bare``): what omnirec adds on top of the unavoidable scan.

The second table is what a server process pays once per model or catalogue: the bytes of
the bundle's arrays, the time to build a ``Recommender`` from it (the start-up and
hot-reload cost) with the process's resident memory growth after it and its peak during
the build (VmRSS / VmHWM from ``/proc/self/status``), the catalogue's resident memory, and
the first filtered call, which builds the catalogue's per-bundle columns (paid again after
every catalogue reload). Each server process holds all of it: bundle + recommender +
catalogue. Memory freed by a smaller size may be reused by the next one, so growths of the
later sizes can read a little low.

Nothing is asserted; the numbers depend on the machine. numpy's BLAS threads are left as a
server has them (the header says how many) unless ``--blas-threads`` sets them: with one
server process per core, as ``--processes`` is meant to run, ``--blas-threads 1`` is closer
to what each call gets under full load.
"""

from __future__ import annotations

import argparse
import gc
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits

from service.bundle import ModelBundle
from service.catalogue import Catalogue, ItemFilter
from service.recommender import RankingOptions, Recommender
from service.store.codecs import UserFeatures
from service.store.reads import ServingView
from training.matrix import DEFAULT_WEIGHTS
from training.models import ModelParams

LIMIT = 10
CATEGORIES = 20
#: Distinct people (and items, for SimilarItems) the timed calls cycle over.
POOL = 256
HISTORY_EVENTS = (20, 50)
#: Share of each event type in a synthetic history (views dominate, as in real logs).
EVENT_MIX = {"view": 0.6, "click": 0.2, "favourite": 0.08, "add_to_cart": 0.08, "purchase": 0.04}
WARMUP_SECONDS = 0.3
MIN_CALLS = 20
STATUS = Path("/proc/self/status")
MB = 1e6

STARTED = time.monotonic()


def say(message: str) -> None:
    print(f"[{time.monotonic() - STARTED:6.1f}s] {message}", flush=True)


@dataclass
class Timing:
    name: str
    latencies: list[float]
    rate: float

    def p(self, q: float) -> float:
        return float(np.quantile(self.latencies, q)) * 1e3


@dataclass
class OneOff:
    """What one process pays once for a model of this size."""

    items: int
    bundle_mb: float
    build_s: float
    recommender_mb: float
    build_peak_mb: float
    catalogue_mb: float
    first_filtered_s: float


# --- measuring ---------------------------------------------------------------------------


def memory_kb(field: str) -> int:
    """``VmRSS`` (resident now) or ``VmHWM`` (peak) of this process, in kB."""
    for line in STATUS.read_text().splitlines():
        name, _, value = line.partition(":")
        if name == field:
            return int(value.split()[0])
    raise KeyError(field)


def reset_peak() -> None:
    """Start VmHWM again from the current RSS (Linux: ``5`` to ``clear_refs``)."""
    Path("/proc/self/clear_refs").write_text("5")


def timed(fn: Callable[[int], object], seconds: float) -> tuple[list[float], float]:
    """Call ``fn(0)``, ``fn(1)``, … for ``seconds`` (at least :data:`MIN_CALLS` calls);
    per-call latencies in seconds and calls per second."""
    clock = time.perf_counter
    latencies: list[float] = []
    begin = clock()
    end = begin + seconds
    n = 0
    while n < MIN_CALLS or clock() < end:
        started = clock()
        fn(n)
        latencies.append(clock() - started)
        n += 1
    return latencies, n / (clock() - begin)


def warm_up(fn: Callable[[int], object]) -> None:
    end = time.perf_counter() + WARMUP_SECONDS
    n = 0
    while n < 3 or time.perf_counter() < end:
        fn(n)
        n += 1


# --- synthetic model, catalogue and requests ---------------------------------------------


def synthetic_bundle(items: int, users: int, factors: int, seed: int) -> ModelBundle:
    rng = np.random.default_rng(seed)
    params = ModelParams(kind="als", factors=factors)
    scale = np.float32(1.0 / np.sqrt(factors))
    return ModelBundle(
        kind="als",
        user_ids=np.char.add("user-", np.arange(users).astype(str)),
        item_ids=np.char.add("item-", np.arange(items).astype(str)),
        user_factors=rng.standard_normal((users, factors), dtype=np.float32) * scale,
        item_factors=rng.standard_normal((items, factors), dtype=np.float32) * scale,
        metadata={"params": params.relevant(), "weights": dict(DEFAULT_WEIGHTS)},
    )


def category(j: int) -> str:
    return f"cat-{j % CATEGORIES:02d}"


def synthetic_catalogue(item_ids: np.ndarray) -> Catalogue:
    """Every item with the fields ``UpsertItems`` sets, as ``CatalogueCache`` holds them."""
    return Catalogue(
        1,
        {
            item: {
                "category": category(j),
                "title": f"Item {j}",
                "price": float(j % 500) + 0.99,
                "in_stock": j % 10 != 0,
            }
            for j, item in enumerate(item_ids.tolist())
        },
    )


def synthetic_views(bundle: ModelBundle, seed: int) -> list[tuple[str, ServingView]]:
    """:data:`POOL` known people, each with a history of 20–50 item events."""
    rng = np.random.default_rng(seed)
    item_ids = bundle.item_ids
    popular = [(str(i), 100.0 - k) for k, i in enumerate(item_ids[:50])]
    kinds = np.array(list(EVENT_MIX))
    share = np.array(list(EVENT_MIX.values()))
    out = []
    for user in rng.choice(bundle.user_ids, POOL, replace=False):
        n = int(rng.integers(*HISTORY_EVENTS, endpoint=True))
        items = item_ids[rng.integers(0, len(item_ids), n)].tolist()
        events = rng.choice(kinds, n, p=share / share.sum()).tolist()
        stamps = 1_700_000_000 - np.sort(rng.integers(0, 30 * 86_400, n))
        history = list(zip(items, events, stamps.tolist(), strict=True))
        purchased = {i for i, kind, _ in history if kind == "purchase"}
        out.append((str(user), ServingView("bench", UserFeatures(history, purchased), popular)))
    return out


# --- one size ----------------------------------------------------------------------------


def run_size(items: int, args: argparse.Namespace) -> tuple[list[Timing], OneOff]:
    label = f"{items:>9,} items"
    say(f"{label}: building a {items:,} x {args.factors} ALS bundle ...")
    bundle = synthetic_bundle(items, args.users, args.factors, args.seed)
    bundle_bytes = sum(
        a.nbytes
        for a in (bundle.user_ids, bundle.item_ids, bundle.user_factors, bundle.item_factors)
    )

    say(f"{label}: building the recommender ...")
    gc.collect()
    before = memory_kb("VmRSS")
    reset_peak()
    started = time.perf_counter()
    recommender = Recommender(bundle)
    build_s = time.perf_counter() - started
    recommender_kb = memory_kb("VmRSS") - before
    peak_kb = memory_kb("VmHWM") - before

    say(f"{label}: building the catalogue ...")
    before = memory_kb("VmRSS")
    catalogue = synthetic_catalogue(bundle.item_ids)
    catalogue_kb = memory_kb("VmRSS") - before

    views = synthetic_views(bundle, args.seed + 1)
    plain = RankingOptions(limit=LIMIT)
    one_category = RankingOptions(limit=LIMIT, item_filter=ItemFilter(frozenset({category(3)})))
    rng = np.random.default_rng(args.seed + 2)
    xs = [bundle.user_factors[int(i)] for i in rng.integers(0, args.users, POOL)]
    seeds = bundle.item_ids[rng.integers(0, items, POOL)].tolist()
    together = [(str(i), 1.0) for i in bundle.item_ids[rng.integers(0, items, 20)]]
    anonymous = ServingView("bench", UserFeatures(), views[0][1].popular)
    item_factors = bundle.item_factors

    def bare(n: int) -> object:
        scores = item_factors @ xs[n % POOL]
        top = np.argpartition(scores, -LIMIT)[-LIMIT:]
        return top[np.argsort(-scores[top])]

    def recommend(n: int) -> object:
        user, view = views[n % POOL]
        return recommender.recommend(user, view, catalogue, plain)

    def recommend_filtered(n: int) -> object:
        user, view = views[n % POOL]
        return recommender.recommend(user, view, catalogue, one_category)

    def similar(n: int) -> object:
        return recommender.similar_items(
            seeds[n % POOL], catalogue, plain, anonymous, together, False
        )

    say(f"{label}: first filtered call (builds the catalogue columns) ...")
    started = time.perf_counter()
    recommend_filtered(0)
    first_filtered_s = time.perf_counter() - started

    timings = []
    for name, fn in (
        ("bare top-k (factors @ x, argpartition)", bare),
        ("Recommend (history fold-in)", recommend),
        ("Recommend, 1 category of 20", recommend_filtered),
        ("SimilarItems", similar),
    ):
        say(f"{label}: {name} for {args.seconds:g}s ...")
        warm_up(fn)
        latencies, rate = timed(fn, args.seconds)
        timings.append(Timing(name, latencies, rate))
    one_off = OneOff(
        items,
        bundle_bytes / MB,
        build_s,
        recommender_kb * 1024 / MB,
        peak_kb * 1024 / MB,
        catalogue_kb * 1024 / MB,
        first_filtered_s,
    )
    return timings, one_off


# --- report ------------------------------------------------------------------------------


def blas_threads() -> str:
    found = [
        f"{i['internal_api']} {i['num_threads']} thread(s)"
        for i in threadpool_info()
        if i["user_api"] == "blas"
    ]
    return ", ".join(dict.fromkeys(found)) or "no BLAS found"


def print_tables(results: list[tuple[list[Timing], OneOff]], args: argparse.Namespace) -> None:
    print()
    print(
        f"{args.factors} factors, {args.users:,} users, limit {LIMIT}, "
        f"single caller thread; numpy {np.__version__}, {blas_threads()}"
    )
    head = f"{'items':>10}  {'call':<40}{'calls':>7}{'p50 ms':>9}{'p99 ms':>9}"
    print(f"{head}{'calls/s':>10}{'x bare':>8}")
    for timings, one_off in results:
        bare_p50 = timings[0].p(0.5)
        for t in timings:
            print(
                f"{one_off.items:>10,}  {t.name:<40}{len(t.latencies):>7,}"
                f"{t.p(0.5):>9.2f}{t.p(0.99):>9.2f}{t.rate:>10,.0f}{t.p(0.5) / bare_p50:>7.1f}x"
            )
    print()
    print("once per process and model (MB = 10^6 bytes; RSS growth of this process)")
    print(
        f"{'items':>10}{'bundle MB':>11}{'build s':>9}{'recommender MB':>16}{'build peak MB':>15}"
        f"{'catalogue MB':>14}{'1st filtered s':>16}"
    )
    for _, o in results:
        print(
            f"{o.items:>10,}{o.bundle_mb:>11,.0f}{o.build_s:>9.2f}{o.recommender_mb:>16,.0f}"
            f"{o.build_peak_mb:>15,.0f}{o.catalogue_mb:>14,.0f}{o.first_filtered_s:>16.2f}"
        )
    if len(results) > 1:
        (first, small), (last, large) = results[0], results[-1]
        growth = ", ".join(
            f"{a.name.split(' (')[0]} {b.p(0.5) / a.p(0.5):,.0f}x"
            for a, b in zip(first, last, strict=True)
        )
        print(
            f"\n{small.items:,} -> {large.items:,} items ({large.items / small.items:,.0f}x): "
            f"p50 grows {growth}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--factors", type=int, default=64)
    parser.add_argument("--users", type=int, default=5000, help="rows of user_factors")
    parser.add_argument("--seconds", type=float, default=2.0, help="seconds of timed calls per row")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--blas-threads", type=int, default=None, help="limit numpy's BLAS (default: as is)"
    )
    args = parser.parse_args()
    if args.users < POOL:
        parser.error(f"--users must be at least {POOL}")
    if min(args.sizes) < POOL:
        parser.error(f"--sizes must each be at least {POOL}")

    results = []
    with threadpool_limits(args.blas_threads, "blas"):
        for items in sorted(args.sizes):
            results.append(run_size(items, args))
            gc.collect()
        say("done")
        print_tables(results, args)


if __name__ == "__main__":
    main()
