"""``jianmu review``: what of a predict or verify run needs the lab's expert, as one
self-contained page and a CSV.

:func:`review` reads the predictions (``.csv``, ``.jsonl`` or ``.json``, as
:mod:`jianmu.report.predict_files` writes them), their specimen rows and the inspection record
beside them (``<stem>.record.json``), and selects every specimen (a photo of no specimen is its
own) of which a readable photo, or the specimen's own roll-up, has a reason in
``review.reasons``:

- ``unknown``: ``unknown - refer to lab``, the model is sure of no rank;
- ``above_species``: answered at the genus or family only;
- ``low_margin``: the top-1 calibrated probability leads the top-2 by less than
  ``review.max_margin`` (with one candidate only, the ``other`` share stands in for the second);
- ``declaration``: verify found the declaration ``inconsistent``, or ``cannot decide`` it.

A selected specimen comes with all its readable photos, because ``jianmu data import`` copies a
specimen whole; photos sent back by the quality gate or that could not be read are listed as left
out (they are neither identifiable nor training material). Thumbnails are read from the photo
paths of the predictions (as written, else relative to the working folder or the predictions
file); a photo not found is shown as missing, never an error.
"""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jianmu.config import Config, ReviewConfig
from jianmu.data.images import ImageDecodeError, open_image
from jianmu.data.importer import load_reviewed
from jianmu.engine.predict import THUMBNAIL_SIZE, answer_rank, thumbnail_jpeg
from jianmu.errors import JianmuError
from jianmu.record import load_record, record_path
from jianmu.report.predict_files import FORMATS, from_row, specimens_path
from jianmu.report.review_page import review_rows, write_review_csv, write_review_page
from jianmu.taxonomy import load_taxonomy
from jianmu.verdict import CANNOT_DECIDE, INCONSISTENT, RETAKE, UNKNOWN, UNKNOWN_RANK

REVIEW_PAGE = "review.html"
REVIEW_CSV = "review.csv"
REVIEW_FOLDER = "review"
"""The default output folder, beside the predictions."""


@dataclass(frozen=True)
class Reason:
    """Why a photo or specimen goes to the expert: a ``review.reasons`` key, and in words."""

    key: str
    text: str

    def __str__(self) -> str:
        return self.text


@dataclass
class ReviewPhoto:
    """One readable photo of a selected specimen."""

    path: str
    """As the predictions name it."""
    file: Path | None
    """The photo on this machine (None: not found)."""
    record: dict[str, Any]
    reasons: list[Reason]
    margin: float | None


@dataclass
class ReviewItem:
    """A specimen for the expert (or a photo of no specimen), with its reasons."""

    specimen: str | None
    answer: dict[str, Any] | None
    """The specimen's roll-up (or the photo's record): verdict, rank, taxon, candidates; None
    for a specimen whose roll-up file is absent."""
    photos: list[ReviewPhoto]
    reasons: list[Reason]
    """The roll-up's own reasons (a specimen whose photos disagree is unknown as a whole)."""
    left_out: list[tuple[str, str]] = field(default_factory=list)
    """Photos of the specimen not for review: (path, why)."""

    @property
    def key(self) -> str:
        """What names the item in the page's form: its specimen, or its photo's path."""
        return self.specimen if self.specimen is not None else self.photos[0].path


@dataclass
class ReviewResult:
    """What :func:`review` selected, and the files written."""

    predictions: Path
    items: list[ReviewItem]
    images: int
    """Photos in the predictions."""
    readable: int
    """Of them, judged by the model (status ok)."""
    reasons: Counter
    """Photos (and specimen roll-ups) per reason key."""
    settings: ReviewConfig
    run: dict[str, Any]
    """From the inspection record: record, record_sha256, created, command, operator, model,
    model_sha256 (empty without a record)."""
    names: list[tuple[str, str | None]]
    """(name, label) offered as the expert types: the taxonomy's species (with their Chinese
    names) and synonyms, and the model's candidates."""
    thumbnails: dict[str, bytes] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)
    """Photo path -> why it has no thumbnail."""
    out: Path | None = None
    files: list[Path] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def photos(self) -> int:
        return sum(len(item.photos) for item in self.items)


