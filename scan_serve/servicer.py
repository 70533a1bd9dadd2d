"""The RPCs of scan.v1.ScanService. Errors leave a method as a status code and a message
(`context.abort`), never as a stack trace; malformed request bytes become INVALID_ARGUMENT."""

from __future__ import annotations

import io
import json
import logging
import time
from typing import Any, Callable

import grpc

from scan_serve.errors import ClientGone, InvalidInput, ServeError
from scan_serve.finetune_options import MIN_IMAGES_PER_CLUSTER, OptionError, check_options
from scan_serve.gateway import Gateway
from scan_serve.inputs import check_request, prepare_image, prepare_images, raw_picture
from scan_serve.jobs import JobManager
from scan_serve.memory import release_freed_memory
from scan_serve.model import ServedVersion
from scan_serve.proto import scan_pb2, scan_pb2_grpc
from scan_serve.store import JOB_STATES

log = logging.getLogger("scan_serve")
JOB_STATE_MESSAGES = {name: getattr(scan_pb2, f"JOB_STATE_{name.upper()}") for name in JOB_STATES}


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
            if any(image.WhichOneof("content") == "encoded" for image in request.images):
                release_freed_memory()  # decoding large images leaves freed arenas behind

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
        id=job["id"], state=JOB_STATE_MESSAGES[job["state"]], progress=job["progress"], message=job["message"],
        base_version=job["base_version"], new_version=job["new_version"] or 0, created_at=job["created_at"],
        started_at=job["started_at"] or 0.0, finished_at=job["finished_at"] or 0.0, images=job["images"],
        gate_failures=job["gate_failures"], gate_json=json.dumps(job["gate"]) if job["gate"] else "",
    )
