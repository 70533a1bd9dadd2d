"""The prototype index of a model version: a few central training images per cluster, searchable.

Files in the version folder:
```
prototypes.npz    embeddings (M, D) float32 unit-norm, cluster (M,), image_id (M,), rank (M,),
                  similarity_to_center (M,), centers (K, D)
prototypes.json   per cluster: image ids, where each came from (file path or data set index), similarity
prototypes.faiss  faiss inner-product index over `embeddings`; search row i <-> the arrays' row i
```
The embeddings are computed by the exported ONNX graph itself, so a served query and a prototype
are compared in exactly the same space.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from export.errors import ExportError
from trainer.atomic import atomic_write, atomic_write_text
from trainer.prototypes import find_prototypes


@dataclass(frozen=True)
class PrototypeSelection:
    """Which training images are prototypes (before they are embedded by the exported graph)."""

    ids: list[list[int]]  # per cluster, most central first; an empty list for an empty cluster
    similarity: list[list[float]]  # cosine similarity of each to its cluster center
    sources: list[list[str]]  # per cluster, what each id refers to (a path or "dataset[index]")
    centers: np.ndarray  # (K, D) cluster centers (zero rows for empty clusters)

    @classmethod
    def from_predictions(
        cls, probs: np.ndarray, embeddings: np.ndarray, sources: Any, per_cluster: int, confident_share: float
    ) -> "PrototypeSelection":
        """Select with `trainer.prototypes.find_prototypes`; `sources(i)` names image i."""
        ids, centers, sims = find_prototypes(probs, embeddings, per_cluster, confident_share)
        return cls(ids, sims, [[sources(i) for i in row] for row in ids], centers)

    @classmethod
    def from_run_files(cls, stage_dir: Path) -> "PrototypeSelection":
        """What a clustering stage already wrote (`prototypes.json`, `cluster_centers.npy`)."""
        listing = json.loads((Path(stage_dir) / "prototypes.json").read_text())["clusters"]
        centers = np.load(Path(stage_dir) / "cluster_centers.npy")
        listing = sorted(listing, key=lambda c: c["cluster"])
        return cls([c["ids"] for c in listing], [c["similarity"] for c in listing],
                   [c["sources"] for c in listing], centers)

    @property
    def flat_ids(self) -> list[int]:
        return [i for row in self.ids for i in row]


class PrototypeIndex:
    """Embedded prototypes plus a faiss index over them; `search` answers nearest-prototype queries."""

    FILES = ("prototypes.npz", "prototypes.json", "prototypes.faiss")

    def __init__(self, embeddings: np.ndarray, cluster: np.ndarray, image_id: np.ndarray, rank: np.ndarray,
                 similarity: np.ndarray, centers: np.ndarray, sources: list[str], index: Optional[Any] = None) -> None:
        self.embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        self.cluster = np.asarray(cluster, dtype=np.int64)
        self.image_id = np.asarray(image_id, dtype=np.int64)
        self.rank = np.asarray(rank, dtype=np.int64)
        self.similarity = np.asarray(similarity, dtype=np.float32)
        self.centers = np.asarray(centers, dtype=np.float32)
        self.sources = list(sources)
        n = len(self.embeddings)
        if not (len(self.cluster) == len(self.image_id) == len(self.rank) == len(self.similarity) == len(sources) == n):
            raise ExportError("prototype arrays disagree in length")
        self.index = index if index is not None else _flat_index(self.embeddings)

    @classmethod
    def build(cls, selection: PrototypeSelection, embeddings: np.ndarray) -> "PrototypeIndex":
        """`embeddings (M, D)`: the served embeddings of `selection.flat_ids`, in that order."""
        cluster = [k for k, row in enumerate(selection.ids) for _ in row]
        rank = [r for row in selection.ids for r in range(len(row))]
        similarity = [s for row in selection.similarity for s in row]
        sources = [s for row in selection.sources for s in row]
        if len(embeddings) != len(cluster):
            raise ExportError(f"{len(embeddings)} prototype embeddings for {len(cluster)} prototypes")
        return cls(embeddings, np.array(cluster), np.array(selection.flat_ids), np.array(rank),
                   np.array(similarity), selection.centers, sources)

    @property
    def num_clusters(self) -> int:
        return len(self.centers)

    def __len__(self) -> int:
        return len(self.embeddings)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """`(similarities (Q, k), rows (Q, k))` of the k nearest prototypes of unit-norm `queries (Q, D)`;
        rows are -1 where fewer than k prototypes exist."""
        k = max(0, min(int(k), len(self)))
        if k == 0:
            return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
        sims, rows = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
        return sims, rows

    def of_cluster(self, cluster: int) -> list[dict[str, Any]]:
        rows = np.flatnonzero(self.cluster == cluster)
        return [{"image_id": int(self.image_id[r]), "rank": int(self.rank[r]), "source": self.sources[r],
                 "similarity": float(self.similarity[r])} for r in rows[np.argsort(self.rank[rows])]]

    # ------------------------------------------------------------------ files

    def save(self, folder: Path) -> None:
        import faiss  # noqa: PLC0415

        folder = Path(folder)
        atomic_write(folder / "prototypes.npz", lambda h: np.savez(
            h, embeddings=self.embeddings, cluster=self.cluster, image_id=self.image_id, rank=self.rank,
            similarity=self.similarity, centers=self.centers))
        clusters = [{"cluster": k, **{"prototypes": self.of_cluster(k)}} for k in range(self.num_clusters)]
        atomic_write_text(folder / "prototypes.json", json.dumps({"clusters": clusters}, indent=1) + "\n")
        atomic_write(folder / "prototypes.faiss", lambda h: h.write(faiss.serialize_index(self.index).tobytes()))

    @classmethod
    def load(cls, folder: Path) -> "PrototypeIndex":
        import faiss  # noqa: PLC0415

        folder = Path(folder)
        with np.load(folder / "prototypes.npz", allow_pickle=False) as arrays:
            data = {k: arrays[k] for k in arrays.files}
        listing = json.loads((folder / "prototypes.json").read_text())["clusters"]
        source_of = {(c["cluster"], p["rank"]): p["source"] for c in listing for p in c["prototypes"]}
        sources = [source_of[(int(k), int(r))] for k, r in zip(data["cluster"], data["rank"])]
        index = faiss.deserialize_index(np.frombuffer((folder / "prototypes.faiss").read_bytes(), dtype=np.uint8))
        if index.ntotal != len(data["embeddings"]) or index.d != data["embeddings"].shape[1]:
            raise ExportError(f"{folder}/prototypes.faiss holds {index.ntotal}x{index.d}, "
                              f"prototypes.npz {data['embeddings'].shape}")
        return cls(data["embeddings"], data["cluster"], data["image_id"], data["rank"], data["similarity"],
                   data["centers"], sources, index=index)


def _flat_index(embeddings: np.ndarray) -> Any:
    import faiss  # noqa: PLC0415

    index = faiss.IndexFlatIP(embeddings.shape[1] if embeddings.ndim == 2 and embeddings.shape[1] else 1)
    if len(embeddings):
        index.add(embeddings)
    return index
