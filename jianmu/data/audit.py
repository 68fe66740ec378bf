"""Dataset audit: what is wrong with a folder of images before anything is trained on it.

The scan streams files: each is hashed (sha256, read in chunks), probed and decoded as a small draft
for its perceptual hash, and only a small :class:`ImageRecord` is kept, so 100k files fit in memory.
Near-duplicates are found by pigeonhole banding of the 64-bit perceptual hash: two hashes within
Hamming distance d agree exactly on at least one of d + 1 bands, so only hashes sharing a band are
compared. Nothing on disk is modified.
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

import imagehash
import numpy as np

from jianmu.config import DataConfig
from jianmu.data.images import (
    COMMON_MODES,
    READ_TIMEOUT,
    ImageDecodeError,
    ImageProbe,
    probe_and_thumbnail,
    read_image_bytes,
)
from jianmu.data.samples import Sample, find_dataset, natural_key, relative_posix
from jianmu.data.synth import is_synthetic_set

Progress = Callable[[int, int], None]
_T = TypeVar("_T")
_R = TypeVar("_R")
_PAIRS_PER_CHUNK = 1 << 22  # bounds the memory of one vectorised pair comparison (~100 MB)
_BITS_IN_BYTE = np.array([bin(value).count("1") for value in range(256)], dtype=np.uint8)


class _NameMatch(Protocol):
    entry: Any
    via: str
    candidates: list[str]


class TaxonomyLike(Protocol):
    """What the audit needs from ``jianmu.taxonomy``: ``match(folder_name) -> NameMatch``."""

    def match(self, name: str) -> _NameMatch: ...


@dataclass(frozen=True, slots=True)
class ImageRecord:
    """The per-file facts kept by a scan: hashes and a probe, never pixels."""

    path: Path
    size_bytes: int
    sha256: str
    phash: int | None
    probe: ImageProbe

    @property
    def ok(self) -> bool:
        return self.probe.ok


@dataclass(frozen=True)
class ClassSummary:
    name: str
    images: int
    specimens: int
    unreadable: int = 0
    taxon: str | None = None


@dataclass(frozen=True)
class FileIssue:
    """One file and what is wrong with it; ``path`` is relative to the data root (POSIX)."""

    path: str
    label: str
    detail: str


@dataclass(frozen=True)
class DuplicateGroup:
    """Files with the same content (``exact``) or a close perceptual hash (``near``)."""

    kind: Literal["exact", "near"]
    paths: list[str]
    labels: list[str]


@dataclass(frozen=True)
class UnmatchedFolder:
    folder: str
    candidates: list[str]
    """The closest names, or (``ambiguous``) the species a trade or Chinese name could be."""
    ambiguous: bool = False

    def describe(self) -> str:
        if not self.candidates:
            return self.folder
        kind = "ambiguous: could be" if self.ambiguous else "closest:"
        return f"{self.folder} ({kind} {', '.join(self.candidates)})"


@dataclass
class AuditReport:
    """Findings of :func:`audit_dataset`; paths relative to ``root``; ``blocking`` stops work."""

    root: Path
    classes: list[ClassSummary]
    num_files: int
    unreadable: list[FileIssue] = field(default_factory=list)
    exact_duplicates: list[DuplicateGroup] = field(default_factory=list)
    near_duplicates: list[DuplicateGroup] = field(default_factory=list)
    conflicting_labels: list[DuplicateGroup] = field(default_factory=list)
    small_images: list[FileIssue] = field(default_factory=list)
    odd_modes: list[FileIssue] = field(default_factory=list)
    exif_rotated: list[FileIssue] = field(default_factory=list)
    animated: list[FileIssue] = field(default_factory=list)
    """Animated files (GIF, WebP, APNG): their first frame is used."""
    broken_links: list[str] = field(default_factory=list)
    """Symbolic links with a missing target or a loop: never followed."""
    small_classes: list[str] = field(default_factory=list)
    empty_classes: list[str] = field(default_factory=list)
    skipped_files: list[str] = field(default_factory=list)
    unmatched_folders: list[UnmatchedFolder] = field(default_factory=list)
    blocking: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    synthetic: bool = False
    """The folder is a procedural set from ``jianmu data synth``, not real photos."""
    seconds: float = 0.0
    samples: list[Sample] = field(default_factory=list, repr=False)
    records: list[ImageRecord] = field(default_factory=list, repr=False)

    @property
    def ok(self) -> bool:
        return not self.blocking

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (without the per-file ``samples`` and ``records``)."""
        data = {
            key: value
            for key, value in asdict(self).items()
            if key not in ("samples", "records", "root")
        }
        return {"root": str(self.root), "ok": self.ok, **data}


