#!/usr/bin/env python3
"""The image's HEALTHCHECK: exit 0 when the gRPC server in this container says SERVING.

It asks the standard gRPC health service (the same answer a load balancer gets) on
``127.0.0.1:$OMNIREC_PORT`` (default 50051), in plaintext. The server answers SERVING
only once its model is loaded and while Redis answers. With TLS on
(``OMNIREC_TLS_CERT``) this plaintext check cannot connect: turn the check off for that
container (compose: ``healthcheck: {disable: true}``) and probe from outside.
"""

from __future__ import annotations

import os
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

TIMEOUT_SECONDS = 3.0


def check(target: str, timeout: float = TIMEOUT_SECONDS) -> str:
    """The overall health status name the server at ``target`` reports (e.g.
    ``SERVING``), or the gRPC status code name when the call fails."""
    with grpc.insecure_channel(target) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=timeout
            )
        except grpc.RpcError as err:
            return err.code().name
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def main() -> int:
    port = os.environ.get("OMNIREC_PORT") or "50051"
    status = check(f"127.0.0.1:{port}")
    if status != "SERVING":
        print(f"omnirec health: {status}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
