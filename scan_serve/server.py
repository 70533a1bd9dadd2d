"""The gRPC gateway: `create_server(settings) -> (server, port, gateway)`, kept apart from `serve()`.

Every RPC is a method of `ScanServicer`; errors leave it as a status code and a message
(`context.abort`), never as a stack trace. Operator-only methods pass through `OperatorAuth`.
"""

from __future__ import annotations

import hmac
import importlib.util
import io
import json
import logging
import signal
import threading
import time
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from export.repository import ModelRepository, ModelVersion
from scan_serve.backends import Backend, OnnxRuntimeBackend, TritonBackend
from scan_serve.errors import ClientGone, InvalidInput, ServeError, StartupError
from scan_serve.finetune_options import MIN_IMAGES_PER_CLUSTER, OptionError, check_options
from scan_serve.inputs import InputLimits, check_request, prepare_image, prepare_images, raw_picture
from scan_serve.jobs import JobManager
from scan_serve.metrics import Metrics
from scan_serve.model import NAMES_FILE, ClusterNames, ServedVersion, load_version
from scan_serve.proto import scan_pb2, scan_pb2_grpc
from scan_serve.store import ImageStore

log = logging.getLogger("scan_serve")

SERVICE_NAME = scan_pb2.DESCRIPTOR.services_by_name["ScanService"].full_name
OPERATOR_METHODS = frozenset(f"/{SERVICE_NAME}/{name}" for name in (
    "SetClusterNames", "SubmitImages", "StartFineTune", "GetFineTuneJob", "ListFineTuneJobs", "CancelFineTuneJob"))
STREAMING_REQUESTS = frozenset({f"/{SERVICE_NAME}/SubmitImages"})
JOB_STATES = {name: getattr(scan_pb2, f"JOB_STATE_{name.upper()}") for name in
              ("queued", "running", "succeeded", "rejected", "failed", "cancelled")}


@dataclass(frozen=True)
class ServeSettings:
    repository: Path
    model_name: str
    version: Optional[int] = None  # None: the newest intact version
    host: str = "127.0.0.1"
    port: int = 50051  # 0: any free port
    metrics_port: Optional[int] = 9464  # None: no metrics endpoint; 0: any free port
    triton_url: Optional[str] = None  # None: embedded onnxruntime
    device: str = "cpu"  # embedded backend: cpu | cuda[:N]
    threads: Optional[int] = None  # embedded backend: onnxruntime intra-op threads
    max_batch: int = 64  # embedded backend: images per batched inference
    max_delay_us: int = 0  # embedded backend: wait this long for more requests to batch
    token: Optional[str] = None  # operator bearer token; None: operator methods are refused
    tls_cert: Optional[bytes] = None
    tls_key: Optional[bytes] = None
    limits: InputLimits = field(default_factory=InputLimits)
    workers: int = 16
    health_interval_s: float = 1.0
    store: Optional[Path] = None  # image store + job records; None: fine-tuning is off
    store_max_images: int = 100_000
    store_max_bytes: int = 2 << 30
    finetune_device: str = "cpu"


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


class Undecodable:
    """Stands in for a request whose bytes are not a valid message (e.g. a string field that is not UTF-8)."""

    def __init__(self, type_name: str, error: str) -> None:
        self.message = (f"the request is not a valid {type_name} message ({error}); string fields such as image "
                        "ids must be UTF-8")


def _tolerant(message_class: Any) -> Callable[[bytes], Any]:
    """A deserializer that hands the servicer an `Undecodable` instead of failing inside gRPC (which would
    answer INTERNAL); the servicer answers INVALID_ARGUMENT with the reason."""

    def parse(data: bytes) -> Any:
        try:
            return message_class.FromString(data)
        except Exception as exc:  # noqa: BLE001 - protobuf raises DecodeError and others on malformed bytes
            return Undecodable(message_class.DESCRIPTOR.full_name, f"{type(exc).__name__}: {exc}")

    return parse


def _checked(requests: Any) -> Any:
    """The messages of a request stream, refusing an undecodable one."""
    for request in requests:
        if isinstance(request, Undecodable):
            raise InvalidInput(request.message)
        yield request


