"""``jianmu eval``: metrics an inspector can rely on: per class, per specimen, calibrated, open set.

:func:`evaluate` runs any model form over a folder or a manifest split through the one runner
(:meth:`jianmu.bundle.ModelBundle.run`), applies its calibration as predict does, rolls specimens
up with predict's rule (:mod:`jianmu.verdict`) and writes the report
(:func:`jianmu.report.eval_files.write_eval_report`); :class:`EvalResult` is what it measured.

Settings the config leaves open follow the model: ``eval.tta`` unset means the views the model was
calibrated for, ``data.specimen_pattern`` unset means the pattern it was trained with.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from jianmu import metrics
from jianmu.bundle import ModelBundle, load_model
from jianmu.calibration.apply import calibrated_views
from jianmu.calibration.scores import softmax
from jianmu.config import IMAGE_EXTENSIONS, Config
from jianmu.data.samples import Sample, class_index, find_samples
from jianmu.data.split import read_manifest
from jianmu.engine.splits import data_root
from jianmu.errors import JianmuError
from jianmu.report.eval_files import write_eval_report
from jianmu.report.eval_page import REPORT_HTML
from jianmu.taxonomy import lineage_of, load_taxonomy
from jianmu.verdict import (
    IDENTIFIED,
    RANKS,
    SPECIMEN_RULE,
    UNKNOWN_RANK,
    Lineages,
    SpecimenRollup,
    SpecimenVerdict,
    answer_is_wrong,
    deepest_answer,
    rank_verdict,
    taxon_label,
    top_k,
)

DEFAULT_OUT = Path("eval")


@dataclass
class Misclassified:
    path: str
    true_class: str
    top3: list[tuple[str, float]]  # (class, calibrated probability), best first


@dataclass
class EvalResult:
    """Everything ``jianmu eval`` measured; :func:`jianmu.report.eval_files.write_eval_report`
    turns it into files."""

    model: str
    data: str
    split: str
    classes: list[str]
    species: list[str | None]
    genus: list[str | None]
    family: list[str | None]
    metrics: dict[str, Any]
    """Image level: top-k, balanced accuracy, macro/weighted P/R/F1, per_class (list of dicts),
    genus_top1, family_top1, within_genus_errors, ece_before, ece_after, temperature, count."""
    confusion: np.ndarray
    """Counts, rows = true class, columns = predicted class."""
    reliability_before: list[dict[str, Any]]
    reliability_after: list[dict[str, Any]]
    most_confused: list[tuple[str, str, int]]
    misclassified: list[Misclassified] = field(default_factory=list)
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    specimens: list[SpecimenVerdict] | None = None
    """Each specimen's verdict, as predict gives it (None: every image is its own specimen)."""
    specimen_metrics: dict[str, Any] | None = None
    tta: dict[str, Any] | None = None
    """With TTA: {"views": n, "top1_without": x, "top1_with": y, "gain": y - x}."""
    open_set: dict[str, Any] | None = None
    """The bundle's unknown rule on this data: score, threshold, fraction flagged unknown."""
    open_set_table: list[dict[str, Any]] | None = None
    """Leave-species-out protocol: one row per held-out species and scoring rule."""
    predictions: list[dict[str, Any]] = field(default_factory=list)
    """One row per readable image: path, true class, top-1 and its probability, the unknown-rule
    score and the verdict ("identified" or "unknown - refer to lab")."""
    files: dict[str, Path] = field(default_factory=dict)
    """The report's files by name; ``page`` is its HTML page."""
    page: Path | None = None


