"""Latency and throughput of omnirec's gRPC API next to a bare gRPC server and in-process
scoring, all measured in the same run on the same machine.

    python bench/bench_latency.py [--seconds 5] [--concurrency 8] [--users 2000]
                                  [--items 500] [--profile]
                                  [--redis standalone|cluster|both]

Sets up real parts in a temporary folder (a throw-away redis-server, a sqlite MLflow
store, a synthetic log, one ALS training run that publishes to Redis), starts the real
server with ``build_server`` and, in a process of its own, a bare gRPC "echo" server
(generic bytes handler, same thread-pool size, replies of the size of a real Recommend
answer): the ceiling the framework itself puts on any service. Every ratio is against it.
Two more rows measure the ceiling of an asyncio server like omnirec's on the same machine
and client: ``grpc.aio`` answering at once, and ``grpc.aio`` after one Redis GET per call
(the least a request that must see the live layer pays).

The load comes from separate client processes (``bench/loadgen.py``), so the client does
not share the server's GIL: ``--concurrency`` calls outstanding in total, closed loop.
Each target gets ``--warmup`` seconds, then ``--seconds`` measured; the table gives p50 and
p99 latency of the calls started in the window and the calls completed per second. A
second table gives the CPU each process group (client, server, Redis) burnt per call in
that window, read from /proc: on a small machine it says who the cores went to.

Then the same scoring code runs in-process, single-threaded: ``Recommender.recommend``
with a ``ServingView`` read through ``FeatureStore.serving_view`` per call, the read
alone, and scoring alone on views read beforehand.

``--redis cluster`` runs it all on a throw-away three-master Redis Cluster instead of one
redis-server (the "+ 1 GET" row then asks the node holding its key). ``--redis both``
measures omnirec's RPCs on each, on the same data (the cluster gets a copy of the
standalone Redis, taken before any load), and prints the two side by side.

``--profile`` runs the Recommend load once more against a second server whose threads all
run under ``cProfile`` (thread CPU time by default, ``--profile-clock wall`` for wall
time) and prints the top functions by cumulative time, per call. ``--workers`` sets the
thread-pool size of both servers (default: omnirec's own default).

An RPC the server answers with UNIMPLEMENTED is reported as such, never timed. Nothing is
asserted: the numbers depend on the machine (and on a 2-core machine the client, the
server and Redis share the same two cores).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import multiprocessing
import os
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

# Spawned client processes import this file again (as __mp_main__): heavy imports
# (numpy, mlflow, omnirec's service and training packages) stay inside functions.
from loadgen import ECHO_METHOD, Job, JobResult, echo_server_main, load_worker_main

SERVICE = "omnirec.v1.Recommender"
#: Share of Recommend requests for people nobody has seen (popular / trending answers).
UNKNOWN_USER_SHARE = 0.03
#: Events per TrackEvents call.
TRACK_BATCH = 100
#: Distinct requests of each kind the clients pick from.
POOL_SIZE = 4096
TRACK_POOL_SIZE = 256

STARTED = time.monotonic()


def say(message: str) -> None:
    print(f"[{time.monotonic() - STARTED:6.1f}s] {message}", flush=True)


# --- results ---------------------------------------------------------------------------


@dataclass
class Row:
    name: str
    latencies: list[float] = field(default_factory=list)
    per_second: float = 0.0
    note: str = ""
    events_per_call: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    error_detail: str = ""
    cpu: dict[str, float] = field(default_factory=dict)
    """Process group → CPU seconds burnt in the measured window."""
    completed: int = 0
    skipped: str = ""
    compare: bool = True
    """Show the throughput ratio to the echo server."""

    def percentile(self, q: float) -> float:
        import numpy as np

        return float(np.percentile(self.latencies, q)) * 1000 if self.latencies else float("nan")


# --- CPU accounting from /proc ----------------------------------------------------------

TICKS = os.sysconf("SC_CLK_TCK")
MACHINE = "machine"


def cpu_seconds(pid: int) -> float:
    """User + system CPU of process ``pid`` (all its threads) so far; 0 if unreadable."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields_ = stat.rsplit(")", 1)[1].split()
    return (int(fields_[11]) + int(fields_[12])) / TICKS


