"""``jianmu predict``: classify folders of field photos with any model form, streaming the results.

:func:`predict` opens a model (ONNX bundle, TorchScript bundle, checkpoint or run folder), finds
the INPUTs (:func:`jianmu.data.inputs.find_inputs`: image files, folders searched recursively,
``.txt``/``.lst`` lists of paths), runs the model over them with the one runner
(:meth:`jianmu.bundle.ModelBundle.stream`: decoding in a thread pool while the model runs, large
JPEGs draft-decoded) and writes each batch's rows as soon as it is done
(:mod:`jianmu.report.predict_files`). Only counts, per-specimen sums and, when asked for, the image
records are kept: never a probability matrix. With an ONNX bundle nothing here imports torch.

Every input gets exactly one record, readable or not; ``status`` is ``ok`` or why the file could
not be read ("not found", "zero-byte file", "not an image", "truncated image", "too large (...)",
"cannot read (Permission denied)", ...). Specimens are rolled up with the one rule of
:mod:`jianmu.verdict`, the rule ``jianmu eval`` measures.
"""

from __future__ import annotations

import io
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

from jianmu.bundle import ModelBundle, load_model
from jianmu.config import Config
from jianmu.data.declarations import Declarations
from jianmu.data.images import ImageDecodeError, decode_image, read_image_bytes
from jianmu.data.inputs import InputImage, find_inputs, path_key
from jianmu.data.preprocess import decode_size, preprocess_measured
from jianmu.data.quality import QualityGate, described
from jianmu.data.samples import class_index
from jianmu.data.spec import TransformSpec
from jianmu.data.stream import Batch, Decode, Decoded
from jianmu.errors import JianmuError
from jianmu.outputs import Prediction
from jianmu.record import build_record, bytes_sha256, input_entry, record_path, write_record
from jianmu.report.predict_files import ResultWriter, output_format, read_results
from jianmu.taxonomy import Declared
from jianmu.verdict import (
    DECISIONS,
    IDENTIFIED,
    RANKS,
    RETAKE,
    UNKNOWN_RANK,
    Lineages,
    SpecimenRollup,
    declaration_decision,
    other_share,
    rank_verdict,
    taxon_label,
    top_k,
)

THUMBNAIL_SIZE = 128
Progress = Callable[[int, int], None]


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
    record: dict[str, Any] | None = None
    """The sealed inspection record written (see :mod:`jianmu.record`), if any."""

    @property
    def failed(self) -> int:
        return len(self.failures)


class PredictInterrupted(KeyboardInterrupt):
    """Ctrl-C during :func:`predict`, raised after the partial results were saved."""

    def __init__(self, result: PredictResult) -> None:
        super().__init__("interrupted")
        self.result = result


