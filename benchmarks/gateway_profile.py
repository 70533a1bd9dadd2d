"""Where a ClassifyUnlabeled request spends its time inside the gateway (no gRPC transport).

The example model's servicer is called in-process with 64 raw test-sized images and 3 prototypes,
as the gateway runs it (faiss with one OpenMP thread, onnxruntime with `--threads`), under
cProfile; beside it, the same batch through `InferenceSession.run` directly. Writes the per-request
milliseconds of both (medians of 10 alternating rounds) and the functions with the most own time.

    .venv/bin/python benchmarks/gateway_profile.py --out benchmarks/results/gateway_profile_cpu
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.common import command_line, machine, write_json  # noqa: E402
from scan_serve.proto import scan_pb2  # noqa: E402
from scan_serve.server import ServeSettings, create_server  # noqa: E402
from scan_serve.servicer import ScanServicer  # noqa: E402
from trainer.atomic import atomic_write_text  # noqa: E402

ROUNDS = 10


class _Context:
    def is_active(self) -> bool:
        return True

    def abort(self, code: object, message: str) -> None:
        raise RuntimeError(message)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="write OUT.json and OUT.md")
    args = parser.parse_args()
    import faiss  # noqa: PLC0415

    faiss.omp_set_num_threads(1)  # as scan-serve sets it
    running = create_server(ServeSettings(repository=REPO / "model_repository", model_name="fashion_mnist", port=0,
                                          metrics_port=None, threads=args.threads), log_line=lambda _: None)
    rng = np.random.default_rng(0)
    request = scan_pb2.ClassifyRequest(top_k_prototypes=3, images=[
        scan_pb2.Image(raw=scan_pb2.RawImage(data=rng.integers(0, 256, 784, dtype=np.uint8).tobytes(), channels=1,
                                             height=28, width=28)) for _ in range(64)])
    servicer, context = ScanServicer(running.gateway), _Context()
    try:
        session = running.gateway.current.backend.session
        batch = np.stack([np.frombuffer(i.raw.data, np.uint8).reshape(1, 28, 28) for i in request.images])
        arms = {"gateway": lambda: servicer.ClassifyUnlabeled(request, context),
                "raw": lambda: session.run(None, {"images": batch})}
        for _ in range(50):
            arms["gateway"]()
        rounds: dict[str, list[float]] = {name: [] for name in arms}
        for _ in range(ROUNDS):  # the arms alternate, so load that comes and goes hits both
            for name, call in arms.items():
                started = time.perf_counter()
                for _ in range(args.requests // ROUNDS):
                    call()
                rounds[name].append((time.perf_counter() - started) / (args.requests // ROUNDS) * 1000)
        gateway_ms, raw_ms = (statistics.median(rounds[name]) for name in ("gateway", "raw"))
        profile = cProfile.Profile()
        profile.enable()
        for _ in range(args.requests):
            servicer.ClassifyUnlabeled(request, context)
        profile.disable()
    finally:
        running.stop(0)
    text = io.StringIO()
    pstats.Stats(profile, stream=text).sort_stats("tottime").print_stats(15)
    result = {"command": command_line(), "machine": machine(torch.device("cpu")), "requests": args.requests,
              "images_per_request": 64, "gateway_ms_per_request": round(gateway_ms, 3),
              "onnxruntime_ms_per_batch": round(raw_ms, 3), "overhead_ms": round(gateway_ms - raw_ms, 3),
              "rounds_ms": {name: [round(v, 3) for v in values] for name, values in rounds.items()}}
    summary = "\n".join(line for line in text.getvalue().splitlines() if line.strip())
    print(result, summary, sep="\n")
    if args.out:
        write_json(args.out.with_suffix(".json"), {**result, "profile": summary})
        atomic_write_text(args.out.with_suffix(".md"), "\n".join([
            "# ClassifyUnlabeled inside the gateway: where the time goes", "", f"Command: `{result['command']}`", "",
            f"Machine: {result['machine']['cpu']}, {result['machine']['cpu_count']} cores", "",
            f"64 raw images per request: gateway servicer {gateway_ms:.2f} ms per request, onnxruntime alone "
            f"{raw_ms:.2f} ms per batch, so {gateway_ms - raw_ms:.2f} ms is the gateway's own work (the thread lock "
            "line below is the wait for the batching thread's inference).", "", "```", summary, "```", ""]))


if __name__ == "__main__":
    main()