def evaluate(config: Config, model: str | Path | ModelBundle) -> EvalResult:
    """Evaluate a run folder, checkpoint or exported bundle on ``data.root`` (all images, or the
    ``eval.split`` of ``data.manifest``); write the report to ``out`` (default ``eval/``).
    Images of species the model does not know measure the unknown rule; unreadable images are
    listed, not fatal."""
    bundle = model if isinstance(model, ModelBundle) else load_model(model)
    root, manifest = data_root(config), config.data.manifest
    views = resolve_views(config, bundle)
    index = class_index(bundle.classes)
    samples = _find_samples(root, manifest, config.eval.split, _specimen_pattern(config, bundle))
    known = [sample for sample in samples if sample.label in index]
    unknown = [sample for sample in samples if sample.label not in index]
    if not known:
        raise JianmuError(f"{root}: no images of the model's {len(index)} classes to evaluate")
    items = [(sample.path, index[sample.label]) for sample in known]
    run = partial(
        bundle.run, batch_size=config.eval.batch_size, read_timeout=config.data.read_timeout
    )
    outputs = run(items, views)
    tta = _tta_gain(run(items, 1), outputs, views) if views > 1 else None
    unreadable = [(str(known[i].path), outputs.errors[i]) for i in np.flatnonzero(~outputs.ok)]
    known = [sample for sample, good in zip(known, outputs.ok, strict=True) if good]
    outputs = outputs.readable()
    prediction = bundle.predict_outputs(outputs.logits, outputs.embeddings, views)
    split = config.eval.split if manifest else "all"
    result = _measure(bundle, outputs, prediction, views, str(root), split)
    result.misclassified = _misclassified(known, prediction.probabilities, outputs.targets, bundle)
    result.unreadable, result.tta = unreadable, tta
    result.specimens = _roll_up(known, prediction, bundle, config)
    if result.specimens:
        result.specimen_metrics = _specimen_metrics(
            result.specimens, known, outputs.targets, bundle.classes
        )
    lineages = Lineages(bundle.classes, _lineage(bundle))
    truths = [lineages.of_class[bundle.classes[target]] for target in outputs.targets]
    result.metrics["ranks"] = rank_figures(prediction, truths, lineages)
    unknown_prediction = _unknown_prediction(bundle, run, unknown, views)
    if bundle.calibration(views).rule is not None and bundle.statistics is not None:
        scores = None if unknown_prediction is None else unknown_prediction[0].scores
        result.open_set = _unknown_rule(bundle, views, prediction, scores)
    if unknown_prediction is not None:
        found, labels = unknown_prediction
        taxonomy = _taxonomy(bundle)
        truths = [lineage_of(label, taxonomy, config.data.families).to_dict() for label in labels]
        result.open_set = (result.open_set or {}) | {"ranks": rank_figures(found, truths, lineages)}
    result.predictions = _predictions(known, prediction, bundle.classes, outputs.targets)
    result.files = write_eval_report(result, config.out or DEFAULT_OUT)
    result.page = result.files[REPORT_HTML]
    return result


def resolve_views(config: Config, bundle: ModelBundle) -> int:
    """The test-time views eval uses: ``eval.tta``, or (unset) the model's calibrated views."""
    if config.eval.tta is None:
        return calibrated_views(bundle.meta)
    return bundle.tta_views if config.eval.tta else 1


def _specimen_pattern(config: Config, bundle: ModelBundle) -> str | None:
    """``data.specimen_pattern``, or (unset) the one the model was trained with."""
    if config.data.specimen_pattern is not None:
        return config.data.specimen_pattern
    return ((bundle.meta.get("config") or {}).get("data") or {}).get("specimen_pattern")


