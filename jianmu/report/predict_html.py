"""The one-page HTML report of a prediction run (``jianmu predict --html``).

Written for inspectors: per image the top-3 species with calibrated confidence and an "other" share,
the verdict (identified, or unknown - refer to lab), the names and the regulatory flags; then the
specimen roll-up, one inspection sheet per specimen (decision, photos, candidates beside the
bundle's nearest reference photos, flags, quality notes, the inspection record's hash; printed one
sheet per page), and every file that could not be read or was sent back by the quality gate.
Thumbnails are embedded as data URIs and nothing is fetched, so the page opens offline. It stays
one plain table (CSS, plus a small inline filter script that the page does not need), so
thousands of rows remain usable.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from jianmu.files import write_text_atomic
from jianmu.verdict import IDENTIFIED, RETAKE, RETAKE_PHOTOS, UNKNOWN

FORMAT_NAMES = {
    "onnx": "ONNX bundle",
    "torchscript": "TorchScript bundle",
    "checkpoint": "checkpoint",
}


def write_predict_html(
    path: str | Path,
    images: list[dict[str, Any]],
    specimens: list[dict[str, Any]],
    summary: dict[str, Any],
    thumbnails: Mapping[str, bytes],
) -> Path:
    """Write the report page to ``path`` (temp file + rename) and return the path.

    Args:
        images: One record per input file, in input order, unreadable files included.
        specimens: One record per specimen (combined verdict); empty without specimens.
        summary: Run totals: model, counts, per-species counts, speed.
        thumbnails: Image path -> JPEG (or PNG) bytes; a missing path shows a placeholder.
    """
    page = _page(images, specimens, summary, thumbnails)
    return write_text_atomic(path, page)


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _fraction(value: Any) -> float | None:
    """A finite number as float, anything else (None, NaN, text) as None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def percent_text(value: Any) -> str:
    fraction = _fraction(value)
    return "–" if fraction is None else f"{fraction:.1%}"


def _kind(record: Mapping[str, Any]) -> str:
    """identified | partial (a genus or family answer) | unknown | retake (sent back by the
    quality gate) | failed: the CSS class and filter value of an answer."""
    if record.get("verdict") == IDENTIFIED:
        return "identified"
    if record.get("status") == RETAKE or record.get("verdict") == RETAKE_PHOTOS:
        return "retake"
    if record.get("verdict") is None:
        return "failed"
    if record.get("rank") in ("genus", "family"):
        return "partial"
    return "unknown"


def _regulated(record: Mapping[str, Any]) -> str:
    """flagged (a flag certain at the rank answered) | possible (only possibly regulated) | ''."""
    if record.get("flags"):
        return "flagged"
    return "possible" if record.get("possible_flags") else ""


def verdict_html(record: Mapping[str, Any], unreadable: str) -> str:
    """The answer badge: the verdict words, or the genus or family answered; the colour repeats
    it."""
    kind = _kind(record)
    text = {
        "failed": unreadable,
        "partial": f"{record.get('taxon')} (species: refer to lab)",
        "retake": record.get("verdict") or "retake photo",
    }
    return f'<span class="verdict {kind}">{esc(text.get(kind, record["verdict"]))}</span>'


def _flags(flags: list[str], possible: list[str] | None = None) -> str:
    spans = []
    for flag in flags:
        kind = "cites" if flag.startswith("CITES") else "quarantine" if "quarantine" in flag else ""
        spans.append(f'<span class="flag {kind}">{esc(flag)}</span>')
    spans += [f'<span class="flag possible">{esc(flag)}</span>' for flag in possible or []]
    return " ".join(spans)


def _name(species: str | None, fallback: str) -> str:
    return f'<i class="sci">{esc(species)}</i>' if species else esc(fallback)


