"""The report folder of an evaluation: JSON, CSV, PNG, Markdown and HTML files.

Results are taken duck-typed (an ``EvalResult`` of :mod:`jianmu.engine.evaluate`), so that this
module imports nothing from :mod:`jianmu.engine`.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from jianmu.report.eval_page import (
    CONFUSION_CSV,
    CONFUSION_PNG,
    METRICS_JSON,
    MISCLASSIFIED_CSV,
    PER_CLASS_CSV,
    PREDICTIONS_CSV,
    RELIABILITY_PNG,
    REPORT_HTML,
    REPORT_MD,
    per_class_rows,
    write_html,
    write_markdown,
)
from jianmu.report.plots import plot_confusion, plot_reliability


def write_eval_report(result: Any, out: str | Path) -> dict[str, Path]:
    """Write metrics.json, per_class.csv, confusion.csv/.png, reliability.png, misclassified.csv,
    predictions.csv (every image with its verdict), report.md and report.html into ``out``.

    Args:
        result: an ``EvalResult`` of :mod:`jianmu.engine.evaluate`.
        out: the report folder, made when missing.

    Returns:
        File name -> path of every file written.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    writers = (
        (METRICS_JSON, _write_metrics_json),
        (PER_CLASS_CSV, _write_per_class_csv),
        (CONFUSION_CSV, _write_confusion_csv),
        (MISCLASSIFIED_CSV, _write_misclassified_csv),
        (PREDICTIONS_CSV, _write_predictions_csv),
        (CONFUSION_PNG, plot_confusion),
        (RELIABILITY_PNG, plot_reliability),
        (REPORT_MD, write_markdown),
        (REPORT_HTML, write_html),  # last: it embeds the figures
    )
    return {name: write(result, out / name) for name, write in writers}


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


def _write_metrics_json(result: Any, path: Path) -> Path:
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


def _write_per_class_csv(result: Any, path: Path) -> Path:
    header = ["class", "species", "genus", "family", "precision", "recall", "f1", "support"]
    rows = [[row.get(key, "") for key in header] for row in per_class_rows(result)]
    return _write_csv(path, header, rows)


def _write_confusion_csv(result: Any, path: Path) -> Path:
    counts = np.asarray(result.confusion)
    rows = [[name, *(int(c) for c in counts[i])] for i, name in enumerate(result.classes)]
    return _write_csv(path, ["true/predicted", *result.classes], rows)


def _write_misclassified_csv(result: Any, path: Path) -> Path:
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


def _write_predictions_csv(result: Any, path: Path) -> Path:
    header = ["path", "true_class", "predicted", "probability", "unknown_score", "verdict"]
    rows = [
        [row["path"], row["true_class"], row["predicted"], f"{row['probability']:.4f}",
         "" if math.isnan(row["unknown_score"]) else f"{row['unknown_score']:.4f}", row["verdict"]]
        for row in result.predictions
    ]  # fmt: skip
    return _write_csv(path, header, rows)
