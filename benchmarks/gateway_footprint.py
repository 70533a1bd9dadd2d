"""Gateway footprint: import time and resident memory of scan-serve, with and without torch loaded.

Two arms, measured side by side in one run on the example model (`model_repository/fashion_mnist`):
- `lean`: the gateway as shipped (`python -m scan_serve.cli`), which imports no torch;
- `with torch`: the same gateway in an interpreter that imported torch first, as every gateway
  did before the decoding rules and the onnxruntime session moved to torch-free modules.
Import time: wall seconds of `python -c "import scan_serve.server"` (median of `--repeats` fresh
interpreters, minus the median of a bare `python -c pass`). Memory: VmRSS of the serving process
once its ready file exists, and again after `--requests` ClassifyUnlabeled calls of 64 raw test images.

    .venv/bin/python benchmarks/gateway_footprint.py --out benchmarks/results/gateway_footprint_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.common import command_line, machine, write_json  # noqa: E402
from scan_serve.process import resident_mb  # noqa: E402
from scan_serve.proto import scan_pb2, scan_pb2_grpc  # noqa: E402

ARMS = {"lean": "", "with torch": "import torch; "}


def startup_s(prefix: str, repeats: int) -> float:
    def median(code: str) -> float:
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)
            times.append(time.perf_counter() - started)
        return statistics.median(times)

    return median(f"{prefix}import scan_serve.server") - median("pass")


def serving_mb(prefix: str, requests: int) -> tuple[float, float]:
    ready = Path(tempfile.mkdtemp(prefix="footprint-")) / "ready.json"
    code = f"{prefix}import sys; from scan_serve.cli import main; sys.argv[0] = 'scan-serve'; main()"
    process = subprocess.Popen([sys.executable, "-c", code, "--repository", "model_repository", "--model-name",
                                "fashion_mnist", "--port", "0", "--no-metrics", "--threads", "2",
                                "--ready-file", str(ready)], cwd=REPO, stderr=subprocess.DEVNULL)
    try:
        while not ready.exists():
            if process.poll() is not None:
                raise SystemExit(f"scan-serve exited with {process.returncode}")
            time.sleep(0.05)
        port = json.loads(ready.read_text())["port"]
        after_start = resident_mb(process.pid)
        rng = np.random.default_rng(0)
        images = [scan_pb2.Image(raw=scan_pb2.RawImage(data=rng.integers(0, 256, 784, dtype=np.uint8).tobytes(),
                                                       channels=1, height=28, width=28)) for _ in range(64)]
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = scan_pb2_grpc.ScanServiceStub(channel)
            for _ in range(requests):
                stub.ClassifyUnlabeled(scan_pb2.ClassifyRequest(images=images, top_k_prototypes=3), timeout=60)
        return after_start, resident_mb(process.pid)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    result = {"command": command_line(), "machine": machine(torch.device("cpu")),
              "load_before": [round(v, 2) for v in os.getloadavg()], "arms": {}}
    for name, prefix in ARMS.items():
        start_mb, after_mb = serving_mb(prefix, args.requests)
        result["arms"][name] = {"import_s": round(startup_s(prefix, args.repeats), 3),
                                "rss_after_start_mb": round(start_mb, 1), "rss_after_requests_mb": round(after_mb, 1)}
        print(name, result["arms"][name], flush=True)
    lean, heavy = result["arms"]["lean"], result["arms"]["with torch"]
    result["ratios"] = {"import_s": round(lean["import_s"] / heavy["import_s"], 3),
                        "rss_after_start_mb": round(lean["rss_after_start_mb"] / heavy["rss_after_start_mb"], 3)}
    print(json.dumps(result["ratios"]))
    if args.out:
        write_json(args.out, result)


if __name__ == "__main__":
    main()
