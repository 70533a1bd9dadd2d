"""Faults caused for real: a full disk under the image store, a corrupt model version, kill -9 of the trainer in
every stage."""

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from scan_serve.errors import StartupError
from scan_serve.proto import scan_pb2, scan_pb2_grpc
from tests.fmnist import needs_fashion_mnist, tiny_config
from tests.serve.conftest import EXAMPLE, TOKEN, png, start

REPO = Path(__file__).resolve().parents[2]
OPERATOR = [("authorization", f"Bearer {TOKEN}")]


@pytest.fixture
def small_disk(tmp_path):
    """A real 1 MiB filesystem (tmpfs), so that writes really fail with ENOSPC."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({done.stderr.decode().strip()}); needs root")
    yield mount_point
    subprocess.run(["umount", str(mount_point)], check=True)


def test_a_full_disk_under_the_store_answers_resource_exhausted_and_keeps_what_was_stored(small_disk, tmp_path):
    shutil.copytree(EXAMPLE / "fashion_mnist", tmp_path / "repo" / "fashion_mnist")
    running = start(tmp_path / "repo", store=small_disk / "store", metrics_port=None)
    rng = np.random.default_rng(0)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = scan_pb2_grpc.ScanServiceStub(channel)
            stored, refusal = 0, None
            for round_ in range(100):
                batch = [scan_pb2.Image(encoded=png(rng.integers(0, 256, (40, 40), dtype=np.uint8)))
                         for _ in range(20)]
                try:
                    stored = stub.SubmitImages(iter([scan_pb2.SubmitImagesRequest(images=batch)]),
                                               metadata=OPERATOR).stored_total
                except grpc.RpcError as exc:
                    refusal = exc
                    break
            assert refusal is not None, "the 1 MiB disk never filled"
            assert refusal.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "is full; nothing of this submission was stored" in refusal.details()
            assert stored > 0 and running.gateway.store.count() == stored  # everything acknowledged is still there
            raw = scan_pb2.RawImage(data=bytes(784), channels=1, height=28, width=28)
            assert stub.ClassifyUnlabeled(scan_pb2.ClassifyRequest(images=[scan_pb2.Image(raw=raw)])).model_version == 1
    finally:
        running.stop(1)


def test_switching_to_a_corrupt_version_is_refused_and_the_old_one_keeps_serving(tmp_path):
    model = tmp_path / "repo" / "fashion_mnist"
    shutil.copytree(EXAMPLE / "fashion_mnist", model)
    running = start(tmp_path / "repo", metrics_port=None)
    try:
        shutil.copytree(model / "1", model / "2")
        onnx = model / "2" / "model.onnx"
        onnx.write_bytes(onnx.read_bytes()[: onnx.stat().st_size // 2])  # half a graph
        with pytest.raises(StartupError, match="model.onnx is corrupt"):
            running.gateway.switch_to(2)
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = scan_pb2_grpc.ScanServiceStub(channel)
            raw = scan_pb2.RawImage(data=bytes(784), channels=1, height=28, width=28)
            assert stub.ClassifyUnlabeled(scan_pb2.ClassifyRequest(images=[scan_pb2.Image(raw=raw)])).model_version == 1
            assert stub.GetModelInfo(scan_pb2.GetModelInfoRequest()).model_version == 1
    finally:
        running.stop(1)


def _stage_started(run: Path, stage: str, log: list) -> bool:
    """The stage has begun: its first epoch is logged (neighbors, which has no epochs: it says it is running)."""
    if stage == "neighbors":
        return any(line.startswith("neighbors: running") for line in log)
    metrics = run / "metrics.jsonl"
    return metrics.exists() and any(json.loads(line).get("stage") == stage
                                    for line in metrics.read_text().splitlines() if line.strip().endswith("}"))


@pytest.mark.slow
@needs_fashion_mnist
@pytest.mark.parametrize("stage", ["pretext", "neighbors", "scan", "selflabel"])
def test_kill_9_of_the_trainer_in_each_stage_then_the_same_command_finishes(tmp_path, stage):
    import yaml

    config = tiny_config(train=2048, test=256, epochs=4, scan={"epochs": 6, "num_heads": 2},
                         selflabel={"epochs": 6, "threshold": 0.5})
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config.to_dict()))
    run = tmp_path / "run"
    command = [sys.executable, "-m", "trainer.cli", str(path), "--output", str(run), "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONUNBUFFERED": "1"}  # log lines arrive as printed
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    log: list = []
    threading.Thread(target=lambda: log.extend(process.stdout), daemon=True).start()
    deadline = time.monotonic() + 300
    while not _stage_started(run, stage, log) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert process.poll() is None, f"the run ended before {stage} could be interrupted"
    process.send_signal(signal.SIGKILL)
    process.wait()
    report = json.loads((run / "report.json").read_text()) if (run / "report.json").exists() else {}
    assert report.get(stage, {}).get("status") != "done"

    finished = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr
    report = json.loads((run / "report.json").read_text())
    assert all(report[s]["status"] == "done" for s in ("pretext", "neighbors", "scan", "selflabel"))
    assert (run / report["final"]["model"]).exists()
    epochs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    if stage in ("pretext", "scan", "selflabel"):  # every epoch is logged (one cut short by the kill is re-run)
        numbers = [e["epoch"] for e in epochs if e["stage"] == stage]
        assert sorted(set(numbers)) == list(range(1, max(numbers) + 1))
