"""Stage between neighbors and SCAN when `scan.num_clusters: auto`: choose K without labels.

The training images are embedded once with the pretext backbone (the features the SCAN heads
take), SCAN heads for every K in `scan.k_range` are trained together on them with the SCAN
stage's loss and settings (`trainer.ksearch`; at least MIN_HEADS heads per K, and on a large
set fewer epochs: `ksearch.search_epochs`), every candidate is scored on the training images,
and one K is chosen by `trainer.ksearch.choose_k`. The SCAN stage then trains with that K.

Writes `k_selection/k_selection.png` (the scores per K, the choice marked) and the report entry
(every candidate's scores, the choice, the reason, and how clear the structure is). Labels, where
the data set has them, only add each candidate's train ACC for the record, after the choice.
Measured at 1.7x to 3.4x the SCAN stage on cached features for 2..20 (Fashion-MNIST's CPU preset:
71 s against 41 s; benchmarks/results/k_selection_cpu.json); interrupted, it starts over.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from trainer.config import RunConfig
from trainer.data import load_dataset
from trainer.distributed import SINGLE, Distributed
from trainer.embed import embed_tensor
from trainer.errors import CheckpointError, ConfigError
from trainer.evaluate import cluster_metrics
from trainer.ksearch import (WEAK_STABILITY, CandidateHeads, Choice, choose_k, score_candidate, search_epochs,
                             train_candidates)
from trainer.pictures import k_selection_plot
from trainer.rundir import RunDir
from trainer.stages.common import K_SELECTION, load_stage_model
from trainer.stages.neighbors import STAGE as NEIGHBORS
from trainer.stages.pretext import STAGE as PRETEXT
from trainer.stages.scan import pair_batches

STAGE = K_SELECTION
PICTURE = "k_selection.png"
MIN_HEADS = 5  # heads per candidate K: stability is the agreement between them


def check_k_range(config: RunConfig, images: int) -> None:
    """ConfigError naming scan.k_range when its largest K exceeds the number of training images."""
    low, high = config.scan.k_range
    if high > images:
        raise ConfigError(f"scan.k_range: K up to {high} is more than the {images} training images; "
                          f"lower it (e.g. --set scan.k_range=[{low},{max(low, min(images, 20))}])")


def run_k_selection(
    config: RunConfig, run: RunDir, device: torch.device, progress: bool = True, dist: Distributed = SINGLE
) -> dict[str, Any]:
    """Search K on rank 0 (the pipeline runs it there alone); returns the report entry."""
    if not dist.is_main:
        raise RuntimeError("the k_selection stage runs on rank 0 alone")
    cfg = config.scan
    started = time.perf_counter()
    train = load_dataset(config.data, "train", seed=config.seed)
    low, high = cfg.k_range
    check_k_range(config, len(train))
    neighbors_path = run.stage_dir(NEIGHBORS) / "neighbors_train.npy"
    if not neighbors_path.exists():
        raise CheckpointError(f"{neighbors_path} is missing: run the neighbors stage first")
    neighbors = np.load(neighbors_path)
    model, _ = load_stage_model(run.stage_dir(PRETEXT) / "model.pt", expected_fingerprint=train.fingerprint())
    model.drop_projection_head()
    model.to(device)
    features = embed_tensor(model, train, device, "raw", config.neighbors.batch_size, config.data.num_workers)

    k_values = list(range(low, high + 1))
    batch_size = min(cfg.batch_size, len(train))
    epochs, num_heads = search_epochs(cfg.epochs, len(train)), max(cfg.num_heads, MIN_HEADS)
    with tqdm(total=epochs, desc=f"K search {low}..{high}", unit="epoch", disable=not progress,
              leave=False) as bar:
        heads = CandidateHeads(features.shape[1], k_values, num_heads, torch.Generator().manual_seed(config.seed))
        heads = train_candidates(
            heads, features, torch.from_numpy(neighbors), epochs, batch_size, cfg.lr,
            cfg.weight_decay, cfg.entropy_weight, config.seed,
            batches=lambda source, nb, size, generator: pair_batches(source, nb, size, generator),
            on_epoch=lambda epoch, loss: bar.update(1),
        )
    probs = heads.probabilities(features)
    unit = torch.nn.functional.normalize(features.float(), dim=1).cpu().numpy()
    scores = [score_candidate(p, unit, neighbors, cfg.entropy_weight, config.seed) for p in probs]
    choice = choose_k(scores)

    stage_dir = run.stage_dir(STAGE)
    candidates = [s.to_dict() for s in scores]
    if train.has_labels:  # for the record only: the choice above never saw a label
        labels = train.labels.numpy()
        classes = len(train.class_names) if train.class_names else int(labels.max()) + 1
        for entry, p, s in zip(candidates, probs, scores):
            entry["train_acc"] = round(cluster_metrics(p[s.chosen_head].argmax(1), labels, s.k, classes)["acc"], 4)
    accs = [c["train_acc"] for c in candidates] if train.has_labels else None
    picture = k_selection_plot(k_values, Choice.series(scores), choice.k, stage_dir / PICTURE, evaluation=accs,
                               errors=[s.stability_error for s in scores], floor=WEAK_STABILITY)
    for line in choice.lines(scores):
        print(line, flush=True)
    return {
        "status": "done",
        "k_range": [low, high],
        "chosen": choice.k,
        "rule": choice.rule,
        "structure": choice.structure,
        "message": choice.message,
        "epochs": epochs,
        "heads": num_heads,
        "candidates": candidates,
        "pictures": {"k_selection": str(picture.relative_to(run.path))},
        "wall_time_s": round(time.perf_counter() - started, 1),
    }
