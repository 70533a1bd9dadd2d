import json

import pytest
import torch

from benchmarks import pretext_throughput as bench


def test_a_bad_arm_name_fails_before_any_work_and_names_the_arm(capsys):
    with pytest.raises(SystemExit) as exit_:
        bench.parse_args(["--arms", "model_only,bogus"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "'bogus'" in err and "model_only" in err


def test_workers_zero_skips_the_per_image_arm_and_compile_adds_the_compiled_arms():
    args = bench.parse_args(["--workers", "0", "--compile"])
    assert "per_image" not in args.arms
    assert args.arms[-2:] == ["model_only_compiled", "ours_compiled"]
    assert bench.parse_args(["--preset", "configs/fashion_mnist_cpu.yaml"]).shapes == ["fmnist"]


def test_generated_images_are_seeded_and_structured():
    a = bench.generated_images(8, 3, 32, seed=1)
    assert a.shape == (8, 3, 32, 32) and a.dtype == torch.uint8
    assert torch.equal(a, bench.generated_images(8, 3, 32, seed=1))
    assert not torch.equal(a, bench.generated_images(8, 3, 32, seed=2))
    # not flat, not noise: neighbouring pixels are close while the image as a whole varies
    x = a.float()
    assert x.std(dim=(1, 2, 3)).min() > 10
    assert (x[..., 1:] - x[..., :-1]).abs().mean() < 0.3 * x.std()


def test_every_arm_leads_one_round_in_turn():
    arms = ["a", "b", "c"]
    assert [bench.rotated(arms, r)[0] for r in range(3)] == arms
    assert sorted(bench.rotated(arms, 2)) == arms


def test_overhead_is_against_the_matching_model_only_arm():
    rounds = {"model_only": [100.0, 120.0, 110.0], "ours": [80.0, 90.0, 88.0], "augment_only_ours": [1e4],
              "model_only_compiled": [200.0], "ours_compiled": [150.0]}
    arms = bench.summarize_arms(rounds, flops_per_image=1e9, peak=1.0)
    assert arms["model_only"]["median_images_per_s"] == 110.0
    assert arms["ours"]["overhead"] == pytest.approx(1 - 88 / 110)
    assert arms["ours_compiled"]["overhead"] == pytest.approx(0.25)
    assert arms["model_only"]["tflops"] == pytest.approx(110 * 1e9 / 1e12)
    assert arms["model_only"]["fraction_of_peak"] == pytest.approx(0.11)
    assert "overhead" not in arms["augment_only_ours"] and "tflops" not in arms["augment_only_ours"]


def test_a_tiny_cpu_run_measures_every_arm_and_writes_json_and_markdown(tmp_path):
    out = tmp_path / "pretext.json"
    bench.main(["--device", "cpu", "--shapes", "cifar", "--backbone", "convnet", "--width", "4", "--batch", "16",
                "--images", "64", "--steps", "1", "--rounds", "2", "--workers", "1", "--out", str(out)])
    result = json.loads(out.read_text())
    shape = result["shapes"]["cifar"]
    assert set(shape["arms"]) == {"model_only", "ours", "kornia", "per_image", "augment_only_ours",
                                  "augment_only_kornia"}
    for arm in shape["arms"].values():
        assert len(arm["images_per_s"]) == 2 and arm["median_images_per_s"] > 0
    assert shape["image_shape"] == [3, 32, 32] and shape["batch"] == 16 and shape["flops_per_image"] > 0
    assert result["matmul_peak"]["tflops"] > 0 and result["machine"]["device"] == "cpu"
    table = out.with_suffix(".md").read_text()
    assert "| per_image |" in table and "## cifar" in table


def test_an_arm_that_fails_is_left_out_with_its_error_and_the_others_still_run(tmp_path, monkeypatch):
    def broken(self):
        raise RuntimeError("no kornia today")

    monkeypatch.setattr(bench.Bench, "kornia", broken)
    out = tmp_path / "pretext.json"
    bench.main(["--device", "cpu", "--shapes", "cifar", "--backbone", "convnet", "--width", "4", "--batch", "8",
                "--images", "16", "--steps", "1", "--rounds", "1", "--arms", "model_only,kornia", "--out", str(out)])
    shape = json.loads(out.read_text())["shapes"]["cifar"]
    assert list(shape["arms"]) == ["model_only"] and shape["arms"]["model_only"]["median_images_per_s"] > 0
    assert shape["errors"] == {"kornia": "RuntimeError: no kornia today"}
    assert "kornia failed in its warm-up" in out.with_suffix(".md").read_text()