def machine_busy_seconds() -> float:
    """CPU seconds all cores have spent busy so far (steal included), from /proc/stat."""
    try:
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return 0.0
    user, nice, system, _idle, _iowait, irq, softirq, steal = (values + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / TICKS


def rss_mib(pid: int) -> float:
    """Resident memory of process ``pid`` in MiB (0 if unreadable)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0.0


def cpu_of(groups: dict[str, list[int]]) -> dict[str, float]:
    """CPU seconds so far of each process group, and of the whole machine (``machine``)."""
    used = {name: sum(cpu_seconds(p) for p in pids) for name, pids in groups.items()}
    return {**used, MACHINE: machine_busy_seconds()}


# --- processes --------------------------------------------------------------------------


class ClientPool:
    """``processes`` spawned load generators, reused for every target."""

    def __init__(self, processes: int) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conns = []
        self.procs = []
        for n in range(processes):
            parent, child = ctx.Pipe()
            proc = ctx.Process(
                target=load_worker_main, args=(child,), name=f"omnirec-bench-client-{n}"
            )
            proc.daemon = True
            proc.start()
            child.close()
            self.conns.append(parent)
            self.procs.append(proc)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs if p.pid is not None]

    def run(
        self,
        address: str,
        method: str,
        payloads: list[bytes],
        concurrency: int,
        warmup: float,
        seconds: float,
        cpu_groups: dict[str, list[int]],
    ) -> tuple[JobResult, dict[str, float]]:
        """Run one target on every client process; returns the merged result and the CPU
        each group used in the measured window."""
        n = len(self.conns)
        start_at = time.monotonic() + 0.5  # time to open channels before the warm-up
        for k, conn in enumerate(self.conns):
            callers = concurrency // n + (1 if k < concurrency % n else 0)
            conn.send(
                Job(address, method, payloads, callers, start_at, warmup, seconds, seed=k + 1)
            )
        time.sleep(max(0.0, start_at + warmup - time.monotonic()))
        before = cpu_of(cpu_groups)
        time.sleep(max(0.0, start_at + warmup + seconds - time.monotonic()))
        after = cpu_of(cpu_groups)
        merged = JobResult()
        for conn in self.conns:
            r: JobResult = conn.recv()
            merged.latencies += r.latencies
            merged.completed += r.completed
            merged.errors += r.errors
            merged.error_detail = merged.error_detail or r.error_detail
        return merged, {k: after[k] - before[k] for k in after}

    def close(self, now: bool = False) -> None:
        """Ask every process to finish (``now``: stop them mid-run)."""
        for conn in self.conns:
            with contextlib.suppress(OSError):
                conn.send(None)
        for proc in self.procs:
            if not now:
                proc.join(timeout=5)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=5)
        for conn in self.conns:
            conn.close()


class EchoServer:
    """The bare gRPC server, in a spawned process of its own."""

    def __init__(
        self, workers: int, reply_size: int, kind: str = "sync", redis_url: str = ""
    ) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(
            target=echo_server_main,
            args=(child, workers, reply_size, kind, redis_url),
            name=f"omnirec-bench-echo-{kind}",
        )
        self.proc.daemon = True
        self.proc.start()
        child.close()
        if not self.conn.poll(30):
            self.stop()
            raise RuntimeError("the echo server did not start")
        self.port: int = self.conn.recv()

    @property
    def pid(self) -> int:
        return self.proc.pid or 0

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.conn.send("stop")
        self.proc.join(timeout=5)
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(timeout=5)
        self.conn.close()


# --- requests ---------------------------------------------------------------------------


@dataclass
class Workload:
    users: list[str]
    """Known (trained) people, from ``truth.json``."""
    items: list[str]
    """Catalogue item ids."""
    rng: random.Random

    def recommend_users(self, count: int) -> list[str]:
        """Known people with a few % of strangers mixed in."""
        return [
            f"bench-stranger-{self.rng.randrange(10**9)}"
            if self.rng.random() < UNKNOWN_USER_SHARE
            else self.rng.choice(self.users)
            for _ in range(count)
        ]

    def recommend(self) -> list[bytes]:
        from omnirec.v1 import recommender_pb2 as pb

        return [
            pb.RecommendRequest(user_id=u, limit=10).SerializeToString()
            for u in self.recommend_users(POOL_SIZE)
        ]

    def similar(self) -> list[bytes]:
        from omnirec.v1 import recommender_pb2 as pb

        return [
            pb.SimilarItemsRequest(
                item_id=self.rng.choice(self.items), limit=10
            ).SerializeToString()
            for _ in range(POOL_SIZE)
        ]

    def send_time(self) -> list[bytes]:
        from omnirec.v1 import engagement_pb2 as epb

        channels = ("email", "sms", "push", "messenger")
        return [
            epb.PredictSendTimeRequest(
                user_id=u, channel=self.rng.choice(channels)
            ).SerializeToString()
            for u in self.recommend_users(POOL_SIZE)
        ]

    def channels(self) -> list[bytes]:
        from omnirec.v1 import engagement_pb2 as epb

        return [
            epb.RankChannelsRequest(user_id=u).SerializeToString()
            for u in self.recommend_users(POOL_SIZE)
        ]

    def profiles(self) -> list[bytes]:
        from omnirec.v1 import identity_pb2 as ipb
        from omnirec.v1 import profiles_pb2 as ppb

        return [
            ppb.GetProfileRequest(
                identifier=ipb.Identifier(kind="user_id", value=u)
            ).SerializeToString()
            for u in self.recommend_users(POOL_SIZE)
        ]

    def track(self) -> list[bytes]:
        from omnirec.v1 import recommender_pb2 as pb

        channels = ("web", "app")
        return [
            pb.TrackEventsRequest(
                events=[
                    pb.Event(
                        user_id=self.rng.choice(self.users),
                        item_id=self.rng.choice(self.items),
                        event_type="view",
                        channel=self.rng.choice(channels),
                    )
                    for _ in range(TRACK_BATCH)
                ]
            ).SerializeToString()
            for _ in range(TRACK_POOL_SIZE)
        ]


ENGAGEMENT = "omnirec.v1.Engagement"
#: The service of each RPC the bench drives.
SERVICE_OF = {
    "PredictSendTime": ENGAGEMENT,
    "RankChannels": ENGAGEMENT,
    "GetProfile": "omnirec.v1.Profiles",
}


class ServeProcesses:
    """``python -m service serve --processes N`` on a free port, for the load to hit."""

    def __init__(self, settings: object, processes: int | None) -> None:
        import subprocess

        from devtools.redis_server import free_port
        from service.config import load_settings

        # The default is serve's own (what a person gets with no flag and no variable).
        count = processes or load_settings({}).processes

        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        env = dict(os.environ)
        env.update(
            REDIS_URL=settings.redis_url,  # type: ignore[attr-defined]
            MLFLOW_TRACKING_URI=settings.mlflow_tracking_uri,  # type: ignore[attr-defined]
            OMNIREC_MODEL_POLL_SECONDS="0",
            OMNIREC_LOG_LEVEL="WARNING",
            OMNIREC_IDENTITY_SECRET=settings.identity_secret,  # type: ignore[attr-defined]
        )
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "service",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                *(["--processes", str(processes)] if processes else []),
            ],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(count):
            line = self.proc.stdout.readline()  # type: ignore[union-attr]
            if "serving" not in line:
                self.stop()
                raise RuntimeError(f"serve processes did not start: {line!r}")
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        # One process serves in place; several are children of a supervising parent.
        self.pids = [int(p) for p in children.read_text().split()] or [self.proc.pid]

    def stop(self) -> None:
        import signal as signals

        if self.proc.poll() is None:
            self.proc.send_signal(signals.SIGTERM)
            self.proc.wait(timeout=30)


def method_path(name: str) -> str:
    return f"/{SERVICE_OF.get(name, SERVICE)}/{name}"


def probe(address: str, name: str, payloads: list[bytes], calls: int = 20) -> tuple[str, int]:
    """A few sync calls before the load: ``("", mean reply bytes)`` when the RPC works,
    ``("unimplemented", 0)`` or ``("<CODE>: <details>", 0)`` when it does not."""
    import grpc

    with grpc.insecure_channel(address) as channel:
        call = channel.unary_unary(method_path(name))
        sizes = []
        for request in payloads[:calls]:
            try:
                sizes.append(len(call(request, timeout=10)))
            except grpc.RpcError as exc:
                code = exc.code()  # type: ignore[attr-defined]
                if code == grpc.StatusCode.UNIMPLEMENTED:
                    return "unimplemented", 0
                return f"{code.name}: {exc.details()}", 0  # type: ignore[attr-defined]
    return "", sum(sizes) // max(len(sizes), 1)


# --- setup --------------------------------------------------------------------------------


@dataclass
class Setup:
    settings: Any
    model: Any
    store: Any
    workload: Workload


def set_up(args: argparse.Namespace, tmp: Path, redis_url: str) -> Setup:
    say("importing omnirec (mlflow is slow to import) ...")
    import pyarrow.parquet as pq

    from service.config import feature_store, load_settings
    from service.registry import ModelRegistry, quiet_mlflow
    from training.pipeline import TrainConfig, train
    from training.synthetic import generate

    quiet_mlflow()
    settings = load_settings(
        {},
        redis_url=redis_url,
        mlflow_tracking_uri=f"sqlite:///{tmp / 'mlflow.db'}",
        artifact_root=str(tmp / "artifacts"),
        model_poll_seconds=0.0,
        identity_secret="bench-secret-0123456789abcdef",
        workers=args.workers,
        host="127.0.0.1",
        port=0,
    )
    import movielens  # numpy and pandas: not at module level (see the imports above)

    folder = movielens.dataset_dir() if args.data != "synthetic" else None
    if args.data == "movielens" and folder is None:
        raise SystemExit("bench_latency: --data movielens, but ml-100k is not there")
    if folder is not None:
        from training.event_log import write_events

        say("MovieLens 100K (as the issue measured it): writing its events as Parquet ...")
        events = tmp / "movielens.parquet"
        frame = movielens.events(folder, with_timezones=True)
        write_events(frame, events)
        config = TrainConfig(events=events, promote=True)
        users = sorted(frame["user_id"].unique().tolist())
        items = sorted(frame["item_id"].unique().tolist())
        args.data = "movielens"
    else:
        say(f"generating synthetic data: {args.users} people, {args.items} items, 60 days ...")
        data = generate(args.users, args.items, 60, args.seed, tmp / "data")
        config = TrainConfig(events=data.events, items=data.items, promote=True)
        users = sorted(json.loads(Path(data.truth).read_text())["users"])
        items = [
            str(i) for i in pq.read_table(data.items, columns=["item_id"])["item_id"].to_pylist()
        ]
        args.data = "synthetic"
    say("training ALS, logging to MLflow (sqlite), publishing features to Redis ...")
    result = train(settings, config)
    say(f"registered {settings.model_name}/{result.version}; loading it from the registry ...")
    model = ModelRegistry(settings).load_alias(settings.model_alias)
    workload = Workload(users, items, random.Random(args.seed))
    return Setup(settings, model, feature_store(settings), workload)


# --- in-process ---------------------------------------------------------------------------


def timed_loop(fn: Callable[[int], object], seconds: float) -> tuple[list[float], float]:
    """Call ``fn(0)``, ``fn(1)``, … for ``seconds``; per-call latencies and calls/s."""
    clock = time.perf_counter
    n = 0
    latencies: list[float] = []
    begin = clock()
    end = begin + seconds
    while True:
        started = clock()
        if started >= end:
            break
        fn(n)
        latencies.append(clock() - started)
        n += 1
    return latencies, len(latencies) / (clock() - begin)


def in_process_rows(setup: Setup, seconds: float, redis_pids: list[int]) -> list[Row]:
    from service.catalogue import CatalogueCache
    from service.config import feature_store
    from service.recommender import RankingOptions, Recommender, ServingParams

    s = setup.settings
    store = feature_store(s)
    recommender = Recommender(setup.model.bundle, ServingParams.of(s))
    cache = CatalogueCache(store.catalogue)
    options = RankingOptions(limit=10)
    popular = recommender.popular_count(options)
    users = setup.workload.recommend_users(POOL_SIZE)

    def read_and_score(n: int) -> object:
        user = users[n % len(users)]
        view = store.serving_view(user, popular)
        return recommender.recommend(user, view, cache.get(view.catalogue_version), options)

    def read_only(n: int) -> object:
        view = store.serving_view(users[n % len(users)], popular)
        return cache.get(view.catalogue_version)

    views = [store.serving_view(u, popular) for u in users[:1000]]
    catalogue = cache.get(views[0].catalogue_version)

    def score_only(n: int) -> object:
        k = n % len(views)
        return recommender.recommend(users[k], views[k], catalogue, options)

    # Only this process runs code now (the servers idle): its CPU is the scoring code's.
    groups = {"client": [], "server": [os.getpid()], "redis": redis_pids}
    rows = []
    for name, fn in (
        ("in-process Recommend (store read + score)", read_and_score),
        ("in-process store read only (1 round trip)", read_only),
        ("in-process scoring only (view pre-read)", score_only),
    ):
        say(f"in-process: {name} for {seconds:g}s ...")
        timed_loop(fn, 0.5)  # warm-up
        before = cpu_of(groups)
        latencies, rate = timed_loop(fn, seconds)
        after = cpu_of(groups)
        cpu = {k: after[k] - before[k] for k in after}
        rows.append(
            Row(name, latencies, rate, "1 thread", completed=len(latencies), cpu=cpu, compare=False)
        )
    return rows


# --- profile ------------------------------------------------------------------------------

#: Frames that only carry threads: left out of the profile listing.
PLUMBING = (
    ("threading.py", "run"),
    ("threading.py", "_bootstrap"),
    ("threading.py", "_bootstrap_inner"),
    ("thread.py", "_worker"),
    ("bench_latency.py", "start_profiler"),
    ("~", "<method 'enable' of '_lsprof.Profiler' objects>"),
)
#: Frames that mostly wait (for work, for the next event, for the next health check):
#: left out of wall-time listings, where they would top the list.
IDLE = (
    ("threading.py", "wait"),
    ("_server.py", "_serve"),
    ("server.py", "_run"),
    ("~", "<method 'get' of '_queue.SimpleQueue' objects>"),
    ("~", "<method 'acquire' of '_thread.lock' objects>"),
    ("~", "<method 'poll' of 'grpc._cython.cygrpc.CompletionQueue' objects>"),
)


def profile_recommend(
    setup: Setup,
    pool: ClientPool,
    payloads: list[bytes],
    args: argparse.Namespace,
    unprofiled: float,
) -> None:
    import cProfile
    import pstats

    from service.api.server import build_server

    clock = time.thread_time if args.profile_clock == "cpu" else time.perf_counter
    profiles: list[cProfile.Profile] = []
    lock = threading.Lock()

    def start_profiler(frame: Any, event: str, arg: Any) -> None:
        # The first profile event of every new thread swaps in a profiler of its own.
        profiler = cProfile.Profile(clock)
        with lock:
            profiles.append(profiler)
        profiler.enable()

    # Every thread the server starts from now on (poller, pool workers) is profiled; the
    # clients run in other processes, so nothing else starts threads here meanwhile.
    threading.setprofile(start_profiler)
    try:
        running = build_server(setup.settings, setup.model, setup.store)
        try:
            say(f"profile: Recommend load for {args.seconds:g}s on a profiled server ...")
            result, _ = pool.run(
                f"127.0.0.1:{running.port}",
                method_path("Recommend"),
                payloads,
                args.concurrency,
                args.warmup,
                args.seconds,
                {},
            )
        finally:
            running.stop(grace=1)
    finally:
        threading.setprofile(None)
    with lock:
        collected = list(profiles)
    # Each profiler is still enabled in its (now idle) thread. Disabling it from here would
    # close the calls still open there (a worker waiting for work) with this thread's
    # clock; a snapshot of the completed calls is what we want.
    snapshots = []
    for p in collected:
        p.snapshot_stats()
        table = getattr(p, "stats", {})
        if table:
            snapshots.append(SimpleNamespace(stats=table, create_stats=lambda: None))
    if not snapshots:
        print("\nprofile: no calls were profiled")
        return
    stats = pstats.Stats(*snapshots)
    entries: dict[tuple[str, int, str], tuple[Any, ...]] = stats.stats  # type: ignore[attr-defined]
    calls = sum(
        v[1]
        for (file, _, name), v in entries.items()
        if name == "Recommend" and Path(file).parts[-2:] == ("api", "recommender.py")
    )
    skip = set(PLUMBING) | (set(IDLE) if args.profile_clock == "wall" else set())
    print(
        f"\nprofile: {args.profile_clock} time of every server thread ({len(collected)} threads),"
        f" {calls} Recommend calls, {result.completed / args.seconds:.0f} calls/s under the "
        f"profiler ({unprofiled:.0f} without). Top functions by cumulative and by own time; "
        f"thread plumbing{' and idle waits' if args.profile_clock == 'wall' else ''} left out. "
        "The profiler inflates Python-heavy code several-fold: read shares, not absolutes."
    )
    listed = [
        (key, value) for key, value in entries.items() if (Path(key[0]).name, key[2]) not in skip
    ]
    for title, column, label in (
        ("by cumulative time", 3, "cum µs/RPC"),
        ("by own time (the hot leaves)", 2, "own µs/RPC"),
    ):
        print(f"\n{title}:")
        print(f"{'ncalls':>9} {'tottime s':>10} {'cumtime s':>10} {label:>11}  function")
        ranked = sorted(listed, key=lambda kv: kv[1][column], reverse=True)
        for (file, line, name), (_, nc, tt, ct, _) in ranked[: args.profile_top]:
            where = name if file == "~" else f"{'/'.join(Path(file).parts[-2:])}:{line}({name})"
            per_rpc = (ct if column == 3 else tt) / max(calls, 1) * 1e6
            print(f"{nc:>9} {tt:>10.3f} {ct:>10.3f} {per_rpc:>11.1f}  {where}")


# --- Redis, one server or a cluster -------------------------------------------------------


def start_redis(kind: str, tmp: Path) -> Any:
    """A throw-away redis-server, or a three-master Redis Cluster (``kind`` cluster)."""
    from devtools.redis_server import LocalCluster, LocalRedis

    return LocalCluster(tmp / "cluster") if kind == "cluster" else LocalRedis(tmp / "redis")


def pids_of(local: Any) -> list[int]:
    """The redis-server processes of a ``LocalRedis`` or a ``LocalCluster``."""
    servers = getattr(local, "nodes", [local])
    return [s.process.pid for s in servers if s.process is not None]


def one_node_url(local: Any) -> str:
    """A plain URL for the echo server's one GET: on a cluster, that of the node that holds
    its key (any other would answer MOVED)."""
    if not hasattr(local, "nodes"):
        return local.url
    import redis.cluster

    from service.store.plans import connect

    client: redis.cluster.RedisCluster = connect(local.url)  # type: ignore[assignment]
    try:
        node = client.get_node_from_key("omnirec-bench-echo")
        return f"redis://{node.host}:{node.port}/0"
    finally:
        client.close()


def copy_keys(source: Any, cluster_url: str) -> int:
    """Every key of the standalone Redis ``source`` into the cluster (DUMP / RESTORE,
    TTLs kept), so both serve the same data; returns how many keys."""
    from service.store.plans import chunks, connect

    target = connect(cluster_url, 30.0)
    copied = 0
    try:
        for batch in chunks(source.scan_iter(count=1000), 500):
            read = source.pipeline(transaction=False)
            for key in batch:
                read.dump(key)
                read.pttl(key)
            values = read.execute()
            write = target.pipeline(transaction=False)
            for key, dumped, ttl in zip(batch, values[::2], values[1::2], strict=True):
                if dumped is not None:
                    write.restore(key, max(ttl, 0), dumped, replace=True)
            copied += len(write.execute())
    finally:
        target.close()
    return copied


# --- the table ----------------------------------------------------------------------------


def print_side_by_side(alone: Sequence[Row], on_cluster: Sequence[Row]) -> None:
    """omnirec's RPCs on one redis-server and on a Redis Cluster, measured the same way."""
    width = max(len(r.name) for r in alone) + 2

    def cells(r: Row) -> str:
        if r.skipped or not r.completed:
            return f"{'skipped':>44}"
        per_call = {k: v / r.completed * 1e6 for k, v in r.cpu.items()}
        return (
            f"{r.percentile(50):>8.2f}{r.percentile(99):>8.2f}{r.per_second:>12,.0f}"
            f"{per_call.get('server', 0):>8.0f}{per_call.get('redis', 0):>8.0f}"
        )

    print(
        "\nomnirec on one redis-server and on a Redis Cluster (3 masters, no replicas), same"
        " data and load; 'server' and 'redis': CPU µs per call"
    )
    print(f"{'':<{width}}{'one redis-server':>44}  {'Redis Cluster':>44}")
    head = f"{'p50 ms':>8}{'p99 ms':>8}{'calls/s':>12}{'server':>8}{'redis':>8}"
    print(f"{'target':<{width}}{head}  {head}{'ratio':>8}")
    for a, c in zip(alone, on_cluster, strict=True):
        ratio = f"{c.per_second / a.per_second:.2f}x" if a.per_second and c.per_second else "-"
        errors = sum(c.errors.values()) + sum(a.errors.values())
        note = f"  ERRORS {errors}" if errors else ""
        print(f"{a.name:<{width}}{cells(a)}  {cells(c)}{ratio:>8}{note}")


def print_tables(rows: Sequence[Row], echo_rate: float, cores: int) -> None:
    width = max(len(r.name) for r in rows) + 2
    print(f"\n{'target':<{width}}{'p50 ms':>9}{'p99 ms':>9}{'calls/s':>11}{'vs echo':>9}  note")
    for r in rows:
        if r.skipped:
            print(f"{r.name:<{width}}{r.skipped}")
            continue
        ratio = f"{r.per_second / echo_rate:.2f}x" if r.compare and echo_rate else "-"
        note = r.note
        if r.events_per_call:
            events = f"events/s {r.per_second * r.events_per_call:,.0f}"
            note = f"{events}; {note}" if note else events
        if r.errors:
            errors = ", ".join(f"{n} {code}" for code, n in r.errors.items())
            note += f"; ERRORS {errors} ({r.error_detail[:80]})"
        print(
            f"{r.name:<{width}}{r.percentile(50):>9.2f}{r.percentile(99):>9.2f}"
            f"{r.per_second:>11,.0f}{ratio:>9}  {note}"
        )
    with_cpu = [r for r in rows if r.cpu and r.completed and not r.skipped]
    if not with_cpu:
        return
    print(
        f"\nCPU per call in the measured window, µs (from /proc; {cores} cores). 'cores busy': "
        "CPU of the three groups / wall time; 'others': cores busy outside this benchmark "
        "(other processes, hypervisor steal) - when high, the numbers above are squeezed. "
        "In-process rows: 'server' is the bench process itself."
    )
    print(
        f"{'target':<{width}}{'client':>9}{'server':>9}{'redis':>9}{'total':>9}"
        f"{'cores busy':>12}{'others':>8}"
    )
    for r in with_cpu:
        used = {k: v for k, v in r.cpu.items() if k != MACHINE}
        per = {k: v / r.completed * 1e6 for k, v in used.items()}
        wall = r.completed / r.per_second
        busy = sum(used.values()) / wall
        others = max(0.0, r.cpu.get(MACHINE, 0.0) / wall - busy)
        print(
            f"{r.name:<{width}}{per['client']:>9.0f}{per['server']:>9.0f}{per['redis']:>9.0f}"
            f"{sum(per.values()):>9.0f}{busy:>12.2f}{others:>8.2f}"
        )


# --- main ---------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per target")
    parser.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds per target")
    parser.add_argument("--concurrency", type=int, default=16, help="calls outstanding in total")
    parser.add_argument(
        "--client-processes", type=int, default=1, help="asyncio load generator processes"
    )
    parser.add_argument(
        "--workers", type=int, help="server thread-pool size (default: omnirec's default)"
    )
    parser.add_argument(
        "--data",
        choices=("auto", "movielens", "synthetic"),
        default="auto",
        help="the model's data: MovieLens 100K when present (auto), else synthetic",
    )
    parser.add_argument("--users", type=int, default=2000, help="synthetic people")
    parser.add_argument("--items", type=int, default=500, help="synthetic items")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--processes",
        type=int,
        help="serve with `python -m service serve --processes N` (default: serve's default)",
    )
    parser.add_argument(
        "--redis",
        choices=("standalone", "cluster", "both"),
        default="standalone",
        help="one redis-server, a three-master Redis Cluster, or both side by side",
    )
    parser.add_argument("--profile", action="store_true", help="profile the Recommend load")
    parser.add_argument("--profile-clock", choices=("cpu", "wall"), default="cpu")
    parser.add_argument("--profile-top", type=int, default=15)
    args = parser.parse_args(argv)
    if args.concurrency < 1 or args.client_processes < 1 or args.seconds <= 0:
        parser.error("--concurrency, --client-processes and --seconds must be positive")
    args.client_processes = min(args.client_processes, args.concurrency)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="omnirec-bench-latency-"))
    # Everything that asks tempfile for a folder (the registry's bundle download, MLflow)
    # lands under tmp as well, so one rmtree cleans up.
    previous_tempdir, tempfile.tempdir = tempfile.tempdir, str(tmp)
    local_redis = running = served = echo = pool = cluster = None
    interrupted = False
    try:
        say(f"work folder {tmp}; starting Redis ({args.redis}) ...")
        local_redis = start_redis("cluster" if args.redis == "cluster" else "standalone", tmp)
        redis_pids = pids_of(local_redis)
        say(f"Redis at {local_redis.url}; starting client processes ...")
        pool = ClientPool(args.client_processes)
        setup = set_up(args, tmp, local_redis.url)
        if args.redis == "both":
            cluster = start_redis("cluster", tmp)
            copied = copy_keys(setup.store.client, cluster.url)
            say(f"Redis Cluster at {cluster.url}: a copy of the standalone one ({copied} keys)")

        # `python -m service serve` as a person starts it: default settings, its own
        # processes (N share one port with --processes N).
        served = ServeProcesses(setup.settings, args.processes)
        address, server_pids = served.address, served.pids
        say(
            f"omnirec serving {setup.model.label} on {address}: `python -m service serve`, "
            f"{len(server_pids)} process(es)"
        )

        w = setup.workload
        recommend, similar, track = w.recommend(), w.similar(), w.track()
        send_time, channels, profiles = w.send_time(), w.channels(), w.profiles()
        probes = {
            "GetProfile": probe(address, "GetProfile", profiles),
            "Recommend": probe(address, "Recommend", recommend),
            "SimilarItems": probe(address, "SimilarItems", similar),
            "PredictSendTime": probe(address, "PredictSendTime", send_time),
            "RankChannels": probe(address, "RankChannels", channels),
            "TrackEvents": probe(address, "TrackEvents", track, calls=1),
        }
        request_size = sum(map(len, recommend)) // len(recommend)
        reply_size = probes["Recommend"][1] or 400
        echo = EchoServer(setup.settings.workers, reply_size)
        say(
            f"echo server (pid {echo.pid}) on 127.0.0.1:{echo.port}: requests of {request_size}"
            f" bytes, replies of {reply_size} bytes (a Recommend request / answer)"
        )
        echo_payloads = [os.urandom(request_size) for _ in range(64)]

        groups = {
            "client": pool.pids,
            "redis": redis_pids,
        }
        rows: list[Row] = []

        def load(
            name: str,
            rpc: str,
            target: str,
            method: str,
            payloads: list[bytes],
            server: list[int],
            probed: dict[str, tuple[str, int]] | None = None,
            redis_group: list[int] | None = None,
        ) -> Row:
            row = Row(name)
            status = (probes if probed is None else probed).get(rpc, ("", 0))[0]
            if status == "unimplemented":
                row.skipped = "unimplemented (skipped)"
                say(f"{name}: the server answers UNIMPLEMENTED; skipped")
                return row
            if status:
                row.skipped = f"probe failed, skipped: {status[:100]}"
                say(f"{name}: {row.skipped}")
                return row
            say(f"{name}: {args.warmup:g}s warm-up + {args.seconds:g}s at {args.concurrency} ...")
            result, cpu = pool.run(
                target,
                method,
                payloads,
                args.concurrency,
                args.warmup,
                args.seconds,
                {**groups, "server": server, "redis": redis_group or groups["redis"]},
            )
            row.latencies = result.latencies
            row.completed = result.completed
            row.per_second = result.completed / args.seconds
            row.errors = result.errors
            row.error_detail = result.error_detail
            row.cpu = cpu
            if result.errors.get("UNIMPLEMENTED") and not result.latencies:
                row.skipped = "unimplemented (skipped)"
            return row

        me = server_pids
        echo_row = load(
            "echo (bare gRPC)", "", f"127.0.0.1:{echo.port}", ECHO_METHOD, echo_payloads, [echo.pid]
        )
        rows.append(echo_row)
        # The ceilings of an asyncio server like omnirec's, on the same machine and client:
        # grpc.aio alone, and grpc.aio plus the one Redis round trip a request that must
        # see the live layer costs. Where these sit near 0.5x, no design that reads Redis
        # per request reaches the floor here.
        for kind, name in (("aio", "echo, grpc.aio"), ("aio+redis", "echo, grpc.aio + 1 GET")):
            ceiling = EchoServer(1, reply_size, kind, one_node_url(local_redis))
            try:
                rows.append(
                    load(
                        name,
                        "",
                        f"127.0.0.1:{ceiling.port}",
                        ECHO_METHOD,
                        echo_payloads,
                        [ceiling.pid],
                    )
                )
            finally:
                ceiling.stop()
        service = [
            ("Recommend", recommend),
            ("SimilarItems", similar),
            ("PredictSendTime", send_time),
            ("RankChannels", channels),
            ("GetProfile", profiles),
        ]
        track_name = f"TrackEvents x{TRACK_BATCH}"
        for rpc, payloads in service:
            rows.append(load(rpc, rpc, address, method_path(rpc), payloads, me))
        in_process = in_process_rows(setup, args.seconds, redis_pids)
        if args.profile and not rows[3].skipped:
            profile_recommend(setup, pool, recommend, args, rows[3].per_second)
        # Last: it adds live history that would change what the other targets read.
        track_row = load(track_name, "TrackEvents", address, method_path("TrackEvents"), track, me)
        track_row.events_per_call = TRACK_BATCH
        rows.append(track_row)
        rows += in_process
        # Read before a cluster run replaces the server processes.
        memory = [rss_mib(pid) for pid in server_pids]
        on_cluster: list[Row] = []
        if cluster is not None:
            # The same targets again, served from the cluster's copy of the data.
            served.stop()
            served = ServeProcesses(replace(setup.settings, redis_url=cluster.url), args.processes)
            say(f"omnirec serving from the Redis Cluster on {served.address}")
            probed = {rpc: probe(served.address, rpc, payloads) for rpc, payloads in service}
            probed["TrackEvents"] = probe(served.address, "TrackEvents", track, calls=1)
            for rpc, payloads in [*service, ("TrackEvents", track)]:
                on_cluster.append(
                    load(
                        f"{rpc} (cluster)",
                        rpc,
                        served.address,
                        method_path(rpc),
                        payloads,
                        served.pids,
                        probed,
                        pids_of(cluster),
                    )
                )
            on_cluster[-1].events_per_call = TRACK_BATCH

        print(
            f"\n{args.data} model: {len(w.users)} people, {len(w.items)} items; "
            f"{args.concurrency} calls outstanding from {args.client_processes} asyncio client "
            f"process(es); `python -m service serve` in {len(server_pids)} process(es), echo "
            f"server: sync, {setup.settings.workers} threads; {os.cpu_count()} cores shared "
            "by clients, servers and "
            f"Redis; {args.seconds:g}s measured after {args.warmup:g}s warm-up per target; "
            f"Recommend: limit 10, {UNKNOWN_USER_SHARE:.0%} unknown people"
        )
        print_tables(rows, echo_row.per_second, os.cpu_count() or 1)
        if on_cluster:
            by_name = {r.name: r for r in rows}
            alone = [by_name[rpc] for rpc, _ in service] + [by_name[track_name]]
            print_side_by_side(alone, on_cluster)
        bundle = sum(
            getattr(a, "nbytes", 0)
            for a in vars(setup.model.bundle).values()
            if a is not None and hasattr(a, "nbytes")
        )
        print(
            f"\nmemory: {len(memory)} server process(es), resident "
            f"{', '.join(f'{m:,.0f}' for m in memory)} MiB each after the load; the model's "
            f"arrays {bundle / 2**20:,.1f} MiB of that (loaded in every process); "
            f"echo server {rss_mib(echo.pid):,.0f} MiB"
        )
        return 0
    except KeyboardInterrupt:
        interrupted = True
        print("\ninterrupted; cleaning up", file=sys.stderr)
        # Ctrl-C reached redis-server too: the server's "Redis unreachable" warnings
        # while the clients are stopped say nothing new.
        logging.disable(logging.WARNING)
        return 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not stop cleanup
        for stop in (
            lambda: pool.close(now=interrupted) if pool else None,
            lambda: echo.stop() if echo else None,
            lambda: running.stop(grace=1) if running else None,
            lambda: served.stop() if served else None,
            lambda: local_redis.stop() if local_redis else None,
            lambda: cluster.stop() if cluster else None,
        ):
            try:
                stop()
            except Exception as exc:  # keep cleaning up
                print(f"cleanup: {exc}", file=sys.stderr)
        tempfile.tempdir = previous_tempdir
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
