"""Matplotlib figures from result objects (Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_curves(history: list[dict[str, Any]], path: str | Path) -> Path:
    """Loss and accuracy per epoch, train vs validation (and EMA when present)."""
    path = Path(path)
    epochs = [row["epoch"] for row in history]
    figure, (loss_axis, accuracy_axis) = plt.subplots(
        1, 2, figsize=(10, 4), constrained_layout=True
    )
    for key, label in (("train_loss", "train"), ("val_loss", "validation")):
        loss_axis.plot(epochs, [row.get(key) for row in history], marker=".", label=label)
    for key, label in (("train_top1", "train"), ("val_top1", "validation")):
        accuracy_axis.plot(epochs, [row.get(key) for row in history], marker=".", label=label)
    if any("ema_val_top1" in row for row in history):  # val_* is the better of model and EMA
        for key, label in (
            ("model_val_top1", "validation, model"),
            ("ema_val_top1", "validation, EMA"),
        ):
            values = [row.get(key) for row in history]
            accuracy_axis.plot(epochs, values, ls="--", lw=1, label=label)
    loss_axis.set(title="loss", xlabel="epoch")
    accuracy_axis.set(title="top-1 accuracy", xlabel="epoch", ylim=(0, 1.02))
    for axis in (loss_axis, accuracy_axis):
        axis.grid(alpha=0.3)
        axis.legend()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
