"""The synthetic sample generator: layout, labelling, determinism and refusing real data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jianmu.data.synth import MARKER, generate_dataset, is_synthetic_set
from jianmu.errors import JianmuError


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_layout_counts_and_labels(tmp_path):
    out = tmp_path / "synth"
    calls = []
    result = generate_dataset(
        out,
        classes=2,
        per_class=5,
        size=48,
        specimens_per_class=2,
        seed=3,
        progress=lambda done, total: calls.append((done, total)),
    )
    assert result.root == out
    assert result.class_names == ["synthetic_class_01", "synthetic_class_02"]
    assert result.counts == {"synthetic_class_01": 5, "synthetic_class_02": 5}
    assert result.total == 10
    assert calls[-1] == (10, 10) and len(calls) == 10

    images = sorted(out.rglob("*.jpg"))
    assert len(images) == 10
    assert sorted(p.name for p in (out / "synthetic_class_01").iterdir()) == ["s01", "s02"]
    assert (out / "synthetic_class_01" / "s01" / "synth_synthetic_class_01_s01_03.jpg").is_file()
    assert (out / "synthetic_class_01" / "s02" / "synth_synthetic_class_01_s02_02.jpg").is_file()

    readme = (out / "SYNTHETIC.md").read_text(encoding="utf-8")
    assert MARKER in readme and "not real" in readme and "seed: 3" in readme
    assert is_synthetic_set(out)
    with Image.open(images[0]) as image:
        assert image.size == (48, 48) and image.mode == "RGB" and image.format == "JPEG"
        assert MARKER in image.info["comment"].decode()
        assert MARKER in image.getexif()[0x010E]


@pytest.mark.parametrize("domain", ["wood", "weed_seed", "insect"])
def test_domains_render_distinct_classes(tmp_path, domain):
    result = generate_dataset(tmp_path / domain, domain=domain, classes=3, per_class=2, size=64)
    means = []
    for name in result.class_names:
        pixels = [
            np.asarray(Image.open(p), dtype=np.float32) for p in (result.root / name).rglob("*.jpg")
        ]
        assert all(p.shape == (64, 64, 3) and p.std() > 3 for p in pixels)  # not flat
        means.append(np.mean(pixels, axis=(0, 1, 2)))
    assert len({tuple(np.round(m)) for m in means}) == 3


def test_same_seed_is_byte_identical_and_seed_matters(tmp_path):
    kwargs = dict(classes=2, per_class=3, size=40, specimens_per_class=2)
    first = _files(generate_dataset(tmp_path / "a", seed=7, **kwargs).root)
    second = _files(generate_dataset(tmp_path / "b", seed=7, **kwargs).root)
    other = _files(generate_dataset(tmp_path / "c", seed=8, **kwargs).root)
    assert first == second
    assert first.keys() == other.keys()
    images = [key for key in first if key.endswith(".jpg")]
    assert any(first[key] != other[key] for key in images)


def test_class_names_are_folder_names(tmp_path):
    names = ["Dalbergia_odorifera", "Pterocarpus_santalinus"]
    result = generate_dataset(tmp_path / "s", classes=2, per_class=1, size=32, class_names=names)
    assert sorted(p.name for p in result.root.iterdir() if p.is_dir()) == sorted(names)
    assert (result.root / names[0] / "s01" / f"synth_{names[0]}_s01_01.jpg").is_file()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"class_names": ["a", "b", "c"], "classes": 2}, "3 class names"),
        ({"class_names": ["../up", "b"], "classes": 2}, "not a safe folder name"),
        ({"class_names": ["a", "a"], "classes": 2}, "duplicate"),
        ({"domain": "fungus"}, "unknown synthetic domain"),
        ({"per_class": 0}, "at least 1"),
        ({"size": 8}, "between 32"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, message):
    with pytest.raises(JianmuError, match=message):
        generate_dataset(tmp_path / "s", **kwargs)


def test_refuses_a_folder_with_real_data(tmp_path):
    out = tmp_path / "photos"
    (out / "Dalbergia").mkdir(parents=True)
    (out / "Dalbergia" / "IMG_0001.jpg").write_bytes(b"real photo")
    with pytest.raises(JianmuError, match="not a jianmu synthetic set"):
        generate_dataset(out, classes=1, per_class=1, size=32)
    assert (out / "Dalbergia" / "IMG_0001.jpg").read_bytes() == b"real photo"


def test_replaces_a_previous_synthetic_set_but_not_added_files(tmp_path):
    out = tmp_path / "s"
    generate_dataset(out, classes=3, per_class=2, size=32)
    result = generate_dataset(out, classes=2, per_class=2, size=32)
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == result.class_names
    (out / "synthetic_class_01" / "s01" / "IMG_0001.jpg").write_bytes(b"real photo")
    with pytest.raises(JianmuError, match="IMG_0001.jpg"):
        generate_dataset(out, classes=2, per_class=2, size=32)
    assert (out / "synthetic_class_01" / "s01" / "IMG_0001.jpg").is_file()


def test_empty_existing_folder_is_fine(tmp_path):
    result = generate_dataset(tmp_path, classes=1, per_class=1, size=32)
    assert result.total == 1 and is_synthetic_set(tmp_path)
