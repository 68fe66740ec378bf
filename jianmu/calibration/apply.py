"""Applying a model's calibration, with numpy alone: temperature-scaled probabilities, the
unknown-species rule's score and verdict, and the answer at the deepest rank the model is sure of,
each with the threshold fitted for the number of test-time views.

The thresholds and temperatures live in the model's metadata document::

    "calibration": {"temperature", "views", "ece_val_before", "ece_val_after",
                    "single_view": {"temperature", "thresholds"}}    # when views > 1
    "unknown":     {"rule", "threshold", "thresholds", "target_known_recall", "knn_k"}
    "ranks":       see jianmu.calibration.ranks
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from jianmu.calibration.ranks import RankRule
from jianmu.calibration.scores import FeatureStatistics, softmax
from jianmu.outputs import Prediction


@dataclass(frozen=True)
class Calibration:
    """What turns outputs of ``views`` test-time views into calibrated verdicts."""

    temperature: float
    rule: str | None  # unknown-species rule; None when the model was never calibrated
    threshold: float | None
    views: int
    exact: bool = True
    """False when no threshold was fitted for this number of views (an older checkpoint)."""


def resolve_calibration(meta: dict[str, Any], views: int = 1) -> Calibration:
    """The temperature and the species threshold in force for ``views`` views: the rank rule's
    species threshold where ranks were fitted, else the unknown-species rule's own."""
    calibration = meta.get("calibration")
    unknown = meta.get("unknown")
    if not calibration:
        return Calibration(1.0, None, None, views)
    fitted_views = int(calibration.get("views", 1))
    rule = unknown["rule"] if unknown else None
    single = calibration.get("single_view")
    if views == fitted_views or not (views == 1 and single):
        temperature = float(calibration["temperature"])
        threshold = float(unknown["threshold"]) if unknown else None
    else:
        temperature = float(single["temperature"])
        threshold = float(single["thresholds"][rule]) if rule else None
    exact = views == fitted_views or bool(views == 1 and single)
    ranks = ((meta.get("ranks") or {}).get("thresholds") or {}).get(str(views))
    if ranks and rule is not None:
        species = ranks.get("species")
        threshold = float("inf") if species is None else float(species)  # inf: never a species
    return Calibration(temperature, rule, threshold, views, exact)


def calibrated_views(meta: dict[str, Any]) -> int:
    """The number of test-time views a model's thresholds were fitted for (1 if uncalibrated)."""
    return int((meta.get("calibration") or {}).get("views", 1))


class Calibrator:
    """A model's calibration, applied to its outputs: probabilities, the unknown-species rule and
    the answer at the deepest rank the model is sure of (:mod:`jianmu.calibration.ranks`)."""

    def __init__(self, meta: dict[str, Any], statistics: FeatureStatistics | None) -> None:
        self.meta = meta
        self.statistics = statistics
        self.ranks = RankRule(meta, statistics)

    def calibration(self, views: int = 1) -> Calibration:
        return resolve_calibration(self.meta, views)

    def apply(self, logits: np.ndarray, embeddings: np.ndarray, views: int = 1) -> Prediction:
        """Probabilities, scores, answers and evidence of outputs computed with ``views`` views."""
        calibration = self.calibration(views)
        probabilities = softmax(logits, calibration.temperature)
        if self.statistics is None or calibration.rule is None:
            scores = np.full(len(logits), np.nan)
            known = np.ones(len(logits), dtype=bool)
        else:
            scores = self.statistics.score(
                calibration.rule, logits, embeddings, calibration.temperature
            )
            known = scores >= calibration.threshold
        prediction = Prediction(logits, embeddings, probabilities, scores, known)
        answers = self.ranks.answer(
            logits, embeddings, probabilities, calibration.temperature, views
        )
        if answers is None:  # species or unknown, by the unknown-species rule alone
            top = probabilities.argmax(1) if len(probabilities) else []
            names = [self.ranks.species_of(index) for index in top]
            prediction.rank = ["species" if ok else "unknown" for ok in known]
            prediction.taxon = [name if ok else None for name, ok in zip(names, known, strict=True)]
            prediction.evidence = [{} for _ in prediction.rank]
        else:
            prediction.rank, prediction.taxon = answers.rank, answers.taxon
            prediction.evidence = answers.evidence
            prediction.known = np.array([rank == "species" for rank in answers.rank], dtype=bool)
        return prediction
