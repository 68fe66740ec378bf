from pathlib import Path

import pytest
import yaml

from jianmu.config import Config, load_config, merge, parse_overrides, save_config
from jianmu.errors import JianmuError


def write_yaml(path: Path, data) -> Path:
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def test_defaults_without_a_file():
    config = load_config()
    assert config == Config()
    assert config.train.epochs == 30


def test_precedence_defaults_yaml_set_named(tmp_path):
    path = write_yaml(
        tmp_path / "c.yaml",
        {"train": {"epochs": 7, "lr": 0.01}, "model": {"name": "resnet50"}, "seed": 3},
    )
    config = load_config(
        path,
        overrides=["train.epochs=9", "model.name=resnet18", "data.root=/tmp/x"],
        model__name="convnext_nano",
        seed=None,  # not given on the command line: YAML value stays
    )
    assert config.train.lr == 0.01  # YAML over default
    assert config.train.epochs == 9  # --set over YAML
    assert config.model.name == "convnext_nano"  # named option over --set
    assert config.seed == 3
    assert config.data.root == Path("/tmp/x")
    assert config.train.batch_size == 32  # untouched default


def test_set_values_are_parsed_as_yaml():
    nested = parse_overrides(
        ["train.grad_clip=1.5", "augment.hflip=false", "data.extensions=[.jpg]"]
    )
    assert nested == {
        "train": {"grad_clip": 1.5},
        "augment": {"hflip": False},
        "data": {"extensions": [".jpg"]},
    }


@pytest.mark.parametrize("bad", ["train.epochs", "=3", "train..epochs=3", "train.epochs="])
def test_malformed_set_is_one_clear_error(bad):
    if bad == "train.epochs=":
        # an empty value is None, which the typed field then rejects by name
        with pytest.raises(JianmuError, match="train.epochs"):
            load_config(overrides=[bad])
        return
    with pytest.raises(JianmuError, match="--set"):
        parse_overrides([bad])


def test_misspelt_key_gets_did_you_mean(tmp_path):
    path = write_yaml(tmp_path / "c.yaml", {"train": {"epocs": 5}})
    with pytest.raises(JianmuError) as info:
        load_config(path)
    message = str(info.value)
    assert "train.epocs" in message and "did you mean 'epochs'" in message
    assert "\n" not in message


def test_misspelt_section_gets_did_you_mean():
    with pytest.raises(JianmuError, match="did you mean 'augment'"):
        load_config(overrides=["augmnt.hflip=true"])


def test_wrong_type_names_the_key(tmp_path):
    path = write_yaml(tmp_path / "c.yaml", {"train": {"batch_size": "big"}})
    with pytest.raises(JianmuError, match=r"train\.batch_size: .*'big'"):
        load_config(path)


def test_cross_field_validation():
    with pytest.raises(JianmuError, match="val_fraction"):
        load_config(overrides=["data.val_fraction=0.6", "data.test_fraction=0.5"])


def test_unreadable_and_missing_files(tmp_path):
    with pytest.raises(JianmuError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("train: [epochs: 3\n", encoding="utf-8")
    with pytest.raises(JianmuError, match="cannot read YAML"):
        load_config(broken)
    listing = write_yaml(tmp_path / "list.yaml", [1, 2])
    with pytest.raises(JianmuError, match="mapping"):
        load_config(listing)


def test_augment_preset_fills_unset_fields_and_config_wins():
    config = load_config(overrides=["augment.preset=end_grain", "augment.hflip=false"])
    assert config.augment.preset == "end_grain"
    assert config.augment.appearance  # filled from configs/augment/end_grain.yaml
    assert config.augment.hflip is False  # the config's own value beats the preset


def test_unknown_preset_lists_close_names():
    with pytest.raises(JianmuError, match="did you mean 'end_grain'"):
        load_config(overrides=["augment.preset=end_grian"])


def test_save_and_reload_round_trip(tmp_path):
    config = load_config(overrides=["train.epochs=4", "data.root=/data/wood"])
    path = save_config(config, tmp_path / "run" / "config.yaml")
    assert load_config(path) == config


def test_merge_is_recursive_and_does_not_mutate():
    base = {"a": {"b": 1, "c": 2}, "d": 1}
    merged = merge(base, {"a": {"b": 5}})
    assert merged == {"a": {"b": 5, "c": 2}, "d": 1}
    assert base == {"a": {"b": 1, "c": 2}, "d": 1}


def test_yaml_words_like_off_stay_strings(tmp_path):
    """YAML 1.1 reads `off`/`yes` as booleans; configs use YAML 1.2 booleans (true/false only)."""
    config = load_config(write_yaml(tmp_path / "c.yaml", {}), overrides=["train.amp=off"])
    assert config.train.amp == "off"
    path = tmp_path / "d.yaml"
    path.write_text("train:\n  amp: off\n  ema: true\n", encoding="utf-8")
    config = load_config(path)
    assert config.train.amp == "off" and config.train.ema is True
