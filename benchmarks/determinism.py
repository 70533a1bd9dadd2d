"""Is a CPU run bit-identical when repeated? Trains a small real config (Fashion-MNIST subset, every
stage) several times with `scan-train` and compares SHA-256 digests of each stage's weights, the last
self-labeling epoch's weights and the neighbor table.

    .venv/bin/python benchmarks/determinism.py --runs runs/determinism --threads 2 2 1 \\
        --out benchmarks/results/determinism_cpu

One run per `--threads` entry (same thread count: should match; another: says whether it matters).
`--compare RUN_DIR` adds finished run directories made elsewhere (e.g. from a fresh clone and install).
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.common import command_line, machine, write_json  # noqa: E402
from trainer.atomic import atomic_write_text  # noqa: E402

CONFIG = """\
seed: 0
data: {name: fashion_mnist, train_subset: 3000, test_subset: 1000, num_workers: 0}
model: {backbone: convnet, width: 8, projection_dim: 32}
augment: {crop_scale: [0.5, 1.0], jitter: [0.4, 0.4, 0.0, 0.0], grayscale_p: 0.0}
pretext: {epochs: 2, batch_size: 256, lr: 0.4}
neighbors: {k: 10, feature: backbone}
scan: {epochs: 5, num_heads: 3, batch_size: 256, update: head, augment: none}
selflabel: {epochs: 2, batch_size: 256, threshold: 0.3, augment: strong}
report: {baselines: false}
"""


def _weights_digest(path: Path) -> str:
    state = torch.load(path, weights_only=True, map_location="cpu")["model"]
    digest = hashlib.sha256()
    for key in sorted(state):
        digest.update(key.encode())
        digest.update(state[key].numpy().tobytes())
    return digest.hexdigest()[:16]


def digests(run: Path) -> dict[str, str]:
    out = {stage: _weights_digest(run / stage / "model.pt") for stage in ("pretext", "scan", "selflabel")}
    out["selflabel_last_epoch"] = _weights_digest(run / "selflabel" / "checkpoint.pt")
    out["neighbors"] = hashlib.sha256((run / "neighbors" / "neighbors_train.npy").read_bytes()).hexdigest()[:16]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=Path, default=REPO / "runs/determinism")
    parser.add_argument("--threads", type=int, nargs="+", default=[2, 2, 1])
    parser.add_argument("--compare", type=Path, nargs="*", default=[], help="finished run directories made elsewhere")
    parser.add_argument("--note", default="", help="a line for the reader, e.g. where the compared runs came from")
    parser.add_argument("--out", type=Path, default=None, help="write OUT.json and OUT.md")
    args = parser.parse_args()
    args.runs.mkdir(parents=True, exist_ok=True)
    config = args.runs / "config.yaml"
    atomic_write_text(config, CONFIG)
    rows = {}
    for index, threads in enumerate(args.threads):
        run = args.runs / f"run{index}_threads{threads}"
        subprocess.run([str(REPO / ".venv/bin/scan-train"), str(config), "--output", str(run), "--no-progress",
                        "--threads", str(threads)], check=True, stdout=subprocess.DEVNULL)
        rows[run.name] = digests(run)
    for run in args.compare:
        rows[f"{run} (compared)"] = digests(run)
    first = next(iter(rows.values()))
    lines = [f"Command: `{command_line()}`", "", f"Machine: {machine(torch.device('cpu'))['cpu']}", "",
             *([args.note, ""] if args.note else []),
             "Config (every stage, strong views, default EMA teacher):", "", "```yaml", CONFIG.rstrip(), "```", "",
             "| run | " + " | ".join(first) + " | identical to the first |", "|---|" + "---|" * (len(first) + 1)]
    for name, row in rows.items():
        lines.append(f"| {name} | " + " | ".join(row.values()) + f" | {row == first} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        write_json(args.out.with_suffix(".json"), {"command": command_line(), "machine": machine(torch.device("cpu")),
                                                  "note": args.note, "config": CONFIG, "digests": rows})
        atomic_write_text(args.out.with_suffix(".md"), text)


if __name__ == "__main__":
    main()
