"""Multi-process training: real torchrun, real gloo process groups on this CPU, real Fashion-MNIST."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from tests.fmnist import needs_fashion_mnist, tiny_config
from trainer.distributed import SINGLE, Distributed, GlobalBatchNorm, global_batchnorm
from trainer.errors import ConfigError
from trainer.models.scan_model import ScanModel

REPO = Path(__file__).resolve().parents[1]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


# ---------------------------------------------------------------- pieces that need no process group


def test_each_rank_takes_its_contiguous_slice_of_every_global_batch():
    order = torch.arange(20)
    shards = [Distributed(rank=r, world_size=2).shard(order, 8) for r in range(2)]
    assert shards[0].tolist() == [0, 1, 2, 3, 8, 9, 10, 11]  # the last, incomplete batch (16..19) is dropped
    assert shards[1].tolist() == [4, 5, 6, 7, 12, 13, 14, 15]
    # batching each shard by 4 and concatenating in rank order gives back the global batches
    for step in range(2):
        merged = torch.cat([s[step * 4 : (step + 1) * 4] for s in shards])
        assert merged.tolist() == order[step * 8 : (step + 1) * 8].tolist()
    assert SINGLE.shard(order, 8) is order


def test_a_global_batch_that_does_not_split_evenly_is_refused_with_the_setting_named():
    with pytest.raises(ConfigError, match=r"scan.batch_size = 100 .* among the 3 processes; choose a multiple of 3"):
        Distributed(rank=0, world_size=3).local_batch(100, "scan.batch_size")
    assert Distributed(rank=2, world_size=4).local_batch(512, "pretext.batch_size") == 128


def test_global_batchnorm_in_one_process_is_batchnorm_and_keeps_its_state():
    torch.manual_seed(0)
    model = ScanModel.from_args(ScanModel.from_config(tiny_config().model, in_channels=1, mean=(0.3,),
                                                      std=(0.3,)).model_args())
    x = torch.rand(16, 1, 28, 28)
    model.train()
    model.project(x)  # move the running statistics away from their initial values
    before = {k: v.clone() for k, v in model.state_dict().items()}
    reference = model.project(x)
    model.load_state_dict(before)
    converted = global_batchnorm(model)
    assert converted is model
    kinds = {type(m) for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    assert kinds == {GlobalBatchNorm}
    assert model.state_dict().keys() == before.keys()  # checkpoints load into plain BatchNorm models
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    torch.testing.assert_close(model.project(x), reference)
    model.eval()
    plain = ScanModel.from_args(model.model_args())
    plain.load_state_dict(model.state_dict())
    torch.testing.assert_close(model.project(x), plain.eval().project(x))


# ---------------------------------------------------------------- two gloo processes against one


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """tests/distributed_worker.py once in one process, once under torchrun with two (gloo)."""
    out = tmp_path_factory.mktemp("distributed")
    worker = ["-m", "tests.distributed_worker"]
    single = subprocess.run([sys.executable, *worker, str(out / "single")], cwd=REPO, env=ENV,
                            capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr
    double = subprocess.run([*TORCHRUN, "--nproc_per_node", "2", *worker, str(out / "double")], cwd=REPO, env=ENV,
                            capture_output=True, text=True, timeout=300)
    assert double.returncode == 0, double.stderr
    return (torch.load(out / "single.rank0.pt"),
            [torch.load(out / f"double.rank{r}.pt") for r in range(2)])


def _update_difference(one: dict, two: dict) -> float:
    """|update of two - update of one| / |update of one| over every floating tensor, after the first step."""
    num = den = 0.0
    for key, start in one["start"].items():
        if start.dtype.is_floating_point:
            a, b = one["step1"][key] - start, two["step1"][key] - two["start"][key]
            num += float((a - b).square().sum())
            den += float(a.square().sum())
    return (num / den) ** 0.5


@needs_fashion_mnist
@pytest.mark.parametrize("stage", ["pretext", "scan", "selflabel"])
def test_two_gloo_processes_compute_the_single_process_loss_and_update_on_the_same_global_batch(two_runs, stage):
    single, (rank0, rank1) = two_runs
    assert (single["world_size"], rank0["world_size"]) == (1, 2)
    # every rank saw half of each 64-image global batch and reports the global figures
    assert [e["images"] for e in rank0["extra"][stage]] == [e["images"] for e in single["extra"][stage]]
    # same starting weights, same global batch: the gathered loss is the single-process loss
    assert rank0["loss"][stage][0] == pytest.approx(single["loss"][stage][0], rel=1e-6, abs=1e-6)
    # ... and the averaged gradient is the single-process gradient (plain SGD: update = lr * gradient;
    # a gradient scaled by the number of processes, or missing the other rank's terms, would differ by O(1))
    assert _update_difference(single["state"][stage], rank0["state"][stage]) < 1e-4
    # the ranks hold identical weights after every step
    for key, value in rank0["state"][stage]["end"].items():
        assert torch.equal(value, rank1["state"][stage]["end"][key]), key
    # later steps start from weights that differ by float rounding only; training amplifies that
    # (one process with 1 vs 2 threads differs by up to 4e-3 in the third pretext loss), hence rel=1e-2
    assert rank0["loss"][stage] == pytest.approx(single["loss"][stage], rel=1e-2)


@needs_fashion_mnist
def test_the_global_entropy_and_confidence_mask_are_those_of_the_global_batch(two_runs):
    single, (rank0, _) = two_runs
    # SCAN's entropy term is the entropy of the mean prediction over all 64 images, not over one rank's 32
    assert rank0["extra"]["scan"][0]["entropy"] == pytest.approx(single["extra"]["scan"][0]["entropy"], rel=1e-6)
    fractions = [e["pseudo_labelled"] for e in rank0["extra"]["selflabel"]]
    assert fractions[0] == single["extra"]["selflabel"][0]["pseudo_labelled"]
    assert 0 < fractions[0] < 1  # the threshold masks part of the batch, so the class weights matter


@needs_fashion_mnist
def test_a_pass_split_among_the_ranks_gives_every_rank_all_rows_in_order(two_runs):
    _, ranks = two_runs
    index = torch.arange(193)
    for record in ranks:
        assert torch.equal(record["extra"]["rows"], torch.stack([index, index * index], 1))


# ---------------------------------------------------------------- scan-train under torchrun


def _config_file(tmp_path: Path, **sections) -> Path:
    # SCAN on cached features (heads only): the features are computed in shards across the ranks
    config = tiny_config(train=1024, test=256, epochs=6,
                         scan={"epochs": 3, "num_heads": 2, "update": "head", "augment": "none"},
                         selflabel={"epochs": 2, "threshold": 0.5}, **sections)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config.to_dict()))
    return path


def _descendants(pid: int) -> list:
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found, frontier = [], [pid]
    while frontier:
        children = [child for child, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def _scan_train(config: Path, run: Path, *extra: str) -> list:
    return [*TORCHRUN, "--nproc_per_node", "2", "-m", "trainer.cli", str(config), "--output", str(run),
            "--no-progress", *extra]


@needs_fashion_mnist
def test_a_global_batch_that_does_not_split_among_the_processes_stops_scan_train_with_a_clear_error(tmp_path):
    done = subprocess.run(_scan_train(_config_file(tmp_path), tmp_path / "run", "--set", "pretext.batch_size=127"),
                          cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert ("scan-train: error (rank 0): pretext.batch_size = 127 is the global batch and must divide evenly among "
            "the 2 processes; choose a multiple of 2") in done.stderr
    assert not (tmp_path / "run" / "pretext" / "checkpoint.pt").exists()


@pytest.mark.slow
@needs_fashion_mnist
def test_torchrun_trains_every_stage_with_rank_0_writing_and_resumes_all_ranks_after_kill_9(tmp_path):
    config, run = _config_file(tmp_path), tmp_path / "run"
    command = _scan_train(config, run)
    first = subprocess.Popen(command, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                             text=True)
    log: list = []
    threading.Thread(target=lambda: log.extend(first.stdout), daemon=True).start()
    metrics = run / "metrics.jsonl"
    deadline = time.monotonic() + 300
    while first.poll() is None and time.monotonic() < deadline and not (
            metrics.exists() and '"epoch": 2' in metrics.read_text()):
        time.sleep(0.02)
    assert first.poll() is None, "the run ended before it could be killed:\n" + "".join(log)
    # kill -9 both workers and torchrun at once, as a dead node would (torchrun starts its workers in
    # sessions of their own, so they are found by parentage)
    for pid in [*_descendants(first.pid), first.pid]:
        os.kill(pid, signal.SIGKILL)
    first.wait()
    assert not (run / "pretext" / "model.pt").exists()

    finished = subprocess.run(command, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr
    assert "pretext: resuming after epoch" in finished.stdout
    assert finished.stdout.count("pretext: resuming after epoch") == 1  # rank 0 speaks for both ranks
    assert "neighbors: running on rank 0 (cpu) while the other ranks wait" in finished.stdout

    report = json.loads((run / "report.json").read_text())
    assert report["environment"]["processes"] == 2 and report["environment"]["backend"] == "gloo"
    assert all(report[stage]["status"] == "done" for stage in ("pretext", "neighbors", "scan", "selflabel"))
    assert report["final"]["test"]["acc"] > 0.2  # ten classes: chance is 0.1
    lines = [json.loads(line) for line in metrics.read_text().splitlines()]
    for stage, epochs in (("scan", 3), ("selflabel", report["selflabel"]["epochs_run"])):
        # written by rank 0 alone: one line per epoch, not one per rank
        assert [r["epoch"] for r in lines if r["stage"] == stage] == list(range(1, epochs + 1))
    assert {r["epoch"] for r in lines if r["stage"] == "pretext"} == {1, 2, 3, 4, 5, 6}
    assert all(r["images"] == 1024 for r in lines if r["stage"] == "pretext")  # global, 8 batches of 128
    # nothing half-written is left, not even the temporary file of a write the kill interrupted
    assert [p.name for p in run.rglob("*") if ".tmp" in p.name or p.name.startswith(".")] == []


def test_local_batchnorm_is_a_choice_and_other_values_are_refused():
    model = ScanModel.from_config(tiny_config().model, in_channels=1, mean=(0.3,), std=(0.3,))
    two = Distributed(rank=0, world_size=2)
    assert not any(isinstance(m, GlobalBatchNorm) for m in two.prepare(model, "local").modules())
    assert any(isinstance(m, GlobalBatchNorm) for m in two.prepare(model, "global").modules())
    assert not any(isinstance(m, GlobalBatchNorm) for m in SINGLE.prepare(ScanModel.from_args(model.model_args()))
                   .modules())
    with pytest.raises(ConfigError, match="model.batchnorm: expected global or local, got 'sync'"):
        tiny_config(model={"batchnorm": "sync"})
