"""ScanModel, plus the backbone registry and pretrained-weight loading in trainer.models."""

from __future__ import annotations

import pytest
import torch

from trainer.config import ModelConfig
from trainer.errors import CheckpointError, ConfigError
from trainer.models import BACKBONES, ScanModel, build_backbone, load_backbone_weights

MEAN, STD = (0.2860,), (0.3530,)


def small_model(**kwargs) -> ScanModel:
    args = dict(backbone="convnet", in_channels=1, width=8, mean=MEAN, std=STD, projection_dim=16)
    args.update(kwargs)
    return ScanModel(**args)


# ------------------------------------------------------------------ registry


def test_registry_names():
    assert set(BACKBONES) == {"resnet18_cifar", "resnet18", "resnet50", "convnet"}
    assert build_backbone("resnet18_cifar", 1, 8).conv1.stride == (1, 1)
    assert build_backbone("resnet18", 3, 8).conv1.stride == (2, 2)
    assert build_backbone("resnet50", 3, 8).out_dim == 256


def test_unknown_backbone_names_the_valid_ones():
    with pytest.raises(ConfigError, match="resnet18_cifar.*convnet"):
        build_backbone("vit", 3, 64)


# ------------------------------------------------------------------ load_backbone_weights


def test_load_round_trips_prefixed_checkpoint(tmp_path):
    torch.manual_seed(0)
    source = build_backbone("resnet18_cifar", 1, 8)
    state = {f"module.backbone.{k}": v for k, v in source.state_dict().items()}
    state["module.backbone.fc.weight"] = torch.zeros(10, 64)
    path = tmp_path / "ckpt.pth"
    torch.save({"state_dict": state, "epoch": 3}, path)

    torch.manual_seed(1)
    target = build_backbone("resnet18_cifar", 1, 8)
    assert not torch.equal(target.conv1.weight, source.conv1.weight)
    report = load_backbone_weights(target, path)
    assert report == {"missing": [], "unexpected": [], "dropped": ["fc.weight"]}
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key

    # the same works from an in-memory dict and from a plain state dict
    report = load_backbone_weights(build_backbone("resnet18_cifar", 1, 8), {"model": state})
    assert report["dropped"] == ["fc.weight"] and not report["missing"]
    report = load_backbone_weights(build_backbone("resnet18_cifar", 1, 8), source.state_dict())
    assert report == {"missing": [], "unexpected": [], "dropped": []}


def test_load_scan_layout_heads_and_shortcut_names():
    """SCAN checkpoints: backbone.* + contrastive_head.* / cluster_head.*, with `shortcut` for downsample."""
    source = build_backbone("resnet18_cifar", 3, 8)
    state = {"backbone." + k.replace(".downsample.", ".shortcut."): v for k, v in source.state_dict().items()}
    state["contrastive_head.0.weight"] = torch.zeros(64, 64)
    state["cluster_head.0.weight"] = torch.zeros(10, 64)
    target = build_backbone("resnet18_cifar", 3, 8)
    report = load_backbone_weights(target, state)
    assert report["missing"] == [] and report["unexpected"] == []
    assert sorted(report["dropped"]) == ["cluster_head.0.weight", "contrastive_head.0.weight"]
    assert torch.equal(target.layer2[0].downsample[0].weight, source.layer2[0].downsample[0].weight)


def test_load_reports_missing_and_unexpected():
    source = build_backbone("convnet", 1, 8).state_dict()
    partial = {k: v for k, v in source.items() if not k.startswith("layer3.")}
    partial["extra.weight"] = torch.zeros(3)
    report = load_backbone_weights(build_backbone("convnet", 1, 8), partial)
    assert report["missing"] and all(k.startswith("layer3.") for k in report["missing"])
    assert report["unexpected"] == ["extra.weight"]


def test_load_shape_mismatch_names_key_and_shapes():
    wide = build_backbone("resnet18_cifar", 1, 16).state_dict()
    with pytest.raises(CheckpointError, match=r"conv1\.weight.*\(16, 1, 3, 3\).*\(8, 1, 3, 3\)"):
        load_backbone_weights(build_backbone("resnet18_cifar", 1, 8), wide)


def test_load_without_matching_keys_fails(tmp_path):
    with pytest.raises(CheckpointError, match="no key matches"):
        load_backbone_weights(build_backbone("convnet", 1, 8), {"encoder.q.weight": torch.zeros(2)})
    with pytest.raises(CheckpointError, match="no key matches"):
        load_backbone_weights(build_backbone("convnet", 1, 8), {"fc.weight": torch.zeros(2)})
    with pytest.raises(CheckpointError, match="no such file"):
        load_backbone_weights(build_backbone("convnet", 1, 8), tmp_path / "absent.pth")


# ------------------------------------------------------------------ ScanModel


def test_embed_and_project_are_unit_norm():
    model = small_model().eval()
    x = torch.rand(6, 1, 28, 28)
    with torch.no_grad():
        emb, proj = model.embed(x), model.project(x)
    assert emb.shape == (6, model.feature_dim) and proj.shape == (6, 16)
    assert torch.allclose(emb.norm(dim=1), torch.ones(6), atol=1e-5)
    assert torch.allclose(proj.norm(dim=1), torch.ones(6), atol=1e-5)
    with torch.no_grad():
        assert torch.allclose(model(x), proj)
        assert torch.allclose(model.project_features(model.features(x)), proj)


