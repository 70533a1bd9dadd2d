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
def test_an_interrupted_run_resumes_from_its_checkpoint_and_matches_an_uninterrupted_one(tmp_path, interrupt_call):
    config = tiny_config(epochs=3)
    straight = RunDir(tmp_path / "straight")
    straight.bind_config(config)
    run_pretext(config, straight, CPU, progress=False)

    resumed = RunDir(tmp_path / "resumed")
    resumed.bind_config(config)
    restore = interrupt_call(pretext, "train_one_epoch", n=2)
    with pytest.raises(KeyboardInterrupt):
        run_pretext(config, resumed, CPU, progress=False)
    checkpoint = load_checkpoint(resumed.stage_dir("pretext") / "checkpoint.pt")
    assert checkpoint["epoch"] == 1
    assert not (resumed.stage_dir("pretext") / "model.pt").exists()

    restore()
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


class _Scale(torch.nn.Module):
    """uint8 -> [0, 1], plus a little noise so the two views differ (seeded by the caller)."""

    def forward(self, x, generator=None):
        return x.float() / 255 + 0.05 * torch.randn(x.shape)


def _tiny_pretext_model():
    from trainer.models.scan_model import ScanModel

    torch.manual_seed(0)
    return ScanModel("convnet", in_channels=1, width=4, mean=[0.5], std=[0.25], projection_dim=8)


def test_epoch_metrics_equal_a_loop_that_reads_the_loss_every_step():
    from trainer.losses import nt_xent

    images = torch.randint(0, 256, (40, 1, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    batches = [(None, images[i : i + 8]) for i in range(0, 40, 8)]
    model, twin = _tiny_pretext_model(), _tiny_pretext_model()
    optimizers = [torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9) for m in (model, twin)]
    lr_at = lambda step: 0.1 / (1 + step)  # noqa: E731

    torch.manual_seed(7)
    metrics = pretext.train_one_epoch(model, batches, _Scale(), optimizers[0], lr_at, 3, CPU, 0.5)

    torch.manual_seed(7)
    total, augment = 0.0, _Scale()
    for step, (_, x) in enumerate(batches, start=3):
        with torch.no_grad():
            views = torch.cat([augment(x), augment(x)])
        for group in optimizers[1].param_groups:
            group["lr"] = lr_at(step)
        twin.train()
        z1, z2 = twin.project(views).float().unflatten(0, (2, -1))
        loss = nt_xent(z1, z2, 0.5)
        optimizers[1].zero_grad(set_to_none=True)
        loss.backward()
        optimizers[1].step()
        total += loss.item() * len(x)
    assert metrics["loss"] == total / 40
    assert metrics["images"] == 40 and metrics["step"] == 8 and metrics["lr"] == lr_at(7)
    assert metrics["images_per_s"] == pytest.approx(40 / metrics["seconds"])
    for a, b in zip(model.state_dict().values(), twin.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_on_cpu_a_non_finite_loss_stops_the_epoch_at_the_step_it_happened():
    model = _tiny_pretext_model()
    images = torch.randint(0, 256, (24, 1, 16, 16), dtype=torch.uint8)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    batches = [(None, images[i : i + 8]) for i in range(0, 24, 8)]

    def poison_after_one_step(step):
        if step == 11:
            with torch.no_grad():
                next(model.projection_head.parameters()).fill_(float("nan"))
        return 0.1

    with pytest.raises(TrainerError, match=r"^pretext: the loss became nan at step 11; lower pretext.lr and restart$"):
        pretext.train_one_epoch(model, batches, _Scale(), optimizer, poison_after_one_step, 10, CPU, 0.5)


@pytest.mark.gpu
def test_pretext_epoch_on_cuda_never_waits_for_the_gpu_and_a_nan_is_still_caught():
    from tests.cuda_sync import strict
    from trainer.data.base import TensorImageSet, iterate_batches, on_device

    cuda = torch.device("cuda")
    images = on_device(TensorImageSet(torch.randint(0, 256, (64, 1, 16, 16), dtype=torch.uint8)), cuda)
    assert images.images.device.type == "cuda"

    class Noise(torch.nn.Module):
        def forward(self, x, generator=None):
            return x.float() / 255 + 0.05 * torch.randn(x.shape, device=x.device)

    model = _tiny_pretext_model().to(cuda)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    metrics = pretext.train_one_epoch(model, strict(iterate_batches(images, 16)), Noise(), optimizer, lambda _: 0.05,
                                      0, cuda, 0.5, channels_last=True)
    assert metrics["images"] == 64 and metrics["step"] == 4 and math.isfinite(metrics["loss"])

    with torch.no_grad():
        next(model.projection_head.parameters()).fill_(float("nan"))
    with pytest.raises(TrainerError, match=r"pretext: the loss became nan between steps 4 and 7"):
        pretext.train_one_epoch(model, strict(iterate_batches(images, 16)), Noise(), optimizer, lambda _: 0.05,
                                4, cuda, 0.5)