def add_servicer(servicer: "ScanServicer", server: grpc.Server) -> None:
    """Register every method of scan.v1.ScanService with tolerant deserializers (the generated
    `add_ScanServiceServicer_to_server` would answer INTERNAL to a malformed request)."""
    service = scan_pb2.DESCRIPTOR.services_by_name["ScanService"]
    handlers = {}
    for method in service.methods:
        request_class = getattr(scan_pb2, method.input_type.name)
        response_class = getattr(scan_pb2, method.output_type.name)
        make = grpc.stream_unary_rpc_method_handler if method.client_streaming else grpc.unary_unary_rpc_method_handler
        handlers[method.name] = make(getattr(servicer, method.name), request_deserializer=_tolerant(request_class),
                                     response_serializer=response_class.SerializeToString)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))
    server.add_registered_method_handlers(service.full_name, handlers)


def _observed(method: str) -> Callable:
    """Count and time an RPC by method and status; turn ServeErrors into status codes."""

    def wrap(handler: Callable) -> Callable:
        def run(self: "ScanServicer", request: Any, context: grpc.ServicerContext) -> Any:
            start = time.perf_counter()
            code = grpc.StatusCode.OK
            try:
                if isinstance(request, Undecodable):
                    raise InvalidInput(request.message)
                if not hasattr(request, "DESCRIPTOR"):  # a client stream
                    request = _checked(request)
                return handler(self, request, context)
            except ClientGone as exc:
                code = exc.code
                log.info("%s: %s", method, exc)
                context.abort(code, str(exc))
            except ServeError as exc:
                code = exc.code
                context.abort(code, str(exc))
            except Exception:  # noqa: BLE001 - never a stack trace to the client
                code = grpc.StatusCode.INTERNAL
                log.exception("%s failed", method)
                context.abort(code, f"{method}: internal error (see the gateway log)")
            finally:
                metrics = self.gateway.metrics
                metrics.requests.labels(method, code.name).inc()
                metrics.latency.labels(method, code.name).observe(time.perf_counter() - start)

        run.__name__ = handler.__name__
        return run

    return wrap