def predict(
    config: Config,
    model: str | Path | ModelBundle,
    inputs: Sequence[str | Path],
    progress: Progress | None = None,
    keep_images: bool = True,
    declarations: Declarations | None = None,
) -> PredictResult:
    """Classify every image of ``inputs``; write ``out`` (.csv, .json or .jsonl) and
    ``predict.html``, as the ``predict:`` settings say (top_k, tta, batch_size, workers,
    specimen_pattern, resume).

    Args:
        model: an ONNX or TorchScript bundle, a checkpoint, a run folder, or a loaded bundle.
        inputs: image files (always classified, whatever their name), folders (searched
            recursively for image extensions, natural order) and ``.txt``/``.lst`` lists (one path
            per line, relative to the list's folder; blank and ``#`` lines skipped).
        progress: called as ``progress(done, total)`` after each batch.
        keep_images: keep the image records in the result (always kept for JSON and HTML output;
            the command line passes False with ``--out`` so that its memory stays flat).
        declarations: what each image or specimen is declared to be (``jianmu verify``): every
            record then says whether its answer bears the declaration out.

    Raises:
        JianmuError: bad model, no inputs, unknown output suffix, an unusable ``--resume`` file.
        PredictInterrupted: Ctrl-C; the rows done so far are saved (``out``, ``html``).
    """
    started = time.perf_counter()
    settings = config.predict
    out = Path(config.out) if config.out is not None else None
    if out is not None:
        output_format(out)
    if settings.resume and out is None:
        raise JianmuError("--resume needs --out: the results file to continue")
    write_html = _html_writer() if settings.html is not None else None
    found = find_inputs(inputs, settings.specimen_pattern)
    previous = read_results(out) if settings.resume and out.exists() else []
    done = {path_key(record["path"]) for record in previous}
    todo = [image for image in found.images if path_key(image.path) not in done]
    bundle = model if isinstance(model, ModelBundle) else load_model(model)
    labels = build_labels(config, bundle, declarations)
    views = labels.views
    as_document = out is not None and output_format(out) == ".json"
    keep_images = keep_images or settings.html is not None or as_document
    record_file = _record_file(config)
    tally = _Tally(labels, keep_images, keep_record=record_file is not None)
    for record in previous:
        tally.add(labels.check(record, out))
    writer = None
    if out is not None:
        writer = ResultWriter(out, labels.top_k, bool(previous), declarations is not None)
    thumbnails: dict[str, bytes] = {}
    with_thumbnails = settings.html is not None
    batches = bundle.stream(
        (image.path for image in todo), views, settings.batch_size, settings.workers,
        decode=_decoder(with_thumbnails, bundle.min_image_side, config.data.read_timeout),
    )  # fmt: skip

    def record(batch, logits, embeddings) -> None:
        prediction = bundle.predict_outputs(logits, embeddings, views) if len(logits) else None
        inputs = tally.inputs if tally.keep_record else None
        records = labels.records(batch, todo, prediction, thumbnails, inputs)
        for each in records:
            tally.add(each)
        if writer is not None:
            writer.write(records)
        if progress:
            progress(batch.start + len(batch.paths), len(todo))

    if progress:
        progress(0, len(todo))
    interrupted = _consume(batches, record)
    seconds = time.perf_counter() - started
    counts = {"skipped": found.skipped, "resumed": len(previous), "interrupted": interrupted}
    result = conclude(config, bundle, model, tally, seconds, len(todo), counts)
    result.interrupted = interrupted
    summary = result.summary
    if writer is not None:
        result.files += writer.finish(result.images, result.specimens, summary)
    sealed = None
    if record_file is not None:
        sealed = inspection_record(config, bundle, model, tally, result, declarations is not None)
        summary["record_sha256"] = sealed["record_sha256"]
    if write_html is not None:
        page = write_html(settings.html, result.images, result.specimens, summary, thumbnails)
        result.files.append(Path(page))
    if sealed is not None:
        result.files.append(write_record(record_file, sealed))
        result.record = sealed
    if interrupted:
        raise PredictInterrupted(result)
    return result


def build_labels(
    config: Config, bundle: ModelBundle, declarations: Declarations | None = None
) -> Labels:
    """What the records of ``bundle`` say, as the settings say: ``predict.top_k``, the views of
    ``predict.tta`` and the quality gate when ``quality.gate`` is on."""
    views = bundle.tta_views if config.predict.tta else 1
    gate = bundle.quality_gate if config.quality.gate else None
    top = max(1, min(config.predict.top_k, bundle.num_classes))
    return Labels(bundle, top, views, declarations, gate)


def conclude(
    config: Config,
    bundle: ModelBundle,
    model: str | Path | ModelBundle,
    tally: _Tally,
    seconds: float,
    processed: int,
    counts: dict[str, Any],
) -> PredictResult:
    """The result of the records tallied: the specimen roll-ups and the summary (``counts`` of the
    caller's own, the quality gate, the gallery, warnings, regulated specimens, and the
    declaration decisions when verifying). ``jianmu predict`` and ``jianmu serve`` end alike."""
    labels = tally.labels
    summary = tally.summary(bundle, model, seconds, processed, labels.views)
    summary |= counts
    summary["quality_gate"] = _gate_state(config, labels.gate)
    described_gallery = bundle.meta.get("gallery") if labels.gallery is not None else None
    summary["gallery"] = (
        {key: described_gallery.get(key) for key in ("per_class", "count", "licence")}
        if described_gallery
        else None
    )
    if summary["quality_gate"] == "not in model":
        why = (bundle.meta.get("quality") or {}).get("note") or "trained before the gate"
        summary["warnings"].append(f"the model has no photo-quality bounds ({why}): not checked")
    specimens = tally.specimen_records()
    summary["regulated_specimens"] = tally.regulated_specimens(specimens)
    if labels.declarations is not None:
        summary |= decision_summary(specimens, tally.images)
    result = PredictResult(tally.images, specimens, summary, tally.failures)
    result.species = {name: labels.details(name) for name in summary["per_species"]}
    return result


