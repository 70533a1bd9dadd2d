"""A served model version: the repository files, the prototype index and an inference backend."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import grpc
import numpy as np

from export.errors import ExportError
from export.prototypes import PrototypeIndex
from export.repository import ModelRepository, ModelVersion
from scan_serve.backends import Backend
from scan_serve.errors import ServeError, StartupError
from trainer.atomic import atomic_write_text

NAMES_FILE = "cluster_names.json"


@dataclass
class Predictions:
    clusters: np.ndarray  # (N,) int
    confidence: np.ndarray  # (N,) float32, probability of the assigned cluster
    probs: np.ndarray  # (N, K)
    embedding: np.ndarray  # (N, D) unit norm
    nearest_similarity: np.ndarray  # (N, k) float32
    nearest_rows: np.ndarray  # (N, k) rows of the prototype index (-1: none)


class ServedVersion:
    """One published version, ready to answer: metadata, prototypes and a backend."""

    def __init__(self, version: ModelVersion, backend: Backend) -> None:
        self.version = version
        self.backend = backend
        meta = version.metadata
        try:
            self.prototypes = PrototypeIndex.load(version.path)
            self.channels = int(meta["input"]["channels"])
            self.size = int(meta["input"]["height"])
            self.num_clusters = int(meta["num_clusters"])
            self.embedding_dim = int(meta["embedding_dim"])
            self.threshold = float(meta["confidence_threshold"])
        except (OSError, KeyError, ValueError, ExportError) as exc:
            raise StartupError(f"{version.path} is not a servable version ({type(exc).__name__}: {exc})") from exc
        counts = np.bincount(self.prototypes.cluster, minlength=self.num_clusters)
        self.prototypes_per_cluster = int(counts.max()) if len(counts) else 0
        self._inflight = 0
        self._retired = False
        self._state = threading.Condition()
        if int(meta["input"]["width"]) != self.size:
            raise StartupError(f"{version.path}: only square inputs are served, metadata says "
                               f"{meta['input']['width']}x{self.size}")
        self._check_graph(backend.graph_shapes())

    def _check_graph(self, shapes: Optional[dict[str, tuple]]) -> None:
        """Refuse a version whose metadata or prototypes disagree with its graph (they would answer wrongly)."""
        expected = {"images": (self.channels, self.size, self.size), "probs": (self.num_clusters,),
                    "embedding": (self.embedding_dim,)}
        if self.prototypes.embeddings.shape[1] != self.embedding_dim and len(self.prototypes.embeddings):
            raise StartupError(f"{self.version.path}: the prototypes have {self.prototypes.embeddings.shape[1]} "
                               f"dimensions, metadata.json says embedding_dim {self.embedding_dim}")
        for name, want in expected.items() if shapes is not None else ():
            got = shapes.get(name)
            if got is None or len(got) != len(want) or any(isinstance(g, int) and g != w for g, w in zip(got, want)):
                raise StartupError(f"{self.version.path}: model.onnx's {name!r} is {got} per image, metadata.json "
                                   f"says {want}; the version is inconsistent (re-export it)")

    @property
    def name(self) -> str:
        return self.version.name

    # A version being replaced keeps its backend until the requests that started on it are done.

    def enter(self) -> None:
        with self._state:
            self._inflight += 1

    def leave(self) -> None:
        with self._state:
            self._inflight -= 1
            close = self._retired and self._inflight == 0
        if close:
            self.backend.close()

    def retire(self) -> None:
        with self._state:
            self._retired = True
            close = self._inflight == 0
        if close:
            self.backend.close()

    @property
    def number(self) -> int:
        return self.version.version


    def predict(self, images: np.ndarray, top_k: int, observe_backend: Callable[[float], None]) -> Predictions:
        """`images (N, C, H, W)` uint8 -> predictions with the `top_k` nearest prototypes."""
        start = time.perf_counter()
        probs, embedding = self.backend.infer(images)
        observe_backend(time.perf_counter() - start)
        clusters = probs.argmax(axis=1)
        confidence = probs[np.arange(len(probs)), clusters]
        if top_k > 0:
            similarity, rows = self.prototypes.search(embedding, top_k)
        else:
            similarity, rows = np.zeros((len(probs), 0), np.float32), np.zeros((len(probs), 0), np.int64)
        return Predictions(clusters, confidence, probs, embedding, similarity, rows)


def load_version(repository: ModelRepository, model_name: str, version: Optional[int],
                 make_backend: Callable[[ModelVersion], Backend], log: Callable[[str], None] = print) -> ServedVersion:
    """The version to serve: `version`, or the newest one whose files are intact.

    A pinned version that is missing or corrupt stops the start; without a pin, a corrupt newest
    version is skipped (and said so) in favour of the newest intact one.
    """
    try:
        available = repository.versions(model_name)
    except ExportError as exc:
        raise StartupError(str(exc)) from exc
    if not available:
        raise StartupError(f"no published version of model {model_name!r} in {repository.root} "
                           "(run scan-export first, or check --repository and --model-name)")
    candidates = [version] if version is not None else list(reversed(available))
    problems = []
    for number in candidates:
        try:
            published = repository.load(model_name, number, verify=True)
            return ServedVersion(published, make_backend(published))
        except (ExportError, StartupError) as exc:
            if version is not None:
                raise StartupError(str(exc)) from exc
            problems.append(str(exc))
            log(f"skipping {model_name} version {number}: {exc}")
    raise StartupError(f"no intact version of {model_name!r} in {repository.root}: {'; '.join(problems)}")


class ClusterNames:
    """Operator-given cluster names, `<repository>/<model>/cluster_names.json`, shared by every version."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._names: dict[int, str] = {}
        if self.path.exists():
            try:
                stored = json.loads(self.path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise StartupError(f"{self.path} cannot be read ({exc}); fix or remove it") from exc
            names = stored.get("names") if isinstance(stored, dict) else None
            if not isinstance(names, dict) or not all(
                    isinstance(k, str) and k.isascii() and k.isdigit() and isinstance(v, str) for k, v in names.items()):
                raise StartupError(f'{self.path} is not {{"names": {{"<cluster number>": "<name>", ...}}}}; '
                                   "fix or remove it")
            self._names = {int(k): v for k, v in names.items() if v}

    def get(self, cluster: int) -> str:
        return self._names.get(cluster, "")

    def all(self, num_clusters: int) -> list[str]:
        return [self.get(k) for k in range(num_clusters)]

    def update(self, names: dict[int, str]) -> None:
        """Merge `names` in and write the file; the model folder must still exist (it is never re-created)."""
        with self._lock:
            merged = dict(self._names)
            for cluster, name in names.items():
                if name:
                    merged[int(cluster)] = name
                else:
                    merged.pop(int(cluster), None)
            text = json.dumps({"names": {str(k): v for k, v in sorted(merged.items())}}, indent=1) + "\n"
            try:
                if not self.path.parent.is_dir():
                    raise FileNotFoundError(f"{self.path.parent} is gone")
                atomic_write_text(self.path, text)
            except OSError as exc:
                raise ServeError(f"the names were not saved: the model folder {self.path.parent} cannot be written "
                                 f"({exc}); restore the repository", grpc.StatusCode.FAILED_PRECONDITION) from exc
            self._names = merged
