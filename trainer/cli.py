"""`scan-train CONFIG --output RUN_DIR`: the command-line edge. Composes; holds no logic of its own."""

from __future__ import annotations

import sys

import click

from trainer.baselines import baselines_line
from trainer.cliversion import version_option
from trainer.config import RunConfig, explicit_keys, load_config
from trainer.data.plan import FolderPlan, plan_folder
from trainer.device import configure_cpu_threads, resolve_device
from trainer.distributed import SINGLE, Distributed, init_distributed, shutdown
from trainer.errors import TrainerError
from trainer.pipeline import ORDER, TIMINGS, run_pipeline, timings_table
from trainer.rundir import RunDir


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@version_option("scan-train")
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--output", "-o", required=True, type=click.Path(file_okay=False), help="Run directory (created; reused to resume).")
@click.option("--stage", type=click.Choice(ORDER), default=None, help="Run only this stage (earlier ones must be done).")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | cuda:N")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a config value, e.g. --set pretext.epochs=20 (repeatable).")
@click.option("--progress/--no-progress", default=None, help="Progress bars (default: when stderr is a terminal).")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="CPU threads per process (default: $OMP_NUM_THREADS, else all cores; under torchrun the cores "
                   "divided among the processes of the node).")
def main(
    config: str, output: str, stage: str | None, device: str, overrides: tuple[str, ...], progress: bool | None,
    threads: int | None,
) -> None:
    """Train SCAN on the images described by CONFIG (a YAML preset from configs/), writing RUN_DIR.

    Several processes: `torchrun --no-python --nproc_per_node N scan-train CONFIG -o RUN_DIR`
    (NCCL, one GPU each, or gloo on CPU); batch sizes in CONFIG are global batches.
    """
    if progress is None:
        progress = sys.stderr.isatty()
    dist = SINGLE
    try:
        run_config = load_config(config, list(overrides))
        dist, torch_device = init_distributed(resolve_device(device))
        plan = None
        if run_config.data.name == "folder":  # settings chosen from the folder, unless set
            run_config, plan = _planned(config, list(overrides), run_config, torch_device.type, output)
            if dist.is_main:
                click.echo("\n".join(plan.lines()))
        if torch_device.type == "cpu":
            configure_cpu_threads(threads, dist.local_world_size)
        report = run_pipeline(run_config, output, torch_device, stage=stage, progress=progress, dist=dist,
                              plan=plan.to_dict() if plan else None)
    except TrainerError as exc:
        click.echo(f"scan-train: error{_rank_of(dist)}: {exc}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        if dist.is_main:
            click.echo(f"scan-train: interrupted; run the same command again to resume from {output}", err=True)
        sys.exit(130)
    finally:
        shutdown(dist)
    if dist.is_main:
        click.echo(final_summary(report, output))


def _planned(config: str, overrides: list[str], run_config: RunConfig, device_type: str, output: str
             ) -> tuple[RunConfig, FolderPlan]:
    """The folder's plan (a resumed run keeps the values it started with) and the config it gives."""
    run = RunDir(output)
    plan = plan_folder(run_config, device_type, explicit_keys(config, overrides))
    plan = plan.keep_run(run.load_config() if run.config_path.exists() else None)
    return load_config(config, overrides, planned=plan.overrides()), plan


def _rank_of(dist: Distributed) -> str:
    return f" (rank {dist.rank})" if dist.enabled else ""


def final_summary(report: dict, output: str) -> str:
    """A few lines for people: which model to take, how good it is, where to look."""
    lines = [f"report: {output}/report.json", *_final_lines(report.get("final"), output)]
    baselines = baselines_line(report.get("baselines"))
    if baselines:
        lines.append(baselines)
    table = timings_table(report.get(TIMINGS, {}))
    if table:
        lines += ["stage times (wall s: around the stage's last call; own s: the time the stage reports):",
                  *("  " + row for row in table.splitlines())]
    return "\n".join(lines)


def _final_lines(final: dict | None, output: str) -> list[str]:
    if final is None:
        return []
    lines = [f"final model: {output}/{final['model']} ({final['kept']})"]
    health = final.get("health")
    if health:
        lines.append(
            f"clusters: {health['populated']}/{health['clusters']} populated, sizes {health['sizes']}, "
            f"{health['confident_fraction']:.0%} of training images confident"
        )
    if "test" in final:
        lines.append("test split: ACC {acc:.3f}  NMI {nmi:.3f}  ARI {ari:.3f}".format(**final["test"]))
    for name, path in final.get("pictures", {}).items():
        lines.append(f"picture ({name}): {output}/{path}")
    return lines


if __name__ == "__main__":  # pragma: no cover
    main()
