"""Label-free health of a clustering, and the collapse guard built on it.

SCAN's failure modes (clusters that empty out, everything drifting into a few clusters,
self-labeling that amplifies its own mistakes) all show without labels: in the sizes of
the clusters, in how many predictions are confident, and in how far predictions drift from
the model training started from. `CollapseGuard` compares a candidate with the model it
started from and names every way it is worse. The self-labeling stage and incremental
fine-tuning both use it, so a worse model is never kept.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Optional

import numpy as np


@dataclass(frozen=True)
class Health:
    clusters: int  # number of clusters the model has
    populated: int  # clusters holding more than min_share * N / clusters samples
    nonempty: int  # clusters holding at least one sample
    size_entropy: float  # entropy of cluster sizes / log(clusters): 1 = perfectly even, 0 = one cluster
    confident_fraction: float  # share of samples whose max probability exceeds the threshold
    agreement: Optional[float]  # share of samples whose cluster equals the reference model's
    sizes: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["sizes"] = list(self.sizes)
        return out


def measure_health(
    probs: np.ndarray,
    threshold: float,
    reference: Optional[np.ndarray] = None,
    min_share: float = 0.1,
) -> Health:
    """Health of predictions `probs (N, C)`; `reference (N,)` cluster ids of the model to compare with."""
    probs = np.asarray(probs, dtype=np.float64)
    n, c = probs.shape
    pred = probs.argmax(axis=1)
    sizes = np.bincount(pred, minlength=c)
    share = sizes / max(n, 1)
    nz = share[share > 0]
    entropy = float(-(nz * np.log(nz)).sum() / math.log(c))
    agreement = None if reference is None else float((pred == np.asarray(reference)).mean())
    return Health(
        clusters=c,
        populated=int((sizes > min_share * n / c).sum()),
        nonempty=int((sizes > 0).sum()),
        size_entropy=entropy,
        confident_fraction=float((probs.max(axis=1) > threshold).mean()),
        agreement=agreement,
        sizes=tuple(int(s) for s in sizes),
    )


@dataclass(frozen=True)
class CollapseGuard:
    """Refuses a candidate that is worse than `baseline` (the model training started from)."""

    baseline: Health
    min_agreement: float = 0.6
    entropy_drop: float = 0.05

    def problems(self, health: Health) -> list[str]:
        """Ways `health` is collapsing relative to the baseline; empty when it is healthy."""
        base, found = self.baseline, []
        if health.populated < base.populated:
            found.append(f"populated clusters fell from {base.populated} to {health.populated} of {health.clusters}")
        if health.nonempty < base.nonempty:
            found.append(f"non-empty clusters fell from {base.nonempty} to {health.nonempty}")
        if health.size_entropy < base.size_entropy - self.entropy_drop:
            found.append(
                f"cluster-size entropy fell from {base.size_entropy:.3f} to {health.size_entropy:.3f} "
                f"(allowed drop {self.entropy_drop})"
            )
        if health.agreement is not None and health.agreement < self.min_agreement:
            found.append(f"agreement with the starting model is {health.agreement:.3f}, below {self.min_agreement}")
        return found

    def rejects_as_final(self, health: Health) -> list[str]:
        """`problems`, plus: a kept model must be at least as confident as the one it replaces."""
        found = self.problems(health)
        if health.confident_fraction < self.baseline.confident_fraction:
            found.append(
                f"confident fraction {health.confident_fraction:.3f} is below the starting "
                f"{self.baseline.confident_fraction:.3f}"
            )
        return found
