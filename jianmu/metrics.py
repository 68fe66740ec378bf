"""Pure functions over arrays: accuracy, per-class scores, confusion, calibration error and how
well an unknown-species rule separates known from unknown. scikit-learn computes the standard
metrics. (Fitting the calibration is :mod:`jianmu.calibration.fit`; the specimen roll-up is
:mod:`jianmu.verdict`.)

Inputs are numpy arrays (or anything ``np.asarray`` takes): scores, logits or probabilities are
N x C, targets and predictions are N integer class indices. Outputs are floats, lists, dicts or
small dataclasses with a ``to_dict()``, ready for JSON.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from sklearn.metrics import (
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
    roc_auc_score,
)

from jianmu.errors import JianmuError
from jianmu.outputs import as_scores_and_targets, as_vector, check_labels

# --- accuracy and per-class scores ---------------------------------------------------------------


def topk_accuracy(scores: np.ndarray, targets: np.ndarray, k: int = 1) -> float:
    """Fraction of rows whose target is among the ``k`` highest scores (ties: lowest index)."""
    scores = np.asarray(scores)
    targets = np.asarray(targets)
    if len(targets) == 0:
        return float("nan")
    k = min(k, scores.shape[1])
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return float((top == targets[:, None]).any(axis=1).mean())


def macro_f1(predictions: np.ndarray, targets: np.ndarray) -> float:
    """Macro-averaged F1 over the classes present in targets or predictions."""
    if len(targets) == 0:
        return float("nan")
    return float(f1_score(targets, predictions, average="macro", zero_division=0))


def classification_report(
    probabilities: np.ndarray,
    targets: np.ndarray,
    class_names: list[str],
    ks: tuple[int, ...] = (1, 2, 3, 5),
) -> dict[str, Any]:
    """Top-k accuracy, balanced accuracy, macro/weighted and per-class precision, recall and F1.

    Only the ranking of each row matters, so logits work as well as probabilities. Each k is capped
    at the number of classes and named by its capped value (with 3 classes, ``ks=(1, 5)`` gives
    ``top1`` and ``top3``). Macro averages run over the classes present in targets or predictions,
    as :func:`macro_f1` does; a class never predicted has precision 0.

    Returns:
        ``count``, ``top{k}`` for each k, ``balanced_accuracy``, ``{macro,weighted}_{precision,
        recall,f1}`` and ``per_class``: one dict per class with ``class``, ``precision``,
        ``recall``, ``f1`` and ``support``.
    """
    probabilities, targets = as_scores_and_targets(probabilities, targets)
    num_classes = probabilities.shape[1]
    if len(class_names) != num_classes:
        raise JianmuError(f"{len(class_names)} class names for {num_classes} score columns")
    if any(k < 1 for k in ks):
        raise JianmuError(f"top-k needs k >= 1, got {tuple(ks)}")
    predictions = probabilities.argmax(axis=1)
    report: dict[str, Any] = {"count": len(targets)}
    for k in sorted({min(k, num_classes) for k in ks}):
        report[f"top{k}"] = topk_accuracy(probabilities, targets, k)
    with warnings.catch_warnings():
        # "y_pred contains classes not in y_true": expected when a test set lacks a class.
        warnings.simplefilter("ignore", UserWarning)
        report["balanced_accuracy"] = float(balanced_accuracy_score(targets, predictions))
    for average in ("macro", "weighted"):
        precision, recall, f1, _ = precision_recall_fscore_support(
            targets, predictions, average=average, zero_division=0
        )
        report[f"{average}_precision"] = float(precision)
        report[f"{average}_recall"] = float(recall)
        report[f"{average}_f1"] = float(f1)
    precision, recall, f1, support = precision_recall_fscore_support(
        targets, predictions, labels=np.arange(num_classes), average=None, zero_division=0
    )
    report["per_class"] = [
        {
            "class": name,
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, name in enumerate(class_names)
    ]
    return report


# --- confusion ------------------------------------------------------------------------------------


def confusion(
    predictions: np.ndarray, targets: np.ndarray, num_classes: int, normalize: bool = False
) -> np.ndarray:
    """C x C confusion matrix, rows = true class, columns = predicted class.

    Args:
        normalize: Divide each row by its total, so a row reads as "where this class went"; a row
            with no samples stays all zeros.

    Returns:
        Integer counts, or float row fractions when ``normalize`` is set.
    """
    predictions, targets = _predictions_and_targets(predictions, targets, num_classes)
    labels = np.arange(num_classes)
    if len(targets):
        counts = confusion_matrix(targets, predictions, labels=labels).astype(np.int64)
    else:
        counts = np.zeros((num_classes, num_classes), dtype=np.int64)
    if not normalize:
        return counts
    totals = counts.sum(axis=1, keepdims=True)
    return np.divide(counts, totals, out=np.zeros(counts.shape), where=totals > 0)


def most_confused_pairs(
    confusion_counts: np.ndarray, class_names: list[str], top: int = 10
) -> list[tuple[str, str, int | float]]:
    """The ``top`` largest off-diagonal cells as (true class, predicted class, count).

    Cells equal to zero are left out; ties keep row-major order. A row-normalised matrix works too
    and gives fractions instead of counts.
    """
    counts = np.asarray(confusion_counts)
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1]:
        raise JianmuError(f"expected a square confusion matrix, got shape {counts.shape}")
    if len(class_names) != len(counts):
        raise JianmuError(f"{len(class_names)} class names for a {len(counts)}-class matrix")
    off_diagonal = counts.copy()
    np.fill_diagonal(off_diagonal, 0)
    rows, columns = np.nonzero(off_diagonal > 0)
    order = np.argsort(-off_diagonal[rows, columns], kind="stable")[:top]
    return [
        (class_names[rows[i]], class_names[columns[i]], off_diagonal[rows[i], columns[i]].item())
        for i in order
    ]


# --- coarser levels (genus, family) ---------------------------------------------------------------


def group_accuracy(
    predictions: np.ndarray, targets: np.ndarray, group_of_class: list[str]
) -> float:
    """Accuracy at a coarser level: a prediction counts if its class is in the target's group.

    Args:
        group_of_class: The group (genus, family, ...) of each class, indexed by class.
    """
    predicted, true, _ = _groups(predictions, targets, group_of_class)
    return float(np.mean(predicted == true))


def within_group_errors(
    predictions: np.ndarray, targets: np.ndarray, group_of_class: list[str]
) -> int:
    """Number of wrong predictions whose class is in the target's group.

    This is "species error inside the right genus": species accuracy + this count / N equals
    :func:`group_accuracy`.
    """
    predicted, true, wrong = _groups(predictions, targets, group_of_class)
    return int(np.sum(wrong & (predicted == true)))


def _groups(
    predictions: np.ndarray, targets: np.ndarray, group_of_class: list[str]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Predicted groups, true groups and the wrong-class mask."""
    groups = np.asarray(group_of_class, dtype=object)
    predictions, targets = _predictions_and_targets(predictions, targets, len(groups))
    if len(targets) == 0:
        raise JianmuError("no samples to evaluate")
    return groups[predictions], groups[targets], predictions != targets


