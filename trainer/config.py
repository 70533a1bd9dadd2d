"""Typed run configuration: one frozen dataclass per stage, loaded from YAML presets.

Loading has no side effects (no directories are created). Unknown keys and values of the
wrong type are rejected with a `ConfigError` that names the dotted key, e.g.
``pretext.batch_size: expected int, got str 'big'``.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import yaml

from trainer.errors import ConfigError

AUTO = "auto"  # scan.num_clusters: chosen by the K search
DATASET_NAMES = ("fashion_mnist", "cifar10", "cifar100_20", "stl10", "folder", "imagenet")


@dataclass(frozen=True)
class DataConfig:
    """Which images to train on. Labels, where a data set has them, are used only to evaluate."""

    name: str = "fashion_mnist"
    root: Optional[str] = None  # data directory; each reader documents its default
    image_size: Optional[int] = None  # None: the data set's native size (folder/imagenet: required)
    channels: Optional[int] = None  # None: native (1 for Fashion-MNIST, 3 otherwise)
    train_subset: Optional[int] = None  # use a seeded random subset of this many training images
    test_subset: Optional[int] = None
    download: bool = True  # try to download a missing standard data set when the network allows
    stl10_unlabeled: bool = True  # STL-10: add the 100k unlabeled images to the training split
    class_list: Optional[str] = None  # imagenet: file with one class folder name per line
    test_root: Optional[str] = None  # folder/imagenet: optional held-out folder for evaluation
    in_memory: Optional[bool] = None  # None: decode into memory when it fits the budget below
    in_memory_max_gb: float = 4.0
    num_workers: int = 2  # DataLoader workers for sets decoded lazily
    mean: Optional[tuple[float, ...]] = None  # None: the data set's usual statistics
    std: Optional[tuple[float, ...]] = None

    def __post_init__(self) -> None:
        if self.name not in DATASET_NAMES:
            raise ConfigError(f"data.name: unknown data set {self.name!r}; choose one of {', '.join(DATASET_NAMES)}")
        if self.image_size is not None and not 8 <= self.image_size <= 1024:
            raise ConfigError(f"data.image_size: {self.image_size} is outside 8..1024")
        if self.channels not in (None, 1, 3):
            raise ConfigError(f"data.channels: must be 1 or 3, got {self.channels}")
        for key in ("train_subset", "test_subset"):
            value = getattr(self, key)
            if value is not None and value <= 0:
                raise ConfigError(f"data.{key}: must be positive, got {value}")
        if self.name in ("folder", "imagenet") and not self.root:
            raise ConfigError(f"data.root: the {self.name!r} data set needs a folder (--set data.root=PATH)")
        if (self.mean is None) != (self.std is None):
            raise ConfigError("data.mean and data.std: set both or neither")


@dataclass(frozen=True)
class ModelConfig:
    backbone: str = "resnet18_cifar"  # resnet18_cifar | resnet18 | resnet50 | convnet
    width: int = 64  # channels of the first stage; 64 is the standard ResNet
    projection_dim: int = 128
    projection_hidden: Optional[int] = None  # None: the backbone's feature size
    pretrained: Optional[str] = None  # path to backbone weights (torchvision or SCAN/SimCLR layout)
    # under torchrun: "global" normalizes with statistics of the global batch (as one process would);
    # "local" with each process's share only (no communication per layer: faster, not single-process exact)
    batchnorm: str = "global"

    def __post_init__(self) -> None:
        if self.batchnorm not in ("global", "local"):
            raise ConfigError(f"model.batchnorm: expected global or local, got {self.batchnorm!r}")
        if self.width < 4:
            raise ConfigError(f"model.width: must be at least 4, got {self.width}")
        if self.projection_dim < 1:
            raise ConfigError(f"model.projection_dim: must be positive, got {self.projection_dim}")


@dataclass(frozen=True)
class AugmentConfig:
    """SimCLR, weak and strong augmentation parameters (see trainer.augment)."""

    crop_scale: tuple[float, float] = (0.2, 1.0)
    flip_p: float = 0.5
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1)  # brightness, contrast, saturation, hue
    jitter_p: float = 0.8
    grayscale_p: float = 0.2
    # Strong (RandAugment-style) views. Defaults are the SCAN reference magnitudes: every magnitude is
    # drawn uniformly per sample and operation within its range.
    strong_ops: int = 4  # operations per image, each drawn uniformly from trainer.augment.STRONG_OPS
    strong_rotate: float = 30.0  # rotate by up to +- this many degrees
    strong_shear: float = 0.1  # shear_x / shear_y by up to +- this factor
    strong_translate: float = 0.1  # translate_x / translate_y by up to +- this fraction of the side
    strong_enhance: tuple[float, float] = (0.05, 0.95)  # brightness/contrast/color/sharpness factor range
    strong_posterize_bits: tuple[int, int] = (4, 8)  # bits kept by posterize
    cutout_fraction: float = 0.5  # largest Cutout side as a fraction of the image side (16 px on 32 px)

    def __post_init__(self) -> None:
        lo, hi = self.crop_scale
        if not 0 < lo <= hi <= 1:
            raise ConfigError(f"augment.crop_scale: need 0 < low <= high <= 1, got {self.crop_scale}")
        for key in ("flip_p", "jitter_p", "grayscale_p", "cutout_fraction", "strong_translate"):
            value = getattr(self, key)
            if not 0 <= value <= 1:
                raise ConfigError(f"augment.{key}: must be within [0, 1], got {value}")
        if any(v < 0 for v in self.jitter):
            raise ConfigError(f"augment.jitter: factors must not be negative, got {self.jitter}")
        if self.strong_ops < 0:
            raise ConfigError(f"augment.strong_ops: must not be negative, got {self.strong_ops}")
        if not 0 <= self.strong_rotate <= 180:
            raise ConfigError(f"augment.strong_rotate: must be within [0, 180] degrees, got {self.strong_rotate}")
        if not 0 <= self.strong_shear <= 1:
            raise ConfigError(f"augment.strong_shear: must be within [0, 1], got {self.strong_shear}")
        lo, hi = self.strong_enhance
        if not 0 <= lo <= hi:
            raise ConfigError(f"augment.strong_enhance: need 0 <= low <= high, got {self.strong_enhance}")
        lo, hi = self.strong_posterize_bits
        if not 1 <= lo <= hi <= 8:
            raise ConfigError(f"augment.strong_posterize_bits: need 1 <= low <= high <= 8, got "
                              f"{self.strong_posterize_bits}")


@dataclass(frozen=True)
class PretextConfig:
    """SimCLR instance discrimination. Defaults are the SCAN reference settings for CIFAR-10."""

    epochs: int = 500
    batch_size: int = 512
    lr: float = 0.4
    momentum: float = 0.9
    weight_decay: float = 1e-4
    nesterov: bool = False
    temperature: float = 0.1
    lr_decay_rate: float = 0.1  # cosine schedule ends at lr * lr_decay_rate**3
    warmup_epochs: int = 0
    channels_last: Optional[bool] = None  # None: on for CUDA, off for CPU
    compile: bool = False  # torch.compile the model

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ConfigError(f"pretext.epochs: must be at least 1, got {self.epochs}")
        if self.batch_size < 2:
            raise ConfigError(f"pretext.batch_size: NT-Xent needs at least 2 images per batch, got {self.batch_size}")
        if self.temperature <= 0:
            raise ConfigError(f"pretext.temperature: must be positive, got {self.temperature}")
        if self.lr <= 0:
            raise ConfigError(f"pretext.lr: must be positive, got {self.lr}")


@dataclass(frozen=True)
class NeighborsConfig:
    k: int = 20
    batch_size: int = 512
    feature: str = "projection"  # projection (SimCLR head output) | backbone
    faiss_gpu: Optional[bool] = None  # None: use a GPU index when faiss has GPU support and the device is CUDA
    kmeans_clusters: Optional[int] = None  # k-means baseline on the features; None: number of classes (if known)

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ConfigError(f"neighbors.k: must be at least 1, got {self.k}")
        if self.feature not in ("projection", "backbone"):
            raise ConfigError(f"neighbors.feature: must be 'projection' or 'backbone', got {self.feature!r}")


@dataclass(frozen=True)
class ScanConfig:
    """SCAN clustering: several linear heads on the pretext backbone, the lowest-loss head is kept."""

    # An integer, or "auto": the K search (trainer/ksearch.py, stage k_selection) tries every K in
    # k_range on the cached pretext features and chooses one without labels.
    num_clusters: Union[int, str] = 10
    k_range: tuple[int, int] = (2, 20)  # the candidates of num_clusters: auto, both ends included
    num_heads: int = 10
    epochs: int = 50
    batch_size: int = 128
    lr: float = 1e-4
    weight_decay: float = 1e-4
    entropy_weight: float = 5.0
    update: str = "full"  # full: backbone and heads | head: heads only, backbone frozen
    augment: str = "weak"  # weak | strong | none (none + update=head trains on cached features: fastest)

    def __post_init__(self) -> None:
        if isinstance(self.num_clusters, str):
            if self.num_clusters != AUTO:
                raise ConfigError(f"scan.num_clusters: must be an integer or {AUTO!r}, got {self.num_clusters!r}")
        elif self.num_clusters < 2:
            raise ConfigError(f"scan.num_clusters: need at least 2 clusters, got {self.num_clusters}")
        low, high = self.k_range
        if low < 2:
            raise ConfigError(f"scan.k_range: the smallest K must be at least 2, got [{low}, {high}]")
        if low > high:
            raise ConfigError(f"scan.k_range: the smallest K is above the largest, got [{low}, {high}]")
        if self.num_heads < 1:
            raise ConfigError(f"scan.num_heads: need at least 1 head, got {self.num_heads}")
        if self.epochs < 1:
            raise ConfigError(f"scan.epochs: must be at least 1, got {self.epochs}")
        if self.batch_size < 2:
            raise ConfigError(f"scan.batch_size: the entropy term needs at least 2 images, got {self.batch_size}")
        if self.update not in ("full", "head"):
            raise ConfigError(f"scan.update: must be 'full' or 'head', got {self.update!r}")
        if self.augment not in ("weak", "strong", "none"):
            raise ConfigError(f"scan.augment: must be 'weak', 'strong' or 'none', got {self.augment!r}")
        if self.entropy_weight < 0:
            raise ConfigError(f"scan.entropy_weight: must not be negative, got {self.entropy_weight}")


@dataclass(frozen=True)
class SelfLabelConfig:
    """Self-labeling on confident predictions, guarded against collapse (see trainer.health)."""

    enabled: bool = True
    epochs: int = 200
    batch_size: int = 1000
    lr: float = 1e-4
    weight_decay: float = 1e-4
    threshold: float = 0.99  # max probability above which a prediction becomes a pseudo-label
    class_balance: bool = True
    ema: Optional[float] = None  # e.g. 0.999: also average the weights (EMA); the average is evaluated and kept
    # Who makes the pseudo-labels: `ema`, an exponential moving average of the weights (decay
    # teacher_decay per step); `epoch`, the model as it was when the epoch began; or `live`, the
    # model being trained (the paper). A live teacher feeds its own drift back into its labels
    # within the epoch: with strong views it collapsed (README, "Self-labeling: what was measured").
    teacher: str = "ema"
    teacher_decay: float = 0.999
    update: str = "full"  # full | head
    augment: str = "strong"  # views the pseudo-labels are learned on: strong (the paper) | weak
    # The collapse guard: an epoch that fails any of these ends the stage and the best
    # earlier state (the SCAN model if none) is kept.
    guard_min_agreement: float = 0.6  # argmax agreement with the starting model, on the training images
    guard_entropy_drop: float = 0.05  # allowed drop of the normalized cluster-size entropy
    guard_min_cluster_share: float = 0.1  # a cluster counts as populated above this share of N / clusters

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ConfigError(f"selflabel.epochs: must be at least 1, got {self.epochs}")
        if self.batch_size < 2:
            raise ConfigError(f"selflabel.batch_size: must be at least 2, got {self.batch_size}")
        if not 0 < self.threshold < 1:
            raise ConfigError(f"selflabel.threshold: must be within (0, 1), got {self.threshold}")
        if self.ema is not None and not 0 < self.ema < 1:
            raise ConfigError(f"selflabel.ema: must be within (0, 1), got {self.ema}")
        if self.teacher not in ("epoch", "ema", "live"):
            raise ConfigError(f"selflabel.teacher: must be 'epoch', 'ema' or 'live', got {self.teacher!r}")
        if not 0 < self.teacher_decay < 1:
            raise ConfigError(f"selflabel.teacher_decay: must be within (0, 1), got {self.teacher_decay}")
        if self.update not in ("full", "head"):
            raise ConfigError(f"selflabel.update: must be 'full' or 'head', got {self.update!r}")
        if self.augment not in ("strong", "weak"):
            raise ConfigError(f"selflabel.augment: must be 'strong' or 'weak', got {self.augment!r}")
        for key in ("guard_min_agreement", "guard_entropy_drop", "guard_min_cluster_share"):
            value = getattr(self, key)
            if not 0 <= value <= 1:
                raise ConfigError(f"selflabel.{key}: must be within [0, 1], got {value}")


@dataclass(frozen=True)
class ReportConfig:
    prototypes: int = 8  # prototypes per cluster in the grid and the saved ids
    confident_share: float = 0.2  # the cluster's most confident share defines its mean embedding
    baselines: bool = True  # k-means on pixels / pretext features vs the model, label-free (trainer.baselines)
    baselines_max_images: int = 10_000  # measure the baselines on a seeded subset of at most this many images

    def __post_init__(self) -> None:
        if self.baselines_max_images < 100:
            raise ConfigError(f"report.baselines_max_images: must be at least 100, got {self.baselines_max_images}")


@dataclass(frozen=True)
class RunConfig:
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    pretext: PretextConfig = field(default_factory=PretextConfig)
    neighbors: NeighborsConfig = field(default_factory=NeighborsConfig)
    scan: ScanConfig = field(default_factory=ScanConfig)
    selflabel: SelfLabelConfig = field(default_factory=SelfLabelConfig)
    report: ReportConfig = field(default_factory=ReportConfig)

    def to_dict(self) -> dict[str, Any]:
        return _to_plain(dataclasses.asdict(self))


def _to_plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_plain(v) for v in value]
    return value


# ---------------------------------------------------------------- building from plain data


def _describe(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Check `value` against the type hint `hint`; return it converted (lists to tuples, ints to floats)."""
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise errors[0] if len(errors) == 1 else ConfigError(f"{key}: {_describe(value)} matches none of {hint}")
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {_describe(value)}")
        return _build(hint, value, key)
    if origin is tuple:
        args = typing.get_args(hint)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {_describe(value)}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{key}: expected a list of {len(args)} values, got {len(value)}")
        return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {_describe(value)}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {_describe(value)}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{key}: expected a number, got {_describe(value)}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {_describe(value)}")
    raise ConfigError(f"{key}: unsupported type {hint}")  # pragma: no cover - programming error


