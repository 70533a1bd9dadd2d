"""Which label-free criterion ranks clusterings as ACC does? The evidence behind `trainer.baselines`.

For finished runs whose training images have labels (Fashion-MNIST runs; folders written by
`benchmarks/make_folders.py`, whose labels sit in `<data.root>/../labels.csv`), every clustering
of the training images (k-means on pixels, k-means on the pretext features, each SCAN head, the
self-labelled model) is scored by ACC (labels, evaluation only) and by candidate label-free criteria:

* `hog_neighbor_agreement`: chance-corrected co-membership with 10 neighbors mined in HOG space,
  which no method clusters in (the criterion `trainer.baselines` uses);
* `pixel_neighbor_agreement`: the same with neighbors mined on raw pixels (cosine): pixel k-means' space;
* `pretext_neighbor_agreement`: the same with the pretext features' neighbors: SCAN's own space;
* `stability`: for k-means, the ARI between fits on two random halves applied to every image; for a
  SCAN head, its mean ARI with the other heads (self-labeling has one model: none).

A criterion is good when it orders the methods as ACC does: the table gives, per run, the
Spearman correlation over all clusterings and the share of method pairs (pixels, pretext,
chosen SCAN head, self-label; pairs whose ACC differ by at least 0.01) it orders like ACC.

    .venv/bin/python benchmarks/baseline_criterion.py --runs runs/bench_fmnist_fused/seed0 ... \
        --out benchmarks/results/baseline_criterion_cpu
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import sys
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr
from sklearn.metrics import adjusted_rand_score

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.common import command_line, machine, write_json  # noqa: E402
from trainer.baselines import (  # noqa: E402
    pretext_features, stack_images, kmeans_assign, neighbor_agreement, pixel_vectors,
)
from trainer.data import load_dataset  # noqa: E402
from trainer.data.base import seeded_subset_indices  # noqa: E402
from trainer.embed import predict_images  # noqa: E402
from trainer.evaluate import cluster_metrics  # noqa: E402
from trainer.hog import hog_features  # noqa: E402
from trainer.neighbors import _faiss, mine_neighbors  # noqa: E402
from trainer.rundir import RunDir  # noqa: E402
from trainer.stages.common import load_stage_model  # noqa: E402

CRITERIA = ("hog_neighbor_agreement", "pixel_neighbor_agreement", "pretext_neighbor_agreement", "stability")
MAX_IMAGES = 10_000
CPU = torch.device("cpu")


def half_stability(features: np.ndarray, clusters: int, seed: int, spherical: bool) -> float:
    """ARI between k-means fitted on two disjoint random halves, each applied to every point."""
    faiss = _faiss()
    order = np.random.default_rng(seed).permutation(len(features))
    x = np.ascontiguousarray(features, dtype=np.float32)
    preds = []
    for part in (order[: len(x) // 2], order[len(x) // 2:]):
        km = faiss.Kmeans(x.shape[1], clusters, niter=50, nredo=3, seed=seed, spherical=spherical, verbose=False,
                          max_points_per_centroid=len(x))
        km.train(x[part])
        preds.append(km.index.search(x, 1)[1][:, 0])
    return float(adjusted_rand_score(*preds))


def labels_of(run: RunDir, config, measured) -> np.ndarray:
    if measured.has_labels:
        return measured.labels.numpy()
    csv_path = Path(config.data.root).parent / "labels.csv"
    with open(csv_path, newline="") as handle:
        by_path = {row["path"]: int(row["label"]) for row in csv.DictReader(handle)}
    raw = np.array([by_path[measured.source(i)] for i in range(len(measured))])
    return np.unique(raw, return_inverse=True)[1]


def measure_run(path: Path) -> dict:
    run = RunDir(path)
    config = run.load_config()
    train = load_dataset(config.data, "train", seed=config.seed)
    indices = seeded_subset_indices(len(train), MAX_IMAGES, config.seed)
    measured = train if indices is None else train.subset(indices)
    rows = np.arange(len(train)) if indices is None else indices
    labels = labels_of(run, config, measured)
    images = stack_images(measured, 0)
    pixels = pixel_vectors(images)
    pretext = np.asarray(pretext_features(config, run, measured, rows, CPU))
    scan, state = load_stage_model(run.stage_dir("scan") / "model.pt")
    clusters, chosen = scan.cluster_heads.num_clusters, state["chosen_head"]
    heads = predict_images(scan, measured, CPU)[0].argmax(axis=2)
    methods = {"kmeans_pixels": kmeans_assign(pixels, clusters, config.seed, spherical=False),
               "kmeans_pretext": kmeans_assign(pretext, clusters, config.seed, spherical=True)}
    for h, assignment in enumerate(heads):
        methods[f"scan_head{h}" + ("_chosen" if h == chosen else "")] = assignment
    selflabel = run.stage_dir("selflabel") / "model.pt"
    if selflabel.exists():
        methods["selflabel"] = predict_images(load_stage_model(selflabel)[0], measured, CPU)[0][0].argmax(axis=1)

    pixel_unit = pixels - pixels.mean(axis=1, keepdims=True)
    pixel_unit /= np.linalg.norm(pixel_unit, axis=1, keepdims=True) + 1e-12
    k = min(10, len(images) - 1)
    spaces = {"hog_neighbor_agreement": mine_neighbors(hog_features(images), k)[0],
              "pixel_neighbor_agreement": mine_neighbors(pixel_unit, k)[0],
              "pretext_neighbor_agreement": mine_neighbors(pretext, k)[0]}
    stability = {"kmeans_pixels": half_stability(pixels, clusters, config.seed, False),
                 "kmeans_pretext": half_stability(pretext, clusters, config.seed, True)}
    for h in range(len(heads)):
        others = [adjusted_rand_score(heads[h], heads[o]) for o in range(len(heads)) if o != h]
        name = next(m for m in methods if m.startswith(f"scan_head{h}"))
        stability[name] = float(np.mean(others)) if others else None
    table = {}
    for name, assignment in methods.items():
        entry = {"acc": round(cluster_metrics(assignment, labels)["acc"], 4)}
        for criterion, neighbors in spaces.items():
            entry[criterion] = round(neighbor_agreement(assignment, neighbors), 4)
        entry["stability"] = None if stability.get(name) is None else round(stability[name], 4)
        table[name] = entry
    return {"run": str(path), "images": len(measured), "clusters": clusters, "methods": table,
            "agreement_with_acc": {c: ranking_agreement(table, c) for c in CRITERIA}}


def ranking_agreement(table: dict, criterion: str) -> dict:
    """Spearman over every clustering with a value, and the share of method pairs ordered like ACC."""
    named = [m for m in table if table[m][criterion] is not None]
    rho = spearmanr([table[m]["acc"] for m in named], [table[m][criterion] for m in named]).correlation
    key = [m for m in table if m in ("kmeans_pixels", "kmeans_pretext", "selflabel") or m.endswith("_chosen")]
    key = [m for m in key if table[m][criterion] is not None]
    pairs = [(a, b) for a, b in itertools.combinations(key, 2) if abs(table[a]["acc"] - table[b]["acc"]) >= 0.01]
    same = [np.sign(table[a]["acc"] - table[b]["acc"]) == np.sign(table[a][criterion] - table[b][criterion])
            for a, b in pairs]
    return {"spearman": None if np.isnan(rho) else round(float(rho), 3), "pairs": len(pairs),
            "pairs_ordered_like_acc": int(sum(same))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=Path, nargs="+", required=True)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    results = []
    for path in args.runs:
        results.append(measure_run(path))
        print(json.dumps(results[-1]["agreement_with_acc"]), flush=True)
    lines = ["| run | images | " + " | ".join(CRITERIA) + " |", "|---|---|" + "---|" * len(CRITERIA)]
    for r in results:
        cells = [f"{a['spearman']} ({a['pairs_ordered_like_acc']}/{a['pairs']})"
                 for a in (r["agreement_with_acc"][c] for c in CRITERIA)]
        lines.append(f"| {r['run']} | {r['images']} | " + " | ".join(cells) + " |")
    lines += ["", "Per method (ACC; " + ", ".join(CRITERIA) + "):", ""]
    for r in results:
        lines.append(f"- {r['run']}: " + "; ".join(
            f"{m} {v['acc']:.3f} / " + " / ".join("-" if v[c] is None else f"{v[c]:.3f}" for c in CRITERIA)
            for m, v in r["methods"].items() if not m.startswith("scan_head") or m.endswith("_chosen")))
    table = "\n".join(lines)
    print(table)
    if args.out:
        info = machine(CPU)
        write_json(args.out.with_suffix(".json"), {"command": command_line(), "machine": info, "runs": results})
        from trainer.atomic import atomic_write_text

        atomic_write_text(args.out.with_suffix(".md"),
                          f"Command: `{command_line()}`\n\nMachine: {info['cpu']}, {info['cpu_count']} cores\n\n"
                          "Cells: Spearman correlation of the criterion with ACC over every clustering of the run "
                          "(k-means on pixels, on pretext features, every SCAN head, self-label), then (pairs of "
                          "pixels / pretext / chosen head / self-label ordered like ACC / pairs whose ACC differ by "
                          f"0.01 or more).\n\n{table}\n")


if __name__ == "__main__":
    main()
