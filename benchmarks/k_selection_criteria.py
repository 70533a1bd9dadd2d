"""Which label-free score finds K? Every K-search score, per candidate K, on one base run.

A base run is a run directory whose pretext and neighbors stages are done (those that
`benchmarks/k_selection.py` makes under runs/k_selection/<set>/base). SCAN heads for every K in
2..KMAX are trained on the cached pretext features as the k_selection stage trains them (at
least MIN_HEADS heads; the stage's epochs, `search_epochs`, unless --epochs is given), and each candidate gets
every score of `trainer.ksearch.score_candidate`, plus the eigengap of the symmetric kNN graph's
normalized Laplacian. Labels (the data set's, or the folder's hidden labels.csv) only add each
candidate's train ACC. Writes RUN/explore.json; `--table OUT JSON...` turns several into OUT.md
and OUT.json.

    .venv/bin/python benchmarks/k_selection_criteria.py runs/k_selection/fm3/base --true-k 3
    .venv/bin/python benchmarks/k_selection_criteria.py --table benchmarks/results/k_selection_criteria_cpu \\
        runs/k_selection/*/base/explore.json
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch
from scipy.sparse.linalg import eigsh

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.common import command_line, machine, write_json  # noqa: E402
from trainer.atomic import atomic_write_text  # noqa: E402
from trainer.data import load_dataset  # noqa: E402
from trainer.embed import embed_tensor  # noqa: E402
from trainer.evaluate import cluster_metrics  # noqa: E402
from trainer.ksearch import CandidateHeads, score_candidate, search_epochs, train_candidates  # noqa: E402
from trainer.config import RunConfig  # noqa: E402
from trainer.rundir import RunDir  # noqa: E402
from trainer.stages.common import load_stage_model  # noqa: E402
from trainer.stages.kselect import MIN_HEADS  # noqa: E402
from trainer.stages.scan import pair_batches  # noqa: E402

SCORES = ("stability", "neighbor_agreement", "silhouette", "eigengap")


def hidden_labels(train, config) -> np.ndarray:
    if train.has_labels:
        return train.labels.numpy()
    rows = {r["path"]: int(r["label"]) for r in csv.DictReader(open(Path(config.data.root).parent / "labels.csv"))}
    return np.array([rows[train.source(i)] for i in range(len(train))])


def eigengaps(neighbors: np.ndarray, kmax: int) -> dict[int, float]:
    """Gap after the K smallest eigenvalues of the normalized Laplacian of the symmetric kNN graph."""
    n, k = neighbors.shape
    adjacency = sp.csr_matrix((np.ones(n * k), (np.repeat(np.arange(n), k), neighbors.ravel())), shape=(n, n))
    adjacency = ((adjacency + adjacency.T) > 0).astype(np.float64)
    scale = sp.diags(1 / np.sqrt(np.asarray(adjacency.sum(1)).ravel()))
    laplacian = 1 - np.sort(eigsh(scale @ adjacency @ scale, k=kmax + 1, which="LA",
                                  return_eigenvectors=False))[::-1]
    return {i + 1: round(float(g), 5) for i, g in enumerate(np.diff(laplacian))}


def load_base(run_dir: Path) -> tuple[RunConfig, int, np.ndarray, torch.Tensor, np.ndarray]:
    """A base run's (config, number of training images, hidden labels, pretext features, mined neighbors)."""
    run = RunDir(str(run_dir))
    config = run.load_config()
    train = load_dataset(config.data, "train", seed=config.seed)
    model, _ = load_stage_model(run.stage_dir("pretext") / "model.pt")
    model.drop_projection_head()
    features = embed_tensor(model, train, torch.device("cpu"), "raw", config.neighbors.batch_size, 0)
    neighbors = np.load(run.stage_dir("neighbors") / "neighbors_train.npy")
    return config, len(train), hidden_labels(train, config), features, neighbors


