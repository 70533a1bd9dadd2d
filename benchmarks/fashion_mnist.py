"""Fashion-MNIST, side by side in one invocation, over several seeds:

  k-means on raw pixels | k-means on our pretext features | SCAN | SCAN + self-label

Each method trains on the 60k train split (labels never used) and is scored on the 10k
test split (ACC with Hungarian matching, NMI, ARI). The pipeline runs are real
`scan-train` runs (subprocesses) of a preset, one run directory per seed, so the wall time
per stage is what a user would see. A run whose final model is collapsed (a cluster below
the guard's population share) is flagged in the table.

    .venv/bin/python benchmarks/fashion_mnist.py --preset configs/fashion_mnist_cpu.yaml \
        --seeds 0 1 2 --runs runs/bench_fmnist --out benchmarks/results/fashion_mnist_cpu

Re-running reuses finished run directories (scan-train skips finished stages).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from trainer.config import config_from_dict  # noqa: E402
from trainer.data import load_dataset  # noqa: E402
from trainer.evaluate import cluster_metrics  # noqa: E402
from trainer.neighbors import _faiss  # noqa: E402

METHODS = ("kmeans_pixels", "kmeans_pretext", "scan", "scan_selflabel")
LABELS = {
    "kmeans_pixels": "k-means on raw pixels",
    "kmeans_pretext": "k-means on pretext features",
    "scan": "SCAN (chosen head)",
    "scan_selflabel": "SCAN + self-label",
}


def kmeans_pixels(seed: int) -> tuple[dict[str, float], float]:
    """k-means (faiss, 10 clusters, 3 restarts, all 60k points) on raw train pixels; test to the nearest centroid."""
    config = config_from_dict({"data": {"name": "fashion_mnist"}})
    train, test = load_dataset(config.data, "train"), load_dataset(config.data, "test")
    x_train = train.images.reshape(len(train), -1).numpy().astype(np.float32) / 255
    x_test = test.images.reshape(len(test), -1).numpy().astype(np.float32) / 255
    started = time.perf_counter()
    faiss = _faiss()
    # faiss subsamples to 256 points per centroid unless told otherwise: train on every image
    km = faiss.Kmeans(x_train.shape[1], 10, niter=50, nredo=3, seed=seed, verbose=False,
                      max_points_per_centroid=len(x_train))
    km.train(x_train)
    _, pred = km.index.search(x_test, 1)
    seconds = time.perf_counter() - started
    return cluster_metrics(pred[:, 0], test.labels.numpy(), 10, 10), seconds


def run_pipeline(preset: Path, run_dir: Path, seed: int, extra: list[str]) -> dict:
    command = [str(REPO / ".venv/bin/scan-train"), str(preset), "--output", str(run_dir), "--set", f"seed={seed}",
               "--no-progress", *sum((["--set", e] for e in extra), [])]
    print("$", " ".join(command), flush=True)
    result = subprocess.run(command, cwd=REPO, text=True, capture_output=True)
    log = run_dir.parent / f"{run_dir.name}.log"
    with open(log, "a") as handle:
        handle.write(result.stdout + result.stderr)
    if result.returncode != 0:
        raise SystemExit(f"scan-train failed for seed {seed} (see {log}):\n{result.stderr[-2000:]}")
    return json.loads((run_dir / "report.json").read_text())


def collapsed(health: dict) -> bool:
    return health["populated"] < health["clusters"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", type=Path, default=REPO / "configs/fashion_mnist_cpu.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--runs", type=Path, default=REPO / "runs/bench_fmnist")
    parser.add_argument("--set", dest="extra", action="append", default=[], help="extra scan-train overrides")
    parser.add_argument("--out", type=Path, default=None, help="write OUT.json and OUT.md")
    args = parser.parse_args()
    args.runs.mkdir(parents=True, exist_ok=True)

    rows: dict[str, list[dict]] = {m: [] for m in METHODS}
    per_seed = []
    for seed in args.seeds:
        pixels, pixel_seconds = kmeans_pixels(seed)
        report = run_pipeline(args.preset, args.runs / f"seed{seed}", seed, args.extra)
        times = {s: report[s].get("wall_time_s") for s in ("pretext", "neighbors", "scan", "selflabel")}
        record = {
            "seed": seed,
            "kmeans_pixels": {**pixels, "wall_time_s": round(pixel_seconds, 1)},
            "kmeans_pretext": {**report["neighbors"]["kmeans_test"], "wall_time_s": times["pretext"]},
            "scan": {**report["scan"]["test"], "collapsed": collapsed(report["scan"]["health"]),
                     "chosen_head": report["scan"]["chosen_head"], "wall_time_s": times["scan"]},
            "scan_selflabel": {**report["selflabel"]["test"], "collapsed": collapsed(report["selflabel"]["health"]),
                               "kept": report["selflabel"]["kept"], "wall_time_s": times["selflabel"]},
            "purity@20": report["neighbors"].get("purity@20"),
            "stage_wall_time_s": times,
            # the stages' own wall times (training + evaluation), so a re-run that reuses
            # finished runs reports the time the run took, not the time of the re-run
            "end_to_end_s": round(sum(times.values()), 1),
        }
        per_seed.append(record)
        for m in METHODS:
            rows[m].append(record[m])
        print(json.dumps(record), flush=True)

    summary = {
        m: {k: [float(np.mean([r[k] for r in rows[m]])), float(np.std([r[k] for r in rows[m]]))]
            for k in ("acc", "nmi", "ari")}
        for m in METHODS
    }
    lines = [
        f"Fashion-MNIST, train on 60k (no labels), test on 10k; seeds {args.seeds}; preset {args.preset.name}",
        "",
        "| method | ACC | NMI | ARI |",
        "|---|---|---|---|",
    ]
    for m in METHODS:
        cells = [f"{summary[m][k][0]:.3f} ± {summary[m][k][1]:.3f}" for k in ("acc", "nmi", "ari")]
        lines.append(f"| {LABELS[m]} | " + " | ".join(cells) + " |")
    lines += ["", "| seed | purity@20 | pretext s | neighbors s | scan s | selflabel s | sum s | "
              "SCAN ACC | +self-label ACC | kept | collapsed |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in per_seed:
        t = r["stage_wall_time_s"]
        lines.append(
            f"| {r['seed']} | {r['purity@20']:.3f} | {t['pretext']} | {t['neighbors']} | {t['scan']} | "
            f"{t['selflabel']} | {r['end_to_end_s']} | {r['scan']['acc']:.3f} | {r['scan_selflabel']['acc']:.3f} | "
            f"{r['scan_selflabel']['kept']} | {r['scan']['collapsed'] or r['scan_selflabel']['collapsed']} |"
        )
    table = "\n".join(lines)
    print(table)
    if args.out:
        cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "")
        result = {
            "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
            "machine": {"platform": platform.platform(), "cpu": cpu, "cpu_count": os.cpu_count()},
            "summary_mean_std": summary,
            "per_seed": per_seed,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
        args.out.with_suffix(".md").write_text(
            f"Command: `{result['command']}`\n\nMachine: {cpu}, {os.cpu_count()} cores, no GPU\n\n{table}\n")
        print(f"wrote {args.out}.json and .md")


if __name__ == "__main__":
    main()
