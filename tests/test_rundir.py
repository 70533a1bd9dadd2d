import json
import os

import numpy as np
import pytest
import torch

from trainer.config import config_from_dict
from trainer.errors import CheckpointError
from trainer.atomic import atomic_save_npy, atomic_torch_save
from trainer.rundir import RunDir, load_checkpoint


def test_atomic_save_leaves_no_temporary_files_and_round_trips(tmp_path):
    atomic_torch_save(tmp_path / "c.pt", {"w": torch.arange(3), "epoch": 2, "config": {"a": [1, 2]}})
    atomic_save_npy(tmp_path / "n.npy", np.arange(4))
    assert sorted(os.listdir(tmp_path)) == ["c.pt", "n.npy"]
    assert (tmp_path / "c.pt").stat().st_mode & 0o777 == 0o644  # readable by the other processes that load it
    state = load_checkpoint(tmp_path / "c.pt")
    assert state["epoch"] == 2 and state["w"].tolist() == [0, 1, 2]


def test_a_failed_write_keeps_the_previous_file(tmp_path):
    path = tmp_path / "c.pt"
    atomic_torch_save(path, {"epoch": 1})

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        atomic_torch_save(path, {"epoch": 2, "bad": Unpicklable()})
    assert load_checkpoint(path)["epoch"] == 1
    assert os.listdir(tmp_path) == ["c.pt"]


def test_a_truncated_checkpoint_is_a_clear_error(tmp_path):
    path = tmp_path / "c.pt"
    atomic_torch_save(path, {"w": torch.zeros(1000)})
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_checkpoint(path)


def test_a_run_refuses_a_different_configuration_but_accepts_operational_changes(tmp_path):
    run = RunDir(tmp_path / "run")
    run.bind_config(config_from_dict({"pretext": {"epochs": 3}}))
    with pytest.raises(CheckpointError, match=r"pretext\.epochs: run has 3, now 4"):
        run.bind_config(config_from_dict({"pretext": {"epochs": 4}}))
    run.bind_config(config_from_dict({"pretext": {"epochs": 3}, "data": {"num_workers": 7}}))
    assert run.load_config().data.num_workers == 7


def test_metrics_lines_and_report_updates(tmp_path):
    run = RunDir(tmp_path)
    run.log_metrics("pretext", 1, {"loss": np.float32(1.5)})
    run.log_metrics("neighbors", 1, {"x": 1})
    with open(run.metrics_path, "a") as handle:
        handle.write('{"stage": "pretext", "epo')  # a line cut short by a kill
    assert [r["loss"] for r in run.read_metrics("pretext")] == [1.5]
    run.update_report("pretext", {"status": "running"})
    run.update_report("pretext", {"status": "done", "loss": 1.0})
    assert run.stage_done("pretext") and not run.stage_done("neighbors")
    assert json.loads(run.report_path.read_text())["pretext"] == {"status": "done", "loss": 1.0}


def test_starting_a_run_removes_temporaries_a_kill_left_and_nothing_else(tmp_path):
    (tmp_path / "pretext").mkdir()
    stale = [tmp_path / "pretext" / ".checkpoint.pt.k2j4x9.tmp", tmp_path / ".report.json.a1b2c3.tmp"]
    kept = [tmp_path / "pretext" / "checkpoint.pt", tmp_path / "pretext" / "notes.tmp", tmp_path / "metrics.jsonl"]
    for path in stale + kept:
        path.write_bytes(b"x")
    RunDir(tmp_path).bind_config(config_from_dict({}))
    assert not any(p.exists() for p in stale)
    assert all(p.exists() for p in kept)
