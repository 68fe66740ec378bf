"""The unknown-species rules' building blocks, numpy only: softmax, the Mahalanobis and
k-nearest-neighbour models of training embeddings, the rule scores, and the feature statistics
that travel with a model (float32 arrays named ``openset.<name>``: checkpoint extras, the bundles'
statistics blob).

A rule gives each image a score, higher = more like a known species. ``relative_mahalanobis``
(Ren et al. 2021, "A simple fix to Mahalanobis distance for improving near-OOD detection")
subtracts the distance to one Gaussian fitted on all training embeddings from the distance to the
nearest class, which cancels the directions every photo of the domain shares.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from jianmu.config import UNKNOWN_RULES
from jianmu.errors import JianmuError
from jianmu.outputs import as_matrix

RULES = UNKNOWN_RULES
KNN_K = 5
STATISTICS_PREFIX = "openset."
_STATISTICS = ("means", "precision", "background_mean", "background_precision", "knn")
# Largest query x bank similarity block score_knn holds at once (4M float64 = 32 MiB).
_CHUNK_ELEMENTS = 1 << 22


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Softmax over the last axis of ``logits / temperature``, computed in float64."""
    if temperature <= 0:
        raise JianmuError(f"temperature must be positive, got {temperature}")
    scaled = np.asarray(logits, dtype=np.float64) / temperature
    exp = np.exp(scaled - scaled.max(axis=-1, keepdims=True))
    return exp / exp.sum(axis=-1, keepdims=True)


@dataclass(eq=False)
class MahalanobisModel:
    """Class means (K x D) and the shared precision matrix (D x D) of training features."""

    means: np.ndarray
    precision: np.ndarray


@dataclass(eq=False)
class KnnModel:
    """L2-normalised training embeddings (M x D)."""

    embeddings: np.ndarray


def score_msp(logits: np.ndarray) -> np.ndarray:
    """Maximum softmax probability of each row."""
    return softmax(as_matrix(logits, "logits")).max(axis=1)


