"""`scan-export RUN_DIR --repository DIR --model-name NAME`: the command-line edge. Composes; holds no logic."""

from __future__ import annotations

import sys

import click

from export.errors import ExportError
from export.graph import describe_parity
from export.publish import TritonOptions
from export.run import export_run
from trainer.cliversion import ModelVersionCommand, version_option
from trainer.device import configure_cpu_threads, resolve_device
from trainer.errors import TrainerError


def _version(value: str) -> int | None:
    if value == "next":
        return None
    if not value.isdigit() or int(value) < 1:
        raise click.BadParameter(f"expected a positive integer or 'next', got {value!r}")
    return int(value)


def _head(value: str) -> str | int:
    if value == "best":
        return value
    if not value.isdigit():
        raise click.BadParameter(f"expected 'best' or a head number, got {value!r}")
    return int(value)


@click.command(cls=ModelVersionCommand, context_settings={"help_option_names": ["-h", "--help"]})
@version_option("scan-export")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--repository", required=True, type=click.Path(file_okay=False), help="Triton model repository (created if missing).")
@click.option("--model-name", required=True, help="Folder name of the model in the repository.")
@click.option("--model-version", "model_version", default="next", show_default=True,
              help="Model version number to write, or 'next'.")
@click.option("--head", default="best", show_default=True,
              help="'best': the run's final model (self-labeled, else SCAN's selected head); K: SCAN head K.")
@click.option("--device", default="auto", show_default=True, help="Where prototypes are computed: auto | cpu | cuda[:N].")
@click.option("--threshold", type=float, default=None, help="Confidence threshold (default: the run's selflabel.threshold).")
@click.option("--data-root", default=None, help="Where the run's training images are now, if they moved.")
@click.option("--instance-kind", type=click.Choice(["auto", "cpu", "gpu"]), default="auto", show_default=True,
              help="Triton instance group kind (auto: GPU when the Triton server has one).")
@click.option("--instances", type=click.IntRange(min=1), default=1, show_default=True, help="Triton model instances.")
@click.option("--max-batch-size", type=click.IntRange(min=1), default=64, show_default=True, help="Triton max_batch_size.")
@click.option("--max-queue-delay-us", type=click.IntRange(min=0), default=500, show_default=True,
              help="Triton dynamic batching: longest wait to fill a batch.")
@click.option("--keep-versions", type=click.IntRange(min=1), default=1, show_default=True,
              help="Triton version_policy: serve the newest N versions.")
@click.option("--progress/--no-progress", default=None, help="Progress bars (default: when stderr is a terminal).")
def main(run_dir: str, repository: str, model_name: str, model_version: str, head: str, device: str,
         threshold: float | None, data_root: str | None, instance_kind: str, instances: int, max_batch_size: int,
         max_queue_delay_us: int, keep_versions: int, progress: bool | None) -> None:
    """Export the model trained in RUN_DIR as a new version of MODEL_NAME in a Triton model repository."""
    if progress is None:
        progress = sys.stderr.isatty()
    try:
        number = _version(model_version)
        chosen_head = _head(head)
    except click.BadParameter as exc:
        click.echo(f"scan-export: error: {exc}", err=True)
        sys.exit(2)
    try:
        torch_device = resolve_device(device)
        if torch_device.type == "cpu":
            configure_cpu_threads()
        triton = TritonOptions(max_batch_size=max_batch_size, instance_kind=instance_kind, instance_count=instances,
                               max_queue_delay_us=max_queue_delay_us, keep_versions=keep_versions)
        published = export_run(run_dir, repository, model_name, number, chosen_head, torch_device, triton,
                               threshold, data_root, progress, log=lambda line: click.echo(f"scan-export: {line}"))
    except (ExportError, TrainerError) as exc:
        click.echo(f"scan-export: error: {exc}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        click.echo("scan-export: interrupted; no version was published", err=True)
        sys.exit(130)
    meta = published.metadata
    test = meta["source"].get("test") or {}
    click.echo(
        f"{published.name} version {published.version}: {published.path}\n"
        f"  input uint8 {meta['input']['channels']}x{meta['input']['height']}x{meta['input']['width']}, "
        f"{meta['num_clusters']} clusters, {meta['embedding_dim']}-d embedding, "
        f"confidence threshold {meta['confidence_threshold']}\n"
        f"  from {meta['source']['run']} ({meta['source']['stage']}, head {meta['source']['head']})"
        + (f", test ACC {test['acc']:.3f}" if test.get("acc") is not None else "")
        + f"\n  parity: {describe_parity(meta['parity'])}\n"
        f"  prototypes: {meta['prototypes']['count']} in a faiss index"
    )


if __name__ == "__main__":  # pragma: no cover
    main()
