"""The stages in order, each skipped when finished and resumed when interrupted.

Under torchrun every rank runs the training stages together; rank 0 alone mines the
neighbors (once) and writes the run directory, and the ranks meet at a barrier after
every stage.
"""

from __future__ import annotations

import contextlib
import platform
import time
from typing import Any, Callable, Optional

import torch

from trainer.atomic import atomic_write_text
from trainer.baselines import ENTRY as BASELINES, compare_baselines
from trainer.config import RunConfig
from trainer.data import load_dataset
from trainer.distributed import SINGLE, Distributed
from trainer.errors import CheckpointError, ConfigError
from trainer.rundir import RunDir
from trainer.stages.common import searches_k
from trainer.stages.kselect import STAGE as K_SELECTION, check_k_range, run_k_selection
from trainer.stages.neighbors import STAGE as NEIGHBORS, run_neighbors
from trainer.stages.pretext import STAGE as PRETEXT, run_pretext
from trainer.stages.scan import STAGE as SCAN, run_scan
from trainer.stages.selflabel import STAGE as SELFLABEL, run_selflabel

StageFn = Callable[..., dict[str, Any]]

STAGES: dict[str, StageFn] = {PRETEXT: run_pretext, NEIGHBORS: run_neighbors, K_SELECTION: run_k_selection,
                              SCAN: run_scan, SELFLABEL: run_selflabel}
ORDER = list(STAGES)
MAIN_ONLY = {NEIGHBORS, K_SELECTION}  # stages rank 0 runs alone while the other ranks wait
ASSIGNMENTS = "assignments.csv"  # every training image's cluster under the final model
TIMINGS = "timings"  # report["timings"][stage]: written when the stage runs, kept when it is skipped


def run_pipeline(
    config: RunConfig,
    output: str,
    device: torch.device,
    stage: Optional[str] = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
    dist: Distributed = SINGLE,
    plan: Optional[dict[str, Any]] = None,
) -> dict[str, Any]:
    """Run every unfinished stage (or only `stage`, whose predecessors must be done); return the report.

    `plan` (the folder plan's `to_dict()`, when settings were planned) is stored as report["plan"].
    After the scan and selflabel stages the model is compared with label-free baselines
    (`trainer.baselines`; `report.baselines: false` turns it off), and whenever a finished
    run's report lacks that comparison.
    """
    run = RunDir(output)
    if dist.is_main:
        run.bind_config(config)
    else:
        log = _quiet
    dist.barrier()
    dist.check_shared(run.config_path)
    needed = [s for s in ORDER if s != K_SELECTION or searches_k(config)]  # K is searched only when "auto"
    if stage is not None and stage not in needed:
        raise ConfigError(f"--stage {stage}: this run does not search K (scan.num_clusters is "
                          f"{config.scan.num_clusters}); set scan.num_clusters=auto to choose it")
    wanted = needed if stage is None else [stage]
    if K_SELECTION in needed and not run.stage_done(K_SELECTION):  # fail now, not after the pretext stage
        check_k_range(config, len(load_dataset(config.data, "train", seed=config.seed)))
    if stage is not None:
        missing = [s for s in needed[: needed.index(stage)] if not run.stage_done(s)]
        if missing:
            raise CheckpointError(f"--stage {stage} needs the {', '.join(missing)} stage(s) done first in {run.path}")
    if dist.is_main:
        run.update_report(
            "environment",
            {"torch": torch.__version__, "python": platform.python_version(), "device": str(device),
             "threads": torch.get_num_threads(), **dist.describe()},
        )
        if plan is not None:
            run.update_report("plan", plan)
    for name in wanted:
        done = run.stage_done(name)
        if done:
            log(f"{name}: already done in {run.path}, skipping")
        else:
            log(f"{name}: running on {_where(name, device, dist)}")
        if not done and (dist.is_main or name not in MAIN_ONLY):
            started = time.perf_counter()
            with dist.alone(device) if name in MAIN_ONLY else contextlib.nullcontext():
                entry = STAGES[name](config, run, device, progress and dist.is_main, dist)
            wall_s = time.perf_counter() - started
            if dist.is_main:
                run.update_report(name, entry)
                run.update_report(TIMINGS, {name: stage_timing(entry, wall_s, device)})
                log(f"{name}: done ({_summary(entry)})")
        if dist.is_main and _wants_baselines(config, run, name):
            with dist.alone(device):
                entry = compare_baselines(config, run, device)
            run.update_report(BASELINES, entry)
            log(f"baselines: {entry['message']} (recommended: {entry['recommended']}, {entry['wall_time_s']} s)")
        dist.barrier()
    if dist.is_main:
        _record_final(run)
    dist.barrier()
    return run.read_report()


