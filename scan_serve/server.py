"""Starting and stopping the gRPC gateway: `create_server(settings) -> Running`, kept apart from `serve()`.

The parts, by role: `settings` (ServeSettings), `gateway` (the served version and its switch),
`servicer` (the RPCs), `auth` (operator token), `inputs`, `backends`, `model`, `metrics`.
"""

from __future__ import annotations

import json
import os
import signal
import threading
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from scan_serve.auth import OperatorAuth
from scan_serve.errors import StartupError
from scan_serve.gateway import SERVICE_NAME, Gateway
from scan_serve.metrics import Metrics
from scan_serve.servicer import ScanServicer, add_servicer
from scan_serve.settings import ServeSettings
from trainer.atomic import atomic_write_text

__all__ = ["Running", "ServeSettings", "create_server", "serve"]


@dataclass
class Running:
    """A started gateway: the gRPC server, its port, the metrics endpoint and the gateway state."""

    server: grpc.Server
    port: int
    gateway: Gateway
    metrics_port: Optional[int]
    _metrics_http: Any = None

    def stop(self, grace: float = 10.0) -> None:
        """Stop accepting requests, let in-flight ones finish (up to `grace` seconds), release everything."""
        self.server.stop(grace).wait()
        self.gateway.close()
        if self._metrics_http is not None:
            self._metrics_http.shutdown()
            self._metrics_http.server_close()


def create_server(settings: ServeSettings, log_line: Callable[[str], None] = print) -> Running:
    """Load the model, bind the ports (0: any free one) and start serving; returns the running gateway."""
    metrics = Metrics()
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    gateway = Gateway(settings, metrics, health_servicer, log_line)
    gateway.refresh_store_metrics()
    limits = settings.limits
    options = [("grpc.max_receive_message_length", limits.max_message_bytes),
               ("grpc.max_send_message_length", limits.max_message_bytes),
               ("grpc.so_reuseport", 0),
               # identity only: a small gzip request must not inflate to max_message_bytes in memory
               ("grpc.compression_enabled_algorithms_bitset", 1)]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=settings.workers, thread_name_prefix="rpc"),
                         interceptors=[OperatorAuth(settings.token, metrics)], options=options,
                         maximum_concurrent_rpcs=settings.max_concurrent_rpcs)
    add_servicer(ScanServicer(gateway), server)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME), server)
    address = f"{settings.host}:{settings.port}"
    try:
        if settings.tls_cert is not None:
            credentials = grpc.ssl_server_credentials([(settings.tls_key, settings.tls_cert)])
            port = server.add_secure_port(address, credentials)
        else:
            port = server.add_insecure_port(address)
    except RuntimeError as exc:
        gateway.close()
        raise StartupError(f"cannot listen on {address}: {exc}") from exc
    if port == 0:
        gateway.close()
        raise StartupError(f"cannot listen on {address} (in use, or not an address of this machine)")
    metrics_http, metrics_port = None, None
    if settings.metrics_port is not None:
        try:
            metrics_http, metrics_port = metrics.serve_http(settings.metrics_port, settings.host)
        except OSError as exc:
            gateway.close()
            raise StartupError(f"cannot serve metrics on {settings.host}:{settings.metrics_port}: {exc}") from exc
    server.start()
    return Running(server, port, gateway, metrics_port, metrics_http)


def serve(settings: ServeSettings, grace: float = 10.0, log_line: Callable[[str], None] = print,
          ready_file: Optional[Path] = None) -> None:
    """Run until SIGTERM or SIGINT, then drain in-flight requests for up to `grace` seconds.

    `ready_file`: written (atomically, JSON: pid, port, metrics_port, model_name, model_version) once
    the gateway serves, removed when it stops; scripts wait for it instead of parsing the log.
    """
    try:
        import faiss  # noqa: PLC0415

        faiss.omp_set_num_threads(1)  # prototype searches are tiny; OpenMP threads only fight onnxruntime's
    except ImportError:  # pragma: no cover - faiss is a dependency of the cpu/gpu extras
        pass
    running = create_server(settings, log_line)
    stopping = threading.Event()

    def request_stop(signum: int, _frame: Any) -> None:
        log_line(f"{signal.Signals(signum).name}: finishing in-flight requests (up to {grace:g} s), then stopping")
        stopping.set()

    # before anyone can learn that the gateway serves: a SIGTERM right after the ready file must drain, not kill
    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    served = running.gateway.current
    scheme = "TLS" if settings.tls_cert is not None else "plaintext"
    log_line(f"serving {served.name} version {served.number} ({served.num_clusters} clusters, "
             f"{running.gateway.backend_name}) on {settings.host}:{running.port} ({scheme})"
             + (f", metrics on http://{settings.host}:{running.metrics_port}/metrics" if running.metrics_port else ""))
    if ready_file is not None:
        atomic_write_text(ready_file, json.dumps({
            "pid": os.getpid(), "port": running.port, "metrics_port": running.metrics_port,
            "model_name": served.name, "model_version": served.number}) + "\n")
    stopping.wait()
    if ready_file is not None:
        ready_file.unlink(missing_ok=True)
    running.stop(grace)
    log_line("stopped")
