"""`jianmu predict`: one row per input whatever the file, output schemas, specimen roll-up, resume,
Ctrl-C, and the ONNX path without torch; on a tiny model trained once for the module."""

from __future__ import annotations

import builtins
import csv
import errno
import io
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from imagefiles import (
    write_cmyk_jpeg,
    write_gradient_16bit_png,
    write_image,
    write_png_header,
    write_text,
    write_truncated_jpeg,
    write_zero_byte,
)
from PIL import Image
from tiny import settings, tiny_config
from typer.testing import CliRunner

from jianmu.bundle import load_model
from jianmu.cli import app
from jianmu.data.images import MAX_PIXELS
from jianmu.data.inputs import find_inputs
from jianmu.data.synth import generate_dataset
from jianmu.engine.export import export
from jianmu.engine.predict import PredictInterrupted, predict
from jianmu.engine.train import train
from jianmu.errors import JianmuError
from jianmu.report.predict_files import csv_columns, read_results, specimens_path
from jianmu.verdict import IDENTIFIED
from jianmu.verdict import UNKNOWN as UNKNOWN_VERDICT

CLASSES = ["Dalbergia_odorifera", "Senna_siamea", "Tectona_grandis"]
IMAGE_KEYS = {
    "path", "specimen", "status", "verdict", "rank", "taxon", "top", "other", "unknown_score",
    "threshold", "species", "chinese_name", "genus", "family", "flags", "possible_flags",
    "evidence", "quality",
}  # fmt: skip
SPECIMEN_KEYS = {
    "specimen", "images", "ok_images", "retake_images", "verdict", "rank", "taxon", "top", "other",
    "species", "chinese_name", "genus", "family", "flags", "possible_flags",
}  # fmt: skip
SUMMARY_KEYS = {
    "model", "model_format", "images", "ok", "failed", "identified", "unknown", "ranks",
    "per_species", "flagged", "possibly_flagged", "regulated_specimens", "seconds",
    "images_per_s", "tta", "views",
}  # fmt: skip
# What each odd file of the field folder must come out as.
EXPECTED_STATUS = {
    "S01/a 1.jpg": "ok",
    "S01/a 2.jpg": "ok",
    "S02/b1.jpg": "ok",
    "S02/b2 truncated.jpg": "truncated image",
    "照片 1.jpg": "ok",
    "cmyk.jpg": "retake",  # 48 x 48 px, blown up to the input size: blurred
    "sixteen.png": "retake",  # a smooth gradient: no texture to judge
    "bomb.png": f"too large ({12_000 * 12_000} pixels)",
    "empty.jpg": "zero-byte file",
    "notes.jpg": "not an image",
    "dangling.jpg": "cannot read (broken link)",
    "locked.jpg": "cannot read (Permission denied)",
}
runner = CliRunner()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    base = tmp_path_factory.mktemp("predict")
    generate_dataset(
        base / "data", "wood", classes=3, per_class=8, size=48, seed=4, class_names=CLASSES
    )
    # species or unknown by the unknown rule alone: these tests are about files and records;
    # answers at coarser ranks are tested in test_decisions.py. The quality gate is fitted on
    # this handful of training photos (at least 30 by default) so that the records show it.
    config = tiny_config(
        base / "data", base / "run", "train.epochs=1", "calibration.max_wrong_rate=1",
        "quality.min_photos=5",
    )  # fmt: skip
    run_dir = train(config).run_dir
    onnx = export(settings(out=base / "model.onnx"), run_dir).path
    return base, run_dir, onnx


def _picture(trained, index: int) -> Path:
    base, _, _ = trained
    return sorted((base / "data").rglob("*.jpg"))[index]


@pytest.fixture
def field(trained, tmp_path, monkeypatch) -> Path:
    """A field folder with two specimens and every kind of bad file; ``locked.jpg`` cannot be
    opened (see :func:`_lock`)."""
    root = tmp_path / "field"
    for index, name in enumerate(["S01/a 1.jpg", "S01/a 2.jpg", "S02/b1.jpg", "照片 1.jpg"]):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(_picture(trained, index * 5), root / name)
    write_truncated_jpeg(root / "S02" / "b2 truncated.jpg", seed=3, keep=0.4)
    write_cmyk_jpeg(root / "cmyk.jpg", seed=5)
    write_gradient_16bit_png(root / "sixteen.png")
    write_png_header(root / "bomb.png", 12_000, 12_000)
    write_zero_byte(root / "empty.jpg")
    write_text(root / "notes.jpg")
    os.symlink(root / "gone.jpg", root / "dangling.jpg")
    write_image(root / "locked.jpg", seed=7)
    write_text(root / "readme.txt")  # not an image extension: skipped inside a folder
    write_image(root / ".hidden.jpg", seed=8)  # hidden: skipped
    _lock(root / "locked.jpg", monkeypatch)
    return root


