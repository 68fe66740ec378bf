"""``jianmu data import``: photos an expert has named (a reviewed CSV) into a data set's class
folders, copied, never moved and never over anything, with a provenance line per photo.

The reviewed CSV is the one ``jianmu review`` writes (and its page saves): a row per photo with
its ``path``, ``specimen``, and the expert's ``reviewed_taxon``, ``reviewer`` and ``note``. Its
columns are named here (:data:`REVIEW_COLUMNS`), the one module that reads it. Rows left blank are
skipped. The unit of import is the specimen (a photo of no specimen is its own): its
photos go together into ``ROOT/<class folder>/<specimen>/``, or the specimen is refused with one
reason, and nothing of it is copied:

- its photos carry different names, or only some are named, or a named photo has no reviewer;
- the name matches no species of the taxonomy (the closest names are given) or several;
- a photo cannot be read, or is already in the data set: the same bytes (SHA-256), or with
  ``review.refuse_near_duplicates`` within ``data.near_duplicate_distance`` of a perceptual hash
  (the audit's hashes, :func:`jianmu.data.audit.scan_images`), or appears twice in the file;
- under the data set's specimen rule (:func:`jianmu.data.samples.specimen_from_name`, with
  ``data.specimen_pattern``) its photos would not form one new specimen.

A photo whose SHA-256 is in the data set's ``IMPORTS.jsonl`` was imported before: skipped and
counted, so that a corrected CSV can be imported again. Names never clash: the class folder is the
existing folder of that species (matched through the taxonomy, synonyms included) or a new
``Genus_species``; a specimen folder or file name already taken gets the next free ``-2``, ``-3``
suffix rather than being refused, because a clash of names is not a clash of content (camera
names such as ``IMG_0001.jpg`` repeat everywhere; content is checked by hash). Every check runs
before the first copy; a copy that fails half-way removes what this import created.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import json
import os
import re
import shutil
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jianmu import __version__
from jianmu.config import Config
from jianmu.data.audit import ImageRecord, find_near_duplicate_edges, scan_images
from jianmu.data.samples import (
    IMPORTS_LOG,
    compile_specimen_pattern,
    find_dataset,
    natural_key,
    relative_posix,
    specimen_from_name,
)
from jianmu.errors import JianmuError
from jianmu.record import file_sha256
from jianmu.taxonomy import Species, Taxonomy, load_taxonomy

"""The provenance log at the data set's root: one JSON line per imported photo."""
REVIEWED_COLUMNS = ("reviewed_taxon", "reviewer", "note")
"""What the expert fills in; empty in the CSV ``jianmu review`` writes."""
SOURCE_COLUMNS = ("predictions", "run", "model", "model_sha256")
"""Where a row comes from: the predictions file, its inspection record's hash, the model."""
REVIEW_COLUMNS = (
    "specimen", "path", "reasons", "answer", "candidates", "margin", "declared", "decision",
    *SOURCE_COLUMNS, *REVIEWED_COLUMNS,
)  # fmt: skip
"""The columns of a review CSV, in order."""
REQUIRED_COLUMNS = ("path", "specimen", "reviewed_taxon", "reviewer")
Progress = Callable[[int, int], None]


@dataclass(frozen=True, eq=False)
class ReviewedRow:
    """One row of a reviewed CSV; ``line`` is its line in the file (the header is line 1)."""

    line: int
    path: Path
    specimen: str | None
    taxon: str
    reviewer: str
    note: str
    source: dict[str, str]


@dataclass(frozen=True)
class ImportedFile:
    source: Path
    destination: Path
    """Relative to the data root."""
    sha256: str
    row: ReviewedRow


@dataclass
class ImportedSpecimen:
    """A specimen (or a photo of no specimen) copied, or to be copied with ``dry_run``."""

    specimen: str | None
    taxon: str
    """The accepted name the reviewed name matched."""
    reviewed_as: str
    class_folder: str
    folder: Path
    """Where its photos go, relative to the data root: the specimen folder or the class folder."""
    files: list[ImportedFile]
    reviewer: str
    new_class: bool = False
    """The data set had no class folder of this species: one was made."""
    notes: list[str] = field(default_factory=list)
    """Names other than asked for, and why (a folder or file name already taken)."""


