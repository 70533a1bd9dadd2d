"""`python -m scan_serve.healthcheck [HOST:PORT]`: exit 0 when the gateway's gRPC health service says SERVING.

Used by the container image's HEALTHCHECK; prints the status (or why it could not be asked) on failure.
"""

from __future__ import annotations

import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def main(argv: list[str]) -> int:
    address = argv[0] if argv else "127.0.0.1:50051"
    try:
        with grpc.insecure_channel(address) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="scan.v1.ScanService"), timeout=5)
    except grpc.RpcError as exc:
        print(f"scan-serve at {address}: {exc.code().name} {exc.details()}", file=sys.stderr)
        return 1
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        print(f"scan-serve at {address}: {health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
