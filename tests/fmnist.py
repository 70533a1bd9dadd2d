"""Shared helpers for tests that train on a small real Fashion-MNIST subset."""

import os

import pytest

from trainer.config import config_from_dict

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"

needs_fashion_mnist = pytest.mark.skipif(
    not os.path.exists(os.path.join(FASHION_MNIST_DIR, "train-images-idx3-ubyte.gz")),
    reason="Fashion-MNIST not installed (scripts/install.sh installs dataset-fashion-mnist)",
)


def tiny_config(train=512, test=256, epochs=2, **sections):
    """A Fashion-MNIST config small enough to train in a second or two on 2 cores."""
    values = {
        "seed": 0,
        "data": {"name": "fashion_mnist", "train_subset": train, "test_subset": test, "num_workers": 0},
        "model": {"backbone": "convnet", "width": 8, "projection_dim": 32},
        "augment": {"jitter": [0.4, 0.4, 0.0, 0.0], "grayscale_p": 0.0},
        "pretext": {"epochs": epochs, "batch_size": 128, "lr": 0.2},
        "neighbors": {"k": 5, "feature": "backbone"},
        "scan": {"epochs": 2, "num_heads": 2, "batch_size": 128},
        "selflabel": {"epochs": 2, "batch_size": 128, "threshold": 0.5},
    }
    for name, section in sections.items():
        values.setdefault(name, {}).update(section)
    return config_from_dict(values)