@dataclass(frozen=True)
class Refusal:
    """A specimen (or photo) not imported, and the one reason why."""

    unit: str
    lines: list[int]
    reason: str

    def describe(self) -> str:
        where = ", ".join(str(line) for line in self.lines)
        return f"{self.unit} (line{'s' if len(self.lines) > 1 else ''} {where}): {self.reason}"


@dataclass
class ImportResult:
    """What :func:`import_reviewed` did (or, with ``dry_run``, would do)."""

    into: Path
    reviewed: Path
    imported: list[ImportedSpecimen]
    refused: list[Refusal]
    blank_rows: int
    """Rows without a reviewed name: skipped."""
    already_imported: int
    """Photos found in the log of earlier imports: skipped."""
    dry_run: bool
    log: Path | None
    """The provenance log appended to (None: nothing copied)."""
    seconds: float = 0.0

    @property
    def files(self) -> int:
        return sum(len(specimen.files) for specimen in self.imported)

    @property
    def ok(self) -> bool:
        return not self.refused


def import_reviewed(
    config: Config,
    reviewed_csv: str | Path,
    into: str | Path,
    dry_run: bool = False,
    progress: Progress | None = None,
) -> ImportResult:
    """Copy the photos named in ``reviewed_csv`` into the data set at ``into`` (see the module
    docstring), names matched through ``data.taxonomy`` (default: the ``data.domain``'s), and
    append a line per photo to ``into/IMPORTS.jsonl``: when, who, what name (as reviewed and as
    accepted), the photo's SHA-256, source and destination, and the predictions file, inspection
    record and model it came from.

    Args:
        dry_run: check and plan everything, copy and log nothing.
        progress: called as ``progress(done, total)`` while the data set is hashed.

    Raises:
        JianmuError: ``into`` is not a folder; the CSV cannot be read or lacks a column; a copy
            failed (what this import had copied is removed again).
    """
    started = time.perf_counter()
    into = Path(into).expanduser().absolute()
    if not into.is_dir():
        raise JianmuError(f"--into {into}: not a folder (create it first for a new data set)")
    reviewed_csv = Path(reviewed_csv)
    rows = load_reviewed(reviewed_csv)
    taxonomy = load_taxonomy(config.data.taxonomy or config.data.domain)
    dataset = _Dataset(into, config)
    previous = load_imports(into / IMPORTS_LOG)
    named = [row for row in rows if row.taxon]
    photos = dict(zip(named, scan_images([row.path for row in named], config.data), strict=True))
    if named:  # nothing to compare otherwise
        dataset.scan(progress)
    plan = _Plan(dataset, taxonomy, config, photos, previous)
    for unit, members in group_units(rows).items():
        plan.consider(unit, members)
    result = ImportResult(
        into=into,
        reviewed=reviewed_csv,
        imported=plan.accepted,
        refused=plan.refused,
        blank_rows=plan.blank_rows,
        already_imported=plan.already,
        dry_run=dry_run,
        log=None,
    )
    if not dry_run and plan.accepted:
        created = _copy(into, plan.accepted)
        result.log = _append_log(into, reviewed_csv, plan.accepted, created)
    result.seconds = time.perf_counter() - started
    return result


# --- reading ------------------------------------------------------------------------------------


