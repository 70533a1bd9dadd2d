"""The real-Triton test harness itself: parity with onnxruntime, crash and restart, versions."""

import pathlib

import numpy as np
import pytest

pytest.importorskip("pytriton", reason="nvidia-pytriton (ships the tritonserver binary) is not installed")
ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
grpcclient = pytest.importorskip("tritonclient.grpc", reason="tritonclient[grpc] is not installed")

from tritonclient.utils import InferenceServerException

from tests.triton_harness import (
    TritonProcess,
    _model_copies_of,
    _process_tree,
    _shm_files_of,
)

pytestmark = pytest.mark.slow  # a real tritonserver starts in each test (about 3 s each)

VERSION_DIR = pathlib.Path(__file__).resolve().parents[1] / "model_repository" / "fashion_mnist" / "1"
MODEL = "fashion_mnist"

if not (VERSION_DIR / "model.onnx").is_file():
    pytest.skip(f"no exported model at {VERSION_DIR}", allow_module_level=True)


def _infer(url, images, version="1"):
    with grpcclient.InferenceServerClient(url) as client:
        inp = grpcclient.InferInput("images", list(images.shape), "UINT8")
        inp.set_data_from_numpy(images)
        outputs = [grpcclient.InferRequestedOutput("probs"), grpcclient.InferRequestedOutput("embedding")]
        result = client.infer(MODEL, [inp], model_version=version, outputs=outputs)
        return result.as_numpy("probs"), result.as_numpy("embedding")


@pytest.fixture(scope="module")
def triton():
    proc = TritonProcess(VERSION_DIR, MODEL, 1)
    proc.start(timeout=60)
    yield proc
    proc.cleanup()


def test_outputs_match_onnxruntime(triton):
    images = np.random.default_rng(0).integers(0, 256, (5, 1, 28, 28), dtype=np.uint8)
    probs, embedding = _infer(triton.url, images)

    session = ort.InferenceSession((VERSION_DIR / "model.onnx").as_posix(), providers=["CPUExecutionProvider"])
    want_probs, want_embedding = session.run(["probs", "embedding"], {"images": images})
    assert probs.shape == (5, 10) and probs.dtype == np.float32
    assert embedding.shape == (5, 64) and embedding.dtype == np.float32
    np.testing.assert_allclose(probs, want_probs, atol=1e-5)
    np.testing.assert_allclose(embedding, want_embedding, atol=1e-5)

    with grpcclient.InferenceServerClient(triton.url) as client:
        assert client.is_model_ready(MODEL, "1")
        assert not client.is_model_ready(MODEL, "2")
        assert client.get_model_config(MODEL, "1").config.max_batch_size == 64


def test_kill_and_restart_on_same_port(triton):
    images = np.random.default_rng(1).integers(0, 256, (3, 1, 28, 28), dtype=np.uint8)
    before, _ = _infer(triton.url, images)
    port, url = triton.grpc_port, triton.url
    tree = [pid for pid, _ in _process_tree(triton.pid)]
    assert len(tree) >= 3  # harness, tritonserver, python backend stub
    shm = _shm_files_of(tree)
    assert shm  # pytriton's python-backend region and data segments
    copies = _model_copies_of(tree)
    assert copies  # tritonserver's /tmp/folderXXXXXX copy of the model (hard-coded /tmp)

    triton.kill()
    assert not triton.is_running()
    assert not [pid for pid in tree if pathlib.Path(f"/proc/{pid}").exists() and _state(pid) not in "ZX"]
    assert not [path for path in shm if pathlib.Path(path).exists()], "leaked /dev/shm regions"
    assert not [path for path in copies if pathlib.Path(path).exists()], "leaked /tmp model copies"
    with grpcclient.InferenceServerClient(url) as client, pytest.raises(InferenceServerException):
        client.is_server_live()

    triton.start(timeout=60)
    assert triton.grpc_port == port and triton.url == url
    after, _ = _infer(triton.url, images)
    np.testing.assert_array_equal(after, before)


def test_version_number_and_graceful_stop():
    with TritonProcess(VERSION_DIR, MODEL, version=3) as proc:
        with grpcclient.InferenceServerClient(proc.url) as client:
            assert client.is_model_ready(MODEL, "3")
            assert not client.is_model_ready(MODEL, "1")
        probs, _ = _infer(proc.url, np.zeros((1, 1, 28, 28), dtype=np.uint8), version="3")
        assert probs.shape == (1, 10)
    assert not proc.is_running()
    with grpcclient.InferenceServerClient(proc.url) as client, pytest.raises(InferenceServerException):
        client.is_server_live()
    proc.cleanup()


def _state(pid):
    try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "X"
    return stat[stat.rfind(")") + 2]
