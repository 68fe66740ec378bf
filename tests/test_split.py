"""Splits: seeded, stratified, grouped by specimen and duplicates; leak checks; manifests."""

from __future__ import annotations

import random
import shutil
from collections import Counter, defaultdict
from pathlib import Path

import pytest
from imagefiles import make_image_folder, write_image, write_near_duplicate, write_zero_byte

from jianmu.config import DataConfig
from jianmu.data.audit import ImageRecord
from jianmu.data.images import ImageProbe
from jianmu.data.samples import Sample, find_samples
from jianmu.data.split import (
    MANIFEST_COLUMNS,
    ManifestRow,
    find_leaks,
    read_manifest,
    split_samples,
    write_manifest,
)
from jianmu.errors import JianmuError

ROOT = Path("/data/wood")
CONFIG = DataConfig(val_fraction=0.15, test_fraction=0.15, near_duplicate_distance=4)
OK = ImageProbe("ok", "", "JPEG", "RGB", 64, 64)


class _Builder:
    """Samples and scan records without files: full control over hashes and specimens."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = random.Random(seed)
        self.samples: list[Sample] = []
        self.records: list[ImageRecord] = []

    def add(
        self,
        label: str,
        specimen: str | None = None,
        sha256: str | None = None,
        phash: int | None = None,
        probe: ImageProbe = OK,
    ) -> int:
        index = len(self.samples)
        path = ROOT / label / f"img{index:04d}.jpg"
        self.samples.append(Sample(path, label, f"{label}/{specimen or path.name}"))
        digest = sha256 or f"{index:064x}"
        value = phash if phash is not None else self.rng.getrandbits(64)
        self.records.append(ImageRecord(path, 100, digest, value, probe))
        return index

    def add_class(self, label: str, images: int, per_specimen: int = 1) -> None:
        for index in range(images):
            self.add(label, specimen=f"s{index // per_specimen}")

    def split(self, seed: int = 0, config: DataConfig = CONFIG):
        return split_samples(self.samples, self.records, config, seed=seed, root=ROOT)


def _split_of(result) -> dict[str, str]:
    return {row.path: row.split for row in result.rows}


def test_same_seed_same_manifest_other_seed_differs(tmp_path: Path) -> None:
    builder = _Builder()
    builder.add_class("oak", 60, per_specimen=3)
    builder.add_class("pine", 40)
    first = write_manifest(tmp_path / "a.csv", builder.split(seed=1).rows)
    again = write_manifest(tmp_path / "b.csv", builder.split(seed=1).rows)
    other = write_manifest(tmp_path / "c.csv", builder.split(seed=2).rows)
    assert first.read_bytes() == again.read_bytes()
    assert first.read_bytes() != other.read_bytes()


def test_fractions_honoured_per_class() -> None:
    builder = _Builder()
    for label, images in [("a", 40), ("b", 60), ("c", 100)]:
        builder.add_class(label, images)
    result = builder.split()
    assert result.leak_free and not result.missing and not result.excluded
    for label, images in [("a", 40), ("b", 60), ("c", 100)]:
        for split, fraction in [("val", 0.15), ("test", 0.15), ("train", 0.7)]:
            assert abs(result.counts[split][label] - fraction * images) <= 1
    assert sum(sum(per_class.values()) for per_class in result.counts.values()) == 200


def test_specimens_never_straddle_splits() -> None:
    builder = _Builder(seed=3)
    for label in ("oak", "pine", "teak"):
        for specimen in range(25):
            for _ in range(1 + specimen % 5):
                builder.add(label, specimen=f"piece{specimen}")
    for seed in range(5):
        result = builder.split(seed)
        splits_of: dict[str, set[str]] = defaultdict(set)
        for row in result.rows:
            splits_of[row.specimen].add(row.split)
        assert all(len(splits) == 1 for splits in splits_of.values())
        assert result.leak_free
        for label in ("oak", "pine", "teak"):
            total = sum(result.counts[split][label] for split in result.counts)
            assert total == 75
            assert 0.07 * total <= result.counts["val"][label] <= 0.25 * total
            assert 0.07 * total <= result.counts["test"][label] <= 0.25 * total


def test_duplicates_stay_in_one_split() -> None:
    builder = _Builder(seed=4)
    builder.add_class("oak", 30)
    near = builder.add("oak", phash=0x0F0F_0F0F_0F0F_0F0F)
    near_copy = builder.add("oak", phash=0x0F0F_0F0F_0F0F_0F0F ^ 0b1011)  # distance 3
    chained = builder.add("oak", phash=0x0F0F_0F0F_0F0F_0F0F ^ 0b1011 ^ (0b11 << 40))  # 2 further
    exact = builder.add("oak", sha256="e" * 64)
    exact_copy = builder.add("oak", sha256="e" * 64)
    for seed in range(10):
        split = [row.split for row in builder.split(seed).rows]
        assert split[near] == split[near_copy] == split[chained]
        assert split[exact] == split[exact_copy]


def test_small_classes_still_reach_val_and_test() -> None:
    builder = _Builder()
    builder.add_class("big", 100)
    builder.add_class("three", 3)
    builder.add_class("two", 10, per_specimen=5)  # two specimens of five images
    builder.add_class("one", 4, per_specimen=4)
    result = builder.split()
    assert [result.counts[split]["three"] for split in ("train", "val", "test")] == [1, 1, 1]
    assert [result.counts[split]["two"] for split in ("train", "val", "test")] == [5, 5, 0]
    assert [result.counts[split]["one"] for split in ("train", "val", "test")] == [4, 0, 0]
    assert result.missing == {"two": ["test"], "one": ["val", "test"]}


def test_zero_fraction_drops_the_split() -> None:
    builder = _Builder()
    builder.add_class("oak", 20)
    builder.add_class("pine", 20)
    result = builder.split(config=DataConfig(val_fraction=0.2, test_fraction=0.0))
    assert set(result.counts) == {"train", "val"}
    assert Counter(row.split for row in result.rows) == {"train": 32, "val": 8}


def test_conflicting_label_is_kept_whole_and_reported() -> None:
    builder = _Builder()
    builder.add_class("oak", 20)
    builder.add_class("pine", 20)
    first = builder.add("oak", sha256="c" * 64)
    second = builder.add("pine", sha256="c" * 64)
    result = builder.split()
    assert len(result.conflicts) == 1
    conflict = result.conflicts[0]
    assert conflict.kind == "exact" and conflict.labels == ["oak", "pine"]
    assert conflict.paths == ["oak/img0040.jpg", "pine/img0041.jpg"]
    assert result.rows[first].split == result.rows[second].split == "train"
    assert result.leak_free
    assert result.to_dict()["conflicts"][0]["labels"] == ["oak", "pine"]


def test_unreadable_files_are_excluded_and_listed() -> None:
    builder = _Builder()
    builder.add_class("oak", 10)
    builder.add_class("pine", 10)
    builder.add("oak", probe=ImageProbe("error", "truncated image"), phash=None)
    result = builder.split()
    assert len(result.rows) == 20
    assert [(issue.path, issue.detail) for issue in result.excluded] == [
        ("oak/img0020.jpg", "truncated image")
    ]


def test_leak_check_finds_every_kind() -> None:
    def row(path: str, split: str, specimen: str, sha: str) -> ManifestRow:
        return ManifestRow(path, "oak", specimen, split, sha)

    rows = [
        row("a.jpg", "train", "oak/1", "a" * 64),
        row("b.jpg", "test", "oak/2", "a" * 64),  # same bytes as a.jpg
        row("c.jpg", "train", "oak/3", "c" * 64),
        row("d.jpg", "val", "oak/3", "d" * 64),  # same specimen as c.jpg
        row("e.jpg", "train", "oak/5", "e" * 64),
        row("f.jpg", "val", "oak/6", "f" * 64),  # close perceptual hash to e.jpg
    ]
    phashes = {
        "a.jpg": 0xFFFF_0000_FFFF_0000,
        "b.jpg": 0xFFFF_0000_FFFF_0000,
        "c.jpg": 2**40 - 1,
        "d.jpg": 2**50 - 2**20,
    }
    phashes |= {"e.jpg": 0b1111, "f.jpg": 0b0111}
    leaks = find_leaks(rows, phashes, distance=4)
    assert [(leak.kind, leak.paths, leak.splits) for leak in leaks] == [
        ("sha256", ["a.jpg", "b.jpg"], ["train", "test"]),
        ("specimen", ["c.jpg", "d.jpg"], ["train", "val"]),
        ("near-duplicate", ["e.jpg", "f.jpg"], ["train", "val"]),
    ]
    assert find_leaks(rows[:1] + rows[2:3] + rows[4:5]) == []


def test_manifest_round_trip(tmp_path: Path) -> None:
    builder = _Builder()
    builder.add_class("1-oak", 10)
    builder.add_class("2-pine", 10)
    builder.samples[3] = Sample(ROOT / "1-oak" / "S 1" / "a,b.jpg", "1-oak", "1-oak/S 1")
    builder.records[3] = ImageRecord(builder.samples[3].path, 1, "f" * 64, 5, OK)
    rows = builder.split().rows
    path = write_manifest(tmp_path / "out" / "manifest.csv", rows)
    header = path.read_text(encoding="utf-8").splitlines()[0]
    assert header == "path,class,specimen,split,sha256"
    assert tuple(header.split(",")) == MANIFEST_COLUMNS
    assert read_manifest(path) == rows
    assert rows[3].path == "1-oak/S 1/a,b.jpg"


def test_read_manifest_errors(tmp_path: Path) -> None:
    with pytest.raises(JianmuError, match="manifest not found"):
        read_manifest(tmp_path / "missing.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("file,label\na.jpg,oak\n", encoding="utf-8")
    with pytest.raises(JianmuError, match="expected columns path, class, specimen, split, sha256"):
        read_manifest(bad)
    bad.write_text("path,class,specimen,split,sha256\na.jpg,oak,oak/a,holdout,x\n")
    with pytest.raises(JianmuError, match="unknown split 'holdout'"):
        read_manifest(bad)
    good = write_manifest(tmp_path / "m.csv", [ManifestRow("oak/a.jpg", "oak", "oak/a", "val", "")])
    with pytest.raises(JianmuError, match="not found under .*: oak/a.jpg"):
        read_manifest(good, root=tmp_path)
    write_image(tmp_path / "oak" / "a.jpg")
    assert read_manifest(good, root=tmp_path)[0].to_sample(tmp_path).path.is_file()


def test_split_real_files_without_records(tmp_path: Path) -> None:
    make_image_folder(tmp_path, {"1-oak": 12, "2-pine": 12}, seed=5)
    for number, specimen in enumerate(("S1", "S2", "S3")):
        for view in range(3):
            write_image(
                tmp_path / "3-teak" / specimen / f"{view}.png", seed=900 + 10 * number + view
            )
    source = write_image(tmp_path / "1-oak" / "big.jpg", seed=77, size=(64, 64))
    write_near_duplicate(source, tmp_path / "1-oak" / "big_copy.jpg")
    shutil.copy(tmp_path / "2-pine" / "2-pine_000.jpg", tmp_path / "2-pine" / "dup.jpg")
    write_zero_byte(tmp_path / "2-pine" / "broken.jpg")
    samples = find_samples(tmp_path, CONFIG.extensions)
    result = split_samples(samples, None, CONFIG.model_copy(update={"workers": 2}), seed=3)
    split = _split_of(result)
    assert result.root == tmp_path.absolute()
    assert split["1-oak/big.jpg"] == split["1-oak/big_copy.jpg"]
    assert split["2-pine/2-pine_000.jpg"] == split["2-pine/dup.jpg"]
    assert len({split[f"3-teak/{s}/{v}.png"] for s in ("S1", "S2", "S3") for v in range(3)}) == 3
    assert [issue.path for issue in result.excluded] == ["2-pine/broken.jpg"]
    assert result.leak_free and not result.missing
    assert len(result.rows) == 14 + 13 + 9


def test_real_wood_split(wood_swfu5: Path) -> None:
    samples = find_samples(wood_swfu5, CONFIG.extensions)
    result = split_samples(samples, None, CONFIG, seed=0)
    assert len(result.rows) == 585 and result.leak_free and not result.missing
    assert all(not Path(row.path).is_absolute() for row in result.rows)
