"""The k_selection stage in a real (tiny) run: scan.num_clusters=auto on a Fashion-MNIST subset."""

import json

import pytest
import torch

from export.run import export_run
from trainer.errors import CheckpointError, ConfigError
from trainer.pipeline import run_pipeline
from trainer.stages.common import load_stage_model

from tests.fmnist import needs_fashion_mnist, tiny_config

CPU = torch.device("cpu")
QUIET = dict(progress=False, log=lambda _: None)


def auto_config(k_range=(2, 4), train=512):
    return tiny_config(train=train, epochs=1, scan={"num_clusters": "auto", "k_range": list(k_range), "epochs": 2,
                                                     "num_heads": 2})


@needs_fashion_mnist
def test_auto_k_searches_the_range_then_scan_self_labeling_and_export_use_the_chosen_k(tmp_path, capsys):
    run = tmp_path / "run"
    report = run_pipeline(auto_config(), str(run), CPU, **QUIET)
    entry = report["k_selection"]
    assert entry["status"] == "done" and entry["k_range"] == [2, 4]
    assert entry["heads"] == 5 and entry["epochs"] == 2  # at least 5 heads; 2 SCAN epochs fit the sample cap
    assert [c["k"] for c in entry["candidates"]] == [2, 3, 4]
    chosen = entry["chosen"]
    assert chosen in (2, 3, 4) and entry["structure"] in ("clear", "weak") and entry["message"]
    for candidate in entry["candidates"]:
        assert 0.0 <= candidate["stability"] <= 1.0 and candidate["stability_error"] >= 0.0
        assert sum(candidate["sizes"]) == 512 and 0.0 <= candidate["train_acc"] <= 1.0  # ACC: for the record
    best = max(entry["candidates"], key=lambda c: (c["stability"], -c["k"]))
    assert chosen == best["k"] or entry["structure"] == "weak"
    assert (run / entry["pictures"]["k_selection"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("K=")]
    assert len(printed) == 3 and sum("<- chosen" in line for line in printed) == 1
    assert f"K={chosen:>3}" in next(line for line in printed if "<- chosen" in line)

    assert list(report["timings"]) == ["pretext", "neighbors", "k_selection", "scan", "selflabel"]
    for stage in ("scan", "selflabel"):
        model, _ = load_stage_model(run / stage / "model.pt")
        assert model.cluster_heads.num_clusters == chosen
    rows = (run / "assignments.csv").read_text().splitlines()[1:]
    assert len(rows) == 512

    # resumed: nothing is searched again, and the choice stays
    again = run_pipeline(auto_config(), str(run), CPU, **QUIET)
    assert again["k_selection"] == entry

    published = export_run(run, tmp_path / "repo", "auto", log=lambda _: None)
    assert published.metadata["num_clusters"] == chosen
    assert published.metadata["outputs"]["probs"] == [chosen]


@needs_fashion_mnist
def test_a_k_range_above_the_number_of_images_fails_before_any_training(tmp_path):
    with pytest.raises(ConfigError, match=r"scan\.k_range: K up to 600 is more than the 512 training images"):
        run_pipeline(auto_config(k_range=(2, 600)), str(tmp_path), CPU, **QUIET)
    assert not (tmp_path / "pretext").exists()
    report = tmp_path / "report.json"
    assert not report.exists() or "pretext" not in json.loads(report.read_text())


@needs_fashion_mnist
def test_the_k_selection_stage_is_refused_when_k_is_fixed_and_needed_before_scan_when_auto(tmp_path):
    with pytest.raises(ConfigError, match="--stage k_selection: this run does not search K"):
        run_pipeline(tiny_config(), str(tmp_path / "fixed"), CPU, stage="k_selection", **QUIET)
    with pytest.raises(CheckpointError, match="needs the pretext, neighbors, k_selection stage"):
        run_pipeline(auto_config(), str(tmp_path / "auto"), CPU, stage="scan", **QUIET)
