"""Gateway overhead: scan-serve over loopback gRPC vs calling onnxruntime directly, same model and threads.

For each (batch size, concurrent clients) the two arms run back to back for `--seconds` each:
- raw: `clients` threads in this process call `InferenceSession.run` on one session (`--threads`
  intra-op threads) with uint8 batches of real test images;
- gateway: `scan-serve` runs in its own process (embedded onnxruntime, `--threads` threads) and
  `clients` threads here send `ClassifyUnlabeled` with the same images as raw uint8 tensors of the
  model's size (so decoding is not measured), asking for `--top-k` nearest prototypes.
It prints images/s, p50 and p99 latency per request, the throughput ratio and the added p50. Example:

    .venv/bin/python benchmarks/gateway_vs_onnxruntime.py --threads 2 --seconds 5 \
        --out benchmarks/results/gateway_vs_onnxruntime_cpu.json
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import command_line, machine, write_json  # noqa: E402
from export.session import onnx_session  # noqa: E402
from export.repository import ModelRepository  # noqa: E402
from scan_serve.process import spawn_gateway  # noqa: E402
from scan_serve.proto import scan_pb2, scan_pb2_grpc  # noqa: E402
from trainer.config import config_from_dict  # noqa: E402
from trainer.data import load_dataset  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def drive(call, batches: list, clients: int, seconds: float) -> dict:
    """`clients` threads call `call(batch)` in a loop for `seconds`; latency per call and images/s."""
    latencies: list[list[float]] = [[] for _ in range(clients)]
    counts = [0] * clients
    stop = threading.Event()

    def worker(k: int) -> None:
        i = k
        while not stop.is_set():
            batch = batches[i % len(batches)]
            start = time.perf_counter()
            call(batch)
            latencies[k].append(time.perf_counter() - start)
            counts[k] += len(batch) if isinstance(batch, np.ndarray) else len(batch.images)
            i += clients

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    every = np.array([x for per in latencies for x in per])
    return {"images_per_s": sum(counts) / elapsed, "requests": int(every.size),
            "p50_ms": float(np.percentile(every, 50) * 1e3), "p99_ms": float(np.percentile(every, 99) * 1e3)}


def start_gateway(repository: Path, model_name: str, threads: int) -> tuple[subprocess.Popen, int]:
    return spawn_gateway(["--repository", str(repository), "--model-name", model_name, "--port", "0",
                          "--no-metrics", "--threads", str(threads)], env={"OMP_NUM_THREADS": str(threads)})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repository", type=Path, default=REPO / "model_repository")
    parser.add_argument("--model-name", default="fashion_mnist")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--top-k", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    version = ModelRepository(args.repository).load(args.model_name)
    config = config_from_dict(torch.load(version.finetune_path, weights_only=True)["config"])
    data = load_dataset(config.data, "test", seed=config.seed) or load_dataset(config.data, "train", seed=config.seed)
    images = torch.stack([data[i] for i in range(min(1024, len(data)))]).numpy()
    c, h, w = images.shape[1:]
    session = onnx_session(version.onnx_path, threads=args.threads)
    process, port = start_gateway(args.repository, args.model_name, args.threads)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.max_send_message_length", 64 << 20)])
    stub = scan_pb2_grpc.ScanServiceStub(channel)
    print(f"{version.name} v{version.version}: {c}x{h}x{w} uint8 real {data.name} test images; {args.threads} "
          f"onnxruntime threads in both arms; {args.seconds:g} s per arm; gateway asks for {args.top_k} prototypes")
    rows = []
    try:
        for batch in args.batch_sizes:
            arrays = [images[s:s + batch] for s in range(0, len(images) - batch + 1, batch)][:64]
            requests = [scan_pb2.ClassifyRequest(top_k_prototypes=args.top_k, images=[
                scan_pb2.Image(id=str(i), raw=scan_pb2.RawImage(data=img.tobytes(), channels=c, height=h, width=w))
                for i, img in enumerate(a)]) for a in arrays]
            session.run(None, {"images": arrays[0]}), stub.ClassifyUnlabeled(requests[0])  # warm-up
            for clients in args.clients:
                raw = drive(lambda a: session.run(None, {"images": a}), arrays, clients, args.seconds)
                gateway = drive(stub.ClassifyUnlabeled, requests, clients, args.seconds)
                row = {"batch": batch, "clients": clients, "raw": raw, "gateway": gateway,
                       "throughput_ratio": gateway["images_per_s"] / raw["images_per_s"],
                       "added_p50_ms": gateway["p50_ms"] - raw["p50_ms"]}
                rows.append(row)
                print(f"batch {batch:3d} x {clients} clients: raw {raw['images_per_s']:8.0f} img/s "
                      f"p50 {raw['p50_ms']:7.3f} ms p99 {raw['p99_ms']:7.3f} ms | gateway "
                      f"{gateway['images_per_s']:8.0f} img/s p50 {gateway['p50_ms']:7.3f} ms p99 "
                      f"{gateway['p99_ms']:7.3f} ms | ratio {row['throughput_ratio']:.2f}x, "
                      f"p50 +{row['added_p50_ms']:.3f} ms")
    finally:
        channel.close()
        process.terminate()
        process.wait(timeout=30)
    if args.out:
        result = {"command": command_line(), "machine": machine(torch.device("cpu")),
                  "model": f"{version.name}/{version.version}", "image_shape": [c, h, w], "threads": args.threads,
                  "seconds_per_arm": args.seconds, "top_k_prototypes": args.top_k, "results": rows}
        write_json(args.out, result)


if __name__ == "__main__":
    main()