def _build(cls: type, values: dict[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(
            f"unknown configuration key {where}{unknown[0]}; valid keys{' under ' + prefix if prefix else ''}: "
            + ", ".join(sorted(names))
        )
    kwargs = {}
    for name, value in values.items():
        key = f"{prefix}.{name}" if prefix else name
        kwargs[name] = _coerce(value, hints[name], key)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{prefix or 'config'}: {exc}") from exc


def _parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected key=value, e.g. pretext.epochs=10")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {text!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {key}: cannot parse value {raw!r}: {exc}") from exc
    return key.split("."), value


def _apply_override(tree: dict[str, Any], path: list[str], value: Any, cls: type) -> None:
    node, node_cls = tree, cls
    for depth, part in enumerate(path):
        fields = {f.name: f for f in dataclasses.fields(node_cls)}
        dotted = ".".join(path[: depth + 1])
        if part not in fields:
            raise ConfigError(f"unknown configuration key {dotted}; valid keys here: {', '.join(sorted(fields))}")
        if depth == len(path) - 1:
            node[part] = value
            return
        child_cls = typing.get_type_hints(node_cls)[part]
        if not dataclasses.is_dataclass(child_cls):
            raise ConfigError(f"{dotted} is a value, not a section")
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{dotted}: expected a mapping in the preset")
        node_cls = child_cls


def config_from_dict(
    values: dict[str, Any], overrides: list[str] = (), planned: Optional[dict[str, Any]] = None
) -> RunConfig:
    """Build a RunConfig from plain data plus `key=value` overrides (values parsed as YAML).

    `planned` maps dotted keys to values chosen by a planning step (e.g. `trainer.data.plan`); they
    are applied before the overrides, so a `--set` always wins.
    """
    tree = _to_plain(values or {})
    if not isinstance(tree, dict):
        raise ConfigError(f"configuration must be a mapping, got {_describe(values)}")
    for key, value in (planned or {}).items():
        _apply_override(tree, key.split("."), _to_plain(value), RunConfig)
    for text in overrides:
        path, value = _parse_override(text)
        _apply_override(tree, path, value, RunConfig)
    return _build(RunConfig, tree)


def _read_preset(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read configuration {path}: {exc.strerror}") from exc
    try:
        values = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return values


def load_config(path: str | Path, overrides: list[str] = (), planned: Optional[dict[str, Any]] = None) -> RunConfig:
    """Read a YAML preset and apply `planned` values, then overrides. Raises ConfigError naming the offending key."""
    path = Path(path)
    values = _read_preset(path)
    try:
        return config_from_dict(values, overrides, planned)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc


def explicit_keys(path: str | Path, overrides: list[str] = ()) -> frozenset[str]:
    """The dotted keys the preset at `path` sets to a value other than null (null in a preset means
    "not set"), or an override sets: a planning step leaves them alone."""

    def leaves(tree: dict[str, Any], prefix: str) -> list[str]:
        out = []
        for key, value in tree.items():
            dotted = f"{prefix}{key}"
            if isinstance(value, dict):
                out += leaves(value, dotted + ".")
            elif value is not None:
                out.append(dotted)
        return out

    keys = set(leaves(_read_preset(Path(path)), ""))
    for text in overrides:
        path_parts, value = _parse_override(text)
        dotted = ".".join(path_parts)
        keys |= {f"{dotted}.{leaf}" for leaf in leaves(value, "")} if isinstance(value, dict) else {dotted}
    return frozenset(keys)


def dump_config(config: RunConfig) -> str:
    return yaml.safe_dump(config.to_dict(), sort_keys=False)
