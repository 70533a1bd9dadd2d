"""The client library against a real server: every input kind, typed results, errors as ScanError."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from scan_serve.client import Classification, ScanClient, ScanError, to_image_message
from tests.fmnist import FASHION_MNIST_DIR
from tests.serve.conftest import TOKEN, make_certificate, start
from tests.serve.test_inputs import GOOD


@pytest.fixture(scope="module")
def client(running):
    with ScanClient(f"127.0.0.1:{running.port}", token=TOKEN) as client:
        yield client


def test_files_bytes_arrays_and_pil_images_of_one_picture_get_one_answer(client, tmp_path):
    pixels = np.array(Image.open(__import__("io").BytesIO(GOOD)))
    path = tmp_path / "picture.png"
    path.write_bytes(GOOD)
    results = client.classify([path, GOOD, pixels, pixels[:, :, None], pixels[None], Image.fromarray(pixels)],
                              top_k=2, include_probabilities=True)
    assert all(isinstance(r, Classification) for r in results)
    assert results[0].id == str(path) and results[1].id == ""
    assert len({r.cluster for r in results}) == 1
    for r in results:
        assert r.confidence == pytest.approx(results[0].confidence, abs=1e-6)
        assert len(r.probabilities) == 10 and len(r.nearest_prototypes) == 2 and r.model_version == 1
        assert r.nearest_prototypes[0].source.startswith("fashion_mnist[")
    rgb = client.classify([np.stack([pixels] * 3, axis=-1)], ids=["rgb"])[0]  # converted to gray by the gateway
    assert rgb.id == "rgb" and rgb.cluster == results[0].cluster and rgb.probabilities is None


def test_info_prototypes_names_and_health(client):
    info = client.model_info()
    assert (info.model_name, info.num_clusters, info.input_shape) == ("fashion_mnist", 10, (1, 28, 28))
    assert [p.rank for p in client.prototypes(2)] == list(range(8))
    assert client.set_cluster_names({5: "bags"}).cluster_names[5] == "bags"
    assert client.set_cluster_names({5: ""}).cluster_names[5] == ""
    assert client.healthy()


def test_refusals_become_scan_errors_naming_status_and_message(client, running):
    with pytest.raises(ScanError) as error:
        client.classify([GOOD[:50]], ids=["cut"])
    assert error.value.code == "INVALID_ARGUMENT"
    assert str(error.value).startswith("INVALID_ARGUMENT: image 0 (id 'cut'): corrupt or truncated PNG")
    with ScanClient(f"127.0.0.1:{running.port}") as anonymous:
        with pytest.raises(ScanError) as error:
            anonymous.set_cluster_names({1: "x"})
        assert error.value.code == "UNAUTHENTICATED"
    with ScanClient("127.0.0.1:1", timeout=2) as nowhere:
        with pytest.raises(ScanError) as error:
            nowhere.model_info()
        assert error.value.code in ("UNAVAILABLE", "DEADLINE_EXCEEDED")
        assert not nowhere.healthy()


def test_tls_client_with_a_private_certificate_authority(repository, tmp_path):
    key, cert = make_certificate(tmp_path)
    running = start(repository, metrics_port=None, tls_cert=cert.read_bytes(), tls_key=key.read_bytes())
    try:
        with ScanClient(f"localhost:{running.port}", root_certificates=cert, timeout=10) as client:
            assert client.model_info().model_version == 1
    finally:
        running.stop(1)


@pytest.mark.parametrize("bad,error", [(np.zeros((4, 4), np.float32), "must be uint8"),
                                       (np.zeros((2, 4, 4), np.uint8), "got shape (2, 4, 4)"),
                                       (12, "cannot send a int")])
def test_unsendable_inputs_are_refused_before_any_call(bad, error):
    with pytest.raises((ValueError, TypeError), match=error.replace("(", r"\(").replace(")", r"\)")):
        to_image_message(bad)


def test_the_main_jobs_demo_serves_the_example_and_prints_a_row_per_image(tmp_path):
    if not Path(FASHION_MNIST_DIR, "t10k-images-idx3-ubyte.gz").exists():
        pytest.skip("Fashion-MNIST not installed")
    repo = Path(__file__).resolve().parents[2]
    result = subprocess.run([sys.executable, "scripts/classify_demo.py", "--repository", "model_repository",
                             "--images", "5"], cwd=repo, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith("test[")]
    assert len(rows) == 5 and all("fashion_mnist[" in row for row in rows)
    assert "fashion_mnist version 1 (10 clusters" in result.stdout
    assert "scan-serve stopped (exit code 0)" in result.stdout