def judge(
    config: Config,
    bundle: ModelBundle,
    labels: Labels,
    decoded: tuple[Batch, np.ndarray, np.ndarray],
    images: list[InputImage],
    inputs: list[dict[str, Any]],
    thumbnails: dict[str, bytes],
    model_hash: str | None = None,
    seconds: float = 0.0,
) -> PredictResult:
    """The photos of one batch (``decoded``: the batch and the model's logits and embeddings of
    its readable photos) judged and concluded as :func:`predict` judges a run, with the sealed
    inspection record of them (``inputs``: their record entries): one request of ``jianmu
    serve``. Nothing is written."""
    batch, logits, embeddings = decoded
    tally = _Tally(labels, keep_images=True, keep_record=True)
    prediction = bundle.predict_outputs(logits, embeddings, labels.views) if len(logits) else None
    for record in labels.records(batch, images, prediction, thumbnails):
        tally.add(record)
    tally.inputs = inputs
    result = conclude(config, bundle, bundle, tally, seconds, len(images), {})
    verifying = labels.declarations is not None
    result.record = inspection_record(config, bundle, bundle, tally, result, verifying, model_hash)
    result.summary["record_sha256"] = result.record["record_sha256"]
    return result


def _consume(batches: Iterator, handle: Callable[..., None]) -> bool:
    """Hand each batch to ``handle`` until the end, or until Ctrl-C (True): a Ctrl-C is taken
    between batches, so that no row is cut in half."""
    try:
        # Images over the size limit are refused with a reason in their row; Pillow's warning
        # about them would only clutter the screen.
        with _deferred_interrupt() as stop, warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            for batch in batches:
                handle(*batch)
                if stop.is_set():
                    raise KeyboardInterrupt
    except KeyboardInterrupt:
        return True
    finally:
        batches.close()
    return False


# --- decoding -------------------------------------------------------------------------------------


def _decoder(with_thumbnail: bool, min_side: int, timeout: float) -> Decode:
    """The decode function of the thread pool: the file read within ``timeout`` seconds and
    hashed (SHA-256 of the bytes read, for the inspection record), refused when its shorter side
    is under ``min_side`` (too small to judge), preprocessed and measured for the quality gate;
    and, for the HTML page, a JPEG thumbnail made from the already decoded (draft-reduced)
    picture."""

    def decode(path: Path, spec: TransformSpec) -> Decoded:
        return decode_photo(read_image_bytes(path, timeout), path, spec, min_side, with_thumbnail)

    return decode


def decode_photo(
    data: bytes, name: Path, spec: TransformSpec, min_side: int, with_thumbnail: bool = False
) -> Decoded:
    """A photo's bytes (read from a file, or received by ``jianmu serve``) hashed, decoded,
    refused when too small to judge, preprocessed and measured; ``name`` only names it in errors.

    Raises:
        ImageDecodeError: zero bytes, not an image, truncated, too large, too small to judge.
    """
    kept: dict[str, Any] = {"sha256": bytes_sha256(data), "bytes": len(data)}
    picture, probe = decode_image(data, name, decode_size(spec))
    if probe.too_small(min_side):
        size = f"{probe.width}x{probe.height} px"
        raise ImageDecodeError(name, f"too small to judge ({size}; under {min_side} px)")
    if with_thumbnail:
        kept["thumbnail"] = thumbnail_jpeg(picture)
    image, quality = preprocess_measured(np.asarray(picture), spec, probe)
    return Decoded(image, quality, kept)


def thumbnail_jpeg(picture) -> bytes:
    small = picture.copy()
    small.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE))
    buffer = io.BytesIO()
    small.save(buffer, format="JPEG", quality=80)
    return buffer.getvalue()


# --- the inspection record ------------------------------------------------------------------------

DECISION_KEYS = (
    "path", "specimen", "status", "verdict", "rank", "taxon", "top", "unknown_score", "flags",
    "possible_flags", "declared", "decision", "reason",
)  # fmt: skip


def decision_of(record: dict[str, Any]) -> dict[str, Any]:
    """What the inspection record keeps of an image's record: the answer, its probabilities as
    written, its flags, the quality gate's reasons and the declaration's decision."""
    kept = {key: record[key] for key in DECISION_KEYS if key in record}
    kept["quality_reasons"] = (record.get("quality") or {}).get("reasons") or []
    return kept


