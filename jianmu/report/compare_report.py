"""The release gate's side-by-side table (console and Markdown) and its folder: ``compare.json``,
``compare.md``, the evaluated items and each model's evaluation report.

Results are taken duck-typed (a ``CompareResult`` of :mod:`jianmu.engine.compare`), so that this
module imports nothing from :mod:`jianmu.engine`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from rich.table import Table

from jianmu.files import write_text_atomic

COMPARE_JSON = "compare.json"
COMPARE_MD = "compare.md"
ITEMS_CSV = "items.csv"  # the images both models were evaluated on, as a manifest
OLD_REPORT, NEW_REPORT = "old", "new"  # each model's `jianmu eval` report folder
_STATUS_STYLE = {"regression": "bold red", "missing": "bold red", "improved": "green"}


def write_compare_report(result: Any, out: str | Path) -> dict[str, Path]:
    """Write compare.json and compare.md into ``out`` (beside items.csv and the two evaluation
    reports); returns file name -> path of everything in the folder that the comparison made."""
    out = Path(out)
    files = {
        COMPARE_JSON: write_text_atomic(out / COMPARE_JSON, compare_json(result)),
        COMPARE_MD: write_text_atomic(out / COMPARE_MD, compare_markdown(result)),
        ITEMS_CSV: out / ITEMS_CSV,
    }
    for side, name in (("old", OLD_REPORT), ("new", NEW_REPORT)):
        files[f"{name}/report.html"] = result.evaluations[side].page
    return files


def compare_json(result: Any) -> str:
    document = {
        "ok": result.ok,
        "summary": result.comparison.summary(),
        "regressions": result.regressions,
        "models": result.models,
        "data": result.data,
        "manifest": result.manifest,
        "split": result.split,
        "images": result.images,
        "unknown_images": result.unknown_images,
        "only": result.only,
        "left_out": result.left_out,
        "speed": result.speed,
        "notes": result.notes,
        "figures": {side: _finite(figures) for side, figures in result.figures.items()},
        "counts": result.counts,
        "tolerances": {
            figure: tolerance.model_dump(exclude_none=True)
            for figure, tolerance in result.tolerances.items()
        },
        "comparison": result.comparison.to_dict(),
    }
    return json.dumps(document, indent=2, ensure_ascii=False, allow_nan=False) + "\n"


def compare_table(result: Any) -> Table:
    """Figure | OLD | NEW | change | limit | status, regressions in red."""
    table = Table(
        title=f"compare on {result.data} ({result.split}: {result.images} images"
        + (f", {result.unknown_images} of unknown species" if result.unknown_images else "")
        + ")",
        title_justify="left",
    )
    table.add_column("figure", overflow="fold")  # wrapped, never cut: it names the class
    for column in ("OLD", "NEW", "change"):
        table.add_column(column, justify="right", no_wrap=True, min_width=7)
    table.add_column("limit", min_width=10)
    table.add_column("status", no_wrap=True, min_width=10)
    for row in result.comparison.rows:
        status = _status(row)
        style = _STATUS_STYLE.get(row.status) if row.failed or row.status == "improved" else None
        table.add_row(
            row.figure, *_cells(row.baseline, row.value), row.limit,
            f"[{style}]{status}[/]" if style else status,
        )  # fmt: skip
    verdict = "PASS" if result.ok else "FAIL"
    table.caption = f"{verdict}: {result.comparison.summary()}"
    return table


def compare_markdown(result: Any) -> str:
    old, new = result.models["old"], result.models["new"]
    views = result.speed["views"]  # per side: each model's own test-time views
    speed_views = (
        f"{views['old']}" if views["old"] == views["new"] else f"{views['old']} / {views['new']}"
    )
    lines = [
        f"# compare: {old['path']} -> {new['path']}",
        "",
        f"- OLD: `{old['path']}` ({old['format']}, sha256 {old['sha256'][:12]}, "
        f"{len(old['classes'])} classes, {old['views']} view(s))",
        f"- NEW: `{new['path']}` ({new['format']}, sha256 {new['sha256'][:12]}, "
        f"{len(new['classes'])} classes, {new['views']} view(s))",
        f"- data: `{result.data}`, split `{result.split}` of `{result.manifest}`: "
        f"{result.images} images, {result.unknown_images} of species neither model knows",
        f"- speed: images/s through the runner on {result.speed['images']} images, "
        f"{speed_views} view(s): the fastest of {result.speed['runs']} alternating runs",
        "",
        f"**{'PASS' if result.ok else 'FAIL'}**: {result.comparison.summary()}",
        "",
        "| figure | OLD | NEW | change | limit | status |",
        "|---|---:|---:|---:|---|---|",
    ]
    for row in result.comparison.rows:
        status = f"**{_status(row)}**" if row.failed else _status(row)
        cells = [f"`{row.figure}`", *_cells(row.baseline, row.value), row.limit, status]
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    if result.regressions:
        lines += ["", "## Regressions", ""] + [f"- {message}" for message in result.regressions]
    if result.notes:
        lines += ["", "## Notes", ""] + [f"- {note}" for note in result.notes]
    lines += ["", f"Evaluation reports: `{OLD_REPORT}/report.html`, `{NEW_REPORT}/report.html`; "
              f"the images evaluated: `{ITEMS_CSV}`."]  # fmt: skip
    return "\n".join(lines) + "\n"


def _status(row: Any) -> str:
    return row.status if row.limit or row.failed else "reported"


def _cells(old: float | None, new: float | None) -> list[str]:
    """OLD, NEW and the change, with the decimals the larger of the two numbers needs."""
    given = [value for value in (old, new) if value is not None and math.isfinite(value)]
    digits = 1 if given and max(abs(value) for value in given) >= 100 else 4
    cells = [
        "-" if value is None else f"{value:.{digits}f}" if math.isfinite(value) else str(value)
        for value in (old, new)
    ]
    change = f"{new - old:+.{digits}f}" if len(given) == 2 else ""
    return [*cells, change]


def _finite(figures: dict[str, float]) -> dict[str, float | None]:
    return {name: value if math.isfinite(value) else None for name, value in figures.items()}
