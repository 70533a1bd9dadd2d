"""Self-labeling variants side by side, from one finished run's SCAN model: which teacher, which views.

Every variant starts from the same SCAN model (the run's chosen head), trains `--epochs`
self-labeling epochs through the stage's own loop (trainer.stages.selflabel.GuardedSelfLabeling,
collapse guard as configured in the run), and records after every epoch the label-free health
the guard sees (populated clusters, agreement with the SCAN model, size entropy, confident
fraction) and, for the reader only, the test-split ACC of the student and of the teacher.
Labels never reach training.

    .venv/bin/python benchmarks/selflabel_teachers.py runs/base/seed0 \\
        --out benchmarks/results/selflabel_teachers_cpu

Variants (`--variants`, default all): {weak,strong}_{live,epoch,ema}.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.common import command_line, machine, write_json  # noqa: E402
from trainer.atomic import atomic_write_text  # noqa: E402
from trainer.data import load_dataset  # noqa: E402
from trainer.embed import predict_images  # noqa: E402
from trainer.evaluate import cluster_metrics  # noqa: E402
from trainer.rundir import RunDir  # noqa: E402
from trainer.stages.common import load_stage_model  # noqa: E402
from trainer.stages.selflabel import GuardedSelfLabeling  # noqa: E402

VARIANTS = [f"{views}_{teacher}" for views in ("weak", "strong") for teacher in ("live", "epoch", "ema")]


def run_variant(run: RunDir, name: str, epochs: int, device: torch.device) -> dict:
    config = run.load_config()
    views, teacher = name.split("_")
    cfg = dataclasses.replace(config.selflabel, epochs=epochs, augment=views, teacher=teacher)
    train = load_dataset(config.data, "train", seed=config.seed)
    test = load_dataset(config.data, "test", seed=config.seed)
    model, state = load_stage_model(run.stage_dir("scan") / "model.pt", expected_fingerprint=train.fingerprint())
    model.keep_head(state["chosen_head"])
    model.to(device)

    def acc(m: torch.nn.Module) -> float:
        probs = predict_images(m, test, device, 2048, 0)[0][0]
        return round(cluster_metrics(probs.argmax(1), test.labels.numpy(), config.scan.num_clusters)["acc"], 4)

    loop = GuardedSelfLabeling(model, train, device, cfg, config.augment, config.seed)
    out = {"variant": name, "start_test_acc": acc(model), "start_health": loop.baseline.to_dict(), "epochs": []}
    started = time.perf_counter()

    def record(epoch, metrics, health, problems):
        row = {"epoch": epoch, "student_test_acc": acc(model),
               "teacher_test_acc": acc(loop.teacher.model) if loop.teacher is not None else None,
               "pseudo_labelled": round(metrics["pseudo_labelled"], 3), "health": health.to_dict(),
               "guard": problems, "seconds": round(time.perf_counter() - started, 1)}
        out["epochs"].append(row)
        print(f"{name} epoch {epoch}: student ACC {row['student_test_acc']}, teacher ACC {row['teacher_test_acc']}, "
              f"populated {health.populated}, agreement {health.agreement:.3f}, entropy {health.size_entropy:.3f}, "
              f"confident {health.confident_fraction:.3f}" + (f" -- guard: {'; '.join(problems)}" if problems else ""),
              flush=True)

    loop.run(record)
    result = loop.finish()
    out.update(kept_epoch=result.kept_epoch, stop_reason=loop.stop_reason, final_test_acc=acc(model))
    return out


def markdown(result: dict) -> str:
    lines = [f"Command: `{result['command']}`", "", f"Machine: {result['machine']['cpu']}, "
             f"{result['machine']['cpu_count']} cores, torch {result['machine']['torch']}, {result['machine']['device']}",
             "", f"Run: {result['run']} (SCAN test ACC {result['variants'][0]['start_test_acc']}); "
             f"{result['epochs']} epochs per variant unless the guard stopped it.", "",
             "| variant | after epoch 1: populated / agreement / size entropy | guard stop | kept epoch | "
             "kept model test ACC | best student ACC | last teacher ACC |",
             "|---|---|---|---|---|---|---|"]
    for v in result["variants"]:
        first = v["epochs"][0]["health"]
        best = max(e["student_test_acc"] for e in v["epochs"])
        teacher = v["epochs"][-1]["teacher_test_acc"]
        lines.append(f"| {v['variant']} | {first['populated']} / {first['agreement']:.3f} / {first['size_entropy']:.3f} | "
                     f"{v['stop_reason'] or '-'} | {v['kept_epoch']} | {v['final_test_acc']} | {best} | "
                     f"{teacher if teacher is not None else '-'} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a run directory whose scan stage is done")
    parser.add_argument("--variants", nargs="+", default=VARIANTS, choices=VARIANTS)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--out", type=Path, default=None, help="write OUT.json and OUT.md")
    args = parser.parse_args()
    device = torch.device("cpu")
    run = RunDir(args.run)
    result = {"command": command_line(), "machine": machine(device), "run": str(args.run), "epochs": args.epochs,
              "variants": [run_variant(run, name, args.epochs, device) for name in args.variants]}
    text = markdown(result)
    print(text)
    if args.out:
        write_json(args.out.with_suffix(".json"), result)
        atomic_write_text(args.out.with_suffix(".md"), text)


if __name__ == "__main__":
    main()
