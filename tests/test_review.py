"""`jianmu review`: what goes to the lab's expert and why, the page and the CSV; the page in
headless Chromium (Qt WebEngine, as tests/test_predict_html.py), its form filled in and its save
button clicked, and the CSV it downloads read back by `jianmu data import`."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_predict_html import BROWSER_PAGE, _parse
from tiny import settings, tiny_config
from typer.testing import CliRunner

from jianmu.cli import app
from jianmu.data.importer import IMPORTS_LOG, REVIEW_COLUMNS, import_reviewed
from jianmu.data.synth import generate_dataset
from jianmu.engine.review import REVIEW_CSV, REVIEW_PAGE, load_predictions, review
from jianmu.engine.train import train
from jianmu.engine.verify import verify
from jianmu.errors import JianmuError
from jianmu.record import file_sha256, load_record
from jianmu.report.predict_files import ResultWriter
from jianmu.verdict import UNKNOWN

CLASSES = ["Dalbergia_odorifera", "Senna_siamea", "Tectona_grandis"]
runner = CliRunner()


# --- which photos go to the expert, on hand-written predictions -----------------------------------

NAMES = {
    "Dalbergia_odorifera": "Dalbergia odorifera",
    "Dalbergia_tonkinensis": "Dalbergia tonkinensis",
    "Senna_siamea": "Senna siamea",
    "Tectona_grandis": "Tectona grandis",
}


def _top(*shares: tuple[str, float]) -> list[dict]:
    return [{"class": c, "species": NAMES[c], "probability": p} for c, p in shares]


def _answer(rank: str | None, taxon: str | None, top: list[dict], **fields) -> dict:
    """An answered record, as predict writes one (verify adds the declaration's columns)."""
    verdict = None if rank is None else "identified" if rank == "species" else UNKNOWN
    return {
        "status": "ok", "verdict": verdict, "rank": rank, "taxon": taxon, "top": top,
        "other": round(1 - sum(entry["probability"] for entry in top), 6),
        "unknown_score": 0.5, "threshold": 0.4, "species": None, "chinese_name": None,
        "genus": None, "family": None, "flags": [], "possible_flags": [], "evidence": {},
        "quality": {"reasons": [], "measures": {}}, "declared": None, "decision": None,
        "reason": None, "consequence": None, **fields,
    }  # fmt: skip


def _photo(path: str, specimen: str | None, rank, taxon, top, **fields) -> dict:
    return {"path": path, "specimen": specimen, **_answer(rank, taxon, top, **fields)}


SURE = _top(("Dalbergia_odorifera", 0.90), ("Senna_siamea", 0.06), ("Tectona_grandis", 0.02))
IMAGES = [
    _photo("A/1.jpg", "A", "species", "Dalbergia odorifera", SURE),
    _photo("A/2.jpg", "A", "species", "Dalbergia odorifera", SURE),
    _photo("B/1.jpg", "B", "unknown", None,
           _top(("Senna_siamea", 0.45), ("Tectona_grandis", 0.40), ("Dalbergia_odorifera", 0.1))),
    _photo("B/2.jpg", "B", "species", "Dalbergia odorifera", SURE),
    {**_photo("B/3.jpg", "B", None, None, []), "status": "retake",
     "quality": {"reasons": ["blurred"], "measures": {}}},
    _photo("C/1.jpg", "C", "species", "Senna siamea",
           _top(("Senna_siamea", 0.8), ("Tectona_grandis", 0.1), ("Dalbergia_odorifera", 0.05))),
    _photo("C/2.jpg", "C", "species", "Tectona grandis",
           _top(("Tectona_grandis", 0.8), ("Senna_siamea", 0.1), ("Dalbergia_odorifera", 0.05))),
    _photo("genus.jpg", None, "genus", "Dalbergia sp.",
           _top(("Dalbergia_odorifera", 0.55), ("Dalbergia_tonkinensis", 0.40),
                ("Senna_siamea", 0.03))),
    _photo("close.jpg", None, "species", "Tectona grandis",
           _top(("Tectona_grandis", 0.55), ("Senna_siamea", 0.40), ("Dalbergia_odorifera", 0.03))),
    _photo("declared.jpg", None, "species", "Senna siamea",
           _top(("Senna_siamea", 0.9), ("Tectona_grandis", 0.05), ("Dalbergia_odorifera", 0.03)),
           declared="Tectona grandis", decision="inconsistent",
           reason="looks like Senna siamea, not Tectona grandis"),
    {**_photo("broken.jpg", None, None, None, []), "status": "truncated image"},
]  # fmt: skip
SPECIMENS = [
    {"specimen": "A", "images": 2, "ok_images": 2, "retake_images": 0, **_answer(
        "species", "Dalbergia odorifera", SURE)},
    {"specimen": "B", "images": 3, "ok_images": 2, "retake_images": 1, **_answer(
        "unknown", None, _top(("Dalbergia_odorifera", 0.5), ("Senna_siamea", 0.255),
                              ("Tectona_grandis", 0.21)))},
    {"specimen": "C", "images": 2, "ok_images": 2, "retake_images": 0, **_answer(
        "unknown", None, _top(("Senna_siamea", 0.45), ("Tectona_grandis", 0.45),
                              ("Dalbergia_odorifera", 0.05)))},
]  # fmt: skip


def _predictions(folder: Path, suffix: str = ".csv") -> Path:
    """The hand-written records as `jianmu verify` writes them (its own writer)."""
    path = folder / f"checked{suffix}"
    folder.mkdir(parents=True, exist_ok=True)
    writer = ResultWriter(path, top_k=3, decisions=True)
    writer.write(IMAGES)
    writer.finish(IMAGES, SPECIMENS, {})
    return path


def _selected(result) -> dict[str, list[str]]:
    """Item -> the reason keys of the item and of its photos."""
    return {
        item.key: sorted({r.key for r in item.reasons}
                         | {r.key for photo in item.photos for r in photo.reasons})
        for item in result.items
    }  # fmt: skip


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".json"])
def test_the_expert_gets_unknowns_coarse_answers_low_margins_and_declarations(tmp_path, suffix):
    predictions = _predictions(tmp_path / "run", suffix)
    result = review(settings(out=tmp_path / "review"), predictions)
    assert _selected(result) == {
        "B": ["low_margin", "unknown"],  # B/1.jpg unknown; the roll-up too
        "C": ["low_margin", "unknown"],  # each photo sure, but of two species: the roll-up is not
        "genus.jpg": ["above_species", "low_margin"],
        "close.jpg": ["low_margin"],
        "declared.jpg": ["declaration"],
    }  # A is sure, and broken.jpg has no answer
    items = {item.key: item for item in result.items}
    assert [photo.path for photo in items["B"].photos] == ["B/1.jpg", "B/2.jpg"]  # whole
    assert items["B"].left_out == [("B/3.jpg", "retake: blurred")]
    assert [str(r) for r in items["B"].photos[0].reasons] == [
        UNKNOWN, "low margin 0.05 (top-1 45.0%, top-2 40.0%)"
    ]  # fmt: skip
    assert items["B"].photos[1].reasons == []  # sure itself: it comes with its specimen
    assert [str(r) for r in items["C"].reasons] == [
        UNKNOWN, "low margin 0.00 (top-1 45.0%, top-2 45.0%)"
    ]  # fmt: skip
    assert str(items["genus.jpg"].photos[0].reasons[0]) == (
        "answered at the genus only: Dalbergia sp."
    )
    assert str(items["declared.jpg"].photos[0].reasons[0]) == (
        "declared Tectona grandis: inconsistent (looks like Senna siamea, not Tectona grandis)"
    )
    assert result.images == 11 and result.readable == 9 and result.photos == 7
    assert result.reasons == {"unknown": 3, "low_margin": 4, "above_species": 1, "declaration": 1}
    assert result.missing == dict.fromkeys([p.path for i in result.items for p in i.photos],
                                           "photo not found")  # fmt: skip

    only_unknown = review(
        settings("review.reasons=[unknown]", out=tmp_path / "unknown"), predictions
    )
    assert list(_selected(only_unknown)) == ["B", "C"]
    narrow = review(settings("review.max_margin=0.1", out=tmp_path / "narrow"), predictions)
    assert list(_selected(narrow)) == ["B", "C", "genus.jpg", "declared.jpg"]


