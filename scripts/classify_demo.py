"""The last step of the main job: serve the exported model, classify a few real test images through gRPC.

Starts `scan-serve` (embedded onnxruntime) on a free port, sends Fashion-MNIST test images as PNG
through `scan_serve.client.ScanClient`, prints each image's cluster, confidence and nearest
prototypes next to its true class (labels are used for this printout only), then stops the
server with SIGTERM.

    .venv/bin/python scripts/classify_demo.py --repository runs/model_repository --model-name fashion_mnist \
        --run runs/fashion_mnist_cpu
"""

from __future__ import annotations

import argparse
import io
import json
import signal
import sys
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from scan_serve.client import ScanClient  # noqa: E402
from scan_serve.process import spawn_gateway  # noqa: E402
from trainer.config import DataConfig  # noqa: E402
from trainer.data import load_dataset  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repository", type=Path, default=REPO / "runs" / "model_repository")
    parser.add_argument("--model-name", default="fashion_mnist")
    parser.add_argument("--run", type=Path, default=None, help="the training run, to point at its pictures")
    parser.add_argument("--images", type=int, default=8)
    args = parser.parse_args()

    test = load_dataset(DataConfig(name="fashion_mnist", num_workers=0), "test", seed=0)
    picks = [i * 997 % len(test) for i in range(args.images)]
    pngs = []
    for i in picks:
        buffer = io.BytesIO()
        Image.fromarray(test[i][0].numpy()).save(buffer, format="PNG")
        pngs.append(buffer.getvalue())

    process, port = spawn_gateway(["--repository", str(args.repository), "--model-name", args.model_name,
                                   "--port", "0", "--metrics-port", "0"], echo=lambda line: print(line, end="",
                                                                                               file=sys.stderr))
    try:
        with ScanClient(f"127.0.0.1:{port}") as client:
            info = client.model_info()
            results = client.classify(pngs, top_k=3, ids=[f"test[{i}]" for i in picks])
        print(f"\n{info.model_name} version {info.model_version} ({info.num_clusters} clusters, confidence threshold "
              f"{info.confidence_threshold:g}) answered over gRPC on 127.0.0.1:{port}:\n")
        print(f"{'image':<12} {'true class':<12} {'cluster':>7} {'confidence':>10}  nearest prototypes (similarity)")
        for i, result in zip(picks, results):
            label = test.class_names[int(test.labels[i])] if test.class_names else str(int(test.labels[i]))
            nearest = ", ".join(f"{p.source} in {p.cluster} ({p.similarity:.2f})" for p in result.nearest_prototypes)
            mark = "" if result.confident else " (low)"
            print(f"{result.id:<12} {label:<12} {result.cluster:>7} {result.confidence:>10.3f}{mark:<6} {nearest}")
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=60)
    print(f"\nscan-serve stopped (exit code {code}).")
    if args.run is not None and (args.run / "report.json").exists():
        final = json.loads((args.run / "report.json").read_text()).get("final", {})
        for name, path in final.get("pictures", {}).items():
            print(f"picture ({name}): {args.run / path}")


if __name__ == "__main__":
    main()
