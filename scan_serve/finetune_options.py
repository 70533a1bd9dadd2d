"""The options of a fine-tuning job, under one set of rules for the gateway and the job.

The gateway checks a `StartFineTune` request with `check_options` before it queues a job (an
`OptionError` becomes INVALID_ARGUMENT); the job process runs the same check in
`finetune_options`, which also fills in the defaults, some from the base version's training
config that only the job reads. proto3 cannot tell an unset number from 0, so an option left at
0 or "" takes its default. Torch-free: the gateway imports it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

from trainer.config import SelfLabelConfig

DEFAULT_EPOCHS = 5
MAX_EPOCHS = 1000
DEFAULT_MIN_AGREEMENT = 0.6
MAX_LR = 1.0  # no optimizer setting of ours trains above it; 1e30 or infinity only destroys the model
MIN_IMAGES_PER_CLUSTER = 10  # stored images a job needs per cluster of the served model

# request option: (whether a value it sets is allowed, the rule in words, with the default)
_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "epochs": (lambda v: 1 <= v <= MAX_EPOCHS, f"within 1..{MAX_EPOCHS} (0: the default {DEFAULT_EPOCHS})"),
    "threshold": (lambda v: 0 < v < 1, "within (0, 1) (0: the base version's selflabel.threshold)"),
    "max_images": (lambda v: v >= 0, "at least 0 (0: every stored image)"),
    "learning_rate": (lambda v: 0 < v <= MAX_LR, f"within (0, {MAX_LR:g}] (0: the base version's selflabel.lr)"),
    "min_agreement": (lambda v: 0 < v <= 1, f"within (0, 1] (0: the default {DEFAULT_MIN_AGREEMENT})"),
    "augment": (lambda v: v in ("strong", "weak"), "'strong' or 'weak' ('': the base version's selflabel.augment)"),
}


class OptionError(ValueError):
    """A fine-tuning option outside its allowed range; the message names the option and the range."""


@dataclass(frozen=True)
class FineTuneOptions:
    """What a job runs with, every default filled in."""

    epochs: int
    threshold: float  # pseudo-label confidence threshold
    max_images: int  # the most recent stored images to use; 0: all
    lr: float
    min_agreement: float  # the safety gate's floor on agreement with the base model
    augment: str  # views the pseudo-labels are learned on: strong | weak
    class_balance: bool


def check_options(request: Mapping[str, Any]) -> None:
    """Raise OptionError for the first option `request` sets outside its range (keys as in StartFineTuneRequest)."""
    for name, (allowed, rule) in _RULES.items():
        value = request.get(name)
        if value and not allowed(value):  # NaN is set and allowed nowhere
            raise OptionError(f"{name} must be {rule}, got {value!r}")


def finetune_options(request: Mapping[str, Any], selflabel: SelfLabelConfig) -> FineTuneOptions:
    """`request`'s options, checked by `check_options`, with the defaults filled in (`selflabel`: the base
    version's training config)."""
    check_options(request)
    return FineTuneOptions(
        epochs=int(request.get("epochs") or DEFAULT_EPOCHS),
        threshold=float(request.get("threshold") or selflabel.threshold),
        max_images=int(request.get("max_images") or 0),
        lr=float(request.get("learning_rate") or selflabel.lr),
        min_agreement=float(request.get("min_agreement") or DEFAULT_MIN_AGREEMENT),
        augment=request.get("augment") or selflabel.augment,
        class_balance=not request.get("no_class_balance", False),
    )