def scan_images(
    paths: Sequence[str | Path],
    config: DataConfig | None = None,
    progress: Progress | None = None,
) -> list[ImageRecord]:
    """Hash and probe every file in ``paths`` (in that order) with ``data.workers`` threads, each
    read bounded by ``data.read_timeout``.

    Decoding (Pillow) and hashing (hashlib) release the GIL, so threads use all cores without
    pickling; at most a few files per worker are in flight at once.
    """
    config = config or DataConfig()
    records: list[ImageRecord] = []
    scan = partial(scan_image, read_timeout=config.read_timeout)
    for record in _map_bounded(scan, [Path(path) for path in paths], config.workers):
        records.append(record)
        if progress is not None:
            progress(len(records), len(paths))
    return records


def scan_image(path: Path, read_timeout: float | None = READ_TIMEOUT) -> ImageRecord:
    """sha256 of the bytes, a probe, and the 64-bit perceptual hash of a small draft decode; the
    file is read once, within ``read_timeout`` seconds."""
    try:
        data = read_image_bytes(path, read_timeout)
    except ImageDecodeError as error:
        return ImageRecord(path, 0, "", None, ImageProbe(status="error", reason=error.reason))
    probe, thumbnail = probe_and_thumbnail(path, data=data)
    phash = int(str(imagehash.phash(thumbnail)), 16) if thumbnail is not None else None
    return ImageRecord(path, len(data), hashlib.sha256(data).hexdigest(), phash, probe)


def find_near_duplicate_edges(
    hashes: Sequence[int | None], distance: int
) -> list[tuple[int, int, int]]:
    """Edges ``(i, j, hamming)`` joining every pair of hashes within ``distance`` into components.

    Each edge is a real pair within ``distance``, but not every such pair gets an edge: images
    sharing one hash are joined in a star and two close hashes by one edge between their first
    images. Only hashes that agree on one of ``distance + 1`` bands are compared, so the cost is
    near linear for small distances (100k hashes at distance 4: a few seconds).
    """
    by_hash: dict[int, list[int]] = defaultdict(list)
    for index, value in enumerate(hashes):
        if value is not None:
            by_hash[value].append(index)
    edges = [(members[0], other, 0) for members in by_hash.values() for other in members[1:]]
    unique = list(by_hash)
    if distance == 0 or len(unique) < 2:
        return edges
    values = np.array(unique, dtype=np.uint64)
    bands = _bands(distance)
    for band, (start, mask) in enumerate(bands):
        keys = (values >> np.uint64(start)) & np.uint64(mask)
        order = np.argsort(keys, kind="stable")
        cuts = np.flatnonzero(np.diff(keys[order])) + 1
        for bucket in np.split(order, cuts):
            if len(bucket) < 2:
                continue
            for first, second, hamming in _close_pairs(unique, values, bucket, distance):
                difference = unique[first] ^ unique[second]
                # a pair agreeing on several bands is kept only in the first of them
                if any(
                    (difference >> other) & other_mask == 0 for other, other_mask in bands[:band]
                ):
                    continue
                edges.append((by_hash[unique[first]][0], by_hash[unique[second]][0], hamming))
    return edges


