"""Train/val/test splits that never leak a specimen or a duplicate photo across splits.

Samples are joined into groups (union-find) when they share a specimen, the same bytes (sha256)
or a close perceptual hash; a group always lands in one split. Groups are then assigned per class,
largest first in a seeded order, to the split furthest below its target share, so every class is
stratified.

The manifest is a CSV with the columns ``path, class, specimen, split, sha256``; ``path`` is
relative to the data root with POSIX separators, so a manifest stays valid when the data moves.
"""

from __future__ import annotations

import csv
import os
import random
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from jianmu.config import DataConfig
from jianmu.data.audit import (
    DuplicateGroup,
    FileIssue,
    ImageRecord,
    UnionFind,
    find_duplicate_groups,
    find_near_duplicate_edges,
    scan_images,
)
from jianmu.data.samples import Sample, class_index, natural_key, relative_posix
from jianmu.errors import JianmuError

SPLITS = ("train", "val", "test")
MANIFEST_COLUMNS = ("path", "class", "specimen", "split", "sha256")


@dataclass(frozen=True)
class ManifestRow:
    """One manifest line; ``path`` is relative to the data root (POSIX), ``label`` is the class."""

    path: str
    label: str
    specimen: str
    split: str
    sha256: str

    def to_sample(self, root: str | Path) -> Sample:
        return Sample(path=Path(root) / self.path, label=self.label, specimen=self.specimen)


@dataclass(frozen=True)
class Leak:
    """Files that tie two splits together: same bytes, close perceptual hash or same specimen."""

    kind: Literal["sha256", "near-duplicate", "specimen"]
    key: str
    paths: list[str]
    splits: list[str]


