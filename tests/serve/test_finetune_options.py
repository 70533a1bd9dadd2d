"""The fine-tuning options: one set of rules for the gateway's check and the job's defaults."""

import math

import pytest

from scan_serve.finetune_options import (
    DEFAULT_EPOCHS, DEFAULT_MIN_AGREEMENT, FineTuneOptions, OptionError, check_options, finetune_options,
)
from trainer.config import SelfLabelConfig

BASE = SelfLabelConfig(threshold=0.95, lr=3e-4, augment="weak")


def test_an_empty_request_takes_every_default_from_the_base_training_config():
    assert finetune_options({}, BASE) == FineTuneOptions(
        epochs=DEFAULT_EPOCHS, threshold=0.95, max_images=0, lr=3e-4, min_agreement=DEFAULT_MIN_AGREEMENT,
        augment="weak", class_balance=True)


def test_zero_values_mean_the_default_as_in_a_proto3_request():
    request = {"epochs": 0, "threshold": 0.0, "max_images": 0, "learning_rate": 0.0, "min_agreement": 0.0,
               "augment": "", "no_class_balance": False}
    check_options(request)
    assert finetune_options(request, BASE) == finetune_options({}, BASE)


def test_options_a_request_sets_are_kept():
    request = {"epochs": 1000, "threshold": 0.5, "max_images": 300, "learning_rate": 0.01, "min_agreement": 1.0,
               "augment": "strong", "no_class_balance": True}
    assert finetune_options(request, BASE) == FineTuneOptions(
        epochs=1000, threshold=0.5, max_images=300, lr=0.01, min_agreement=1.0, augment="strong",
        class_balance=False)


@pytest.mark.parametrize("name,value,rule", [
    ("epochs", 1001, r"epochs must be within 1\.\.1000 \(0: the default 5\), got 1001"),
    ("epochs", -3, r"epochs must be within 1\.\.1000"),
    ("threshold", 1.0, r"threshold must be within \(0, 1\) \(0: the base version's selflabel.threshold\), got 1.0"),
    ("threshold", -0.2, r"threshold must be within \(0, 1\)"),
    ("threshold", math.nan, r"threshold must be within \(0, 1\).*got nan"),
    ("max_images", -1, r"max_images must be at least 0 \(0: every stored image\), got -1"),
    ("learning_rate", -1e-3, r"learning_rate must be within \(0, 1\] \(0: the base version's selflabel.lr\)"),
    ("learning_rate", math.nan, r"learning_rate must be within \(0, 1\].*got nan"),
    ("learning_rate", math.inf, r"learning_rate must be within \(0, 1\].*got inf"),
    ("learning_rate", 1e30, r"learning_rate must be within \(0, 1\].*got 1e\+30"),
    ("min_agreement", 1.5, r"min_agreement must be within \(0, 1\] \(0: the default 0.6\), got 1.5"),
    ("augment", "wild", r"augment must be 'strong' or 'weak' \(''.*\), got 'wild'"),
])
def test_a_value_out_of_range_is_refused_with_the_option_and_its_range(name, value, rule):
    with pytest.raises(OptionError, match=rule):
        check_options({name: value})
    with pytest.raises(OptionError, match=rule):  # the job applies the same rules
        finetune_options({"epochs": 2, name: value}, BASE)
