import pytest

from trainer.config import RunConfig, config_from_dict, dump_config, load_config
from trainer.errors import ConfigError

import yaml


def test_every_preset_in_configs_loads(tmp_path):
    from pathlib import Path

    presets = sorted(Path(__file__).parent.parent.joinpath("configs").glob("*.yaml"))
    assert presets, "no presets found"
    for preset in presets:
        extra = ["data.root=/some/folder"] if "folder" in preset.name else []
        config = load_config(preset, extra)
        assert isinstance(config, RunConfig)


def test_unknown_key_is_rejected_with_its_dotted_name():
    with pytest.raises(ConfigError, match=r"pretext\.epoch\b"):
        config_from_dict({"pretext": {"epoch": 3}})
    with pytest.raises(ConfigError, match="unknown configuration key bogus"):
        config_from_dict({"bogus": 1})


def test_wrong_type_is_rejected_with_key_and_value():
    with pytest.raises(ConfigError, match=r"pretext\.batch_size: expected an integer, got str 'big'"):
        config_from_dict({"pretext": {"batch_size": "big"}})
    with pytest.raises(ConfigError, match=r"augment\.crop_scale: expected a list of 2 values"):
        config_from_dict({"augment": {"crop_scale": [0.2]}})
    with pytest.raises(ConfigError, match=r"pretext\.nesterov: expected true or false"):
        config_from_dict({"pretext": {"nesterov": 1}})


def test_integers_are_accepted_where_floats_are_expected():
    config = config_from_dict({"pretext": {"lr": 1}})
    assert config.pretext.lr == 1.0 and isinstance(config.pretext.lr, float)


def test_overrides_are_parsed_as_yaml_and_validated():
    config = config_from_dict({}, ["pretext.epochs=7", "augment.crop_scale=[0.5, 1.0]", "data.root=/x"])
    assert config.pretext.epochs == 7
    assert config.augment.crop_scale == (0.5, 1.0)
    assert config.data.root == "/x"
    with pytest.raises(ConfigError, match=r"unknown configuration key pretext\.epoches"):
        config_from_dict({}, ["pretext.epoches=7"])
    with pytest.raises(ConfigError, match="expected key=value"):
        config_from_dict({}, ["pretext.epochs"])
    with pytest.raises(ConfigError, match=r"pretext\.epochs is a value"):
        config_from_dict({}, ["pretext.epochs.x=1"])


def test_semantic_checks_name_the_key():
    with pytest.raises(ConfigError, match=r"data\.root: the 'folder' data set needs a folder"):
        config_from_dict({"data": {"name": "folder"}})
    with pytest.raises(ConfigError, match=r"data\.name: unknown data set 'mnist'"):
        config_from_dict({"data": {"name": "mnist"}})
    with pytest.raises(ConfigError, match=r"augment\.crop_scale"):
        config_from_dict({"augment": {"crop_scale": [0.8, 0.2]}})


def test_config_round_trips_through_yaml():
    config = config_from_dict({"seed": 3, "pretext": {"epochs": 2}, "augment": {"jitter": [0.1, 0.2, 0.0, 0.0]}})
    assert config_from_dict(yaml.safe_load(dump_config(config))) == config


def test_loading_a_preset_has_no_side_effects(tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text("data:\n  name: folder\n  root: " + str(tmp_path / "nowhere") + "\n  image_size: 32\n")
    load_config(preset)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.yaml"]


def test_unreadable_or_malformed_files_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="cannot read configuration"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("pretext: [1, 2")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_planned_values_fill_in_and_overrides_win(tmp_path):
    from trainer.config import explicit_keys

    preset = tmp_path / "p.yaml"
    preset.write_text("data:\n  name: folder\n  root: /x\n  image_size: null\nmodel:\n  width: 8\n")
    overrides = ["pretext.epochs=3", "scan={num_heads: 2}"]
    assert explicit_keys(preset, overrides) == {"data.name", "data.root", "model.width", "pretext.epochs",
                                                "scan.num_heads"}  # a null in the preset is "not set"
    planned = {"data.image_size": 28, "pretext.epochs": 99, "augment.crop_scale": (0.5, 1.0)}
    config = load_config(preset, overrides, planned=planned)
    assert config.data.image_size == 28 and config.augment.crop_scale == (0.5, 1.0)
    assert config.pretext.epochs == 3  # the override wins over the plan
    with pytest.raises(ConfigError, match=r"unknown configuration key data\.size"):
        load_config(preset, planned={"data.size": 28})
