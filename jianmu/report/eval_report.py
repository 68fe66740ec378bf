"""Files from an :class:`~jianmu.engine.evaluate.EvalResult`: JSON, CSV, PNG, Markdown and HTML.

The Markdown and HTML reports are rendered from one list of sections, so they always say the same
thing. The HTML page embeds its figures as data URIs and needs nothing else to open offline.
"""

from __future__ import annotations

import base64
import csv
import html
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib
import numpy as np

from jianmu.data.samples import natural_key

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.colors import PowerNorm  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter  # noqa: E402

if TYPE_CHECKING:
    from jianmu.engine.evaluate import EvalResult

MISCLASSIFIED_SHOWN = 50
HEADLINE_ROWS = (
    ("top1", "top-1", "percent"),
    ("top2", "top-2", "percent"),
    ("top3", "top-3", "percent"),
    ("top5", "top-5", "percent"),
    ("balanced_accuracy", "balanced accuracy", "percent"),
    ("macro_f1", "macro-F1", "percent"),
    ("weighted_f1", "weighted-F1", "percent"),
    ("genus_top1", "genus top-1", "percent"),
    ("family_top1", "family top-1", "percent"),
    ("within_genus_errors", "errors within the right genus", "integer"),
)


def write_eval_report(result: EvalResult, out: str | Path) -> dict[str, Path]:
    """Write metrics.json, per_class.csv, confusion.csv/.png, reliability.png, misclassified.csv,
    predictions.csv (every image with its verdict), report.md and report.html into ``out``.

    Returns:
        File name -> path of every file written.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "metrics.json": _write_metrics_json(result, out / "metrics.json"),
        "per_class.csv": _write_per_class_csv(result, out / "per_class.csv"),
        "confusion.csv": _write_confusion_csv(result, out / "confusion.csv"),
        "misclassified.csv": _write_misclassified_csv(result, out / "misclassified.csv"),
        "predictions.csv": _write_predictions_csv(result, out / "predictions.csv"),
        "confusion.png": _plot_confusion(result, out / "confusion.png"),
        "reliability.png": _plot_reliability(result, out / "reliability.png"),
    }
    sections = _sections(result)
    paths["report.md"] = _write_markdown(result, sections, out / "report.md")
    paths["report.html"] = _write_html(result, sections, out / "report.html")
    return paths


# --- JSON and CSV ---------------------------------------------------------------------------------


def _json_safe(value: Any) -> Any:
    """Plain JSON values: numpy scalars and arrays unwrapped, NaN and infinity -> None."""
    if isinstance(value, dict):
        return {str(key): _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    if isinstance(value, np.ndarray):
        return _json_safe(value.tolist())
    if isinstance(value, np.generic):
        return _json_safe(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def _write_metrics_json(result: EvalResult, path: Path) -> Path:
    document = {
        "model": result.model,
        "data": result.data,
        "split": result.split,
        "classes": result.classes,
        **result.metrics,
        "specimen_metrics": result.specimen_metrics,
        "tta": result.tta,
        "open_set": result.open_set,
        "open_set_table": result.open_set_table,
        "most_confused": result.most_confused,
        "reliability_before": result.reliability_before,
        "reliability_after": result.reliability_after,
        "unreadable": [{"path": str(p), "reason": reason} for p, reason in result.unreadable],
    }
    text = json.dumps(_json_safe(document), indent=2, ensure_ascii=False, allow_nan=False)
    path.write_text(text + "\n", encoding="utf-8")
    return path


def _write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def _per_class_rows(result: EvalResult) -> list[dict[str, Any]]:
    """metrics["per_class"] with the taxonomy of each class added."""
    index = {name: i for i, name in enumerate(result.classes)}
    rows = []
    for row in result.metrics.get("per_class", []):
        i = index.get(row["class"])
        taxa = {
            level: (getattr(result, level)[i] if i is not None else None) or ""
            for level in ("species", "genus", "family")
        }
        rows.append({**row, **taxa})
    return rows


def _write_per_class_csv(result: EvalResult, path: Path) -> Path:
    header = ["class", "species", "genus", "family", "precision", "recall", "f1", "support"]
    rows = [[row.get(key, "") for key in header] for row in _per_class_rows(result)]
    return _write_csv(path, header, rows)


def _write_confusion_csv(result: EvalResult, path: Path) -> Path:
    counts = np.asarray(result.confusion)
    rows = [[name, *(int(c) for c in counts[i])] for i, name in enumerate(result.classes)]
    return _write_csv(path, ["true/predicted", *result.classes], rows)


def _write_misclassified_csv(result: EvalResult, path: Path) -> Path:
    header = ["path", "true_class"]
    for rank in (1, 2, 3):
        header += [f"top{rank}_class", f"top{rank}_probability"]
    rows = []
    for item in result.misclassified:
        row = [str(item.path), item.true_class]
        for rank in range(3):
            name, probability = item.top3[rank] if rank < len(item.top3) else ("", "")
            row += [name, f"{probability:.4f}" if probability != "" else ""]
        rows.append(row)
    return _write_csv(path, header, rows)


def _write_predictions_csv(result: EvalResult, path: Path) -> Path:
    header = ["path", "true_class", "predicted", "probability", "unknown_score", "verdict"]
    rows = [
        [row["path"], row["true_class"], row["predicted"], f"{row['probability']:.4f}",
         "" if math.isnan(row["unknown_score"]) else f"{row['unknown_score']:.4f}", row["verdict"]]
        for row in result.predictions
    ]  # fmt: skip
    return _write_csv(path, header, rows)


# --- figures --------------------------------------------------------------------------------------


def _has_taxonomy(result: EvalResult) -> bool:
    return any(result.family)


def _taxonomic_order(result: EvalResult) -> list[int]:
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


def _plot_confusion(result: EvalResult, path: Path) -> Path:
    """Row-normalised confusion matrix in taxonomic order, sized to stay readable at 150 classes."""
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


def _plot_reliability(result: EvalResult, path: Path) -> Path:
    """Accuracy per confidence bin before and after temperature scaling, counts underneath."""
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
        f" (T = {temperature:.3g})" if _is_number(temperature) else ""
    )
    panels = (
        (result.reliability_before, "before calibration", metrics.get("ece_before"), "tab:red"),
        (result.reliability_after, after, metrics.get("ece_after"), "tab:blue"),
    )
    for column, (bins, title, ece, colour) in enumerate(panels):
        _draw_reliability(axes[0, column], axes[1, column], bins, colour)
        ece_text = f"ECE {ece:.2%}" if _is_number(ece) else "ECE n/a"
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


# --- report content, shared by Markdown and HTML --------------------------------------------------


@dataclass
class _Table:
    header: list[str]
    rows: list[list[str]]


@dataclass
class _Figure:
    file: str
    caption: str


@dataclass
class _Section:
    title: str
    blocks: list[str | _Table | _Figure] = field(default_factory=list)
    """Plain-text paragraphs, tables and figures."""


def _is_number(value: Any) -> bool:
    if isinstance(value, (bool, np.bool_)):
        return False
    return isinstance(value, (int, float, np.number)) and math.isfinite(float(value))


def _format(value: Any, kind: str = "number") -> str:
    """Table text: percent, integer or three decimals; missing and NaN as a dash."""
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if not _is_number(value):
        return "–" if value is None or isinstance(value, (float, np.floating)) else str(value)
    if kind == "percent":
        return f"{float(value):.1%}"
    if kind == "integer" or isinstance(value, (int, np.integer)):
        return str(int(value))
    return f"{float(value):.3f}"


def _sections(result: EvalResult) -> list[_Section]:
    sections = [_headline_section(result)]
    if result.tta:
        sections.append(_tta_section(result.tta))
    if result.open_set or result.open_set_table:
        sections.append(_open_set_section(result))
    sections += [
        _Section(
            "Figures",
            [
                _Figure("confusion.png", "Row-normalised confusion matrix (taxonomic order)"),
                _Figure("reliability.png", "Reliability before and after temperature scaling"),
            ],
        ),
        _confused_section(result),
        _per_class_section(result),
    ]
    if result.unreadable:
        rows = [[str(path), reason] for path, reason in result.unreadable]
        sections.append(
            _Section(
                "Unreadable files",
                [
                    f"{len(rows)} file(s) could not be decoded and were left out.",
                    _Table(["path", "reason"], rows),
                ],
            )
        )
    sections.append(_misclassified_section(result))
    return sections


def _headline_section(result: EvalResult) -> _Section:
    metrics, specimen = result.metrics, result.specimen_metrics
    header = ["metric", "image level"] + (["specimen level"] if specimen is not None else [])
    rows = []
    for key, label, kind in HEADLINE_ROWS:
        if key not in metrics and (specimen is None or key not in specimen):
            continue
        row = [label, _format(metrics.get(key), kind)]
        rows.append(row + ([_format(specimen.get(key), kind)] if specimen is not None else []))
    ece = f"{_format(metrics.get('ece_before'), 'percent')} → "
    ece += _format(metrics.get("ece_after"), "percent")
    calibration = [
        ["ECE before → after temperature scaling", ece],
        ["temperature", _format(metrics.get("temperature"))],
        ["images", _format(metrics.get("count"), "integer")],
    ]
    if specimen is not None:
        calibration = [row + [""] for row in calibration[:2]]
        calibration.append(
            [
                "images / specimens",
                _format(metrics.get("count"), "integer"),
                _format(specimen.get("count"), "integer"),
            ]
        )
    about = (
        f"Model {result.model} on {result.data} ({result.split} split), "
        f"{len(result.classes)} classes."
    )
    return _Section("Headline", [about, _Table(header, rows + calibration)])


def _tta_section(tta: dict[str, Any]) -> _Section:
    gain = tta.get("gain")
    gain_text = f"{float(gain) * 100:+.1f} points" if _is_number(gain) else "–"
    rows = [
        [
            _format(tta.get("views"), "integer"),
            _format(tta.get("top1_without"), "percent"),
            _format(tta.get("top1_with"), "percent"),
            gain_text,
        ]
    ]
    return _Section(
        "Test-time augmentation", [_Table(["views", "top-1 without", "top-1 with", "gain"], rows)]
    )


def _generic_table(rows: list[dict[str, Any]]) -> _Table:
    """All keys as columns in first-seen order; fractions with three decimals."""
    header: list[str] = []
    for row in rows:
        header += [key for key in row if key not in header]
    return _Table(header, [[_format(row.get(key)) for key in header] for row in rows])


def _open_set_section(result: EvalResult) -> _Section:
    blocks: list[str | _Table | _Figure] = []
    if result.open_set:
        blocks.append("The bundle's unknown-species rule on this data:")
        blocks.append(
            _Table(
                ["setting", "value"],
                [[key, _format(value)] for key, value in result.open_set.items()],
            )
        )
    if result.open_set_table:
        blocks.append("Leave-species-out: each species held out in turn and scored as unknown.")
        blocks.append(_generic_table(result.open_set_table))
    return _Section("Open set (unknown species)", blocks)


def _confused_section(result: EvalResult) -> _Section:
    if not result.most_confused:
        return _Section("Most confused pairs", ["No confusions."])
    index = {name: i for i, name in enumerate(result.classes)}
    totals = np.asarray(result.confusion).sum(axis=1)
    rows = []
    for true, predicted, count in result.most_confused:
        total = totals[index[true]] if true in index else 0
        share = _format(count / total, "percent") if total else "–"
        rows.append([true, predicted, _format(count, "integer"), share])
    return _Section(
        "Most confused pairs",
        [_Table(["true class", "predicted as", "images", "share of true class"], rows)],
    )


def _per_class_section(result: EvalResult) -> _Section:
    per_class = sorted(_per_class_rows(result), key=lambda row: (row["f1"], row["class"]))
    header = ["class", "species", "family", "precision", "recall", "F1", "support"]
    rows = [
        [
            row["class"],
            row["species"],
            row["family"],
            _format(row["precision"], "percent"),
            _format(row["recall"], "percent"),
            _format(row["f1"], "percent"),
            _format(row["support"], "integer"),
        ]
        for row in per_class
    ]
    return _Section("Per class (lowest F1 first)", [_Table(header, rows)])


def _misclassified_section(result: EvalResult) -> _Section:
    items = result.misclassified
    if not items:
        return _Section("Misclassified images", ["None."])
    rows = []
    for item in items[:MISCLASSIFIED_SHOWN]:
        guesses = [f"{name} ({probability:.0%})" for name, probability in item.top3]
        rows.append([str(item.path), item.true_class, *guesses, *[""] * (3 - len(guesses))])
    note = f"{len(items)} misclassified image(s)"
    if len(items) > MISCLASSIFIED_SHOWN:
        note += f", the first {MISCLASSIFIED_SHOWN} shown"
    note += "; all of them are in misclassified.csv (calibrated probabilities)."
    header = ["path", "true class", "top-1", "top-2", "top-3"]
    return _Section("Misclassified images", [note, _Table(header, rows)])


# --- Markdown -------------------------------------------------------------------------------------


def _markdown_escape(text: str) -> str:
    """Backslash-escape what would break a table cell or read as markup (paths keep "_")."""
    text = str(text)
    for character in "\\`*|<>[]":
        text = text.replace(character, "\\" + character)
    return text


def _markdown_block(block: str | _Table | _Figure) -> str:
    if isinstance(block, _Figure):
        return f"![{block.caption}]({block.file})"
    if isinstance(block, _Table):
        lines = [
            "| " + " | ".join(_markdown_escape(cell) for cell in block.header) + " |",
            "|" + "|".join(" --- " for _ in block.header) + "|",
        ]
        lines += ["| " + " | ".join(_markdown_escape(c) for c in row) + " |" for row in block.rows]
        return "\n".join(lines)
    return _markdown_escape(block)


def _write_markdown(result: EvalResult, sections: list[_Section], path: Path) -> Path:
    parts = [f"# Evaluation: {_markdown_escape(result.model)}"]
    for section in sections:
        parts.append(f"## {section.title}")
        parts += [_markdown_block(block) for block in section.blocks]
    parts.append(
        "Files: metrics.json, per_class.csv, confusion.csv, misclassified.csv, predictions.csv, "
        "[confusion.png](confusion.png), [reliability.png](reliability.png)."
    )
    path.write_text("\n\n".join(parts) + "\n", encoding="utf-8")
    return path


# --- HTML -----------------------------------------------------------------------------------------

_CSS = """
body { font: 14px/1.45 system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em;
       color: #222; }
h1 { font-size: 1.6em; } h2 { font-size: 1.2em; border-bottom: 1px solid #ddd; margin-top: 2em; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 13px; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f3f3f3; } tr:nth-child(even) td { background: #fafafa; }
td { word-break: break-word; }
figure { margin: 1em 0; } figcaption { color: #555; font-size: 13px; }
img { max-width: 100%; height: auto; border: 1px solid #eee; }
"""


def _html_block(block: str | _Table | _Figure, folder: Path) -> str:
    if isinstance(block, _Figure):
        data = base64.b64encode((folder / block.file).read_bytes()).decode("ascii")
        caption = html.escape(block.caption)
        return (
            f'<figure><img src="data:image/png;base64,{data}" alt="{caption}">'
            # The embedded copy is enough offline; the link gives full-size pixels beside the file.
            f'<figcaption>{caption} (<a href="{html.escape(block.file)}">full size</a>)'
            "</figcaption></figure>"
        )
    if isinstance(block, _Table):
        head = "".join(f"<th>{html.escape(str(cell))}</th>" for cell in block.header)
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(str(cell))}</td>" for cell in row) + "</tr>"
            for row in block.rows
        )
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    return f"<p>{html.escape(block)}</p>"


def _write_html(result: EvalResult, sections: list[_Section], path: Path) -> Path:
    title = html.escape(f"Evaluation: {result.model}")
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{title}</title><style>{_CSS}</style></head><body>",
        f"<h1>{title}</h1>",
    ]
    for section in sections:
        parts.append(f"<h2>{html.escape(section.title)}</h2>")
        parts += [_html_block(block, path.parent) for block in section.blocks]
    parts.append("</body></html>")
    path.write_text("\n".join(parts) + "\n", encoding="utf-8")
    return path