def load_reviewed(path: str | Path) -> list[ReviewedRow]:
    """The rows of a reviewed CSV; relative photo paths are taken relative to the CSV's folder.

    Raises:
        JianmuError: unreadable, not UTF-8, or without the columns :data:`REQUIRED_COLUMNS`.
    """
    path = Path(path)
    try:
        with open(path, encoding="utf-8-sig", newline="") as stream:
            reader = csv.DictReader(stream)
            header = reader.fieldnames or []
            records = list(reader)
    except UnicodeDecodeError:
        raise JianmuError(f"{path}: not UTF-8 text; save it as 'CSV UTF-8'") from None
    except (OSError, csv.Error) as error:
        raise JianmuError(
            f"cannot read {path}: {getattr(error, 'strerror', None) or error}"
        ) from None
    missing = [column for column in REQUIRED_COLUMNS if column not in header]
    if missing:
        raise JianmuError(
            f"{path}: no column {', '.join(missing)}; expected a review CSV written by "
            f"`jianmu review` (columns {', '.join(REVIEW_COLUMNS)})"
        )
    rows = []
    for line, record in enumerate(records, start=2):
        given = (record.get("path") or "").strip()
        if not given:
            continue
        photo = Path(given).expanduser()
        rows.append(
            ReviewedRow(
                line=line,
                path=photo if photo.is_absolute() else path.parent / photo,
                specimen=(record.get("specimen") or "").strip() or None,
                taxon=(record.get("reviewed_taxon") or "").strip(),
                reviewer=(record.get("reviewer") or "").strip(),
                note=(record.get("note") or "").strip(),
                source={key: (record.get(key) or "").strip() for key in SOURCE_COLUMNS},
            )
        )
    return rows


def group_units(rows: list[ReviewedRow]) -> dict[str, list[ReviewedRow]]:
    """Rows by specimen, in first-seen order; a row of no specimen is a unit of its own."""
    units: dict[str, list[ReviewedRow]] = {}
    for row in rows:
        key = f"specimen {row.specimen}" if row.specimen else f"photo {row.path.name}"
        if key in units and not row.specimen:
            key = f"photo {row.path}"
        units.setdefault(key, []).append(row)
    return units


def load_imports(path: Path) -> dict[str, dict[str, Any]]:
    """The log of earlier imports by SHA-256 (empty when there is none); a line that is not a
    JSON object (one cut short by a crash) is passed over."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as error:
        raise JianmuError(f"cannot read {path}: {error}") from None
    found: dict[str, dict[str, Any]] = {}
    for line in text.splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(entry, dict) and entry.get("sha256"):
            found.setdefault(entry["sha256"], entry)
    return found


# --- the data set -------------------------------------------------------------------------------


class _Dataset:
    """The data set imported into: its class folders by species, its specimens, its hashes."""

    def __init__(self, root: Path, config: Config) -> None:
        self.root = root
        self.config = config
        self.pattern = compile_specimen_pattern(config.data.specimen_pattern)
        has_classes = any(
            child.is_dir() and not child.name.startswith(".") for child in root.iterdir()
        )
        files = (
            find_dataset(root, config.data.extensions, config.data.specimen_pattern)
            if has_classes
            else None
        )
        self.classes = files.classes if files else []
        self.samples = files.samples if files else []
        self.specimens = {sample.specimen for sample in self.samples}
        self.records: list[ImageRecord] = []
        self.by_sha256: dict[str, int] = {}

    def scan(self, progress: Progress | None) -> None:
        self.records = scan_images(
            [sample.path for sample in self.samples], self.config.data, progress
        )
        for index, record in enumerate(self.records):
            if record.ok and record.sha256:
                self.by_sha256.setdefault(record.sha256, index)

    def relative(self, index: int) -> str:
        return relative_posix(self.samples[index].path, self.root)

    def folders_of(self, taxonomy: Taxonomy) -> dict[str, list[str]]:
        """Accepted species name -> the class folders that match it."""
        found: dict[str, list[str]] = defaultdict(list)
        for name in self.classes:
            entry = taxonomy.match(name).entry
            if entry is not None:
                found[entry.name].append(name)
        return found

    def specimen_of(self, class_folder: str, relative: Path) -> str:
        """The data set's specimen of a file at ``class_folder/relative`` (its one rule)."""
        specimen = specimen_from_name(relative, self.pattern) or relative.as_posix()
        return f"{class_folder}/{specimen}"