def _measure(bundle, outputs, prediction, views: int, data: str, split: str) -> EvalResult:
    """The image-level figures of the known, readable images."""
    classes, targets = bundle.classes, outputs.targets
    raw, probabilities = softmax(outputs.logits), prediction.probabilities
    taxonomy = _taxonomy_columns(bundle)
    predicted = probabilities.argmax(1)
    report = metrics.classification_report(probabilities, targets, classes)
    report |= {
        "temperature": bundle.calibration(views).temperature,
        "ece_before": metrics.expected_calibration_error(raw, targets),
        "ece_after": metrics.expected_calibration_error(probabilities, targets),
        "genus_top1": _group_accuracy(predicted, targets, taxonomy["genus"]),
        "family_top1": _group_accuracy(predicted, targets, taxonomy["family"]),
        "within_genus_errors": _within(predicted, targets, taxonomy["genus"]),
        "calibrated": bundle.calibration(views).rule is not None,
        "model_format": bundle.kind,
    }
    counts = metrics.confusion(predicted, targets, len(classes))
    return EvalResult(
        model=str(bundle.path),
        data=data,
        split=split,
        classes=classes,
        species=taxonomy["species"],
        genus=taxonomy["genus"],
        family=taxonomy["family"],
        metrics=report,
        confusion=counts,
        reliability_before=metrics.reliability_bins(raw, targets),
        reliability_after=metrics.reliability_bins(probabilities, targets),
        most_confused=metrics.most_confused_pairs(counts, classes),
    )


def _find_samples(root: Path, manifest, split: str, specimen_pattern) -> list[Sample]:
    if manifest is not None:
        rows = [row for row in read_manifest(manifest, root=root) if row.split == split]
        if not rows:
            raise JianmuError(f"{manifest}: no rows in split {split!r}")
        return [row.to_sample(root) for row in rows]
    return find_samples(root, IMAGE_EXTENSIONS, specimen_pattern)


def _taxonomy_columns(bundle: ModelBundle) -> dict[str, list[str | None]]:
    entries = bundle.taxonomy_entries
    return {
        "species": bundle.species,
        "genus": [(entry or {}).get("genus") for entry in entries],
        "family": [(entry or {}).get("family") for entry in entries],
    }


def _group_accuracy(predictions, targets, groups: list[str | None]) -> float | None:
    if any(group is None for group in groups):
        return None
    return metrics.group_accuracy(predictions, targets, groups)


def _within(predictions, targets, groups: list[str | None]) -> int | None:
    if any(group is None for group in groups):
        return None
    return metrics.within_group_errors(predictions, targets, groups)


def _tta_gain(plain, augmented, views: int) -> dict[str, Any]:
    ok = plain.ok & augmented.ok
    without = metrics.topk_accuracy(plain.logits[ok], plain.targets[ok], 1)
    with_tta = metrics.topk_accuracy(augmented.logits[ok], augmented.targets[ok], 1)
    return {"views": views, "top1_without": without, "top1_with": with_tta,
            "gain": with_tta - without}  # fmt: skip


def _misclassified(known: list[Sample], probabilities, targets, bundle) -> list[Misclassified]:
    classes, wrong = bundle.classes, []
    for sample, row, target in zip(known, probabilities, targets, strict=True):
        top = top_k(row, 3)
        if top[0] != target:
            guesses = [(classes[i], float(row[i])) for i in top]
            wrong.append(Misclassified(str(sample.path), classes[target], guesses))
    return wrong


def _roll_up(known: list[Sample], prediction, bundle, config) -> list[SpecimenVerdict] | None:
    """The specimens of the known, readable images, rolled up as predict does (the one rule of
    :mod:`jianmu.verdict`, with predict's ``top_k``); None when every image is its own."""
    if len({sample.specimen for sample in known}) == len(known):
        return None
    classes = bundle.classes
    k = min(config.predict.top_k, bundle.num_classes)
    rollup = SpecimenRollup(classes, k, _lineage(bundle))
    for row, sample in enumerate(known):
        probabilities = prediction.probabilities[row]
        top = [(classes[i], float(probabilities[i])) for i in top_k(probabilities, k)]
        rollup.add(sample.specimen, top, prediction.rank[row], prediction.taxon[row])
    return rollup.results()


