import json

import pytest
import torch

import trainer.stages.scan as scan_stage
from trainer.pipeline import run_pipeline

from tests.fmnist import needs_fashion_mnist, tiny_config

CPU = torch.device("cpu")


@needs_fashion_mnist
def test_an_interrupted_pipeline_resumes_in_the_scan_stage_and_finishes(tmp_path, monkeypatch):
    config = tiny_config(epochs=1, scan={"epochs": 3, "num_heads": 2})
    original = scan_stage.train_scan_epoch
    calls = {"n": 0}

    def dies_in_the_second_scan_epoch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(scan_stage, "train_scan_epoch", dies_in_the_second_scan_epoch)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(config, str(tmp_path), CPU, progress=False, log=lambda _: None)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["pretext"]["status"] == report["neighbors"]["status"] == "done"
    assert "scan" not in report

    monkeypatch.setattr(scan_stage, "train_scan_epoch", original)
    logs = []
    report = run_pipeline(config, str(tmp_path), CPU, progress=False, log=logs.append)
    assert "pretext: already done" in "\n".join(logs)
    assert [s for s in ("pretext", "neighbors", "scan", "selflabel") if report[s]["status"] == "done"] == [
        "pretext", "neighbors", "scan", "selflabel"]
    scan_epochs = [r["epoch"] for r in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines())
                   if r["stage"] == "scan"]
    assert scan_epochs == [1, 2, 3]  # epoch 1 from the first run, 2 and 3 after the resume
    final = report["final"]
    assert final["stage"] == "selflabel" and (tmp_path / final["model"]).exists()
    assert set(final["pictures"]) == {"prototypes", "cluster_sizes", "confusion_test"}
    for picture in final["pictures"].values():
        assert (tmp_path / picture).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert report["scan"]["chosen_head"] in (0, 1) and len(report["scan"]["head_losses"]) == 2
    assert 0 <= report["final"]["test"]["acc"] <= 1
