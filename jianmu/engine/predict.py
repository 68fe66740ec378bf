"""``jianmu predict``: classify folders of field photos with any model form, streaming the results.

:func:`predict` opens a model (ONNX bundle, TorchScript bundle, checkpoint or run folder), finds
the INPUTs (image files, folders searched recursively, ``.txt``/``.lst`` lists of paths), decodes
the images in a thread pool while the model runs (:func:`jianmu.data.stream.stream_batches`; large
JPEGs are draft-decoded) and writes each batch's rows as soon as it is done
(:mod:`jianmu.report.predict_files`). Only counts, per-specimen sums and, when asked for, the image
records are kept: never a probability matrix. With an ONNX bundle nothing here imports torch.

Every input gets exactly one record, readable or not; ``status`` is ``ok`` or why the file could
not be read ("not found", "zero-byte file", "not an image", "truncated image", "too large (...)",
"cannot read (Permission denied)", ...).

Specimens. An image's specimen is the ``specimen`` group (else group 1, else the whole match) of
``specimen_pattern`` searched in its file name; without a match, the first sub-folder under the
INPUT folder the image was found in (prefixed ``<folder name>/`` when several INPUT folders are
given). Images lying directly in an INPUT folder, and files named one by one, belong to no
specimen (``specimen`` is None) and get no roll-up row. A specimen's ``top`` is the mean, over
its readable images, of their top-k calibrated probabilities (a class outside an image's top-k
counts 0 for it), so the roll-up can be recomputed from the output file alone and ``--resume``
gives the same roll-up as one uninterrupted run. A specimen is ``identified`` when more than half
of its readable images are identified *with the specimen's top class as their own top-1*;
otherwise (images that disagree, too many unknowns, a tie) it is ``unknown - refer to lab``.
"""

from __future__ import annotations

import io
import os
import re
import signal
import threading
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from jianmu.bundle import DIHEDRAL_VIEWS, ModelBundle, load_model
from jianmu.config import IMAGE_EXTENSIONS
from jianmu.data.images import ImageDecodeError, load_image
from jianmu.data.preprocess import decode_size, preprocess
from jianmu.data.samples import compile_specimen_pattern, natural_key
from jianmu.data.spec import TransformSpec
from jianmu.data.stream import default_workers, stream_batches
from jianmu.errors import JianmuError
from jianmu.report.predict_files import ResultWriter, output_format, read_results

IDENTIFIED = "identified"
UNKNOWN_VERDICT = "unknown - refer to lab"  # the words of jianmu.engine.evaluate.UNKNOWN_VERDICT
LIST_SUFFIXES = (".txt", ".lst")
THUMBNAIL_SIZE = 128
# Images per batch by model form. Measured end to end on a 2-core CPU (resnet18 and
# mobilenetv3_large_100 ONNX, 1600x1200 and 4000x3000 JPEGs): 32 beat 8 and 16 by 5-25%; 64 was
# a little faster again but doubles the preprocessed images held in flight.
BATCH_SIZES = {"onnx": 32, "torchscript": 32, "checkpoint": 32}
Progress = Callable[[int, int], None]


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


