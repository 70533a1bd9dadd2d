import pytest
import torch

from trainer.data.base import TensorImageSet, iterate_batches, on_device


def _images(n=30):
    return TensorImageSet(torch.randint(0, 256, (n, 1, 8, 8), dtype=torch.uint8,
                                        generator=torch.Generator().manual_seed(0)))


def test_on_cpu_a_set_stays_where_it_is():
    images = _images()
    assert on_device(images, torch.device("cpu")) is images


def test_batches_follow_the_given_order_and_drop_the_last_partial_one():
    images, order = _images(), torch.randperm(30, generator=torch.Generator().manual_seed(1))
    batches = list(iterate_batches(images, 8, order=order, drop_last=True))
    assert [len(idx) for idx, _ in batches] == [8, 8, 8]
    assert torch.equal(torch.cat([idx for idx, _ in batches]), order[:24])
    assert all(torch.equal(batch, images.images[idx]) for idx, batch in batches)


@pytest.mark.gpu
def test_a_set_on_cuda_yields_the_same_batches_sliced_on_the_device():
    from tests.cuda_sync import strict

    images = _images()
    resident = on_device(images, torch.device("cuda"))
    assert resident.images.device.type == "cuda" and resident.fingerprint() == images.fingerprint()
    order = torch.randperm(30, generator=torch.Generator().manual_seed(1))
    on_cuda = list(strict(iterate_batches(resident, 8, order=order)))  # sliced with no host sync
    assert all(i.is_cuda and b.is_cuda for i, b in on_cuda)
    on_cpu = list(iterate_batches(images, 8, order=order))
    assert len(on_cuda) == len(on_cpu) == 4
    for (i, b), (j, c) in zip(on_cuda, on_cpu):
        assert torch.equal(i.cpu(), j) and torch.equal(b.cpu(), c)
    assert not on_device(images, torch.device("cuda"), share=1e-12).images.is_cuda  # too large: stays
