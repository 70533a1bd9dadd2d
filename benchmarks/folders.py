"""The folder preset on evaluation folders with hidden labels, against k-means on pixels.

For each set written by `benchmarks/make_folders.py` (unlabeled image files; the classes in a CSV
outside the folder), one real `scan-train configs/folder.yaml --set data.root=...` run (a
subprocess, all four stages, the folder plan deciding everything the preset does not fix; the
number of clusters set to the true number of classes), timed end to end. The run's
`baselines/assignments.csv` gives every training image's cluster under each method: the model
(self-label, or the SCAN model the guard kept), SCAN, k-means on pixels and on the pretext
features. They are scored against the hidden CSV here, and only here (ACC with Hungarian
matching, NMI, ARI on the training images: a folder has no test split). The table also shows
whether the run's label-free criterion picked the method that ACC ranks first.

    .venv/bin/python benchmarks/folders.py --sets fm3 fm5 fm7 fm5_imbalanced \
        --out benchmarks/results/folder_preset_cpu

The load on the machine while it ran (load average, other busy processes) is recorded, because
wall time on a shared machine depends on it. Re-running reuses finished run directories.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.common import command_line, machine, write_json  # noqa: E402
from benchmarks.make_folders import IMAGES_DIR, SETS, make_folder, read_labels  # noqa: E402
from trainer.baselines import CRITERION  # noqa: E402
from trainer.evaluate import cluster_metrics  # noqa: E402

METHODS = ("model", "scan", "kmeans_pixels", "kmeans_pretext")
ACC_TIE = 0.01


def busy_processes(min_cpu: float = 20.0) -> list[str]:
    """Other processes using more than `min_cpu` % of a core right now (ps), for the record."""
    out = subprocess.run(["ps", "-eo", "pid,ni,pcpu,args", "--sort=-pcpu"], capture_output=True, text=True).stdout
    busy = []
    for line in out.splitlines()[1:]:
        pid, nice, cpu, args = line.split(None, 3)
        if float(cpu) >= min_cpu and int(pid) != os.getpid() and "ps -eo" not in args:
            busy.append(f"nice {nice}, {cpu}% cpu: {args[:120]}")
    return busy


def read_assignments(path: Path) -> dict[str, dict[str, int]]:
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    return {column: {row["source"]: int(row[column]) for row in rows} for column in rows[0] if column != "source"}


def train(set_name: str, images: Path, clusters: int, run_dir: Path, threads: int | None, extra: list[str]) -> dict:
    command = [str(REPO / ".venv/bin/scan-train"), "configs/folder.yaml", "--output", str(run_dir), "--no-progress",
               "--set", f"data.root={images}", "--set", f"scan.num_clusters={clusters}",
               *(["--threads", str(threads)] if threads else []), *sum((["--set", e] for e in extra), [])]
    print("$", " ".join(command), flush=True)
    load_before, busy_before = os.getloadavg(), busy_processes()
    started = time.perf_counter()
    result = subprocess.run(command, cwd=REPO, text=True, capture_output=True)
    wall = time.perf_counter() - started
    log = run_dir.parent / f"{run_dir.name}.log"
    log.write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        raise SystemExit(f"scan-train failed on {set_name} (see {log}):\n{result.stderr[-2000:]}")
    return {"command": " ".join(command), "wall_s": round(wall, 1), "load_before": [round(v, 2) for v in load_before],
            "load_after": [round(v, 2) for v in os.getloadavg()], "busy_before": busy_before}


def score(run_dir: Path, labels: dict[str, int], classes: int) -> dict:
    report = json.loads((run_dir / "report.json").read_text())
    baselines = report["baselines"]
    assigned = read_assignments(run_dir / baselines["assignments"])
    model = baselines["model"]
    out = {}
    for method in METHODS:
        column = model if method == "model" else method
        sources = sorted(assigned[column])
        pred = np.array([assigned[column][s] for s in sources])
        truth = np.array([labels[s] for s in sources])
        # class ids -> 0..classes-1 for the confusion matrix
        ids = {c: i for i, c in enumerate(sorted(set(labels.values())))}
        metrics = cluster_metrics(pred, np.array([ids[t] for t in truth]), baselines["clusters"], classes)
        out[method] = {**{k: round(v, 4) for k, v in metrics.items()},
                       CRITERION: baselines["methods"][column][CRITERION]}
    acc_best = max(("model", "kmeans_pixels", "kmeans_pretext"), key=lambda m: out[m]["acc"])
    recommended = "model" if baselines["recommended"] in ("scan", "selflabel") else baselines["recommended"]
    # the criterion's pick counts as right when its ACC is within ACC_TIE of the best one's
    return {
        "methods": out,
        "model_stage": model,
        "selflabel_kept": report["selflabel"].get("kept"),
        "recommended": baselines["recommended"],
        "acc_best": acc_best,
        "criterion_picks_acc_best": out[recommended]["acc"] >= out[acc_best]["acc"] - ACC_TIE,
        "plan": {k: v["value"] for k, v in report["plan"]["planned"].items()},
        "stage_own_s": {s: report[s].get("wall_time_s") for s in ("pretext", "neighbors", "scan", "selflabel")},
        "baselines_s": baselines["wall_time_s"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", nargs="+", choices=sorted(SETS), default=["fm3", "fm5", "fm7", "fm5_imbalanced"])
    parser.add_argument("--folders", type=Path, default=REPO / "runs/folders", help="where make_folders wrote them")
    parser.add_argument("--runs", type=Path, default=REPO / "runs/bench_folders")
    parser.add_argument("--threads", type=int, default=None, help="scan-train --threads")
    parser.add_argument("--set", dest="extra", action="append", default=[], help="extra scan-train overrides")
    parser.add_argument("--out", type=Path, default=None, help="write OUT.json and OUT.md")
    parser.add_argument("--note", default="", help="a line for the record, e.g. what else ran on the machine")
    args = parser.parse_args()
    args.runs.mkdir(parents=True, exist_ok=True)

    results = {}
    for name in args.sets:
        spec = SETS[name]
        folder = args.folders / name
        if not (folder / IMAGES_DIR).is_dir():
            make_folder(spec, args.folders)
        run_dir = args.runs / name
        timing = None
        if not (run_dir / "report.json").exists() or "final" not in json.loads((run_dir / "report.json").read_text()):
            timing = train(name, folder / IMAGES_DIR, len(spec.classes), run_dir, args.threads, args.extra)
        else:
            previous = json.loads(args.out.with_suffix(".json").read_text())["sets"].get(name) if args.out and \
                args.out.with_suffix(".json").exists() else None
            timing = previous["timing"] if previous else None
        results[name] = {"classes": list(spec.classes), "images": spec.size, "timing": timing,
                         **score(run_dir, read_labels(folder), len(spec.classes))}
        print(json.dumps({name: results[name]["methods"]}), flush=True)

    lines = [
        "| set | images | model ACC | SCAN ACC | k-means pixels ACC | k-means pretext ACC | model - pixels | "
        f"criterion ({CRITERION}): model / pixels / pretext | recommended | its ACC within {ACC_TIE} of the best | "
        "wall s (end to end) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        m = r["methods"]
        wall = r["timing"]["wall_s"] if r["timing"] else "-"
        lines.append(
            f"| {name} | {r['images']} | {m['model']['acc']:.3f} | {m['scan']['acc']:.3f} | "
            f"{m['kmeans_pixels']['acc']:.3f} | {m['kmeans_pretext']['acc']:.3f} | "
            f"{m['model']['acc'] - m['kmeans_pixels']['acc']:+.3f} | {m['model'][CRITERION]:.3f} / "
            f"{m['kmeans_pixels'][CRITERION]:.3f} / {m['kmeans_pretext'][CRITERION]:.3f} | {r['recommended']} | "
            f"{r['criterion_picks_acc_best']} | {wall} |")
    met = [n for n, r in results.items() if r["methods"]["model"]["acc"] > r["methods"]["kmeans_pixels"]["acc"]
           and r["timing"] and r["timing"]["wall_s"] <= 600]
    missed = [f"{n} (model ACC {r['methods']['model']['acc'] - r['methods']['kmeans_pixels']['acc']:+.3f} vs "
              f"pixels, {r['timing']['wall_s'] if r['timing'] else '?'} s)" for n, r in results.items() if n not in met]
    lines += ["", f"Target (the folder preset's model beats k-means on pixels, end to end in at most 10 min): met on "
              f"{len(met)} of {len(results)} sets ({', '.join(met) or 'none'})"
              + (f"; not met on {'; '.join(missed)}." if missed else "."), "",
              "Planned per set (everything else is configs/folder.yaml):", ""]
    lines += [f"- {n}: " + ", ".join(f"{k}={v}" for k, v in r["plan"].items()) for n, r in results.items()]
    table = "\n".join(lines)
    print(table)
    if args.out:
        info = machine(torch.device("cpu"))
        result = {"command": command_line(), "machine": info, "note": args.note, "sets": results}
        write_json(args.out.with_suffix(".json"), result)
        loads = "; ".join(f"{n}: load average {r['timing']['load_before']} before, {r['timing']['load_after']} after"
                          for n, r in results.items() if r["timing"])
        md = (f"Command: `{result['command']}`\n\nMachine: {info['cpu']}, {info['cpu_count']} cores, no GPU, "
              f"torch {info['torch']}\n\nLoad while the runs ran: {loads}\n\n"
              + (f"{args.note}\n\n" if args.note else "") + f"{table}\n")
        from trainer.atomic import atomic_write_text

        atomic_write_text(args.out.with_suffix(".md"), md)
        print(f"wrote {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
