"""Which version the gateway serves: the newest intact one; a pinned damaged one stops the start."""

import json
import shutil

import grpc
import pytest

from scan_serve.errors import ServeError, StartupError
from tests.serve.conftest import EXAMPLE, start


def test_a_corrupt_newest_version_is_skipped_and_a_pinned_corrupt_one_is_refused(tmp_path):
    model = tmp_path / "fashion_mnist"
    shutil.copytree(EXAMPLE / "fashion_mnist", model)
    shutil.copytree(model / "1", model / "2")
    metadata = (model / "2" / "metadata.json").read_text().replace('"version": 1', '"version": 2')
    (model / "2" / "metadata.json").write_text(metadata)
    running = start(tmp_path, metrics_port=None)
    assert running.gateway.current.number == 2
    running.stop(0)

    onnx = model / "2" / "model.onnx"
    onnx.write_bytes(onnx.read_bytes()[:-10] + b"0123456789")  # same size, other bytes
    lines = []
    running = start(tmp_path, metrics_port=None, log_line=lines.append)
    try:
        assert running.gateway.current.number == 1
        assert any("skipping fashion_mnist version 2: " in line and "model.onnx is corrupt" in line for line in lines)
    finally:
        running.stop(0)
    with pytest.raises(StartupError, match="model.onnx is corrupt"):
        start(tmp_path, metrics_port=None, version=2)
    with pytest.raises(StartupError, match=r"has no version 7 .*\(it has \[1, 2\]\)"):
        start(tmp_path, metrics_port=None, version=7)


@pytest.mark.parametrize("content", ['["a", "b"]', '{"names": ["a", "b"]}', '{"names": "a"}',
                                     '{"names": {"one": "a"}}', '{"names": {"1": 2}}', '{"names": {"²": "a"}}',
                                     "not json", '{"names": {"1": "a"'])
def test_cluster_names_of_the_wrong_shape_stop_the_start_with_one_clear_line(tmp_path, content):
    shutil.copytree(EXAMPLE / "fashion_mnist", tmp_path / "fashion_mnist")
    names = tmp_path / "fashion_mnist" / "cluster_names.json"
    names.write_text(content, encoding="utf-8")
    with pytest.raises(StartupError, match=f"{names}.*; fix or remove it") as error:
        start(tmp_path, metrics_port=None)
    assert "\n" not in str(error.value)
    assert names.read_text(encoding="utf-8") == content  # nothing the operator wrote is replaced


def test_cluster_names_of_the_right_shape_are_served(tmp_path):
    shutil.copytree(EXAMPLE / "fashion_mnist", tmp_path / "fashion_mnist")
    (tmp_path / "fashion_mnist" / "cluster_names.json").write_text('{"names": {"1": "trousers", "4": ""}}')
    running = start(tmp_path, metrics_port=None)
    try:
        assert running.gateway.names.all(5) == ["", "trousers", "", "", ""]
    finally:
        running.stop(0)


@pytest.mark.parametrize("edit,message", [
    (lambda m: m.update(num_clusters=m["num_clusters"] + 1), r"model.onnx's 'probs' is \(10,\) per image, "
                                                              r"metadata.json says \(11,\)"),
    (lambda m: m["input"].update(channels=3), r"model.onnx's 'images' is \(1, 28, 28\) per image"),
    (lambda m: m.update(embedding_dim=7), r"the prototypes have \d+ dimensions, metadata.json says embedding_dim 7"),
])
def test_a_version_whose_metadata_disagrees_with_its_graph_is_refused(tmp_path, edit, message):
    shutil.copytree(EXAMPLE / "fashion_mnist", tmp_path / "fashion_mnist")
    path = tmp_path / "fashion_mnist" / "1" / "metadata.json"
    metadata = json.loads(path.read_text())
    edit(metadata)
    path.write_text(json.dumps(metadata))  # metadata.json is not among the hashed files
    with pytest.raises(StartupError, match=message):
        start(tmp_path, metrics_port=None, version=1)


def test_a_repository_removed_while_serving_is_not_recreated_by_naming_clusters(tmp_path):
    shutil.copytree(EXAMPLE / "fashion_mnist", tmp_path / "repo" / "fashion_mnist")
    running = start(tmp_path / "repo", metrics_port=None)
    try:
        shutil.rmtree(tmp_path / "repo")
        with pytest.raises(ServeError, match=r"the names were not saved: the model folder .*fashion_mnist cannot be "
                                             r"written .*restore the repository") as error:
            running.gateway.names.update({1: "trousers"})
        assert error.value.code == grpc.StatusCode.FAILED_PRECONDITION
        assert not (tmp_path / "repo").exists() and running.gateway.names.get(1) == ""
        assert running.gateway.current.number == 1  # the loaded version keeps answering
    finally:
        running.stop(0)