# --- calibration ----------------------------------------------------------------------------------


def reliability_bins(
    probabilities: np.ndarray, targets: np.ndarray, bins: int = 15
) -> list[dict[str, Any]]:
    """Accuracy and mean confidence of the top prediction in equal-width confidence bins.

    A bin holds confidences in (lower, upper], as in Guo et al. (2017); a confidence of exactly 0
    joins the first bin. Empty bins have ``count`` 0 and ``None`` accuracy and confidence.
    """
    probabilities, targets = as_scores_and_targets(probabilities, targets)
    if probabilities.min() < 0 or probabilities.max() > 1 + 1e-6:
        raise JianmuError("expected probabilities in [0, 1]; apply softmax to logits first")
    if bins < 1:
        raise JianmuError(f"need at least one bin, got {bins}")
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == targets
    edges = np.arange(bins + 1) / bins  # b / bins exactly, so 0.7 falls in (0.6, 0.7]
    index = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    counts = np.bincount(index, minlength=bins)
    hits = np.bincount(index, weights=correct, minlength=bins)
    confidence_sums = np.bincount(index, weights=confidence, minlength=bins)
    return [
        {
            "lower": float(edges[b]),
            "upper": float(edges[b + 1]),
            "count": int(counts[b]),
            "accuracy": float(hits[b] / counts[b]) if counts[b] else None,
            "confidence": float(confidence_sums[b] / counts[b]) if counts[b] else None,
        }
        for b in range(bins)
    ]


def expected_calibration_error(
    probabilities: np.ndarray, targets: np.ndarray, bins: int = 15
) -> float:
    """Expected calibration error: |accuracy - confidence| per bin, weighted by the bin's share."""
    rows = reliability_bins(probabilities, targets, bins)
    total = sum(row["count"] for row in rows)
    return float(
        sum(
            row["count"] / total * abs(row["accuracy"] - row["confidence"])
            for row in rows
            if row["count"]
        )
    )


# --- open set: higher score = more likely a known species ----------------------------------------


def auroc_known_vs_unknown(scores_known: np.ndarray, scores_unknown: np.ndarray) -> float:
    """Area under the ROC curve for telling known (positive) from unknown samples by score."""
    known = as_vector(scores_known, "known scores")
    unknown = as_vector(scores_unknown, "unknown scores")
    labels = np.concatenate([np.ones(len(known)), np.zeros(len(unknown))])
    return float(roc_auc_score(labels, np.concatenate([known, unknown])))


def open_set_report(
    scores_known: np.ndarray, scores_unknown: np.ndarray, threshold: float
) -> dict[str, float | int]:
    """Accept ``score >= threshold`` as known: recall on known, rejection of unknown, AUROC."""
    known = as_vector(scores_known, "known scores")
    unknown = as_vector(scores_unknown, "unknown scores")
    known_recall = float(np.mean(known >= threshold))
    unknown_rejection = float(np.mean(unknown < threshold))
    return {
        "threshold": float(threshold),
        "known_count": len(known),
        "unknown_count": len(unknown),
        "known_recall": known_recall,
        "unknown_rejection": unknown_rejection,
        "balanced_recall": (known_recall + unknown_rejection) / 2,
        "auroc": auroc_known_vs_unknown(known, unknown),
    }


# --- input checks ---------------------------------------------------------------------------------


def _predictions_and_targets(
    predictions: np.ndarray, targets: np.ndarray, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Two equal-length integer arrays of class indices within range."""
    predictions = np.asarray(predictions)
    targets = np.asarray(targets)
    if predictions.ndim != 1 or predictions.shape != targets.shape:
        raise JianmuError(
            f"expected 1-D predictions and targets of equal length, got shapes "
            f"{predictions.shape} and {targets.shape}"
        )
    check_labels(predictions, num_classes, "predictions")
    check_labels(targets, num_classes, "targets")
    return predictions.astype(np.int64), targets.astype(np.int64)