def test_without_the_specimen_file_only_photo_reasons_count(tmp_path):
    predictions = _predictions(tmp_path / "run")
    (tmp_path / "run" / "checked.specimens.csv").unlink()
    result = review(settings(out=tmp_path / "review"), predictions)
    assert "C" not in _selected(result) and "B" in _selected(result)
    assert result.items[0].answer is None
    assert result.warnings == [
        "no inspection record checked.record.json beside the predictions: the import's "
        "provenance will lack the run and the model's hash",
        "no specimen rows beside checked.csv: specimens are judged by their photos only",
    ]


def test_the_csv_has_a_row_per_photo_and_empty_columns_for_the_expert(tmp_path):
    predictions = _predictions(tmp_path / "run")
    result = review(settings(out=tmp_path / "review"), predictions)
    path = tmp_path / "review" / REVIEW_CSV
    assert result.files == [path, tmp_path / "review" / REVIEW_PAGE]
    assert path.read_bytes().startswith(b"\xef\xbb\xbf")  # BOM: spreadsheets read UTF-8
    with open(path, encoding="utf-8-sig", newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert list(rows[0]) == list(REVIEW_COLUMNS)
    assert [row["path"] for row in rows] == [
        "B/1.jpg", "B/2.jpg", "C/1.jpg", "C/2.jpg", "genus.jpg", "close.jpg", "declared.jpg"
    ]  # fmt: skip
    assert all(not row[c] for row in rows for c in ("reviewed_taxon", "reviewer", "note"))
    first = rows[0]
    assert first["specimen"] == "B" and first["answer"] == UNKNOWN
    assert first["candidates"] == (
        "Senna siamea 45.0%; Tectona grandis 40.0%; Dalbergia odorifera 10.0%"
    )
    assert first["margin"] == "0.050"
    assert first["reasons"] == (
        f"{UNKNOWN}; low margin 0.05 (top-1 45.0%, top-2 40.0%); specimen: {UNKNOWN}"
    )
    assert rows[-1]["declared"] == "Tectona grandis" and rows[-1]["decision"] == "inconsistent"
    assert first["predictions"] == str(predictions.absolute())

    review(settings(out=tmp_path / "review"), predictions)  # nothing entered yet: rewritten
    rows[0] |= {"reviewed_taxon": "Senna siamea", "reviewer": "Dr. Li"}
    with open(path, "w", encoding="utf-8-sig", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=REVIEW_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    with pytest.raises(JianmuError, match="holds 1 reviewed row"):
        review(settings(out=tmp_path / "review"), predictions)


def test_bad_predictions_are_one_line_errors(tmp_path):
    stray = tmp_path / "notes.csv"
    stray.write_text("name,size\na,1\n", encoding="utf-8")
    for path, words in [
        (stray, "not a jianmu predict or verify output"),
        (tmp_path / "gone.csv", "predictions not found"),
        (tmp_path / "page.html", "expected a predict or verify output"),
    ]:
        with pytest.raises(JianmuError, match=words):
            load_predictions(path)
    result = runner.invoke(app, ["review", str(stray)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:")


# --- a real verify run, the page in a browser, and the import ------------------------------------


@pytest.fixture(scope="module")
def checked(tmp_path_factory):
    """A tiny model trained once, a field folder (three specimens and a loose photo, from another
    seed than the training set) verified against 'Tectona grandis'; one photo of S03 removed
    after the run."""
    base = tmp_path_factory.mktemp("review")
    generate_dataset(
        base / "data", "wood", classes=3, per_class=8, size=48, seed=4, class_names=CLASSES
    )
    generate_dataset(
        base / "photos", "wood", classes=3, per_class=4, size=48, specimens_per_class=2, seed=9,
        class_names=CLASSES,
    )  # fmt: skip
    photos = sorted((base / "photos").rglob("*.jpg"))  # D s01 a b, s02 a b; S ...; T ...
    field = base / "field"
    layout = {"S01/a.jpg": photos[4], "S01/b.jpg": photos[5], "S02/a.jpg": photos[8],
              "S02/b.jpg": photos[9], "S03/a.jpg": photos[0], "S03/b.jpg": photos[1],
              "loose 1.jpg": photos[2]}  # fmt: skip
    for name, source in layout.items():
        (field / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, field / name)
    config = tiny_config(
        base / "data", base / "run", "train.epochs=1", "calibration.max_wrong_rate=1"
    )
    run_dir = train(config).run_dir
    out = base / "checked.csv"
    verify(settings(out=out, verify__declared="Tectona grandis"), run_dir, [field])
    (field / "S03" / "b.jpg").unlink()
    return base, out


_DRIVE = (
    BROWSER_PAGE
    + r"""
import json
found = {}


def finish():
    if "probe" in found and "download" in found:
        print("RESULT", json.dumps({"probe": found["probe"], "download": found["download"]}),
              flush=True)
        app.quit()


def requested(download):
    found["request"] = download  # kept alive until it is done
    download.setDownloadDirectory(sys.argv[3])

    def changed():
        if download.isFinished():
            found["download"] = [download.state().name, download.downloadFileName()]
            finish()

    download.isFinishedChanged.connect(changed)
    download.accept()


def probed(result):
    found["probe"] = result
    finish()


page.profile().downloadRequested.connect(requested)
page.loadFinished.connect(lambda ok: page.runJavaScript(sys.argv[2], probed) if ok else app.quit())
page.load(QUrl.fromLocalFile(sys.argv[1]))
QTimer.singleShot(90_000, app.quit)
app.exec()
"""
)

_FILL = r"""
(() => {
  const all = (selector) => [...document.querySelectorAll(selector)];
  const unit = (key) => document.querySelector(`article.unit[data-unit="${key}"]`);
  const type = (input, value) => {
    input.value = value;
    input.dispatchEvent(new Event("input"));
    return input.parentElement.querySelector(".hint").textContent;
  };
  const out = {
    text: document.body.innerText,
    units: all("article.unit").map((article) => article.dataset.unit),
    thumbnails: all("article.unit img.thumb").map((img) => [img.alt, img.complete,
                                                            img.naturalWidth]),
    missing: all(".thumb.missing").map((box) => box.textContent),
    options: all("#names option").length,
    fetched: performance.getEntriesByType("resource").map((entry) => entry.name),
    hints: {},
  };
  const s01 = unit("S01").querySelector("input.taxon");
  out.hints.misspelt = type(s01, "Senna siamia");
  out.hints.synonym = type(s01, "Cassia siamea");
  out.hints.chinese = type(unit("S02").querySelector("input.taxon"), "柚木");
  unit("S01").querySelector("input.note").value = "rays storied, 2 mm";
  const loose = all("article.unit").find((article) => article.dataset.unit.endsWith("loose 1.jpg"));
  type(loose.querySelector("input.taxon"), "Dalbergia odorifera");
  const save = document.getElementById("save"), status = document.getElementById("status");
  out.enabled = !save.disabled;
  save.click();  // no reviewer yet: refused in the page, nothing saved
  out.refused = [status.textContent, status.className];
  document.getElementById("reviewer").value = "Dr. Li";
  save.click();
  out.saved = [status.textContent, status.className];
  return JSON.stringify(out);
})()
"""


def _browse(page: Path, script: str, downloads: Path) -> tuple[dict, list, list[str]]:
    """Open ``page`` in headless Chromium, run ``script``, wait for the download it starts:
    (the script's result, [download state, file name], console messages); a skip without it."""
    env = {
        **os.environ,
        "QT_QPA_PLATFORM": "offscreen",
        "QTWEBENGINE_DISABLE_SANDBOX": "1",  # the Chromium sandbox refuses to run as root
        "QTWEBENGINE_CHROMIUM_FLAGS": "--disable-gpu --disable-logging",
    }
    process = subprocess.run(
        [sys.executable, "-c", _DRIVE, str(page), script, str(downloads)],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    lines = process.stdout.splitlines()
    if process.returncode == 3 and lines and lines[0].startswith("IMPORT-ERROR"):
        pytest.skip(f"no headless Chromium (PyQt6-WebEngine, in the dev extra): {lines[0]}")
    results = [line[len("RESULT ") :] for line in lines if line.startswith("RESULT ")]
    assert process.returncode == 0 and results, process.stdout[-2000:] + process.stderr[-3000:]
    found = json.loads(results[0])
    return (
        json.loads(found["probe"]),
        found["download"],
        [line for line in lines if line.startswith("CONSOLE")],
    )


def test_the_page_is_self_contained(checked, tmp_path):
    _, predictions = checked
    result = review(settings("review.max_margin=1", out=tmp_path), predictions)
    page = tmp_path / REVIEW_PAGE
    parsed = _parse(page)
    document = page.read_text(encoding="utf-8")
    for tag, attributes in parsed.tags:
        assert tag not in ("link", "iframe", "object", "embed", "form"), tag
        assert not (tag == "script" and "src" in attributes)
        assert attributes.get("src") is None or attributes["src"].startswith("data:image/jpeg")
    for scheme in ("http:", "https:", "file:", "url(", "@import", "//fonts"):
        assert scheme not in document
    images = [attributes for tag, attributes in parsed.tags if tag == "img"]
    assert len(images) == result.photos - 1 == 6  # S03/b.jpg is gone: shown as missing
    gone = str(predictions.parent / "field" / "S03" / "b.jpg")
    assert result.missing == {gone: "photo not found"}
    data = next(
        text for text in parsed.text if text.lstrip().startswith('{"columns"')
    )  # the rows the page saves, embedded
    assert json.loads(data)["columns"] == list(REVIEW_COLUMNS)


def test_the_form_saves_a_csv_that_data_import_reads_back(checked, tmp_path):
    base, predictions = checked
    result = review(settings("review.max_margin=1", out=tmp_path / "review"), predictions)
    loose = str(predictions.parent / "field" / "loose 1.jpg")
    assert [item.key for item in result.items] == [loose, "S01", "S02", "S03"]  # input order
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    probe, download, console = _browse(tmp_path / "review" / REVIEW_PAGE, _FILL, downloads)
    assert console == []
    assert probe["units"] == [loose, "S01", "S02", "S03"]
    assert len(probe["thumbnails"]) == 6
    assert all(complete and width > 0 for _, complete, width in probe["thumbnails"])
    assert probe["missing"] == ["photo missing: photo not found"]
    assert all(name.startswith("data:") for name in probe["fetched"])
    assert probe["options"] > 100  # the wood taxonomy's species and synonyms
    assert probe["hints"]["misspelt"].startswith("not in the list")
    assert probe["hints"]["synonym"] == probe["hints"]["chinese"] == ""
    assert probe["enabled"]
    assert probe["refused"] == ["Enter your name as reviewer first.", "error"]
    assert probe["saved"][1] == "done" and "3 of 4 named" in probe["saved"][0]
    assert download == ["DownloadCompleted", "reviewed.csv"]
    saved = downloads / "reviewed.csv"

    # the page saves review.csv's own rows, with the expert's three columns filled in
    written = (tmp_path / "review" / REVIEW_CSV).read_bytes()
    assert saved.read_bytes().startswith(b"\xef\xbb\xbf")
    with open(saved, encoding="utf-8-sig", newline="") as stream:
        rows = list(csv.DictReader(stream))
    blank = [{**row, "reviewed_taxon": "", "reviewer": "", "note": ""} for row in rows]
    lines = written.decode("utf-8-sig").splitlines()
    assert list(csv.DictReader(lines)) == blank
    by_specimen = {(row["specimen"], row["reviewed_taxon"], row["reviewer"], row["note"])
                   for row in rows}  # fmt: skip
    assert by_specimen == {
        ("S01", "Cassia siamea", "Dr. Li", "rays storied, 2 mm"),
        ("S02", "柚木", "Dr. Li", ""),
        ("S03", "", "", ""),
        ("", "Dalbergia odorifera", "Dr. Li", ""),
    }

    data = Path(shutil.copytree(base / "data", tmp_path / "data"))
    imported = import_reviewed(settings(), saved, data)
    assert imported.ok and imported.blank_rows == 2 and imported.files == 5
    assert [(s.folder.as_posix(), s.taxon) for s in imported.imported] == [
        ("Dalbergia_odorifera", "Dalbergia odorifera"),
        ("Senna_siamea/S01", "Senna siamea"),
        ("Tectona_grandis/S02", "Tectona grandis"),
    ]
    assert sorted(p.name for p in (data / "Senna_siamea" / "S01").iterdir()) == ["a.jpg", "b.jpg"]
    assert (data / "Dalbergia_odorifera" / "loose 1.jpg").read_bytes() == (
        predictions.parent / "field" / "loose 1.jpg"
    ).read_bytes()
    record = load_record(predictions.with_name("checked.record.json"))
    log = [json.loads(line) for line in (data / IMPORTS_LOG).read_text("utf-8").splitlines()]
    assert len(log) == 5
    for entry in log:
        assert entry["reviewer"] == "Dr. Li"
        assert entry["run"] == record["record_sha256"]
        assert entry["model_sha256"] == record["model"]["sha256"]
        assert entry["predictions"] == str(predictions.absolute())
        assert entry["sha256"] == file_sha256(data / entry["destination"])
    s01 = [entry for entry in log if entry["specimen"] == "S01"]
    assert [(entry["note"], entry["reviewed_as"]) for entry in s01] == [
        ("rays storied, 2 mm", "Cassia siamea")
    ] * 2


def test_review_command(checked, tmp_path):
    _, predictions = checked
    out = tmp_path / "queue"
    result = runner.invoke(
        app, ["review", str(predictions), "--out", str(out), "--set", "review.max_margin=1"]
    )
    assert result.exit_code == 0, result.output
    assert "4 specimen(s), 7 photo(s) of 7 for the expert; 1 photo(s) missing" in result.output
    assert f"written: {out / REVIEW_CSV}" in result.output
    assert (out / REVIEW_PAGE).is_file()
