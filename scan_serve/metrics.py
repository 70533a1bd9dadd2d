"""Prometheus metrics of one gateway (its own registry, served on its own port).

Every name starts with `scan_`; counters end in `_total`, durations are in seconds.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
from prometheus_client import (
    CollectorRegistry, Counter, Gauge, GCCollector, Histogram, PlatformCollector, ProcessCollector,
    disable_created_metrics, start_http_server,
)

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
CONFIDENCE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 0.999)
SIMILARITY_BUCKETS = (0.0, 0.2, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.98, 0.99)


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
        self.confidence = Histogram("scan_prediction_confidence", "Probability of the assigned cluster, per cluster",
                                    ["cluster"], buckets=CONFIDENCE_BUCKETS, registry=r)
        self.low_confidence = Counter("scan_low_confidence_predictions",
                                      "Predictions below the model's confidence threshold, per cluster", ["cluster"],
                                      registry=r)
        self.similarity = Histogram("scan_prototype_similarity",
                                    "Cosine similarity of each image to its nearest prototype",
                                    buckets=SIMILARITY_BUCKETS, registry=r)
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
        self._per_cluster = [(self.assignments.labels(str(k)), self.confidence.labels(str(k)),
                              self.low_confidence.labels(str(k))) for k in range(num_clusters)]

    def observe_predictions(self, clusters: np.ndarray, confidence: np.ndarray, threshold: float,
                            nearest_similarity: Optional[np.ndarray]) -> None:
        self.images.inc(len(clusters))
        per_cluster = self._per_cluster
        counts = np.bincount(clusters, minlength=len(per_cluster))
        low = np.bincount(clusters[confidence < threshold], minlength=len(per_cluster))
        for k in np.flatnonzero(counts).tolist():
            assigned, _, below = per_cluster[k]
            assigned.inc(int(counts[k]))
            if low[k]:
                below.inc(int(low[k]))
        for cluster, value in zip(clusters.tolist(), confidence.tolist()):
            per_cluster[cluster][1].observe(value)
        if nearest_similarity is not None:
            for value in nearest_similarity.tolist():
                self.similarity.observe(value)

    def serve_http(self, port: int, host: str = "127.0.0.1") -> tuple[object, int]:
        """Start the /metrics HTTP endpoint; returns (server, bound port)."""
        server, _ = start_http_server(port, addr=host, registry=self.registry)
        return server, int(server.server_port)
