"""The review queue for the lab's expert (``jianmu review``) and what ``jianmu data import`` did,
as a page, a CSV and console summaries.

``review.csv`` has a row per photo to review (columns :data:`jianmu.data.importer.REVIEW_COLUMNS`,
UTF-8 with a byte-order mark for spreadsheets), with ``reviewed_taxon``, ``reviewer`` and
``note`` empty for the expert to fill in. ``review.html`` shows each specimen with its photos
(thumbnails as data URIs), the model's answer, candidates and the reasons for review, and a form:
one name per specimen (offered from the taxonomy as one types), a note, the reviewer's name, and
a button that saves the same CSV with those columns filled (a Blob download: no server, nothing
fetched, the page works from a USB stick). The rows the page saves are the rows of ``review.csv``,
embedded in the page as JSON; its script only fills in the three columns.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rich.table import Table
from rich.text import Text

from jianmu.data.importer import REVIEW_COLUMNS, REVIEWED_COLUMNS
from jianmu.files import write_text_atomic
from jianmu.report.predict_html import (
    PAGE_CSS,
    bars_html,
    esc,
    percent_text,
    taxon_html,
    thumbnail_html,
    verdict_html,
)

SAVED_NAME = "reviewed.csv"
"""The file name the page's button saves under."""

Row = tuple[str, dict[str, str]]
"""(the item the row belongs to, its cells by column)."""


# --- rows and the CSV -----------------------------------------------------------------------------


def review_rows(result) -> list[Row]:
    """The rows of a :class:`jianmu.engine.review.ReviewResult`: one per photo to review, the
    reviewed columns empty."""
    run = result.run
    source = {
        "predictions": str(result.predictions.absolute()),
        "run": run.get("record_sha256") or "",
        "model": run.get("model") or "",
        "model_sha256": run.get("model_sha256") or "",
    }
    rows = []
    for item in result.items:
        for photo in item.photos:
            record = photo.record
            reasons = [str(reason) for reason in photo.reasons]
            reasons += [f"specimen: {reason}" for reason in item.reasons]
            cells = {
                "specimen": item.specimen or "",
                "path": str(photo.file) if photo.file is not None else photo.path,
                "reasons": "; ".join(reasons),
                "answer": answer_words(record),
                "candidates": candidates_text(record),
                "margin": "" if photo.margin is None else f"{photo.margin:.3f}",
                "declared": record.get("declared") or "",
                "decision": record.get("decision") or "",
                **source,
                **dict.fromkeys(REVIEWED_COLUMNS, ""),
            }
            rows.append((item.key, {column: cells[column] for column in REVIEW_COLUMNS}))
    return rows


def answer_words(record: Mapping[str, Any]) -> str:
    """The taxon answered (``Dalbergia sp.``), else the verdict."""
    return str(record.get("taxon") or record.get("verdict") or record.get("status") or "")


def candidates_text(record: Mapping[str, Any]) -> str:
    """``Dalbergia odorifera 87.0%; Senna siamea 8.0%``: the top-k with calibrated shares."""
    return "; ".join(
        f"{entry.get('species') or entry['class']} {percent_text(entry.get('probability'))}"
        for entry in record.get("top") or []
    )


