"""Prometheus metrics of one gateway (its own registry, served on its own port).

Every name starts with `scan_`; counters end in `_total`, durations are in seconds.
"""

from __future__ import annotations

import socket
import threading
from typing import Iterator, Optional, Sequence
from wsgiref.simple_server import WSGIRequestHandler, make_server

import numpy as np
from prometheus_client import (
    CollectorRegistry, Counter, Gauge, GCCollector, Histogram, PlatformCollector, ProcessCollector,
    disable_created_metrics, make_wsgi_app,
)
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.utils import floatToGoString

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
CONFIDENCE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 0.999)
HTTP_IDLE_TIMEOUT_S = 10.0  # a metrics connection silent this long is closed
SIMILARITY_BUCKETS = (0.0, 0.2, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.98, 0.99)


class ArrayHistogram:
    """A Prometheus histogram with at most one label, fed a whole request's values at once.

    `prometheus_client.Histogram.observe` costs a few microseconds per value; a 64-image request
    observed two histograms per image. Here the bucket counts live in one numpy array per label
    value, updated with one `searchsorted` + `bincount` under a lock, and exposed as a histogram
    family (same `_bucket`/`_count`/`_sum` series as prometheus_client's).
    """

    def __init__(self, name: str, documentation: str, buckets: tuple[float, ...], label: Optional[str],
                 registry: CollectorRegistry) -> None:
        self.name, self.documentation, self.label = name, documentation, label
        self._bounds = np.array([*buckets, np.inf])
        self._lock = threading.Lock()
        self._counts: dict[str, np.ndarray] = {}  # label value -> per-bucket counts (not cumulative)
        self._sums: dict[str, float] = {}
        if label is None:
            self.ensure("")
        registry.register(self)

    def ensure(self, *values: str) -> None:
        """Create the series of these label values (at zero) if they do not exist."""
        with self._lock:
            for value in values:
                self._counts.setdefault(value, np.zeros(len(self._bounds), np.int64))
                self._sums.setdefault(value, 0.0)

    def observe(self, values: np.ndarray, labels: Optional[np.ndarray] = None, names: Sequence[str] = ("",)) -> None:
        """Add `values`; with a label, `labels[i]` indexes `names`, the label value of `values[i]`."""
        values = np.asarray(values, dtype=np.float64)
        buckets = np.searchsorted(self._bounds, values, side="left")  # a value equal to a bound counts in it
        groups = np.zeros(len(values), np.int64) if labels is None else np.asarray(labels, np.int64)
        width = len(self._bounds)
        counts = np.bincount(groups * width + buckets, minlength=len(names) * width).reshape(-1, width)
        sums = np.bincount(groups, weights=values, minlength=len(names))
        with self._lock:
            for g in np.flatnonzero(counts.sum(axis=1)).tolist():
                name = names[g]
                self._counts[name] = self._counts.get(name, np.zeros(width, np.int64)) + counts[g]
                self._sums[name] = self._sums.get(name, 0.0) + float(sums[g])

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=[self.label] if self.label else None)
        with self._lock:
            series = [(value, np.cumsum(counts), self._sums[value]) for value, counts in sorted(self._counts.items())]
        for value, cumulative, total in series:
            family.add_metric([value] if self.label else [],
                              [(floatToGoString(b), int(c)) for b, c in zip(self._bounds.tolist(), cumulative)],
                              total)
        yield family


