import numpy as np
import onnx
import pytest
import torch

from export.errors import ExportError, ParityError
from export.graph import PARITY_TOLERANCE, ServedModel, check_parity, export_onnx, run_torch
from export.session import onnx_providers, onnx_session, run_session
from trainer.config import RunConfig
from trainer.data import load_dataset
from trainer.models.scan_model import ScanModel
from trainer.rundir import RunDir
from trainer.stages.common import load_stage_model


def served_model(run):
    model, payload = load_stage_model(run / "selflabel" / "model.pt")
    model.keep_head(payload["chosen_head"])
    return ServedModel(model.eval())


def real_test_images(run, n=None):
    config: RunConfig = RunDir(run).load_config()
    test = load_dataset(config.data, "test", seed=config.seed)
    images = torch.stack([test[i] for i in range(len(test) if n is None else n)]).numpy()
    return images, test.labels.numpy()[: len(images)]


def test_onnx_matches_pytorch_on_real_images_at_batch_1_64_and_whole(trained_run, tmp_path):
    served = served_model(trained_run)
    path = export_onnx(served, tmp_path / "model.onnx", channels=1, image_size=28)
    images, _ = real_test_images(trained_run)
    session = onnx_session(path, threads=2)
    figures = check_parity(session, served, images, batch_sizes=(1, 64, len(images)))
    assert set(figures["batch_sizes"]) == {"1", "64", str(len(images))}
    for row in figures["batch_sizes"].values():
        assert row["max_abs_diff_probs"] <= PARITY_TOLERANCE["probs"]
        assert row["max_abs_diff_embedding"] <= PARITY_TOLERANCE["embedding"]
        assert row["argmax_agreement"] == 1.0
    # independently of check_parity: the two runtimes agree image by image
    onnx_probs, onnx_embedding = run_session(session, images, batch_size=64)
    torch_probs, torch_embedding = run_torch(served, images)
    np.testing.assert_allclose(onnx_probs, torch_probs, atol=PARITY_TOLERANCE["probs"])
    np.testing.assert_allclose(onnx_embedding, torch_embedding, atol=PARITY_TOLERANCE["embedding"])


def test_graph_takes_uint8_with_a_dynamic_batch_and_returns_probs_and_unit_embeddings(trained_run, tmp_path):
    served = served_model(trained_run)
    path = export_onnx(served, tmp_path / "model.onnx", channels=1, image_size=28)
    graph = onnx.load(str(path)).graph
    (images,) = graph.input
    assert images.name == "images" and images.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    dims = images.type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and [d.dim_value for d in dims[1:]] == [1, 28, 28]
    assert [o.name for o in graph.output] == ["probs", "embedding"]
    clusters = served.model.cluster_heads.num_clusters
    assert [d.dim_value for d in graph.output[0].type.tensor_type.shape.dim][1:] == [clusters]

    real, _ = real_test_images(trained_run, 37)  # an odd batch size the trace never saw
    probs, embedding = run_session(onnx_session(path), real)
    assert probs.shape == (37, clusters) and embedding.shape == (37, served.model.feature_dim)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(embedding, axis=1), 1.0, atol=1e-5)


def test_graph_scales_and_normalizes_inside_so_raw_pixels_are_the_whole_contract(trained_run, tmp_path):
    served = served_model(trained_run)
    path = export_onnx(served, tmp_path / "model.onnx", channels=1, image_size=28)
    images, _ = real_test_images(trained_run, 16)
    probs, _ = run_session(onnx_session(path), images)
    model = served.model
    with torch.no_grad():  # the training code path: float [0, 1] images into ScanModel, which normalizes
        expected = torch.softmax(model.cluster_logits(torch.from_numpy(images).float() / 255)[0], -1).numpy()
    np.testing.assert_allclose(probs, expected, atol=PARITY_TOLERANCE["probs"])


def test_parity_check_fails_with_the_numbers_when_pytorch_and_the_graph_disagree(trained_run, tmp_path):
    served = served_model(trained_run)
    path = export_onnx(served, tmp_path / "model.onnx", channels=1, image_size=28)
    session = onnx_session(path)
    with torch.no_grad():
        served.model.cluster_heads.heads[0].bias.add_(torch.linspace(0, 3, served.model.cluster_heads.num_clusters))
    images, _ = real_test_images(trained_run, 32)
    with pytest.raises(ParityError, match=r"differs from PyTorch on 32 real images \(batch 1: probs differ by 0\.\d+ > 0.001;.*argmax agreement"):
        check_parity(session, served, images)


def test_served_model_needs_exactly_one_cluster_head():
    args = dict(backbone="convnet", in_channels=1, width=8, mean=[0.5], std=[0.5])
    with pytest.raises(ExportError, match="exactly one cluster head, this one has 0"):
        ServedModel(ScanModel(**args))
    with pytest.raises(ExportError, match="exactly one cluster head, this one has 3"):
        ServedModel(ScanModel(**args, num_clusters=4, num_heads=3))


def test_asking_for_cuda_without_a_cuda_onnxruntime_is_a_clear_error():
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has the CUDA provider")
    with pytest.raises(ExportError, match="no CUDA provider.*onnxruntime-gpu"):
        onnx_providers("cuda")
    assert onnx_providers("cpu") == ["CPUExecutionProvider"]