def _lock(path: Path, monkeypatch) -> None:
    """Make ``path`` unreadable. As root (CI containers) file modes do not stop reads, so there the
    one open() that matters answers as the kernel would for a non-root user: EACCES."""
    path.chmod(0)
    if os.access(path, os.R_OK):
        real_open = builtins.open

        def refusing_open(file, *args, **kwargs):
            if isinstance(file, (str, os.PathLike)) and Path(file) == path:
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(file))
            return real_open(file, *args, **kwargs)

        monkeypatch.setattr(builtins, "open", refusing_open)


def _by_name(records, root: Path) -> dict[str, dict]:
    return {Path(r["path"]).relative_to(root).as_posix(): r for r in records}


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8-sig", newline="") as stream:
        return list(csv.DictReader(stream))


def test_every_input_gets_one_row_with_its_status(trained, field, tmp_path):
    _, run_dir, _ = trained
    missing = tmp_path / "nowhere.jpg"
    not_image = write_text(tmp_path / "memo.pdf")  # named explicitly: classified (and refused)
    out = tmp_path / "results.csv"
    result = predict(settings(out=out, predict__batch_size=3), run_dir, [field, missing, not_image])
    rows = _read_csv(out)
    assert len(rows) == len(EXPECTED_STATUS) + 2 == result.summary["images"]
    statuses = {Path(r["path"]).relative_to(field).as_posix(): r["status"] for r in rows[:-2]}
    assert statuses == EXPECTED_STATUS
    assert [(r["path"], r["status"]) for r in rows[-2:]] == [
        (str(missing), "not found"),
        (str(not_image), "not an image"),
    ]
    assert result.summary["failed"] == result.failed == 8 and result.summary["ok"] == 4
    assert result.summary["retake"] == 2 and result.summary["quality_gate"] == "on"
    retake = {Path(r["path"]).name: r["quality_reasons"] for r in rows if r["status"] == "retake"}
    assert retake == {"cmyk.jpg": "blurred", "sixteen.png": "blurred"}  # 48 px blown up; smooth
    assert result.summary["skipped"] == 1  # readme.txt; .hidden.jpg is not counted
    for row in rows:
        readable = row["status"] == "ok"
        assert bool(row["verdict"]) == readable and bool(row["top1_class"]) == readable
    assert MAX_PIXELS < 12_000 * 12_000


def test_records_carry_calibrated_shares_verdict_and_taxonomy(trained, field):
    _, run_dir, _ = trained
    result = predict(settings(predict__top_k=2, predict__batch_size=4), run_dir, [field])
    bundle = load_model(run_dir)
    threshold = bundle.calibration(1).threshold
    for record in result.images:
        assert set(record) == IMAGE_KEYS
        if record["status"] != "ok":
            assert record["verdict"] is None and record["top"] == [] and record["flags"] == []
            continue
        shares = [entry["probability"] for entry in record["top"]]
        assert len(shares) == 2 and shares == sorted(shares, reverse=True)
        assert sum(shares) + record["other"] == pytest.approx(1.0, abs=1e-5)
        assert record["threshold"] == threshold
        known = record["unknown_score"] >= threshold
        assert record["verdict"] == (IDENTIFIED if known else UNKNOWN_VERDICT)
        assert record["rank"] == ("species" if known else "unknown")
        best = record["top"][0]["class"]
        if known:
            assert record["species"] == record["taxon"] == best.replace("_", " ")
            assert record["genus"] == best.split("_")[0]
        else:  # nothing is sure: no names, no flags (the candidates are in "top")
            assert record["species"] is record["taxon"] is None and record["flags"] == []
    details = result.species.get("Dalbergia_odorifera") or _Details(run_dir)
    assert details["chinese_name"] == "降香黄檀" and details["family"] == "Fabaceae"
    assert "CITES App. II" in details["flags"]
    summary = result.summary
    assert set(summary) >= SUMMARY_KEYS and summary["model_format"] == "checkpoint"
    assert summary["identified"] + summary["unknown"] == summary["ok"]
    assert sum(summary["per_species"].values()) == summary["identified"]
    identified = [r for r in result.images if r["verdict"] == IDENTIFIED]
    assert summary["flagged"] == sum(1 for r in identified if r["flags"])


def _Details(run_dir):  # noqa: N802 - stands in for an identified class's details
    from jianmu.engine.predict import Labels

    return Labels(load_model(run_dir), 3, 1).details("Dalbergia_odorifera")


