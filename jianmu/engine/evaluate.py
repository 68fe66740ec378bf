"""``jianmu eval``: metrics an inspector can rely on: per class, per specimen, calibrated, open set.

:func:`evaluate` runs a checkpoint over a folder or a manifest split and writes the report
(:mod:`jianmu.report.eval_report`); :class:`EvalResult` is what it measured.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from jianmu import metrics
from jianmu.bundle import DIHEDRAL_VIEWS, ModelBundle, load_model
from jianmu.config import IMAGE_EXTENSIONS, EvalConfig
from jianmu.data.samples import find_samples
from jianmu.data.split import read_manifest
from jianmu.engine.runner import bundle_outputs
from jianmu.errors import JianmuError
from jianmu.report.eval_report import write_eval_report
from jianmu.taxonomy import load_taxonomy


@dataclass
class Misclassified:
    path: str
    true_class: str
    top3: list[tuple[str, float]]  # (class, calibrated probability), best first


@dataclass
class EvalResult:
    """Everything ``jianmu eval`` measured; :func:`jianmu.report.eval_report.write_eval_report`
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


def evaluate(
    model_path: str | Path | ModelBundle,
    data: str | Path,
    out: str | Path,
    config: EvalConfig | None = None,
    manifest: str | Path | None = None,
    split: str = "test",
    specimen_pattern: str | None = None,
) -> EvalResult:
    """Evaluate a run folder, checkpoint or exported bundle on ``data`` (all images, or one split of
    a manifest); write the report to ``out``. Images of species the model does not know measure the
    unknown rule; unreadable images are listed, not fatal."""
    config = config or EvalConfig()
    bundle = model_path if isinstance(model_path, ModelBundle) else load_model(model_path)
    classes = bundle.classes
    labelled = _find_items(Path(data), manifest, split, specimen_pattern)
    index = {name: i for i, name in enumerate(classes)}
    known = [(path, index[label], specimen) for path, label, specimen in labelled if label in index]
    unknown = [(path, -1, specimen) for path, label, specimen in labelled if label not in index]
    if not known:
        raise JianmuError(f"{data}: no images of the model's {len(classes)} classes to evaluate")
    pairs = [(p, i) for p, i, _ in known]
    views = DIHEDRAL_VIEWS if config.tta else 1
    outputs = bundle_outputs(bundle, pairs, config.batch_size, views)
    tta = None
    if config.tta:
        tta = _tta_gain(bundle_outputs(bundle, pairs, config.batch_size, 1), outputs)
    ok = outputs.ok
    unreadable = [(str(known[i][0]), outputs.errors[i]) for i in np.flatnonzero(~ok)]
    known = [item for item, good in zip(known, ok, strict=True) if good]
    outputs = outputs.subset(ok)
    logits, targets = outputs.logits, outputs.targets
    calibration = bundle.calibration(views)
    prediction = bundle.predict_outputs(logits, outputs.embeddings, views)
    raw = metrics.softmax(logits)
    probabilities = prediction.probabilities
    taxonomy = _taxonomy_columns(bundle)
    report = metrics.classification_report(probabilities, targets, classes)
    predictions = probabilities.argmax(1)
    report |= {
        "temperature": calibration.temperature,
        "ece_before": metrics.expected_calibration_error(raw, targets),
        "ece_after": metrics.expected_calibration_error(probabilities, targets),
        "genus_top1": _group_accuracy(predictions, targets, taxonomy["genus"]),
        "family_top1": _group_accuracy(predictions, targets, taxonomy["family"]),
        "within_genus_errors": _within(predictions, targets, taxonomy["genus"]),
        "calibrated": calibration.rule is not None,
        "model_format": bundle.kind,
    }
    counts = metrics.confusion(predictions, targets, len(classes))
    result = EvalResult(
        model=str(bundle.path),
        data=str(data),
        split=split if manifest else "all",
        classes=classes,
        species=taxonomy["species"],
        genus=taxonomy["genus"],
        family=taxonomy["family"],
        metrics=report,
        confusion=counts,
        reliability_before=metrics.reliability_bins(raw, targets),
        reliability_after=metrics.reliability_bins(probabilities, targets),
        most_confused=metrics.most_confused_pairs(counts, classes),
        misclassified=_misclassified(known, probabilities, targets, classes),
        unreadable=unreadable,
        specimen_metrics=_specimen_metrics(known, probabilities, targets, classes, config),
        tta=tta,
    )
    if calibration.rule is not None and bundle.scorer is not None:
        unknown_prediction = None
        if unknown:
            items = [(p, -1) for p, _, _ in unknown]
            more = bundle_outputs(bundle, items, config.batch_size, views)
            more = more.subset(more.ok)
            unknown_prediction = bundle.predict_outputs(more.logits, more.embeddings, views)
        result.open_set = _unknown_rule(bundle, calibration, prediction, unknown_prediction)
    result.predictions = _predictions(known, probabilities, classes, prediction)
    write_eval_report(result, Path(out))
    return result


