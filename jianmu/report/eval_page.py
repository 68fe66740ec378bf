"""The Markdown and HTML pages of an evaluation report, rendered from one list of sections.

Both pages then always say the same thing. The HTML page embeds its figures as data URIs and needs
nothing else to open offline. Results are taken duck-typed (an ``EvalResult`` of
:mod:`jianmu.engine.evaluate`), so that this module imports nothing from :mod:`jianmu.engine`.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from jianmu.report.plots import is_number

# The files of a report folder; jianmu.report.eval_files writes them, the pages name them.
METRICS_JSON = "metrics.json"
PER_CLASS_CSV = "per_class.csv"
CONFUSION_CSV = "confusion.csv"
MISCLASSIFIED_CSV = "misclassified.csv"
PREDICTIONS_CSV = "predictions.csv"
CONFUSION_PNG = "confusion.png"
RELIABILITY_PNG = "reliability.png"
REPORT_MD = "report.md"
REPORT_HTML = "report.html"

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
SPECIMEN_ROWS = (
    ("identified", "specimens identified", "percent"),
    ("identified_top1", "top-1 of identified specimens", "percent"),
)
"""Specimen-level only: the rest of the specimens are referred to the lab."""


def write_markdown(result: Any, path: str | Path) -> Path:
    """Write the report as Markdown; ``result`` is an ``EvalResult`` of jianmu.engine.evaluate."""
    path = Path(path)
    parts = [f"# Evaluation: {_markdown_escape(result.model)}"]
    for section in _sections(result):
        parts.append(f"## {section.title}")
        parts += [_markdown_block(block) for block in section.blocks]
    parts.append(
        f"Files: {METRICS_JSON}, {PER_CLASS_CSV}, {CONFUSION_CSV}, {MISCLASSIFIED_CSV}, "
        f"{PREDICTIONS_CSV}, [{CONFUSION_PNG}]({CONFUSION_PNG}), "
        f"[{RELIABILITY_PNG}]({RELIABILITY_PNG})."
    )
    path.write_text("\n\n".join(parts) + "\n", encoding="utf-8")
    return path


def write_html(result: Any, path: str | Path) -> Path:
    """Write the report as one self-contained HTML page; ``result`` is an ``EvalResult`` of
    jianmu.engine.evaluate, and the figures must already lie beside ``path``."""
    path = Path(path)
    title = html.escape(f"Evaluation: {result.model}")
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{title}</title><style>{_CSS}</style></head><body>",
        f"<h1>{title}</h1>",
    ]
    for section in _sections(result):
        parts.append(f"<h2>{html.escape(section.title)}</h2>")
        parts += [_html_block(block, path.parent) for block in section.blocks]
    parts.append("</body></html>")
    path.write_text("\n".join(parts) + "\n", encoding="utf-8")
    return path


def per_class_rows(result: Any) -> list[dict[str, Any]]:
    """metrics["per_class"] with the species, genus and family of each class added."""
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


def _format(value: Any, kind: str = "number") -> str:
    """Table text: percent, integer or three decimals; missing and NaN as a dash."""
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if not is_number(value):
        return "–" if value is None or isinstance(value, (float, np.floating)) else str(value)
    if kind == "percent":
        return f"{float(value):.1%}"
    if kind == "integer" or isinstance(value, (int, np.integer)):
        return str(int(value))
    return f"{float(value):.3f}"


def _sections(result: Any) -> list[_Section]:
    sections = [_headline_section(result)]
    if result.tta:
        sections.append(_tta_section(result.tta))
    if (result.metrics or {}).get("ranks"):
        sections.append(_ranks_section(result))
    if result.open_set or result.open_set_table:
        sections.append(_open_set_section(result))
    sections += [
        _Section(
            "Figures",
            [
                _Figure(CONFUSION_PNG, "Row-normalised confusion matrix (taxonomic order)"),
                _Figure(RELIABILITY_PNG, "Reliability before and after temperature scaling"),
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


def _headline_section(result: Any) -> _Section:
    metrics, specimen = result.metrics, result.specimen_metrics
    header = ["metric", "image level"] + (["specimen level"] if specimen is not None else [])
    rows = _headline_rows(metrics, specimen) + _specimen_only_rows(specimen)
    about = (
        f"Model {result.model} on {result.data} ({result.split} split), "
        f"{len(result.classes)} classes."
    )
    blocks: list[str | _Table | _Figure] = [about, _Table(header, rows + _count_rows(result))]
    if specimen is not None and specimen.get("rule"):
        blocks.append(str(specimen["rule"]))
    return _Section("Headline", blocks)


def _headline_rows(metrics: dict[str, Any], specimen: dict[str, Any] | None) -> list[list[str]]:
    """One row per HEADLINE_ROWS key measured at either level; a specimen column when measured."""
    rows = []
    for key, label, kind in HEADLINE_ROWS:
        if key not in metrics and (specimen is None or key not in specimen):
            continue
        row = [label, _format(metrics.get(key), kind)]
        rows.append(row + ([_format(specimen.get(key), kind)] if specimen is not None else []))
    return rows


def _specimen_only_rows(specimen: dict[str, Any] | None) -> list[list[str]]:
    """SPECIMEN_ROWS present in ``specimen``, with an empty image-level cell."""
    if specimen is None:
        return []
    return [
        [label, "", _format(specimen[key], kind)]
        for key, label, kind in SPECIMEN_ROWS
        if key in specimen
    ]


def _count_rows(result: Any) -> list[list[str]]:
    """Calibration and how many images (and specimens) were measured."""
    metrics, specimen = result.metrics, result.specimen_metrics
    ece = f"{_format(metrics.get('ece_before'), 'percent')} → "
    ece += _format(metrics.get("ece_after"), "percent")
    images = _format(metrics.get("count"), "integer")
    rows = [
        ["ECE before → after temperature scaling", ece],
        ["temperature", _format(metrics.get("temperature"))],
    ]
    if specimen is None:
        return rows + [["images", images]]
    specimens = _format(specimen.get("count"), "integer")
    return [row + [""] for row in rows] + [["images / specimens", images, specimens]]


def _tta_section(tta: dict[str, Any]) -> _Section:
    gain = tta.get("gain")
    gain_text = f"{float(gain) * 100:+.1f} points" if is_number(gain) else "–"
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


RANK_COLUMNS = ("species", "genus", "family", "unknown", "wrong", "deepest_right", "count")


def _ranks_section(result: Any) -> _Section:
    """How photos were answered, at which rank, and how many wrongly: the known species and (with
    images of species the model does not know) those."""
    header = ["photos", *RANK_COLUMNS]
    rows = [["known species", *_rank_cells(result.metrics["ranks"])]]
    unknown = (result.open_set or {}).get("ranks")
    if unknown:
        rows.append(["species the model does not know", *_rank_cells(unknown)])
    note = (
        "Share of photos answered at each rank (the deepest rank the model is sure of); wrong: a "
        "wrong taxon at the rank given; deepest_right: the deepest answer a model with these "
        "classes could rightly give."
    )
    return _Section("Answers by rank", [note, _Table(header, rows)])


def _rank_cells(figures: dict[str, Any]) -> list[str]:
    return [
        _format(figures.get(key), "integer" if key == "count" else "percent")
        for key in RANK_COLUMNS
    ]


def _open_set_section(result: Any) -> _Section:
    blocks: list[str | _Table | _Figure] = []
    if result.open_set:
        blocks.append("The bundle's unknown-species rule on this data:")
        rule = {key: value for key, value in result.open_set.items() if key != "ranks"}
        blocks.append(
            _Table(["setting", "value"], [[key, _format(value)] for key, value in rule.items()])
        )
    if result.open_set_table:
        blocks.append("Leave-species-out: each species held out in turn and scored as unknown.")
        blocks.append(_generic_table(result.open_set_table))
    return _Section("Open set (unknown species)", blocks)


def _confused_section(result: Any) -> _Section:
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


def _per_class_section(result: Any) -> _Section:
    per_class = sorted(per_class_rows(result), key=lambda row: (row["f1"], row["class"]))
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


def _misclassified_section(result: Any) -> _Section:
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
    note += f"; all of them are in {MISCLASSIFIED_CSV} (calibrated probabilities)."
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
