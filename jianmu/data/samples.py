"""Finding samples on disk: ``ROOT/<class>/[<specimen>/...]<image>``.

Class folders are the sub-folders of the root, in natural order ("2-x" before "10-x", as timm's
``readers/reader_image_folder.py``). Images may sit directly in a class folder or at any depth
below it; the first sub-folder under the class folder is then the specimen. Hidden files and
folders (names starting with ".") are ignored. Sample paths are absolute.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from jianmu.errors import JianmuError


@dataclass(frozen=True)
class Sample:
    """One image file. ``specimen`` is namespaced by class: ``"<class>/<id>"``."""

    path: Path
    label: str
    specimen: str


@dataclass
class DatasetFiles:
    """Everything found under a data root, before any image is opened."""

    root: Path
    classes: list[str]
    samples: list[Sample]
    skipped: list[Path] = field(default_factory=list)
    """Files not taken as samples: wrong extension, or lying directly in the root folder."""
    broken_links: list[Path] = field(default_factory=list)
    """Symbolic links that lead nowhere: a missing target or a loop (never followed)."""


IMPORTS_LOG = "IMPORTS.jsonl"
"""The data set's provenance log of imported photos (``jianmu data import``), at its root: part of
the data set, not a stray file."""


def natural_key(text: str) -> list[int | str]:
    """Sort key that orders embedded numbers by value: "2-x" < "10-x"."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text.lower())]


def find_class_folders(root: str | Path) -> list[str]:
    """Names of the class folders under ``root`` in natural order (empty folders included).

    Raises:
        JianmuError: ``root`` is missing, not a folder, or has no class folders.
    """
    root = Path(root).expanduser()
    if not root.exists():
        raise JianmuError(f"data root not found: {root}")
    if not root.is_dir():
        raise JianmuError(f"data root is not a folder: {root}")
    names = [entry.name for entry in _entries(root) if _is_dir(entry)]
    if not names:
        raise JianmuError(f"no class folders in {root}: expected ROOT/<class>/<images>")
    return sorted(names, key=natural_key)


def find_dataset(
    root: str | Path,
    extensions: list[str] | tuple[str, ...],
    specimen_pattern: str | None = None,
) -> DatasetFiles:
    """Walk ``root`` once: class folders, samples (natural order) and skipped files.

    The specimen of a file is, in order: the ``specimen`` group (or group 1) of
    ``specimen_pattern`` searched in the file stem, the first sub-folder under the class folder,
    or the file's own path below the class folder. All are prefixed with ``"<class>/"``.

    Raises:
        JianmuError: bad root (see :func:`find_class_folders`) or an invalid ``specimen_pattern``.
    """
    root = Path(root).expanduser().absolute()
    classes = find_class_folders(root)
    suffixes = {_normalize_extension(extension) for extension in extensions}
    pattern = compile_specimen_pattern(specimen_pattern)
    skipped = [
        root / entry.name
        for entry in _entries(root)
        if not _is_dir(entry) and entry.name != IMPORTS_LOG
    ]
    samples: list[Sample] = []
    for label in classes:
        for relative in walk_files(root / label):
            path = root / label / relative
            if path.suffix.lower() not in suffixes or is_broken_link(path):
                skipped.append(path)
                continue
            specimen = specimen_from_name(relative, pattern) or relative.as_posix()
            samples.append(Sample(path=path, label=label, specimen=f"{label}/{specimen}"))
    skipped.sort(key=lambda path: _path_key(path.relative_to(root)))
    broken = [path for path in skipped if is_broken_link(path)]
    skipped = [path for path in skipped if path not in broken]
    return DatasetFiles(root, classes, samples, skipped, broken)


def find_samples(
    root: str | Path,
    extensions: list[str] | tuple[str, ...],
    specimen_pattern: str | None = None,
) -> list[Sample]:
    """Image files under ``root`` as samples, by class then path (see :func:`find_dataset`)."""
    return find_dataset(root, extensions, specimen_pattern).samples


def find_skipped_files(root: str | Path, extensions: list[str] | tuple[str, ...]) -> list[Path]:
    """Files under ``root`` that are not samples: wrong extension or outside any class folder."""
    return find_dataset(root, extensions).skipped


def relative_posix(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` with "/" separators (unchanged when outside ``root``)."""
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def walk_files(folder: Path) -> list[Path]:
    """Visible files below ``folder`` as relative paths, in natural order of their parts.

    Links to folders are not followed (no loop can trap the walk); a link that leads nowhere
    (a missing target, a loop) comes back as a file: see :func:`is_broken_link`. Folders that
    cannot be listed are passed over."""
    found: list[Path] = []
    for current, folders, files in os.walk(folder):
        folders[:] = [name for name in folders if _visible(name)]
        base = Path(current).relative_to(folder)
        found.extend(base / name for name in files if _visible(name))
    return sorted(found, key=_path_key)


def is_broken_link(path: Path) -> bool:
    """A symbolic link whose target is missing or that loops back on itself."""
    try:
        os.stat(path)
    except OSError:
        return os.path.islink(path)
    return False


def _entries(folder: Path) -> list[os.DirEntry]:
    with os.scandir(folder) as entries:
        return [entry for entry in entries if _visible(entry.name)]


def _is_dir(entry: os.DirEntry) -> bool:
    """A folder, or a link to one; never raises (a link loop is not a folder)."""
    try:
        return entry.is_dir()
    except OSError:
        return False


def _path_key(path: Path) -> list[list[int | str]]:
    return [natural_key(part) for part in path.parts]


def _visible(name: str) -> bool:
    return not name.startswith(".")


def _normalize_extension(extension: str) -> str:
    extension = extension.strip().lower()
    return extension if extension.startswith(".") else f".{extension}"


def compile_specimen_pattern(
    pattern: str | None, where: str = "data.specimen_pattern"
) -> re.Pattern[str] | None:
    """The compiled specimen regex, or None; a bad regex is one error line naming ``where``."""
    if not pattern:
        return None
    try:
        return re.compile(pattern)
    except re.error as error:
        raise JianmuError(f"{where}: invalid regex {pattern!r} ({error})") from None


def specimen_from_name(relative: Path, pattern: re.Pattern[str] | None) -> str | None:
    """The specimen of an image, from its path below the folder that holds the specimens (a class
    folder, or a folder of field photos): the ``specimen`` group (else group 1, else the whole
    match) of ``pattern`` searched in the file stem; else the first sub-folder; else None (the
    image is its own specimen)."""
    if pattern is not None:
        match = pattern.search(relative.stem)
        if match:
            named = match.groupdict().get("specimen")
            value = named if named is not None else (match.group(1) if pattern.groups else None)
            value = match.group(0) if value is None else value
            if value:
                return value
    if len(relative.parts) > 1:
        return relative.parts[0]
    return None


def class_index(classes: list[str]) -> dict[str, int]:
    """Class name -> its index in the model's outputs."""
    return {name: index for index, name in enumerate(classes)}
