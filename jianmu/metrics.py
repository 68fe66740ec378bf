"""Pure functions over arrays: accuracy, F1 and friends (scikit-learn for the standard ones)."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import f1_score


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
