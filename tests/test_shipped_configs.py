"""Every YAML in configs/ loads and validates against its model (litgpt test_config_hub style)."""

from pathlib import Path

import pytest

from jianmu.config import AugmentConfig, find_configs_dir, load_config, read_yaml, validate_config
from jianmu.taxonomy import load_taxonomy

CONFIGS = find_configs_dir()
ALL_YAML = sorted(CONFIGS.rglob("*.yaml"))


def _validate(path: Path) -> None:
    folder = path.parent.relative_to(CONFIGS).as_posix()
    if folder in (".", "bench"):
        load_config(path)
    elif folder == "taxonomy":
        load_taxonomy(path)
    elif folder == "augment":
        validate_config(read_yaml(path), source=str(path), model=AugmentConfig)
    else:
        pytest.fail(f"no validator for configs/{folder}/: add one to this test")


def test_configs_are_found():
    names = {p.relative_to(CONFIGS).as_posix() for p in ALL_YAML}
    assert {"wood.yaml", "weed_seed.yaml", "insect.yaml"} <= names
    assert {"taxonomy/wood.yaml", "taxonomy/weed_seed.yaml", "taxonomy/insect.yaml"} <= names


@pytest.mark.parametrize("path", ALL_YAML, ids=lambda p: p.relative_to(CONFIGS).as_posix())
def test_every_yaml_validates(path):
    _validate(path)


@pytest.mark.parametrize("domain", ["wood", "weed_seed", "insect"])
def test_domain_configs_choose_model_size_and_preset(domain):
    config = load_config(CONFIGS / f"{domain}.yaml")
    assert config.data.domain == domain
    assert config.augment.preset and config.augment.appearance
    assert config.model.name and config.model.img_size >= 160