def write_review_csv(path: str | Path, rows: list[Row]) -> Path:
    """Write ``review.csv`` atomically (UTF-8 with BOM; ``\\r\\n`` line ends, as the page saves)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(REVIEW_COLUMNS)
    writer.writerows([cells[column] for column in REVIEW_COLUMNS] for _, cells in rows)
    return write_text_atomic(path, buffer.getvalue(), encoding="utf-8-sig")


# --- the page -------------------------------------------------------------------------------------


def write_review_page(path: str | Path, result, rows: list[Row]) -> Path:
    """Write ``review.html`` for a :class:`jianmu.engine.review.ReviewResult` (atomically)."""
    return write_text_atomic(path, _page(result, rows))


def _about(result) -> str:
    run = result.run
    settings = result.settings
    parts = [
        f"{len(result.items)} specimen(s) and {result.photos} photo(s) of "
        f"{result.images} need an expert ({result.readable} were judged by the model). "
        f"Reasons looked for: {esc(', '.join(settings.reasons))}; a low margin is a top-1 lead "
        f"under {settings.max_margin:.2f}."
    ]
    if run:
        parts.append(
            f" From <code>{esc(result.predictions.name)}</code>: {esc(run.get('command'))} run of "
            f"{esc(run.get('created'))}, model {esc(run.get('model'))} "
            f'(<code class="hash">{esc(run.get("model_sha256"))}</code>), inspection record '
            f'<code class="hash">{esc(run.get("record_sha256"))}</code>.'
        )
    else:
        parts.append(f" From <code>{esc(result.predictions.name)}</code> (no inspection record).")
    return "".join(parts)


def _figure(photo, thumbnails: Mapping[str, bytes], missing: Mapping[str, str]) -> str:
    name = photo.path.replace("\\", "/").rsplit("/", 1)[-1]
    data = thumbnails.get(photo.path)
    if data is None:
        picture = (
            f'<div class="thumb none missing">photo missing: {esc(missing.get(photo.path, ""))}'
            "</div>"
        )
    else:
        picture = thumbnail_html(photo.path, data, False)
    reasons = "".join(f'<li class="reason">{esc(reason)}</li>' for reason in photo.reasons)
    return (
        f'<figure class="photo">{picture}<figcaption><span class="file">{esc(name)}</span>'
        f"{verdict_html(photo.record, 'not read')}<ul>{reasons}</ul>{bars_html(photo.record)}"
        "</figcaption></figure>"
    )


def _item(number: int, item, result) -> str:
    answer = item.answer
    title = f"Specimen {item.specimen}" if item.specimen is not None else f"Photo {item.key}"
    badge = verdict_html(answer, "no readable image") if answer is not None else ""
    own = "".join(f'<li class="reason">specimen: {esc(reason)}</li>' for reason in item.reasons)
    candidates = ""
    if answer is not None and answer.get("top"):
        rows = "".join(
            f"<tr><td>{esc(entry.get('species') or entry['class'])}</td>"
            f"<td class='number'>{percent_text(entry.get('probability'))}</td></tr>"
            for entry in answer["top"]
        )
        candidates = (
            '<table class="candidates"><thead><tr><th>candidate</th><th>share</th></tr></thead>'
            f"<tbody>{rows}</tbody></table>"
        )
    left_out = ""
    if item.left_out:
        listed = "; ".join(
            f"{path.replace(chr(92), '/').rsplit('/', 1)[-1]}: {why}" for path, why in item.left_out
        )
        left_out = f'<p class="note left-out">Not for review: {esc(listed)}.</p>'
    figures = "".join(_figure(photo, result.thumbnails, result.missing) for photo in item.photos)
    field = f"item-{number}"
    return (
        f'<article class="sheet unit" id="{field}" data-unit="{esc(item.key)}">'
        f"<h3>{esc(title)} {badge}</h3>"
        f"<p>{taxon_html(answer) if answer is not None else ''}</p>"
        f'<ul class="reasons">{own}</ul>'
        f'<div class="photos">{figures}</div>{candidates}{left_out}'
        f'<div class="identify"><label for="{field}-taxon">identification</label> '
        f'<input id="{field}-taxon" class="taxon" list="names" autocomplete="off" '
        'placeholder="species: scientific, synonym, trade or Chinese name"> '
        f'<label for="{field}-note">note</label> '
        f'<input id="{field}-note" class="note" placeholder="optional">'
        '<span class="hint"></span></div></article>'
    )


def _names(result) -> str:
    options = "".join(
        f'<option value="{esc(name)}">{esc(chinese)}</option>'
        if chinese
        else f'<option value="{esc(name)}"></option>'
        for name, chinese in result.names
    )
    return f'<datalist id="names">{options}</datalist>'


def _data(rows: list[Row]) -> str:
    """The rows as JSON safe inside a <script> element."""
    data = {"columns": list(REVIEW_COLUMNS), "file": SAVED_NAME,
            "rows": [{"unit": unit, "cells": cells} for unit, cells in rows]}  # fmt: skip
    text = json.dumps(data, ensure_ascii=False)
    return text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")


_REVIEW_CSS = """
.form { position: sticky; top: 0; background: #fff; z-index: 2; padding: 0.6em 0;
        border-bottom: 1px solid #ddd; }
.form input { font: inherit; padding: 2px 6px; }
.identify { margin-top: 0.6em; } .identify input.taxon { width: 28em; }
.identify .hint { color: #b26a00; margin-left: 0.6em; font-size: 12px; }
ul.reasons, figcaption ul { margin: 0.2em 0; padding-left: 1.2em; }
.photo .bars { min-width: 0; } .photo .bar { grid-template-columns: 7em 1fr 3.5em; }
.sheet figure.photo { max-width: 220px; }
.thumb.missing { color: #b71c1c; border-color: #b71c1c; }
#status.error { color: #b71c1c; font-weight: 600; } #status.done { color: #2e7d32; }
"""

_SCRIPT = """
(() => {
  const data = JSON.parse(document.getElementById("review-data").textContent);
  const known = new Set([...document.querySelectorAll("#names option")]
    .flatMap((option) => [option.value, option.textContent]).filter(Boolean)
    .map((name) => name.trim().toLowerCase()));
  const status = document.getElementById("status");
  const quote = (value) => {
    const text = String(value ?? "");
    return /[",\\r\\n]/.test(text) ? `"${text.replace(/"/g, '""')}"` : text;
  };
  const units = () => {
    const found = new Map();
    document.querySelectorAll("article.unit").forEach((unit) => found.set(unit.dataset.unit, {
      taxon: unit.querySelector("input.taxon").value.trim(),
      note: unit.querySelector("input.note").value.trim(),
    }));
    return found;
  };
  document.querySelectorAll("input.taxon").forEach((input) => input.addEventListener("input",
    () => {
      const value = input.value.trim().toLowerCase();
      input.parentElement.querySelector(".hint").textContent = value && !known.has(value)
        ? "not in the list: import will look it up and refuse it if it matches no species" : "";
    }));
  const save = () => {
    const reviewer = document.getElementById("reviewer").value.trim();
    const given = units();
    const named = [...given.values()].filter((unit) => unit.taxon).length;
    if (named && !reviewer) {
      status.textContent = "Enter your name as reviewer first.";
      status.className = "error";
      document.getElementById("reviewer").focus();
      return;
    }
    const lines = [data.columns.map(quote).join(",")];
    for (const row of data.rows) {
      const unit = given.get(row.unit);
      const cells = {...row.cells, reviewed_taxon: unit.taxon, reviewer: unit.taxon ? reviewer : "",
                     note: unit.note};
      lines.push(data.columns.map((column) => quote(cells[column])).join(","));
    }
    const blob = new Blob(["\\ufeff" + lines.join("\\r\\n") + "\\r\\n"],
                          {type: "text/csv;charset=utf-8"});
    const link = document.createElement("a");
    link.href = URL.createObjectURL(blob);
    link.download = data.file;
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(link.href), 60000);
    status.textContent = `Saved ${data.file}: ${named} of ${given.size} named. ` +
      "Import it with: jianmu data import " + data.file + " --into DATASET";
    status.className = "done";
  };
  document.getElementById("save").addEventListener("click", save);
  document.getElementById("save").disabled = false;
})();
"""


def _page(result, rows: list[Row]) -> str:
    title = esc(f"Review: {result.predictions.name}")
    items = [_item(number, item, result) for number, item in enumerate(result.items, start=1)]
    if not items:
        items = ["<p>Nothing to review: no photo has a reason for the lab.</p>"]
    warnings = "".join(f'<p class="reason">{esc(text)}</p>' for text in result.warnings)
    form = (
        '<div class="form"><label for="reviewer">reviewer</label> '
        '<input id="reviewer" autocomplete="name" placeholder="your name"> '
        f'<button id="save" type="button" disabled>Save {SAVED_NAME}</button> '
        '<span id="status" role="status"></span>'
        '<p class="note">Name each specimen (leave it blank to skip it), then save: the file '
        f"goes to your downloads. Import it with <code>jianmu data import {SAVED_NAME} --into "
        "DATASET</code>, or fill in the columns reviewed_taxon, reviewer and note of review.csv "
        "instead.</p></div>"
    )
    return (
        "\n".join(
            [
                "<!DOCTYPE html>",
                '<html lang="en"><head><meta charset="utf-8">',
                '<meta name="viewport" content="width=device-width, initial-scale=1">',
                f"<title>{title}</title><style>{PAGE_CSS}{_REVIEW_CSS}</style></head>",
                "<body>",
                f"<h1>{title}</h1>",
                f'<p class="about">{_about(result)}</p>{warnings}',
                form,
                _names(result),
                '<section id="queue">',
                *items,
                "</section>",
                f'<script type="application/json" id="review-data">{_data(rows)}</script>',
                f"<script>{_SCRIPT}</script>",
                "</body></html>",
            ]
        )
        + "\n"
    )


# --- console --------------------------------------------------------------------------------------


def review_renderables(result) -> list:
    """What ``jianmu review`` prints: the reasons counted, the warnings, the files."""
    table = Table(title=f"review queue: {result.predictions}", title_justify="left")
    table.add_column("reason")
    table.add_column("photos and roll-ups", justify="right")
    for key in result.settings.reasons:
        table.add_row(key.replace("_", " "), str(result.reasons.get(key, 0)))
    summary = (
        f"{len(result.items)} specimen(s), {result.photos} photo(s) of {result.images} for the "
        f"expert; {len(result.missing)} photo(s) missing"
    )
    output: list = [table, Text(summary)]
    output += [Text(f"warning: {text}", style="yellow") for text in result.warnings]
    output += [Text(f"written: {path}") for path in result.files]
    return output


def import_renderables(result) -> list:
    """What ``jianmu data import`` prints: each specimen copied (or to be), each refused."""
    verb = "would copy" if result.dry_run else "copied"
    table = Table(title=f"{verb} into {result.into}", title_justify="left")
    for column in ("specimen", "species", "reviewed as", "into", "photos", "reviewer", "notes"):
        table.add_column(column, overflow="fold")
    for specimen in result.imported:
        notes = [*(["new class folder"] if specimen.new_class else []), *specimen.notes]
        table.add_row(
            specimen.specimen or "-",
            Text(specimen.taxon, style="italic"),
            specimen.reviewed_as,
            specimen.folder.as_posix(),
            str(len(specimen.files)),
            specimen.reviewer,
            "; ".join(notes),
        )
    output: list = [table] if result.imported else []
    for refusal in result.refused:
        output.append(Text(f"refused: {refusal.describe()}", style="bold red"))
    summary = (
        f"{verb} {result.files} photo(s) of {len(result.imported)} specimen(s); "
        f"{len(result.refused)} refused, {result.blank_rows} blank row(s) skipped, "
        f"{result.already_imported} photo(s) imported before ({result.seconds:.1f} s)"
    )
    output.append(Text(summary))
    if result.log is not None:
        output.append(Text(f"provenance appended to {result.log}"))
    return output