def _find_items(data: Path, manifest, split: str, specimen_pattern) -> list[tuple[Path, str, str]]:
    if manifest is not None:
        rows = [row for row in read_manifest(manifest, root=data) if row.split == split]
        if not rows:
            raise JianmuError(f"{manifest}: no rows in split {split!r}")
        return [(data / row.path, row.label, row.specimen) for row in rows]
    samples = find_samples(data, IMAGE_EXTENSIONS, specimen_pattern)
    return [(sample.path, sample.label, sample.specimen) for sample in samples]


def _taxonomy_columns(bundle) -> dict[str, list[str | None]]:
    species = list(bundle.meta.get("species") or [None] * bundle.num_classes)
    domain = bundle.meta.get("taxonomy", {}).get("domain")
    entries = [None] * len(species)
    if domain:
        taxonomy = load_taxonomy(domain)
        entries = [taxonomy.get(name) if name else None for name in species]
    return {
        "species": species,
        "genus": [entry.genus if entry else None for entry in entries],
        "family": [entry.family if entry else None for entry in entries],
    }


def _group_accuracy(predictions, targets, groups: list[str | None]) -> float | None:
    if any(group is None for group in groups):
        return None
    return metrics.group_accuracy(predictions, targets, groups)


def _within(predictions, targets, groups: list[str | None]) -> int | None:
    if any(group is None for group in groups):
        return None
    return metrics.within_group_errors(predictions, targets, groups)


def _tta_gain(plain, augmented) -> dict[str, Any]:
    ok = plain.ok & augmented.ok
    without = metrics.topk_accuracy(plain.logits[ok], plain.targets[ok], 1)
    with_tta = metrics.topk_accuracy(augmented.logits[ok], augmented.targets[ok], 1)
    return {"views": DIHEDRAL_VIEWS, "top1_without": without, "top1_with": with_tta,
            "gain": with_tta - without}  # fmt: skip


def _misclassified(known, probabilities, targets, classes) -> list[Misclassified]:
    wrong = []
    for (path, _, _), row, target in zip(known, probabilities, targets, strict=True):
        top = np.argsort(-row, kind="stable")[:3]
        if top[0] != target:
            wrong.append(
                Misclassified(
                    str(path), classes[target], [(classes[i], float(row[i])) for i in top]
                )
            )
    return wrong


def _specimen_metrics(known, probabilities, targets, classes, config) -> dict[str, Any] | None:
    specimens = [specimen for _, _, specimen in known]
    if len(set(specimens)) == len(specimens):
        return None  # every image is its own specimen: nothing to combine
    groups, combined = metrics.aggregate_by_group(
        probabilities, specimens, config.specimen_aggregation
    )
    first_target = {}
    for specimen, target in zip(specimens, targets, strict=True):
        first_target.setdefault(specimen, target)
    group_targets = np.asarray([first_target[group] for group in groups])
    report = metrics.classification_report(combined, group_targets, classes)
    report["aggregation"] = config.specimen_aggregation
    return report


def _unknown_rule(bundle, calibration, known, unknown) -> dict[str, Any]:
    record = {
        "rule": calibration.rule,
        "threshold": calibration.threshold,
        "target_known_recall": bundle.meta["unknown"]["target_known_recall"],
        "views": calibration.views,
        "threshold_fitted_for_views": calibration.exact,
        "known_images": len(known.scores),
        "known_flagged_unknown": float(np.mean(~known.known)),
    }
    if unknown is not None and len(unknown.scores):
        record |= metrics.open_set_report(known.scores, unknown.scores, calibration.threshold)
    return record


UNKNOWN_VERDICT = "unknown - refer to lab"


def _predictions(known, probabilities, classes, prediction) -> list[dict[str, Any]]:
    rows = []
    for (path, target, _), row, score, is_known in zip(
        known, probabilities, prediction.scores, prediction.known, strict=True
    ):
        best = int(row.argmax())
        rows.append({
            "path": str(path), "true_class": classes[target], "predicted": classes[best],
            "probability": float(row[best]), "unknown_score": float(score),
            "verdict": "identified" if is_known else UNKNOWN_VERDICT,
        })  # fmt: skip
    return rows