def stage_timing(entry: dict[str, Any], wall_s: float, device: torch.device) -> dict[str, Any]:
    """report["timings"][stage]: wall seconds around the stage call in this process (this attempt only,
    so a resumed stage counts the resumed part), the stage's own `wall_time_s` when it reports one
    (its training time summed over attempts), and the device."""
    timing: dict[str, Any] = {"wall_s": round(wall_s, 1), "device": str(device)}
    if "wall_time_s" in entry:
        timing["stage_wall_time_s"] = entry["wall_time_s"]
    return timing


def timings_table(timings: dict[str, dict[str, Any]]) -> str:
    """An aligned table for people, one row per timed stage in pipeline order, then a total."""
    names = [s for s in ORDER if s in timings] + [s for s in timings if s not in ORDER]
    if not names:
        return ""
    rows = [["stage", "wall s", "own s", "device"]]
    for name in names:
        t = timings[name]
        own = t.get("stage_wall_time_s")
        rows.append([name, f"{t['wall_s']:.1f}", "-" if own is None else f"{own:.1f}", t.get("device", "-")])
    rows.append(["total", f"{sum(timings[n]['wall_s'] for n in names):.1f}", "", ""])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    align = [str.ljust, str.rjust, str.rjust, str.ljust]
    return "\n".join("  ".join(a(c, w) for a, c, w in zip(align, row, widths)).rstrip() for row in rows)


def _where(stage: str, device: torch.device, dist: Distributed) -> str:
    if not dist.enabled:
        return str(device)
    if stage in MAIN_ONLY:
        return f"rank 0 ({device}) while the other ranks wait"
    return f"{dist.world_size} processes ({dist.backend}, rank 0 on {device})"


def _wants_baselines(config: RunConfig, run: RunDir, stage: str) -> bool:
    """After scan or selflabel, unless turned off or already measured on this stage's model."""
    if stage not in (SCAN, SELFLABEL) or not config.report.baselines or not run.stage_done(stage):
        return False
    measured = run.read_report().get(BASELINES, {}).get("methods", {})
    return stage not in measured and not (stage == SELFLABEL and run.read_report()[SELFLABEL].get("skipped"))


def _quiet(_: str) -> None:
    pass


def _record_final(run: RunDir) -> None:
    """report["final"]: the model a user (and scan-export) should take from this run."""
    report = run.read_report()
    for stage in (SELFLABEL, SCAN):
        entry = report.get(stage, {})
        if entry.get("status") == "done" and "model" in entry:
            final = {"stage": stage, "model": entry["model"], "kept": entry.get("kept", f"{stage} model")}
            for key in ("test", "health", "pictures", "prototypes", "merge_suggestions"):
                if key in entry:
                    final[key] = entry[key]
            if "assignments" in entry and (run.path / entry["assignments"]).exists():
                # RUN_DIR/assignments.csv: the final model's, re-written whenever the final model is recorded
                atomic_write_text(run.path / ASSIGNMENTS, (run.path / entry["assignments"]).read_text())
                final["assignments"] = ASSIGNMENTS
            run.update_report("final", final)
            return


def _summary(entry: dict[str, Any]) -> str:
    shown = ("chosen", "structure", "final_loss", "chosen_head", "kept", "wall_time_s")
    keys = [k for k in entry if k.startswith("purity@") or k in shown]
    parts = [f"{k} {entry[k]:.3f}" if isinstance(entry[k], float) else f"{k} {entry[k]}" for k in keys]
    if "kmeans_test" in entry:
        parts.append("k-means test ACC {acc:.3f} NMI {nmi:.3f} ARI {ari:.3f}".format(**entry["kmeans_test"]))
    if "test" in entry:
        parts.append("test ACC {acc:.3f} NMI {nmi:.3f} ARI {ari:.3f}".format(**entry["test"]))
    if "health" in entry:
        h = entry["health"]
        parts.append(f"{h['populated']}/{h['clusters']} clusters populated, confident {h['confident_fraction']:.2f}")
    merge = [" + ".join(map(str, p["clusters"])) for p in entry.get("merge_suggestions", [])]
    if merge:
        parts.append(f"most-linked cluster pairs, merge candidates (merge_suggestions.png): {', '.join(merge)}")
    return ", ".join(parts)
