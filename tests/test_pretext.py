import json
import math

import pytest
import torch

import trainer.stages.pretext as pretext
from trainer.errors import CheckpointError, TrainerError
from trainer.rundir import RunDir, load_checkpoint
from trainer.stages.pretext import cosine_lr, run_pretext

from tests.fmnist import needs_fashion_mnist, tiny_config

CPU = torch.device("cpu")


def test_cosine_schedule_starts_at_lr_and_ends_at_lr_times_decay_cubed():
    assert cosine_lr(0, 100, 0.4) == pytest.approx(0.4)
    assert cosine_lr(100, 100, 0.4) == pytest.approx(0.4 * 0.1**3)
    assert cosine_lr(50, 100, 0.4) == pytest.approx((0.4 + 0.4e-3) / 2)
    values = [cosine_lr(s, 100, 0.4) for s in range(101)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_warmup_rises_linearly_then_follows_the_cosine():
    assert cosine_lr(0, 100, 1.0, warmup_steps=10) == pytest.approx(0.1)
    assert cosine_lr(9, 100, 1.0, warmup_steps=10) == pytest.approx(1.0)
    assert cosine_lr(10, 100, 1.0, warmup_steps=10) == pytest.approx(1.0)


def _weights(path):
    return load_checkpoint(path)["model"]


@needs_fashion_mnist
def test_an_interrupted_run_resumes_from_its_checkpoint_and_matches_an_uninterrupted_one(tmp_path, monkeypatch):
    config = tiny_config(epochs=3)
    straight = RunDir(tmp_path / "straight")
    straight.bind_config(config)
    run_pretext(config, straight, CPU, progress=False)

    original = pretext.train_one_epoch
    calls = {"n": 0}

    def dies_in_the_second_epoch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # what a Ctrl-C or a kill mid-epoch looks like to the loop
        return original(*args, **kwargs)

    resumed = RunDir(tmp_path / "resumed")
    resumed.bind_config(config)
    monkeypatch.setattr(pretext, "train_one_epoch", dies_in_the_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        run_pretext(config, resumed, CPU, progress=False)
    checkpoint = load_checkpoint(resumed.stage_dir("pretext") / "checkpoint.pt")
    assert checkpoint["epoch"] == 1
    assert not (resumed.stage_dir("pretext") / "model.pt").exists()

    monkeypatch.setattr(pretext, "train_one_epoch", original)
    entry = run_pretext(config, resumed, CPU, progress=False)
    assert entry["status"] == "done" and entry["epochs"] == 3
    assert [r["epoch"] for r in resumed.read_metrics("pretext")] == [1, 2, 3]
    a, b = _weights(straight.stage_dir("pretext") / "model.pt"), _weights(resumed.stage_dir("pretext") / "model.pt")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


@needs_fashion_mnist
def test_resume_refuses_a_checkpoint_made_on_other_data(tmp_path):
    run = RunDir(tmp_path)
    run_pretext(tiny_config(epochs=1), run, CPU, progress=False)
    with pytest.raises(CheckpointError, match="other data"):
        run_pretext(tiny_config(epochs=1, data={"train_subset": 384}), run, CPU, progress=False)


@needs_fashion_mnist
def test_a_non_finite_loss_stops_training_loudly(tmp_path):
    config = tiny_config(epochs=1, pretext={"lr": 1e30})
    with pytest.raises(TrainerError, match="loss became"):
        run_pretext(config, RunDir(tmp_path), CPU, progress=False)


@needs_fashion_mnist
def test_checkpoints_are_self_describing(tmp_path):
    from trainer.models.scan_model import ScanModel

    config = tiny_config(epochs=1)
    run = RunDir(tmp_path)
    run_pretext(config, run, CPU, progress=False)
    payload = load_checkpoint(run.stage_dir("pretext") / "model.pt")
    assert payload["config"] == config.to_dict()
    assert payload["model_args"]["backbone"] == "convnet" and payload["model_args"]["in_channels"] == 1
    assert len(payload["data_fingerprint"]) == 16
    model = ScanModel.from_args(payload["model_args"])
    model.load_state_dict(payload["model"])  # rebuilt from the file alone
    line = json.loads(run.metrics_path.read_text().splitlines()[0])
    assert line["stage"] == "pretext" and line["epoch"] == 1 and math.isfinite(line["loss"])
