"""``jianmu eval``: metrics an inspector can rely on: per class, per specimen, calibrated, open set.

Work in progress: this module holds the result object the report writer consumes; the engine
function lands with the rest of the eval issue.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


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
