"""An epoch's running metric sums, kept on the training device so the loop never waits for it.

Reading a CUDA tensor on the host (`.item()`, `float(t)`, `if t:`) waits for every kernel queued
before it, so a loop that reads its loss each step runs the GPU in lock step with Python. The
epoch functions instead add each step's metrics, weighted by the batch size, into a float64
tensor on the device, and the host reads it only at sync points: every `check_every` steps and
once at the end of the epoch.

A non-finite loss makes the running sum non-finite for good (an inf or a NaN never washes out of
a sum), so checking the sums at the sync points is checking every step's loss, without a flag per
step. The check is therefore at most `check_every - 1` steps late on CUDA (those steps' updates
were applied: the weights are garbage, but the epoch is never checkpointed, so a resume restarts
it from the last good one). On CPU, where reading a value costs nothing, every step is a sync
point and training stops at the step whose loss went wrong, as before.
"""

from __future__ import annotations

from typing import Optional

import torch

from trainer.errors import TrainerError

CHECK_EVERY = 50  # steps between host reads on an accelerator


class EpochSums:
    """Batch-weighted sums of per-step metric tensors of one `shape` (the loss first or everywhere).

    `stage` and `advice` word the error: "`stage`: the loss became nan at step 12; `advice`".
    `first_step` numbers the steps in that message (pretext counts them across epochs).
    """

    def __init__(
        self,
        stage: str,
        advice: str,
        device: torch.device,
        shape: tuple[int, ...] = (),
        first_step: int = 0,
        check_every: Optional[int] = None,
    ) -> None:
        if check_every is None:
            check_every = 1 if device.type == "cpu" else CHECK_EVERY
        if check_every < 1:
            raise ValueError(f"check_every must be at least 1, got {check_every}")
        self.stage, self.advice, self.check_every = stage, advice, check_every
        self.sums = torch.zeros(shape, dtype=torch.float64, device=device)
        self.images = 0
        self.step = first_step  # the step the next `add` records
        self._checked = first_step  # steps before this one are known to be finite

    def add(self, values: torch.Tensor, batch: int) -> Optional[torch.Tensor]:
        """Add one step's `values * batch` on the device. At a sync point, check and return the running
        means (a float64 CPU tensor, for a progress bar); otherwise return None without touching the host."""
        with torch.no_grad():
            self.sums += values.detach().to(torch.float64) * batch
        self.images += batch
        self.step += 1
        if (self.step - self._checked) % self.check_every:
            return None
        return self.means()

    def means(self) -> torch.Tensor:
        """The running means as a float64 CPU tensor (one host read); raises TrainerError if any step's
        values were not finite."""
        sums = self.sums.cpu()
        if not bool(torch.isfinite(sums).all()):
            value = sums.flatten()[~torch.isfinite(sums.flatten())][0].item()
            when = (f"at step {self.step - 1}" if self.step - self._checked == 1
                    else f"between steps {self._checked} and {self.step - 1}")
            raise TrainerError(f"{self.stage}: the loss became {value} {when}; {self.advice}")
        self._checked = self.step
        return sums / max(self.images, 1)
