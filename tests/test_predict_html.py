"""write_predict_html: one self-contained page, checked as parsed HTML and as rendered by Chromium.

The browser is Qt WebEngine (Chromium's Blink and V8, from the PyQt6-WebEngine wheel of the dev
extra), run headless in a subprocess: it loads the page from disk, then a script reads the rendered
DOM (texts, decoded thumbnails, computed colours, the filter) back as JSON.
"""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

from jianmu.report.predict_html import write_predict_html

ODD = 'scans/odd <b>name</b> & "quote" 降香.jpg'
THUMB_SIZES = {
    "scans/S-1 front.jpg": (64, 48),
    "scans/S-1 back.jpg": (48, 64),
    ODD: (40, 40),
}


def _top(*entries: tuple[str, str | None, float]) -> list[dict]:
    return [{"class": c, "species": s, "probability": p} for c, s, p in entries]


ODORIFERA = {
    "species": "Dalbergia odorifera",
    "chinese_name": "降香黄檀",
    "genus": "Dalbergia",
    "family": "Fabaceae",
    "flags": ["CITES App. II", "Hongmu 香枝木类"],
}
NO_TAXON = {"species": None, "chinese_name": None, "genus": None, "family": None, "flags": []}
ODORIFERA_TOP = _top(
    ("Dalbergia_odorifera", "Dalbergia odorifera", 0.87),
    ("Dalbergia_tonkinensis", "Dalbergia tonkinensis", 0.08),
    ("Pterocarpus_santalinus", "Pterocarpus santalinus", 0.03),
)


def _image(path: str, specimen: str | None, verdict: str | None, **fields) -> dict:
    record = {
        "path": path,
        "specimen": specimen,
        "status": "ok",
        "verdict": verdict,
        "top": [],
        "other": 0.0,
        "unknown_score": None,
        "threshold": None,
        **NO_TAXON,
    }
    return {**record, **fields}


IMAGES = [
    _image(
        "scans/S-1 front.jpg", "S-1", "identified", top=ODORIFERA_TOP, other=0.02,
        unknown_score=0.12, threshold=0.5, **ODORIFERA,
    ),
    _image(
        "scans/S-1 back.jpg", "S-1", "identified", top=ODORIFERA_TOP, other=0.02,
        unknown_score=0.2, threshold=0.5, **ODORIFERA,
    ),
    _image(
        ODD, "S 2 <unk>", "unknown - refer to lab",
        top=_top(("Tectona_grandis", "Tectona grandis", 0.41), ("Pinus_sp", None, 0.3),
                 ("Dalbergia_odorifera", "Dalbergia odorifera", 0.1)),
        other=0.19, unknown_score=0.83, threshold=0.5,
    ),
    _image(
        "insects/Trogoderma granarium.png", None, "identified",
        top=_top(("Trogoderma_granarium", "Trogoderma granarium", 0.95),
                 ("Trogoderma_variabile", "Trogoderma variabile", 0.04),
                 ("Anthrenus_verbasci", "Anthrenus verbasci", 0.005)),
        other=0.005, unknown_score=0.05, threshold=0.5, species="Trogoderma granarium",
        chinese_name="谷斑皮蠹", genus="Trogoderma", family="Dermestidae",
        flags=["quarantine pest (China entry list)"],
    ),
    _image("scans/S-1 empty.jpg", "S-1", None, status="zero-byte file"),
    _image("scans/broken <x>.jpg", None, None, status="truncated image"),
]  # fmt: skip
SPECIMENS = [
    {
        "specimen": "S-1",
        "images": 3,
        "ok_images": 2,
        "verdict": "identified",
        "top": ODORIFERA_TOP,
        "other": 0.02,
        **ODORIFERA,
    },
    {
        "specimen": "S 2 <unk>",
        "images": 1,
        "ok_images": 1,
        "verdict": "unknown - refer to lab",
        "top": IMAGES[2]["top"],
        "other": 0.19,
        **NO_TAXON,
    },
]
SUMMARY = {
    "model": "convnext_tiny <wood>",
    "model_format": "onnx",
    "images": 6,
    "ok": 4,
    "failed": 2,
    "identified": 3,
    "unknown": 1,
    "per_species": {"Dalbergia_odorifera": 2, "Trogoderma_granarium": 1},
    "flagged": 3,
    "seconds": 0.5,
    "images_per_s": 12.0,
    "tta": False,
}
FAILED = {"scans/S-1 empty.jpg": "zero-byte file", "scans/broken <x>.jpg": "truncated image"}


