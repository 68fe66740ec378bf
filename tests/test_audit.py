"""Dataset audit: every finding built from tiny generated files, plus the real wood set."""

from __future__ import annotations

import importlib.util
import itertools
import json
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from imagefiles import (
    make_image_folder,
    write_cmyk_jpeg,
    write_exif_rotated_jpeg,
    write_gradient_16bit_png,
    write_image,
    write_near_duplicate,
    write_palette_png,
    write_rgba_png,
    write_text,
    write_truncated_jpeg,
    write_zero_byte,
)

from jianmu.config import DataConfig
from jianmu.data.audit import (
    AuditReport,
    UnionFind,
    audit_dataset,
    find_near_duplicate_edges,
    scan_images,
)
from jianmu.errors import JianmuError

CONFIG = DataConfig(min_images_per_class=5, min_image_side=32, near_duplicate_distance=4)


@pytest.fixture(scope="module")
def messy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Five classes holding one of each problem the audit looks for."""
    root = tmp_path_factory.mktemp("messy")
    make_image_folder(root, {"1-alpha": 6, "2-beta": 6, "10-gamma": 6, "3-delta": 2}, seed=1)
    alpha = root / "1-alpha"
    write_truncated_jpeg(alpha / "truncated.jpg", seed=50)
    write_zero_byte(alpha / "empty.jpg")
    write_text(alpha / "notes.jpg")
    write_cmyk_jpeg(alpha / "cmyk.jpg", seed=51)
    write_gradient_16bit_png(alpha / "ramp16.png")
    write_palette_png(alpha / "palette.png", seed=52)
    write_rgba_png(alpha / "rgba.png", seed=53)
    write_exif_rotated_jpeg(alpha / "rotated.jpg", seed=54)
    write_image(alpha / "tiny.jpg", seed=55, size=(20, 24))
    write_text(alpha / "readme.txt")
    write_image(alpha / "big.jpg", seed=56, size=(64, 64))
    # the same bytes under another class: a conflicting label
    shutil.copy(alpha / "1-alpha_000.jpg", root / "2-beta" / "copy_of_alpha.jpg")
    # the same picture, rescaled and recompressed, under another class
    write_near_duplicate(alpha / "big.jpg", root / "10-gamma" / "gamma_recompressed.jpg")
    # a second exact copy inside one class (a warning, not blocking)
    shutil.copy(root / "2-beta" / "2-beta_001.jpg", root / "2-beta" / "again.jpg")
    (root / "4-empty").mkdir()
    (root / ".git").mkdir()
    return root


@pytest.fixture(scope="module")
def report(messy: Path) -> AuditReport:
    return audit_dataset(messy, CONFIG)


def _paths(issues) -> dict[str, str]:
    return {issue.path: issue.detail for issue in issues}


def test_class_counts_in_natural_order(report: AuditReport) -> None:
    summary = {c.name: (c.images, c.specimens, c.unreadable) for c in report.classes}
    assert list(summary) == ["1-alpha", "2-beta", "3-delta", "4-empty", "10-gamma"]
    assert summary["1-alpha"] == (13, 13, 3)
    assert summary["2-beta"] == (8, 8, 0)
    assert summary["10-gamma"] == (7, 7, 0)
    assert summary["4-empty"] == (0, 0, 0)
    assert report.num_files == 16 + 8 + 7 + 2


def test_unreadable_files_with_reasons(report: AuditReport) -> None:
    assert _paths(report.unreadable) == {
        "1-alpha/empty.jpg": "zero-byte file",
        "1-alpha/notes.jpg": "not an image",
        "1-alpha/truncated.jpg": "truncated image",
    }
    assert any("3 unreadable files" in line for line in report.blocking)


def test_odd_modes_are_informational(report: AuditReport) -> None:
    assert _paths(report.odd_modes) == {
        "1-alpha/cmyk.jpg": "CMYK",
        "1-alpha/palette.png": "palette",
        "1-alpha/ramp16.png": "16-bit (I;16)",
        "1-alpha/rgba.png": "RGBA (alpha)",
    }
    assert not any("CMYK" in line for line in report.blocking)
    assert any("converted to RGB" in line for line in report.warnings)


def test_exif_rotated_and_small_images(report: AuditReport) -> None:
    assert list(_paths(report.exif_rotated)) == ["1-alpha/rotated.jpg"]
    assert _paths(report.small_images) == {"1-alpha/tiny.jpg": "20x24"}
    assert not any("tiny" in line for line in report.blocking)


def test_exact_duplicate_across_classes_is_a_conflicting_label(report: AuditReport) -> None:
    exact = {tuple(group.paths): group.labels for group in report.exact_duplicates}
    assert exact == {
        ("1-alpha/1-alpha_000.jpg", "2-beta/copy_of_alpha.jpg"): ["1-alpha", "2-beta"],
        ("2-beta/2-beta_001.jpg", "2-beta/again.jpg"): ["2-beta"],
    }
    conflicts = {tuple(group.paths): group.kind for group in report.conflicting_labels}
    assert conflicts[("1-alpha/1-alpha_000.jpg", "2-beta/copy_of_alpha.jpg")] == "exact"
    assert any("conflicting labels" in line for line in report.blocking)
    assert any("1 exact-duplicate group within one class" in line for line in report.warnings)


def test_near_duplicate_in_another_class(report: AuditReport) -> None:
    pair = ["1-alpha/big.jpg", "10-gamma/gamma_recompressed.jpg"]
    near = [(group.paths, group.labels) for group in report.near_duplicates]
    assert near == [(pair, ["1-alpha", "10-gamma"])]
    assert {tuple(g.paths): g.kind for g in report.conflicting_labels}[tuple(pair)] == "near"
    assert len(report.conflicting_labels) == 2


def test_class_problems(report: AuditReport) -> None:
    assert report.empty_classes == ["4-empty"]
    assert report.small_classes == ["3-delta"]
    assert "empty class folders: 4-empty" in report.blocking
    assert "classes below 5 images: 3-delta (2)" in report.blocking
    assert not report.ok


def test_skipped_extensions(report: AuditReport) -> None:
    assert report.skipped_files == ["1-alpha/readme.txt"]
    assert any("1 file skipped" in line for line in report.warnings)


def test_report_is_json_ready(report: AuditReport) -> None:
    data = json.loads(json.dumps(report.to_dict()))
    assert data["ok"] is False
    assert data["num_files"] == report.num_files
    assert "records" not in data and "samples" not in data
    assert data["unreadable"][0]["detail"]


def test_the_audit_modifies_nothing(messy: Path, report: AuditReport) -> None:
    before = {p: p.stat().st_mtime_ns for p in messy.rglob("*")}
    audit_dataset(messy, CONFIG.model_copy(update={"workers": 0}))
    assert {p: p.stat().st_mtime_ns for p in messy.rglob("*")} == before


@dataclass
class _Entry:
    name: str


@dataclass
class _Match:
    entry: _Entry | None
    candidates: list[str] = field(default_factory=list)
    via: str = "none"


class _FakeTaxonomy:
    """The interface of jianmu.taxonomy.Taxonomy that the audit uses."""

    def match(self, folder_name: str) -> _Match:
        known = {"oak": "Quercus robur", "pine": "Pinus sylvestris"}
        name = folder_name.split("-", 1)[-1]
        if name in known:
            return _Match(_Entry(known[name]))
        return _Match(None, ["Quercus robur"] if name.startswith("o") else [])


def test_clean_dataset_passes_and_taxonomy_is_checked(tmp_path: Path) -> None:
    make_image_folder(tmp_path, {"1-oak": 5, "2-pine": 5}, seed=2)
    calls: list[tuple[int, int]] = []
    report = audit_dataset(
        tmp_path, CONFIG, taxonomy=_FakeTaxonomy(), progress=lambda *a: calls.append(a)
    )
    assert report.ok, report.blocking
    assert not report.warnings
    assert not (report.exact_duplicates or report.near_duplicates or report.unreadable)
    assert [c.taxon for c in report.classes] == ["Quercus robur", "Pinus sylvestris"]
    assert calls[-1] == (10, 10) and len(calls) == 10


def test_unmatched_taxonomy_folder_blocks(tmp_path: Path) -> None:
    make_image_folder(tmp_path, {"1-oak": 5, "2-okra": 5, "3-fir": 5}, seed=3)
    report = audit_dataset(tmp_path, CONFIG, taxonomy=_FakeTaxonomy())
    assert [(u.folder, u.candidates) for u in report.unmatched_folders] == [
        ("2-okra", ["Quercus robur"]),
        ("3-fir", []),
    ]
    assert report.blocking == [
        "class folders not in the taxonomy: 2-okra (closest: Quercus robur); 3-fir"
    ]


def test_one_class_is_not_enough(tmp_path: Path) -> None:
    make_image_folder(tmp_path, {"oak": 5}, seed=4)
    (tmp_path / "pine").mkdir()
    report = audit_dataset(tmp_path, CONFIG)
    assert "1 class(es) with images; at least 2 are needed" in report.blocking


def test_missing_root_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(JianmuError, match="data root not found"):
        audit_dataset(tmp_path / "nope", CONFIG)


def test_scan_keeps_order_with_threads(tmp_path: Path) -> None:
    paths = [write_image(tmp_path / f"{i}.png", seed=i, size=(32, 32)) for i in range(12)]
    paths.insert(5, write_zero_byte(tmp_path / "z.png"))
    serial = scan_images(paths, DataConfig(workers=0))
    threaded = scan_images(paths, DataConfig(workers=3))
    assert serial == threaded
    assert [r.path for r in threaded] == paths
    assert threaded[5].phash is None and threaded[5].probe.reason == "zero-byte file"
    assert all(len(r.sha256) == 64 for r in threaded if r.probe.ok)


@pytest.mark.parametrize("distance", [0, 1, 3, 4, 7, 12])
def test_banded_search_finds_the_same_groups_as_brute_force(distance: int) -> None:
    rng = random.Random(distance)
    centres = [rng.getrandbits(64) for _ in range(15)]
    hashes: list[int | None] = []
    for _ in range(250):
        value = rng.choice(centres)
        for _ in range(rng.randrange(8)):
            value ^= 1 << rng.randrange(64)
        hashes.append(value)
    hashes[7] = None

    def groups(edges) -> list[list[int]]:
        union = UnionFind(len(hashes))
        for first, second, _ in edges:
            union.union(first, second)
        return union.groups()

    brute = [
        (i, j, 0)
        for i, j in itertools.combinations(range(len(hashes)), 2)
        if None not in (hashes[i], hashes[j]) and (hashes[i] ^ hashes[j]).bit_count() <= distance
    ]
    edges = find_near_duplicate_edges(hashes, distance)
    assert all((hashes[i] ^ hashes[j]).bit_count() == d <= distance for i, j, d in edges)
    assert groups(edges) == groups(brute)


def test_real_wood_dataset(wood_swfu5: Path) -> None:
    report = audit_dataset(wood_swfu5, DataConfig())
    assert report.num_files == 585
    assert [c.images for c in report.classes] == [101, 116, 109, 124, 135]
    assert report.ok, report.blocking
    assert not report.unreadable and not report.exact_duplicates
    if importlib.util.find_spec("jianmu.taxonomy") is None:
        pytest.skip("jianmu.taxonomy not available")
    from jianmu.config import find_configs_dir
    from jianmu.taxonomy import load_taxonomy

    try:
        wood = find_configs_dir() / "taxonomy" / "wood.yaml"
    except JianmuError:
        pytest.skip("no configs folder")
    if not wood.is_file():
        pytest.skip(f"{wood} not written yet")
    checked = audit_dataset(wood_swfu5, DataConfig(), taxonomy=load_taxonomy(wood))
    assert not checked.unmatched_folders
    assert all(c.taxon for c in checked.classes)
