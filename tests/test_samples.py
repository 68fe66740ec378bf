"""Sample discovery: class order, specimens, skipped files, errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from imagefiles import write_image, write_text

from jianmu.config import IMAGE_EXTENSIONS
from jianmu.data.samples import (
    Sample,
    find_class_folders,
    find_dataset,
    find_samples,
    find_skipped_files,
    natural_key,
)
from jianmu.errors import JianmuError


def test_natural_sort_puts_2_before_10() -> None:
    names = ["10-x", "2-x", "1-b", "Abies", "abies_2", "1-a"]
    assert sorted(names, key=natural_key) == ["1-a", "1-b", "2-x", "10-x", "Abies", "abies_2"]


def test_class_folders_in_natural_order_hidden_skipped(tmp_path: Path) -> None:
    for name in ["10-Tectona", "2-Senna", "1-Dalbergia", ".cache", "empty"]:
        (tmp_path / name).mkdir()
    write_text(tmp_path / "README.md")
    assert find_class_folders(tmp_path) == ["1-Dalbergia", "2-Senna", "10-Tectona", "empty"]


def test_flat_layout_each_image_is_its_own_specimen(tmp_path: Path) -> None:
    for name in ["img10.jpg", "img2.JPG", "img1.png"]:
        write_image(tmp_path / "oak" / name)
    write_image(tmp_path / "pine" / "a.webp")
    write_image(tmp_path / "oak" / ".hidden.jpg")
    write_image(tmp_path / "oak" / ".thumbs" / "x.jpg")
    samples = find_samples(tmp_path, IMAGE_EXTENSIONS)
    assert [(s.path.name, s.label, s.specimen) for s in samples] == [
        ("img1.png", "oak", "oak/img1.png"),
        ("img2.JPG", "oak", "oak/img2.JPG"),
        ("img10.jpg", "oak", "oak/img10.jpg"),
        ("a.webp", "pine", "pine/a.webp"),
    ]
    assert all(s.path.is_absolute() and s.path.is_file() for s in samples)


def test_specimen_from_first_sub_folder_at_any_depth(tmp_path: Path) -> None:
    write_image(tmp_path / "oak" / "S1" / "a.jpg")
    write_image(tmp_path / "oak" / "S1" / "zoom" / "b.jpg")
    write_image(tmp_path / "oak" / "S2" / "c.jpg")
    write_image(tmp_path / "oak" / "loose.jpg")
    write_image(tmp_path / "pine" / "S1" / "d.jpg")
    samples = find_samples(tmp_path, [".jpg"])
    assert {s.path.name: s.specimen for s in samples} == {
        "loose.jpg": "oak/loose.jpg",
        "a.jpg": "oak/S1",
        "b.jpg": "oak/S1",
        "c.jpg": "oak/S2",
        "d.jpg": "pine/S1",  # same folder name in another class is another piece
    }


@pytest.mark.parametrize(
    "pattern", [r"^(?P<specimen>[A-Z]+\d+)_", r"^([A-Z]+\d+)_", r"^[A-Z]+\d+(?=_)"]
)
def test_specimen_from_pattern(tmp_path: Path, pattern: str) -> None:
    for name in ["DT01_a.jpg", "DT01_b.jpg", "DT02_a.jpg", "odd.jpg"]:
        write_image(tmp_path / "oak" / "box" / name)
    samples = find_samples(tmp_path, [".jpg"], specimen_pattern=pattern)
    assert {s.path.name: s.specimen for s in samples} == {
        "DT01_a.jpg": "oak/DT01",
        "DT01_b.jpg": "oak/DT01",
        "DT02_a.jpg": "oak/DT02",
        "odd.jpg": "oak/box",  # no match: falls back to the sub-folder
    }


def test_invalid_pattern_is_a_user_error(tmp_path: Path) -> None:
    write_image(tmp_path / "oak" / "a.jpg")
    with pytest.raises(JianmuError, match="specimen_pattern"):
        find_samples(tmp_path, [".jpg"], specimen_pattern="(unclosed")


def test_skipped_files_are_listed(tmp_path: Path) -> None:
    write_image(tmp_path / "oak" / "a.jpg")
    write_text(tmp_path / "oak" / "notes.txt")
    write_image(tmp_path / "oak" / "S1" / "scan.gif", mode="P")
    write_image(tmp_path / "stray.jpg")
    files = find_dataset(tmp_path, ["jpg"])  # extensions with or without the dot
    assert files.classes == ["oak"]
    assert [s.path.name for s in files.samples] == ["a.jpg"]
    skipped = [p.relative_to(files.root).as_posix() for p in files.skipped]
    assert skipped == ["oak/notes.txt", "oak/S1/scan.gif", "stray.jpg"]
    assert find_skipped_files(tmp_path, [".jpg"]) == files.skipped


def test_sample_is_frozen() -> None:
    sample = Sample(Path("/a.jpg"), "oak", "oak/a.jpg")
    with pytest.raises(AttributeError):
        sample.label = "pine"  # type: ignore[misc]


def test_bad_roots(tmp_path: Path) -> None:
    with pytest.raises(JianmuError, match="not found"):
        find_samples(tmp_path / "missing", IMAGE_EXTENSIONS)
    write_text(tmp_path / "file.txt")
    with pytest.raises(JianmuError, match="not a folder"):
        find_class_folders(tmp_path / "file.txt")
    with pytest.raises(JianmuError, match="no class folders"):
        find_samples(tmp_path, IMAGE_EXTENSIONS)