def taxon_html(record: Mapping[str, Any]) -> str:
    """Scientific and Chinese name, genus and family of the answer (for an unknown one, the
    closest class)."""
    species, chinese = record.get("species"), record.get("chinese_name")
    top = record.get("top") or []
    if _kind(record) == "unknown" and not species and top:
        species = top[0].get("species") or top[0]["class"]
    if not species and not chinese and not record.get("genus") and not record.get("family"):
        return "–"
    parts = []
    if _kind(record) == "unknown":
        parts.append('<span class="note">closest match:</span> ')
    if species:
        parts.append(_name(species, ""))
    if chinese:
        parts.append(f' <span class="zh" lang="zh-Hans">{esc(chinese)}</span>')
    ranks = []
    if record.get("genus"):
        ranks.append(f"genus <i>{esc(record['genus'])}</i>")
    if record.get("family"):
        ranks.append(f"family {esc(record['family'])}")
    if ranks:
        parts.append(f'<div class="ranks">{" · ".join(ranks)}</div>')
    return "".join(parts)


def bars_html(record: Mapping[str, Any]) -> str:
    """Top-3 calibrated probabilities and the rest as "other", as labelled horizontal bars."""
    rows = [
        (entry.get("species") or entry["class"], entry.get("species"), entry["probability"], "rank")
        for entry in (record.get("top") or [])[:3]
    ]
    if not rows:
        return "–"
    rows.append(("other", None, record.get("other", 0.0), "other"))
    lines = []
    for name, species, probability, kind in rows:
        width = min(max(_fraction(probability) or 0.0, 0.0), 1.0) * 100
        lines.append(
            f'<div class="bar {kind}"><span class="label" title="{esc(name)}">'
            f"{_name(species, name)}</span>"
            f'<span class="track"><span class="fill" style="width:{width:.1f}%"></span></span>'
            f'<span class="value">{percent_text(probability)}</span></div>'
        )
    return f'<div class="bars {_kind(record)}">{"".join(lines)}</div>'


def _reasons(record: Mapping[str, Any]) -> str:
    """Why the quality gate sent a photo back: ``blurred, too dark``."""
    return ", ".join((record.get("quality") or {}).get("reasons") or [])


def thumbnail_html(path: str, data: bytes | None, unreadable: bool) -> str:
    if not data:
        text = "not readable" if unreadable else "no preview"
        return f'<div class="thumb none">{text}</div>'
    mime = "image/png" if data.startswith(b"\x89PNG") else "image/jpeg"
    encoded = base64.b64encode(data).decode("ascii")
    name = esc(path.replace("\\", "/").rsplit("/", 1)[-1])
    return f'<img class="thumb" src="data:{mime};base64,{encoded}" alt="{name}" decoding="async">'


