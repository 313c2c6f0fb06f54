"""The parts of ``bench_latency.py`` that run in their own processes.

* :func:`load_worker_main`: a closed-loop gRPC client, as an asyncio backend is one: each
  process holds one ``grpc.aio`` channel and ``callers`` callers (coroutines), each keeping
  one call outstanding. Requests travel as pre-serialised bytes and responses come back as bytes, so
  the client does the same, minimal work for every target (the echo server included) and
  the server does all the protobuf work a real client would make it do.
* :func:`echo_server_main`: a bare gRPC server, the framework's own ceiling: a generic
  handler taking and returning bytes (no protobuf, no Redis) on a sync ``grpc.server``
  with a thread pool - the baseline every ratio is against. Two more kinds measure the
  ceiling of an asyncio server like omnirec's: ``grpc.aio`` answering at once, and
  ``grpc.aio`` after one ``redis.asyncio`` GET per call.

Both are started with the ``spawn`` start method (gRPC and ``fork`` do not mix), ignore
SIGINT (the parent stops them, also on Ctrl-C) and exit when the parent's end of their
pipe closes. This module imports only the standard library and grpc, so spawned processes
start fast.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import time
from collections import Counter
from dataclasses import dataclass, field
from multiprocessing.connection import Connection

import grpc

ECHO_SERVICE = "omnirec.bench.Echo"
ECHO_METHOD = f"/{ECHO_SERVICE}/Echo"
#: Longest a single call may take before it counts as an error.
CALL_TIMEOUT_SECONDS = 10.0


@dataclass
class Job:
    """One measured run of one target, as seen by one client process."""

    address: str
    method: str
    """Full method path, e.g. ``/omnirec.v1.Recommender/Recommend``."""
    payloads: list[bytes]
    """Serialised requests; each call sends one picked at random."""
    callers: int
    start_at: float
    """``time.monotonic()`` at which the warm-up starts (same clock in every process)."""
    warmup: float
    seconds: float
    seed: int


@dataclass
class JobResult:
    latencies: list[float] = field(default_factory=list)
    """Seconds, successful calls started inside the measured window."""
    completed: int = 0
    """Successful calls that ended inside the measured window."""
    errors: Counter[str] = field(default_factory=Counter)
    """Status code name → failed calls started inside the window (or during warm-up)."""
    error_detail: str = ""


def run_job(job: Job) -> JobResult:
    return asyncio.run(_run_job(job))


async def _run_job(job: Job) -> JobResult:
    """``job.callers`` callers on one ``grpc.aio`` channel, each keeping one call
    outstanding (closed loop), as an asyncio backend calls a service."""
    measure_from = job.start_at + job.warmup
    measure_to = measure_from + job.seconds
    results = [JobResult() for _ in range(job.callers)]
    async with grpc.aio.insecure_channel(job.address) as channel:
        await asyncio.wait_for(channel.channel_ready(), CALL_TIMEOUT_SECONDS)
        call = channel.unary_unary(job.method)  # no (de)serialisers: bytes both ways

        async def loop(n: int) -> None:
            out = results[n]
            rng = random.Random(job.seed * 1000 + n)
            payloads = job.payloads
            count = len(payloads)
            await asyncio.sleep(max(0.0, job.start_at - time.monotonic()))
            while True:
                request = payloads[rng.randrange(count)]
                started = time.monotonic()
                if started >= measure_to:
                    return
                try:
                    await call(request, timeout=CALL_TIMEOUT_SECONDS)
                except grpc.aio.AioRpcError as exc:
                    code = exc.code()
                    out.errors[code.name if code else "UNKNOWN"] += 1
                    out.error_detail = out.error_detail or str(exc.details())
                    if code == grpc.StatusCode.UNIMPLEMENTED:
                        return
                    continue
                ended = time.monotonic()
                if started >= measure_from:
                    out.latencies.append(ended - started)
                if measure_from <= ended < measure_to:
                    out.completed += 1

        await asyncio.gather(*(loop(n) for n in range(job.callers)))
    merged = JobResult()
    for r in results:
        merged.latencies += r.latencies
        merged.completed += r.completed
        merged.errors += r.errors
        merged.error_detail = merged.error_detail or r.error_detail
    return merged


def load_worker_main(conn: Connection) -> None:
    """Runs each :class:`Job` received on ``conn`` and sends back its :class:`JobResult`;
    ``None`` (or the parent going away) ends the process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):
            return
        if job is None:
            return
        try:
            result = run_job(job)
        except Exception as exc:  # report, do not hang the parent
            result = JobResult(errors=Counter({type(exc).__name__: 1}), error_detail=str(exc))
        conn.send(result)


#: Kinds of echo server: the sync one omnirec is compared with, and two ceilings for an
#: asyncio server (``grpc.aio``): answering at once, and after one Redis GET per call. They
#: bound what any ``grpc.aio`` design can reach that reads Redis once per request.
ECHO_KINDS = ("sync", "aio", "aio+redis")


def echo_server_main(
    conn: Connection, workers: int, reply_size: int, kind: str = "sync", redis_url: str = ""
) -> None:
    """Serve ``ECHO_METHOD`` on a free loopback port (sent back on ``conn``) until told to
    stop. Each call answers ``reply_size`` bytes whatever it got."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if kind == "sync":
        _sync_echo(conn, workers, reply_size)
    else:
        asyncio.run(_aio_echo(conn, reply_size, redis_url if kind == "aio+redis" else ""))


def _sync_echo(conn: Connection, workers: int, reply_size: int) -> None:
    from concurrent import futures

    reply = bytes(reply_size)

    def echo(request: bytes, context: grpc.ServicerContext) -> bytes:
        return reply

    handler = grpc.method_handlers_generic_handler(
        ECHO_SERVICE, {"Echo": grpc.unary_unary_rpc_method_handler(echo)}
    )
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="echo"),
        handlers=[handler],
        options=[("grpc.so_reuseport", 0)],
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    conn.send(port)
    with contextlib.suppress(EOFError, OSError):
        conn.recv()
    server.stop(0).wait()


async def _aio_echo(conn: Connection, reply_size: int, redis_url: str) -> None:
    reply = bytes(reply_size)
    redis = None
    if redis_url:
        import redis.asyncio

        redis = redis.asyncio.Redis.from_url(redis_url)

    async def echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        if redis is not None:
            await redis.get("omnirec-bench-echo")  # a missing key: the round trip alone
        return reply

    handler = grpc.method_handlers_generic_handler(
        ECHO_SERVICE, {"Echo": grpc.unary_unary_rpc_method_handler(echo)}
    )
    server = grpc.aio.server(handlers=[handler], options=[("grpc.so_reuseport", 0)])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    conn.send(port)
    with contextlib.suppress(EOFError, OSError):
        await asyncio.get_running_loop().run_in_executor(None, conn.recv)
    await server.stop(0)
    if redis is not None:
        await redis.aclose()