class Metrics:
    def __init__(self) -> None:
        disable_created_metrics()  # no `_created` timestamp series next to every counter and histogram
        self.registry = CollectorRegistry()
        r = self.registry
        # the standard process_* (memory, CPU, open files), python_gc_* and python_info series
        ProcessCollector(registry=r)
        GCCollector(registry=r)
        PlatformCollector(registry=r)
        self.requests = Counter("scan_requests", "gRPC requests by method and status code", ["method", "code"],
                                registry=r)
        self.latency = Histogram("scan_request_duration_seconds", "gRPC request latency by method and status code",
                                 ["method", "code"], buckets=LATENCY_BUCKETS, registry=r)
        self.images = Counter("scan_images_classified", "Images classified", registry=r)
        self.rejected = Counter("scan_rejected_requests", "ClassifyUnlabeled requests refused by an input rule, "
                                "by status code", ["code"], registry=r)
        self.assignments = Counter("scan_cluster_assignments", "Images assigned to each cluster", ["cluster"],
                                   registry=r)
        self.confidence = ArrayHistogram("scan_prediction_confidence", "Probability of the assigned cluster, per cluster",
                                         CONFIDENCE_BUCKETS, "cluster", r)
        self.low_confidence = Counter("scan_low_confidence_predictions",
                                      "Predictions below the model's confidence threshold, per cluster", ["cluster"],
                                      registry=r)
        self.similarity = ArrayHistogram("scan_prototype_similarity",
                                         "Cosine similarity of each image to its nearest prototype",
                                         SIMILARITY_BUCKETS, None, r)
        self.backend_latency = Histogram("scan_backend_duration_seconds", "Inference backend latency per call",
                                         ["backend"], buckets=LATENCY_BUCKETS, registry=r)
        self.backend_up = Gauge("scan_backend_up", "1 when the inference backend answers health checks", ["backend"],
                                registry=r)
        self.model_info = Gauge("scan_model_info", "The model version being served (value 1)",
                                ["model", "version", "backend"], registry=r)
        self.jobs = Gauge("scan_finetune_jobs", "Fine-tuning jobs by state", ["state"], registry=r)
        self.stored_images = Gauge("scan_stored_images", "Images in the fine-tuning image store", registry=r)
        self.last_job_duration = Gauge("scan_finetune_last_job_duration_seconds",
                                       "Wall time of the last fine-tuning job that finished", registry=r)
        self.version_switches = Counter("scan_version_switches", "Times the gateway switched to a new model version",
                                        registry=r)
        self._served: Optional[tuple[str, str, str]] = None
        self._per_cluster: list[tuple] = []

    def serving(self, model: str, version: int, backend: str, num_clusters: int) -> None:
        """Record the served version (the info metric has one series) and create the per-cluster series."""
        if self._served is not None:
            self.model_info.remove(*self._served)
        self._served = (model, str(version), backend)
        self.model_info.labels(*self._served).set(1)
        self._cluster_names = [str(k) for k in range(num_clusters)]
        self._per_cluster = [(self.assignments.labels(k), self.low_confidence.labels(k)) for k in self._cluster_names]
        self.confidence.ensure(*self._cluster_names)

    def observe_predictions(self, clusters: np.ndarray, confidence: np.ndarray, threshold: float,
                            nearest_similarity: Optional[np.ndarray]) -> None:
        self.images.inc(len(clusters))
        per_cluster = self._per_cluster
        counts = np.bincount(clusters, minlength=len(per_cluster))
        low = np.bincount(clusters[confidence < threshold], minlength=len(per_cluster))
        for k in np.flatnonzero(counts).tolist():
            assigned, below = per_cluster[k]
            assigned.inc(int(counts[k]))
            if low[k]:
                below.inc(int(low[k]))
        self.confidence.observe(confidence, clusters, self._cluster_names)
        if nearest_similarity is not None:
            self.similarity.observe(nearest_similarity)

    def serve_http(self, port: int, host: str = "127.0.0.1", idle_timeout_s: float = HTTP_IDLE_TIMEOUT_S
                   ) -> tuple[object, int]:
        """Start the /metrics HTTP endpoint; returns (server, bound port).

        prometheus_client's own server keeps a thread per connection for as long as the client holds
        it open; here a connection that sends nothing for `idle_timeout_s` is closed (a scrape takes
        milliseconds), so idle connections cannot pile up threads."""

        class Handler(WSGIRequestHandler):
            timeout = idle_timeout_s  # socket timeout of each connection (StreamRequestHandler)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base signature
                pass  # no line per scrape

        class Server(ThreadingWSGIServer):
            address_family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]

        server = make_server(host, port, make_wsgi_app(self.registry), Server, handler_class=Handler)
        threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
        return server, int(server.server_port)
