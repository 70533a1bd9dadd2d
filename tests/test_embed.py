import numpy as np
import pytest
import torch

import trainer.embed as embed
from trainer.data.base import TensorImageSet
from trainer.embed import embed_images, embed_tensor, predict_images
from trainer.models.scan_model import ScanModel

CPU = torch.device("cpu")


def _model_and_images():
    torch.manual_seed(0)
    model = ScanModel("convnet", in_channels=1, width=4, mean=[0.5], std=[0.25], num_clusters=3, num_heads=2)
    images = TensorImageSet(torch.randint(0, 256, (50, 1, 16, 16), dtype=torch.uint8,
                                          generator=torch.Generator().manual_seed(1)))
    return model, images


def test_embedding_in_batches_equals_embedding_everything_at_once():
    model, images = _model_and_images()
    model.eval()
    x = images.images.float() / 255
    with torch.no_grad():
        raw, unit = model.features(x), torch.nn.functional.normalize(model.embed(x), dim=1)
        probs = torch.softmax(model.cluster_logits(x), dim=-1)
    raw_rows = embed_images(model, images, CPU, "raw", batch_size=16)
    np.testing.assert_allclose(raw_rows, raw.numpy(), rtol=1e-5, atol=1e-6)
    features = embed_images(model, images, CPU, "backbone", batch_size=16)
    assert features.dtype == np.float32 and features.shape == (50, model.feature_dim)
    np.testing.assert_allclose(features, unit.numpy(), rtol=1e-5, atol=1e-6)
    got_probs, embeddings = predict_images(model, images, CPU, batch_size=16)
    assert got_probs.shape == (2, 50, 3) and got_probs.dtype == np.float32
    np.testing.assert_allclose(got_probs, probs.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(embeddings, unit.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.gpu
def test_embedding_on_cuda_collects_on_the_device_and_copies_once(monkeypatch):
    from tests.cuda_sync import strict

    model, images = _model_and_images()
    expected_probs, expected_embeddings = predict_images(model, images, CPU, batch_size=16)
    cuda = torch.device("cuda")
    model.to(cuda)
    batches = embed.iterate_batches
    monkeypatch.setattr(embed, "iterate_batches", lambda *a, **k: strict(batches(*a, **k)))
    features = embed_tensor(model, images, cuda, "backbone", batch_size=16, channels_last=True)
    assert features.device.type == "cuda" and features.shape == (50, model.feature_dim)
    probs, embeddings = predict_images(model, images, cuda, batch_size=16)
    np.testing.assert_allclose(probs, expected_probs, atol=3e-2)  # bf16 autocast on CUDA
    np.testing.assert_allclose(embeddings, expected_embeddings, atol=3e-2)
