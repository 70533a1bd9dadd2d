import os

import pytest
import torch

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", default=False, help="also run tests marked slow (CI does)")


def pytest_collection_modifyitems(config, items):
    run_slow = config.getoption("--run-slow")
    skip_slow = pytest.mark.skip(reason="slow end-to-end test: pass --run-slow (CI does)")
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device; none is visible")
    for item in items:
        if "slow" in item.keywords and not run_slow:
            item.add_marker(skip_slow)
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _few_threads():
    """Tests share 2 cores; keep torch from oversubscribing when pytest runs in parallel."""
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    yield


@pytest.fixture(autouse=True)
def _fresh_dataset_cache():
    """load_dataset memoises per process; tests that write files must not see an earlier load."""
    from trainer.data import load_dataset

    load_dataset.cache_clear()
    yield
