"""Running any :class:`~jianmu.bundle.ModelBundle` over image files (no torch needed)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from jianmu.bundle import ModelBundle
from jianmu.data.stream import stream_batches


class BundleOutputs:
    """Logits and embeddings of a list of ``(path, label)`` items, like
    ``jianmu.engine.inference.Outputs``; rows of unreadable images are zeros with ``ok=False``."""

    def __init__(self, logits, embeddings, targets, ok, errors: dict[int, str]) -> None:
        self.logits = logits
        self.embeddings = embeddings
        self.targets = targets
        self.ok = ok
        self.errors = errors  # item index -> reason

    def subset(self, keep: np.ndarray) -> BundleOutputs:
        kept = {int(i): reason for i, reason in self.errors.items() if keep[i]}
        return BundleOutputs(
            self.logits[keep], self.embeddings[keep], self.targets[keep], self.ok[keep], kept
        )


def bundle_outputs(
    bundle: ModelBundle,
    items: Sequence[tuple[str | Path, int]],
    batch_size: int = 32,
    views: int = 1,
    workers: int | None = None,
) -> BundleOutputs:
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
    return BundleOutputs(logits, embeddings, targets, ok, errors)
