"""Prometheus metrics: every series the service exports, and the ``/metrics`` endpoint.

``OMNIREC_METRICS_PORT`` (contract; 0 = off) serves them as Prometheus text. The gRPC
series use the names and labels of the standard gRPC server metrics (as
go-grpc-prometheus and grpc-ecosystem spell them), so existing dashboards and alerts
work: ``grpc_server_started_total``, ``grpc_server_handled_total{grpc_code}`` and the
``grpc_server_handling_seconds`` histogram, each by ``grpc_type``, ``grpc_service`` and
``grpc_method``. omnirec's own series start with ``omnirec_``.

Several processes (``OMNIREC_PROCESSES`` > 1): each child writes its values to files in
one folder (prometheus-client's multiprocess mode, ``PROMETHEUS_MULTIPROC_DIR``, set by
the supervisor before the children start), and the supervisor alone serves ``/metrics``,
summing counters and histograms over the children. ``omnirec_model_info`` is 1 for a
version while any live process serves it.

Why module-level objects: prometheus-client registers each series once per process; the
code that counts imports what it counts with from here, and nothing else defines series.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    multiprocess,
    start_http_server,
)

log = logging.getLogger(__name__)

#: Seconds buckets for calls and round trips: a Recommend takes about 1-20 ms.
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)
#: The environment variable prometheus-client reads for its multiprocess folder.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

_GRPC = ("grpc_type", "grpc_service", "grpc_method")

STARTED = Counter("grpc_server_started_total", "RPCs started on the server.", _GRPC)
HANDLED = Counter(
    "grpc_server_handled_total",
    "RPCs completed on the server, whatever their status.",
    (*_GRPC, "grpc_code"),
)
HANDLING = Histogram(
    "grpc_server_handling_seconds",
    "Time from receiving an RPC to its answer.",
    _GRPC,
    buckets=LATENCY_BUCKETS,
)
MODEL = Gauge(
    "omnirec_model_info",
    "1 for the registered model version served (model_version as in responses).",
    ("model_version",),
    multiprocess_mode="livemax",
)
EVENTS = Counter(
    "omnirec_events_total",
    "TrackEvents events by type (unknown types as 'other') and outcome: accepted, "
    "rejected (invalid), erased (names an erased person).",
    ("event_type", "outcome"),
)
DUPLICATES = Counter(
    "omnirec_events_duplicate_total",
    "Accepted events not recorded again: their event_id was recorded within a day.",
)
REDIS_ROUND_TRIPS = Histogram(
    "omnirec_redis_round_trip_seconds",
    "Time of one Redis round trip made while answering calls (several calls' reads may share one).",
    buckets=LATENCY_BUCKETS,
)
REDIS_ERRORS = Counter(
    "omnirec_redis_errors_total",
    "Redis round trips that failed while answering calls: unreachable, or an error reply.",
    ("kind",),
)
CACHE = Counter(
    "omnirec_cache_lookups_total",
    "In-process cache lookups by cache and result (hit, miss): published features per "
    "person, the catalogue.",
    ("cache", "result"),
)


EXPOSURES = Counter(
    "omnirec_experiment_exposures_total",
    "Recommend answers given under an A/B experiment, by experiment and arm.",
    ("experiment", "arm"),
)


def show_model(label: str, previous: str | None = None) -> None:
    """Say that this process serves ``label`` (and no longer ``previous``)."""
    if previous is not None and previous != label:
        MODEL.labels(previous).set(0)
    MODEL.labels(label).set(1)


def is_multiprocess() -> bool:
    return bool(os.environ.get(MULTIPROC_ENV))


def serve_metrics(port: int, host: str) -> None:
    """``/metrics`` on ``host:port`` from a background thread: this process's series, or
    with :data:`MULTIPROC_ENV` set, the sum over every process writing to that folder."""
    registry = None
    if is_multiprocess():
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    start_http_server(port, addr=host, **({"registry": registry} if registry else {}))
    log.info("metrics at http://%s:%d/metrics", host, port)


def prepare_multiprocess(folder: Path) -> None:
    """Make ``folder`` the empty multiprocess folder the children (started after this)
    inherit: files left by an earlier run would add old counts to the new ones."""
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*.db"):
        stale.unlink()
    os.environ[MULTIPROC_ENV] = str(folder)


def process_gone(pid: int) -> None:
    """Drop a stopped child's live gauges (its counters keep counting in the sum)."""
    if is_multiprocess():
        multiprocess.mark_process_dead(pid)
