"""Are the mutually most-linked cluster pairs (report "merge_suggestions") one class split in two?

On base runs with a known number of classes (pretext + neighbors done, as `benchmarks/k_selection.py`
makes them under runs/k_selection/<set>/base), SCAN heads are trained on the cached pretext
features for K = the true count, true + 2 and twice the true count (as the k_selection stage
trains them: 5 heads, the same epochs cap), the head with the lowest SCAN loss clusters the
training images, and `trainer.prototypes.mutually_linked_clusters` gives the pairs. Labels (hidden
labels.csv for folders) only score them: a pair is "one class split" when both clusters have the
same majority class.

    .venv/bin/python benchmarks/merge_suggestions.py --sets fm3 fm5 fm7 fm5_imbalanced fm10 \
        --out benchmarks/results/merge_suggestions_cpu
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.common import command_line, machine, write_json  # noqa: E402
from benchmarks.k_selection_criteria import load_base  # noqa: E402
from trainer.atomic import atomic_write_text  # noqa: E402
from trainer.ksearch import CandidateHeads, score_candidate, search_epochs, train_candidates  # noqa: E402
from trainer.prototypes import mutually_linked_clusters  # noqa: E402
from trainer.stages.kselect import MIN_HEADS  # noqa: E402
from trainer.stages.scan import pair_batches  # noqa: E402

TRUE_K = {"fm3": 3, "fm5": 5, "fm7": 7, "fm5_imbalanced": 5, "fm10": 10}


def measure(run_dir: Path, true_k: int) -> list[dict]:
    config, images, labels, features, neighbors = load_base(run_dir)
    unit = torch.nn.functional.normalize(features, dim=1).numpy()
    cfg = config.scan
    k_values = sorted({true_k, true_k + 2, 2 * true_k})
    heads = CandidateHeads(features.shape[1], k_values, max(cfg.num_heads, MIN_HEADS),
                           torch.Generator().manual_seed(config.seed))
    heads = train_candidates(heads, features, torch.from_numpy(neighbors), search_epochs(cfg.epochs, images),
                             min(cfg.batch_size, images), cfg.lr, cfg.weight_decay, cfg.entropy_weight,
                             config.seed, lambda s, n, b, g: pair_batches(s, n, b, g))
    out = []
    for k, probs in zip(k_values, heads.probabilities(features)):
        pred = probs[score_candidate(probs, unit, neighbors, cfg.entropy_weight, config.seed).chosen_head].argmax(1)
        major = {c: int(np.bincount(labels[pred == c]).argmax()) for c in np.unique(pred)}
        pairs = [{**p.to_dict(), "majorities": [major[a] for a in p.clusters],
                  "one_class_split": major[p.clusters[0]] == major[p.clusters[1]]}
                 for p in mutually_linked_clusters(neighbors, pred, k)]
        out.append({"k": k, "populated": len(major), "pairs": pairs})
        print(run_dir, k, [(p["clusters"], p["link"], p["one_class_split"]) for p in pairs], flush=True)
    return out


def markdown(result: dict) -> str:
    lines = ["# Merge suggestions: mutually most-linked cluster pairs", "", f"Command: `{result['command']}`", "",
             f"Machine: {result['machine']['cpu']}, {result['machine']['cpu_count']} cores, no GPU", "",
             "| set | true K | K | pairs | one class split | link of the pairs |", "|---|---|---|---|---|---|"]
    for name, rows in result["sets"].items():
        for row in rows:
            pairs = row["pairs"]
            split = sum(p["one_class_split"] for p in pairs)
            links = ", ".join(f"{p['link']:.3f}{'*' if p['one_class_split'] else ''}" for p in pairs)
            lines.append(f"| {name} | {TRUE_K[name]} | {row['k']} | {len(pairs)} | {split} | {links} |")
    lines += ["", "`*`: the two clusters have the same majority class (labels: evaluation only)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", nargs="+", choices=sorted(TRUE_K), default=list(TRUE_K))
    parser.add_argument("--runs", type=Path, default=REPO / "runs/k_selection")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(2)
    result = {"command": command_line(), "machine": machine(torch.device("cpu")),
              "sets": {name: measure(args.runs / name / "base", TRUE_K[name]) for name in args.sets}}
    text = markdown(result)
    print(text)
    if args.out:
        write_json(args.out.with_suffix(".json"), result)
        atomic_write_text(args.out.with_suffix(".md"), text)


if __name__ == "__main__":
    main()