def _bands(distance: int) -> list[tuple[int, int]]:
    """``(shift, mask)`` of ``distance + 1`` contiguous bands covering the 64 bits."""
    count = min(distance + 1, 64)
    bounds = [round(band * 64 / count) for band in range(count + 1)]
    return [
        (start, (1 << (stop - start)) - 1) for start, stop in zip(bounds, bounds[1:], strict=False)
    ]


def _close_pairs(
    unique: list[int], values: np.ndarray, bucket: np.ndarray, distance: int
) -> Iterator[tuple[int, int, int]]:
    """Pairs ``(a, b, hamming)``, a < b by position in ``bucket``, within ``distance``."""
    if len(bucket) <= 16:
        members = bucket.tolist()
        for offset, first in enumerate(members):
            for second in members[offset + 1 :]:
                hamming = (unique[first] ^ unique[second]).bit_count()
                if hamming <= distance:
                    yield first, second, hamming
        return
    columns = values[bucket]
    rows_per_chunk = max(1, _PAIRS_PER_CHUNK // len(bucket))
    for row_start in range(0, len(bucket), rows_per_chunk):
        rows = columns[row_start : row_start + rows_per_chunk]
        counts = _popcount(rows[:, None] ^ columns[None, :])
        row_index = np.arange(row_start, row_start + len(rows))[:, None]
        close = (counts <= distance) & (np.arange(len(bucket))[None, :] > row_index)
        for row, column in zip(*np.nonzero(close), strict=True):
            yield int(bucket[row_start + row]), int(bucket[column]), int(counts[row, column])


def _popcount(array: np.ndarray) -> np.ndarray:
    if hasattr(np, "bitwise_count"):  # numpy >= 2.0
        return np.bitwise_count(array)
    as_bytes = np.ascontiguousarray(array).view(np.uint8).reshape(*array.shape, 8)
    return _BITS_IN_BYTE[as_bytes].sum(axis=-1)


def find_duplicate_groups(records: Sequence[ImageRecord], distance: int) -> list[list[int]]:
    """Indices of readable records joined by equal sha256 or phash distance <= ``distance``.

    Groups have at least two members; members and groups are in record order.
    """
    union = UnionFind(len(records))
    first_with_digest: dict[str, int] = {}
    for index, record in enumerate(records):
        if record.ok and record.sha256:
            union.union(first_with_digest.setdefault(record.sha256, index), index)
    hashes = [record.phash if record.ok else None for record in records]
    for first, second, _ in find_near_duplicate_edges(hashes, distance):
        union.union(first, second)
    return [group for group in union.groups() if len(group) > 1]


class UnionFind:
    """Disjoint sets over ``0..n-1`` (path halving, union by size)."""

    def __init__(self, size: int) -> None:
        self.parent = list(range(size))
        self.size = [1] * size

    def find(self, item: int) -> int:
        parent = self.parent
        while parent[item] != item:
            parent[item] = parent[parent[item]]
            item = parent[item]
        return item

    def union(self, first: int, second: int) -> None:
        first, second = self.find(first), self.find(second)
        if first == second:
            return
        if self.size[first] < self.size[second]:
            first, second = second, first
        self.parent[second] = first
        self.size[first] += self.size[second]

    def groups(self) -> list[list[int]]:
        """All sets, each sorted, ordered by their smallest member."""
        members: dict[int, list[int]] = {}
        for item in range(len(self.parent)):
            members.setdefault(self.find(item), []).append(item)
        return list(members.values())


def audit_dataset(
    root: str | Path,
    config: DataConfig,
    taxonomy: TaxonomyLike | None = None,
    progress: Progress | None = None,
) -> AuditReport:
    """Scan ``root`` (``ROOT/<class>/...``) and report every problem found; modifies nothing.

    Args:
        root: the data root.
        config: extensions, specimen pattern, thresholds and workers.
        taxonomy: when given, every class folder must match an entry (``taxonomy.match``).
        progress: called as ``progress(done, total)`` after each file.

    Raises:
        JianmuError: the root is missing, not a folder or has no class folders.
    """
    started = time.perf_counter()
    files = find_dataset(root, config.extensions, config.specimen_pattern)
    paths = [sample.path for sample in files.samples]
    records = scan_images(paths, config, progress)
    report = AuditReport(
        root=files.root,
        classes=[],
        num_files=len(files.samples),
        skipped_files=[relative_posix(path, files.root) for path in files.skipped],
        broken_links=[relative_posix(path, files.root) for path in files.broken_links],
        samples=files.samples,
        records=records,
        synthetic=is_synthetic_set(files.root),
    )
    _check_files(report, config)
    _check_duplicates(report, config.near_duplicate_distance)
    _check_classes(report, files.classes, config, taxonomy)
    _summarize(report, config)
    report.seconds = time.perf_counter() - started
    return report


def _check_files(report: AuditReport, config: DataConfig) -> None:
    for sample, record in zip(report.samples, report.records, strict=True):
        path = relative_posix(sample.path, report.root)
        probe = record.probe
        if not probe.ok:
            report.unreadable.append(FileIssue(path, sample.label, probe.reason))
            continue
        if probe.too_small(config.min_image_side):
            report.small_images.append(
                FileIssue(path, sample.label, f"{probe.width}x{probe.height}")
            )
        if probe.mode not in COMMON_MODES:
            report.odd_modes.append(FileIssue(path, sample.label, _describe_mode(probe.mode)))
        if probe.exif_rotated:
            report.exif_rotated.append(FileIssue(path, sample.label, "EXIF orientation applied"))
        if probe.frames > 1:
            detail = f"{probe.frames} frames; the first is used"
            report.animated.append(FileIssue(path, sample.label, detail))


def _check_duplicates(report: AuditReport, distance: int) -> None:
    for group in find_duplicate_groups(report.records, distance):
        paths = [relative_posix(report.samples[index].path, report.root) for index in group]
        labels = sorted({report.samples[index].label for index in group}, key=natural_key)
        digests = Counter(report.records[index].sha256 for index in group)
        if len(digests) == 1:
            duplicate = DuplicateGroup("exact", paths, labels)
        else:
            duplicate = DuplicateGroup("near", paths, labels)
            report.near_duplicates.append(duplicate)
        if len(labels) > 1:
            report.conflicting_labels.append(duplicate)
        # exact copies inside a mixed group are listed too: they are the cheapest to delete
        for digest, count in digests.items():
            if count > 1:
                members = [i for i in group if report.records[i].sha256 == digest]
                report.exact_duplicates.append(
                    DuplicateGroup(
                        "exact",
                        [relative_posix(report.samples[i].path, report.root) for i in members],
                        sorted({report.samples[i].label for i in members}, key=natural_key),
                    )
                )


def _check_classes(
    report: AuditReport,
    classes: list[str],
    config: DataConfig,
    taxonomy: TaxonomyLike | None,
) -> None:
    images: Counter[str] = Counter()
    unreadable: Counter[str] = Counter()
    specimens: dict[str, set[str]] = defaultdict(set)
    for sample, record in zip(report.samples, report.records, strict=True):
        if record.ok:
            images[sample.label] += 1
            specimens[sample.label].add(sample.specimen)
        else:
            unreadable[sample.label] += 1
    for name in classes:
        taxon = None
        if taxonomy is not None:
            match = taxonomy.match(name)
            if match.entry is None:
                ambiguous = match.via == "ambiguous"
                unmatched = UnmatchedFolder(name, list(match.candidates), ambiguous)
                report.unmatched_folders.append(unmatched)
            else:
                taxon = match.entry.name
        count = images[name]
        summary = ClassSummary(name, count, len(specimens[name]), unreadable[name], taxon)
        report.classes.append(summary)
        if count == 0 and unreadable[name] == 0:
            report.empty_classes.append(name)
        elif count < config.min_images_per_class:
            report.small_classes.append(name)


def _summarize(report: AuditReport, config: DataConfig) -> None:
    blocking, warnings = report.blocking, report.warnings
    if report.unreadable:
        reasons = Counter(issue.detail for issue in report.unreadable)
        detail = ", ".join(f"{reason}: {count}" for reason, count in reasons.most_common())
        blocking.append(f"{_count(report.unreadable, 'unreadable file')} ({detail})")
    if report.conflicting_labels:
        blocking.append(
            f"{_count(report.conflicting_labels, 'duplicate group')} span several classes "
            "(conflicting labels)"
        )
    if report.empty_classes:
        blocking.append(f"empty class folders: {', '.join(report.empty_classes)}")
    with_images = [summary for summary in report.classes if summary.images > 0]
    if len(with_images) < 2:
        blocking.append(f"{len(with_images)} class(es) with images; at least 2 are needed")
    if report.small_classes:
        sizes = {summary.name: summary.images for summary in report.classes}
        listed = ", ".join(f"{name} ({sizes[name]})" for name in report.small_classes)
        blocking.append(f"classes below {config.min_images_per_class} images: {listed}")
    if report.unmatched_folders:
        listed = "; ".join(item.describe() for item in report.unmatched_folders)
        blocking.append(f"class folders not in the taxonomy: {listed}")
    within = [group for group in report.exact_duplicates if len(group.labels) == 1]
    if within:
        warnings.append(f"{_count(within, 'exact-duplicate group')} within one class")
    near_within = [group for group in report.near_duplicates if len(group.labels) == 1]
    if near_within:
        warnings.append(f"{_count(near_within, 'near-duplicate group')} within one class")
    if report.small_images:
        warnings.append(
            f"{_count(report.small_images, 'image')} smaller than {config.min_image_side} px"
        )
    if report.odd_modes:
        modes = Counter(issue.detail for issue in report.odd_modes)
        detail = ", ".join(f"{mode}: {count}" for mode, count in modes.most_common())
        warnings.append(f"{_count(report.odd_modes, 'image')} converted to RGB ({detail})")
    if report.exif_rotated:
        warnings.append(f"{_count(report.exif_rotated, 'image')} rotated by EXIF orientation")
    if report.animated:
        warnings.append(f"{_count(report.animated, 'animated image')} reduced to the first frame")
    if report.skipped_files:
        warnings.append(
            f"{_count(report.skipped_files, 'file')} skipped "
            "(extension not listed, or outside a class folder)"
        )
    if report.broken_links:
        warnings.append(
            f"{_count(report.broken_links, 'symbolic link')} leading nowhere (missing target or "
            "a loop), not followed"
        )


def _describe_mode(mode: str) -> str:
    names = {
        "P": "palette",
        "PA": "palette + alpha",
        "1": "1-bit",
        "CMYK": "CMYK",
        "RGBA": "RGBA (alpha)",
        "LA": "grayscale + alpha",
        "I": "32-bit integer",
        "F": "32-bit float",
    }
    if mode.startswith("I;16"):
        return f"16-bit ({mode})"
    return names.get(mode, mode)


def _count(items: Sequence[Any], noun: str) -> str:
    return f"{len(items)} {noun}{'' if len(items) == 1 else 's'}"


def _map_bounded(function: Callable[[_T], _R], items: Iterable[_T], workers: int) -> Iterator[_R]:
    """``map`` over a thread pool, in order, with at most ``4 * workers`` calls in flight."""
    if workers <= 1:
        yield from map(function, items)
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="jianmu-scan") as pool:
        pending: deque = deque()
        for item in items:
            pending.append(pool.submit(function, item))
            if len(pending) >= 4 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
