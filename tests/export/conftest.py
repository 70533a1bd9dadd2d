"""A tiny real training run (Fashion-MNIST subset), trained once per test session, for export tests."""

import shutil

import pytest
import torch

from tests.fmnist import FASHION_MNIST_DIR, needs_fashion_mnist, tiny_config  # noqa: F401
from trainer.pipeline import run_pipeline


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """A finished run directory: pretext, neighbors, SCAN (3 heads), self-labeling. Treat as read-only."""
    import os

    if not os.path.exists(os.path.join(FASHION_MNIST_DIR, "train-images-idx3-ubyte.gz")):
        pytest.skip("Fashion-MNIST not installed (scripts/install.sh installs dataset-fashion-mnist)")
    run = tmp_path_factory.mktemp("run")
    config = tiny_config(train=512, test=256, epochs=2, scan={"epochs": 2, "num_heads": 3}, report={"prototypes": 4})
    torch.set_num_threads(2)
    run_pipeline(config, str(run), torch.device("cpu"), progress=False, log=lambda _: None)
    return run


@pytest.fixture
def run_copy(trained_run, tmp_path):
    """A private copy of the trained run that a test may modify."""
    return shutil.copytree(trained_run, tmp_path / "run")