@dataclass
class SplitResult:
    """Outcome of :func:`split_samples`; ``rows`` go to the manifest, the rest is for the report."""

    root: Path
    seed: int
    rows: list[ManifestRow]
    counts: dict[str, dict[str, int]]
    """Images per split, then per class."""
    excluded: list[FileIssue] = field(default_factory=list)
    """Unreadable files, left out of the manifest."""
    leaks: list[Leak] = field(default_factory=list)
    conflicts: list[DuplicateGroup] = field(default_factory=list)
    """Duplicate groups spanning several classes: kept whole in train (conflicting labels)."""
    missing: dict[str, list[str]] = field(default_factory=dict)
    """Classes that got no image in some split, and which splits."""

    @property
    def leak_free(self) -> bool:
        return not self.leaks

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary without the per-file rows."""
        data = {key: value for key, value in asdict(self).items() if key not in ("rows", "root")}
        return {
            "root": str(self.root),
            "images": len(self.rows),
            "leak_free": self.leak_free,
            **data,
        }


def split_samples(
    samples: Sequence[Sample],
    records: Sequence[ImageRecord] | None,
    config: DataConfig,
    seed: int,
    root: str | Path | None = None,
    fractions: Mapping[str, float] | None = None,
) -> SplitResult:
    """Assign every readable sample to train/val/test, grouped, stratified and seeded.

    Args:
        samples: from :func:`jianmu.data.samples.find_samples`.
        records: scan records of those samples (any order; e.g. ``AuditReport.records``); files
            without a record are scanned here with ``config.workers`` threads.
        config: ``val_fraction``, ``test_fraction`` (0 drops that split) and
            ``near_duplicate_distance``.
        seed: the same seed gives the same manifest.
        root: data root the manifest paths are relative to; default ``config.root``, else the
            folder holding the class folders.
        fractions: other split names and shares instead of the config's train/val/test (e.g.
            ``{"fold1": 0.2, ..., "fold5": 0.2}`` for cross-validation folds).
    """
    data_root = Path(root or config.root or _infer_root(samples)).expanduser().absolute()
    records = _records_for(samples, records, config)
    if fractions is None:
        fractions = {"train": 1.0 - config.val_fraction - config.test_fraction}
        fractions |= {"val": config.val_fraction, "test": config.test_fraction}
    active = [name for name in fractions if fractions[name] > 0]

    kept = [(s, r) for s, r in zip(samples, records, strict=True) if r.ok]
    excluded = [
        FileIssue(relative_posix(s.path, data_root), s.label, r.probe.reason)
        for s, r in zip(samples, records, strict=True)
        if not r.ok
    ]
    groups = _group(kept, config.near_duplicate_distance)
    assignment: dict[int, str] = {}
    conflicts: list[DuplicateGroup] = []
    by_class: dict[str, list[list[int]]] = defaultdict(list)
    for group in groups:
        labels = {kept[i][0].label for i in group}
        if len(labels) > 1:
            conflicts.append(_conflict(group, kept, data_root))
            assignment.update((i, active[0]) for i in group)
        else:
            by_class[labels.pop()].append(group)

    classes = sorted({sample.label for sample, _ in kept}, key=natural_key)
    totals = Counter(sample.label for sample, _ in kept)
    preset: dict[str, Counter[str]] = defaultdict(Counter)
    for index, name in assignment.items():
        preset[kept[index][0].label][name] += 1
    for label in classes:
        # one generator per class: adding a class does not reshuffle the others
        rng = random.Random(f"{seed}:{label}")
        chosen = _assign(by_class[label], totals[label], fractions, active, preset[label], rng)
        assignment.update(chosen)

    rows = [
        ManifestRow(
            relative_posix(sample.path, data_root),
            sample.label,
            sample.specimen,
            assignment[i],
            record.sha256,
        )
        for i, (sample, record) in enumerate(kept)
    ]
    counts = {name: dict.fromkeys(classes, 0) for name in active}
    for row in rows:
        counts[row.split][row.label] += 1
    missing = {
        label: [name for name in active if counts[name][label] == 0]
        for label in classes
        if any(counts[name][label] == 0 for name in active)
    }
    phashes = {row.path: record.phash for row, (_, record) in zip(rows, kept, strict=True)}
    leaks = find_leaks(rows, phashes, config.near_duplicate_distance)
    return SplitResult(data_root, seed, rows, counts, excluded, leaks, conflicts, missing)


def _assign(
    groups: list[list[int]],
    total: int,
    fractions: Mapping[str, float],
    active: list[str],
    preset: Counter[str],
    rng: random.Random,
) -> dict[int, str]:
    """Greedy: largest group first (seeded order among equals) to the split most below target."""
    order = list(groups)
    rng.shuffle(order)
    order.sort(key=len, reverse=True)
    counts = Counter({name: preset.get(name, 0) for name in active})
    placed: dict[str, list[list[int]]] = {name: [] for name in active}
    for group in order:
        name = max(active, key=lambda s: (fractions[s] * total - counts[s], -active.index(s)))
        placed[name].append(group)
        counts[name] += len(group)
    # With k groups, the first k splits (train, val, test) each get one: the smallest group of
    # the split holding the most groups moves there.
    for name in active[: len(groups)]:
        if placed[name] or counts[name]:
            continue
        donor = max(active, key=lambda s: (len(placed[s]), -active.index(s)))
        if len(placed[donor]) < 2:
            continue
        smallest = min(range(len(placed[donor])), key=lambda k: len(placed[donor][k]))
        group = placed[donor].pop(smallest)
        placed[name].append(group)
        counts[donor] -= len(group)
        counts[name] += len(group)
    return {index: name for name in active for group in placed[name] for index in group}


def _group(kept: list[tuple[Sample, ImageRecord]], distance: int) -> list[list[int]]:
    union = UnionFind(len(kept))
    first_of_specimen: dict[str, int] = {}
    for index, (sample, _) in enumerate(kept):
        union.union(first_of_specimen.setdefault(sample.specimen, index), index)
    for group in find_duplicate_groups([record for _, record in kept], distance):
        for index in group[1:]:
            union.union(group[0], index)
    return union.groups()


def find_leaks(
    rows: Sequence[ManifestRow],
    phashes: Mapping[str, int | None] | None = None,
    distance: int = 4,
) -> list[Leak]:
    """Files that tie two splits together in ``rows``: same sha256, same specimen or (with
    ``phashes``, keyed by row path) perceptual hashes within ``distance``."""
    leaks: list[Leak] = []
    for kind, key_of in (("sha256", lambda r: r.sha256), ("specimen", lambda r: r.specimen)):
        members: dict[str, list[ManifestRow]] = defaultdict(list)
        for row in rows:
            if key_of(row):
                members[key_of(row)].append(row)
        for key, group in members.items():
            splits = _splits_of(group)
            if len(splits) > 1:
                leaks.append(Leak(kind, key, [row.path for row in group], splits))
    if phashes:
        union = UnionFind(len(rows))
        hashes = [phashes.get(row.path) for row in rows]
        for first, second, _ in find_near_duplicate_edges(hashes, distance):
            union.union(first, second)
        for group in union.groups():
            members_rows = [rows[i] for i in group]
            splits = _splits_of(members_rows)
            # a leak of identical bytes is already reported above
            if len(splits) > 1 and len({row.sha256 for row in members_rows}) > 1:
                paths = [row.path for row in members_rows]
                leaks.append(Leak("near-duplicate", "", paths, splits))
    return leaks


def write_manifest(path: str | Path, rows: Iterable[ManifestRow]) -> Path:
    """Write ``rows`` as CSV with the columns ``path, class, specimen, split, sha256``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream)
        writer.writerow(MANIFEST_COLUMNS)
        for row in rows:
            writer.writerow([row.path, row.label, row.specimen, row.split, row.sha256])
    return path


