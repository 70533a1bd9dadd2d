"""Choosing the number of clusters without labels: train SCAN heads for every candidate K at once
on cached backbone features, and score each candidate on the training images.

Every candidate K gets `num_heads` linear heads, trained exactly as the SCAN stage trains its
heads on cached features (same loss, entropy weight, learning rate, batches), but all candidates
share one pass over the data: their weights live in one `(G, H, K_max, D)` tensor and the logits of
a candidate with K < K_max are masked to -inf beyond K, so its softmax, loss and gradients are
those of a K-way head. A search over 2..20 (19 candidates) therefore costs a few SCAN stages on
cached features, not 19 (measured 1.7x to 3.4x).

The scores (all label-free, computed on the training images):

* `stability`: mean adjusted Rand index between the argmax assignments of the candidate's heads.
  Heads start from different random weights; when K matches groups the data has, they find the
  same partition, when K splits or merges groups they split or merge differently.
* `neighbor_agreement`: chance-corrected share of mined (image, neighbor) pairs in the same cluster
  (`trainer.baselines.neighbor_agreement`) under the head with the lowest SCAN loss.
* `silhouette`: cosine silhouette of the backbone features under that head's assignment.
* `consistency`, `entropy` (normalized by log K), `confidence`: the SCAN loss parts and the mean
  max probability, for the record.

The rule (`choose_k`): the K whose heads agree most (highest stability; ties go to the smaller K).
When even that stability is below WEAK_STABILITY the heads agree on no partition: the smallest K
is taken and the structure is reported as weak. Stability was chosen over the other scores by
measurement on five real sets with a known number of classes
(benchmarks/results/k_selection_criteria_cpu.md): its best K was within 1 of the truth on all five
and equal to it on three; silhouette within 1 on five, equal on two; neighbor agreement mostly
prefers K=2, and the eigengap of the kNN graph missed four of five.
On a large set the search trains at most SEARCH_SAMPLES anchor images (`search_epochs`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
from sklearn.metrics import adjusted_rand_score, silhouette_score
from torch import nn

from trainer.baselines import neighbor_agreement
from trainer.losses import scan_loss

STABILITY_SAMPLE = 10_000  # images the pairwise ARI is measured on (seeded subset above this)
SILHOUETTE_SAMPLE = 4_000


class CandidateHeads(nn.Module):
    """`num_heads` linear heads for each K in `k_values`, evaluated together.

    ``forward((N, D)) -> (G * H, N, K_max)`` logits, -inf beyond each candidate's K.
    """

    def __init__(self, in_dim: int, k_values: Sequence[int], num_heads: int, generator: torch.Generator) -> None:
        super().__init__()
        self.k_values = [int(k) for k in k_values]
        self.num_heads = num_heads
        groups, k_max = len(self.k_values), max(self.k_values)
        bound = 1.0 / math.sqrt(in_dim)  # nn.Linear's default initialisation range
        self.weight = nn.Parameter((torch.rand(groups, num_heads, k_max, in_dim, generator=generator) * 2 - 1) * bound)
        self.bias = nn.Parameter((torch.rand(groups, num_heads, k_max, generator=generator) * 2 - 1) * bound)
        valid = torch.arange(k_max)[None, :] < torch.tensor(self.k_values)[:, None]
        self.register_buffer("valid", valid, persistent=False)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        logits = torch.einsum("nd,ghkd->ghnk", features, self.weight) + self.bias[:, :, None, :]
        logits = logits.masked_fill(~self.valid[:, None, None, :], float("-inf"))
        return logits.flatten(0, 1)

    def probabilities(self, features: torch.Tensor, batch_size: int = 4096) -> list[np.ndarray]:
        """Per candidate, `(H, N, K)` softmax probabilities of `features (N, D)`."""
        parts = []
        with torch.no_grad():
            for start in range(0, len(features), batch_size):
                parts.append(torch.softmax(self(features[start : start + batch_size].float()), dim=-1).cpu())
        probs = torch.cat(parts, dim=1).unflatten(0, (len(self.k_values), self.num_heads))
        return [probs[g, :, :, :k].numpy() for g, k in enumerate(self.k_values)]


def train_candidates(
    heads: CandidateHeads,
    features: torch.Tensor,
    neighbors: torch.Tensor,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    entropy_weight: float,
    seed: int,
    batches: Callable[[torch.Tensor, torch.Tensor, int, torch.Generator], Any],
    on_epoch: Optional[Callable[[int, float], None]] = None,
) -> CandidateHeads:
    """Train `heads` (on the device of `features (N, D)`) with the mined `neighbors (N, k)`; returns them.

    The candidates' parameters are disjoint and Adam works element by element, so each candidate
    trains exactly as it would alone from the same initial weights.

    `batches(source, neighbors, batch_size, generator)` yields (anchor, neighbor) feature batches
    (the SCAN stage's `pair_batches`); `on_epoch(epoch, mean loss)` is called after every epoch.
    """
    device = features.device
    heads.to(device)
    optimizer = torch.optim.Adam(heads.parameters(), lr=lr, weight_decay=weight_decay)
    for epoch in range(epochs):
        generator = torch.Generator().manual_seed(seed * 7_919 + epoch)
        total, steps = torch.zeros((), device=device), 0
        for anchors, partners in batches(features, neighbors, batch_size, generator):
            b = anchors.shape[0]
            logits = heads(torch.cat([anchors, partners]).float())
            loss = scan_loss(logits[:, :b], logits[:, b:], entropy_weight)[0].sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.detach()
            steps += 1
        mean = float(total) / max(steps, 1)
        if not math.isfinite(mean):
            raise FloatingPointError(f"the K search's loss became {mean} in epoch {epoch + 1}; lower scan.lr")
        if on_epoch is not None:
            on_epoch(epoch, mean)
    return heads


# ---------------------------------------------------------------- scores


@dataclass(frozen=True)
class CandidateScores:
    k: int
    stability: float
    stability_error: float  # standard error of `stability`
    neighbor_agreement: float
    silhouette: float
    consistency: float
    entropy: float  # of the mean prediction, divided by log K (1: clusters of equal size)
    confidence: float
    chosen_head: int
    sizes: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in self.__dict__.items():
            out[key] = round(value, 5) if isinstance(value, float) else list(value) if isinstance(value, tuple) else value
        return out


def head_stability(assignments: np.ndarray) -> tuple[float, float]:
    """Mean adjusted Rand index over every pair of rows of `assignments (H, N)`, and its standard error.

    The error treats heads as the units: the spread of each head's mean ARI to the others, over
    sqrt(H). A single head gives (1.0, 0.0); two give their ARI and 0.0.
    """
    h = len(assignments)
    if h < 2:
        return 1.0, 0.0
    ari = np.ones((h, h))
    for i in range(h):
        for j in range(i + 1, h):
            ari[i, j] = ari[j, i] = adjusted_rand_score(assignments[i], assignments[j])
    off_diagonal = ~np.eye(h, dtype=bool)
    per_head = (ari * off_diagonal).sum(axis=1) / (h - 1)
    error = float(per_head.std(ddof=1) / math.sqrt(h)) if h > 2 else 0.0
    return float(ari[off_diagonal].mean()), error


def cosine_silhouette(features: np.ndarray, assignment: np.ndarray, sample: int, seed: int) -> float:
    """Silhouette (cosine distance) of `assignment`; -1 when it uses a single cluster."""
    if len(np.unique(assignment)) < 2:
        return -1.0
    size = min(sample, len(features))
    return float(silhouette_score(features, assignment, metric="cosine", sample_size=size, random_state=seed))


def score_candidate(
    probs: np.ndarray, features: np.ndarray, neighbors: np.ndarray, entropy_weight: float, seed: int
) -> CandidateScores:
    """Scores of one candidate from its heads' `probs (H, N, K)`, features `(N, D)` and neighbors `(N, k)`."""
    h, n, k = probs.shape
    consistency = np.array([  # one head at a time: (N, k, K) per head, not (H, N, k, K)
        -np.log(np.clip(np.einsum("nc,njc->nj", p, p[neighbors]), 1e-8, None)).mean() for p in probs
    ], dtype=np.float64)
    mean = probs.astype(np.float64).mean(axis=1)
    entropy = -(mean * np.log(np.clip(mean, 1e-8, None))).sum(axis=1)
    chosen = int(np.argmin(consistency - entropy_weight * entropy))
    assignments = probs.argmax(axis=2)
    rows = np.random.default_rng(seed).permutation(n)[:STABILITY_SAMPLE] if n > STABILITY_SAMPLE else slice(None)
    assignment = assignments[chosen]
    stability, stability_error = head_stability(assignments[:, rows])
    return CandidateScores(
        k=k,
        stability=stability,
        stability_error=stability_error,
        neighbor_agreement=neighbor_agreement(assignment, neighbors),
        silhouette=cosine_silhouette(features, assignment, SILHOUETTE_SAMPLE, seed),
        consistency=float(consistency[chosen]),
        entropy=float(entropy[chosen] / math.log(k)),
        confidence=float(probs[chosen].max(axis=1).mean()),
        chosen_head=chosen,
        sizes=tuple(int(c) for c in np.bincount(assignment, minlength=k)),
    )


# ---------------------------------------------------------------- the choice

RULE = "the most stable K (highest mean ARI between heads)"
WEAK_STABILITY = 0.4  # below this best stability the heads agree on no partition: the structure is weak


@dataclass(frozen=True)
class Choice:
    k: int
    rule: str
    structure: str  # "clear" | "weak"
    message: str

    @staticmethod
    def series(scores: Sequence[CandidateScores]) -> dict[str, list[float]]:
        """The scores to draw against K, the one the choice rests on first."""
        return {"stability (ARI between heads)": [s.stability for s in scores],
                "neighbor agreement": [s.neighbor_agreement for s in scores],
                "silhouette": [s.silhouette for s in scores]}

    def lines(self, scores: Sequence[CandidateScores]) -> list[str]:
        """One line per candidate and the choice, for the terminal."""
        out = [f"K={s.k:>3}: stability {s.stability:.3f} ± {s.stability_error:.3f}, neighbor agreement "
               f"{s.neighbor_agreement:.3f}, silhouette {s.silhouette:.3f}, confidence {s.confidence:.3f}"
               + ("  <- chosen" if s.k == self.k else "") for s in scores]
        return out + [f"K search: {self.message}"]


def choose_k(scores: Sequence[CandidateScores]) -> Choice:
    """The candidate whose heads agree most (ties: the smaller K); the smallest K when none agree.

    Measured against the alternatives on five real sets with known class counts
    (`benchmarks/results/k_selection_criteria_cpu.md`; the module docstring sums it up).
    """
    if not scores:
        raise ValueError("choose_k needs at least one candidate")
    best = max(scores, key=lambda s: (s.stability, -s.k))
    if best.stability < WEAK_STABILITY:
        smallest = min(scores, key=lambda s: s.k)
        return Choice(smallest.k, RULE, "weak", (
            f"weak structure: no K in {scores[0].k}..{scores[-1].k} gives a partition the heads agree on (best "
            f"stability {best.stability:.3f} at K={best.k}, below {WEAK_STABILITY}); chose the smallest, "
            f"K={smallest.k}. The images may not form distinct groups in the pretext features: consider a "
            f"longer pretext stage, or set scan.num_clusters yourself"))
    message = f"chose K={best.k}: its heads agree most (stability {best.stability:.3f} ± {best.stability_error:.3f})"
    rest = [s for s in scores if s.k != best.k]
    if rest:
        runner = max(rest, key=lambda s: (s.stability, -s.k))
        close = " (within the errors: consider it too)" if (
            best.stability - runner.stability <= best.stability_error + runner.stability_error) else ""
        message += f"; next K={runner.k} at {runner.stability:.3f}{close}"
    return Choice(best.k, RULE, "clear", message)


SEARCH_SAMPLES = 600_000  # anchor images the search trains on at most (epochs x images)


def search_epochs(scan_epochs: int, images: int) -> int:
    """Epochs of the K search: the SCAN stage's, capped so a large set trains on about SEARCH_SAMPLES anchors."""
    return max(1, min(scan_epochs, math.ceil(SEARCH_SAMPLES / max(images, 1))))
