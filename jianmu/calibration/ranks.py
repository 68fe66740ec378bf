"""Answers at the deepest rank a model is sure of: a species, a genus (``Dalbergia sp.``), a family
(``Fabaceae``), or unknown. numpy only: an ONNX bundle answers with it.

Each class has a lineage (species, genus, family). An image's score for a class is the
unknown-species rule's score of that class alone (for ``relative_mahalanobis``: the relative
Mahalanobis score of the class's Gaussian; for ``msp``: its calibrated probability). At the
species rank the candidate is the top class by probability and the score is the best class score,
as in the unknown-species rule; at the genus and family ranks the candidate is the taxon whose
classes hold the most calibrated probability, and its score is the best score of its classes (a
distance to the nearest of them), or for ``msp`` the sum of their probabilities (what the model
gives the taxon: ten congeners at 9% each make a genus at 90%). The
answer is the first rank, from species down to family, whose score reaches that rank's threshold (a
rank answers only when the model knows at least two taxa at it);
thresholds are fitted by :func:`jianmu.calibration.fit.fit_rank_thresholds` for a stated wrong
rate (or carried over, in units of the validation scores, from models of the recipe trained
without a species each: ``calibration.open_set``), and stored in a model's metadata::

    "ranks": {"thresholds": {"1": {"species": t, "genus": t, "family": t}, "8": {...}},
              "max_wrong_rate": 0.01, "validation": {...},
              "transferred": {"thresholds_in_units", "held_out", "source"}}  # open_set only
    "hierarchy": {"lineage": [{"species", "genus", "family"} per class], "flags": {...}}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from jianmu.calibration.scores import FeatureStatistics, softmax, squared_distances

RANKS = ("species", "genus", "family")
UNKNOWN_RANK = "unknown"
# Rules with a score per class, so that a taxon can be scored by its classes.
RANKED_RULES = ("msp", "mahalanobis", "relative_mahalanobis")
# Rules whose class scores are probabilities: a taxon scores the sum of its classes'.
SUMMED_RULES = ("msp",)


@dataclass(frozen=True)
class Hierarchy:
    """The taxa of a model's classes at each rank: ``names[rank]`` and, per class, the index of
    its taxon (-1: the class has none at that rank)."""

    names: dict[str, list[str]]
    member: dict[str, np.ndarray]  # rank -> K ints

    @classmethod
    def from_lineage(cls, lineage: list[dict[str, str | None]], classes: list[str]) -> Hierarchy:
        names, member = {}, {}
        for rank in RANKS:
            # a class outside every taxonomy is its own species
            taxa = [
                (entry.get(rank) or (classes[i] if rank == "species" else None))
                for i, entry in enumerate(lineage)
            ]
            names[rank] = sorted({taxon for taxon in taxa if taxon})
            index = {name: i for i, name in enumerate(names[rank])}
            member[rank] = np.array([index.get(taxon, -1) for taxon in taxa])
        return cls(names, member)

    def matrix(self, rank: str, alive: np.ndarray | None = None) -> np.ndarray:
        """K x T membership of the classes (those ``alive``) in the taxa at ``rank``."""
        member = self.member[rank]
        matrix = np.zeros((len(member), len(self.names[rank])), dtype=bool)
        rows = np.flatnonzero(member >= 0)
        matrix[rows, member[rows]] = True
        if alive is not None:
            matrix &= alive[:, None]
        return matrix


@dataclass
class RankScores:
    """Per rank: each image's candidate taxon (index into ``Hierarchy.names[rank]``, -1: none)
    and its score."""

    taxa: dict[str, np.ndarray]
    scores: dict[str, np.ndarray]

    def subset(self, rows: np.ndarray) -> RankScores:
        return RankScores(
            {rank: taxa[rows] for rank, taxa in self.taxa.items()},
            {rank: scores[rows] for rank, scores in self.scores.items()},
        )

    def in_units(self, units: dict[str, tuple[float, float]]) -> RankScores:
        """The scores in a model's own units (:func:`rank_units`): ``(score - centre) / spread``
        at each rank."""
        return RankScores(
            dict(self.taxa),
            {rank: (self.scores[rank] - units[rank][0]) / units[rank][1] for rank in RANKS},
        )

    @staticmethod
    def concatenate(parts: list[RankScores]) -> RankScores:
        return RankScores(
            {rank: np.concatenate([part.taxa[rank] for part in parts]) for rank in RANKS},
            {rank: np.concatenate([part.scores[rank] for part in parts]) for rank in RANKS},
        )


@dataclass
class RankAnswers:
    """Each image's answer: its rank (a :data:`RANKS` item or ``unknown``) and taxon (None when
    unknown), with the evidence: the candidate, score and threshold at every rank."""

    rank: list[str]
    taxon: list[str | None]
    evidence: list[dict[str, dict[str, Any]]] = field(default_factory=list)


def class_scores(
    statistics: FeatureStatistics | None,
    rule: str,
    logits: np.ndarray,
    embeddings: np.ndarray,
    temperature: float,
) -> np.ndarray | None:
    """N x K scores of each image for each class alone (higher = more like it), or None when the
    rule has no per-class score (``energy``, ``knn``) or the model no statistics."""
    if rule == "msp":
        return softmax(logits, temperature)
    if rule not in RANKED_RULES or statistics is None or statistics.mahalanobis is None:
        return None
    scores = -np.sqrt(squared_distances(statistics.mahalanobis, embeddings))
    if rule == "relative_mahalanobis" and statistics.background is not None:
        scores += np.sqrt(squared_distances(statistics.background, embeddings))[:, :1]
    return scores


def rank_scores(
    scores: np.ndarray,
    probabilities: np.ndarray,
    hierarchy: Hierarchy,
    alive: np.ndarray | None = None,
    class_margin: np.ndarray | None = None,
    summed: bool = False,
) -> RankScores:
    """Candidate taxa and their scores at every rank (see the module docstring); ``alive`` leaves
    classes out, as calibration does to stand in for species the model never saw;
    ``class_margin`` (K, >= 0, inf: never) is taken off each class's score at every rank
    (species added without retraining, :mod:`jianmu.calibration.extend`: their evidence counts
    for less, also for the genus and family they bring). ``summed`` (the rule's scores are the
    probabilities, :data:`SUMMED_RULES`): a taxon scores the sum of its classes', and classes left
    out share theirs among the rest, as a softmax without their logits would."""
    if alive is not None:
        probabilities = np.where(alive[None, :], probabilities, 0.0)
        probabilities = probabilities / np.maximum(probabilities.sum(1, keepdims=True), 1e-300)
        scores = np.where(alive[None, :], scores, -np.inf)
    if summed:
        scores = probabilities  # the rule's class scores are the (renormalised) probabilities
    if class_margin is not None:
        scores = scores - class_margin[None, :]
    taxa, best = {}, {}
    for rank in RANKS:
        matrix = hierarchy.matrix(rank, alive)
        if rank == "species":
            top = probabilities.argmax(1)
            taxa[rank] = hierarchy.member[rank][top]
            best[rank] = scores.max(1)
            continue
        if matrix.any(0).sum() < 2:
            # no class has a taxon at this rank, or all share one: a model that never learned
            # what lies outside a taxon cannot say that a photo is in it
            taxa[rank] = np.full(len(scores), -1)
            best[rank] = np.full(len(scores), -np.inf)
            continue
        shares = probabilities @ matrix.astype(np.float64)
        candidate = shares.argmax(1)
        within = matrix.T[candidate]  # N x K: the classes of each image's candidate
        if summed:
            best[rank] = (np.maximum(scores, 0.0) * within).sum(1)  # margins may make some -inf
        else:
            best[rank] = np.where(within, scores, -np.inf).max(1)
        taxa[rank] = np.where(matrix.any(0)[candidate], candidate, -1)
    return RankScores(taxa, best)


def rank_units(known: RankScores) -> dict[str, tuple[float, float]]:
    """Per rank, the median and interquartile range of the scores of known validation photos
    (those with a candidate taxon there): the unit in which a threshold travels between models of
    one recipe, whose raw scores are not on one scale."""
    units = {}
    for rank in RANKS:
        scores = known.scores[rank]
        scores = scores[np.isfinite(scores) & (known.taxa[rank] >= 0)]
        if len(scores) < 2:
            units[rank] = (0.0, 1.0)
            continue
        low, median, high = np.quantile(scores, [0.25, 0.5, 0.75])
        units[rank] = (float(median), float(high - low) if high > low else 1.0)
    return units


def decide(scored: RankScores, thresholds: dict[str, float]) -> np.ndarray:
    """Each image's answer as the index of its rank in :data:`RANKS` (3: unknown)."""
    answer = np.full(len(scored.scores["species"]), len(RANKS))
    for position in reversed(range(len(RANKS))):
        rank = RANKS[position]
        passes = (scored.scores[rank] >= thresholds[rank]) & (scored.taxa[rank] >= 0)
        answer = np.where(passes, position, answer)
    return answer


