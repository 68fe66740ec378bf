"""Matplotlib figures from result objects (Agg backend: no display needed).

Results are taken duck-typed, so that this module imports nothing from :mod:`jianmu.engine`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np

from jianmu.data.samples import natural_key

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.colors import PowerNorm  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter  # noqa: E402


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


def is_number(value: Any) -> bool:
    """A finite int or float (numpy included); bools are not numbers here."""
    if isinstance(value, (bool, np.bool_)):
        return False
    return isinstance(value, (int, float, np.number)) and math.isfinite(float(value))


def _has_taxonomy(result: Any) -> bool:
    return any(result.family)


def _taxonomic_order(result: Any) -> list[int]:
    """Class indices by family, genus, then name, so that confusable classes sit together.

    Without taxonomy the classes keep their own (natural) order. Unknown taxa sort last.
    """
    if not _has_taxonomy(result):
        return list(range(len(result.classes)))

    def key(i: int) -> tuple:
        family, genus = result.family[i], result.genus[i]
        name = result.species[i] or result.classes[i]
        return (family is None, family or "", genus is None, genus or "", natural_key(name))

    return sorted(range(len(result.classes)), key=key)


def _row_normalized(counts: np.ndarray) -> np.ndarray:
    totals = counts.sum(axis=1, keepdims=True)
    return np.divide(counts, totals, out=np.zeros(counts.shape), where=totals > 0)


def _group_runs(labels: list[str | None]) -> list[tuple[int, int, str | None]]:
    """(start, stop, label) of each run of equal consecutive labels."""
    runs: list[tuple[int, int, str | None]] = []
    for position, label in enumerate(labels):
        if runs and runs[-1][2] == label:
            runs[-1] = (runs[-1][0], position + 1, label)
        else:
            runs.append((position, position + 1, label))
    return runs


def plot_confusion(result: Any, path: str | Path) -> Path:
    """Row-normalised confusion matrix in taxonomic order, sized to stay readable at 150 classes.

    Args:
        result: an ``EvalResult`` of :mod:`jianmu.engine.evaluate`.
        path: the PNG to write.
    """
    path = Path(path)
    order = _taxonomic_order(result)
    matrix = _row_normalized(np.asarray(result.confusion, dtype=np.float64))[np.ix_(order, order)]
    count = len(order)
    side = min(max(6.0, 0.12 * count), 24.0)
    font = max(3.0, min(9.0, 600 / max(count, 1)))
    figure, axis = plt.subplots(figsize=(side + 2.5, side + 1.5), constrained_layout=True)
    # Masked zeros stay white; sqrt colour scaling keeps 1-2 % confusions visible.
    image = axis.imshow(
        np.ma.masked_equal(matrix, 0.0),
        cmap="viridis_r",
        norm=PowerNorm(gamma=0.5, vmin=0.0, vmax=1.0),
        interpolation="nearest",
    )
    names = [result.species[i] or result.classes[i] for i in order]
    italic = [bool(result.species[i]) for i in order]
    axis.set_xticks(range(count), names, rotation=90, fontsize=font)
    axis.set_yticks(range(count), names, fontsize=font)
    for labels in (axis.get_xticklabels(), axis.get_yticklabels()):
        for label, is_species in zip(labels, italic, strict=True):
            label.set_fontstyle("italic" if is_species else "normal")
    axis.tick_params(length=1.5, width=0.4, pad=1)
    axis.set_xlabel("predicted", fontsize=max(font, 8))
    axis.set_ylabel("true", fontsize=max(font, 8))
    if _has_taxonomy(result):
        _draw_family_boundaries(axis, [result.family[i] for i in order], font)
    bar = figure.colorbar(image, ax=axis, shrink=min(0.6, 4.0 / side + 0.2), pad=0.01)
    bar.set_ticks([0, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0])
    bar.set_label("fraction of the true class (sqrt scale)", fontsize=8)
    bar.ax.tick_params(labelsize=7)
    images = int(np.asarray(result.confusion).sum())
    axis.set_title(
        f"{result.model} on {result.split}: {count} classes, {images} images, rows sum to 1",
        fontsize=10,
    )
    figure.savefig(path, dpi=150, bbox_inches="tight", pad_inches=0.1)
    plt.close(figure)
    return path


def _draw_family_boundaries(axis: Any, families: list[str | None], font: float) -> None:
    """Thin lines between families and the family names along the top edge."""
    runs = _group_runs(families)
    for start, _, _ in runs[1:]:
        axis.axhline(start - 0.5, color="0.35", lw=0.4)
        axis.axvline(start - 0.5, color="0.35", lw=0.4)
    top = axis.secondary_xaxis("top")
    top.set_xticks(
        [(start + stop - 1) / 2 for start, stop, _ in runs],
        [family or "(no family)" for _, _, family in runs],
        rotation=90,
        fontsize=font,
    )
    top.tick_params(length=0, pad=1)


def plot_reliability(result: Any, path: str | Path) -> Path:
    """Accuracy per confidence bin before and after temperature scaling, counts underneath.

    Args:
        result: an ``EvalResult`` of :mod:`jianmu.engine.evaluate`.
        path: the PNG to write.
    """
    path = Path(path)
    figure, axes = plt.subplots(
        2,
        2,
        figsize=(10, 5.5),
        sharex=True,
        sharey="row",
        gridspec_kw={"height_ratios": (3, 1)},
        constrained_layout=True,
    )
    metrics = result.metrics
    temperature = metrics.get("temperature")
    after = "after temperature scaling" + (
        f" (T = {temperature:.3g})" if is_number(temperature) else ""
    )
    panels = (
        (result.reliability_before, "before calibration", metrics.get("ece_before"), "tab:red"),
        (result.reliability_after, after, metrics.get("ece_after"), "tab:blue"),
    )
    for column, (bins, title, ece, colour) in enumerate(panels):
        _draw_reliability(axes[0, column], axes[1, column], bins, colour)
        ece_text = f"ECE {ece:.2%}" if is_number(ece) else "ECE n/a"
        axes[0, column].set_title(f"{title}\n{ece_text}", fontsize=10)
    axes[0, 0].set_ylabel("accuracy")
    axes[1, 0].set_ylabel("images")
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def _draw_reliability(diagram: Any, histogram: Any, bins: list[dict], colour: str) -> None:
    """Accuracy bars with the gap to mean confidence hatched (Guo et al., 2017), counts below."""
    filled = [row for row in bins if row["count"]]
    lowers = [row["lower"] for row in filled]
    widths = [row["upper"] - row["lower"] for row in filled]
    accuracy = np.array([row["accuracy"] for row in filled], dtype=float)
    confidence = np.array([row["confidence"] for row in filled], dtype=float)
    diagram.bar(
        lowers,
        accuracy,
        widths,
        align="edge",
        color=colour,
        alpha=0.8,
        edgecolor="white",
        label="accuracy",
    )
    diagram.bar(
        lowers,
        np.abs(confidence - accuracy),
        widths,
        np.minimum(confidence, accuracy),
        align="edge",
        fill=False,
        hatch="///",
        edgecolor="0.2",
        lw=0.5,
        label="gap to mean confidence",
    )
    diagram.plot([0, 1], [0, 1], color="0.3", ls="--", lw=1, label="perfect calibration")
    diagram.set(xlim=(0, 1), ylim=(0, 1.02))
    diagram.grid(alpha=0.3)
    diagram.legend(loc="upper left", fontsize=8)
    histogram.bar(
        lowers,
        [row["count"] for row in filled],
        widths,
        align="edge",
        color="0.55",
        edgecolor="white",
    )
    if filled:
        histogram.set_yscale("log")  # most images sit in the top bin; log keeps the rest visible
        histogram.set_ylim(bottom=0.5)  # a bin of one image still shows
        histogram.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        histogram.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        histogram.yaxis.set_minor_formatter(NullFormatter())
    histogram.set_xlabel("confidence of the top class")
    histogram.grid(alpha=0.3)
