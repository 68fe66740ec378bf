"""What the shipping papers declare: one name for every input (``--declared NAME``), or a CSV
with the columns ``specimen`` or ``path``, and ``declared`` (``--declarations FILE.csv``).

Every declared name is matched when the declarations are read (:func:`jianmu.taxonomy.
match_declared`), so that a name that matches nothing, or an ambiguous one, stops the run before
any photo is looked at, with the candidates in one line.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

from jianmu.data.inputs import InputImage, path_key
from jianmu.errors import JianmuError
from jianmu.taxonomy import Declared, Lineage, Taxonomy, match_declared

COLUMNS = ("specimen", "path", "declared")


@dataclass
class Declarations:
    """Declared taxa by image path and by specimen, and one for every input."""

    default: Declared | None = None
    by_path: dict[str, Declared] = field(default_factory=dict)
    by_specimen: dict[str, Declared] = field(default_factory=dict)

    def for_image(self, image: InputImage) -> Declared | None:
        found = self.by_path.get(path_key(image.path))
        if found is None and image.specimen is not None:
            found = self.by_specimen.get(image.specimen)
        return found or self.default

    def for_specimen(self, specimen: str) -> Declared | None:
        return self.by_specimen.get(specimen) or self.default


def load_declarations(
    declared: str | None,
    path: str | Path | None,
    taxonomy: Taxonomy | None,
    classes: dict[str, Lineage] | None = None,
) -> Declarations:
    """The declarations of a verify run, every name matched.

    Raises:
        JianmuError: neither or both given, an unreadable or malformed CSV (with its line), a name
            that matches nothing or several species.
    """
    if (declared is None) == (path is None):
        raise JianmuError("give one of --declared NAME or --declarations FILE.csv")
    if declared is not None:
        return Declarations(default=match_declared(declared, taxonomy, classes))
    path = Path(path)
    try:
        with open(path, encoding="utf-8-sig", newline="") as stream:
            rows = list(csv.DictReader(stream))
            header = rows[0].keys() if rows else []
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise JianmuError(f"--declarations {path}: cannot read ({error})") from None
    if "declared" not in header or not ({"specimen", "path"} & set(header)):
        raise JianmuError(
            f"--declarations {path}: expected the columns 'declared' and 'specimen' or 'path'"
        )
    found = Declarations()
    for line, row in enumerate(rows, start=2):
        name = (row.get("declared") or "").strip()
        key_path, specimen = (row.get("path") or "").strip(), (row.get("specimen") or "").strip()
        if not name or not (key_path or specimen):
            raise JianmuError(f"{path}:{line}: give 'declared' and a 'specimen' or 'path'")
        try:
            match = match_declared(name, taxonomy, classes)
        except JianmuError as error:
            raise JianmuError(f"{path}:{line}: {error}") from None
        if key_path:
            found.by_path[path_key(path.parent / key_path)] = match
        if specimen:
            found.by_specimen[specimen] = match
    return found