def _table(section_id: str, header: list[str], rows: list[str]) -> str:
    head = "".join(f"<th>{esc(cell)}</th>" for cell in header)
    return (
        f'<table id="{section_id}-table"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


# --- sections -------------------------------------------------------------------------------------


def _summary_section(images: list[dict], summary: Mapping[str, Any]) -> str:
    model_format = FORMAT_NAMES.get(summary.get("model_format"), summary.get("model_format"))
    speed, seconds = _fraction(summary.get("images_per_s")), _fraction(summary.get("seconds"))
    speed_text = "–" if speed is None else f"{speed:.1f} images/s"
    seconds_text = "–" if seconds is None else f"{seconds:.1f} s"
    tta = f"on ({esc(summary.get('views', '?'))} views)" if summary.get("tta") else "off"
    about = (
        f"Model {esc(summary.get('model', '?'))} ({esc(model_format)}); "
        f"{esc(summary.get('images', len(images)))} images in {seconds_text} ({speed_text}); "
        f"test-time augmentation {tta}. "
        "Probabilities are calibrated; “other” is the share of all remaining classes. "
        f"Photo-quality gate: {esc(summary.get('quality_gate', 'off'))}."
    )
    extended = summary.get("extended")
    if extended:
        added = ", ".join(extended.get("added") or []) or "none"
        removed = ", ".join(extended.get("removed") or []) or "none"
        about += (
            f' <strong class="extended">Extended model</strong>: species added without '
            f"retraining: {esc(added)}; removed: {esc(removed)}; base model "
            f'<code class="hash">{esc(extended.get("base_sha256") or "?")}</code>.'
        )
    if summary.get("record_sha256"):
        about += f' Inspection record <code class="hash">{esc(summary["record_sha256"])}</code>.'

    ranks = summary.get("ranks") or {}
    regulated = summary.get("regulated_specimens") or {}
    stats = [
        ("images", summary.get("images", len(images)), "", ""),
        ("identified (species)", summary.get("identified", 0), "identified", ""),
        ("genus or family only", ranks.get("genus", 0) + ranks.get("family", 0), "partial", ""),
        (UNKNOWN, ranks.get("unknown", summary.get("unknown", 0)), "unknown", ""),
        ("regulated for sure", summary.get("flagged", 0), "flagged", ""),
        ("possibly regulated", summary.get("possibly_flagged", 0), "possible", ""),
        ("retake (photo quality)", summary.get("retake", 0), "retake", "#failed"),
        ("could not be read", summary.get("failed", 0), "failed", "#failed"),
    ]
    if regulated:
        stats.insert(
            -1, ("specimens regulated for sure", regulated.get("certain", 0), "flagged", "")
        )
        stats.insert(
            -1, ("specimens possibly regulated", regulated.get("possible", 0), "possible", "")
        )
    boxes = []
    for label, count, kind, link in stats:
        inner = f"<strong>{esc(count)}</strong><span>{esc(label)}</span>"
        if link and count:
            inner = f'<a href="{link}">{inner}</a>'
        boxes.append(f'<div class="stat {kind}">{inner}</div>')
    parts = [
        '<section id="summary"><h2>Summary</h2>',
        f'<p class="about">{about}</p>',
        f'<div class="stats">{"".join(boxes)}</div>',
    ]
    per_species = summary.get("per_species") or {}
    if per_species:
        taxa = _taxa_by_class(images)
        rows = []
        ranked = sorted(per_species.items(), key=lambda item: (-item[1], str(item[0])))
        for name, count in ranked:
            record = taxa.get(name, {})
            flags = record.get("flags") or []
            chinese = record.get("chinese_name")
            rows.append(
                f'<tr class="{"flagged" if flags else ""}"><td>{esc(name)}</td>'
                f"<td>{_name(record.get('species'), '–')}</td>"
                f'<td><span class="zh" lang="zh-Hans">{esc(chinese or "–")}</span></td>'
                f"<td>{_flags(flags) or '–'}</td><td class='number'>{esc(count)}</td></tr>"
            )
        header = ["class", "scientific name", "Chinese name", "flags", "images"]
        parts += ["<h3>Images per predicted species</h3>", _table("species", header, rows)]
    parts.append("</section>")
    return "\n".join(parts)


def _taxa_by_class(images: list[dict]) -> dict[str, dict]:
    """Names and flags of each predicted class, from the first image that names them."""
    taxa: dict[str, dict] = {}
    for record in images:
        top = record.get("top") or []
        if not top or top[0]["class"] in taxa:
            continue
        if record.get("species") and record.get("species") == top[0].get("species"):
            taxa[top[0]["class"]] = record
    for record in images:  # classes only ever seen as unknown: at least the scientific name
        for entry in (record.get("top") or [])[:1]:
            taxa.setdefault(entry["class"], {"species": entry.get("species")})
    return taxa


def _specimen_section(specimens: list[dict]) -> str:
    rows = []
    for record in specimens:
        flags, possible = record.get("flags") or [], record.get("possible_flags") or []
        kind = f"{_kind(record)} {_regulated(record)}".strip()
        rows.append(
            f'<tr class="{kind}"><td>{esc(record["specimen"])}</td>'
            f"<td class='number'>{esc(record.get('ok_images', 0))} of {esc(record['images'])}</td>"
            f"<td>{verdict_html(record, 'no readable image')}</td><td>{bars_html(record)}</td>"
            f"<td>{taxon_html(record)}</td><td>{_flags(flags, possible)}</td></tr>"
        )
    header = ["specimen", "images read", "answer", "top-3 (calibrated)", "taxon", "flags"]
    return "\n".join(
        [
            '<section id="specimens"><h2>Specimens</h2>',
            f"<p>{len(specimens)} specimen(s); each verdict combines the specimen's readable "
            "images.</p>",
            _table("specimens", header, rows),
            "</section>",
        ]
    )


def _sheets_section(
    images: list[dict],
    specimens: list[dict],
    summary: Mapping[str, Any],
    thumbnails: Mapping[str, bytes],
) -> str:
    """One inspection sheet per specimen: what an inspector signs off (printed one per page)."""
    by_specimen: dict[str, list[dict]] = {}
    for record in images:
        if record.get("specimen") is not None:
            by_specimen.setdefault(record["specimen"], []).append(record)
    gallery = summary.get("gallery")
    if gallery:
        note = (
            f"Reference photos: the training photo of each candidate nearest to this specimen's "
            f"photos, from the bundle's gallery ({esc(gallery.get('per_class'))} per class; "
            f"licence: {esc(gallery.get('licence'))})."
        )
    else:
        note = (
            "No reference photos: this model bundle carries no gallery "
            "(<code>jianmu export --gallery N</code>)."
        )
    footer = f"Model {esc(summary.get('model', '?'))}"
    if summary.get("record_sha256"):
        footer += f' · inspection record <code class="hash">{esc(summary["record_sha256"])}</code>'
    sheets = [
        _sheet(number, record, by_specimen.get(record["specimen"], []), thumbnails, footer)
        for number, record in enumerate(specimens, start=1)
    ]
    return "\n".join(
        [
            '<section id="sheets"><h2>Inspection sheets</h2>',
            f'<p class="note gallery-note">{note}</p>',
            *sheets,
            "</section>",
        ]
    )


def _sheet(
    number: int,
    specimen: dict,
    photos: list[dict],
    thumbnails: Mapping[str, bytes],
    footer: str,
) -> str:
    decision = ""
    if specimen.get("decision"):
        decision = (
            f'<p class="decision"><strong>Declared {esc(specimen.get("declared"))}:</strong> '
            f"{esc(specimen['decision'])} – {esc(specimen.get('reason') or '')}"
            + (f"<br><strong>{esc(specimen['consequence'])}</strong>" if specimen.get(
                "consequence") else "")
            + "</p>"
        )  # fmt: skip
    figures = []
    notes = []
    for record in photos:
        path = str(record["path"])
        name = path.replace("\\", "/").rsplit("/", 1)[-1]
        kind = _kind(record)
        caption = esc(name)
        if kind == "retake":
            caption += f'<br><span class="reason">retake: {esc(_reasons(record))}</span>'
            notes.append(f"{esc(name)}: {esc(_reasons(record))}")
        elif kind == "failed":
            caption += f'<br><span class="reason">{esc(record.get("status"))}</span>'
        figures.append(
            f"<figure>{thumbnail_html(path, thumbnails.get(path), kind == 'failed')}"
            f"<figcaption>{caption}</figcaption></figure>"
        )
    candidates = []
    for entry in specimen.get("top") or []:
        reference = _nearest_reference(photos, entry["class"])
        picture = '<div class="thumb none">no reference</div>'
        if reference is not None:
            data = thumbnails.get(f"reference:{reference['index']}")
            picture = thumbnail_html(reference["photo"], data, False)
            picture += f'<div class="score">{esc(reference["photo"])}</div>'
        candidates.append(
            f"<tr><td>{_name(entry.get('species'), entry['class'])}</td>"
            f"<td class='number'>{percent_text(entry.get('probability'))}</td>"
            f"<td>{picture}</td></tr>"
        )
    passed = sum(1 for record in photos if record.get("status") == "ok")
    quality = f"{passed} of {len(photos)} photo(s) judged."
    if notes:
        quality += " Sent back by the quality gate: " + "; ".join(notes) + "."
    flags = _flags(specimen.get("flags") or [], specimen.get("possible_flags") or []) or "none"
    return (
        f'<article class="sheet {_kind(specimen)}" id="sheet-{number}">'
        f"<h3>Specimen {esc(specimen['specimen'])} "
        f"{verdict_html(specimen, 'no readable image')}</h3>"
        f"<p>{taxon_html(specimen)}</p>{decision}"
        f'<div class="photos">{"".join(figures)}</div>'
        '<table class="candidates"><thead><tr><th>candidate</th><th>share</th>'
        f"<th>nearest reference photo</th></tr></thead><tbody>{''.join(candidates)}</tbody>"
        f"</table><p><strong>Flags:</strong> {flags}</p>"
        f'<p class="quality"><strong>Photo quality:</strong> {quality}</p>'
        f'<footer class="note">{footer}</footer></article>'
    )


def _nearest_reference(photos: list[dict], cls: str) -> dict | None:
    """The reference photo of class ``cls`` nearest to any of a specimen's photos."""
    found = [
        entry["reference"]
        for record in photos
        for entry in record.get("top") or []
        if entry.get("class") == cls and entry.get("reference")
    ]
    return min(found, key=lambda reference: reference["distance"]) if found else None


def _image_rows(images: list[dict], thumbnails: Mapping[str, bytes]) -> list[str]:
    rows = []
    for number, record in enumerate(images, start=1):
        path = str(record["path"])
        flags, possible = record.get("flags") or [], record.get("possible_flags") or []
        kind = _kind(record)
        regulated = _regulated(record)
        details = []
        if record.get("specimen"):
            details.append(f"specimen {esc(record['specimen'])}")
        verdict = verdict_html(record, "could not be read")
        if kind == "failed":
            verdict += f'<div class="reason">{esc(record.get("status", ""))}</div>'
        elif kind == "retake":
            verdict += f'<div class="reason">{esc(_reasons(record))}</div>'
        elif (score := _fraction(record.get("unknown_score"))) is not None:
            threshold = _fraction(record.get("threshold"))
            text = f"unknown score {score:.3f}"
            text += "" if threshold is None else f" (threshold {threshold:.3f})"
            verdict += f'<div class="score">{text}</div>'
        classes = f"{kind} {regulated}".strip()
        rows.append(
            f'<tr class="{classes}" data-kind="{classes}">'
            f"<td class='number'>{number}</td>"
            f"<td>{thumbnail_html(path, thumbnails.get(path), kind == 'failed')}</td>"
            f'<td class="file">{esc(path)}<div class="specimen">{" ".join(details)}</div></td>'
            f"<td>{verdict}</td><td>{bars_html(record)}</td><td>{taxon_html(record)}</td>"
            f"<td>{_flags(flags, possible)}</td></tr>"
        )
    return rows


def _image_section(images: list[dict], thumbnails: Mapping[str, bytes]) -> str:
    kinds = ("identified", "partial", "unknown", "flagged", "possible", "retake", "failed")
    counts = dict.fromkeys(kinds, 0)
    for record in images:
        counts[_kind(record)] += 1
        if _regulated(record):
            counts[_regulated(record)] += 1
    labels = {
        "identified": IDENTIFIED,
        "partial": "genus or family only",
        "unknown": UNKNOWN,
        "flagged": "regulated for sure",
        "possible": "possibly regulated",
        "retake": "retake (photo quality)",
        "failed": "could not be read",
    }
    options = [f'<option value="">all ({len(images)})</option>']
    options += [
        f'<option value="{kind}">{esc(labels[kind])} ({count})</option>'
        for kind, count in counts.items()
    ]
    toolbar = (
        '<div class="toolbar" hidden><label>show <select id="show">'
        f"{''.join(options)}</select></label> "
        '<input id="find" type="search" placeholder="find file, species, flag ..."> '
        '<span id="shown"></span></div>'
    )
    header = ["#", "image", "file", "answer", "top-3 (calibrated)", "taxon", "flags"]
    return "\n".join(
        [
            '<section id="images"><h2>Images</h2>',
            toolbar,
            _table("images", header, _image_rows(images, thumbnails)),
            "</section>",
        ]
    )


def _failed_section(images: list[dict]) -> str:
    failed = [record for record in images if _kind(record) in ("failed", "retake")]
    parts = ['<section id="failed"><h2>Files to photograph again or check</h2>']
    if not failed:
        parts.append("<p>None: every file was read and passed the quality gate.</p>")
    else:
        parts.append(
            f"<p>{len(failed)} file(s) have no prediction: they could not be read, or the "
            "quality gate found them not good enough to judge. Photograph these again or check "
            "the files.</p>"
        )
        rows = [
            f'<tr class="{_kind(record)}"><td class="file">{esc(record["path"])}</td>'
            f"<td>{esc(_reasons(record) if _kind(record) == 'retake' else record.get('status'))}"
            f"</td><td>{esc(record.get('specimen') or '–')}</td></tr>"
            for record in failed
        ]
        parts.append(_table("failed", ["file", "reason", "specimen"], rows))
    parts.append("</section>")
    return "\n".join(parts)


# --- the page -------------------------------------------------------------------------------------

PAGE_CSS = """
body { font: 14px/1.45 system-ui, "Noto Sans CJK SC", "PingFang SC", "Microsoft YaHei", sans-serif;
       max-width: 1280px; margin: 2em auto; padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; } h2 { font-size: 1.2em; border-bottom: 1px solid #ddd; margin-top: 2em; }
h3 { font-size: 1em; margin-top: 1.4em; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 13px; width: 100%; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f3f3f3; position: sticky; top: 0; z-index: 1; }
tr:nth-child(even) td { background: #fafafa; }
td.number { text-align: right; white-space: nowrap; } td.file { overflow-wrap: anywhere; }
tr.flagged td:first-child { box-shadow: inset 4px 0 #c62828; }
tr.possible td:first-child { box-shadow: inset 4px 0 #f9a825; }
tr.failed td { background: #fdf3f3; }
.about { color: #444; }
.stats { display: flex; flex-wrap: wrap; gap: 10px; margin: 1em 0; }
.stat { border: 1px solid #ddd; border-radius: 6px; padding: 6px 14px; min-width: 9em; }
.stat a { color: inherit; text-decoration: none; }
.stat strong { display: block; font-size: 1.6em; }
.stat.identified { border-color: #2e7d32; } .stat.unknown { border-color: #e65100; }
.stat.flagged { border-color: #c62828; } .stat.failed { border-color: #757575; }
.stat.partial { border-color: #1565c0; } .stat.possible { border-color: #f9a825; }
.verdict { display: inline-block; padding: 1px 8px; border-radius: 10px; font-weight: 600;
           white-space: nowrap; }
.verdict.identified { background: #2e7d32; color: #fff; }
.verdict.identified::before { content: "\\2714\\00a0"; }
.verdict.unknown { background: #ffb74d; color: #3e2000; border: 1px dashed #e65100; }
.verdict.unknown::before { content: "?\\00a0"; }
.verdict.failed { background: #616161; color: #fff; }
.verdict.partial { background: #e3f2fd; color: #0d3c75; border: 1px solid #1565c0; }
.reason { color: #b71c1c; font-weight: 600; } .score, .specimen, .ranks, .note { color: #666; }
.score, .specimen, .ranks { font-size: 12px; }
.flag { display: inline-block; margin: 1px 0; padding: 0 6px; border-radius: 3px; font-weight: 600;
        background: #fff3c4; color: #5d4300; border: 1px solid #e0b400; white-space: nowrap; }
.flag.cites { background: #c62828; color: #fff; border-color: #8e0000; }
.flag.quarantine { background: #6a1b9a; color: #fff; border-color: #38006b; }
.flag.possible { background: #fff; color: #6d4c00; border: 1px dashed #f9a825; font-weight: 500; }
.thumb { display: block; width: 96px; height: 96px; object-fit: contain; background: #f4f4f4;
         border: 1px solid #eee; }
.thumb.none { display: flex; align-items: center; justify-content: center; color: #888;
              font-size: 11px; text-align: center; }
.bars { min-width: 300px; }
.bar { display: grid; grid-template-columns: minmax(9em, 14em) 1fr 4em; gap: 6px;
       align-items: center; font-size: 12px; }
.bar .label { overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
.bar .track { background: #eee; height: 10px; border-radius: 2px; overflow: hidden; }
.bar .fill { display: block; height: 100%; background: #78909c; }
.bar .value { text-align: right; font-variant-numeric: tabular-nums; }
.bars.identified .bar:first-child .fill { background: #2e7d32; }
.bars.unknown .bar:first-child .fill { background: #e65100; }
.bars.partial .bar:first-child .fill { background: #1565c0; }
.bar.other { color: #777; } .bar.other .fill { background: #bdbdbd; }
.zh { white-space: nowrap; }
.toolbar { margin: 0.6em 0; } .toolbar input { width: 22em; } #shown { color: #666; }
.verdict.retake { background: #fff; color: #b71c1c; border: 2px solid #b71c1c; }
.verdict.retake::before { content: "\\21BB\\00a0"; }
tr.retake td { background: #fff8e1; } .stat.retake { border-color: #b71c1c; }
.hash { font-size: 11px; overflow-wrap: anywhere; }
.sheet { border: 1px solid #bbb; border-radius: 6px; padding: 0.4em 1em 0.8em; margin: 1em 0; }
.sheet h3 { margin-top: 0.4em; } .sheet.retake { border-color: #b71c1c; }
.sheet .photos { display: flex; flex-wrap: wrap; gap: 10px; }
.sheet figure { margin: 0; max-width: 140px; font-size: 11px; overflow-wrap: anywhere; }
.sheet .candidates { width: auto; } .sheet .candidates .thumb { width: 120px; height: 120px; }
.sheet footer { font-size: 11px; margin-top: 0.6em; }
@media print {
  body { max-width: none; margin: 0; font-size: 11pt; }
  .toolbar, .with-sheets #images { display: none !important; }
  th { position: static; }
  #specimens, #failed { break-before: page; }
  .sheet { break-inside: avoid; break-after: page; border-color: #000; }
  .verdict, .flag, .fill { -webkit-print-color-adjust: exact; print-color-adjust: exact; }
}
"""

# Optional: the page reads the same without it (the toolbar stays hidden).
_SCRIPT = """
(() => {
  const rows = [...document.querySelectorAll("#images-table tbody tr")];
  const texts = rows.map((row) => row.textContent.toLowerCase());
  const show = document.getElementById("show"), find = document.getElementById("find");
  const shown = document.getElementById("shown");
  const apply = () => {
    const kind = show.value, needle = find.value.trim().toLowerCase();
    let count = 0;
    rows.forEach((row, i) => {
      const visible = (!kind || row.dataset.kind.split(" ").includes(kind)) &&
        (!needle || texts[i].includes(needle));
      row.hidden = !visible;
      count += visible;
    });
    shown.textContent = `${count} of ${rows.length} shown`;
  };
  show.addEventListener("change", apply);
  find.addEventListener("input", apply);
  document.querySelector("#images .toolbar").hidden = false;
  apply();
})();
"""


def _page(
    images: list[dict],
    specimens: list[dict],
    summary: Mapping[str, Any],
    thumbnails: Mapping[str, bytes],
) -> str:
    title = esc(f"Prediction: {summary.get('model', '')}")
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{title}</title><style>{PAGE_CSS}</style></head>",
        '<body class="with-sheets">' if specimens else "<body>",
        f"<h1>{title}</h1>",
        _summary_section(images, summary),
    ]
    if specimens:
        parts.append(_specimen_section(specimens))
        parts.append(_sheets_section(images, specimens, summary, thumbnails))
    parts += [
        _image_section(images, thumbnails),
        _failed_section(images),
        f"<script>{_SCRIPT}</script>",
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"