def _gate_state(config: Config, gate: QualityGate | None) -> str:
    if not config.quality.gate:
        return "off"
    return "on" if gate is not None else "not in model"


def _record_file(config: Config) -> Path | None:
    """Where the inspection record goes: ``predict.record``, else beside ``out`` (or the HTML
    page) as ``<stem>.record.json``; None when the run writes no file."""
    settings = config.predict
    if settings.record is not None:
        return Path(settings.record)
    beside = config.out if config.out is not None else settings.html
    return record_path(beside) if beside is not None else None


def rule_settings(config: Config, bundle: ModelBundle, labels: Labels) -> dict[str, Any]:
    """The rules and thresholds a model's answers are given by, as the settings say."""
    ranks = bundle.meta.get("ranks") or {}
    return {
        "top_k": labels.top_k,
        "tta": config.predict.tta,
        "views": labels.views,
        "unknown_rule": bundle.calibration(labels.views).rule,
        "species_threshold": labels.threshold,
        "rank_thresholds": ranks.get("thresholds", {}).get(str(labels.views)),
        "max_wrong_rate": ranks.get("max_wrong_rate"),
        "quality_gate": _gate_state(config, labels.gate),
        "quality_bounds": labels.gate.bounds if labels.gate is not None else None,
        "min_image_side": bundle.min_image_side,
    }


def inspection_record(
    config: Config,
    bundle: ModelBundle,
    model,
    tally: _Tally,
    result: PredictResult,
    verify: bool,
    model_hash: str | None = None,
) -> dict[str, Any]:
    """The sealed record of this call (:func:`jianmu.record.build_record`): the inputs processed
    here with their hashes, the model with its hash (``model_hash`` when already known) and
    metadata version, the rules and thresholds in force, and every decision."""
    meta = bundle.meta
    settings = {
        **rule_settings(config, bundle, tally.labels),
        "specimen_pattern": config.predict.specimen_pattern,
        "declared": config.verify.declared,
        "declarations": str(config.verify.declarations) if config.verify.declarations else None,
    }
    export = meta.get("export") or {}
    model_info = {
        "format": bundle.kind,
        "bundle_format": meta.get("format"),
        "exported": export.get("date"),
        "classes": bundle.num_classes,
        "trained_with": {
            key: meta.get(key) for key in ("jianmu_version", "timm_version", "torch_version")
        },
        "manifest_sha256": meta.get("manifest_sha256"),
        "extended": bundle.extension_summary(),
    }
    path = bundle.path if isinstance(model, ModelBundle) else Path(model)
    summary = {key: value for key, value in result.summary.items() if key != "record_sha256"}
    return build_record(
        command="verify" if verify else "predict",
        model_path=path,
        model_info=model_info,
        settings=settings,
        inputs=tally.inputs,
        images=tally.decisions,
        specimens=result.specimens,
        summary=summary,
        operator=config.predict.operator,
        device=config.predict.device,
        model_hash=model_hash,
    )


# --- records --------------------------------------------------------------------------------------


def failed_record(image: InputImage, reason: str) -> dict[str, Any]:
    """The record of a file that could not be read: ``status`` says why; no answer."""
    return {
        "path": str(image.path), "specimen": image.specimen, "status": reason, "verdict": None,
        "rank": None, "taxon": None, "top": [], "other": None, "unknown_score": None,
        "threshold": None, "species": None, "chinese_name": None, "genus": None, "family": None,
        "flags": [], "possible_flags": [], "evidence": {}, "quality": None,
    }  # fmt: skip


def retake_record(image: InputImage, quality: dict[str, Any]) -> dict[str, Any]:
    """The record of a photo the quality gate sends back: ``status: retake``, why in
    ``quality["reasons"]``, and no answer (never a species)."""
    return {**failed_record(image, RETAKE), "quality": quality}


def decision_summary(specimens: list[dict], images: list[dict]) -> dict[str, Any]:
    """Decisions per specimen (and per image of no specimen), and the regulatory consequences,
    the certain ones first."""
    units = [*specimens, *(record for record in images if record.get("specimen") is None)]
    counts = Counter(record.get("decision") for record in units if record.get("decision"))
    consequences = [
        {"specimen": record.get("specimen") or record.get("path"), "consequence": text}
        for record in units
        if (text := record.get("consequence"))
    ]
    consequences.sort(key=lambda found: "possibly" in found["consequence"])
    return {
        "decisions": {decision: counts[decision] for decision in DECISIONS},
        "consequences": consequences,
    }