def _specimen_metrics(specimens: list[SpecimenVerdict], known: list[Sample], targets, classes):
    """Figures of the specimen verdicts: top-k of their shares, and how many were identified."""
    truth: dict[str, int] = {}
    for sample, target in zip(known, targets, strict=True):
        truth.setdefault(sample.specimen, int(target))
    shares = np.zeros((len(specimens), len(classes)))
    index = class_index(classes)
    for row, specimen in zip(shares, specimens, strict=True):
        for name, share in specimen.top:
            row[index[name]] = share
    group_targets = np.asarray([truth[specimen.specimen] for specimen in specimens])
    k = max(len(specimen.top) for specimen in specimens)
    report = metrics.classification_report(shares, group_targets, classes, ks=range(1, k + 1))
    identified = np.asarray([specimen.verdict == IDENTIFIED for specimen in specimens])
    correct = shares.argmax(1) == group_targets
    report["identified"] = float(identified.mean())
    report["identified_top1"] = float(correct[identified].mean()) if identified.any() else None
    report["rule"] = f"{SPECIMEN_RULE} (top-{k})"
    return report


def _unknown_prediction(bundle, run, unknown: list[Sample], views: int):
    """The predictions of the readable images of species the model does not know, and their
    class folders; None without such images."""
    if not unknown:
        return None
    outputs = run([(s.path, -1) for s in unknown], views)
    labels = [s.label for s, good in zip(unknown, outputs.ok, strict=True) if good]
    outputs = outputs.readable()
    if not len(labels):
        return None
    return bundle.predict_outputs(outputs.logits, outputs.embeddings, views), labels


def rank_figures(prediction, truths: list[dict], lineages: Lineages) -> dict[str, Any]:
    """How images of known lineages ``truths`` were answered: the share at each rank, the share
    wrong at the rank given, and the share given the deepest answer a model with these classes
    could rightly give (per expected rank)."""
    answers = list(zip(prediction.rank, prediction.taxon, strict=True))
    figures: dict[str, Any] = {
        rank: float(np.mean([answer == rank for answer, _ in answers]))
        for rank in (*RANKS, UNKNOWN_RANK)
    }
    wrong = [
        answer_is_wrong(r, t, truth, lineages)
        for (r, t), truth in zip(answers, truths, strict=True)
    ]
    figures["wrong"] = float(np.mean(wrong))
    expected = [deepest_answer(truth, lineages) for truth in truths]
    right = [
        answer[0] == want[0] and not bad
        for answer, want, bad in zip(answers, expected, wrong, strict=True)
    ]
    figures["deepest_right"] = float(np.mean(right))
    figures["expected"] = {
        rank: sum(want[0] == rank for want in expected) for rank in (*RANKS, UNKNOWN_RANK)
    }
    figures["count"] = len(answers)
    return figures


def _lineage(bundle: ModelBundle) -> list[dict]:
    return (bundle.meta.get("hierarchy") or {}).get("lineage") or [{} for _ in bundle.classes]


def _taxonomy(bundle: ModelBundle):
    domain = (bundle.meta.get("taxonomy") or {}).get("domain")
    return load_taxonomy(domain) if domain else None


def _unknown_rule(bundle, views: int, known, unknown_scores) -> dict[str, Any]:
    calibration = bundle.calibration(views)
    record = {
        "rule": calibration.rule,
        "threshold": calibration.threshold,
        "target_known_recall": bundle.meta["unknown"]["target_known_recall"],
        "views": calibration.views,
        "threshold_fitted_for_views": calibration.exact,
        "known_images": len(known.scores),
        "known_flagged_unknown": float(np.mean(~known.known)),
    }
    if unknown_scores is not None and len(unknown_scores):
        record |= metrics.open_set_report(known.scores, unknown_scores, calibration.threshold)
    return record


def _predictions(known: list[Sample], prediction, classes, targets) -> list[dict[str, Any]]:
    rows = []
    for index, (sample, row, score, target) in enumerate(
        zip(known, prediction.probabilities, prediction.scores, targets, strict=True)
    ):
        best = int(row.argmax())
        rank = prediction.rank[index]
        rows.append({
            "path": str(sample.path), "true_class": classes[target], "predicted": classes[best],
            "probability": float(row[best]), "unknown_score": float(score),
            "verdict": rank_verdict(rank), "rank": rank,
            "answer": taxon_label(rank, prediction.taxon[index]),
        })  # fmt: skip
    return rows
