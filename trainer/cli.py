"""`scan-train CONFIG --output RUN_DIR`: the command-line edge. Composes; holds no logic of its own."""

from __future__ import annotations

import sys

import click

from trainer.config import load_config
from trainer.device import configure_cpu_threads, resolve_device
from trainer.errors import TrainerError
from trainer.pipeline import ORDER, run_pipeline


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--output", "-o", required=True, type=click.Path(file_okay=False), help="Run directory (created; reused to resume).")
@click.option("--stage", type=click.Choice(ORDER), default=None, help="Run only this stage (earlier ones must be done).")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | cuda:N")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a config value, e.g. --set pretext.epochs=20 (repeatable).")
@click.option("--progress/--no-progress", default=None, help="Progress bars (default: when stderr is a terminal).")
def main(config: str, output: str, stage: str | None, device: str, overrides: tuple[str, ...], progress: bool | None) -> None:
    """Train SCAN on the images described by CONFIG (a YAML preset from configs/), writing RUN_DIR."""
    if progress is None:
        progress = sys.stderr.isatty()
    try:
        run_config = load_config(config, list(overrides))
        torch_device = resolve_device(device)
        if torch_device.type == "cpu":
            configure_cpu_threads()
        report = run_pipeline(run_config, output, torch_device, stage=stage, progress=progress)
    except TrainerError as exc:
        click.echo(f"scan-train: error: {exc}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        click.echo(f"scan-train: interrupted; run the same command again to resume from {output}", err=True)
        sys.exit(130)
    click.echo(final_summary(report, output))


def final_summary(report: dict, output: str) -> str:
    """A few lines for people: which model to take, how good it is, where to look."""
    lines = [f"report: {output}/report.json"]
    final = report.get("final")
    if final is None:
        return "\n".join(lines)
    lines.append(f"final model: {output}/{final['model']} ({final['kept']})")
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
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    main()