def score_energy(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Negative energy, ``T * logsumexp(logits / T)`` per row (Liu et al., 2020)."""
    if temperature <= 0:
        raise JianmuError(f"temperature must be positive, got {temperature}")
    return temperature * logsumexp_rows(as_matrix(logits, "logits") / temperature)


def score_mahalanobis(model: MahalanobisModel, features: np.ndarray) -> np.ndarray:
    """Negative Mahalanobis distance of each row to the nearest class mean."""
    features = as_matrix(features, "features")
    if features.shape[1] != model.means.shape[1]:
        raise JianmuError(f"features have {features.shape[1]} dims, model {model.means.shape[1]}")
    return -np.sqrt(squared_distances(model, features).min(axis=1))


def squared_distances(model: MahalanobisModel, features: np.ndarray) -> np.ndarray:
    """N x K squared Mahalanobis distances of ``features`` to each mean, with the shared
    precision."""
    features = np.asarray(features, dtype=np.float64)
    projected = features @ model.precision
    squared = (
        (projected * features).sum(axis=1)[:, None]
        - 2 * projected @ model.means.T
        + ((model.means @ model.precision) * model.means).sum(axis=1)[None, :]
    )
    return np.clip(squared, 0, None)


def score_knn(model: KnnModel, features: np.ndarray, k: int = KNN_K) -> np.ndarray:
    """Negative Euclidean distance to the k-th nearest training embedding, both L2-normalised.

    Scoring the training features themselves counts each one as its own nearest neighbour.
    """
    bank = model.embeddings
    if not 1 <= k <= len(bank):
        raise JianmuError(f"k must be between 1 and {len(bank)} training embeddings, got {k}")
    queries = l2_normalize(as_matrix(features, "features", keep_float32=True))
    if queries.shape[1] != bank.shape[1]:
        raise JianmuError(f"features have {queries.shape[1]} dims, model {bank.shape[1]}")
    step = max(1, _CHUNK_ELEMENTS // len(bank))
    scores = np.empty(len(queries), dtype=np.float64)
    for start in range(0, len(queries), step):
        similarity = queries[start : start + step] @ bank.T
        kth = -np.partition(-similarity, k - 1, axis=1)[:, k - 1]
        # |a - b|^2 = 2 - 2 a.b for unit vectors
        scores[start : start + step] = -np.sqrt(np.clip(2 - 2 * kth, 0, None))
    return scores


@dataclass
class FeatureStatistics:
    """What the embedding-based rules need, fitted on training embeddings."""

    mahalanobis: MahalanobisModel | None
    background: MahalanobisModel | None
    knn: KnnModel | None

    def score(
        self, rule: str, logits: np.ndarray, embeddings: np.ndarray, temperature: float
    ) -> np.ndarray:
        """Each image's score under ``rule`` (higher = more like a known species)."""
        if rule not in RULES:
            raise JianmuError(f"unknown open-set rule {rule!r}; choose one of {', '.join(RULES)}")
        if rule == "msp":
            return score_msp(np.asarray(logits) / temperature)
        if rule == "energy":
            return score_energy(logits)
        if rule == "knn":
            return score_knn(self._need(self.knn, rule), embeddings)
        distance = score_mahalanobis(self._need(self.mahalanobis, rule), embeddings)
        if rule == "relative_mahalanobis":
            distance -= score_mahalanobis(self._need(self.background, rule), embeddings)
        return distance

    def rules(self) -> list[str]:
        """The rules these statistics can score (the kNN bank is kept for ``knn`` alone)."""
        return [rule for rule in RULES if rule != "knn" or self.knn is not None]

    def to_arrays(self, keep_knn: bool = True) -> dict[str, np.ndarray]:
        """float32 arrays named ``openset.<name>``, as checkpoints and bundles store them."""
        arrays: dict[str, np.ndarray | None] = dict.fromkeys(_STATISTICS)
        if self.mahalanobis is not None:
            arrays["means"], arrays["precision"] = (
                self.mahalanobis.means,
                self.mahalanobis.precision,
            )
        if self.background is not None:
            arrays["background_mean"] = self.background.means
            arrays["background_precision"] = self.background.precision
        if self.knn is not None and keep_knn:
            arrays["knn"] = self.knn.embeddings
        return {
            STATISTICS_PREFIX + name: np.ascontiguousarray(value, dtype=np.float32)
            for name, value in arrays.items()
            if value is not None
        }

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> FeatureStatistics | None:
        """The statistics in ``openset.*`` arrays (float32 as stored); None when there are none."""
        found = {
            name.removeprefix(STATISTICS_PREFIX): np.asarray(value)
            for name, value in arrays.items()
            if name.startswith(STATISTICS_PREFIX)
            and name.removeprefix(STATISTICS_PREFIX) in _STATISTICS
        }
        if not found:
            return None

        def gaussian(means: str, precision: str) -> MahalanobisModel | None:
            if means not in found or precision not in found:
                return None
            return MahalanobisModel(
                found[means].astype(np.float64), found[precision].astype(np.float64)
            )

        knn = found.get("knn")
        return cls(
            gaussian("means", "precision"),
            gaussian("background_mean", "background_precision"),
            KnnModel(knn.astype(np.float32)) if knn is not None else None,
        )

    def as_stored(self) -> FeatureStatistics:
        """These statistics after the float32 round trip of storage: thresholds are fitted on the
        statistics exactly as a bundle will hold them."""
        return FeatureStatistics.from_arrays(self.to_arrays())

    @staticmethod
    def _need(statistics: Any, rule: str) -> Any:
        if statistics is None:
            raise JianmuError(f"the open-set rule {rule!r} needs statistics this model lacks")
        return statistics


def l2_normalize(rows: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length; all-zero rows stay zero."""
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return rows / np.maximum(norms, np.finfo(rows.dtype).tiny)


def logsumexp_rows(values: np.ndarray) -> np.ndarray:
    """``log(sum(exp(row)))`` of each row, computed stably (numpy only: no scipy on the ONNX
    path)."""
    top = values.max(axis=1, keepdims=True)
    return (top + np.log(np.exp(values - top).sum(axis=1, keepdims=True)))[:, 0]
