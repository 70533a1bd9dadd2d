"""The gateway's state: the served version (swapped without a restart), cluster names, metrics,
health, and the fine-tuning store and jobs when `--store` is set."""

from __future__ import annotations

import importlib.util
import logging
import threading
from typing import Any, Callable, Optional

from grpc_health.v1 import health_pb2

from export.repository import ModelRepository, ModelVersion
from scan_serve.backends import Backend, OnnxRuntimeBackend, TritonBackend
from scan_serve.errors import StartupError
from scan_serve.jobs import JobManager
from scan_serve.metrics import Metrics
from scan_serve.model import NAMES_FILE, ClusterNames, ServedVersion, load_version
from scan_serve.proto import scan_pb2
from scan_serve.settings import ServeSettings
from scan_serve.store import JOB_STATES, ImageStore

log = logging.getLogger("scan_serve")
SERVICE_NAME = scan_pb2.DESCRIPTOR.services_by_name["ScanService"].full_name


class Gateway:
    """What the servicer works with: the served version (swappable), names, metrics, health."""

    def __init__(self, settings: ServeSettings, metrics: Metrics, health_servicer: Any,
                 log_line: Callable[[str], None]) -> None:
        self.settings = settings
        self.metrics = metrics
        self.health = health_servicer
        self.repository = ModelRepository(settings.repository)
        self.names = ClusterNames(self.repository.model_dir(settings.model_name) / NAMES_FILE)
        self.backend_name = "triton" if settings.triton_url else "onnxruntime"
        self._current = load_version(self.repository, settings.model_name, settings.version, self.make_backend,
                                     log_line)
        self.metrics.serving(self.current.name, self.current.number, self.backend_name, self.current.num_clusters)
        self._swap = threading.Lock()
        self._stop = threading.Event()
        self._watcher: Optional[threading.Thread] = None
        self._log = log_line
        self.store: Optional[ImageStore] = None
        self.jobs: Optional[JobManager] = None
        if settings.store is not None:
            if importlib.util.find_spec("torch") is None:
                raise StartupError("--store turns on fine-tuning, whose jobs train with PyTorch, and torch is not "
                                   "installed here (a serve-only install): pip install '.[train]', or drop --store")
            self.store = ImageStore(settings.store, settings.store_max_images, settings.store_max_bytes)
            self.jobs = JobManager(self.store, settings.repository, settings.model_name, settings.finetune_device,
                                   on_success=self.switch_to, on_change=self.refresh_store_metrics, log=log_line)
        self._set_health(self.current.backend.healthy())
        if settings.triton_url:
            self._watcher = threading.Thread(target=self._watch_backend, name="backend-health", daemon=True)
            self._watcher.start()

    @property
    def current(self) -> ServedVersion:
        return self._current

    def acquire(self) -> ServedVersion:
        """The served version for one request (call its `leave()` when done); it keeps its backend until then, even
        if a switch replaces it meanwhile."""
        with self._swap:
            served = self._current
            served.enter()
        return served

    def switch_to(self, version: int) -> None:
        """Serve `version` from now on: load it beside the current one, swap, retire the old one when idle."""
        s = self.settings
        if s.triton_url:
            TritonBackend(s.triton_url, s.model_name, version).wait_until_ready()
        new = load_version(self.repository, s.model_name, version, self.make_backend, self._log)
        with self._swap:
            old, self._current = self._current, new
        old.retire()
        self.metrics.serving(new.name, new.number, self.backend_name, new.num_clusters)
        self.metrics.version_switches.inc()
        self._log(f"now serving {new.name} version {new.number} (was {old.number})")

    def refresh_store_metrics(self) -> None:
        if self.store is None:
            return
        jobs = self.store.jobs()
        for state in JOB_STATES:
            self.metrics.jobs.labels(state).set(sum(j["state"] == state for j in jobs))
        self.metrics.stored_images.set(self.store.count())
        finished = [j for j in jobs if j["finished_at"] and j["started_at"]]
        if finished:
            last = max(finished, key=lambda j: j["finished_at"])
            self.metrics.last_job_duration.set(last["finished_at"] - last["started_at"])

    def make_backend(self, version: ModelVersion) -> Backend:
        s = self.settings
        if s.triton_url:
            return TritonBackend(s.triton_url, version.name, version.version)
        return OnnxRuntimeBackend(str(version.onnx_path), s.device, s.threads, s.max_batch, s.max_delay_us)

    def _set_health(self, ok: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if ok else health_pb2.HealthCheckResponse.NOT_SERVING
        for service in ("", SERVICE_NAME):
            self.health.set(service, status)
        self.metrics.backend_up.labels(self.backend_name).set(1 if ok else 0)

    def _watch_backend(self) -> None:
        last = None
        while not self._stop.wait(self.settings.health_interval_s):
            ok = self.current.backend.healthy()
            if ok != last:
                self._set_health(ok)
                log.warning("backend %s is %s", self.backend_name, "serving" if ok else "NOT serving")
                last = ok

    def close(self) -> None:
        self._stop.set()
        if self.jobs is not None:
            self.jobs.close()
        if self._watcher is not None:
            self._watcher.join(timeout=5)
        self.current.retire()