def review(config: Config, predictions_path: str | Path) -> ReviewResult:
    """Select what of ``predictions_path`` needs an expert (``review:`` settings) and write
    ``review.html`` and ``review.csv`` into ``out`` (default: ``review/`` beside the predictions).

    Raises:
        JianmuError: the predictions cannot be read or are not a predict/verify output; ``out``
            already holds a review CSV with names entered (import it or move it away first).
    """
    predictions = Path(predictions_path)
    out = Path(config.out) if config.out is not None else predictions.parent / REVIEW_FOLDER
    _refuse_reviewed_work(out / REVIEW_CSV)
    images, specimens = load_predictions(predictions)
    run, inputs, warnings = _run_of(predictions)
    if not specimens and any(record.get("specimen") for record in images):
        warnings.append(
            f"no specimen rows beside {predictions.name}: specimens are judged by their photos only"
        )
    items = select(images, specimens, config.review)
    result = ReviewResult(
        predictions=predictions,
        items=items,
        images=len(images),
        readable=sum(1 for record in images if record.get("status") == "ok"),
        reasons=_count_reasons(items),
        settings=config.review,
        run=run,
        names=_names(config, images),
        warnings=warnings,
    )
    for item in items:
        for photo in item.photos:
            photo.file = _find_photo(photo.path, predictions, inputs)
            _add_thumbnail(result, photo)
    rows = review_rows(result)
    result.out = out
    result.files = [
        write_review_csv(out / REVIEW_CSV, rows),
        write_review_page(out / REVIEW_PAGE, result, rows),
    ]
    return result


# --- selecting ------------------------------------------------------------------------------------


def reasons_of(record: dict[str, Any], settings: ReviewConfig) -> list[Reason]:
    """Why an answered record (a photo's or a specimen's) needs an expert; ``[]`` when it does
    not, or has no answer."""
    rank = answer_rank(record)
    if rank is None or not record.get("top"):
        return []
    wanted = set(settings.reasons)
    found = []
    if "unknown" in wanted and rank == UNKNOWN_RANK:
        found.append(Reason("unknown", UNKNOWN))
    if "above_species" in wanted and rank in ("genus", "family"):
        found.append(Reason("above_species", f"answered at the {rank} only: {record.get('taxon')}"))
    margin = margin_of(record)
    if "low_margin" in wanted and margin is not None and margin < settings.max_margin:
        first = record["top"][0]["probability"]
        text = f"low margin {margin:.2f} (top-1 {first:.1%}, top-2 {first - margin:.1%})"
        found.append(Reason("low_margin", text))
    decision = record.get("decision")
    if "declaration" in wanted and decision in (INCONSISTENT, CANNOT_DECIDE):
        text = f"declared {record.get('declared')}: {decision} ({record.get('reason')})"
        found.append(Reason("declaration", text))
    return found


def margin_of(record: dict[str, Any]) -> float | None:
    """Top-1 minus top-2 calibrated probability; with one candidate, minus the ``other`` share
    (an upper bound of the second); None without candidates."""
    top = record.get("top") or []
    if not top:
        return None
    second = top[1]["probability"] if len(top) > 1 else (record.get("other") or 0.0)
    return round(float(top[0]["probability"]) - float(second), 6)


def select(
    images: list[dict[str, Any]], specimens: list[dict[str, Any]], settings: ReviewConfig
) -> list[ReviewItem]:
    """The specimens (and photos of no specimen) that need an expert, in the order of the
    predictions."""
    rollups = {record["specimen"]: record for record in specimens if record.get("specimen")}
    groups: dict[str, list[dict[str, Any]]] = {}
    for record in images:
        key = record.get("specimen")
        groups.setdefault(f"specimen:{key}" if key else f"photo:{record['path']}", []).append(
            record
        )
    items = []
    for records in groups.values():
        specimen = records[0].get("specimen")
        readable = [record for record in records if record.get("status") == "ok"]
        if not readable:
            continue
        answer = rollups.get(specimen) if specimen else readable[0]
        photos = [
            ReviewPhoto(record["path"], None, record, reasons_of(record, settings),
                        margin_of(record))
            for record in readable
        ]  # fmt: skip
        own = reasons_of(answer, settings) if specimen and answer is not None else []
        if not own and not any(photo.reasons for photo in photos):
            continue
        left_out = [
            (record["path"], _why_left_out(record))
            for record in records
            if record.get("status") != "ok"
        ]
        items.append(ReviewItem(specimen, answer, photos, own, left_out))
    return items


def _why_left_out(record: dict[str, Any]) -> str:
    reasons = (record.get("quality") or {}).get("reasons") or []
    if record.get("status") == RETAKE:
        return "retake: " + (", ".join(reasons) or "photo quality")
    return str(record.get("status"))


def _count_reasons(items: list[ReviewItem]) -> Counter:
    counts: Counter = Counter()
    for item in items:
        counts.update(reason.key for reason in item.reasons)
        counts.update(reason.key for photo in item.photos for reason in photo.reasons)
    return counts


