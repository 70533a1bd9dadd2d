import dataclasses

import pytest
import torch

from trainer.config import SelfLabelConfig
from trainer.rundir import RunDir, load_checkpoint
from trainer.stages.neighbors import run_neighbors
from trainer.stages.pretext import run_pretext
from trainer.stages.scan import run_scan
from trainer.stages.selflabel import EMA, run_selflabel

from tests.fmnist import needs_fashion_mnist, tiny_config

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def scanned(tmp_path_factory):
    """A small real run (2k Fashion-MNIST images) finished up to the SCAN stage."""
    config = tiny_config(train=2000, test=500, epochs=3, neighbors={"k": 10}, scan={"epochs": 3, "num_heads": 3})
    run = RunDir(tmp_path_factory.mktemp("run"))
    run.bind_config(config)
    for stage in (run_pretext, run_neighbors, run_scan):
        run.update_report(stage.__name__[4:], stage(config, run, CPU, False))
    return config, run


def _with_selflabel(config, **changes):
    return dataclasses.replace(config, selflabel=dataclasses.replace(config.selflabel, **changes))


@needs_fashion_mnist
def test_the_collapse_guard_stops_a_collapsing_run_and_keeps_the_scan_model(scanned):
    config, run = scanned
    # Constructed to collapse: a huge learning rate, nearly everything pseudo-labelled, no class balancing.
    collapsing = _with_selflabel(config, lr=0.01, threshold=0.2, class_balance=False, epochs=5)
    entry = run_selflabel(collapsing, run, CPU, progress=False)
    assert entry["stopped_early"] and entry["epochs_run"] < 5
    assert "populated clusters fell" in entry["stop_reason"] or "entropy fell" in entry["stop_reason"]
    assert entry["kept"].startswith("scan model")
    assert entry["health"]["populated"] >= entry["start_health"]["populated"]
    assert entry["health"]["sizes"] == entry["start_health"]["sizes"]  # exactly the model it started from
    kept = load_checkpoint(run.stage_dir("selflabel") / "model.pt")
    scan = load_checkpoint(run.stage_dir("scan") / "model.pt")
    head = scan["chosen_head"]
    torch.testing.assert_close(kept["model"]["cluster_heads.heads.0.weight"],
                               scan["model"][f"cluster_heads.heads.{head}.weight"], rtol=0, atol=0)
    assert not (run.stage_dir("selflabel") / "best.pt").exists()
    assert "GUARD" not in entry["stop_reason"]  # the report says why in words, the log line shouts


@needs_fashion_mnist
def test_a_healthy_selflabel_run_keeps_its_best_epoch(scanned):
    config, run = scanned
    for leftover in run.stage_dir("selflabel").glob("*.pt"):
        leftover.unlink()
    gentle = _with_selflabel(config, lr=1e-4, threshold=0.5, epochs=2, guard_min_agreement=0.0,
                             guard_entropy_drop=1.0)
    entry = run_selflabel(gentle, run, CPU, progress=False)
    if entry["kept"].startswith("selflabel epoch"):
        best = int(entry["kept"].split()[-1])
        assert entry["health"]["confident_fraction"] >= entry["start_health"]["confident_fraction"]
        assert 1 <= best <= 2
    else:  # no epoch raised the confident fraction: the SCAN model stays, which the guard requires
        assert entry["health"]["sizes"] == entry["start_health"]["sizes"]


def test_ema_moves_towards_the_live_weights():
    live = torch.nn.Linear(2, 2)
    ema = EMA(live, decay=0.9)
    start = ema.model.weight.clone()
    with torch.no_grad():
        live.weight.add_(1.0)
    ema.update(live)
    torch.testing.assert_close(ema.model.weight, start + 0.1)


def test_selflabel_config_rejects_a_threshold_outside_zero_one():
    from trainer.errors import ConfigError

    with pytest.raises(ConfigError, match="selflabel.threshold"):
        SelfLabelConfig(threshold=1.0)


class _Views(torch.nn.Module):
    """uint8 images -> [0, 1] floats, mirrored left-right when `flip` (a deterministic 'augmentation')."""

    def __init__(self, flip: bool) -> None:
        super().__init__()
        self.flip = flip

    def forward(self, x, generator=None):
        x = x.float() / 255
        return x.flip(-1) if self.flip else x