class ScanServicer(scan_pb2_grpc.ScanServiceServicer):
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    @_observed("ClassifyUnlabeled")
    def ClassifyUnlabeled(self, request: scan_pb2.ClassifyRequest, context: grpc.ServicerContext):
        gateway = self.gateway
        served = gateway.acquire()
        try:
            return self._classify(request, served, context.is_active)
        finally:
            served.leave()

    def _classify(self, request: scan_pb2.ClassifyRequest, served: ServedVersion,
                  alive: Callable[[], bool]) -> scan_pb2.ClassifyResponse:
        gateway = self.gateway
        limits = gateway.settings.limits
        top_k = int(request.top_k_prototypes)
        try:
            check_request(len(request.images), top_k, limits)
            images = prepare_images(request.images, served.channels, served.size, limits, alive)
        except ClientGone:
            raise
        except ServeError as exc:
            gateway.metrics.rejected.labels(exc.code.name).inc()
            raise
        if not alive():
            raise ClientGone("the client went away before inference")
        observe = gateway.metrics.backend_latency.labels(gateway.backend_name).observe
        found = served.predict(images, top_k, observe)
        gateway.metrics.observe_predictions(found.clusters, found.confidence, served.threshold,
                                            found.nearest_similarity[:, 0] if top_k else None)
        names = gateway.names
        index = served.prototypes
        results = []
        for i, image in enumerate(request.images):
            cluster = int(found.clusters[i])
            confidence = float(found.confidence[i])
            result = scan_pb2.Classification(id=image.id, cluster=cluster, confidence=confidence,
                                             confident=confidence >= served.threshold,
                                             cluster_name=names.get(cluster))
            if request.include_probabilities:
                result.probabilities.extend(found.probs[i].tolist())
            for similarity, row in zip(found.nearest_similarity[i].tolist(), found.nearest_rows[i].tolist()):
                if row < 0:
                    continue
                result.nearest_prototypes.add(cluster=int(index.cluster[row]), prototype_id=int(index.image_id[row]),
                                              similarity=similarity, source=index.sources[row],
                                              rank=int(index.rank[row]))
            results.append(result)
        return scan_pb2.ClassifyResponse(model_name=served.name, model_version=served.number, results=results)

    @_observed("GetModelInfo")
    def GetModelInfo(self, request: scan_pb2.GetModelInfoRequest, context: grpc.ServicerContext):
        return self._info()

    def _info(self) -> scan_pb2.ModelInfo:
        served = self.gateway.current
        return scan_pb2.ModelInfo(
            model_name=served.name, model_version=served.number, num_clusters=served.num_clusters,
            input_channels=served.channels, input_height=served.size, input_width=served.size,
            confidence_threshold=served.threshold, cluster_names=self.gateway.names.all(served.num_clusters),
            embedding_dim=served.embedding_dim, backend=self.gateway.backend_name,
            prototypes_per_cluster=served.prototypes_per_cluster,
        )

    @_observed("GetPrototypes")
    def GetPrototypes(self, request: scan_pb2.GetPrototypesRequest, context: grpc.ServicerContext):
        served = self.gateway.current
        cluster = int(request.cluster)
        if cluster >= served.num_clusters:
            raise InvalidInput(f"cluster {cluster} does not exist; the model has clusters 0..{served.num_clusters - 1}")
        prototypes = [scan_pb2.Prototype(cluster=cluster, prototype_id=p["image_id"], similarity=p["similarity"],
                                         source=p["source"], rank=p["rank"])
                      for p in served.prototypes.of_cluster(cluster)]
        return scan_pb2.GetPrototypesResponse(model_name=served.name, model_version=served.number, cluster=cluster,
                                              cluster_name=self.gateway.names.get(cluster), prototypes=prototypes)

    @_observed("SetClusterNames")
    def SetClusterNames(self, request: scan_pb2.SetClusterNamesRequest, context: grpc.ServicerContext):
        served = self.gateway.current
        bad = sorted(k for k in request.names if k >= served.num_clusters)
        if bad:
            raise InvalidInput(f"clusters {bad} do not exist; the model has clusters 0..{served.num_clusters - 1}")
        long_names = sorted(k for k, v in request.names.items() if len(v) > 200)
        if long_names:
            raise InvalidInput(f"names of clusters {long_names} are longer than 200 characters")
        self.gateway.names.update(dict(request.names))
        return self._info()

    # ------------------------------------------------------------------ fine-tuning (operator only)

    def _jobs(self) -> JobManager:
        if self.gateway.jobs is None:
            raise ServeError("fine-tuning is off: start scan-serve with --store DIR", grpc.StatusCode.FAILED_PRECONDITION)
        return self.gateway.jobs

    @_observed("SubmitImages")
    def SubmitImages(self, request_iterator: Any, context: grpc.ServicerContext):
        jobs = self._jobs()
        served = self.gateway.current
        limits = self.gateway.settings.limits
        received = stored = duplicates = total = 0
        for message in request_iterator:
            check_request(len(message.images), 0, limits)
            items = []
            for image in message.images:
                prepare_image(image, received, served.channels, served.size, limits)  # the classification rules
                items.append((_stored_bytes(image), image.id or f"submitted[{received}]"))
                received += 1
            result = jobs.store.add(items)
            stored, duplicates, total = stored + result.stored, duplicates + result.duplicates, result.total
        if received == 0:
            raise InvalidInput("the stream had no images")
        self.gateway.refresh_store_metrics()
        return scan_pb2.SubmitImagesResponse(received=received, stored=stored, duplicates=duplicates,
                                             stored_total=total)

    @_observed("StartFineTune")
    def StartFineTune(self, request: scan_pb2.StartFineTuneRequest, context: grpc.ServicerContext):
        jobs = self._jobs()
        served = self.gateway.current
        options = {"epochs": request.epochs, "threshold": request.threshold, "max_images": request.max_images,
                   "learning_rate": request.learning_rate, "min_agreement": request.min_agreement,
                   "augment": request.augment, "no_class_balance": request.no_class_balance}
        try:
            check_options(options)  # the job fills in the defaults from the base version's training config
        except OptionError as exc:
            raise InvalidInput(str(exc)) from None
        needed = MIN_IMAGES_PER_CLUSTER * served.num_clusters
        if 0 < request.max_images < needed:
            raise InvalidInput(f"max_images must be 0 (every stored image) or at least {needed} "
                               f"({MIN_IMAGES_PER_CLUSTER} per cluster of the served version), got {request.max_images}")
        available = jobs.store.count()
        if available < needed:
            raise ServeError(f"the store holds {available} images; fine-tuning needs at least {needed} "
                             f"({MIN_IMAGES_PER_CLUSTER} per cluster): submit more with SubmitImages",
                             grpc.StatusCode.FAILED_PRECONDITION)
        return _job_message(jobs.submit(options, served.number))

    @_observed("GetFineTuneJob")
    def GetFineTuneJob(self, request: scan_pb2.GetFineTuneJobRequest, context: grpc.ServicerContext):
        return _job_message(self._job(request.id))

    @_observed("ListFineTuneJobs")
    def ListFineTuneJobs(self, request: scan_pb2.ListFineTuneJobsRequest, context: grpc.ServicerContext):
        return scan_pb2.ListFineTuneJobsResponse(jobs=[_job_message(j) for j in self._jobs().store.jobs()])

    @_observed("CancelFineTuneJob")
    def CancelFineTuneJob(self, request: scan_pb2.CancelFineTuneJobRequest, context: grpc.ServicerContext):
        self._job(request.id)
        return _job_message(self._jobs().cancel(request.id))

    def _job(self, job_id: str) -> dict[str, Any]:
        try:
            return self._jobs().store.job(job_id)
        except KeyError:
            shown = job_id if len(job_id) <= 64 else f"{job_id[:64]}... ({len(job_id)} characters)"
            raise ServeError(f"no fine-tuning job {shown!r}", grpc.StatusCode.NOT_FOUND) from None


