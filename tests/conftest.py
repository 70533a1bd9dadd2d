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


@pytest.fixture
def interrupt_call(monkeypatch):
    """`restore = interrupt_call(module, name, n=2)`: the n-th call of `module.name` raises KeyboardInterrupt,
    which is what a Ctrl-C or a kill in the middle of a training loop looks like to it; other calls go
    through. `restore()` puts the original back (for the resumed run)."""

    def install(module, name: str, n: int = 2):
        original, calls = getattr(module, name), {"n": 0}

        def interrupted(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] == n:
                raise KeyboardInterrupt
            return original(*args, **kwargs)

        monkeypatch.setattr(module, name, interrupted)
        return lambda: monkeypatch.setattr(module, name, original)

    return install