def _tiny_selflabel_model():
    from trainer.models.scan_model import ScanModel

    torch.manual_seed(0)
    return ScanModel("convnet", in_channels=1, width=4, mean=[0.5], std=[0.25], num_clusters=3)


def test_selflabel_epoch_metrics_equal_a_loop_that_reads_every_step_on_the_host():
    from trainer.losses import selflabel_loss
    from trainer.stages.selflabel import train_selflabel_epoch

    images = torch.randint(0, 256, (48, 1, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    batches = [(None, images[i : i + 16]) for i in range(0, 48, 16)]
    cfg = SelfLabelConfig(threshold=0.34, batch_size=16)
    model, twin = _tiny_selflabel_model(), _tiny_selflabel_model()
    optimizers = [torch.optim.SGD(m.parameters(), lr=0.05) for m in (model, twin)]
    weak, learn = _Views(flip=False), _Views(flip=True)

    metrics = train_selflabel_epoch(model, batches, weak, learn, optimizers[0], CPU, cfg)

    total, masked = 0.0, 0.0  # the loop as it was: loss and fraction read on the host every step
    for _, x in batches:
        twin.eval()
        with torch.no_grad():
            weak_logits = twin.cluster_logits(weak(x))[0]
        twin.train()
        loss, fraction = selflabel_loss(weak_logits, twin.cluster_logits(learn(x))[0], cfg.threshold)
        optimizers[1].zero_grad(set_to_none=True)
        loss.backward()
        optimizers[1].step()
        total += loss.item() * len(x)
        masked += fraction.item() * len(x)
    assert metrics["images"] == 48
    assert 0 < metrics["pseudo_labelled"] == masked / 48
    assert metrics["loss"] == total / 48
    for a, b in zip(model.state_dict().values(), twin.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_pseudo_labels_come_from_the_teacher_which_follows_the_model_after_every_step():
    from trainer.losses import selflabel_loss
    from trainer.stages.selflabel import train_selflabel_epoch

    images = torch.randint(0, 256, (48, 1, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    batches = [(None, images[i : i + 16]) for i in range(0, 48, 16)]
    cfg = SelfLabelConfig(threshold=0.34, batch_size=16)
    model, twin = _tiny_selflabel_model(), _tiny_selflabel_model()
    teacher, twin_teacher = EMA(model, 0.5), EMA(twin, 0.5)
    for average in (teacher, twin_teacher):  # a teacher that labels unlike the model: everything cluster 2 at first
        with torch.no_grad():
            average.model.cluster_heads.heads[0].bias[2] += 5.0
    optimizers = [torch.optim.SGD(m.parameters(), lr=0.05) for m in (model, twin)]
    weak, learn = _Views(flip=False), _Views(flip=True)

    metrics = train_selflabel_epoch(model, batches, weak, learn, optimizers[0], CPU, cfg, teacher=teacher)

    masked = 0.0
    for _, x in batches:  # the reference: the teacher labels, the student learns, then the teacher averages
        with torch.no_grad():
            weak_logits = twin_teacher.model.cluster_logits(weak(x))[0]
        twin.train()
        loss, fraction = selflabel_loss(weak_logits, twin.cluster_logits(learn(x))[0], cfg.threshold)
        optimizers[1].zero_grad(set_to_none=True)
        loss.backward()
        optimizers[1].step()
        twin_teacher.update(twin)
        masked += fraction.item() * len(x)
    assert metrics["pseudo_labelled"] == masked / 48 == 1.0  # the teacher's confident cluster 2, not the model's
    for ours, reference in ((model, twin), (teacher.model, twin_teacher.model)):
        for a, b in zip(ours.state_dict().values(), reference.state_dict().values()):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    bias = "cluster_heads.heads.0.bias"
    assert not torch.equal(teacher.model.state_dict()[bias], model.state_dict()[bias])  # it lags the model


def test_a_non_finite_selflabel_loss_stops_the_epoch_loudly():
    from trainer.errors import TrainerError
    from trainer.stages.selflabel import train_selflabel_epoch

    model = _tiny_selflabel_model()
    with torch.no_grad():
        model.cluster_heads.heads[0].bias.fill_(float("nan"))  # no pseudo-label survives, yet the loss is NaN
    images = torch.zeros(32, 1, 16, 16, dtype=torch.uint8)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    with pytest.raises(TrainerError, match=r"^selflabel: the loss became nan at step 0; lower selflabel.lr"):
        train_selflabel_epoch(model, [(None, images[:16]), (None, images[16:])], _Views(False), _Views(True),
                              optimizer, CPU, SelfLabelConfig(threshold=0.5))


@pytest.mark.gpu
def test_selflabel_epoch_on_cuda_never_waits_for_the_gpu():
    from tests.cuda_sync import strict
    from trainer.data.base import TensorImageSet, iterate_batches, on_device
    from trainer.stages.selflabel import train_selflabel_epoch

    cuda = torch.device("cuda")
    images = TensorImageSet(torch.randint(0, 256, (96, 1, 16, 16), dtype=torch.uint8,
                                          generator=torch.Generator().manual_seed(1)))
    cfg = SelfLabelConfig(threshold=0.34, batch_size=16)
    runs = []
    for device in (cuda, CPU):
        model = _tiny_selflabel_model().to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        resident = on_device(images, device)
        assert resident.images.device.type == device.type
        batches = iterate_batches(resident, 16, order=torch.randperm(96, generator=torch.Generator().manual_seed(0)))
        if device.type == "cuda":
            batches = strict(batches)
        ema = EMA(model, 0.9)
        runs.append(train_selflabel_epoch(model, batches, _Views(False), _Views(True), optimizer, device, cfg, ema))
    on_cuda, on_cpu = runs
    assert on_cuda["images"] == on_cpu["images"] == 96
    assert on_cuda["pseudo_labelled"] == pytest.approx(on_cpu["pseudo_labelled"], abs=0.1)
    assert on_cuda["loss"] == pytest.approx(on_cpu["loss"], rel=0.1)


def _scan_model_and_images(config, run):
    from trainer.data import load_dataset
    from trainer.stages.common import load_stage_model

    model, scan_state = load_stage_model(run.stage_dir("scan") / "model.pt")
    model.keep_head(scan_state["chosen_head"])
    return model, load_dataset(config.data, "train", seed=config.seed)


@needs_fashion_mnist
def test_the_guarded_loop_keeps_the_start_model_when_the_guard_refuses_the_first_epoch(scanned):
    from trainer.stages.selflabel import GuardedSelfLabeling

    config, run = scanned
    model, train = _scan_model_and_images(config, run)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    # agreement 1.0 required: the first epoch that moves any prediction is refused
    cfg = dataclasses.replace(config.selflabel, lr=0.01, threshold=0.2, class_balance=False, epochs=3,
                              guard_min_agreement=1.0)
    loop = GuardedSelfLabeling(model, train, CPU, cfg, config.augment, config.seed)
    seen = []
    loop.run(lambda epoch, metrics, health, problems: seen.append((epoch, metrics["images"], problems)))
    result = loop.finish()

    assert loop.baseline.agreement == 1.0
    ((epoch, images, problems),) = seen  # the hook saw one epoch, the one the guard refused
    assert epoch == loop.epoch == 1 and images == 2000 // cfg.batch_size * cfg.batch_size
    assert any("agreement with the starting model" in p for p in problems)
    assert loop.stop_reason == "epoch 1: " + "; ".join(problems)
    assert loop.best == {"epoch": 0, "confident_fraction": loop.baseline.confident_fraction}
    assert loop.keep_best.state == {}  # no best state was ever saved
    assert result.kept_epoch == 0 and result.refusal == [] and result.health == loop.baseline
    assert result.probs.shape == (2000, 10) and result.embeddings.shape[0] == 2000
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, start[name], rtol=0, atol=0)


@needs_fashion_mnist
def test_the_guarded_loop_ends_holding_its_most_confident_healthy_epoch(scanned):
    from trainer.stages.selflabel import GuardedSelfLabeling, state_copy

    config, run = scanned
    model, train = _scan_model_and_images(config, run)
    start = state_copy(model)
    # heads only, gently: here epoch 1 is healthy and more confident, epoch 2 empties a cluster
    cfg = dataclasses.replace(config.selflabel, lr=1e-4, threshold=0.2, epochs=3, update="head",
                              guard_min_agreement=0.0, guard_entropy_drop=1.0)
    loop = GuardedSelfLabeling(model, train, CPU, cfg, config.augment, config.seed)
    healthy, states = {}, {0: start}

    def record(epoch, metrics, health, problems):
        if not problems:
            healthy[epoch] = health.confident_fraction
        states[epoch] = state_copy(model)

    loop.run(record)
    result = loop.finish()

    better = [e for e in healthy if healthy[e] > loop.baseline.confident_fraction]
    expected = max(better, key=healthy.get, default=0)
    assert result.kept_epoch == loop.best["epoch"] == expected and result.refusal == []
    assert result.health.confident_fraction == healthy.get(expected, loop.baseline.confident_fraction)
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, states[expected][name], rtol=0, atol=0)
        if name.startswith("backbone."):  # update: head never changes the backbone
            torch.testing.assert_close(value, start[name], rtol=0, atol=0)


@needs_fashion_mnist
def test_an_interrupted_selflabel_stage_resumes_with_its_teacher_and_matches_an_uninterrupted_one(scanned, interrupt_call):
    from trainer.stages import selflabel

    config, run = scanned
    config = _with_selflabel(config, lr=1e-4, threshold=0.2, epochs=3, update="head", teacher="ema", teacher_decay=0.9,
                             guard_min_agreement=0.0, guard_entropy_drop=1.0, guard_min_cluster_share=0.0)
    stage_dir = run.stage_dir("selflabel")

    def fresh():
        for leftover in stage_dir.glob("*.pt"):
            leftover.unlink()

    fresh()
    run_selflabel(config, run, CPU, progress=False)
    straight = load_checkpoint(stage_dir / "checkpoint.pt")

    fresh()
    restore = interrupt_call(selflabel, "train_selflabel_epoch", n=2)
    with pytest.raises(KeyboardInterrupt):
        run_selflabel(config, run, CPU, progress=False)
    interrupted = load_checkpoint(stage_dir / "checkpoint.pt")
    assert interrupted["epoch"] == 1 and "teacher" in interrupted
    restore()
    run_selflabel(config, run, CPU, progress=False)
    resumed = load_checkpoint(stage_dir / "checkpoint.pt")

    assert resumed["epoch"] == straight["epoch"] >= 2  # (the guard may end either run early, at the same epoch)
    assert resumed["stop_reason"] == straight["stop_reason"]
    for part in ("model", "teacher"):
        for key in straight[part]:
            torch.testing.assert_close(resumed[part][key], straight[part][key], rtol=0, atol=0, msg=f"{part} {key}")


@pytest.mark.slow
@needs_fashion_mnist
def test_a_resnet18_self_labelling_on_strong_views_keeps_its_clusters_in_its_first_epoch(tmp_path):
    """A CPU-sized version of the case that collapsed on an H200 (ResNet-18 CIFAR stem, strong views,
    most of each batch pseudo-labelled: 0.86 there, about 0.88 here with threshold 0.5 on this weaker
    SCAN model). The stage runs with its default teacher and an unlimited guard, so only the teacher
    keeps the clusters. At this size a live teacher did not collapse either (it drifted more: agreement
    0.812 vs 0.862 after 3 epochs); the CPU preset's convnet shows the difference, see the README."""
    config = tiny_config(
        train=4000, test=500, epochs=8,
        model={"backbone": "resnet18_cifar", "width": 8, "projection_dim": 64},
        augment={"crop_scale": [0.5, 1.0]},
        pretext={"batch_size": 256, "lr": 0.4},
        neighbors={"k": 20},
        scan={"epochs": 300, "num_heads": 5, "batch_size": 256, "update": "head", "augment": "none"},
        selflabel={"epochs": 1, "batch_size": 200, "lr": 1e-4, "threshold": 0.5, "augment": "strong",
                   "guard_min_agreement": 0.0, "guard_entropy_drop": 1.0},
        report={"baselines": False},
    )
    assert config.selflabel.teacher == SelfLabelConfig().teacher == "ema"
    run = RunDir(tmp_path / "run")
    run.bind_config(config)
    for stage in (run_pretext, run_neighbors, run_scan, run_selflabel):
        run.update_report(stage.__name__[4:], stage(config, run, CPU, False))
    (first,) = run.read_metrics("selflabel")
    assert first["pseudo_labelled"] > 0.5  # most of each batch is pseudo-labelled, as on the GPU
    assert first["health"]["populated"] >= 9 and first["health"]["agreement"] >= 0.8
