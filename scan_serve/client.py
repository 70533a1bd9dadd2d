"""A small client for applications: classify files, bytes, arrays or PIL images; typed results.

```python
from scan_serve.client import ScanClient

with ScanClient("127.0.0.1:50051") as client:
    for result in client.classify(["shoe.jpg", "shirt.png"], top_k=3):
        print(result.id, result.cluster, f"{result.confidence:.2f}", result.nearest_prototypes[0].source)
```
Errors from the gateway become `ScanError` with the gRPC status name and the server's message.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import grpc
import numpy as np

from scan_serve.proto import scan_pb2, scan_pb2_grpc

ImageLike = Union[str, Path, bytes, bytearray, np.ndarray, Any]  # Any: a PIL.Image.Image


class ScanError(Exception):
    """A call the gateway refused or could not answer; `code` is the gRPC status name (e.g. INVALID_ARGUMENT)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Prototype:
    cluster: int
    prototype_id: int
    similarity: float
    source: str
    rank: int


@dataclass(frozen=True)
class Classification:
    id: str
    cluster: int
    confidence: float
    confident: bool
    cluster_name: str
    probabilities: Optional[tuple[float, ...]]
    nearest_prototypes: tuple[Prototype, ...]
    model_version: int


@dataclass(frozen=True)
class ModelInfo:
    model_name: str
    model_version: int
    num_clusters: int
    input_shape: tuple[int, int, int]  # (channels, height, width)
    confidence_threshold: float
    cluster_names: tuple[str, ...]
    embedding_dim: int
    backend: str


def _prototype(p: Any) -> Prototype:
    return Prototype(int(p.cluster), int(p.prototype_id), float(p.similarity), p.source, int(p.rank))


def to_image_message(image: ImageLike, image_id: str = "") -> scan_pb2.Image:
    """One image -> `scan.v1.Image`. Paths are read (their bytes sent as they are); uint8 arrays are sent raw:
    (H, W) gray, (H, W, 3) RGB, or (C, H, W) with C in (1, 3)."""
    if isinstance(image, (str, Path)):
        path = Path(image)
        return scan_pb2.Image(id=image_id or str(path), encoded=path.read_bytes())
    if isinstance(image, (bytes, bytearray)):
        return scan_pb2.Image(id=image_id, encoded=bytes(image))
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise ValueError(f"arrays must be uint8, got {image.dtype}")
        if image.ndim == 2:
            chw = image[None]
        elif image.ndim == 3 and image.shape[0] in (1, 3):
            chw = image
        elif image.ndim == 3 and image.shape[2] in (1, 3):
            chw = image.transpose(2, 0, 1)
        else:
            raise ValueError(f"arrays must be (H, W), (H, W, 1|3) or (1|3, H, W), got shape {image.shape}")
        chw = np.ascontiguousarray(chw)
        raw = scan_pb2.RawImage(data=chw.tobytes(), channels=chw.shape[0], height=chw.shape[1], width=chw.shape[2])
        return scan_pb2.Image(id=image_id, raw=raw)
    if hasattr(image, "save") and hasattr(image, "mode"):  # a PIL image: sent as PNG
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return scan_pb2.Image(id=image_id, encoded=buffer.getvalue())
    raise TypeError(f"cannot send a {type(image).__name__} as an image (use a path, bytes, a uint8 array or a PIL image)")


class ScanClient:
    """A connection to scan-serve. `token` for operator methods; `tls=True` (with `root_certificates`, PEM
    bytes or a path, for a private CA) for a TLS port."""

    def __init__(self, address: str = "127.0.0.1:50051", token: Optional[str] = None, tls: bool = False,
                 root_certificates: Union[bytes, str, Path, None] = None, timeout: float = 30.0,
                 max_message_bytes: int = 64 << 20) -> None:
        options = [("grpc.max_send_message_length", max_message_bytes),
                   ("grpc.max_receive_message_length", max_message_bytes)]
        if tls or root_certificates is not None:
            if isinstance(root_certificates, (str, Path)):
                root_certificates = Path(root_certificates).read_bytes()
            credentials = grpc.ssl_channel_credentials(root_certificates=root_certificates)
            self._channel = grpc.secure_channel(address, credentials, options=options)
        else:
            self._channel = grpc.insecure_channel(address, options=options)
        self._stub = scan_pb2_grpc.ScanServiceStub(self._channel)
        self._token = token
        self.timeout = timeout

    def __enter__(self) -> "ScanClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def _call(self, method: str, request: Any, operator: bool = False) -> Any:
        metadata = [("authorization", f"Bearer {self._token}")] if operator and self._token else None
        try:
            return getattr(self._stub, method)(request, timeout=self.timeout, metadata=metadata)
        except grpc.RpcError as exc:
            raise ScanError(exc.code().name, exc.details() or "") from None

    def classify(self, images: Sequence[ImageLike], top_k: int = 3, include_probabilities: bool = False,
                 ids: Optional[Sequence[str]] = None) -> list[Classification]:
        """Classify `images` in one request; results in the same order. Raises ScanError on any refusal."""
        if ids is not None and len(ids) != len(images):
            raise ValueError(f"{len(ids)} ids for {len(images)} images")
        request = scan_pb2.ClassifyRequest(top_k_prototypes=top_k, include_probabilities=include_probabilities)
        for i, image in enumerate(images):
            request.images.append(to_image_message(image, ids[i] if ids is not None else ""))
        response = self._call("ClassifyUnlabeled", request)
        return [Classification(
            id=r.id, cluster=int(r.cluster), confidence=float(r.confidence), confident=bool(r.confident),
            cluster_name=r.cluster_name,
            probabilities=tuple(r.probabilities) if include_probabilities else None,
            nearest_prototypes=tuple(_prototype(p) for p in r.nearest_prototypes),
            model_version=int(response.model_version),
        ) for r in response.results]

    def model_info(self) -> ModelInfo:
        return self._model_info(self._call("GetModelInfo", scan_pb2.GetModelInfoRequest()))

    @staticmethod
    def _model_info(info: Any) -> ModelInfo:
        return ModelInfo(info.model_name, int(info.model_version), int(info.num_clusters),
                         (int(info.input_channels), int(info.input_height), int(info.input_width)),
                         float(info.confidence_threshold), tuple(info.cluster_names), int(info.embedding_dim),
                         info.backend)

    def prototypes(self, cluster: int) -> list[Prototype]:
        response = self._call("GetPrototypes", scan_pb2.GetPrototypesRequest(cluster=cluster))
        return [_prototype(p) for p in response.prototypes]

    def set_cluster_names(self, names: dict[int, str]) -> ModelInfo:
        """Operator only (needs `token`): name clusters; an empty name removes one."""
        return self._model_info(self._call("SetClusterNames", scan_pb2.SetClusterNamesRequest(names=names),
                                           operator=True))

    def healthy(self) -> bool:
        """True when the gateway's health service says SERVING."""
        from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: PLC0415

        try:
            reply = health_pb2_grpc.HealthStub(self._channel).Check(
                health_pb2.HealthCheckRequest(service="scan.v1.ScanService"), timeout=self.timeout)
        except grpc.RpcError:
            return False
        return reply.status == health_pb2.HealthCheckResponse.SERVING
