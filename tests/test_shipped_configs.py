"""Every YAML in configs/ loads and validates against its model (litgpt test_config_hub style)."""

from pathlib import Path

import pytest

from jianmu.config import AugmentConfig, find_configs_dir, load_config, read_yaml, validate_config
from jianmu.engine.bench import load_suite
from jianmu.taxonomy import load_taxonomy

CONFIGS = find_configs_dir()
ALL_YAML = sorted(CONFIGS.rglob("*.yaml"))


def _validate(path: Path) -> None:
    folder = path.parent.relative_to(CONFIGS).as_posix()
    if folder == "bench" and "tolerances" in (read_yaml(path) or {}):
        suite = load_suite(path)  # a bench suite: its recipes and their budgets load too
        for data in suite.data:
            load_config(path.parent / data.recipe, data.set)
    elif folder in (".", "bench"):
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


def test_bench_suites_ci_and_scale_exist_with_tolerances():
    ci = load_suite(CONFIGS / "bench" / "ci.yaml")
    assert [data.name for data in ci.data] == ["wood-swfu5"] and ci.data[0].root
    scale = load_suite(CONFIGS / "bench" / "scale.yaml")
    assert sorted(data.classes for data in scale.data) == [32, 110, 145]
    for suite in (ci, scale):
        assert suite.tolerances and all(
            name.split(".")[0] in {d.name for d in suite.data} for name in suite.tolerances
        )
