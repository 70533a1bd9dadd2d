import json

import numpy as np
import pytest

from export.errors import HeadError, RepositoryError, RunNotReadyError, VersionExistsError
from export.graph import ServedModel, run_torch
from export.session import onnx_session, run_session
from export.prototypes import PrototypeIndex
from export.publish import ExportInputs, TritonOptions, export_model
from export.repository import ModelRepository
from export.run import export_run
from export.triton_config import read_config
from trainer.rundir import load_checkpoint
from trainer.stages.common import load_stage_model
from tests.export.test_graph import real_test_images

QUIET = dict(log=lambda _: None)


def test_export_writes_a_complete_version_whose_files_agree_with_each_other(trained_run, tmp_path):
    published = export_run(trained_run, tmp_path / "repo", "fm", **QUIET)
    assert published.version == 1
    assert sorted(p.name for p in published.path.iterdir()) == [
        "finetune.pt", "metadata.json", "model.onnx", "prototypes.faiss", "prototypes.json", "prototypes.npz"]
    published.verify()
    meta = published.metadata
    report = json.loads((trained_run / "report.json").read_text())
    assert meta["input"] == {"name": "images", "dtype": "uint8", "layout": "NCHW", "channels": 1, "height": 28,
                             "width": 28}
    assert meta["num_clusters"] == 10 and meta["outputs"] == {"probs": [10], "embedding": [meta["embedding_dim"]]}
    assert meta["confidence_threshold"] == 0.5  # the run's selflabel.threshold
    assert meta["source"]["stage"] == "selflabel" and meta["source"]["test"] == report["final"]["test"]
    assert meta["source"]["run"] == str(trained_run)
    assert meta["parity"]["images"] == 256 and meta["parity"]["max_abs_diff"]["embedding"] <= 1e-4
    assert meta["parity"]["max_abs_diff"]["probs"] <= 1e-3
    assert meta["cluster_names"] == [None] * 10 and meta["created_at"].endswith("+00:00")

    config = read_config(tmp_path / "repo" / "fm" / "config.pbtxt")
    assert config.name == "fm" and list(config.input[0].dims) == [1, 28, 28]

    # the fine-tuning weights rebuild exactly the served graph (weights_only load)
    payload = load_checkpoint(published.finetune_path)
    assert payload["config"]["selflabel"]["threshold"] == 0.5 and payload["chosen_head"] == 0
    model, _ = load_stage_model(published.finetune_path)
    images, _ = real_test_images(trained_run, 64)
    onnx_probs, onnx_embedding = run_session(onnx_session(published.onnx_path), images)
    torch_probs, torch_embedding = run_torch(ServedModel(model), images)
    np.testing.assert_allclose(onnx_probs, torch_probs, atol=1e-4)

    # the prototypes are the run's, embedded by the served graph
    index = PrototypeIndex.load(published.path)
    run_prototypes = json.loads((trained_run / "selflabel" / "prototypes.json").read_text())["clusters"]
    assert [p["image_id"] for p in index.of_cluster(0)] == run_prototypes[0]["ids"]
    assert meta["prototypes"]["count"] == len(index) == sum(len(c["ids"]) for c in run_prototypes)
    sims, rows = index.search(onnx_embedding[:1], 1)
    assert sims[0, 0] == pytest.approx(float(index.embeddings[rows[0, 0]] @ onnx_embedding[0]), abs=1e-5)


def test_each_export_adds_the_next_version_and_a_taken_number_is_refused(trained_run, tmp_path):
    repo = tmp_path / "repo"
    assert export_run(trained_run, repo, "fm", **QUIET).version == 1
    assert export_run(trained_run, repo, "fm", **QUIET).version == 2
    assert export_run(trained_run, repo, "fm", version=5, **QUIET).version == 5
    with pytest.raises(VersionExistsError, match="fm version 2 already exists"):
        export_run(trained_run, repo, "fm", version=2, **QUIET)
    assert ModelRepository(repo).versions("fm") == [1, 2, 5]