# --- reading --------------------------------------------------------------------------------------


def load_predictions(path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The image and specimen records of a predict or verify output (the specimens from
    ``<stem>.specimens.<suffix>`` beside a CSV or JSONL; none when that file is absent).

    Raises:
        JianmuError: not found, unreadable, another suffix, or not a jianmu predict output.
    """
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise JianmuError(f"{path}: expected a predict or verify output (.csv, .jsonl or .json)")
    text = _read_text(path)
    try:
        if suffix == ".json":
            document = json.loads(text)
            return list(document["images"]), list(document.get("specimens") or [])
        images = _parse(text, suffix, path)
        beside = specimens_path(path)
        specimens = _parse(_read_text(beside), suffix, beside) if beside.is_file() else []
    except (ValueError, KeyError, TypeError) as error:
        raise JianmuError(
            f"{path}: not a jianmu predict or verify output ({type(error).__name__}: {error})"
        ) from None
    return images, specimens


def _read_text(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8-sig")
    except FileNotFoundError:
        raise JianmuError(f"predictions not found: {path}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise JianmuError(f"cannot read {path}: {error}") from None


def _parse(text: str, suffix: str, path: Path) -> list[dict[str, Any]]:
    if suffix == ".jsonl":
        lines = text.splitlines()
        if lines and not text.endswith("\n"):
            lines = lines[:-1]  # a last line cut short by a crash
        return [json.loads(line) for line in lines if line.strip()]
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = reader.fieldnames or []
    if "path" in header:
        return [from_row(row) for row in reader if row.get("path")]
    if "specimen" in header and path.name.endswith(f".specimens{suffix}"):
        # specimen rows have no path; from_row reads their candidates and decision the same way
        return [from_row({**row, "path": ""}) for row in reader if row.get("specimen")]
    raise ValueError("no 'path' column")


def _run_of(predictions: Path) -> tuple[dict[str, Any], dict[str, str], list[str]]:
    """What the inspection record beside the predictions says of the run, its inputs' absolute
    paths, and a warning when there is none."""
    path = record_path(predictions)
    if not path.is_file():
        why = f"no inspection record {path.name} beside the predictions"
        return {}, {}, [f"{why}: the import's provenance will lack the run and the model's hash"]
    record = load_record(path)
    model = record.get("model") or {}
    run = {
        "record": str(path),
        "record_sha256": record.get("record_sha256"),
        "created": record.get("created"),
        "command": record.get("command"),
        "operator": record.get("operator"),
        "model": model.get("path"),
        "model_sha256": model.get("sha256"),
    }
    inputs = {entry["path"]: entry["abs"] for entry in record.get("inputs") or [] if "abs" in entry}
    return run, inputs, []


def _find_photo(path: str, predictions: Path, inputs: dict[str, str]) -> Path | None:
    """The photo a predictions row names: absolute as the record resolved it, as written, or
    relative to the predictions file."""
    candidates = [Path(inputs[path])] if path in inputs else []
    given = Path(path).expanduser()
    candidates += [given] if given.is_absolute() else [given, predictions.parent / given]
    return next((found.absolute() for found in candidates if found.is_file()), None)


def _add_thumbnail(result: ReviewResult, photo: ReviewPhoto) -> None:
    if photo.file is None:
        result.missing[photo.path] = "photo not found"
        return
    try:
        picture, _ = open_image(photo.file, THUMBNAIL_SIZE)
    except ImageDecodeError as error:
        result.missing[photo.path] = error.reason
        return
    result.thumbnails[photo.path] = thumbnail_jpeg(picture)


def _names(config: Config, images: list[dict[str, Any]]) -> list[tuple[str, str | None]]:
    """The taxonomy's species (labelled with their Chinese names) and synonyms, then the model's
    candidates outside it: what the page offers as the expert types."""
    taxonomy = load_taxonomy(config.data.taxonomy or config.data.domain)
    names: dict[str, str | None] = {s.name: s.chinese_name for s in taxonomy.species}
    for species in taxonomy.species:
        for synonym in species.synonyms:
            names.setdefault(synonym, f"synonym of {species.name}")
    for record in images:
        for entry in record.get("top") or []:
            names.setdefault(entry.get("species") or entry["class"], None)
    return list(names.items())


def _refuse_reviewed_work(path: Path) -> None:
    """An expert's names in ``path`` are never written over."""
    if not path.is_file():
        return
    named = sum(1 for row in load_reviewed(path) if row.taxon)
    if named:
        raise JianmuError(
            f"{path} holds {named} reviewed row(s); import it (jianmu data import) or move it "
            "away before writing a new review there"
        )