def find_near_duplicates(
    existing: list[int | None], new: list[int | None], distance: int
) -> dict[int, tuple[int, int]]:
    """For each of ``new`` (perceptual hashes) within ``distance`` of one of ``existing``: its index
    -> (the index of the closest existing one, the Hamming distance). Uses the audit's banded
    search once over both lists."""
    hashes = [*existing, *new]
    first: dict[int, int] = {}
    for index, value in enumerate(existing):
        if value is not None:
            first.setdefault(value, index)
    close: dict[int, list[tuple[int, int]]] = defaultdict(list)
    # Every pair of distinct hash values within `distance` gets one edge between their first images
    for a, b, hamming in find_near_duplicate_edges(hashes, distance):
        if hashes[a] != hashes[b]:
            close[hashes[a]].append((hashes[b], hamming))
            close[hashes[b]].append((hashes[a], hamming))
    found: dict[int, tuple[int, int]] = {}
    for index, value in enumerate(new):
        if value is None:
            continue
        if value in first:
            found[index] = (first[value], 0)
            continue
        nearest = min(
            ((hamming, first[other]) for other, hamming in close[value] if other in first),
            default=None,
        )
        if nearest is not None:
            found[index] = (nearest[1], nearest[0])
    return found


# --- checking and planning ----------------------------------------------------------------------

_UNSAFE = re.compile(r'[\\/:*?"<>|\x00-\x1f]+')


def _folder_name(specimen: str) -> str:
    """A specimen id as one folder name: separators and characters Windows refuses become ``_``
    (``field/S01`` would otherwise nest, and the data set would see the specimen ``field``)."""
    name = _UNSAFE.sub("_", specimen).strip(" .")
    return name or "specimen"


