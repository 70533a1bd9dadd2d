import pytest
import torch

from trainer.errors import TrainerError
from trainer.stages.sums import EpochSums

CPU = torch.device("cpu")


def test_epoch_sums_are_the_batch_weighted_means_of_the_steps():
    sums = EpochSums("scan", "lower scan.lr", CPU, shape=(2,), check_every=10)
    steps = [(torch.tensor([1.5, 0.25]), 4), (torch.tensor([3.0, 0.5]), 2), (torch.tensor([-1.0, 1.0]), 4)]
    for values, batch in steps:
        assert sums.add(values, batch) is None  # no sync point before step 10
    expected = [sum(float(v[i]) * b for v, b in steps) / 10 for i in range(2)]
    assert sums.images == 10
    assert sums.means().tolist() == pytest.approx(expected, rel=0, abs=0)


def test_on_cpu_every_step_is_a_sync_point_and_a_non_finite_loss_names_its_step():
    sums = EpochSums("pretext", "lower pretext.lr and restart", CPU, first_step=40)
    assert sums.add(torch.tensor(2.0), 8).item() == 2.0
    with pytest.raises(TrainerError, match=r"^pretext: the loss became nan at step 41; lower pretext.lr and restart$"):
        sums.add(torch.tensor(float("nan")), 8)


def test_between_sync_points_a_non_finite_loss_is_caught_at_the_next_one_or_at_the_end():
    sums = EpochSums("selflabel", "lower selflabel.lr", CPU, check_every=3)
    sums.add(torch.tensor(1.0), 2)
    assert sums.add(torch.tensor(float("inf")), 2) is None  # not read yet
    with pytest.raises(TrainerError, match="the loss became inf between steps 0 and 2"):
        sums.add(torch.tensor(1.0), 2)  # step 3: a sync point
    late = EpochSums("scan", "lower scan.lr", CPU, check_every=50)
    late.add(torch.tensor(float("-inf")), 2)
    with pytest.raises(TrainerError, match="loss became -inf at step 0"):
        late.means()  # the end of the epoch always checks
