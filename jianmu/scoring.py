"""Scores over model outputs that need nothing but numpy: calibrated probabilities and the
unknown-species rules. An ONNX bundle is scored with these without importing torch, scipy or
scikit-learn, so ``jianmu predict`` starts fast; :mod:`jianmu.metrics` re-exports them.

A rule gives each image a score, higher = more like a known species; images under the threshold
become "unknown - refer to lab".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from jianmu.errors import JianmuError

RULES = ("msp", "energy", "mahalanobis", "relative_mahalanobis", "knn")
KNN_K = 5
# Largest query x bank similarity block score_knn holds at once (4M float64 = 32 MiB).
_CHUNK_ELEMENTS = 1 << 22


class ModelOutputs(Protocol):
    logits: np.ndarray  # N x C
    embeddings: np.ndarray  # N x D


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

    def to_dict(self) -> dict[str, list]:
        return {"means": self.means.tolist(), "precision": self.precision.tolist()}

    @classmethod
    def from_dict(cls, data: dict[str, list]) -> MahalanobisModel:
        return cls(np.asarray(data["means"]), np.asarray(data["precision"]))


@dataclass(eq=False)
class KnnModel:
    """L2-normalised training embeddings (M x D)."""

    embeddings: np.ndarray

    def to_dict(self) -> dict[str, list]:
        return {"embeddings": self.embeddings.tolist()}

    @classmethod
    def from_dict(cls, data: dict[str, list]) -> KnnModel:
        return cls(np.asarray(data["embeddings"]))


def score_msp(logits: np.ndarray) -> np.ndarray:
    """Maximum softmax probability of each row."""
    return softmax(_matrix(logits, "logits")).max(axis=1)


def score_energy(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Negative energy, ``T * logsumexp(logits / T)`` per row (Liu et al., 2020)."""
    if temperature <= 0:
        raise JianmuError(f"temperature must be positive, got {temperature}")
    return temperature * _logsumexp(_matrix(logits, "logits") / temperature)


def score_mahalanobis(model: MahalanobisModel, features: np.ndarray) -> np.ndarray:
    """Negative Mahalanobis distance of each row to the nearest class mean."""
    features = _matrix(features, "features")
    if features.shape[1] != model.means.shape[1]:
        raise JianmuError(f"features have {features.shape[1]} dims, model {model.means.shape[1]}")
    projected = features @ model.precision
    squared = (
        (projected * features).sum(axis=1)[:, None]
        - 2 * projected @ model.means.T
        + ((model.means @ model.precision) * model.means).sum(axis=1)[None, :]
    )
    return -np.sqrt(np.clip(squared.min(axis=1), 0, None))


def score_knn(model: KnnModel, features: np.ndarray, k: int = 5) -> np.ndarray:
    """Negative Euclidean distance to the k-th nearest training embedding, both L2-normalised.

    Scoring the training features themselves counts each one as its own nearest neighbour.
    """
    bank = model.embeddings
    if not 1 <= k <= len(bank):
        raise JianmuError(f"k must be between 1 and {len(bank)} training embeddings, got {k}")
    queries = _l2_normalize(_matrix(features, "features", keep_float32=True))
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


def _matrix(values: np.ndarray, what: str, keep_float32: bool = False) -> np.ndarray:
    """A finite 2-D float array (float64 unless float32 is given and kept)."""
    array = np.asarray(values)
    dtype = np.float32 if keep_float32 and array.dtype == np.float32 else np.float64
    array = array.astype(dtype, copy=False)
    if array.ndim != 2:
        raise JianmuError(f"expected {what} as an N x C array, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise JianmuError(f"{what} contain NaN or infinite values")
    return array


def _l2_normalize(rows: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length; all-zero rows stay zero."""
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return rows / np.maximum(norms, np.finfo(rows.dtype).tiny)


@dataclass
class OpenSetScorer:
    """Fitted on the training embeddings; scores new images by any rule.

    ``relative_mahalanobis`` (Ren et al. 2021, "A simple fix to Mahalanobis distance for improving
    near-OOD detection") subtracts the distance to one Gaussian fitted on all training embeddings,
    which cancels directions that every wood image shares and leaves the class-specific ones.
    """

    temperature: float
    mahalanobis: MahalanobisModel | None
    background: MahalanobisModel | None
    knn: KnnModel | None

    def score(self, rule: str, outputs: ModelOutputs) -> np.ndarray:
        if rule not in RULES:
            raise JianmuError(f"unknown open-set rule {rule!r}; choose one of {', '.join(RULES)}")
        if rule == "msp":
            return score_msp(outputs.logits / self.temperature)
        if rule == "energy":
            return score_energy(outputs.logits)
        if rule == "knn":
            return score_knn(self._need(self.knn, rule), outputs.embeddings, k=KNN_K)
        distance = score_mahalanobis(self._need(self.mahalanobis, rule), outputs.embeddings)
        if rule == "relative_mahalanobis":
            distance -= score_mahalanobis(self._need(self.background, rule), outputs.embeddings)
        return distance

    @staticmethod
    def _need(statistics: Any, rule: str) -> Any:
        if statistics is None:
            raise JianmuError(f"the open-set rule {rule!r} needs statistics this model lacks")
        return statistics


def _logsumexp(values: np.ndarray) -> np.ndarray:
    top = values.max(axis=1, keepdims=True)
    return (top + np.log(np.exp(values - top).sum(axis=1, keepdims=True)))[:, 0]
