"""Multi-process overhead of pretext training: one process vs N torchrun processes, same global batch.

Both arms train the same model from the same seed with the same global batch, optimizer and
augmentation on the same machine, through the production code (trainer.stages.pretext's epoch
function, trainer.distributed's sharding, gathered NT-Xent, global BatchNorm and
DistributedDataParallel). Only the split differs:

- one process: all of the batch in one process (on CPU: every core as intra-op threads);
- N processes: `torchrun --nproc_per_node N`, each with batch/N images (on CPU: cores/N threads
  each, gloo; on GPUs: one GPU each, NCCL, which needs N GPUs).

The arms alternate (one, N, one, ...) so machine noise hits both; the script prints images/s per
arm (median over repeats, after warm-up steps) and the ratio N-process / one-process.
`--batchnorm local` measures the N-process arm without global BatchNorm statistics. Example:

    .venv/bin/python benchmarks/distributed_overhead.py --processes 2 --device cpu \
        --out benchmarks/results/distributed_overhead_cpu.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import command_line, machine  # noqa: E402
from trainer.config import load_config  # noqa: E402
from trainer.data import load_dataset  # noqa: E402
from trainer.data.base import iterate_batches  # noqa: E402
from trainer.device import configure_cpu_threads, resolve_device  # noqa: E402
from trainer.distributed import init_distributed, shutdown  # noqa: E402
from trainer.models.scan_model import ScanModel  # noqa: E402
from trainer.stages.pretext import pretext_training, train_one_epoch  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def worker(args: argparse.Namespace) -> None:
    """One arm: warm up, then time `--steps` pretext steps; rank 0 writes the figures to `--worker`."""
    dist, device = init_distributed(resolve_device(args.device))
    threads = configure_cpu_threads(None, dist.local_world_size) if device.type == "cpu" else None
    total = (args.warmup + args.steps) * args.batch
    config = load_config(REPO / args.preset, [f"data.train_subset={total}", f"model.batchnorm={args.batchnorm}"])
    train = load_dataset(config.data, "train", seed=config.seed)
    model, augment, optimizer, channels_last = pretext_training(config, train, device, dist)
    project = dist.parallel(model, ScanModel.project)
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))
    local = dist.local_batch(args.batch, "--batch")
    batches = list(iterate_batches(train, local, order=dist.shard(order, args.batch), drop_last=True))

    def run(part: list) -> float:
        dist.barrier()
        started = time.perf_counter()
        train_one_epoch(model, part, augment, optimizer, lambda _: config.pretext.lr, 0, device,
                        config.pretext.temperature, channels_last, project=project, dist=dist)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        dist.barrier()
        return time.perf_counter() - started

    run(batches[: args.warmup])
    seconds = run(batches[args.warmup :])
    if dist.is_main:
        Path(args.worker).write_text(json.dumps({
            "processes": dist.world_size, "backend": dist.backend or "none", "threads_per_process": threads,
            "images": args.steps * args.batch, "seconds": seconds, "images_per_s": args.steps * args.batch / seconds,
        }))
    shutdown(dist)


def arm(args: argparse.Namespace, processes: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "arm.json"
        forwarded = ["--device", args.device, "--preset", args.preset, "--batch", str(args.batch),
                     "--steps", str(args.steps), "--warmup", str(args.warmup), "--batchnorm", args.batchnorm,
                     "--worker", str(out)]
        script = str(Path(__file__).resolve())
        if processes == 1:
            command = [sys.executable, script, *forwarded]
        else:
            command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                       "--nproc_per_node", str(processes), script, *forwarded]
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"the {processes}-process arm failed:\n{done.stderr[-3000:]}")
        return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu | cuda (N processes need N GPUs)")
    parser.add_argument("--preset", default="configs/fashion_mnist_cpu.yaml")
    parser.add_argument("--batch", type=int, default=512, help="global batch")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batchnorm", choices=["global", "local"], default="global",
                        help="model.batchnorm for the N-process arm (one process is the same either way)")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    device = resolve_device(args.device)
    if device.type == "cuda" and torch.cuda.device_count() < args.processes:
        raise SystemExit(f"{args.processes} processes need {args.processes} GPUs; this machine has "
                         f"{torch.cuda.device_count()}. Use --processes 1 for the single-GPU figure.")
    runs: dict[str, list[dict]] = {"one": [], "many": []}
    for repeat in range(args.repeats):
        runs["one"].append(arm(args, 1))
        if args.processes > 1:
            runs["many"].append(arm(args, args.processes))
        print(f"repeat {repeat + 1}/{args.repeats}: one process {runs['one'][-1]['images_per_s']:.0f} img/s"
              + (f", {args.processes} processes {runs['many'][-1]['images_per_s']:.0f} img/s" if runs["many"] else ""),
              flush=True)
    median = {k: statistics.median(r["images_per_s"] for r in v) for k, v in runs.items() if v}
    result = {
        "command": command_line(),
        "machine": machine(device),
        "what": f"pretext steps of {args.preset}, global batch {args.batch}, {args.steps} timed steps after "
                f"{args.warmup} warm-up steps, median of {args.repeats}, model.batchnorm={args.batchnorm}",
        "one_process_images_per_s": median["one"],
        "runs": runs,
    }
    print(f"one process: {median['one']:.0f} img/s")
    if "many" in median:
        ratio = median["many"] / median["one"]
        result.update({"processes": args.processes, "many_processes_images_per_s": median["many"],
                       "ratio_many_over_one": ratio})
        print(f"{args.processes} processes: {median['many']:.0f} img/s; ratio {ratio:.2f}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