def explore(run_dir: Path, true_k: int, kmax: int, epochs: int | None) -> dict:
    config, images, labels, features, neighbors = load_base(run_dir)
    cfg = config.scan
    epochs = epochs or search_epochs(cfg.epochs, images)
    started = time.perf_counter()
    heads = CandidateHeads(features.shape[1], list(range(2, kmax + 1)), max(cfg.num_heads, MIN_HEADS),
                           torch.Generator().manual_seed(config.seed))
    heads = train_candidates(heads, features, torch.from_numpy(neighbors), epochs, min(cfg.batch_size, images),
                             cfg.lr, cfg.weight_decay, cfg.entropy_weight, config.seed,
                             lambda s, n, b, g: pair_batches(s, n, b, g))
    unit = torch.nn.functional.normalize(features, dim=1).numpy()
    gaps = eigengaps(neighbors, kmax)
    rows = []
    for probs in heads.probabilities(features):
        s = score_candidate(probs, unit, neighbors, cfg.entropy_weight, config.seed)
        acc = cluster_metrics(probs[s.chosen_head].argmax(1), labels, s.k, int(labels.max()) + 1)["acc"]
        rows.append({**s.to_dict(), "eigengap": gaps[s.k], "acc": round(acc, 4)})
        print(s.k, round(s.stability, 3), round(acc, 3), flush=True)
    result = {"run": str(run_dir), "true_k": true_k, "epochs": epochs, "heads": max(cfg.num_heads, MIN_HEADS),
              "images": images, "search_s": round(time.perf_counter() - started, 1), "rows": rows}
    atomic_write_text(run_dir / "explore.json", json.dumps(result, indent=1) + "\n")
    return result


def table(out: Path, paths: list[Path]) -> None:
    sets = {Path(p).parent.parent.name: json.loads(Path(p).read_text()) for p in paths}
    host = machine(torch.device("cpu"))
    lines = ["# Which label-free score finds K (candidates 2..20)", "", f"Command: `{command_line()}`, after "
             "`benchmarks/k_selection_criteria.py runs/k_selection/<set>/base --true-k <K>` per set "
             "(the k_selection stage's epochs)", "",
             f"Machine: {host['cpu']}, {host['cpu_count']} cores, no GPU", "",
             "K with the best score (train ACC of that candidate's best head in brackets; labels: evaluation "
             "only). Eigengap: the largest gap after the K smallest eigenvalues of the kNN graph's Laplacian.", "",
             "| set | images | true K | " + " | ".join(SCORES) + " | best train ACC at |", "|---" * (len(SCORES) + 4)
             + "|"]
    hits = {s: [0, 0] for s in SCORES}
    for name, r in sets.items():
        rows, true_k = r["rows"], r["true_k"]
        cells = []
        for score in SCORES:
            best = max(rows, key=lambda row: (row[score], -row["k"]))
            hits[score][0] += abs(best["k"] - true_k) <= 1
            hits[score][1] += best["k"] == true_k
            cells.append(f"{best['k']} ({best['acc']:.2f})")
        acc_best = max(rows, key=lambda row: row["acc"])
        lines.append(f"| {name} | {r['images']} | {true_k} | " + " | ".join(cells) + f" | {acc_best['k']} |")
    lines += ["", "| score | within ±1 of the true K | equal to it |", "|---|---|---|"]
    lines += [f"| {s} | {h[0]} of {len(sets)} | {h[1]} of {len(sets)} |" for s, h in hits.items()]
    lines += ["", "Train ACC rises with K under many-to-one matching, so its best K says nothing about the "
              "right K; it is shown to compare candidates near the true K."]
    write_json(out.with_suffix(".json"), {"command": command_line(), "machine": host,
                                          "sets": sets})
    atomic_write_text(out.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", nargs="?", type=Path)
    parser.add_argument("--true-k", type=int)
    parser.add_argument("--kmax", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--table", type=Path, default=None, help="write TABLE.md/.json from the JSON files given")
    parser.add_argument("jsons", nargs="*", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(2)
    if args.table:
        table(args.table, [args.run, *args.jsons] if args.run else args.jsons)
    else:
        explore(args.run, args.true_k, args.kmax, args.epochs)


if __name__ == "__main__":
    main()
