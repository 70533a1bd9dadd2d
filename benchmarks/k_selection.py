"""Choosing K without labels: the K search against the same pipeline told the true number of classes.

Five sets with a known number of classes, all real Fashion-MNIST images: the four evaluation
folders of `benchmarks/make_folders.py` (3, 5, 7 classes, and 5 imbalanced 40/25/15/12/8 %;
preset `configs/folder.yaml`, scored on the folder's own images against the hidden labels.csv,
as a folder has no test split) and Fashion-MNIST with all 10 classes (preset
`configs/fashion_mnist_cpu.yaml`, scored on the 10k test images).

For each set the pretext and neighbors stages run once (`RUN/<set>/base`, a real `scan-train
--stage` run); two copies of that run directory then finish the pipeline with real `scan-train`
subprocesses:

- `auto`: `scan.num_clusters=auto`, `scan.k_range=[2, 20]` (k_selection, SCAN, self-labeling);
- `true`: `scan.num_clusters=<true count>` (SCAN, self-labeling).

The table gives the chosen K, each arm's ACC/NMI/ARI (many-to-one ACC when K exceeds the
classes), and the K search's wall time against the sum of the preset's stages (pretext,
neighbors, SCAN, self-labeling of the `true` arm). Re-running reuses finished run directories.

    .venv/bin/python benchmarks/k_selection.py --out benchmarks/results/k_selection_cpu
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.common import command_line, machine, write_json  # noqa: E402
from benchmarks.make_folders import IMAGES_DIR, SETS, make_folder, read_labels  # noqa: E402
from trainer.atomic import atomic_write_text  # noqa: E402
from trainer.evaluate import cluster_metrics  # noqa: E402

K_RANGE = (2, 20)
FASHION_MNIST = "fm10"
ALL_SETS = ("fm3", "fm5", "fm7", "fm5_imbalanced", FASHION_MNIST)
STAGES = ("pretext", "neighbors", "scan", "selflabel")
K_TOLERANCE, ACC_TOLERANCE = 1, 0.03  # the criteria: |chosen - true| <= 1, ACC within 0.03


def preset(name: str, folders: Path) -> tuple[str, list[str], int]:
    """(preset file, the --set options that point it at the set, the true number of classes)."""
    if name == FASHION_MNIST:
        return "configs/fashion_mnist_cpu.yaml", [], 10
    spec = SETS[name]
    if not (folders / name / IMAGES_DIR).is_dir():
        make_folder(spec, folders)
    return "configs/folder.yaml", [f"data.root={folders / name / IMAGES_DIR}"], len(spec.classes)


def scan_train(config: str, run_dir: Path, sets: list[str], stage: str | None = None) -> float:
    command = [str(REPO / ".venv/bin/scan-train"), config, "--output", str(run_dir), "--no-progress",
               *(["--stage", stage] if stage else []), *sum((["--set", s] for s in sets), [])]
    print("$", " ".join(command), flush=True)
    started = time.perf_counter()
    result = subprocess.run(command, cwd=REPO, text=True, capture_output=True)
    log = run_dir.parent / f"{run_dir.name}{'_' + stage if stage else ''}.log"
    log.write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        raise SystemExit(f"scan-train failed in {run_dir} (see {log}):\n{result.stderr[-2000:]}")
    return time.perf_counter() - started


def report(run_dir: Path) -> dict:
    path = run_dir / "report.json"
    return json.loads(path.read_text()) if path.exists() else {}


def finish_arm(base: Path, arm: Path, config: str, sets: list[str], scan: dict) -> None:
    """Copy the base run (pretext + neighbors done), set the arm's scan keys in it, run the rest."""
    if "final" in report(arm):
        return
    if arm.exists():
        shutil.rmtree(arm)
    shutil.copytree(base, arm)
    stored = yaml.safe_load((arm / "config.yaml").read_text())
    stored.setdefault("scan", {}).update(scan)
    atomic_write_text(arm / "config.yaml", yaml.safe_dump(stored, sort_keys=False))
    scan_train(config, arm, [*sets, *(f"scan.{k}={json.dumps(v)}" for k, v in scan.items())])