class RankRule:
    """A model's rank rule, applied to its calibrated outputs."""

    def __init__(self, meta: dict[str, Any], statistics: FeatureStatistics | None) -> None:
        self.classes = list(meta["classes"])
        lineage = (meta.get("hierarchy") or {}).get("lineage") or [{} for _ in self.classes]
        self.lineage = lineage
        self.hierarchy = Hierarchy.from_lineage(lineage, self.classes)
        self.flags = (meta.get("hierarchy") or {}).get("flags") or {}
        self.thresholds = (meta.get("ranks") or {}).get("thresholds") or {}
        self.rule = (meta.get("unknown") or {}).get("rule")
        self.statistics = statistics
        self.class_margin = class_margins(meta)

    @property
    def fitted(self) -> bool:
        return bool(self.thresholds) and self.rule in RANKED_RULES

    def thresholds_for(self, views: int) -> dict[str, float] | None:
        fitted = self.thresholds.get(str(views))
        if not fitted:
            return None
        return {rank: np.inf if value is None else float(value) for rank, value in fitted.items()}

    def answer(
        self,
        logits: np.ndarray,
        embeddings: np.ndarray,
        probabilities: np.ndarray,
        temperature: float,
        views: int,
    ) -> RankAnswers | None:
        """The answers of images, or None when the model has no rank thresholds for ``views``."""
        thresholds = self.thresholds_for(views)
        if not self.fitted or thresholds is None:
            return None
        scored = self.scored(logits, embeddings, probabilities, temperature)
        answers = decide(scored, thresholds)
        result = RankAnswers([], [], [])
        for row, position in enumerate(answers):
            evidence = {
                rank: {
                    "taxon": self._name(rank, scored.taxa[rank][row]),
                    "score": _finite(scored.scores[rank][row]),
                    "threshold": _finite(thresholds[rank]),  # None: never answered at this rank
                }
                for rank in RANKS
            }
            rank = RANKS[position] if position < len(RANKS) else UNKNOWN_RANK
            result.rank.append(rank)
            result.taxon.append(evidence[rank]["taxon"] if rank != UNKNOWN_RANK else None)
            result.evidence.append(evidence)
        return result

    def scored(
        self, logits: np.ndarray, embeddings: np.ndarray, probabilities: np.ndarray, temperature
    ) -> RankScores:
        """The candidate taxa and scores of images at every rank."""
        scores = class_scores(self.statistics, self.rule, logits, embeddings, temperature)
        summed = self.rule in SUMMED_RULES
        return rank_scores(scores, probabilities, self.hierarchy, None, self.class_margin, summed)

    def species_of(self, index: int) -> str:
        """The species a class stands for (its own name outside every taxonomy)."""
        return self.hierarchy.names["species"][self.hierarchy.member["species"][index]]

    def _name(self, rank: str, index: int) -> str | None:
        return self.hierarchy.names[rank][index] if index >= 0 else None


def class_margins(meta: dict[str, Any]) -> np.ndarray | None:
    """Per class, what its score counts for less at every rank (0 for the classes the network was
    trained on; an added class's own margin, inf when it has none), or None for a model as
    trained."""
    extension = meta.get("extension")
    if not extension or not extension.get("added"):
        return None
    margins = np.zeros(len(meta["classes"]))
    added = extension.get("species_margin") or [None] * int(extension["added"])
    margins[len(margins) - len(added) :] = [np.inf if m is None else float(m) for m in added]
    return margins


def _finite(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None
