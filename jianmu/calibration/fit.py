"""Fitting a model's calibration on its own outputs: the temperature on validation logits, the
feature statistics on training embeddings, and each unknown-species rule's threshold for the
target share of known validation images, for one view and (with ``calibration.tta``) for the 8
dihedral views.

:func:`calibrate` is the one fitting procedure. It gets the model's outputs from ``run`` (a
bundle's :meth:`~jianmu.bundle.ModelBundle.run`): the same runner and numpy/OpenCV preprocessing
that apply the calibration at predict time, so what is fitted is what is applied. Training calls it
on the best checkpoint; the int8 export calls it again on the quantized model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax

from jianmu.calibration.apply import (
    KNN_K,
    FeatureStatistics,
    KnnModel,
    MahalanobisModel,
    l2_normalize,
    softmax,
)
from jianmu.config import CalibrationConfig
from jianmu.data.preprocess import DIHEDRAL_VIEWS
from jianmu.errors import JianmuError
from jianmu.metrics import expected_calibration_error
from jianmu.outputs import Item, Outputs, as_matrix, as_scores_and_targets, as_vector

# Shrinkage of the shared covariance, relative to its mean variance: 0.1 to 0.3 did equally well
# on wood-swfu5 (datasets/wood-swfu5.md); much less over-trusts a few hundred training images.
MAHALANOBIS_RIDGE = 0.1
MAX_KNN_BANK = 10_000  # training embeddings kept for the statistics (a seeded subset beyond this)

RunOutputs = Callable[[Sequence[Item], int], Outputs]
"""``run(items, views)``: a model's outputs on ``items`` averaged over ``views`` views."""


@dataclass
class Fitted:
    """A calibration: the metadata record (``calibration``, ``unknown``) and the statistics."""

    record: dict[str, Any]
    statistics: FeatureStatistics


def calibrate(
    run: RunOutputs, items: dict[str, Sequence[Item]], config: CalibrationConfig, seed: int = 0
) -> Fitted:
    """Fit temperature, statistics and thresholds on ``items["train"]`` and ``items["val"]``.

    Raises:
        JianmuError: no readable training or validation image.
    """
    views = DIHEDRAL_VIEWS if config.tta else 1
    train = _readable(run(seeded_subset(items["train"], MAX_KNN_BANK, seed), views), "training")
    val = _readable(run(items["val"], views), "validation")
    statistics = fit_statistics(train).as_stored()  # thresholds for the float32 statistics
    temperature = fit_temperature(val.logits, val.targets)
    thresholds = fit_thresholds(statistics, val, temperature, config.target_known_recall)
    calibration: dict[str, Any] = {
        "temperature": temperature,
        "views": views,
        "ece_val_before": expected_calibration_error(softmax(val.logits), val.targets),
        "ece_val_after": expected_calibration_error(softmax(val.logits, temperature), val.targets),
    }
    if views > 1:
        # Prediction runs one view unless asked for TTA: its own temperature and thresholds, for
        # the same statistics.
        single = _readable(run(items["val"], 1), "validation")
        single_temperature = fit_temperature(single.logits, single.targets)
        calibration["single_view"] = {
            "temperature": single_temperature,
            "thresholds": fit_thresholds(
                statistics, single, single_temperature, config.target_known_recall
            ),
        }
    unknown = {
        "rule": config.rule,
        "threshold": thresholds[config.rule],
        "target_known_recall": config.target_known_recall,
        "thresholds": thresholds,
        "knn_k": KNN_K,
    }
    return Fitted({"calibration": calibration, "unknown": unknown}, statistics)


def settings_of(meta: dict[str, Any], batch_size: int = 64) -> CalibrationConfig:
    """The calibration settings a model was calibrated with, read back from its metadata."""
    unknown, calibration = meta.get("unknown") or {}, meta.get("calibration") or {}
    if not unknown:
        raise JianmuError("the model was never calibrated: no unknown-species rule to refit")
    return CalibrationConfig(
        rule=unknown["rule"],
        target_known_recall=float(unknown["target_known_recall"]),
        tta=int(calibration.get("views", 1)) > 1,
        batch_size=batch_size,
    )


def fit_statistics(train: Outputs) -> FeatureStatistics:
    """Class Gaussians (shared covariance), one background Gaussian and the kNN bank."""
    everything = np.zeros(len(train.targets), dtype=int)
    return FeatureStatistics(
        fit_mahalanobis(train.embeddings, train.targets, ridge=MAHALANOBIS_RIDGE),
        fit_mahalanobis(train.embeddings, everything, ridge=MAHALANOBIS_RIDGE),
        fit_knn(train.embeddings),
    )