def _jpeg(size: tuple[int, int], colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="JPEG", quality=80)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Path:
    thumbnails = {
        path: _jpeg(size, (40 * i, 120, 200 - 40 * i))
        for i, (path, size) in enumerate(THUMB_SIZES.items())
    }  # the insect image has no thumbnail: a placeholder stands in
    path = tmp_path_factory.mktemp("predict") / "report folder" / "predictions.html"
    return write_predict_html(path, IMAGES, SPECIMENS, SUMMARY, thumbnails)


# --- the HTML as written --------------------------------------------------------------------------


class _Collector(HTMLParser):
    """Tags with their attributes, text, and the rows of each table by id."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.rows: dict[str, int] = {}
        self._table: str | None = None
        self._body = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        self.tags.append((tag, attributes))
        if tag == "table":
            self._table = attributes.get("id")
        elif tag == "tbody":
            self._body = True
        elif tag == "tr" and self._body and self._table:
            self.rows[self._table] = self.rows.get(self._table, 0) + 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "tbody":
            self._body = False

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _parse(page: Path) -> _Collector:
    collector = _Collector()
    collector.feed(page.read_text(encoding="utf-8"))
    collector.close()
    return collector


def test_written_atomically_with_nothing_left_beside(tmp_path):
    path = tmp_path / "new folder" / "page.html"
    path.parent.mkdir()
    path.write_text("old", encoding="utf-8")
    assert write_predict_html(path, IMAGES, SPECIMENS, SUMMARY, {}) == path
    assert path.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert [p.name for p in path.parent.iterdir()] == ["page.html"]


def test_page_is_self_contained(page):
    document = page.read_text(encoding="utf-8")
    parsed = _parse(page)
    assert ("meta", {"charset": "utf-8"}) in parsed.tags
    for tag, attributes in parsed.tags:
        assert tag not in ("link", "iframe", "object", "embed"), tag
        assert not (tag == "script" and "src" in attributes)
        src, href = attributes.get("src"), attributes.get("href")
        assert src is None or src.startswith("data:image/jpeg;base64,"), src
        assert href is None or href.startswith("#"), href
    for scheme in ("http:", "https:", "file:", "url(", "@import", "//fonts"):
        assert scheme not in document
    images = [attributes for tag, attributes in parsed.tags if tag == "img"]
    decoded = {}
    for attributes in images:
        data = base64.b64decode(attributes["src"].split(",", 1)[1], validate=True)
        decoded[attributes["alt"]] = Image.open(io.BytesIO(data)).size
    assert decoded == {path.rsplit("/", 1)[1]: size for path, size in THUMB_SIZES.items()}


def test_names_are_escaped_and_every_file_is_listed(page):
    parsed = _parse(page)
    text = "".join(parsed.text)
    assert {tag for tag, _ in parsed.tags}.isdisjoint({"b", "x", "unk", "wood"})
    for record in IMAGES:
        assert record["path"] in text
    assert parsed.rows == {
        "species-table": 2,
        "specimens-table": 2,
        "images-table": 6,
        "failed-table": 2,
    }
    failed = "".join(parsed.text[parsed.text.index("Files to photograph again or check") :])
    for path, reason in FAILED.items():
        assert path in failed and reason in failed
    for words in ("unknown - refer to lab", "降香黄檀", "谷斑皮蠹", "CITES App. II", "Fabaceae"):
        assert words in text


# --- the page in a browser ------------------------------------------------------------------------

BROWSER_PAGE = r"""
import sys
try:
    from PyQt6.QtCore import QTimer, QUrl
    from PyQt6.QtWebEngineCore import QWebEnginePage
    from PyQt6.QtWidgets import QApplication
except ImportError as error:
    print("IMPORT-ERROR", error, flush=True)
    sys.exit(3)


class Page(QWebEnginePage):
    def javaScriptConsoleMessage(self, level, message, line, source):
        print("CONSOLE", level.name, message, flush=True)


app = QApplication(sys.argv[:1])
page = Page()
"""
"""A headless QtWebEngine page (``page``, console messages printed): the start of every browser
driver script the page tests run."""

_RENDER = (
    BROWSER_PAGE
    + r"""

def report(result):
    if result == "pending":  # the probe waits for the page (a server's answer): ask again
        QTimer.singleShot(100, lambda: page.runJavaScript(sys.argv[2], report))
        return
    print("RESULT", result, flush=True)
    app.quit()


