"""What a model gives on images (:class:`Outputs`) and what calibration makes of it
(:class:`Prediction`): plain numpy data, shared by the runner, calibration, eval and predict; and
the checks that turn array arguments into one-line errors."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from jianmu.errors import JianmuError

Item = tuple[Path, int]
"""An image and its class index (-1: a species the model does not know)."""


@dataclass
class Outputs:
    """A model's outputs on a list of items, one row per item."""

    logits: np.ndarray  # N x C float32
    embeddings: np.ndarray  # N x D float32, the classifier's input (pre-logits)
    targets: np.ndarray  # N int
    ok: np.ndarray  # N bool: False for images that could not be read (their rows are zeros)
    errors: dict[int, str] = field(default_factory=dict)  # row -> why it could not be read
    quality: np.ndarray | None = None
    """N x len(quality.MEASURES): the photo-quality measures (NaN rows: unreadable), if taken."""

    def subset(self, keep: np.ndarray) -> Outputs:
        """The rows where ``keep`` (a boolean mask) is true, renumbered."""
        rows = np.flatnonzero(keep)
        errors = {new: self.errors[old] for new, old in enumerate(rows) if old in self.errors}
        quality = self.quality[keep] if self.quality is not None else None
        return Outputs(
            self.logits[keep], self.embeddings[keep], self.targets[keep], self.ok[keep], errors,
            quality,
        )  # fmt: skip

    def readable(self) -> Outputs:
        """The rows of the images that could be read."""
        return self.subset(self.ok)


@dataclass
class Prediction:
    """Calibrated outputs: probabilities, unknown-rule scores and the known mask."""

    logits: np.ndarray  # N x C
    embeddings: np.ndarray  # N x D
    probabilities: np.ndarray  # N x C, softmax(logits / temperature)
    scores: np.ndarray  # N unknown-rule scores (NaN without a rule)
    known: np.ndarray  # N bool: answered at the species rank (all True without a rule)
    rank: list[str] = field(default_factory=list)
    """Per image: the deepest rank answered (species, genus, family or unknown)."""
    taxon: list[str | None] = field(default_factory=list)
    """Per image: the taxon answered at that rank (None: unknown)."""
    evidence: list[dict[str, Any]] = field(default_factory=list)
    """Per image and rank: the candidate taxon, its score and the rank's threshold."""


def as_matrix(values: np.ndarray, what: str, keep_float32: bool = False) -> np.ndarray:
    """A finite 2-D float array (float64 unless float32 is given and kept)."""
    array = np.asarray(values)
    dtype = np.float32 if keep_float32 and array.dtype == np.float32 else np.float64
    array = array.astype(dtype, copy=False)
    if array.ndim != 2:
        raise JianmuError(f"expected {what} as an N x C array, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise JianmuError(f"{what} contain NaN or infinite values")
    return array


def as_vector(values: np.ndarray, what: str) -> np.ndarray:
    """A finite, non-empty 1-D float array."""
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or len(array) == 0:
        raise JianmuError(f"expected {what} as a non-empty 1-D array, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise JianmuError(f"{what} contain NaN or infinite values")
    return array


def check_labels(labels: np.ndarray, num_classes: int, what: str) -> None:
    """Integer class indices in ``[0, num_classes)``."""
    if labels.size == 0:
        return
    if not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0:
        raise JianmuError(f"{what} must be integer class indices in [0, {num_classes})")
    if labels.max() >= num_classes:
        raise JianmuError(f"{what} must be integer class indices in [0, {num_classes})")


def as_scores_and_targets(scores: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Non-empty N x C float scores and N integer targets within range."""
    scores = as_matrix(scores, "scores")
    targets = np.asarray(targets)
    if targets.shape != (len(scores),):
        raise JianmuError(f"{targets.size} targets for {len(scores)} rows of scores")
    if len(targets) == 0:
        raise JianmuError("no samples to evaluate")
    check_labels(targets, scores.shape[1], "targets")
    return scores, targets.astype(np.int64)