def fit_thresholds(
    statistics: FeatureStatistics, known: Outputs, temperature: float, target_recall: float
) -> dict[str, float]:
    """Each rule's threshold for ``target_recall`` of ``known`` (images of known species)."""
    return {
        rule: threshold_for_recall(
            statistics.score(rule, known.logits, known.embeddings, temperature), target_recall
        )
        for rule in statistics.rules()
    }


def fit_temperature(
    logits: np.ndarray, targets: np.ndarray, bounds: tuple[float, float] = (0.05, 20.0)
) -> float:
    """Temperature T in ``bounds`` minimising the NLL of ``softmax(logits / T)``.

    The search runs over log T (bounded Brent, deterministic). T > 1 softens an over-confident
    model. On perfectly separated data the NLL keeps falling as T shrinks, so T ends up small.
    """
    logits, targets = as_scores_and_targets(logits, targets)
    if not 0 < bounds[0] < bounds[1]:
        raise JianmuError(f"temperature bounds must satisfy 0 < low < high, got {bounds}")
    rows = np.arange(len(targets))

    def nll(log_temperature: float) -> float:
        log_probabilities = log_softmax(logits / np.exp(log_temperature), axis=1)
        return float(-log_probabilities[rows, targets].mean())

    result = minimize_scalar(
        nll, bounds=tuple(np.log(bounds)), method="bounded", options={"xatol": 1e-6}
    )
    return float(np.exp(result.x))


def fit_mahalanobis(
    features: np.ndarray, targets: np.ndarray, ridge: float = 1e-3
) -> MahalanobisModel:
    """Class means and a shared covariance of ``features``, inverted into a precision matrix.

    Args:
        ridge: Added to the covariance diagonal, relative to the mean feature variance, so that
            fewer samples than dimensions still give a usable precision matrix.
    """
    features = as_matrix(features, "features")
    targets = np.asarray(targets)
    if targets.shape != (len(features),):
        raise JianmuError(f"{len(targets)} targets for {len(features)} feature rows")
    if len(features) == 0:
        raise JianmuError("no features to fit on")
    classes, index = np.unique(targets, return_inverse=True)
    index = index.reshape(-1)
    means = np.stack([features[index == i].mean(axis=0) for i in range(len(classes))])
    centered = features - means[index]
    covariance = centered.T @ centered / len(features)
    scale = np.trace(covariance) / len(covariance) or 1.0
    covariance += ridge * scale * np.eye(len(covariance))
    return MahalanobisModel(means, np.linalg.pinv(covariance, hermitian=True))


def fit_knn(features: np.ndarray) -> KnnModel:
    """Keep the L2-normalised training embeddings (float32 stays float32)."""
    features = as_matrix(features, "features", keep_float32=True)
    if len(features) == 0:
        raise JianmuError("no features to fit on")
    return KnnModel(l2_normalize(features))


def threshold_for_recall(scores_known: np.ndarray, target_recall: float) -> float:
    """A threshold t with at least ``target_recall`` of the known scores >= t.

    On the scores it was fit on, accepting ``score >= t`` keeps at least the target recall (more
    when scores tie). t lies halfway between the last score kept and the next one below it, so
    that the tiny differences between devices (fp32 on a GPU where training calibrated, on a CPU
    where a bundle predicts) do not move an image across it. With every score needed
    (``target_recall=1``), t lies as far below the lowest score as halfway to the next one up.
    """
    scores = as_vector(scores_known, "known scores")
    if not 0 < target_recall <= 1:
        raise JianmuError(f"target recall must be in (0, 1], got {target_recall}")
    # Smallest count m with m / n >= target, using the same division a recall check does
    # (a plain ceil(0.7 * 10) gives 8).
    fractions = np.arange(1, len(scores) + 1) / len(scores)
    needed = int(np.searchsorted(fractions, target_recall, side="left")) + 1
    ordered = np.sort(scores)[::-1]
    if needed < len(ordered):
        return float((ordered[needed - 1] + ordered[needed]) / 2)
    margin = (ordered[-2] - ordered[-1]) / 2 if len(ordered) > 1 else 0.0
    return float(ordered[-1] - margin)


def seeded_subset(items: Sequence[Any], limit: int, seed: int = 0) -> list[Any]:
    """At most ``limit`` of ``items``, drawn with ``seed``, in their original order."""
    if len(items) <= limit:
        return list(items)
    chosen = np.random.default_rng(seed).choice(len(items), limit, replace=False)
    return [items[i] for i in sorted(chosen)]


def _readable(outputs: Outputs, what: str) -> Outputs:
    readable = outputs.readable()
    if not len(readable.targets):
        raise JianmuError(f"no readable {what} image to calibrate on")
    return readable