def test_output_schemas_csv_json_jsonl(trained, field, tmp_path):
    _, run_dir, _ = trained
    for suffix in (".csv", ".json", ".jsonl"):
        out = tmp_path / f"results{suffix}"
        result = predict(
            settings(out=out, predict__batch_size=4), run_dir, [field], keep_images=False
        )
        assert out in result.files
        if suffix == ".json":
            document = json.loads(out.read_text(encoding="utf-8"))
            assert set(document) == {"summary", "specimens", "images"}
            assert set(document["summary"]) >= SUMMARY_KEYS
            assert document["summary"]["interrupted"] is False
            images, specimens = document["images"], document["specimens"]
        elif suffix == ".jsonl":
            lines = out.read_text(encoding="utf-8").splitlines()
            images = [json.loads(line) for line in lines]
            specimens = [
                json.loads(line) for line in specimens_path(out).read_text("utf-8").splitlines()
            ]
        else:
            assert out.read_bytes().startswith(b"\xef\xbb\xbf")  # BOM: spreadsheets read UTF-8
            rows = _read_csv(out)
            assert list(rows[0]) == csv_columns(3)
            images = read_results(out)
            specimens = _read_csv(specimens_path(out))
            assert list(specimens[0])[:4] == ["specimen", "images", "ok_images", "verdict"]
            specimens = [{**s, "images": int(s["images"])} for s in specimens]
        assert len(images) == len(EXPECTED_STATUS)
        assert all(set(record) == IMAGE_KEYS for record in images)
        assert [s["specimen"] for s in specimens] == ["S01", "S02"]
        assert [s["images"] for s in specimens] == [2, 2]
        if suffix != ".csv":
            assert all(set(s) == SPECIMEN_KEYS for s in specimens)


def test_specimen_roll_up_is_the_mean_of_its_images(trained, field):
    _, run_dir, _ = trained
    result = predict(settings(predict__top_k=3), run_dir, [field])
    members = [r for r in result.images if r["specimen"] == "S01"]
    specimen = next(s for s in result.specimens if s["specimen"] == "S01")
    assert specimen["images"] == specimen["ok_images"] == 2
    mean: dict[str, float] = {}
    for record in members:
        for entry in record["top"]:
            mean[entry["class"]] = mean.get(entry["class"], 0.0) + entry["probability"] / 2
    assert {e["class"]: e["probability"] for e in specimen["top"]} == pytest.approx(mean, abs=1e-5)
    s02 = next(s for s in result.specimens if s["specimen"] == "S02")
    assert (s02["images"], s02["ok_images"]) == (2, 1)  # the truncated image counts, unread
    loose = [r for r in result.images if "/" not in Path(r["path"]).relative_to(field).as_posix()]
    assert loose and all(r["specimen"] is None for r in loose)