def test_normalization_uses_buffers():
    model = small_model(backbone="convnet", in_channels=3, mean=(0.5, 0.4, 0.3), std=(0.2, 0.2, 0.25))
    assert model.mean.shape == (1, 3, 1, 1) and model.std.shape == (1, 3, 1, 1)
    state = model.state_dict()
    assert torch.equal(state["mean"].flatten(), torch.tensor([0.5, 0.4, 0.3]))
    assert "std" in state
    x = torch.rand(2, 3, 8, 8)
    assert torch.allclose(model.normalize(x), (x - model.mean) / model.std)
    model = model.to(torch.float64)
    assert model.mean.dtype == torch.float64 and model.std.dtype == torch.float64
    assert model.normalize(x.double()).dtype == torch.float64
    assert {name for name, _ in model.named_buffers()} >= {"mean", "std"}


def test_single_value_stats_broadcast_and_validation():
    model = small_model(in_channels=3, mean=(0.5,), std=(0.25,))
    assert model.mean.flatten().tolist() == [0.5, 0.5, 0.5]
    with pytest.raises(ConfigError, match="mean"):
        small_model(in_channels=3, mean=(0.5, 0.5), std=(0.2, 0.2, 0.2))
    with pytest.raises(ConfigError, match="std"):
        small_model(std=(0.0,))
    with pytest.raises(ValueError, match="expects images"):
        small_model()(torch.rand(2, 3, 28, 28))


def test_from_args_rebuilds_identical_model():
    torch.manual_seed(0)
    model = small_model(num_clusters=10, num_heads=3)
    # move BN statistics away from their defaults
    model.train()
    model.features(torch.rand(16, 1, 28, 28))
    model.eval()

    args = model.model_args()
    assert args == {
        "backbone": "convnet",
        "width": 8,
        "in_channels": 1,
        "projection_dim": 16,
        "projection_hidden": model.feature_dim,
        "mean": [pytest.approx(MEAN[0])],
        "std": [pytest.approx(STD[0])],
        "num_clusters": 10,
        "num_heads": 3,
    }
    torch.manual_seed(1)
    rebuilt = ScanModel.from_args(args)
    rebuilt.load_state_dict(model.state_dict())
    rebuilt.eval()
    assert rebuilt.model_args() == args
    x = torch.rand(5, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(rebuilt.cluster_logits(x), model.cluster_logits(x))
        assert torch.equal(rebuilt.project(x), model.project(x))


def test_from_args_rejects_unknown_keys():
    args = small_model().model_args() | {"depth": 3}
    with pytest.raises(CheckpointError, match="depth"):
        ScanModel.from_args(args)


def test_project_without_head_raises():
    model = small_model(projection_dim=None)
    with pytest.raises(RuntimeError, match="projection head"):
        model.project(torch.rand(2, 1, 28, 28))
    model = small_model()
    model.drop_projection_head()
    assert not model.has_projection_head
    assert not any(k.startswith("projection_head.") for k in model.state_dict())
    assert model.model_args()["projection_dim"] is None
    with pytest.raises(RuntimeError, match="projection head"):
        model.project_features(torch.rand(2, model.feature_dim))
    with pytest.raises(RuntimeError, match="cluster heads"):
        model.cluster_logits(torch.rand(2, 1, 28, 28))
    with pytest.raises(RuntimeError, match="projection head"):  # forward falls back to project
        model(torch.rand(2, 1, 28, 28))


def test_cluster_logits_shape_and_forward():
    model = small_model().eval()
    heads = model.add_cluster_heads(num_clusters=7, num_heads=4)
    assert model.cluster_heads is heads
    x = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        logits = model.cluster_logits(x)
        assert logits.shape == (4, 3, 7)
        assert torch.equal(model(x), logits)
        assert torch.equal(model.cluster_logits_from_features(model.features(x)), logits)
    args = model.model_args()
    assert (args["num_clusters"], args["num_heads"]) == (7, 4)


def test_add_cluster_heads_follows_model_dtype():
    model = small_model().to(torch.float64)
    heads = model.add_cluster_heads(5, 2)
    assert heads.heads[0].weight.dtype == torch.float64


def test_from_config_builds_and_loads_pretrained(tmp_path):
    cfg = ModelConfig(backbone="convnet", width=8, projection_dim=12, projection_hidden=24)
    model = ScanModel.from_config(cfg, in_channels=1, mean=MEAN, std=STD, num_clusters=3, num_heads=2)
    assert model.projection_head.hidden_dim == 24 and model.projection_head.out_dim == 12
    assert model.cluster_logits(torch.rand(2, 1, 28, 28)).shape == (2, 2, 3)
    assert model.pretrained_report is None

    path = tmp_path / "pretext.pth"
    torch.save({"model": model.state_dict(), "model_args": model.model_args()}, path)
    cfg = ModelConfig(backbone="convnet", width=8, pretrained=str(path))
    loaded = ScanModel.from_config(cfg, in_channels=1, mean=MEAN, std=STD)
    assert loaded.pretrained_report["missing"] == []
    for key, value in model.backbone.state_dict().items():
        assert torch.equal(loaded.backbone.state_dict()[key], value), key
    assert loaded.projection_head.hidden_dim == loaded.feature_dim  # projection_hidden None -> feature size