def test_head_k_exports_that_scan_head_with_its_own_prototypes(trained_run, tmp_path):
    report = json.loads((trained_run / "report.json").read_text())
    other = next(h for h in range(3) if h != report["scan"]["chosen_head"])
    published = export_run(trained_run, tmp_path / "repo", "fm", head=other, **QUIET)
    assert published.metadata["source"]["stage"] == "scan" and published.metadata["source"]["head"] == other
    assert published.metadata["source"]["test"] == {"acc": report["scan"]["test_acc_per_head"][other]}
    scan_model, _ = load_stage_model(trained_run / "scan" / "model.pt")
    scan_model.keep_head(other)
    images, _ = real_test_images(trained_run, 32)
    probs, _ = run_session(onnx_session(published.onnx_path), images)
    np.testing.assert_allclose(probs, run_torch(ServedModel(scan_model), images)[0], atol=1e-4)
    with pytest.raises(HeadError, match=r"--head 3: .*scan/model.pt has 3 cluster heads, numbered 0..2"):
        export_run(trained_run, tmp_path / "repo", "fm", head=3, **QUIET)


def test_a_run_that_has_not_finished_is_refused_with_what_to_do(run_copy, tmp_path):
    report = json.loads((run_copy / "report.json").read_text())
    report["selflabel"]["status"] = "running"
    (run_copy / "report.json").write_text(json.dumps(report))
    with pytest.raises(RunNotReadyError, match="selflabel stage has not finished; finish it with `scan-train"):
        export_run(run_copy, tmp_path / "repo", "fm", **QUIET)
    assert export_run(run_copy, tmp_path / "repo", "fm", head=0, **QUIET).version == 1  # SCAN heads are ready

    for stage in ("selflabel", "scan"):
        report.pop(stage)
    (run_copy / "report.json").write_text(json.dumps(report))
    with pytest.raises(RunNotReadyError, match=r"scan stage has not finished \(done: pretext, neighbors\)"):
        export_run(run_copy, tmp_path / "repo", "fm", **QUIET)
    with pytest.raises(RunNotReadyError, match="does not exist"):
        export_run(tmp_path / "nowhere", tmp_path / "repo", "fm", **QUIET)
    with pytest.raises(RunNotReadyError, match="not a run directory"):
        export_run(tmp_path, tmp_path / "repo", "fm", **QUIET)


def test_versions_of_one_model_must_share_shapes(trained_run, tmp_path):
    export_run(trained_run, tmp_path / "repo", "fm", **QUIET)
    model, _ = load_stage_model(trained_run / "selflabel" / "model.pt")
    model.add_cluster_heads(5)  # another clustering of the same images
    images, _ = real_test_images(trained_run, 8)
    from export.prototypes import PrototypeSelection

    selection = PrototypeSelection([[0]] + [[]] * 4, [[1.0]] + [[]] * 4, [["x"]] + [[]] * 4,
                                   np.zeros((5, model.feature_dim), np.float32))
    inputs = ExportInputs(28, images, selection, images[:1], 0.9, {}, {})
    with pytest.raises(RepositoryError, match=r"versions of one model must share input and output shapes"):
        export_model(model, inputs, ModelRepository(tmp_path / "repo"), "fm")
    assert export_model(model, inputs, ModelRepository(tmp_path / "repo"), "fm5").version == 1


def test_triton_options_reach_config_pbtxt(trained_run, tmp_path):
    from tritonclient.grpc import model_config_pb2 as pb

    export_run(trained_run, tmp_path / "repo", "fm",
               triton=TritonOptions(max_batch_size=16, instance_kind="cpu", instance_count=3, keep_versions=2), **QUIET)
    config = read_config(tmp_path / "repo" / "fm" / "config.pbtxt")
    assert config.max_batch_size == 16 and config.version_policy.latest.num_versions == 2
    assert (config.instance_group[0].kind, config.instance_group[0].count) == (pb.ModelInstanceGroup.KIND_CPU, 3)


def test_moved_training_data_is_found_with_data_root_and_other_data_is_refused(run_copy, tmp_path):
    import shutil

    from tests.fmnist import FASHION_MNIST_DIR
    from trainer.errors import CheckpointError

    moved = shutil.copytree(FASHION_MNIST_DIR, tmp_path / "moved")
    assert export_run(run_copy, tmp_path / "repo", "fm", data_root=str(moved), **QUIET).version == 1
    config = (run_copy / "config.yaml").read_text().replace("train_subset: 512", "train_subset: 500")
    (run_copy / "config.yaml").write_text(config)
    with pytest.raises(CheckpointError, match="was trained on other data"):
        export_run(run_copy, tmp_path / "repo", "fm", **QUIET)
    assert ModelRepository(tmp_path / "repo").versions("fm") == [1]