def _stored_bytes(image: Any) -> bytes:
    """What the store keeps of a submitted image: encoded bytes as sent; raw pixels as a PNG (lossless)."""
    if image.WhichOneof("content") == "encoded":
        return bytes(image.encoded)
    buffer = io.BytesIO()
    raw_picture(image.raw).save(buffer, format="PNG")
    return buffer.getvalue()


def _job_message(job: dict[str, Any]) -> scan_pb2.FineTuneJob:
    return scan_pb2.FineTuneJob(
        id=job["id"], state=JOB_STATES[job["state"]], progress=job["progress"], message=job["message"],
        base_version=job["base_version"], new_version=job["new_version"] or 0, created_at=job["created_at"],
        started_at=job["started_at"] or 0.0, finished_at=job["finished_at"] or 0.0, images=job["images"],
        gate_failures=job["gate_failures"], gate_json=json.dumps(job["gate"]) if job["gate"] else "",
    )


class OperatorAuth(grpc.ServerInterceptor):
    """Operator-only methods need `authorization: Bearer <token>`; compared in constant time."""

    def __init__(self, token: Optional[str], metrics: Metrics) -> None:
        self._expected = f"Bearer {token}".encode() if token else None
        self._metrics = metrics

    def intercept_service(self, continuation: Callable, handler_call_details: Any) -> Any:
        method = handler_call_details.method
        if method not in OPERATOR_METHODS:
            return continuation(handler_call_details)
        if self._expected is None:
            return self._refuse(method, grpc.StatusCode.PERMISSION_DENIED,
                                "operator methods are disabled: start scan-serve with --token-file")
        given = dict(handler_call_details.invocation_metadata or ()).get("authorization", "")
        if not hmac.compare_digest(given.encode() if isinstance(given, str) else bytes(given), self._expected):
            return self._refuse(method, grpc.StatusCode.UNAUTHENTICATED,
                                "this method needs the operator token: metadata 'authorization: Bearer <token>'")
        return continuation(handler_call_details)

    def _refuse(self, method: str, code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler:
        self._metrics.requests.labels(method.rsplit("/", 1)[-1], code.name).inc()

        def deny(request: Any, context: grpc.ServicerContext) -> None:
            context.abort(code, message)

        if method in STREAMING_REQUESTS:
            return grpc.stream_unary_rpc_method_handler(deny)
        return grpc.unary_unary_rpc_method_handler(deny)


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
                         interceptors=[OperatorAuth(settings.token, metrics)], options=options)
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


def serve(settings: ServeSettings, grace: float = 10.0, log_line: Callable[[str], None] = print) -> None:
    """Run until SIGTERM or SIGINT, then drain in-flight requests for up to `grace` seconds."""
    try:
        import faiss  # noqa: PLC0415

        faiss.omp_set_num_threads(1)  # prototype searches are tiny; OpenMP threads only fight onnxruntime's
    except ImportError:  # pragma: no cover - faiss is a dependency of the cpu/gpu extras
        pass
    running = create_server(settings, log_line)
    served = running.gateway.current
    scheme = "TLS" if settings.tls_cert is not None else "plaintext"
    log_line(f"serving {served.name} version {served.number} ({served.num_clusters} clusters, "
             f"{running.gateway.backend_name}) on {settings.host}:{running.port} ({scheme})"
             + (f", metrics on http://{settings.host}:{running.metrics_port}/metrics" if running.metrics_port else ""))
    stopping = threading.Event()

    def request_stop(signum: int, _frame: Any) -> None:
        log_line(f"{signal.Signals(signum).name}: finishing in-flight requests (up to {grace:g} s), then stopping")
        stopping.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    stopping.wait()
    running.stop(grace)
    log_line("stopped")