def read_manifest(path: str | Path, root: str | Path | None = None) -> list[ManifestRow]:
    """Read a manifest written by :func:`write_manifest`.

    Args:
        path: the CSV file.
        root: when given, every listed file must exist under this data root.

    Raises:
        JianmuError: missing file, wrong columns, unknown split or (with ``root``) missing images.
    """
    path = Path(path)
    if not path.is_file():
        raise JianmuError(f"manifest not found: {path}")
    with open(path, newline="", encoding="utf-8") as stream:
        reader = csv.reader(stream)
        header = next(reader, None)
        if header is None or tuple(column.strip() for column in header) != MANIFEST_COLUMNS:
            raise JianmuError(
                f"{path}: expected columns {', '.join(MANIFEST_COLUMNS)}; got {header or 'nothing'}"
            )
        rows = []
        for line_number, values in enumerate(reader, start=2):
            if not values:
                continue
            if len(values) != len(MANIFEST_COLUMNS):
                raise JianmuError(f"{path}:{line_number}: expected 5 values, got {len(values)}")
            row = ManifestRow(*values)
            if row.split not in SPLITS:
                raise JianmuError(f"{path}:{line_number}: unknown split {row.split!r}")
            rows.append(row)
    if root is not None:
        missing = [row.path for row in rows if not (Path(root) / row.path).is_file()]
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise JianmuError(f"{path}: listed image not found under {root}: {missing[0]}{more}")
    return rows


def manifest_items(
    rows: Iterable[ManifestRow], root: str | Path, classes: list[str]
) -> dict[str, list[tuple[Path, int]]]:
    """``(path, class index)`` items of each split, for the rows of ``classes`` (others left
    out)."""
    index = class_index(classes)
    items: dict[str, list[tuple[Path, int]]] = {split: [] for split in SPLITS}
    for row in rows:
        if row.label in index:
            items[row.split].append((Path(root) / row.path, index[row.label]))
    return items


def _records_for(
    samples: Sequence[Sample], records: Sequence[ImageRecord] | None, config: DataConfig
) -> list[ImageRecord]:
    known = {record.path: record for record in records or ()}
    unknown = [sample.path for sample in samples if sample.path not in known]
    known |= {record.path: record for record in scan_images(unknown, config)}
    return [known[sample.path] for sample in samples]


def _infer_root(samples: Sequence[Sample]) -> Path:
    if not samples:
        raise JianmuError("nothing to split: no samples")
    if len({sample.label for sample in samples}) > 1:
        return Path(os.path.commonpath([sample.path for sample in samples]))
    path = samples[0].path
    for parent in path.parents:
        if parent.name == samples[0].label:
            return parent.parent
    return path.parent.parent


def _conflict(
    group: list[int], kept: list[tuple[Sample, ImageRecord]], root: Path
) -> DuplicateGroup:
    kind = "exact" if len({kept[i][1].sha256 for i in group}) == 1 else "near"
    labels = sorted({kept[i][0].label for i in group}, key=natural_key)
    return DuplicateGroup(kind, [relative_posix(kept[i][0].path, root) for i in group], labels)


def _splits_of(rows: Iterable[ManifestRow]) -> list[str]:
    present = {row.split for row in rows}
    return [name for name in SPLITS if name in present]
