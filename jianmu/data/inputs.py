"""Finding the photos an inspector asks ``jianmu predict`` about: image files, folders searched
recursively, and ``.txt``/``.lst`` lists of paths; each image once, in order, with its specimen.

An image's specimen follows :func:`jianmu.data.samples.specimen_from_name` below the INPUT folder
it was found in: the specimen pattern on its file name, else its first sub-folder (prefixed
``<folder name>/`` when several INPUT folders are given). Images lying directly in an INPUT
folder, and files named one by one (pattern aside), belong to no specimen (None).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from jianmu.config import IMAGE_EXTENSIONS
from jianmu.data.samples import compile_specimen_pattern, specimen_from_name, walk_files
from jianmu.errors import JianmuError

LIST_SUFFIXES = (".txt", ".lst")


@dataclass(frozen=True)
class InputImage:
    """One file to classify and the specimen it belongs to (None: its own)."""

    path: Path
    specimen: str | None = None


@dataclass
class Inputs:
    images: list[InputImage]
    skipped: int = 0
    """Files in INPUT folders left out: no image extension."""


def find_inputs(inputs: Sequence[str | Path], specimen_pattern: str | None = None) -> Inputs:
    """The images of ``inputs`` in order, each once, with its specimen (see module docstring).

    A path that does not exist is kept: its record says "not found".

    Raises:
        JianmuError: no inputs at all, an unreadable list file, an invalid ``specimen_pattern``.
    """
    pattern = compile_specimen_pattern(specimen_pattern, "predict.specimen_pattern")
    expanded: list[Path] = []
    for given in inputs:
        path = Path(given).expanduser()
        if path.suffix.lower() in LIST_SUFFIXES and path.is_file():
            expanded.extend(_read_list(path))
        else:
            expanded.append(path)
    folders = sum(1 for path in expanded if path.is_dir())
    images: list[InputImage] = []
    seen: set[str] = set()
    skipped = 0
    for path in expanded:
        if path.is_dir():
            found, left_out = _folder_images(path, pattern, prefix=folders > 1)
            skipped += left_out
        else:
            found = [InputImage(path, specimen_from_name(Path(path.name), pattern))]
        for image in found:
            key = path_key(image.path)
            if key not in seen:
                seen.add(key)
                images.append(image)
    if not images:
        where = ", ".join(str(Path(p)) for p in inputs) or "(none given)"
        raise JianmuError(f"no images to classify in {where}")
    return Inputs(images, skipped)


def path_key(path: str | Path) -> str:
    """The key under which a path is the same file (absolute, case-folded where the OS folds)."""
    return os.path.normcase(os.path.abspath(path))


def _read_list(path: Path) -> list[Path]:
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise JianmuError(f"cannot read the list {path} ({error})") from None
    entries = [line.strip() for line in lines]
    return [
        Path(os.path.normpath(path.parent / Path(entry).expanduser()))
        for entry in entries
        if entry and not entry.startswith("#")
    ]


def _folder_images(
    folder: Path, pattern: re.Pattern[str] | None, prefix: bool
) -> tuple[list[InputImage], int]:
    suffixes = set(IMAGE_EXTENSIONS)
    files = walk_files(folder)  # hidden files (e.g. macOS "._IMG_0001.jpg") are left out
    found = [relative for relative in files if relative.suffix.lower() in suffixes]
    skipped = len(files) - len(found)
    images = []
    for relative in found:
        specimen = specimen_from_name(relative, pattern)
        if specimen is not None and prefix:
            specimen = f"{folder.name}/{specimen}"
        images.append(InputImage(folder / relative, specimen))
    return images, skipped
