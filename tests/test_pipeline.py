import json

import pytest
import torch

import trainer.stages.scan as scan_stage
from trainer.pipeline import run_pipeline, stage_timing, timings_table

from tests.fmnist import needs_fashion_mnist, tiny_config

CPU = torch.device("cpu")


@needs_fashion_mnist
def test_an_interrupted_pipeline_resumes_in_the_scan_stage_and_finishes(tmp_path, interrupt_call):
    config = tiny_config(epochs=1, scan={"epochs": 3, "num_heads": 2})
    restore = interrupt_call(scan_stage, "train_scan_epoch", n=2)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(config, str(tmp_path), CPU, progress=False, log=lambda _: None)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["pretext"]["status"] == report["neighbors"]["status"] == "done"
    assert "scan" not in report
    assert set(report["timings"]) == {"pretext", "neighbors"}  # timed when done, not when interrupted
    pretext_timing = report["timings"]["pretext"]
    assert pretext_timing["wall_s"] >= pretext_timing["stage_wall_time_s"] > 0 and pretext_timing["device"] == "cpu"

    restore()
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
    assert set(final["pictures"]) == {"prototypes", "cluster_sizes", "confusion_test", "merge_suggestions"}
    pairs = final["merge_suggestions"]  # mutually most-linked clusters, most linked first
    assert [p["link"] for p in pairs] == sorted((p["link"] for p in pairs), reverse=True)
    assert all(0 < p["link"] <= 1 and min(p["sizes"]) > 0 for p in pairs)
    for picture in final["pictures"].values():
        assert (tmp_path / picture).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert report["scan"]["chosen_head"] in (0, 1) and len(report["scan"]["head_losses"]) == 2
    assert 0 <= report["final"]["test"]["acc"] <= 1
    assert list(report["timings"]) == ["pretext", "neighbors", "scan", "selflabel"]
    assert report["timings"]["pretext"] == pretext_timing  # skipped on the resume: the earlier timing stays
    assert report["timings"]["scan"]["stage_wall_time_s"] == report["scan"]["wall_time_s"]


def test_stage_timing_keeps_the_stage_s_own_time_only_when_it_reports_one():
    assert stage_timing({"wall_time_s": 9.5, "status": "done"}, 10.04, CPU) == {
        "wall_s": 10.0, "stage_wall_time_s": 9.5, "device": "cpu"}
    assert stage_timing({"status": "done"}, 1.26, torch.device("cuda", 1)) == {"wall_s": 1.3, "device": "cuda:1"}


def test_the_timings_table_has_one_aligned_row_per_stage_in_pipeline_order_and_a_total():
    table = timings_table({
        "scan": {"wall_s": 12.3, "stage_wall_time_s": 11.0, "device": "cpu"},
        "pretext": {"wall_s": 312.25, "stage_wall_time_s": 300.1, "device": "cuda"},
        "neighbors": {"wall_s": 4.0, "device": "cpu"},
    })
    header, *rows, total = table.splitlines()
    assert header.split() == ["stage", "wall", "s", "own", "s", "device"]
    assert [row.split() for row in rows] == [
        ["pretext", "312.2", "300.1", "cuda"], ["neighbors", "4.0", "-", "cpu"], ["scan", "12.3", "11.0", "cpu"]]
    assert total.split() == ["total", "328.6"]
    assert len({row.index(row.split()[1]) + len(row.split()[1]) for row in rows}) == 1  # right-aligned seconds
    assert timings_table({}) == ""