class _Plan:
    """Every unit checked in turn: accepted ones with their destinations, or refused."""

    def __init__(
        self,
        dataset: _Dataset,
        taxonomy: Taxonomy,
        config: Config,
        photos: dict[ReviewedRow, ImageRecord],
        previous: dict[str, dict[str, Any]],
    ) -> None:
        self.dataset = dataset
        self.taxonomy = taxonomy
        self.config = config
        self.photos = photos
        self.previous = previous
        self.accepted: list[ImportedSpecimen] = []
        self.refused: list[Refusal] = []
        self.blank_rows = 0
        self.already = 0
        self.folders = dataset.folders_of(taxonomy)
        self.taken: set[Path] = set()  # destinations planned in this import
        self.new_specimens: set[str] = set()
        self.near = self._near_duplicates()
        self.seen: dict[str, list[ReviewedRow]] = defaultdict(list)
        for row, record in photos.items():
            if record.ok and record.sha256:
                self.seen[record.sha256].append(row)

    def _near_duplicates(self) -> dict[ReviewedRow, tuple[int, int]]:
        if not self.config.review.refuse_near_duplicates:
            return {}
        rows = [row for row, record in self.photos.items() if record.ok]
        existing = [record.phash if record.ok else None for record in self.dataset.records]
        found = find_near_duplicates(
            existing,
            [self.photos[row].phash for row in rows],
            self.config.data.near_duplicate_distance,
        )
        return {rows[index]: match for index, match in found.items()}

    def consider(self, unit: str, rows: list[ReviewedRow]) -> None:
        named = [row for row in rows if row.taxon]
        if not named:
            self.blank_rows += len(rows)
            return
        lines = [row.line for row in rows]
        try:
            entry = self._check(rows, named)
            if entry is None:
                return
            self.accepted.append(self._place(unit, rows, entry))
        except _Refused as refused:
            self.refused.append(Refusal(unit, lines, str(refused)))

    def _check(self, rows: list[ReviewedRow], named: list[ReviewedRow]) -> Species | None:
        """The species the unit is, or None when it was all imported before; else _Refused."""
        if len(named) < len(rows):
            raise _Refused(
                f"{len(named)} of {len(rows)} photos named; name all of a specimen's photos, or "
                "none (it is imported whole)"
            )
        entries: dict[str, Species] = {}
        for row in rows:
            match = self.taxonomy.match(row.taxon)
            if match.entry is None:
                taxonomy = f"the {self.taxonomy.domain} taxonomy"
                raise _Refused(match.describe().replace("the taxonomy", taxonomy))
            entries.setdefault(match.entry.name, match.entry)
        if len(entries) > 1:
            given = sorted({row.taxon for row in rows}, key=natural_key)
            raise _Refused(
                f"its photos are named differently ({', '.join(given)}); one specimen is one "
                "species"
            )
        if any(not row.reviewer for row in rows):
            line = next(row.line for row in rows if not row.reviewer)
            raise _Refused(f"line {line} names a species but no reviewer: who identified it?")
        for row in rows:
            record = self.photos[row]
            if not record.ok:
                raise _Refused(f"{row.path}: {record.probe.reason}")
        before = [row for row in rows if self.photos[row].sha256 in self.previous]
        if before and len(before) == len(rows):
            self.already += len(rows)
            return None
        if before:
            entry = self.previous[self.photos[before[0]].sha256]
            raise _Refused(
                f"{before[0].path.name} was imported before ({entry.get('imported')}, as "
                f"{entry.get('destination')}) but not the rest of its specimen; add them by hand"
            )
        for row in rows:
            record = self.photos[row]
            twins = [other for other in self.seen[record.sha256] if other is not row]
            if twins:
                raise _Refused(f"{row.path.name} is the same photo as line {twins[0].line}")
            if record.sha256 in self.dataset.by_sha256:
                where = self.dataset.relative(self.dataset.by_sha256[record.sha256])
                raise _Refused(f"{row.path.name} is already in the data set as {where}")
            if row in self.near:
                index, hamming = self.near[row]
                raise _Refused(
                    f"{row.path.name} is a near duplicate of {self.dataset.relative(index)} in "
                    f"the data set (perceptual hash distance {hamming}; "
                    "review.refuse_near_duplicates)"
                )
        return next(iter(entries.values()))

    def _place(self, unit: str, rows: list[ReviewedRow], entry: Species) -> ImportedSpecimen:
        folders = self.folders.get(entry.name, [])
        if len(folders) > 1:
            raise _Refused(
                f"class folders {' and '.join(folders)} are both {entry.name}; merge them first"
            )
        class_folder = folders[0] if folders else entry.name.replace(" ", "_")
        notes = []
        specimen = rows[0].specimen
        folder = Path(class_folder)
        if specimen is not None:
            wanted = _folder_name(specimen)
            folder = self._free(Path(class_folder) / wanted, is_folder=True)
            if folder.name != wanted:
                notes.append(f"{class_folder}/{wanted} is taken: {folder.name}")
        files: list[ImportedFile] = []
        for row in rows:
            planned = {file.destination for file in files}
            destination = self._free(folder / row.path.name, planned)
            if destination.name != row.path.name:
                notes.append(f"{folder.as_posix()}/{row.path.name} is taken: {destination.name}")
            files.append(ImportedFile(row.path, destination, self.photos[row].sha256, row))
        self._check_specimen_rule(class_folder, files)
        self.taken.update(file.destination for file in files)
        self.taken.add(folder)
        return ImportedSpecimen(
            specimen=specimen,
            taxon=entry.name,
            reviewed_as=rows[0].taxon,
            class_folder=class_folder,
            folder=folder,
            files=files,
            reviewer=rows[0].reviewer,
            new_class=not folders,
            notes=notes,
        )

    def _check_specimen_rule(self, class_folder: str, files: list[ImportedFile]) -> None:
        """The copied photos must be one specimen of the data set, and a new one."""
        found = {
            self.dataset.specimen_of(class_folder, file.destination.relative_to(class_folder))
            for file in files
        }
        if len(found) > 1:
            raise _Refused(
                "data.specimen_pattern would split it into the specimens "
                + ", ".join(sorted(found))
            )
        (becomes,) = found
        for taken, where in ((self.dataset.specimens, "already in the data set"),
                             (self.new_specimens, "of another row of this file")):  # fmt: skip
            if becomes in taken:
                raise _Refused(
                    f"data.specimen_pattern would make it part of the specimen {becomes} {where}"
                )
        self.new_specimens.add(becomes)

    def _free(
        self, wanted: Path, planned: set[Path] = frozenset(), is_folder: bool = False
    ) -> Path:
        """``wanted`` (relative to the root), or the first of ``stem-2.jpg``, ``stem-3.jpg``, ...
        (``folder-2``, ... for a folder) that neither exists nor is planned."""
        candidate, number = wanted, 1
        while (
            candidate in self.taken
            or candidate in planned
            or os.path.lexists(self.dataset.root / candidate)
        ):
            number += 1
            name = f"{wanted.name}-{number}" if is_folder else f"{wanted.stem}-{number}"
            candidate = wanted.with_name(name if is_folder else name + wanted.suffix)
        return candidate


