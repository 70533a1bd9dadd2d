"""The example model committed in model_repository/ is whole, consistent, and as good as its metadata says."""

from pathlib import Path

import numpy as np
import pytest
import torch

from export.graph import ServedModel, run_torch
from export.session import onnx_session, run_session
from export.prototypes import PrototypeIndex
from export.repository import ModelRepository
from export.triton_config import read_config, signature
from tests.fmnist import needs_fashion_mnist
from trainer.config import config_from_dict
from trainer.data import load_dataset
from trainer.evaluate import cluster_metrics
from trainer.stages.common import load_stage_model

REPOSITORY = Path(__file__).resolve().parents[2] / "model_repository"


@pytest.fixture(scope="module")
def example():
    return ModelRepository(REPOSITORY).load("fashion_mnist", verify=True)  # every file matches its sha256


def test_example_is_a_triton_model_whose_config_matches_its_graph(example):
    config = read_config(REPOSITORY / "fashion_mnist" / "config.pbtxt")
    assert config.platform == "onnxruntime_onnx" and config.name == "fashion_mnist"
    meta = example.metadata
    assert signature(config) == {"images": [meta["input"]["channels"], meta["input"]["height"], meta["input"]["width"]],
                                 "probs": meta["outputs"]["probs"], "embedding": meta["outputs"]["embedding"]}
    size = sum(p.stat().st_size for p in example.path.iterdir())
    assert size < 5_000_000  # small enough to live in git


@needs_fashion_mnist
def test_example_scores_on_the_real_test_split_what_its_metadata_reports(example):
    meta = example.metadata
    config = config_from_dict(__import__("torch").load(example.finetune_path, weights_only=True)["config"])
    test = load_dataset(config.data, "test", seed=config.seed)
    images = torch.stack([test[i] for i in range(len(test))]).numpy()
    probs, embedding = run_session(onnx_session(example.onnx_path, threads=2), images, batch_size=1000)
    metrics = cluster_metrics(probs.argmax(1), test.labels.numpy(), meta["num_clusters"], 10)
    assert metrics["acc"] == pytest.approx(meta["source"]["test"]["acc"], abs=0.002)
    assert metrics["nmi"] == pytest.approx(meta["source"]["test"]["nmi"], abs=0.002)

    # nearest prototypes of test images mostly share the image's cluster
    index = PrototypeIndex.load(example.path)
    _, rows = index.search(embedding, 1)
    assert (index.cluster[rows[:, 0]] == probs.argmax(1)).mean() > 0.8

    # the fine-tuning weights are the same model as the graph
    model, _ = load_stage_model(example.finetune_path)
    np.testing.assert_allclose(run_torch(ServedModel(model), images[:256])[0], probs[:256], atol=1e-4)
