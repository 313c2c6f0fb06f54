"""``python -m service serve [--port 50051]``: serve the model behind the alias."""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from service import metrics
from service.access import ROLES, add_entry, key_entry, new_key, valid_name
from service.api.security import server_security
from service.api.server import build_server
from service.config import (
    Settings,
    feature_store,
    identity_secret,
    load_settings,
    read_env_file,
)
from service.errors import ConfigError, OmnirecError
from service.registry import ModelRegistry, quiet_mlflow

log = logging.getLogger("service")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m service",
        description="omnirec gRPC service (settings: environment variables, see README.md)",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve recommendations over gRPC")
    serve.add_argument("--port", type=int, help="gRPC port (OMNIREC_PORT, default 50051)")
    serve.add_argument(
        "--host",
        help="bind address (OMNIREC_HOST; default [::] with API keys, 127.0.0.1 without)",
    )
    serve.add_argument("--alias", help="model alias to serve (OMNIREC_MODEL_ALIAS)")
    serve.add_argument(
        "--env-file",
        help="NAME=value lines (as `make up` writes) for variables the environment leaves unset",
    )
    serve.add_argument(
        "--workers", type=int, help="worker threads for blocking work (OMNIREC_WORKERS)"
    )
    serve.add_argument(
        "--processes", type=int, help="server processes sharing the port (OMNIREC_PROCESSES)"
    )
    # Set by the parent for the processes it starts; not for people.
    serve.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)
    key = sub.add_parser(
        "make-key",
        help="make an API key: prints the key once and its keys-file entry (SHA-256 only)",
    )
    key.add_argument("--name", required=True, help="who uses the key, e.g. web (in audit lines)")
    key.add_argument("--roles", required=True, help=f"comma-separated, of: {', '.join(ROLES)}")
    key.add_argument("--file", help="also add the entry to this keys file (created when missing)")
    return parser.parse_args(argv)


def supervise(settings: Settings, argv: list[str]) -> int:
    """Run ``settings.processes`` copies of ``serve`` on one port; forward SIGTERM and
    SIGINT to them; if one exits, stop the others. Returns the first failure's code."""
    command = [sys.executable, "-m", "service", *argv, "--processes", "1", "--reuse-port"]
    host = server_security(settings).host  # checked here, before any child starts
    folder = None
    if settings.metrics_port:
        # The children write their series to files here; this process serves the sum.
        folder = tempfile.TemporaryDirectory(prefix="omnirec-metrics-")
        metrics.prepare_multiprocess(Path(folder.name))
        metrics.serve_metrics(settings.metrics_port, _bare(host))
    children = [subprocess.Popen(command) for _ in range(settings.processes)]
    log.info("started %d server processes on port %d", len(children), settings.port)

    def forward(signum: int, _frame: object) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    code = 0
    gone: set[int] = set()
    while any(child.poll() is None for child in children):
        for child in children:
            if child.poll() is not None and child.pid not in gone:
                gone.add(child.pid)
                metrics.process_gone(child.pid)
            if child.poll() is not None and child.returncode != 0 and code == 0:
                code = child.returncode
                forward(signal.SIGTERM, None)
        time.sleep(0.2)
    if folder is not None:
        folder.cleanup()
    return code or max(child.returncode for child in children)


def _with_env_file(path: str) -> dict[str, str]:
    """The environment, with ``path``'s ``NAME=value`` lines beneath it: a variable set
    in the environment wins, so one setting can be changed for one run."""
    return {**read_env_file(path), **os.environ}


def _bare(host: str) -> str:
    """``[::]`` → ``::``: the HTTP server takes addresses without brackets."""
    return host.removeprefix("[").removesuffix("]")


def serve(settings: Settings, reuse_port: bool = False) -> None:
    identity_secret(settings)
    # Keys, certificates and the bind address are checked before the slow model load.
    security = server_security(settings)
    # A child of the supervisor (reuse_port) writes its series for the supervisor's
    # endpoint; a single process serves its own (a busy port fails here, before the load).
    if settings.metrics_port and not reuse_port:
        metrics.serve_metrics(settings.metrics_port, _bare(security.host))
    registry = ModelRegistry(settings)
    model = registry.load_alias(settings.model_alias)
    store = feature_store(settings)
    if not store.ping():
        log.warning(
            "Redis at %s is unreachable; answering UNAVAILABLE until it is back", settings.redis_url
        )
    elif store.current_publication() is None:
        log.warning(
            "no features published in Redis yet: popular items and exclusions are "
            "empty until a training run publishes"
        )
    running = build_server(
        settings,
        model,
        store,
        reload_model=registry.load_version,
        current_version=lambda: registry.version_behind(settings.model_alias),
        reuse_port=reuse_port,
        security=security,
        version_of=registry.version_behind,
    )
    # What is loaded now (the model, MLflow, grpc) lives as long as the process: out of
    # the cyclic collector's sight, so its full collections stop walking it while a call
    # waits (they were the long tail of TrackEvents, which makes many objects).
    gc.freeze()
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info(
            "%s received: NOT_SERVING, draining %.0f s, then finishing in-flight calls "
            "(grace %.0f s)",
            signal.Signals(signum).name,
            settings.drain_seconds,
            settings.grace_seconds,
        )
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    print(f"omnirec serving {model.label} on port {running.port}", flush=True)
    stop.wait()
    running.stop(settings.grace_seconds, drain=settings.drain_seconds)
    store.close()
    log.info("stopped")


def make_key(name: str, roles: str, file: str | None) -> int:
    """Print a new key and its keys-file entry; add the entry to ``file`` if given."""
    # Refuse to hand out a key the server would refuse (unknown role, bad name).
    if not valid_name(name):
        raise ConfigError(f"--name={name!r}: must be 1-64 of A-Z a-z 0-9 _ . : -")
    wanted = [r.strip() for r in roles.split(",") if r.strip()]
    unknown = [r for r in wanted if r not in ROLES]
    if not wanted or unknown:
        what = f"unknown role {unknown[0]!r}" if unknown else "no role"
        raise ConfigError(f"--roles={roles!r}: {what}; roles: {', '.join(ROLES)}")
    entry = key_entry(name, wanted, key := new_key())
    if file:
        add_entry(file, entry, variable="--file")
    print(f"key (shown once; give it to {name}, never store it in clear): {key}")
    print(f"keys-file entry: {json.dumps(entry)}")
    if file:
        print(f"added to {file}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.command == "make-key":
        try:
            return make_key(args.name, args.roles, args.file)
        except OmnirecError as exc:
            print(f"omnirec make-key: error: {exc}", file=sys.stderr)
            return 2
    try:
        settings = load_settings(
            _with_env_file(args.env_file) if args.env_file else None,
            port=args.port,
            host=args.host,
            model_alias=args.alias,
            workers=args.workers,
            processes=args.processes,
        )
        logging.basicConfig(
            level=settings.log_level.upper(),
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
        if settings.processes > 1:
            return supervise(settings, argv)
        quiet_mlflow()
        serve(settings, reuse_port=args.reuse_port)
    except OmnirecError as exc:
        print(f"omnirec serve: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the port is taken, or the address is not this machine's
        print(f"omnirec serve: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