class _Refused(Exception):
    """A unit's one reason for refusal (internal: becomes a :class:`Refusal`)."""


# --- copying and the log ------------------------------------------------------------------------


def _copy(root: Path, specimens: list[ImportedSpecimen]) -> list[Path]:
    """Copy every planned photo (``shutil.copy2``: bytes and times) and return what was created,
    folders included. Each destination is created exclusively first, so that nothing that
    appeared meanwhile is overwritten, and checked against its SHA-256 after. On any failure what
    this call created is removed and a JianmuError raised."""
    created: list[Path] = []
    try:
        for specimen in specimens:
            for file in specimen.files:
                target = root / file.destination
                for parent in reversed(file.destination.parents[:-1]):
                    if not (root / parent).exists():
                        (root / parent).mkdir()
                        created.append(root / parent)
                with open(target, "xb"):
                    created.append(target)
                shutil.copy2(file.source, target)
                if file_sha256(target) != file.sha256:
                    raise OSError(f"{file.source} changed since it was hashed")
    except OSError as error:
        _remove(created)
        why = getattr(error, "strerror", None) or error
        raise JianmuError(f"copying into {root} failed ({why}); nothing was imported") from None
    return created


def _append_log(
    root: Path, reviewed: Path, specimens: list[ImportedSpecimen], created: list[Path]
) -> Path:
    """Append one JSON line per copied photo to ``root/IMPORTS.jsonl``, in one write; when that
    fails, the copies are removed again (an import without its provenance is none)."""
    path = root / IMPORTS_LOG
    when = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    reviewed_sha256 = file_sha256(reviewed)
    lines = []
    for specimen in specimens:
        for file in specimen.files:
            entry = {
                "imported": when,
                "reviewer": file.row.reviewer,
                "taxon": specimen.taxon,
                "reviewed_as": file.row.taxon,
                "class_folder": specimen.class_folder,
                "specimen": specimen.specimen,
                "destination": file.destination.as_posix(),
                "source": str(file.source.absolute()),
                "sha256": file.sha256,
                "note": file.row.note or None,
                "reviewed_csv": str(reviewed.absolute()),
                "reviewed_csv_sha256": reviewed_sha256,
                **{key: file.row.source.get(key) or None for key in SOURCE_COLUMNS},
                "jianmu": __version__,
            }
            lines.append(json.dumps(entry, ensure_ascii=False) + "\n")
    try:
        with open(path, "a+b") as stream:
            stream.seek(0, os.SEEK_END)
            if stream.tell():
                stream.seek(-1, os.SEEK_END)
                if stream.read(1) != b"\n":  # a line cut short by a crash stays on its own
                    stream.write(b"\n")
            stream.write("".join(lines).encode("utf-8"))
            stream.flush()
            os.fsync(stream.fileno())
    except OSError as error:
        _remove(created)
        raise JianmuError(
            f"cannot append to {path} ({error.strerror or error}); the copies were removed again"
        ) from None
    return path


def _remove(created: list[Path]) -> None:
    """Remove the files and (then empty) folders an import created, newest first."""
    for path in reversed(created):
        with contextlib.suppress(OSError):  # a folder someone else put a file in meanwhile stays
            path.rmdir() if path.is_dir() else path.unlink(missing_ok=True)
