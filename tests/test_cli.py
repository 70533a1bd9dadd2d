"""scan-train as a user runs it: a real subprocess, real files, real exit codes."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from tests.fmnist import needs_fashion_mnist, tiny_config

REPO = Path(__file__).resolve().parent.parent
SCAN_TRAIN = [sys.executable, "-m", "trainer.cli"]


def scan_train(*args, **kwargs):
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    return subprocess.run([*SCAN_TRAIN, *map(str, args)], capture_output=True, text=True, cwd=REPO, env=env, **kwargs)


def write_config(path, config):
    path.write_text(yaml.safe_dump(config.to_dict()))
    return path


def test_unknown_key_exits_2_with_a_one_line_message_naming_it(tmp_path):
    result = scan_train(REPO / "configs/cifar10.yaml", "--output", tmp_path / "run", "--set", "pretext.epohcs=3")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        result.stderr.strip()
    ], "one line, no traceback"
    assert "pretext.epohcs" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists(), "a rejected config creates nothing"


def test_wrong_type_and_bad_device_are_clear_errors(tmp_path):
    result = scan_train(REPO / "configs/cifar10.yaml", "--output", tmp_path / "run", "--set", "pretext.batch_size=big")
    assert result.returncode == 2 and "pretext.batch_size: expected an integer" in result.stderr
    result = scan_train(REPO / "configs/cifar10.yaml", "--output", tmp_path / "run", "--device", "tpu")
    assert result.returncode == 2 and "--device 'tpu'" in result.stderr


def test_missing_data_set_files_name_the_place_to_put_them(tmp_path):
    result = scan_train(
        REPO / "configs/cifar10.yaml", "--output", tmp_path / "run",
        "--set", f"data.root={tmp_path / 'empty'}", "--set", "data.download=false",
    )
    assert result.returncode == 2
    assert "cifar-10-batches-py" in result.stderr and "Traceback" not in result.stderr


def test_folder_preset_without_a_root_says_how_to_give_one(tmp_path):
    result = scan_train(REPO / "configs/folder.yaml", "--output", tmp_path / "run")
    assert result.returncode == 2 and "--set data.root=PATH" in result.stderr


def test_a_folder_that_cannot_be_planned_is_a_one_line_error_naming_data_root(tmp_path):
    result = scan_train(REPO / "configs/folder.yaml", "--output", tmp_path / "run",
                        "--set", f"data.root={tmp_path / 'nowhere'}")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == f"scan-train: error: data.root: image folder {tmp_path / 'nowhere'} does not exist"
    assert not (tmp_path / "run").exists()


@needs_fashion_mnist
def test_a_k_range_above_the_training_images_exits_2_naming_the_key_before_any_training(tmp_path):
    config = write_config(tmp_path / "c.yaml", tiny_config(train=100))
    result = scan_train(config, "--output", tmp_path / "run", "--no-progress",
                        "--set", "scan.num_clusters=auto", "--set", "scan.k_range=[2, 200]")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "scan.k_range: K up to 200 is more than the 100 training images" in result.stderr
    assert not (tmp_path / "run" / "pretext").exists()


@needs_fashion_mnist
def test_stage_needs_its_predecessors_and_finished_stages_are_skipped(tmp_path):
    config = write_config(tmp_path / "c.yaml", tiny_config(epochs=1))
    run = tmp_path / "run"
    result = scan_train(config, "--output", run, "--stage", "neighbors")
    assert result.returncode == 2 and "needs the pretext stage" in result.stderr
    assert scan_train(config, "--output", run).returncode == 0
    again = scan_train(config, "--output", run)
    assert again.returncode == 0
    assert "pretext: already done" in again.stdout and "neighbors: already done" in again.stdout
    report = json.loads((run / "report.json").read_text())
    assert report["pretext"]["status"] == report["neighbors"]["status"] == "done"
    neighbors = np.load(run / "neighbors/neighbors_train.npy")
    assert neighbors.shape == (512, 5)


@needs_fashion_mnist
def test_resuming_with_a_changed_configuration_is_refused_and_keeps_the_run(tmp_path):
    run = tmp_path / "run"
    assert scan_train(write_config(tmp_path / "a.yaml", tiny_config(epochs=1)), "--output", run).returncode == 0
    before = (run / "pretext/model.pt").read_bytes()
    result = scan_train(write_config(tmp_path / "b.yaml", tiny_config(epochs=2)), "--output", run)
    assert result.returncode == 2 and "pretext.epochs: run has 1, now 2" in result.stderr
    assert (run / "pretext/model.pt").read_bytes() == before


@pytest.mark.slow
@needs_fashion_mnist
def test_kill_9_during_pretext_then_rerun_finishes_from_the_checkpoint(tmp_path):
    config = write_config(tmp_path / "c.yaml", tiny_config(train=1024, epochs=12))
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    proc = subprocess.Popen([*SCAN_TRAIN, str(config), "--output", str(run)], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    metrics = run / "metrics.jsonl"
    while time.time() < deadline and not (metrics.exists() and len(metrics.read_text().splitlines()) >= 2):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = len(metrics.read_text().splitlines())
    assert 2 <= done_before < 12, "the kill must land mid-training"
    assert not (run / "pretext/model.pt").exists()

    result = scan_train(config, "--output", run)
    assert result.returncode == 0, result.stderr
    assert "resuming after epoch" in result.stdout
    epochs = [json.loads(line)["epoch"] for line in metrics.read_text().splitlines() if '"pretext"' in line]
    assert sorted(set(epochs)) == list(range(1, 13))
    assert json.loads((run / "report.json").read_text())["neighbors"]["status"] == "done"


@pytest.mark.slow
@needs_fashion_mnist
def test_real_pretext_on_fashion_mnist_gives_neighbors_purer_than_chance(tmp_path):
    # 5k real training images, a few CPU minutes at most; chance purity is 0.10 (10 balanced classes).
    config = write_config(tmp_path / "c.yaml", tiny_config(
        train=5000, test=2000, epochs=8,
        model={"width": 16, "projection_dim": 64}, pretext={"batch_size": 256, "lr": 0.4},
        neighbors={"k": 20},
    ))
    result = scan_train(config, "--output", tmp_path / "run")
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "run/report.json").read_text())
    assert report["neighbors"]["purity@20"] > 0.5
    assert report["neighbors"]["kmeans_test"]["acc"] > 0.3


@pytest.mark.slow
def test_a_folder_of_unlabeled_images_trains_with_no_labels_anywhere(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "photos"
    for i in range(120):
        sub = root / f"batch{i % 3}" / ("deep" if i % 2 else "")
        sub.mkdir(parents=True, exist_ok=True)
        size = int(rng.integers(20, 90)), int(rng.integers(20, 90))
        colour = (255, 40, 40) if i % 2 else (40, 40, 255)  # two kinds of image
        img = Image.new("RGB", size, colour)
        img.putpixel((0, 0), tuple(int(v) for v in rng.integers(0, 255, 3)))
        img.save(sub / f"img{i}.{'png' if i % 3 else 'jpg'}")
    (root / "notes.txt").write_text("not an image")
    (root / "broken.jpg").write_bytes(b"\xff\xd8 not really")
    result = scan_train(
        REPO / "configs/folder.yaml", "--output", tmp_path / "run",
        "--set", f"data.root={root}", "--set", "data.image_size=32",
        "--set", "model.width=8", "--set", "pretext.epochs=2", "--set", "pretext.batch_size=64",
        "--set", "scan.epochs=5",  # scan.num_clusters: the preset's auto
        "--set", "scan.batch_size=64", "--set", "selflabel.epochs=2", "--set", "selflabel.batch_size=64",
    )
    assert result.returncode == 0, result.stderr
    # planned from the folder: colour images -> 3 channels, a light backbone on a CPU, k from the set size
    assert result.stdout.startswith(f"plan: 121 images in {root}")
    assert "  data.image_size = 32  (set by the preset or --set)" in result.stdout
    planned = json.loads((tmp_path / "run/report.json").read_text())["plan"]["planned"]
    assert planned["data.channels"]["value"] == 3 and planned["model.backbone"]["value"] == "convnet"
    assert planned["neighbors.k"]["value"] == 5
    assert planned["scan.k_range"]["value"] == [2, 2]  # 120 images: about 50 per cluster at the largest K
    assert "baselines on 120 training images: " in result.stdout and "recommended: " in result.stdout
    assert "1 " in result.stderr and "skipped" in result.stderr  # the broken file is counted, not fatal
    report = json.loads((tmp_path / "run/report.json").read_text())
    assert report["pretext"]["train_images"] == 120
    assert report["k_selection"]["chosen"] == 2 and "K search: " in result.stdout
    assert not any(k.startswith("purity") for k in report["neighbors"]) and "kmeans_test" not in report["neighbors"]
    assert np.load(tmp_path / "run/neighbors/neighbors_train.npy").shape == (120, 5)
    for stage in ("scan", "selflabel"):
        assert "test" not in report[stage] and "confusion_test" not in report[stage]["pictures"]
        assert sum(report[stage]["health"]["sizes"]) == 120
    prototypes = json.loads((tmp_path / "run/selflabel/prototypes.json").read_text())["clusters"]
    sources = [s for c in prototypes for s in c["sources"]]
    assert sources and all(s.startswith("batch") for s in sources)  # file paths relative to the folder
    assert report["final"]["stage"] == "selflabel"
    assert f"picture (prototypes): {tmp_path / 'run'}/selflabel/prototypes.png" in result.stdout
    assert (tmp_path / "run" / report["final"]["pictures"]["prototypes"]).exists()
    # which of my images went where: every good image once, as the final model's cluster sizes say
    with open(tmp_path / "run/assignments.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert report["final"]["assignments"] == "assignments.csv"
    expected = {str(p.relative_to(root)) for p in root.rglob("img*")}
    assert len(rows) == 120 and {r["source"] for r in rows} == expected
    sizes = np.bincount([int(r["cluster"]) for r in rows], minlength=2)
    assert list(sizes) == report["final"]["health"]["sizes"]
    for r in rows:
        assert float(r["confidence"]) >= float(r["runner_up_probability"]) and r["cluster"] != r["runner_up"]
        assert r["confident"] == str(int(float(r["confidence"]) > 0.99))
        assert r["nearest_prototype_source"] in expected  # a member of the same cluster's prototypes
    prototype_clusters = {s: c["cluster"] for c in prototypes for s in c["sources"]}
    assert all(prototype_clusters[r["nearest_prototype_source"]] == int(r["cluster"]) for r in rows)


def test_the_final_summary_ends_with_the_stage_times_table():
    from trainer.cli import final_summary

    report = {"timings": {"pretext": {"wall_s": 30.0, "stage_wall_time_s": 29.1, "device": "cpu"},
                          "neighbors": {"wall_s": 2.5, "stage_wall_time_s": 2.4, "device": "cpu"}}}
    lines = final_summary(report, "runs/x").splitlines()
    assert lines[0] == "report: runs/x/report.json"
    assert lines[1].startswith("stage times")
    assert [line.split() for line in lines[3:]] == [["pretext", "30.0", "29.1", "cpu"],
                                                     ["neighbors", "2.5", "2.4", "cpu"], ["total", "32.5"]]