def _write_rows(path: Path, rows: list[tuple[str, str, str, str]]) -> None:
    """A hand-written CSV output: (file, specimen, verdict, top-1 class) per image."""
    columns = csv_columns(1)
    with open(path, "w", encoding="utf-8", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(columns)
        for name, specimen, verdict, best in rows:
            values = {"path": name, "specimen": specimen, "status": "ok", "verdict": verdict,
                      "top1_class": best, "top1_probability": "0.8", "other": "0.2"}  # fmt: skip
            writer.writerow([values.get(column, "") for column in columns])


def test_specimen_verdict_needs_a_majority_that_agrees(trained, tmp_path):
    """The roll-up rule, on outputs written by hand and read back through --resume."""
    _, run_dir, _ = trained
    folder = tmp_path / "in"
    cases = {
        "agree": [(IDENTIFIED, "Senna_siamea")] * 2 + [(UNKNOWN_VERDICT, "Senna_siamea")],
        "disagree": [(IDENTIFIED, "Senna_siamea"), (IDENTIFIED, "Tectona_grandis")],
        "mostly_unknown": [(IDENTIFIED, "Senna_siamea")] + [(UNKNOWN_VERDICT, "Senna_siamea")] * 2,
    }
    rows = []
    for specimen, images in cases.items():
        for index, (verdict, best) in enumerate(images):
            path = write_image(folder / specimen / f"{index}.jpg", seed=index)
            rows.append((str(path), specimen, verdict, best))
    out = tmp_path / "done.csv"
    _write_rows(out, rows)
    result = predict(settings(out=out, predict__resume=True, predict__top_k=1), run_dir, [folder])
    assert result.summary["resumed"] == len(rows) and result.summary["images"] == len(rows)
    verdicts = {s["specimen"]: (s["verdict"], s["top"][0]["class"]) for s in result.specimens}
    assert verdicts == {
        "agree": (IDENTIFIED, "Senna_siamea"),
        "disagree": (UNKNOWN_VERDICT, "Senna_siamea"),  # a tie goes to the lab
        "mostly_unknown": (UNKNOWN_VERDICT, "Senna_siamea"),
    }
    assert result.specimens[0]["species"] == "Senna siamea"
    _write_rows(out, [(rows[0][0], "agree", IDENTIFIED, "Quercus_robur")])
    with pytest.raises(JianmuError, match="another model"):
        predict(settings(out=out, predict__resume=True), run_dir, [folder])


def test_ctrl_c_saves_valid_partial_output_and_resume_finishes(trained, field, tmp_path):
    _, run_dir, _ = trained
    whole = predict(settings(out=tmp_path / "whole.csv", predict__batch_size=3), run_dir, [field])
    handler = signal.getsignal(signal.SIGINT)
    for suffix in (".csv", ".json", ".jsonl"):
        out = tmp_path / f"partial{suffix}"

        def interrupt(done, total):
            if done:  # after the first batch, as a real Ctrl-C would arrive
                signal.raise_signal(signal.SIGINT)

        with pytest.raises(PredictInterrupted) as caught:
            predict(settings(out=out, predict__batch_size=3), run_dir, [field], interrupt)
        partial = read_results(out)
        assert len(partial) == 3 and caught.value.result.interrupted
        if suffix == ".json":
            assert json.loads(out.read_text("utf-8"))["summary"]["interrupted"] is True
        resumed = predict(
            settings(out=out, predict__resume=True, predict__batch_size=3), run_dir, [field]
        )
        records = read_results(out)
        assert resumed.summary["resumed"] == 3 and resumed.summary["images"] == len(records)
        assert [r["path"] for r in records] == [r["path"] for r in whole.images]
        assert [r["verdict"] for r in records] == [r["verdict"] for r in whole.images]
        assert resumed.specimens == whole.specimens
    assert signal.getsignal(signal.SIGINT) is handler  # put back


def test_resume_cuts_a_row_left_half_written(trained, field, tmp_path):
    _, run_dir, _ = trained
    out = tmp_path / "results.csv"
    predict(settings(out=out), run_dir, [field / "S01"])
    with open(out, "a", encoding="utf-8") as stream:
        stream.write(f"{field / 'S02' / 'b1.jpg'},S02,ok,identi")  # power cut mid-row
    assert len(read_results(out)) == 2
    result = predict(settings(out=out, predict__resume=True), run_dir, [field])
    rows = _read_csv(out)
    assert len(rows) == len(EXPECTED_STATUS) == result.summary["images"]
    assert len({row["path"] for row in rows}) == len(rows)


def test_inputs_lists_natural_order_and_specimen_patterns(tmp_path):
    photos = tmp_path / "photos"
    for name in ["img10.jpg", "img2.jpg", "S1/x.JPG", "S1/deep/y.png", "._img2.jpg"]:
        write_image(photos / name)
    write_text(photos / ".DS_Store")
    other = tmp_path / "other"
    write_image(other / "S1" / "z.jpg")
    listing = tmp_path / "lists" / "today.txt"
    write_text(listing, "# field photos\n\n../photos/img2.jpg\n../photos/missing.jpg\n")
    found = find_inputs([photos, listing])
    names = [(i.path.relative_to(tmp_path).as_posix(), i.specimen) for i in found.images]
    assert names == [
        ("photos/img2.jpg", None),
        ("photos/img10.jpg", None),
        ("photos/S1/deep/y.png", "S1"),
        ("photos/S1/x.JPG", "S1"),
        ("photos/missing.jpg", None),  # kept: its row will say "not found"
    ]
    two = find_inputs([photos, other])  # two folders: specimens are named with their folder
    assert {image.specimen for image in two.images} == {None, "photos/S1", "other/S1"}
    pattern = find_inputs([photos], specimen_pattern=r"img(?P<specimen>\d+)")
    assert [image.specimen for image in pattern.images] == ["2", "10", "S1", "S1"]
    with pytest.raises(JianmuError, match="no images"):
        find_inputs([tmp_path / "lists"])
    with pytest.raises(JianmuError, match="invalid regex"):
        find_inputs([photos], specimen_pattern="(")


def test_html_gets_records_and_thumbnails(trained, field, tmp_path, monkeypatch):
    """The page is another module's work; here: what predict hands to it."""
    _, run_dir, _ = trained
    import jianmu.report.predict_html as predict_html

    received = {}

    def fake(path, images, specimens, summary, thumbnails):
        received.update(images=images, specimens=specimens, summary=summary, thumbs=thumbnails)
        Path(path).write_text("page", encoding="utf-8")
        return Path(path)

    monkeypatch.setattr(predict_html, "write_predict_html", fake)
    config = settings(out=tmp_path / "r.csv", predict__html=tmp_path / "r.html")
    result = predict(config, run_dir, [field], keep_images=False)
    assert tmp_path / "r.html" in result.files
    assert len(received["images"]) == len(EXPECTED_STATUS)
    decoded = {r["path"] for r in received["images"] if r["status"] in ("ok", "retake")}
    assert set(received["thumbs"]) == decoded  # a photo sent back is shown, to see why
    for data in received["thumbs"].values():
        with Image.open(io.BytesIO(data)) as thumbnail:
            assert thumbnail.format == "JPEG" and max(thumbnail.size) <= 128


def test_backends_agree_and_tta(trained, field, tmp_path):
    _, run_dir, onnx = trained
    config = settings(out=tmp_path / "model.torchscript", export__format="torchscript")
    torchscript = export(config, run_dir).path
    results = [
        predict(settings(), model, [field / "S01"]) for model in (run_dir, onnx, torchscript)
    ]
    assert [r.summary["model_format"] for r in results] == ["checkpoint", "onnx", "torchscript"]
    shares = [[e["probability"] for r in result.images for e in r["top"]] for result in results]
    np.testing.assert_allclose(shares[1], shares[0], atol=1e-4)
    np.testing.assert_allclose(shares[2], shares[0], atol=1e-4)
    tta = predict(settings(predict__tta=True), onnx, [field / "S01"])
    assert tta.summary["tta"] is True and tta.summary["views"] == 2  # trained with hflip only
    assert tta.images[0]["threshold"] == load_model(onnx).calibration(2).threshold


def test_onnx_predict_imports_no_torch(trained, field, tmp_path):
    """The inspector's default path: an ONNX bundle through the command, in a fresh process."""
    _, _, onnx = trained
    heavy = ("torch", "timm", "torchvision", "albumentations", "sklearn", "scipy", "matplotlib")
    code = (
        "import sys, json; from typer.testing import CliRunner; from jianmu.cli import app; "
        f"r = CliRunner().invoke(app, ['predict', {str(onnx)!r}, {str(field / 'S01')!r}, "
        f"'--out', {str(tmp_path / 'r.json')!r}]); "
        f"print(json.dumps([r.exit_code, sorted(m for m in sys.modules if m in {heavy!r})]))"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(run.stdout.strip().splitlines()[-1]) == [0, []], run.stderr
    document = json.loads((tmp_path / "r.json").read_text("utf-8"))
    assert document["summary"]["model_format"] == "onnx" and len(document["images"]) == 2


def test_cli_exit_codes_and_one_line_errors(trained, field, tmp_path):
    _, _, onnx = trained
    good = runner.invoke(app, ["predict", str(onnx), str(field / "S01")])
    assert good.exit_code == 0, good.output
    assert "images" in good.output and "identified species" in good.output
    bad = runner.invoke(app, ["predict", str(onnx), str(field), "-o", str(tmp_path / "r.csv")])
    assert bad.exit_code == 1, bad.output
    assert "files that could not be read" in bad.output and "zero-byte file" in bad.output
    assert "top (calibrated)" not in bad.output  # with --out, rows go to the file only
    rows = _read_csv(tmp_path / "r.csv")
    names = {row["chinese_name"] for row in rows if row["verdict"] == IDENTIFIED}
    assert names and all(name in bad.output for name in names)  # in the species table
    page = tmp_path / "page.html"
    with_html = runner.invoke(app, ["predict", str(onnx), str(field / "S01"), "--html", str(page)])
    assert with_html.exit_code == 0, with_html.output
    assert "data:image/jpeg;base64," in page.read_text(encoding="utf-8")  # thumbnails inside
    for args, text in [
        (["predict", str(tmp_path / "none.onnx"), str(field)], "model not found"),
        (["predict", str(onnx), str(tmp_path / "empty_dir")], "no images"),
        (["predict", str(onnx), str(field), "--out", str(tmp_path / "r.txt")], ".csv, .json"),
        (["predict", str(onnx), str(field), "--resume"], "--resume needs --out"),
    ]:
        (tmp_path / "empty_dir").mkdir(exist_ok=True)
        result = runner.invoke(app, args)
        assert result.exit_code == 2, result.output
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:") and text in lines[0], lines
