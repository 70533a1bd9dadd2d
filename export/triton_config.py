"""`config.pbtxt` for a model in a Triton repository, built with Triton's own schema.

The text is produced by `google.protobuf.text_format` from
`tritonclient.grpc.model_config_pb2.ModelConfig`, so a field Triton does not know cannot be
written, and `parse_config` reads a file back into the same message (tests round-trip it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from export.errors import ExportError, RepositoryError
from export.session import INPUT_NAME, OUTPUT_NAMES

INSTANCE_KINDS = ("auto", "cpu", "gpu")


def _schema() -> Any:
    try:
        from tritonclient.grpc import model_config_pb2  # noqa: PLC0415 - optional heavy dependency
    except ImportError:
        raise ExportError("tritonclient is not installed (pip install 'tritonclient[grpc]', or scripts/install.sh)") from None
    return model_config_pb2


@dataclass(frozen=True)
class TritonModelConfig:
    """What goes into `config.pbtxt`; one method per section of the file."""

    name: str
    channels: int
    image_size: int
    num_clusters: int
    embedding_dim: int
    max_batch_size: int = 64
    instance_kind: str = "auto"  # auto (GPU when Triton has one) | cpu | gpu
    instance_count: int = 1
    preferred_batch_sizes: tuple[int, ...] = field(default=())  # () -> Triton's own choice
    max_queue_delay_us: int = 500
    keep_versions: int = 1  # version_policy: serve the newest N versions

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ExportError(f"max_batch_size must be at least 1, got {self.max_batch_size}")
        if self.instance_kind not in INSTANCE_KINDS:
            raise ExportError(f"instance kind must be one of {INSTANCE_KINDS}, got {self.instance_kind!r}")
        if self.instance_count < 1:
            raise ExportError(f"instance count must be at least 1, got {self.instance_count}")
        if self.keep_versions < 1:
            raise ExportError(f"keep_versions must be at least 1, got {self.keep_versions}")
        if self.max_queue_delay_us < 0:
            raise ExportError(f"max_queue_delay_us must not be negative, got {self.max_queue_delay_us}")
        bad = [b for b in self.preferred_batch_sizes if not 1 <= b <= self.max_batch_size]
        if bad:
            raise ExportError(f"preferred batch sizes {bad} are outside 1..max_batch_size={self.max_batch_size}")

    # ------------------------------------------------------------------ sections

    def _io(self, config: Any, pb: Any) -> None:
        config.input.add(name=INPUT_NAME, data_type=pb.TYPE_UINT8, format=pb.ModelInput.FORMAT_NCHW,
                         dims=[self.channels, self.image_size, self.image_size])
        probs, embedding = OUTPUT_NAMES
        config.output.add(name=probs, data_type=pb.TYPE_FP32, dims=[self.num_clusters])
        config.output.add(name=embedding, data_type=pb.TYPE_FP32, dims=[self.embedding_dim])

    def _dynamic_batching(self, config: Any) -> None:
        config.dynamic_batching.max_queue_delay_microseconds = self.max_queue_delay_us
        config.dynamic_batching.preferred_batch_size.extend(self.preferred_batch_sizes)

    def _instance_group(self, config: Any, pb: Any) -> None:
        kind = {"auto": pb.ModelInstanceGroup.KIND_AUTO, "cpu": pb.ModelInstanceGroup.KIND_CPU,
                "gpu": pb.ModelInstanceGroup.KIND_GPU}[self.instance_kind]
        config.instance_group.add(kind=kind, count=self.instance_count)

    def _version_policy(self, config: Any) -> None:
        config.version_policy.latest.num_versions = self.keep_versions

    # ------------------------------------------------------------------ whole file

    def to_proto(self) -> Any:
        pb = _schema()
        config = pb.ModelConfig(name=self.name, platform="onnxruntime_onnx",
                                max_batch_size=self.max_batch_size, default_model_filename="model.onnx")
        self._io(config, pb)
        self._dynamic_batching(config)
        self._instance_group(config, pb)
        self._version_policy(config)
        return config

    def to_text(self) -> str:
        from google.protobuf import text_format  # noqa: PLC0415

        return text_format.MessageToString(self.to_proto())


def parse_config(text: str) -> Any:
    """`config.pbtxt` text -> `ModelConfig`; a field outside Triton's schema is a `RepositoryError`."""
    from google.protobuf import text_format  # noqa: PLC0415

    try:
        return text_format.Parse(text, _schema().ModelConfig())
    except text_format.ParseError as exc:
        raise RepositoryError(f"config.pbtxt is not a valid Triton model configuration: {exc}") from exc


def read_config(path: Path) -> Any:
    return parse_config(Path(path).read_text())


def signature(config: Any) -> dict[str, list[int]]:
    """Tensor name -> dims: what every version under one config must agree on."""
    return {t.name: list(t.dims) for t in (*config.input, *config.output)}
