"""Inference throughput of an exported version: onnxruntime vs PyTorch eager, same images and threads.

Both arms run the same model (a published version: its `model.onnx` for onnxruntime, its
`finetune.pt` weights in `export.graph.ServedModel` for PyTorch), on the same real uint8 images
(the test split of the data set the version was trained on), with the same number of CPU threads,
batch by batch. For each batch size the arms alternate for several rounds; the script prints
images/s per arm and the median ratio. Example:

    .venv/bin/python benchmarks/onnx_vs_eager.py --repository model_repository --model-name fashion_mnist \
        --threads 2 --batch-sizes 1 64 256 --out benchmarks/results/onnx_vs_eager_cpu.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import command_line, machine, write_json  # noqa: E402
from export.graph import ServedModel  # noqa: E402
from export.session import onnx_session  # noqa: E402
from export.repository import ModelRepository  # noqa: E402
from trainer.config import config_from_dict  # noqa: E402
from trainer.data import load_dataset  # noqa: E402
from trainer.stages.common import load_stage_model  # noqa: E402


def images_per_s(run_batch, images: np.ndarray, batch: int, seconds: float) -> float:
    """Run `run_batch` over consecutive batches of `images` for at least `seconds`; images per second."""
    done, start, offset = 0, time.perf_counter(), 0
    while True:
        if offset + batch > len(images):
            offset = 0
        run_batch(images[offset:offset + batch])
        offset += batch
        done += batch
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return done / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--model-name", default="fashion_mnist")
    parser.add_argument("--version", type=int, default=None, help="default: the newest")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64, 256])
    parser.add_argument("--images", type=int, default=2048, help="real test images cycled through")
    parser.add_argument("--seconds", type=float, default=2.0, help="per arm per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    version = ModelRepository(args.repository).load(args.model_name, args.version, verify=True)
    model, payload = load_stage_model(version.finetune_path)
    served = ServedModel(model.eval())
    session = onnx_session(version.onnx_path, threads=args.threads)
    config = config_from_dict(payload["config"])
    data = load_dataset(config.data, "test", seed=config.seed) or load_dataset(config.data, "train", seed=config.seed)
    images = torch.stack([data[i] for i in range(min(args.images, len(data)))]).numpy()
    print(f"{version.name} v{version.version}: {images.shape[1:]} uint8, {len(images)} real {data.name} images, "
          f"{args.threads} threads")

    def eager(batch: np.ndarray) -> None:
        with torch.inference_mode():
            served(torch.from_numpy(batch))

    def onnxruntime(batch: np.ndarray) -> None:
        session.run(None, {"images": batch})

    rows = []
    for batch in args.batch_sizes:
        eager(images[:batch]), onnxruntime(images[:batch])  # warm-up
        ort_rates, eager_rates = [], []
        for _ in range(args.rounds):
            ort_rates.append(images_per_s(onnxruntime, images, batch, args.seconds))
            eager_rates.append(images_per_s(eager, images, batch, args.seconds))
        ratio = float(np.median(np.array(ort_rates) / np.array(eager_rates)))
        rows.append({"batch": batch, "onnxruntime_images_per_s": ort_rates, "eager_images_per_s": eager_rates,
                     "median_ratio": ratio})
        print(f"batch {batch:4d}: onnxruntime {np.median(ort_rates):8.0f} img/s, PyTorch eager "
              f"{np.median(eager_rates):8.0f} img/s -> {ratio:.2f}x")

    if args.out:
        result = {"command": command_line(), "machine": machine(torch.device("cpu")),
                  "model": f"{version.name}/{version.version}", "image_shape": list(images.shape[1:]),
                  "threads": args.threads, "rounds": args.rounds, "seconds_per_arm": args.seconds, "results": rows}
        write_json(args.out, result)


if __name__ == "__main__":
    main()