def _consequence(record: dict[str, Any], declared: Declared, decision: str) -> str | None:
    """What the answer means for the regulations, when the declaration does not say it: a flag
    certain at the answered rank that the declared taxon lacks, or a possible one."""
    if decision == "consistent":
        return None
    new = [flag for flag in record.get("flags") or [] if flag not in declared.flags]
    possible = record.get("possible_flags") or []
    if not new and not (possible and not declared.flags):
        return None
    said = "; ".join(declared.flags) or "not listed"
    looks = "; ".join(new) if new else "; ".join(possible)
    return f"declared {declared.label} ({said}); looks like {record.get('taxon')} ({looks})"


def answer_rank(record: dict[str, Any]) -> str | None:
    """The rank a record answers at; records of before ranks answered species or unknown."""
    if record.get("status", "ok") != "ok":
        return None
    if record.get("rank"):
        return record["rank"]
    return "species" if record.get("verdict") == IDENTIFIED else UNKNOWN_RANK


class Labels:
    """What a record says about each class and each answer: names, taxonomy details, regulatory
    flags (certain, and possible at a genus or family); and the species threshold in force."""

    def __init__(
        self,
        bundle: ModelBundle,
        top_k: int,
        views: int,
        declarations: Declarations | None = None,
        gate: QualityGate | None = None,
    ) -> None:
        self.declarations = declarations
        self.gate = gate
        self.views = views
        self.gallery = bundle.gallery
        self.classes = bundle.classes
        self.species = bundle.species
        self.entries = bundle.taxonomy_entries
        self.index = class_index(self.classes)
        self.top_k = top_k
        threshold = bundle.calibration(views).threshold
        # None in the files when no image can be answered at the species rank (JSON: no inf)
        self.threshold = threshold if threshold is None or np.isfinite(threshold) else None
        hierarchy = bundle.meta.get("hierarchy") or {}
        self.lineage = hierarchy.get("lineage") or [{} for _ in self.classes]
        self.rank_flags = hierarchy.get("flags") or {}
        self.lineages = Lineages(self.classes, self.lineage)

    def records(
        self,
        batch,
        todo: list[InputImage],
        prediction,
        thumbnails: dict,
        inputs: list[dict] | None = None,
    ) -> list[dict]:
        """The records of one batch, in input order; the thumbnails of readable images are kept,
        and every input's hash (None: not read) is added to ``inputs`` when given."""
        records = []
        references = self.references(prediction, thumbnails)
        row = 0  # prediction rows exist for the readable images only
        for position, path in enumerate(batch.paths):
            image = todo[batch.start + position]
            kept = batch.extras[position] or {}
            if inputs is not None:
                inputs.append(input_entry(path, kept.get("sha256"), kept.get("bytes")))
            if not batch.ok[position]:
                records.append(self.declare(failed_record(image, batch.errors[position]), image))
                continue
            measures = batch.quality[position]
            reasons = self.gate.reasons(measures) if self.gate is not None else []
            quality = described(measures, reasons)
            if reasons:
                records.append(self.declare(retake_record(image, quality), image))
            else:
                answer = self.record(image, prediction, row, quality, references[row])
                records.append(self.declare(answer, image))
            row += 1
            if "thumbnail" in kept:
                thumbnails[str(path)] = kept["thumbnail"]
        return records

    def references(self, prediction: Prediction | None, thumbnails: dict) -> list[list]:
        """Per readable image of a batch and top-k candidate, the bundle's reference photo of
        that class nearest to the image (``[]`` without a gallery); their JPEGs go to
        ``thumbnails`` as ``reference:<n>`` for the page."""
        if prediction is None or self.gallery is None:
            return [[] for _ in range(0 if prediction is None else len(prediction.probabilities))]
        candidates = np.stack([top_k(row, self.top_k) for row in prediction.probabilities])
        found = self.gallery.nearest(prediction.embeddings, candidates)
        for reference in (ref for row in found for ref in row if ref is not None):
            thumbnails.setdefault(f"reference:{reference.index}", reference.jpeg)
        return found

    def record(
        self,
        image: InputImage,
        prediction: Prediction,
        row: int,
        quality: dict[str, Any],
        references: list | None = None,
    ) -> dict[str, Any]:
        probabilities = prediction.probabilities[row]
        best = top_k(probabilities, self.top_k)
        references = references or [None] * len(best)
        top = [
            {"class": self.classes[i], "species": self.species[i],
             "probability": round(float(probabilities[i]), 6),
             **({"reference": {"photo": ref.source, "index": ref.index,
                               "distance": ref.distance}} if ref is not None else {})}
            for i, ref in zip(best, references, strict=True)
        ]  # fmt: skip
        score = float(prediction.scores[row])
        rank, taxon = prediction.rank[row], prediction.taxon[row]
        return {
            "path": str(image.path),
            "specimen": image.specimen,
            "status": "ok",
            "verdict": rank_verdict(rank),
            "rank": rank,
            "taxon": taxon_label(rank, taxon),
            "top": top,
            "other": other_share(probabilities[best]),
            # unrounded, so that the verdict reads as score >= threshold from the file alone
            "unknown_score": None if np.isnan(score) else score,
            "threshold": self.threshold,
            **self.answer(rank, taxon, self.classes[best[0]]),
            "evidence": prediction.evidence[row],
            "quality": quality,
        }

    def answer(self, rank: str | None, taxon: str | None, top_class: str) -> dict[str, Any]:
        """Names and flags of an answer: a species answer has its class's; a genus or family
        answer states a flag only when every species of the taxon carries it, and the rest as
        possible; an unknown answer states none."""
        if rank == "species":
            return {**self.details(top_class), "possible_flags": []}
        lineage = self.lineages.of_answer(rank, taxon)
        found = self.rank_flags.get(rank, {}).get(taxon, {}) if rank in ("genus", "family") else {}
        return {
            "species": None,
            "chinese_name": None,
            "genus": lineage["genus"],
            "family": lineage["family"],
            "flags": list(found.get("flags") or []),
            "possible_flags": list(found.get("possible") or []),
        }

    def details(self, name: str | None) -> dict[str, Any]:
        """Scientific and Chinese name, genus, family and flags of class ``name``."""
        index = self.index.get(name) if name is not None else None
        entry = self.entries[index] if index is not None else None
        lineage = self.lineage[index] if index is not None else {}
        return {
            "species": (entry or {}).get("name") or lineage.get("species"),
            "chinese_name": (entry or {}).get("chinese_name"),
            "genus": (entry or {}).get("genus") or lineage.get("genus"),
            "family": (entry or {}).get("family") or lineage.get("family"),
            "flags": list((entry or {}).get("flags") or []),
        }

    def taxon_of(self, record: dict[str, Any], rank: str | None) -> str | None:
        """The taxon a record answers at ``rank`` (a species answer of a record written before
        ranks: its top class's species)."""
        if rank not in RANKS:
            return None
        taxon = record.get(rank)
        if taxon is None and rank == "species" and record.get("top"):
            taxon = self.lineages.of_class.get(record["top"][0]["class"], {}).get("species")
        return taxon

    def declare(self, record: dict[str, Any], image: InputImage) -> dict[str, Any]:
        """``record`` with its declaration and what its answer says of it, when verifying."""
        if self.declarations is None:
            return record
        return {**record, **self.judge(record, self.declarations.for_image(image))}

    def judge(self, record: dict[str, Any], declared: Declared | None) -> dict[str, Any]:
        """Declared name, decision, reason and regulatory consequence of an answered record."""
        if declared is None:
            return {"declared": None, "decision": None, "reason": "no declaration",
                    "consequence": None}  # fmt: skip
        rank = answer_rank(record)
        taxon = self.taxon_of(record, rank)
        truth = declared.lineage.to_dict()
        decision, reason = declaration_decision(rank, taxon, truth, declared.rank, self.lineages)
        return {
            "declared": declared.label,
            "decision": decision,
            "reason": reason,
            "consequence": _consequence(record, declared, decision),
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


class _Tally:
    """Counts for the summary and the specimen roll-up, updated one record at a time."""

    def __init__(self, labels: Labels, keep_images: bool, keep_record: bool = False) -> None:
        self.labels = labels
        self.keep_record = keep_record
        self.images: list[dict[str, Any]] = []
        self.keep_images = keep_images
        self.counts: Counter = Counter()
        self.per_species: Counter = Counter()
        self.failures: list[tuple[str, str]] = []
        self.specimens = SpecimenRollup(labels.classes, labels.top_k, labels.lineage)
        self.inputs: list[dict[str, Any]] = []
        """Every input processed in this call: path and SHA-256 (kept for the inspection record
        only when one is written, like :attr:`decisions`)."""
        self.decisions: list[dict[str, Any]] = []
        """Every record's decision, compact."""
        self.reasons: Counter = Counter()

    def add(self, record: dict[str, Any]) -> None:
        if self.keep_images:
            self.images.append(record)
        self.counts["images"] += 1
        top = [(entry["class"], entry["probability"]) for entry in record.get("top") or []]
        rank = answer_rank(record)
        retake = record["status"] == RETAKE
        taxon = self.labels.taxon_of(record, rank)
        self.specimens.add(record.get("specimen"), top, rank, taxon, retake)
        if self.keep_record:
            self.decisions.append(decision_of(record))
        if retake:
            self.counts["retake"] += 1
            self.reasons.update((record.get("quality") or {}).get("reasons") or [])
            return
        if record["status"] != "ok":
            self.counts["failed"] += 1
            self.failures.append((record["path"], record["status"]))
            return
        self.counts["ok"] += 1
        self.counts[f"rank_{rank}"] += 1
        self.counts["flagged"] += bool(record.get("flags"))
        self.counts["possibly_flagged"] += bool(record.get("possible_flags")) and not record.get(
            "flags"
        )
        if rank == "species":
            self.counts["identified"] += 1
            self.per_species[top[0][0]] += 1
        else:
            self.counts["unknown"] += 1

    def specimen_records(self) -> list[dict[str, Any]]:
        return [self._specimen_record(specimen) for specimen in self.specimens.results()]

    def _specimen_record(self, specimen) -> dict[str, Any]:
        top = [
            {"class": cls, "species": self.labels.details(cls)["species"],
             "probability": round(share, 6)}
            for cls, share in specimen.top
        ]  # fmt: skip
        names = self.labels.answer(specimen.rank, specimen.taxon, top[0]["class"] if top else "")
        if specimen.rank is None:
            names = {**names, "flags": [], "possible_flags": []}
        record = {
            "specimen": specimen.specimen,
            "images": specimen.images,
            "ok_images": specimen.ok_images,
            "retake_images": specimen.retake_images,
            "verdict": specimen.verdict,
            "rank": specimen.rank,
            "taxon": taxon_label(specimen.rank, specimen.taxon),
            "top": top,
            "other": specimen.other,
            **names,
        }
        declarations = self.labels.declarations
        if declarations is not None:
            rank = record["rank"] or None
            judged = {**record, "status": "ok" if rank else "no readable photo"}
            record |= self.labels.judge(judged, declarations.for_specimen(specimen.specimen))
        return record

    def regulated_specimens(self, specimens: list[dict[str, Any]]) -> dict[str, int]:
        certain = sum(1 for record in specimens if record.get("flags"))
        possible = sum(
            1 for record in specimens if record.get("possible_flags") and not record.get("flags")
        )
        return {"certain": certain, "possible": possible}

    def summary(self, bundle, model, seconds: float, processed: int, views: int) -> dict[str, Any]:
        """The summary of the whole output; speed is of the files processed in this call."""
        calibration = bundle.calibration(views)
        warnings = []
        added = (bundle.extension_summary() or {}).get("added")
        if added:
            warnings.append(
                f"extended model: {len(added)} species added without retraining "
                f"({', '.join(added[:5])}{', ...' if len(added) > 5 else ''})"
            )
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
            "retake": self.counts["retake"],
            "retake_reasons": dict(self.reasons.most_common()),
            "identified": self.counts["identified"],
            "unknown": self.counts["unknown"],
            "ranks": {rank: self.counts[f"rank_{rank}"] for rank in (*RANKS, UNKNOWN_RANK)},
            "per_species": dict(self.per_species.most_common()),
            "flagged": self.counts["flagged"],
            "possibly_flagged": self.counts["possibly_flagged"],
            "specimens": len(self.specimens),
            "seconds": round(seconds, 3),
            "images_per_s": round(processed / seconds, 2) if seconds > 0 else 0.0,
            "tta": views > 1,
            "views": views,
            "top_k": self.labels.top_k,
            "threshold": self.labels.threshold,
            "extended": bundle.extension_summary(),
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
