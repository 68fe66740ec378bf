"""Shared fixtures. Real data lives in ../shared/datasets and is read in place (never copied)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
SHARED_DATASETS = REPO.parent / "shared" / "datasets"
WOOD_SWFU5 = SHARED_DATASETS / "wood-swfu5"

TINY_TAXONOMY = {
    "domain": "wood",
    "version": "test.1",
    "title": "Tiny test taxonomy",
    "sources": [{"id": "test", "title": "hand-written for tests"}],
    "species": [
        {"name": "Dalbergia tucurensis", "genus": "Dalbergia", "family": "Fabaceae", "cites": "II"},
        {
            "name": "Dalbergia stevensonii",
            "genus": "Dalbergia",
            "family": "Fabaceae",
            "cites": "II",
        },
        {
            "name": "Senna siamea",
            "genus": "Senna",
            "family": "Fabaceae",
            "chinese_name": "铁刀木",
            "synonyms": ["Cassia siamea"],
            "hongmu": "鸡翅木类",
            "sources": ["test"],
        },
        {"name": "Tectona grandis", "genus": "Tectona", "family": "Lamiaceae"},
    ],
}


@pytest.fixture
def tiny_taxonomy_path(tmp_path: Path) -> Path:
    path = tmp_path / "tiny_taxonomy.yaml"
    path.write_text(yaml.safe_dump(TINY_TAXONOMY, allow_unicode=True), encoding="utf-8")
    return path


@pytest.fixture
def wood_swfu5() -> Path:
    if not (WOOD_SWFU5 / "SOURCE.md").is_file():
        pytest.skip(f"real dataset not present at {WOOD_SWFU5}")
    return WOOD_SWFU5
