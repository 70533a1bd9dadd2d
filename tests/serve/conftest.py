"""A real gateway on port 0 serving a private copy of the committed example model, and a real client."""

import io
import shutil
import subprocess
from pathlib import Path

import grpc
import pytest
import torch
from PIL import Image

from scan_serve.inputs import InputLimits
from scan_serve.proto import scan_pb2_grpc
from scan_serve.server import ServeSettings, create_server

EXAMPLE = Path(__file__).resolve().parents[2] / "model_repository"
TOKEN = "s3cret-operator-token"


@pytest.fixture(scope="module")
def repository(tmp_path_factory):
    root = tmp_path_factory.mktemp("repository")
    shutil.copytree(EXAMPLE / "fashion_mnist", root / "fashion_mnist")
    return root


def start(repository, log_line=lambda _: None, **changes):
    values = dict(repository=repository, model_name="fashion_mnist", port=0, metrics_port=0, token=TOKEN, threads=2,
                  limits=InputLimits(max_images=256, max_image_bytes=1 << 20, max_pixels=1 << 22))
    values.update(changes)
    return create_server(ServeSettings(**values), log_line=log_line)


@pytest.fixture(scope="module")
def running(repository):
    gateway = start(repository)
    yield gateway
    gateway.stop(1)


@pytest.fixture(scope="module")
def channel(running):
    with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        yield channel


@pytest.fixture(scope="module")
def stub(channel):
    return scan_pb2_grpc.ScanServiceStub(channel)


def make_certificate(folder):
    """A self-signed certificate for localhost / 127.0.0.1 made with openssl: (key path, certificate path)."""
    key, cert = folder / "key.pem", folder / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert, "-days",
                    "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True)
    return key, cert


def png(array):
    """PNG bytes of a uint8 (H, W) or (H, W, 3|4) array."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="session")
def fashion_test():
    """The real Fashion-MNIST test split: images (10000, 28, 28) uint8 and labels (10000,)."""
    from tests.fmnist import FASHION_MNIST_DIR
    from trainer.config import DataConfig
    from trainer.data import load_dataset

    if not (Path(FASHION_MNIST_DIR) / "t10k-images-idx3-ubyte.gz").exists():
        pytest.skip("Fashion-MNIST not installed (scripts/install.sh installs dataset-fashion-mnist)")
    test = load_dataset(DataConfig(name="fashion_mnist", num_workers=0), "test", seed=0)
    return torch.stack([test[i] for i in range(len(test))]).numpy()[:, 0], test.labels.numpy()
