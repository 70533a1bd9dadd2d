"""`scan-serve --repository DIR --model-name NAME`: the command-line edge. Composes; holds no logic."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Optional

import click

from scan_serve.errors import ServeError
from scan_serve.inputs import InputLimits
from scan_serve.server import serve
from scan_serve.settings import ServeSettings
from trainer.cliversion import ModelVersionCommand, version_option


def _read(path: Optional[str], what: str) -> Optional[bytes]:
    if path is None:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise click.UsageError(f"{what} {path}: {exc.strerror}") from None


class _JsonLines(logging.Formatter):
    """One JSON object per log record: time (UTC, ISO 8601), level, logger, message."""

    def format(self, record: logging.LogRecord) -> str:
        return json.dumps({"time": self.formatTime(record, "%Y-%m-%dT%H:%M:%SZ"), "level": record.levelname,
                           "logger": record.name, "message": record.getMessage()}
                          | ({"exception": self.formatException(record.exc_info)} if record.exc_info else {}))


def _configure_logging(style: str) -> None:
    """Every gateway log line on stderr with its UTC time and level (`text`), or as JSON lines (`json`)."""
    if style == "json":
        formatter: logging.Formatter = _JsonLines()
    else:
        formatter = logging.Formatter("%(asctime)s %(levelname)s scan-serve: %(message)s", "%Y-%m-%dT%H:%M:%SZ")
    formatter.converter = time.gmtime
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
    logging.getLogger("faiss").setLevel(logging.WARNING)  # not "Successfully loaded faiss" on every start


def _token(path: str) -> str:
    """The operator token in `path`: one line of printable ASCII without spaces, as a gRPC header value allows."""
    try:
        token = (_read(path, "--token-file") or b"").decode("ascii").strip()
    except UnicodeDecodeError as exc:
        raise click.UsageError(f"--token-file {path}: byte {exc.start} is not ASCII; a token is printable ASCII "
                               "without spaces (e.g. `openssl rand -hex 32`)") from None
    if not token:
        raise click.UsageError(f"--token-file {path} is empty")
    bad = next((i for i, c in enumerate(token) if not "!" <= c <= "~"), None)
    if bad is not None:
        raise click.UsageError(f"--token-file {path}: character {bad} ({token[bad]!r}) is a space or control "
                               "character; a token is printable ASCII without spaces (e.g. `openssl rand -hex 32`)")
    return token


@click.command(cls=ModelVersionCommand,
               context_settings={"help_option_names": ["-h", "--help"], "auto_envvar_prefix": "SCAN_SERVE"})
@click.option("--repository", required=True, type=click.Path(file_okay=False), help="Model repository written by scan-export.")
@click.option("--model-name", required=True, help="Model folder in the repository.")
@click.option("--model-version", "model_version", type=click.IntRange(min=1), default=None,
              help="Model version to serve (default: the newest intact one).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (0.0.0.0: every interface).")
@click.option("--port", type=click.IntRange(0, 65535), default=50051, show_default=True, help="gRPC port (0: any free).")
@click.option("--metrics-port", type=click.IntRange(0, 65535), default=9464, show_default=True,
              help="Prometheus /metrics port (0: any free).")
@click.option("--no-metrics", is_flag=True, help="Do not serve /metrics.")
@click.option("--triton-url", default=None, help="HOST:PORT of a Triton gRPC endpoint serving the same repository.")
@click.option("--device", default="cpu", show_default=True, help="Embedded backend: cpu | cuda[:N].")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="Embedded backend: onnxruntime threads.")
@click.option("--max-batch", type=click.IntRange(min=1), default=64, show_default=True,
              help="Embedded backend: images per batched inference.")
@click.option("--token-file", type=click.Path(dir_okay=False), default=None,
              help="File holding the operator bearer token (operator methods are refused without one).")
@click.option("--tls-cert", type=click.Path(dir_okay=False), default=None, help="PEM certificate chain (with --tls-key).")
@click.option("--tls-key", type=click.Path(dir_okay=False), default=None, help="PEM private key (with --tls-cert).")
@click.option("--max-images", type=click.IntRange(min=1), default=256, show_default=True, help="Images per request.")
@click.option("--max-image-bytes", type=click.IntRange(min=1), default=8 << 20, show_default=True, help="Bytes per image.")
@click.option("--max-pixels", type=click.IntRange(min=1), default=4096 * 4096, show_default=True,
              help="Pixels per image, checked before decoding.")
@click.option("--store", type=click.Path(file_okay=False), default=None,
              help="Folder of the fine-tuning image store and job records (fine-tuning is off without it).")
@click.option("--store-max-images", type=click.IntRange(min=1), default=100_000, show_default=True)
@click.option("--store-max-bytes", type=click.IntRange(min=1), default=2 << 30, show_default=True)
@click.option("--finetune-device", default="cpu", show_default=True, help="Where fine-tuning jobs train.")
@click.option("--grace", type=float, default=10.0, show_default=True, help="Seconds in-flight requests get on SIGTERM.")
@click.option("--max-concurrent-rpcs", type=click.IntRange(min=1), default=64, show_default=True,
              help="Calls in progress at once; more are refused with RESOURCE_EXHAUSTED (load shedding).")
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="text: 'TIME LEVEL scan-serve: message' lines; json: one JSON object per line.")
@click.option("--ready-file", type=click.Path(dir_okay=False), default=None,
              help="Write JSON {pid, port, metrics_port, model_name, model_version} here once serving; removed on stop.")
@version_option("scan-serve")
def main(repository: str, model_name: str, model_version: Optional[int], host: str, port: int, metrics_port: int,
         no_metrics: bool, triton_url: Optional[str], device: str, threads: Optional[int], max_batch: int,
         token_file: Optional[str], tls_cert: Optional[str], tls_key: Optional[str], max_images: int,
         max_image_bytes: int, max_pixels: int, store: Optional[str], store_max_images: int, store_max_bytes: int,
         finetune_device: str, grace: float, max_concurrent_rpcs: int, log_format: str, ready_file: Optional[str]) -> None:
    """Serve a model version of a repository over gRPC (ClassifyUnlabeled, model info, prototypes)."""
    _configure_logging(log_format)
    log = logging.getLogger("scan_serve")
    try:
        if (tls_cert is None) != (tls_key is None):
            raise click.UsageError("--tls-cert and --tls-key go together")
        token = None
        if token_file is not None:
            token = _token(token_file)
            if os.stat(token_file).st_mode & 0o077:
                log.warning("%s is readable by other users (chmod 600 it)", token_file)
        settings = ServeSettings(
            repository=Path(repository), model_name=model_name, version=model_version, host=host, port=port,
            metrics_port=None if no_metrics else metrics_port, triton_url=triton_url, device=device, threads=threads,
            max_batch=max_batch, token=token, tls_cert=_read(tls_cert, "--tls-cert"), tls_key=_read(tls_key, "--tls-key"),
            limits=InputLimits(max_images=max_images, max_image_bytes=max_image_bytes, max_pixels=max_pixels),
            store=Path(store) if store else None, store_max_images=store_max_images, store_max_bytes=store_max_bytes,
            finetune_device=finetune_device, max_concurrent_rpcs=max_concurrent_rpcs,
        )
        serve(settings, grace, log_line=log.info,
              ready_file=Path(ready_file) if ready_file else None)
    except click.UsageError as exc:
        click.echo(f"scan-serve: error: {exc.format_message()}", err=True)
        sys.exit(2)
    except ServeError as exc:
        click.echo(f"scan-serve: error: {exc}", err=True)
        sys.exit(2)


if __name__ == "__main__":  # pragma: no cover
    main()
