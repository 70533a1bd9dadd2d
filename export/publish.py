"""Publish one model (a `ScanModel` with one cluster head) as a new version of a repository model.

This is the single path every version goes through: `scan-export` on a training run, and later the
gateway's fine-tuning jobs. Order of work, all inside the version's staging folder:
ONNX trace -> parity check on real images -> prototype embeddings by the ONNX graph + faiss index
-> fine-tuning weights -> config.pbtxt (model level) -> metadata with file hashes -> rename into place.
Nothing becomes visible unless every step succeeded.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from export.errors import ExportError, RepositoryError, VersionExistsError
from export.graph import OPSET, ServedModel, check_parity, describe_parity, export_onnx
from export.session import onnx_session, run_session
from export.prototypes import PrototypeIndex, PrototypeSelection
from export.repository import CONFIG_FILE, FINETUNE_FILE, MODEL_FILE, ModelRepository, ModelVersion
from export.triton_config import TritonModelConfig, read_config, signature
from trainer.atomic import atomic_torch_save, atomic_write_text
from trainer.models.scan_model import ScanModel

METADATA_FORMAT = "scan-model-version/1"


@dataclass(frozen=True)
class TritonOptions:
    """How Triton should run the model (written to config.pbtxt)."""

    max_batch_size: int = 64
    instance_kind: str = "auto"
    instance_count: int = 1
    preferred_batch_sizes: tuple[int, ...] = field(default=())
    max_queue_delay_us: int = 500
    keep_versions: int = 1


@dataclass(frozen=True)
class ExportInputs:
    """Everything a version is made of besides the model weights."""

    image_size: int
    parity_images: np.ndarray  # (N, C, H, W) uint8, real images the model is checked on
    prototypes: PrototypeSelection
    prototype_images: np.ndarray  # (M, C, H, W) uint8, the images of prototypes.flat_ids, in that order
    threshold: float  # confidence above which a prediction is flagged `confident`
    source: dict[str, Any]  # where the model came from (run, stage, head, its report)
    training_config: dict[str, Any]  # the run configuration, for fine-tuning this version further
    data_fingerprint: str = ""
    cluster_names: Optional[Sequence[Optional[str]]] = None


def export_model(
    model: ScanModel,
    inputs: ExportInputs,
    repository: ModelRepository,
    model_name: str,
    version: Optional[int] = None,
    triton: TritonOptions = TritonOptions(),
    parity_batch_sizes: Sequence[int] = (1, 64),
    tolerance: Optional[dict[str, float]] = None,
    log: Callable[[str], None] = lambda _: None,
) -> ModelVersion:
    """Export `model` as `version` (None: the next free number) of `model_name`; returns the published version."""
    served = ServedModel(model.cpu().eval())
    channels = model.in_channels
    num_clusters = model.cluster_heads.num_clusters
    _check_images(inputs.parity_images, channels, inputs.image_size, "parity images")
    _check_images(inputs.prototype_images, channels, inputs.image_size, "prototype images")
    if not 0 < inputs.threshold < 1:
        raise ExportError(f"the confidence threshold must be within (0, 1), got {inputs.threshold}")
    names = list(inputs.cluster_names) if inputs.cluster_names is not None else [None] * num_clusters
    if len(names) != num_clusters:
        raise ExportError(f"{len(names)} cluster names for {num_clusters} clusters")
    config = TritonModelConfig(name=model_name, channels=channels, image_size=inputs.image_size,
                               num_clusters=num_clusters, embedding_dim=model.feature_dim, **asdict(triton))

    version = resolve_version(repository, model_name, version, log)
    config_path = repository.model_dir(model_name) / CONFIG_FILE
    if config_path.exists():
        existing = signature(read_config(config_path))
        if existing != signature(config.to_proto()):
            raise RepositoryError(
                f"{config_path} describes tensors {existing}, this model has {signature(config.to_proto())}: "
                "versions of one model must share input and output shapes; use another --model-name"
            )

    def fill(staging: Path) -> dict[str, Any]:
        log(f"tracing the ONNX graph ({channels}x{inputs.image_size}x{inputs.image_size} uint8 -> "
            f"{num_clusters} probs + {model.feature_dim}-d embedding)")
        export_onnx(served, staging / MODEL_FILE, channels, inputs.image_size)
        session = onnx_session(staging / MODEL_FILE)
        parity = check_parity(session, served, inputs.parity_images, parity_batch_sizes, tolerance)
        log(f"parity: {describe_parity(parity)}")
        _, embeddings = run_session(session, inputs.prototype_images)
        index = PrototypeIndex.build(inputs.prototypes, embeddings)
        index.save(staging)
        atomic_torch_save(staging / FINETUNE_FILE, {
            "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "model_args": model.model_args(),
            "config": inputs.training_config,
            "data_fingerprint": inputs.data_fingerprint,
            "chosen_head": 0,
        })
        atomic_write_text(config_path, config.to_text())
        return _metadata(model_name, model, inputs, num_clusters, names, parity, index, config)

    published = repository.publish(model_name, version, fill)
    log(f"published {model_name} version {version} at {published.path}")
    return published


def triton_options_of(metadata: dict[str, Any]) -> TritonOptions:
    """The Triton settings a published version was exported with (defaults for what it does not record)."""
    recorded = dict(metadata.get("triton", {}))
    if "preferred_batch_sizes" in recorded:
        recorded["preferred_batch_sizes"] = tuple(recorded["preferred_batch_sizes"])
    known = {k: v for k, v in recorded.items() if k in TritonOptions.__dataclass_fields__}
    return TritonOptions(**known)


def resolve_version(
    repository: ModelRepository, model_name: str, version: Optional[int], log: Callable[[str], None] = lambda _: None
) -> int:
    """Fail fast before any work: the repository is writable and `version` (None: next) is free."""
    repository.ensure_writable(model_name)
    for stale in repository.remove_stale_staging(model_name):
        log(f"removed {stale.name}, left by an export that did not finish")
    if version is None:
        return repository.next_version(model_name)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ExportError(f"--model-version must be a positive integer or 'next', got {version!r}")
    if version in repository.versions(model_name):
        raise VersionExistsError(f"{model_name} version {version} already exists in {repository.root}; "
                                 "use --model-version next or another number")
    return version


def _check_images(images: np.ndarray, channels: int, size: int, what: str) -> None:
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4:
        raise ExportError(f"{what}: expected a uint8 array (N, C, H, W), got {getattr(images, 'dtype', type(images))} "
                          f"{getattr(images, 'shape', '')}")
    if images.shape[1:] != (channels, size, size):
        raise ExportError(f"{what}: expected images of shape ({channels}, {size}, {size}), got {images.shape[1:]}")


def _metadata(name: str, model: ScanModel, inputs: ExportInputs, num_clusters: int, names: list, parity: dict,
              index: PrototypeIndex, config: TritonModelConfig) -> dict[str, Any]:
    import onnxruntime  # noqa: PLC0415
    import torch  # noqa: PLC0415

    per_cluster = [int((index.cluster == k).sum()) for k in range(num_clusters)]
    return {
        "format": METADATA_FORMAT,
        "model_name": name,
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "input": {"name": "images", "dtype": "uint8", "layout": "NCHW", "channels": model.in_channels,
                  "height": inputs.image_size, "width": inputs.image_size},
        "outputs": {"probs": [num_clusters], "embedding": [model.feature_dim]},
        "num_clusters": num_clusters,
        "embedding_dim": model.feature_dim,
        "confidence_threshold": float(inputs.threshold),
        "cluster_names": names,
        "preprocessing": "trainer.decode.decode_to_array: EXIF orientation, alpha onto white, "
                         f"{'L' if model.in_channels == 1 else 'RGB'}, shorter side to {inputs.image_size} "
                         "(bicubic, antialiased), centre crop",
        "source": inputs.source,
        "parity": parity,
        "prototypes": {"count": len(index), "per_cluster": per_cluster,
                       "empty_clusters": [k for k, n in enumerate(per_cluster) if n == 0]},
        "triton": {"max_batch_size": config.max_batch_size, "instance_kind": config.instance_kind,
                   "instance_count": config.instance_count, "keep_versions": config.keep_versions,
                   "preferred_batch_sizes": list(config.preferred_batch_sizes),
                   "max_queue_delay_us": config.max_queue_delay_us},
        "exporter": {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__, "opset": OPSET},
    }
