"""Load test: many concurrent clients against scan-serve on loopback, real images, a mix of batch sizes.

Starts `scan-serve` (embedded onnxruntime) as its own process, then `--clients` threads send
ClassifyUnlabeled requests for `--seconds`: each request takes a batch size from `--batch-mix` in turn
and real Fashion-MNIST test images encoded as PNG, asking for 3 nearest prototypes. Prints requests/s,
images/s, p50/p99 latency, the errors by status, and the server's resident memory at the start, the
middle and the end. Example:

    .venv/bin/python benchmarks/load_test.py --clients 32 --seconds 60 --out benchmarks/results/load_test_cpu.json
"""

from __future__ import annotations

import argparse
import io
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import grpc
import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import command_line, machine, write_json  # noqa: E402
from benchmarks.gateway_vs_onnxruntime import start_gateway  # noqa: E402
from scan_serve.process import resident_mb  # noqa: E402
from scan_serve.proto import scan_pb2, scan_pb2_grpc  # noqa: E402
from trainer.config import DataConfig  # noqa: E402
from trainer.data import load_dataset  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repository", type=Path, default=REPO / "model_repository")
    parser.add_argument("--model-name", default="fashion_mnist")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--batch-mix", type=int, nargs="+", default=[1, 1, 4, 16, 64])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    test = load_dataset(DataConfig(name="fashion_mnist", num_workers=0), "test", seed=0)
    pngs = []
    for i in range(512):
        buffer = io.BytesIO()
        Image.fromarray(test[i][0].numpy()).save(buffer, format="PNG")
        pngs.append(buffer.getvalue())
    requests = []
    for k, size in enumerate(args.batch_mix * 8):
        start = (k * 37) % (len(pngs) - size)
        requests.append(scan_pb2.ClassifyRequest(top_k_prototypes=3, images=[
            scan_pb2.Image(id=str(start + j), encoded=pngs[start + j]) for j in range(size)]))

    process, port = start_gateway(args.repository, args.model_name, args.threads)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    stub = scan_pb2_grpc.ScanServiceStub(channel)
    stub.ClassifyUnlabeled(requests[0], timeout=30)
    memory = {"start_mb": resident_mb(process.pid)}
    latencies: list[list[float]] = [[] for _ in range(args.clients)]
    images = [0] * args.clients
    errors: Counter = Counter()
    stop = threading.Event()

    def client(c: int) -> None:
        k = c
        while not stop.is_set():
            request = requests[k % len(requests)]
            k += args.clients
            started = time.perf_counter()
            try:
                stub.ClassifyUnlabeled(request, timeout=60)
            except grpc.RpcError as exc:
                errors[exc.code().name] += 1
                continue
            latencies[c].append(time.perf_counter() - started)
            images[c] += len(request.images)

    threads = [threading.Thread(target=client, args=(c,)) for c in range(args.clients)]
    began = time.perf_counter()
    for t in threads:
        t.start()
    time.sleep(args.seconds / 2)
    memory["middle_mb"] = resident_mb(process.pid)
    time.sleep(args.seconds / 2)
    stop.set()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - began
    memory["end_mb"] = resident_mb(process.pid)
    channel.close()
    process.terminate()
    process.wait(timeout=60)

    every = np.array([x for per in latencies for x in per])
    result = {
        "command": command_line(), "machine": machine(torch.device("cpu")), "clients": args.clients,
        "seconds": round(elapsed, 1), "batch_mix": args.batch_mix, "requests": int(every.size),
        "requests_per_s": every.size / elapsed, "images_per_s": sum(images) / elapsed,
        "p50_ms": float(np.percentile(every, 50) * 1e3), "p99_ms": float(np.percentile(every, 99) * 1e3),
        "errors": dict(errors), "server_memory": memory,
    }
    print(f"{args.clients} clients, {elapsed:.0f} s, batch mix {args.batch_mix}: {result['requests_per_s']:.0f} "
          f"requests/s, {result['images_per_s']:.0f} images/s, p50 {result['p50_ms']:.1f} ms, p99 "
          f"{result['p99_ms']:.1f} ms, errors {dict(errors) or 0}; server RSS {memory['start_mb']:.0f} -> "
          f"{memory['middle_mb']:.0f} -> {memory['end_mb']:.0f} MB")
    if args.out:
        write_json(args.out, result)


if __name__ == "__main__":
    main()
