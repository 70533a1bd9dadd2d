"""The folder plan on folders of real Fashion-MNIST images written as a user would have them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trainer.config import config_from_dict, explicit_keys, load_config
from trainer.data.plan import (
    CPU_IMAGES_PER_S, CPU_MAX_SIZE, GPU_MAX_SIZE, MAX_EPOCHS, MIN_EPOCHS, PRETEXT_SECONDS, SCAN_STEPS, FolderSurvey,
    plan_folder, survey_folder,
)
from trainer.errors import DataError

from tests.fmnist import FASHION_MNIST_DIR, needs_fashion_mnist

REPO = Path(__file__).resolve().parents[2]
PRESET = REPO / "configs/folder.yaml"


def _fashion_mnist(count: int) -> np.ndarray:
    from trainer.data.fashion_mnist import load_fashion_mnist

    return load_fashion_mnist(FASHION_MNIST_DIR, "test", download=False).images[:count, 0].numpy()


def _write(folder: Path, images: np.ndarray, side: int = 28, rgb_every: int = 0, tint: bool = False) -> Path:
    for sub in ("sub0", "sub1"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for i, pixels in enumerate(images):
        image = Image.fromarray(pixels, "L")
        if side != pixels.shape[0]:
            image = image.resize((side, side), Image.Resampling.BICUBIC)
        if tint:  # a coloured version of the same real picture: red ink on white
            grey = np.asarray(image)
            image = Image.fromarray(np.stack([grey, grey // 3, grey // 3], axis=2), "RGB")
        elif rgb_every and i % rgb_every == 0:
            image = image.convert("RGB")  # grey content saved as RGB, as many tools do
        image.save(folder / f"sub{i % 2}" / f"x{i:03d}.{'jpg' if i % 3 == 0 else 'png'}")
    return folder


def _plan(root: Path, *overrides: str, device_type: str = "cpu"):
    overrides = [f"data.root={root}", *overrides]
    config = load_config(PRESET, overrides)
    plan = plan_folder(config, device_type, explicit_keys(PRESET, overrides))
    return plan, load_config(PRESET, overrides, planned=plan.overrides())


@needs_fashion_mnist
def test_a_small_grey_28_px_folder_is_planned_at_its_native_size_with_one_channel_and_a_light_backbone(tmp_path):
    root = _write(tmp_path / "photos", _fashion_mnist(300), rgb_every=4)  # a quarter saved as RGB
    plan, config = _plan(root)
    assert plan.survey.files == 300 and plan.survey.median_short_side == 28 and plan.survey.grayscale
    assert config.data.image_size == 28 and config.data.channels == 1
    assert (config.model.backbone, config.model.width) == ("convnet", 16)
    assert config.augment.jitter == (0.4, 0.4, 0.0, 0.0) and config.augment.grayscale_p == 0.0
    assert config.pretext.batch_size == 32 <= 300 // 8 + 1  # N / 8 = 37 -> 32, never above a fraction of N
    assert config.scan.batch_size == config.selflabel.batch_size == 32
    assert MIN_EPOCHS <= config.pretext.epochs <= MAX_EPOCHS and config.pretext.epochs == MAX_EPOCHS  # tiny set
    assert config.neighbors.k == 6  # 300 / 50
    reasons = plan.to_dict()["planned"]
    assert set(reasons) >= {"data.image_size", "data.channels", "model.backbone", "pretext.epochs"}
    assert "median shorter side, 28 px" in reasons["data.image_size"]["reason"]
    assert plan.lines()[0].startswith("plan: 300 images in ")


def test_more_images_get_fewer_planned_epochs_and_larger_batches():
    config = load_config(PRESET, ["data.root=/unused"])

    def planned(files: int, side: int = 32) -> dict:
        survey = FolderSurvey("/unused", files, files, files, side, side, side, grayscale=True)
        return plan_folder(config, "cpu", survey=survey).overrides()

    sizes = [500, 2_000, 5_000, 20_000, 200_000]
    epochs = [planned(n)["pretext.epochs"] for n in sizes]
    assert epochs == sorted(epochs, reverse=True) and epochs[0] == MAX_EPOCHS and epochs[-1] == MIN_EPOCHS
    rate = CPU_IMAGES_PER_S / (32 / 28) ** 2  # convnet w16, one channel, 32 px
    assert planned(2_000)["pretext.epochs"] == round(PRETEXT_SECONDS["cpu"] * rate / 2_000)
    assert planned(2_000)["scan.epochs"] == round(SCAN_STEPS / (2_000 // 128))  # about SCAN_STEPS steps
    assert planned(2_000, side=48)["pretext.epochs"] < planned(2_000)["pretext.epochs"]  # larger images cost more
    assert [planned(n)["pretext.batch_size"] for n in sizes] == [32, 128, 512, 512, 512]  # up to N / 8
    assert [planned(n)["neighbors.k"] for n in sizes] == [10, 20, 20, 20, 20]
    # the preset searches K: candidates 2..20, fewer where 20 clusters would hold under 50 images each
    assert [planned(n)["scan.k_range"] for n in (60, 300, 999, 1_000, 200_000)] == [
        [2, 2], [2, 6], [2, 19], [2, 20], [2, 20]]


def test_the_k_range_is_planned_only_for_auto_and_a_given_one_is_kept():
    survey = FolderSurvey("/unused", 300, 300, 300, 28, 28, 28, grayscale=True)
    fixed = load_config(PRESET, ["data.root=/unused", "scan.num_clusters=7"])
    assert "scan.k_range" not in plan_folder(fixed, "cpu", survey=survey).overrides()
    given = ["data.root=/unused", "scan.k_range=[3, 9]"]
    plan = plan_folder(load_config(PRESET, given), "cpu", explicit_keys(PRESET, given), survey=survey)
    assert "scan.k_range" not in plan.overrides() and plan.to_dict()["kept"]["scan.k_range"] == [3, 9]


@needs_fashion_mnist
def test_values_the_user_sets_win_over_the_plan_and_the_plan_says_so(tmp_path):
    root = _write(tmp_path / "photos", _fashion_mnist(120))
    plan, config = _plan(root, "data.image_size=48", "model.width=32", "pretext.epochs=3")
    assert (config.data.image_size, config.model.width, config.pretext.epochs) == (48, 32, 3)
    assert config.data.channels == 1  # still planned
    kept = plan.to_dict()["kept"]
    assert kept == {"data.image_size": 48, "model.width": 32, "pretext.epochs": 3}
    assert "data.image_size" not in plan.overrides()
    assert any("data.image_size = 48  (set by the preset or --set)" in line for line in plan.lines())
    # crops follow the size the user chose (48 px is still small)
    assert config.augment.crop_scale == (0.5, 1.0)


@needs_fashion_mnist
def test_colour_and_large_images_get_three_channels_and_a_capped_size(tmp_path):
    root = _write(tmp_path / "photos", _fashion_mnist(40), side=200, tint=True)
    plan, config = _plan(root)
    assert not plan.survey.grayscale and config.data.channels == 3
    assert config.data.image_size == CPU_MAX_SIZE  # never the full 200 px on a CPU
    assert config.augment.crop_scale == (0.2, 1.0) and config.augment.grayscale_p == 0.2
    gpu_plan, gpu_config = _plan(root, device_type="cuda")
    assert gpu_config.data.image_size == GPU_MAX_SIZE and gpu_config.model.backbone == "resnet18"


@needs_fashion_mnist
def test_a_resumed_run_keeps_the_values_it_was_planned_with(tmp_path):
    root = _write(tmp_path / "photos", _fashion_mnist(120))
    plan, config = _plan(root)
    on_gpu = plan_folder(load_config(PRESET, [f"data.root={root}"]), "cuda")
    assert on_gpu.overrides()["model.backbone"] == "resnet18_cifar"
    kept = on_gpu.keep_run(config)
    assert kept.overrides() == plan.overrides()
    assert "kept from the run being resumed" in kept.to_dict()["planned"]["model.backbone"]["reason"]


def test_a_bad_folder_is_a_clear_error_naming_data_root(tmp_path):
    with pytest.raises(DataError, match=r"^data\.root: .*does not exist"):
        survey_folder(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    with pytest.raises(DataError, match=r"^data\.root: no image files .* found in .*empty"):
        survey_folder(tmp_path / "empty")
    (tmp_path / "broken").mkdir()
    for i in range(3):
        (tmp_path / "broken" / f"b{i}.jpg").write_bytes(b"\xff\xd8 not a jpeg at all")
    with pytest.raises(DataError, match=r"^data\.root: none of the 3 image files checked .* could be read"):
        survey_folder(tmp_path / "broken")
    with pytest.raises(ValueError, match="plans folders"):
        plan_folder(config_from_dict({"data": {"name": "fashion_mnist"}}), "cpu")