@dataclass
class PredictResult:
    """What :func:`predict` did. ``images`` holds every record of the output (resumed ones first)
    unless ``keep_images=False``; ``failures`` (path, reason) is always complete."""

    images: list[dict[str, Any]]
    specimens: list[dict[str, Any]]
    summary: dict[str, Any]
    failures: list[tuple[str, str]]
    files: list[Path] = field(default_factory=list)
    """Files written: the output (and its specimen file), the HTML page."""
    interrupted: bool = False
    species: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per identified class: species, Chinese name, genus, family, flags (for tables)."""

    @property
    def failed(self) -> int:
        return len(self.failures)


class PredictInterrupted(KeyboardInterrupt):
    """Ctrl-C during :func:`predict`, raised after the partial results were saved."""

    def __init__(self, result: PredictResult) -> None:
        super().__init__("interrupted")
        self.result = result


def predict(
    model: str | Path | ModelBundle,
    inputs: Sequence[str | Path],
    out: str | Path | None = None,
    html: str | Path | None = None,
    top_k: int = 3,
    tta: bool = False,
    specimen_pattern: str | None = None,
    resume: bool = False,
    batch_size: int | None = None,
    workers: int | None = None,
    progress: Progress | None = None,
    keep_images: bool = True,
) -> PredictResult:
    """Classify every image of ``inputs``; write ``out`` (.csv, .json or .jsonl) and ``html``.

    Args:
        model: an ONNX or TorchScript bundle, a checkpoint, a run folder, or a loaded bundle.
        inputs: image files (always classified, whatever their name), folders (searched
            recursively for image extensions, natural order) and ``.txt``/``.lst`` lists (one path
            per line, relative to the list's folder; blank and ``#`` lines skipped).
        top_k: species per image (at most the number of classes); the rest is ``other``.
        tta: average the 8 flips and quarter turns of each image (8x the model time).
        resume: skip the files already in ``out`` and append to it.
        batch_size: default :data:`BATCH_SIZES` of the model form.
        workers: decoding threads (default :func:`jianmu.data.stream.default_workers`).
        progress: called as ``progress(done, total)`` after each batch.
        keep_images: keep the image records in the result (always kept for JSON and HTML output;
            the command line passes False with ``--out`` so that its memory stays flat).

    Raises:
        JianmuError: bad model, no inputs, unknown output suffix, an unusable ``--resume`` file.
        PredictInterrupted: Ctrl-C; the rows done so far are saved (``out``, ``html``).
    """
    started = time.perf_counter()
    out = Path(out) if out is not None else None
    if out is not None:
        output_format(out)
    if resume and out is None:
        raise JianmuError("--resume needs --out: the results file to continue")
    write_html = _html_writer() if html is not None else None
    found = find_inputs(inputs, specimen_pattern)
    previous = read_results(out) if resume and out.exists() else []
    done = {_path_key(record["path"]) for record in previous}
    todo = [image for image in found.images if _path_key(image.path) not in done]
    bundle = model if isinstance(model, ModelBundle) else load_model(model)
    views = DIHEDRAL_VIEWS if tta else 1
    labels = _Labels(bundle, max(1, min(top_k, bundle.num_classes)), views)
    as_document = out is not None and output_format(out) == ".json"
    keep_images = keep_images or html is not None or as_document
    tally = _Tally(labels, keep_images)
    for record in previous:
        tally.add(labels.check(record, out))
    writer = ResultWriter(out, labels.top_k, append=bool(previous)) if out is not None else None
    thumbnails: dict[str, bytes] = {}
    batches = stream_batches(
        (image.path for image in todo),
        bundle.spec,
        batch_size or BATCH_SIZES.get(bundle.kind, 32),
        workers or default_workers(),
        decode=_decoder(with_thumbnail=html is not None),
    )
    interrupted = False
    try:
        # Images over the size limit are refused with a reason in their row; Pillow's warning
        # about them would only clutter the screen.
        with _deferred_interrupt() as stop, warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            if progress:
                progress(0, len(todo))
            for batch in batches:
                prediction = bundle.predict(batch.images, views) if len(batch.images) else None
                records = labels.records(batch, todo, prediction, thumbnails)
                for record in records:
                    tally.add(record)
                if writer is not None:
                    writer.write(records)
                if progress:
                    progress(batch.start + len(batch.paths), len(todo))
                if stop.is_set():
                    raise KeyboardInterrupt
    except KeyboardInterrupt:
        interrupted = True
    finally:
        batches.close()
    summary = tally.summary(bundle, model, time.perf_counter() - started, len(todo), tta)
    summary |= {"skipped": found.skipped, "resumed": len(previous), "interrupted": interrupted}
    result = PredictResult(tally.images, tally.specimen_records(), summary, tally.failures)
    result.interrupted = interrupted
    result.species = {name: labels.details(name) for name in summary["per_species"]}
    if writer is not None:
        result.files += writer.finish(result.images, result.specimens, summary)
    if write_html is not None:
        page = write_html(Path(html), result.images, result.specimens, summary, thumbnails)
        result.files.append(Path(page))
    if interrupted:
        raise PredictInterrupted(result)
    return result


# --- inputs ---------------------------------------------------------------------------------------


def find_inputs(inputs: Sequence[str | Path], specimen_pattern: str | None = None) -> Inputs:
    """The images of ``inputs`` in order, each once, with its specimen (see module docstring).

    A path that does not exist is kept: its record says "not found".

    Raises:
        JianmuError: no inputs at all, an unreadable list file, an invalid ``specimen_pattern``.
    """
    pattern = compile_specimen_pattern(specimen_pattern, "--specimen-pattern")
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
            found = [InputImage(path, _pattern_specimen(path, pattern))]
        for image in found:
            key = _path_key(image.path)
            if key not in seen:
                seen.add(key)
                images.append(image)
    if not images:
        where = ", ".join(str(Path(p)) for p in inputs) or "(none given)"
        raise JianmuError(f"no images to classify in {where}")
    return Inputs(images, skipped)


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
    found: list[Path] = []
    skipped = 0
    for current, folders, files in os.walk(folder):
        folders[:] = [name for name in folders if not name.startswith(".")]
        base = Path(current).relative_to(folder)
        for name in files:
            if name.startswith("."):
                continue  # hidden files, e.g. macOS "._IMG_0001.jpg" resource forks
            if Path(name).suffix.lower() in suffixes:
                found.append(base / name)
            else:
                skipped += 1
    found.sort(key=lambda relative: [natural_key(part) for part in relative.parts])
    images = []
    for relative in found:
        specimen = _pattern_specimen(relative, pattern)
        if specimen is None and len(relative.parts) > 1:
            specimen = relative.parts[0]
        if specimen is not None and prefix:
            specimen = f"{folder.name}/{specimen}"
        images.append(InputImage(folder / relative, specimen))
    return images, skipped


def _pattern_specimen(path: Path, pattern: re.Pattern[str] | None) -> str | None:
    if pattern is None:
        return None
    match = pattern.search(path.stem)
    if not match:
        return None
    named = match.groupdict().get("specimen")
    value = named if named is not None else (match.group(1) if pattern.groups else match.group(0))
    return value or None


def _path_key(path: str | Path) -> str:
    return os.path.normcase(os.path.abspath(path))


# --- decoding -------------------------------------------------------------------------------------


def _decoder(with_thumbnail: bool) -> Callable[[Path, TransformSpec], tuple[np.ndarray, Any]]:
    """The decode function of the thread pool: preprocessed image and, for the HTML page, a JPEG
    thumbnail made from the already decoded (draft-reduced) picture."""

    def decode(path: Path, spec: TransformSpec) -> tuple[np.ndarray, bytes | None]:
        _check_readable(path)
        picture = load_image(path, size=decode_size(spec))
        thumbnail = _thumbnail(picture) if with_thumbnail else None
        return preprocess(np.asarray(picture), spec), thumbnail

    return decode


def _check_readable(path: Path) -> None:
    """Name the two reasons an inspector can act on: a wrong path and a file they may not read."""
    try:
        with open(path, "rb"):
            pass
    except FileNotFoundError:
        reason = "not found" if not os.path.lexists(path) else "cannot read (broken link)"
        raise ImageDecodeError(path, reason) from None
    except IsADirectoryError:
        raise ImageDecodeError(path, "not an image (a folder)") from None
    except OSError as error:
        raise ImageDecodeError(path, f"cannot read ({error.strerror or error})") from None


def _thumbnail(picture) -> bytes:
    small = picture.copy()
    small.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE))
    buffer = io.BytesIO()
    small.save(buffer, format="JPEG", quality=80)
    return buffer.getvalue()


# --- records --------------------------------------------------------------------------------------


def failed_record(image: InputImage, reason: str) -> dict[str, Any]:
    """The record of a file that could not be read: ``status`` says why; no verdict."""
    return {
        "path": str(image.path), "specimen": image.specimen, "status": reason, "verdict": None,
        "top": [], "other": None, "unknown_score": None, "threshold": None, "species": None,
        "chinese_name": None, "genus": None, "family": None, "flags": [],
    }  # fmt: skip


class _Labels:
    """What a record says about each class: species name, taxonomy details, regulatory flags;
    and the calibrated threshold of the number of views."""

    def __init__(self, bundle: ModelBundle, top_k: int, views: int) -> None:
        self.classes = bundle.classes
        self.species = bundle.species
        self.entries = bundle.taxonomy_entries
        self.index = {name: i for i, name in enumerate(self.classes)}
        self.top_k = top_k
        self.threshold = bundle.calibration(views).threshold

    def records(self, batch, todo: list[InputImage], prediction, thumbnails: dict) -> list[dict]:
        """The records of one batch, in input order; thumbnails of readable images are kept."""
        records = []
        row = 0  # prediction rows exist for the readable images only
        for position, path in enumerate(batch.paths):
            image = todo[batch.start + position]
            if not batch.ok[position]:
                records.append(failed_record(image, batch.errors[position]))
                continue
            records.append(self.record(image, prediction, row))
            row += 1
            if batch.extras[position] is not None:
                thumbnails[str(path)] = batch.extras[position]
        return records

    def record(self, image: InputImage, prediction, row: int) -> dict[str, Any]:
        probabilities = prediction.probabilities[row]
        best = np.argsort(-probabilities, kind="stable")[: self.top_k]
        top = [
            {"class": self.classes[i], "species": self.species[i],
             "probability": round(float(probabilities[i]), 6)}
            for i in best
        ]  # fmt: skip
        score = float(prediction.scores[row])
        return {
            "path": str(image.path),
            "specimen": image.specimen,
            "status": "ok",
            "verdict": IDENTIFIED if prediction.known[row] else UNKNOWN_VERDICT,
            "top": top,
            "other": _other(probabilities[best]),
            # unrounded, so that the verdict reads as score >= threshold from the file alone
            "unknown_score": None if np.isnan(score) else score,
            "threshold": self.threshold,
            **self.details(top[0]["class"]),
        }

    def details(self, name: str | None) -> dict[str, Any]:
        """Scientific and Chinese name, genus, family and flags of class ``name``."""
        index = self.index.get(name) if name is not None else None
        entry = self.entries[index] if index is not None else None
        species = self.species[index] if index is not None else None
        return {
            "species": (entry or {}).get("name") or species,
            "chinese_name": (entry or {}).get("chinese_name"),
            "genus": (entry or {}).get("genus"),
            "family": (entry or {}).get("family"),
            "flags": list((entry or {}).get("flags") or []),
        }

    def check(self, record: dict[str, Any], out: Path) -> dict[str, Any]:
        """A record read back for ``--resume``, refused when the model has other classes."""
        for entry in record.get("top") or []:
            if entry.get("class") not in self.index:
                raise JianmuError(
                    f"--resume: {out} names class {entry.get('class')!r}, which this model does "
                    f"not have; it was written by another model"
                )
        return record


def _other(shares) -> float:
    """What the top-k shares leave to the other classes (computed before rounding)."""
    return round(max(0.0, 1.0 - float(np.sum(shares))), 6)


@dataclass
class _Specimen:
    images: int = 0
    ok_images: int = 0
    sums: Counter = field(default_factory=Counter)  # class -> sum of top-k probabilities
    votes: Counter = field(default_factory=Counter)  # class -> identified images with it top-1


class _Tally:
    """Counts for the summary and sums for the specimen roll-up, updated one record at a time."""

    def __init__(self, labels: _Labels, keep_images: bool) -> None:
        self.labels = labels
        self.images: list[dict[str, Any]] = []
        self.keep_images = keep_images
        self.counts: Counter = Counter()
        self.per_species: Counter = Counter()
        self.failures: list[tuple[str, str]] = []
        self.specimens: dict[str, _Specimen] = {}

    def add(self, record: dict[str, Any]) -> None:
        if self.keep_images:
            self.images.append(record)
        self.counts["images"] += 1
        name = record.get("specimen")
        specimen = self.specimens.setdefault(name, _Specimen()) if name is not None else None
        if specimen is not None:
            specimen.images += 1
        if record["status"] != "ok":
            self.counts["failed"] += 1
            self.failures.append((record["path"], record["status"]))
            return
        self.counts["ok"] += 1
        top = record["top"]
        identified = record["verdict"] == IDENTIFIED
        if identified:
            self.counts["identified"] += 1
            self.per_species[top[0]["class"]] += 1
            self.counts["flagged"] += bool(record.get("flags"))
        else:
            self.counts["unknown"] += 1
        if specimen is not None:
            specimen.ok_images += 1
            for entry in top:
                specimen.sums[entry["class"]] += entry["probability"]
            if identified:
                specimen.votes[top[0]["class"]] += 1

    def specimen_records(self) -> list[dict[str, Any]]:
        return [self._specimen_record(name, specimen) for name, specimen in self.specimens.items()]

    def _specimen_record(self, name: str, specimen: _Specimen) -> dict[str, Any]:
        order = {cls: i for i, cls in enumerate(self.labels.classes)}
        ranked = sorted(specimen.sums.items(), key=lambda item: (-item[1], order.get(item[0], 0)))
        shares = [(cls, total / specimen.ok_images) for cls, total in ranked[: self.labels.top_k]]
        top = [
            {"class": cls, "species": self.labels.details(cls)["species"],
             "probability": round(share, 6)}
            for cls, share in shares
        ]  # fmt: skip
        best = top[0]["class"] if top else None
        verdict = None
        if best is not None:
            agreeing = specimen.votes[best]
            verdict = IDENTIFIED if 2 * agreeing > specimen.ok_images else UNKNOWN_VERDICT
        return {
            "specimen": name,
            "images": specimen.images,
            "ok_images": specimen.ok_images,
            "verdict": verdict,
            "top": top,
            "other": _other([share for _, share in shares]) if top else None,
            **self.labels.details(best),
        }

    def summary(self, bundle, model, seconds: float, processed: int, tta: bool) -> dict[str, Any]:
        """The summary of the whole output; speed is of the files processed in this call."""
        views = DIHEDRAL_VIEWS if tta else 1
        calibration = bundle.calibration(views)
        warnings = []
        if calibration.rule is None:
            warnings.append("the model has no unknown-species rule: no image goes to the lab")
        elif not calibration.exact:
            warnings.append(f"no unknown threshold fitted for {views} views; using the fitted one")
        return {
            "model": str(bundle.path if isinstance(model, ModelBundle) else model),
            "model_format": bundle.kind,
            "images": self.counts["images"],
            "ok": self.counts["ok"],
            "failed": self.counts["failed"],
            "identified": self.counts["identified"],
            "unknown": self.counts["unknown"],
            "per_species": dict(self.per_species.most_common()),
            "flagged": self.counts["flagged"],
            "specimens": len(self.specimens),
            "seconds": round(seconds, 3),
            "images_per_s": round(processed / seconds, 2) if seconds > 0 else 0.0,
            "tta": tta,
            "top_k": self.labels.top_k,
            "threshold": calibration.threshold,
            "warnings": warnings,
        }


# --- plumbing -------------------------------------------------------------------------------------


@contextmanager
def _deferred_interrupt() -> Iterator[threading.Event]:
    """Ctrl-C sets an event that the batch loop checks, so that no row is cut in half; a second
    Ctrl-C interrupts at once. Outside the main thread signals cannot be caught: nothing changes."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum, frame) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    signal.signal(signal.SIGINT, handler)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None else signal.SIG_DFL)


def _html_writer():
    """``write_predict_html`` of :mod:`jianmu.report.predict_html`, checked before any work."""
    try:
        from jianmu.report.predict_html import write_predict_html
    except ImportError as error:
        raise JianmuError(f"--html is not available in this installation ({error})") from None
    return write_predict_html
