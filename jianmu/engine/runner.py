"""Running any :class:`~jianmu.bundle.ModelBundle` over image files (no torch needed)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from jianmu.bundle import ModelBundle
from jianmu.data.stream import stream_batches


@dataclass
class Outputs:
    """A model's outputs on a list of ``(path, label)`` items, one row per item."""

    logits: np.ndarray  # N x C float32
    embeddings: np.ndarray  # N x D float32, the classifier's input (pre-logits)
    targets: np.ndarray  # N int
    ok: np.ndarray  # N bool: False for images that could not be read (their rows are zeros)
    errors: dict[int, str] = field(default_factory=dict)  # row -> why it could not be read

    def subset(self, keep: np.ndarray) -> Outputs:
        """The rows where ``keep`` (a boolean mask) is true, renumbered."""
        rows = np.flatnonzero(keep)
        errors = {new: self.errors[old] for new, old in enumerate(rows) if old in self.errors}
        return Outputs(
            self.logits[keep], self.embeddings[keep], self.targets[keep], self.ok[keep], errors
        )


def bundle_outputs(
    bundle: ModelBundle,
    items: Sequence[tuple[str | Path, int]],
    batch_size: int = 32,
    views: int = 1,
    workers: int | None = None,
) -> Outputs:
    """Outputs of ``bundle`` on ``items`` with its own preprocessing, averaged over ``views``."""
    logits: np.ndarray | None = None
    embeddings: np.ndarray | None = None
    ok = np.zeros(len(items), dtype=bool)
    errors: dict[int, str] = {}
    paths = [path for path, _ in items]
    for batch in stream_batches(paths, bundle.spec, batch_size, workers):
        for position, reason in batch.errors.items():
            errors[batch.start + position] = reason
        if not len(batch.images):
            continue
        batch_logits, batch_embeddings = bundle.outputs(batch.images, views)
        if logits is None:
            logits = np.zeros((len(items), batch_logits.shape[1]), np.float32)
            embeddings = np.zeros((len(items), batch_embeddings.shape[1]), np.float32)
        rows = batch.start + np.flatnonzero(batch.ok)
        logits[rows], embeddings[rows] = batch_logits, batch_embeddings
        ok[rows] = True
    if logits is None:
        logits = np.zeros((len(items), bundle.num_classes), np.float32)
        embeddings = np.zeros((len(items), 1), np.float32)
    targets = np.asarray([label for _, label in items], dtype=np.int64)
    return Outputs(logits, embeddings, targets, ok, errors)
