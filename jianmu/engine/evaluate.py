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
from jianmu.config import IMAGE_EXTENSIONS, EvalConfig
from jianmu.data.images import probe_image
from jianmu.data.samples import find_samples
from jianmu.data.split import read_manifest
from jianmu.engine.calibrate import load_scorer
from jianmu.engine.inference import DIHEDRAL_VIEWS, Outputs, collect_outputs
from jianmu.errors import JianmuError
from jianmu.models import load_checkpoint
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
    model_path: str | Path,
    data: str | Path,
    out: str | Path,
    config: EvalConfig | None = None,
    manifest: str | Path | None = None,
    split: str = "test",
    specimen_pattern: str | None = None,
) -> EvalResult:
    """Evaluate a run folder or checkpoint on ``data`` (all images, or one split of a manifest);
    write the report to ``out``. Images of species the model does not know measure the unknown
    rule; unreadable images are listed, not fatal."""
    config = config or EvalConfig()
    checkpoint = load_checkpoint(model_path)
    classes = checkpoint.classes
    labelled = _find_items(Path(data), manifest, split, specimen_pattern)
    index = {name: i for i, name in enumerate(classes)}
    known = [(path, index[label], specimen) for path, label, specimen in labelled if label in index]
    unknown = [(path, -1, specimen) for path, label, specimen in labelled if label not in index]
    if not known:
        raise JianmuError(f"{data}: no images of the model's {len(classes)} classes to evaluate")
    model = checkpoint.build_model()
    spec = checkpoint.preprocessing
    plain = collect_outputs(model, [(p, i) for p, i, _ in known], spec, config.batch_size)
    outputs = plain
    tta = None
    if config.tta:
        outputs = collect_outputs(
            model, [(p, i) for p, i, _ in known], spec, config.batch_size, DIHEDRAL_VIEWS
        )
        tta = _tta_gain(plain, outputs)
    ok = outputs.ok
    unreadable = [(str(known[i][0]), probe_image(known[i][0]).reason) for i in np.flatnonzero(~ok)]
    known = [item for item, good in zip(known, ok, strict=True) if good]
    logits, targets = outputs.logits[ok], outputs.targets[ok]
    scorer = load_scorer(checkpoint)
    temperature = scorer.temperature if scorer is not None else 1.0
    raw = metrics.softmax(logits)
    probabilities = metrics.softmax(logits, temperature)
    taxonomy = _taxonomy_columns(checkpoint)
    report = metrics.classification_report(probabilities, targets, classes)
    predictions = probabilities.argmax(1)
    report |= {
        "temperature": temperature,
        "ece_before": metrics.expected_calibration_error(raw, targets),
        "ece_after": metrics.expected_calibration_error(probabilities, targets),
        "genus_top1": _group_accuracy(predictions, targets, taxonomy["genus"]),
        "family_top1": _group_accuracy(predictions, targets, taxonomy["family"]),
        "within_genus_errors": _within(predictions, targets, taxonomy["genus"]),
        "calibrated": scorer is not None,
    }
    counts = metrics.confusion(predictions, targets, len(classes))
    result = EvalResult(
        model=str(model_path),
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
    if scorer is not None:
        # The unknown rule's statistics were fitted on embeddings of a set number of views:
        # score with the same number, whatever this evaluation's TTA setting.
        rule_views = int(checkpoint.meta["calibration"].get("views", 1))
        views = DIHEDRAL_VIEWS if config.tta else 1
        rule_outputs = outputs if rule_views == views else collect_outputs(
            model, [(p, i) for p, i, _ in known], spec, config.batch_size, rule_views
        )  # fmt: skip
        unknown_outputs = None
        if unknown:
            items = [(p, -1) for p, _, _ in unknown]
            unknown_outputs = collect_outputs(model, items, spec, config.batch_size, rule_views)
        result.open_set = _unknown_rule(checkpoint, scorer, rule_outputs, unknown_outputs)
        scores = scorer.score(result.open_set["rule"], _subset(rule_outputs, rule_outputs.ok))
    else:
        scores = np.full(len(known), np.nan)
    result.predictions = _predictions(
        known, probabilities, classes, scores, result.open_set and result.open_set["threshold"]
    )
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


def _taxonomy_columns(checkpoint) -> dict[str, list[str | None]]:
    species = list(checkpoint.meta.get("species") or [None] * len(checkpoint.classes))
    domain = checkpoint.meta.get("taxonomy", {}).get("domain")
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


def _unknown_rule(checkpoint, scorer, outputs, unknown_outputs) -> dict[str, Any]:
    rule = checkpoint.meta["unknown"]["rule"]
    threshold = float(checkpoint.meta["unknown"]["threshold"])
    known_scores = scorer.score(rule, _subset(outputs, outputs.ok))
    record = {
        "rule": rule,
        "threshold": threshold,
        "target_known_recall": checkpoint.meta["unknown"]["target_known_recall"],
        "views": int(checkpoint.meta["calibration"].get("views", 1)),
        "known_images": len(known_scores),
        "known_flagged_unknown": float(np.mean(known_scores < threshold)),
    }
    if unknown_outputs is not None and unknown_outputs.ok.any():
        unknown_scores = scorer.score(rule, _subset(unknown_outputs, unknown_outputs.ok))
        record |= metrics.open_set_report(known_scores, unknown_scores, threshold)
    return record


UNKNOWN_VERDICT = "unknown - refer to lab"


def _predictions(known, probabilities, classes, scores, threshold) -> list[dict[str, Any]]:
    rows = []
    for (path, target, _), row, score in zip(known, probabilities, scores, strict=True):
        best = int(row.argmax())
        unknown = threshold is not None and score < threshold
        rows.append({
            "path": str(path), "true_class": classes[target], "predicted": classes[best],
            "probability": float(row[best]), "unknown_score": float(score),
            "verdict": UNKNOWN_VERDICT if unknown else "identified",
        })  # fmt: skip
    return rows


def _subset(outputs: Outputs, keep: np.ndarray) -> Outputs:
    return Outputs(
        outputs.logits[keep], outputs.embeddings[keep], outputs.targets[keep], outputs.ok[keep]
    )
