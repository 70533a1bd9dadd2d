"""Proving a loop never waits for the GPU: CUDA's sync debug mode turns every host sync into an error."""

import contextlib

import torch


def strict(batches):
    """Yield `batches`, with every host sync an error from the first batch until the last one is done.

    The loop body between two batches (the training step) runs in that mode; code before the first
    batch and after the last (setting up, the one read of the epoch's sums) may synchronize.
    """
    try:
        for batch in batches:
            torch.cuda.set_sync_debug_mode("error")
            yield batch
    finally:
        torch.cuda.set_sync_debug_mode("default")


@contextlib.contextmanager
def no_sync():
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")