def folder_scores(run_dir: Path, labels: dict[str, int], clusters: int, classes: int) -> dict:
    with open(run_dir / "assignments.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    ids = {c: i for i, c in enumerate(sorted(set(labels.values())))}
    pred = np.array([int(r["cluster"]) for r in rows])
    truth = np.array([ids[labels[r["source"]]] for r in rows])
    return {k: round(v, 4) for k, v in cluster_metrics(pred, truth, clusters, classes).items()}


def arm_result(name: str, run_dir: Path, folders: Path, classes: int) -> dict:
    entry = report(run_dir)
    final = entry["final"]
    clusters = entry.get("k_selection", {}).get("chosen") or classes
    scores = final["test"] if name == FASHION_MNIST else folder_scores(run_dir, read_labels(folders / name),
                                                                         clusters, classes)
    return {"clusters": clusters, "final_stage": final["stage"], **{k: scores[k] for k in ("acc", "nmi", "ari")},
            "stage_s": {s: entry["timings"][s]["wall_s"] for s in entry["timings"]}}


def run_set(name: str, runs: Path, folders: Path) -> dict:
    config, sets, classes = preset(name, folders)
    base = runs / name / "base"
    base.mkdir(parents=True, exist_ok=True)
    for stage in ("pretext", "neighbors"):
        if report(base).get(stage, {}).get("status") != "done":
            scan_train(config, base, [*sets, f"scan.num_clusters={classes}"], stage)
    finish_arm(base, runs / name / "true", config, sets, {"num_clusters": classes})
    finish_arm(base, runs / name / "auto", config, sets, {"num_clusters": "auto", "k_range": list(K_RANGE)})
    true, auto = (arm_result(name, runs / name / arm, folders, classes) for arm in ("true", "auto"))
    search = report(runs / name / "auto")["k_selection"]
    preset_s = sum(true["stage_s"][s] for s in STAGES)
    return {
        "classes": classes, "chosen": search["chosen"], "structure": search["structure"],
        "message": search["message"], "search_epochs": search["epochs"], "search_heads": search["heads"],
        "candidates": [{k: c[k] for k in ("k", "stability", "stability_error", "train_acc") if k in c}
                       for c in search["candidates"]],
        "true": true, "auto": auto,
        "search_s": auto["stage_s"]["k_selection"], "preset_s": round(preset_s, 1),
        "search_share": round(auto["stage_s"]["k_selection"] / preset_s, 3),
        "k_within": abs(search["chosen"] - classes) <= K_TOLERANCE,
        "acc_within": auto["acc"] >= true["acc"] - ACC_TOLERANCE,
    }


def markdown(result: dict) -> str:
    lines = [
        "# Choosing K without labels (scan.num_clusters=auto, k_range 2..20)", "",
        f"Command: `{result['command']}`", "",
        f"Machine: {result['machine']['cpu']}, {result['machine']['cpu_count']} cores, no GPU; "
        f"torch {result['machine']['torch']}", "",
        "ACC: final model (self-label, or the SCAN model the guard kept); folders are scored on their own images "
        "(no test split), Fashion-MNIST on its 10k test images; many-to-one ACC where K exceeds the classes.", "",
        "| set | true K | chosen K | structure | ACC told true K | ACC at chosen K | difference | NMI true / chosen "
        "| K within ±1 | ACC within 0.03 | search s | preset s | search / preset |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in result["sets"].items():
        lines.append(
            f"| {name} | {r['classes']} | {r['chosen']} | {r['structure']} | {r['true']['acc']:.3f} | "
            f"{r['auto']['acc']:.3f} | {r['auto']['acc'] - r['true']['acc']:+.3f} | {r['true']['nmi']:.3f} / "
            f"{r['auto']['nmi']:.3f} | {'yes' if r['k_within'] else 'no'} | {'yes' if r['acc_within'] else 'no'} | "
            f"{r['search_s']:.0f} | {r['preset_s']:.0f} | {r['search_share']:.0%} |")
    if result.get("note"):
        lines += ["", f"Note: {result['note']}"]
    both = sum(r["k_within"] and r["acc_within"] for r in result["sets"].values())
    lines += ["", f"Both criteria met on {both} of {len(result['sets'])} sets.", "",
              "Stability (mean ARI between the heads of each K, ± its standard error) per candidate, and the "
              "train ACC of that candidate's best head (labels: evaluation only):", ""]
    for name, r in result["sets"].items():
        cells = ", ".join(f"{c['k']}: {c['stability']:.2f}±{c['stability_error']:.2f}"
                          + (f" ({c['train_acc']:.2f})" if "train_acc" in c else "") for c in r["candidates"])
        lines += [f"- **{name}** (true {r['classes']}, chose {r['chosen']}): {cells}", f"  - {r['message']}"]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", nargs="+", choices=ALL_SETS, default=list(ALL_SETS))
    parser.add_argument("--folders", type=Path, default=REPO / "runs/folders", help="where make_folders wrote them")
    parser.add_argument("--runs", type=Path, default=REPO / "runs/k_selection")
    parser.add_argument("--out", type=Path, default=None, help="write OUT.json and OUT.md")
    parser.add_argument("--note", default=None, help="a remark on how the run went, kept in OUT.json and OUT.md")
    parser.add_argument("--render", action="store_true", help="only rewrite OUT.md from OUT.json (with --note)")
    args = parser.parse_args()
    if args.render:
        result = json.loads(args.out.with_suffix(".json").read_text())
        result["note"] = args.note or result.get("note")
        write_json(args.out.with_suffix(".json"), result)
        atomic_write_text(args.out.with_suffix(".md"), markdown(result))
        return
    result = {"command": command_line(), "machine": machine(torch.device("cpu")),
              "load_before": [round(v, 2) for v in os.getloadavg()], "note": args.note, "sets": {}}
    for name in args.sets:
        result["sets"][name] = run_set(name, args.runs, args.folders)
        print(json.dumps({name: {k: result["sets"][name][k] for k in ("classes", "chosen", "search_share")}}),
              flush=True)
        if args.out:
            write_json(args.out.with_suffix(".json"), result)
    text = markdown(result)
    print(text)
    if args.out:
        atomic_write_text(args.out.with_suffix(".md"), text)


if __name__ == "__main__":
    main()