page.loadFinished.connect(lambda ok: page.runJavaScript(sys.argv[2], report) if ok else report(""))
target = sys.argv[1]  # a file, or a page served over HTTP
page.load(QUrl(target) if "://" in target else QUrl.fromLocalFile(target))
QTimer.singleShot(90_000, app.quit)
app.exec()
"""
)

_PROBE = r"""
(() => {
  const all = (selector) => [...document.querySelectorAll(selector)];
  const colour = (selector) => {
    const found = document.querySelector(selector);
    return found ? getComputedStyle(found).backgroundColor : null;
  };
  const rows = () => all("#images-table tbody tr");
  const out = {
    charset: document.characterSet,
    title: document.title,
    text: document.body.innerText,
    rows: rows().map((row) => ({
      file: row.cells[2].firstChild.textContent,
      verdict: row.querySelector(".verdict").textContent,
      bars: [...row.querySelectorAll(".bar")].map((bar) => bar.innerText.replace(/\s+/g, " ")),
      flags: [...row.querySelectorAll(".flag")].map((flag) => flag.textContent),
      flagged: row.classList.contains("flagged"),
    })),
    specimens: all("#specimens-table tbody tr").map((row) => row.innerText),
    failed: all("#failed-table tbody tr").map((row) => [row.cells[0].textContent,
                                                        row.cells[1].textContent]),
    thumbnails: all("#images-table img.thumb").map((img) => [img.alt, img.complete,
                                                            img.naturalWidth, img.naturalHeight]),
    placeholders: all("#images-table .thumb.none").map((box) => box.textContent),
    sheets: all(".sheet").map((sheet) => sheet.innerText),
    references: all(".sheet .candidates img.thumb").map((img) => [img.complete,
                                                                   img.naturalWidth]),
    print: [...document.styleSheets].flatMap((sheet) => [...sheet.cssRules])
      .filter((rule) => rule.media && rule.media.mediaText.includes("print"))
      .map((rule) => rule.cssText),
    colours: {
      identified: colour(".verdict.identified"), unknown: colour(".verdict.unknown"),
      failed: colour(".verdict.failed"), cites: colour(".flag.cites"),
      quarantine: colour(".flag.quarantine"), cell: colour("#images-table td"),
    },
    fetched: performance.getEntriesByType("resource").map((entry) => entry.name),
    toolbar: !document.querySelector("#images .toolbar").hidden,
    shown: {},
  };
  const show = document.getElementById("show"), find = document.getElementById("find");
  for (const kind of ["", "identified", "unknown", "flagged", "failed"]) {
    show.value = kind;
    show.dispatchEvent(new Event("change"));
    out.shown[kind || "all"] = rows().filter((row) => !row.hidden).length;
  }
  show.value = "";
  find.value = "降香黄檀";
  find.dispatchEvent(new Event("input"));
  out.shown.find = rows().filter((row) => !row.hidden).length;
  return JSON.stringify(out);
})()
"""


def _render(page: Path | str, probe: str = _PROBE) -> tuple[dict, list[str]]:
    """The probe's result and the page's console messages, or a skip without a browser. ``page``
    is a file or a URL; a probe that returns ``"pending"`` is run again 100 ms later (the page is
    still waiting for something), until the 90 s limit."""
    env = {
        **os.environ,
        "QT_QPA_PLATFORM": "offscreen",
        "QTWEBENGINE_DISABLE_SANDBOX": "1",  # the Chromium sandbox refuses to run as root
        "QTWEBENGINE_CHROMIUM_FLAGS": "--disable-gpu --disable-logging",
    }
    process = subprocess.run(
        [sys.executable, "-c", _RENDER, str(page), probe],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    lines = process.stdout.splitlines()
    if process.returncode == 3 and lines and lines[0].startswith("IMPORT-ERROR"):
        error = lines[0].removeprefix("IMPORT-ERROR ")
        pytest.skip(f"no headless Chromium (PyQt6-WebEngine, in the dev extra): {error}")
    results = [line[len("RESULT ") :] for line in lines if line.startswith("RESULT ")]
    assert process.returncode == 0 and results and results[0], process.stderr[-3000:]
    return json.loads(results[0]), [line for line in lines if line.startswith("CONSOLE")]


def test_page_renders_in_headless_chromium(page):
    rendered, console = _render(page)
    assert console == []  # the filter script ran without an error
    assert rendered["charset"] == "UTF-8"
    assert rendered["title"] == "Prediction: convnext_tiny <wood>"
    text = rendered["text"]
    for words in (
        "ONNX bundle",
        "12.0 images/s",
        "降香黄檀",
        "谷斑皮蠹",
        "Dermestidae",
        "quarantine pest (China entry list)",
        "Hongmu 香枝木类",
        "zero-byte file",
        "truncated image",
        "Photograph these again",
    ):
        assert words in text, words

    rows = {row["file"]: row for row in rendered["rows"]}
    assert list(rows) == [record["path"] for record in IMAGES]  # every file, raw names intact
    for record in IMAGES:
        row = rows[record["path"]]
        assert row["verdict"] == (record["verdict"] or "could not be read")
        assert row["flags"] == record["flags"]
        assert row["flagged"] == bool(record["flags"])
        assert len(row["bars"]) == (len(record["top"]) + 1 if record["top"] else 0)
    assert rows["scans/S-1 front.jpg"]["bars"] == [
        "Dalbergia odorifera 87.0%",
        "Dalbergia tonkinensis 8.0%",
        "Pterocarpus santalinus 3.0%",
        "other 2.0%",
    ]
    assert rows[ODD]["bars"][1] == "Pinus_sp 30.0%"  # a class outside the taxonomy keeps its name
    assert rendered["failed"] == [list(item) for item in FAILED.items()]
    assert "S 2 <unk>" in rendered["specimens"][1]
    assert "unknown - refer to lab" in rendered["specimens"][1]
    assert "2 of 3" in rendered["specimens"][0]

    decoded = {
        alt: (complete, width, height) for alt, complete, width, height in rendered["thumbnails"]
    }
    assert decoded == {path.rsplit("/", 1)[1]: (True, *size) for path, size in THUMB_SIZES.items()}
    assert sorted(rendered["placeholders"]) == ["no preview", "not readable", "not readable"]
    assert all(name.startswith("data:") for name in rendered["fetched"])

    colours = rendered["colours"]
    assert len({colours["identified"], colours["unknown"], colours["failed"]}) == 3
    for name in ("cites", "quarantine"):
        assert colours[name] not in (colours["cell"], "rgba(0, 0, 0, 0)")

    assert rendered["toolbar"]
    assert rendered["shown"] == {
        "all": 6,
        "identified": 3,
        "unknown": 1,
        "flagged": 3,
        "failed": 2,
        "find": 2,
    }


def test_inspection_sheets_render_with_reference_photos_reasons_and_print_layout(tmp_path):
    reference = {"photo": "train/Dalbergia_odorifera/ref 3.jpg", "index": 0, "distance": 0.12}
    top = [{**ODORIFERA_TOP[0], "reference": reference}, *ODORIFERA_TOP[1:]]
    images = [
        _image("case/A/front.jpg", "A", "identified", top=top, other=0.02, **ODORIFERA),
        _image("case/A/blurred.jpg", "A", None, status="retake",
               quality={"reasons": ["blurred", "too dark"], "measures": {}}),
        _image("case/B/dark.jpg", "B", None, status="retake",
               quality={"reasons": ["too dark"], "measures": {}}),
    ]  # fmt: skip
    specimens = [
        {"specimen": "A", "images": 2, "ok_images": 1, "retake_images": 1,
         "verdict": "identified", "top": top, "other": 0.02, **ODORIFERA},
        {"specimen": "B", "images": 1, "ok_images": 0, "retake_images": 1,
         "verdict": "retake photos", "top": [], "other": None, **NO_TAXON},
    ]  # fmt: skip
    summary = {
        **SUMMARY,
        "images": 3,
        "retake": 2,
        "quality_gate": "on",
        "record_sha256": "ab" * 32,
        "gallery": {"per_class": 3, "licence": "CC BY 4.0"},
    }
    thumbnails = {"case/A/front.jpg": _jpeg((64, 48), (90, 60, 30)),
                  "reference:0": _jpeg((80, 60), (120, 80, 40))}  # fmt: skip
    page = write_predict_html(tmp_path / "sheet.html", images, specimens, summary, thumbnails)
    rendered, console = _render(page)
    assert console == []
    first, second = rendered["sheets"]
    assert "Specimen A" in first and "ref 3.jpg" in first and "CC BY 4.0" not in first
    assert "blurred.jpg: blurred, too dark" in first and "1 of 2 photo(s) judged" in first
    assert "ab" * 32 in first  # the inspection record's hash on every sheet
    assert "retake photos" in second and "dark.jpg: too dark" in second
    assert rendered["references"] == [[True, 80]]  # the reference photo decoded
    assert "CC BY 4.0" in rendered["text"]
    printing = " ".join(rendered["print"])
    assert "break-after: page" in printing and ".sheet" in printing
