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
