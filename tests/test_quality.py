"""The photo-quality gate: each measure on constructed pictures, the bounds fitted from training
photos, and what predict, verify and their files say of a photo sent back; the inspection record
of a run, checked and re-run."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from tiny import settings, tiny_config
from typer.testing import CliRunner

import jianmu
from jianmu.cli import app
from jianmu.config import QualityConfig
from jianmu.data.preprocess import load_preprocessed
from jianmu.data.quality import MEASURES, MIN_CLIPPED, QualityGate, fit_quality, measure
from jianmu.data.spec import TransformSpec
from jianmu.data.synth import generate_dataset
from jianmu.record import file_sha256
from jianmu.verdict import RETAKE, RETAKE_PHOTOS

SPEC = TransformSpec(input_size=64, crop_pct=1.0, mean=(0.5,) * 3, std=(0.25,) * 3)
CLASSES = ["Dalbergia_odorifera", "Tectona_grandis", "Pterocarpus_santalinus"]


def texture(seed: int, size: int = 96, level: float = 110.0, spread: float = 40.0) -> np.ndarray:
    """A fine, photo-like texture (noise smoothed a little) around a grey ``level``."""
    rng = np.random.default_rng(seed)
    noise = cv2.GaussianBlur(rng.normal(0, 1, (size, size)).astype(np.float32), (0, 0), 0.8)
    grey = level + spread * noise / noise.std()
    tint = np.stack([grey, grey * 0.9, grey * 0.8], axis=-1)
    return np.clip(tint, 0, 255).astype(np.uint8)


def measured(picture: np.ndarray, side: int = 96, jpeg_quality: int | None = None) -> np.ndarray:
    return measure(picture, side, jpeg_quality)


@pytest.fixture(scope="module")
def gate() -> QualityGate:
    rows = [measured(texture(seed, level=90 + seed % 40)) for seed in range(60)]
    return QualityGate(fit_quality(np.stack(rows), QualityConfig())["bounds"])


def test_blur_lowers_sharpness_and_is_sent_back(gate):
    sharp = texture(100)
    blurred = cv2.GaussianBlur(sharp, (0, 0), 3)
    column = MEASURES.index("sharpness")
    assert measured(blurred)[column] < measured(sharp)[column] - 1.0  # tenfold and more
    assert gate.reasons(measured(sharp)) == []
    assert gate.reasons(measured(blurred))[0] == "blurred"  # (its contrast falls too)


def test_exposure_is_judged_on_both_sides(gate):
    normal = texture(101)
    dark = (normal * 0.3).astype(np.uint8)
    bright = np.clip(normal.astype(np.float32) * 3, 0, 255).astype(np.uint8)
    assert measured(dark)[MEASURES.index("level")] < measured(normal)[MEASURES.index("level")]
    assert "too dark" in gate.reasons(measured(dark))
    assert "overexposed" in gate.reasons(measured(bright))
    assert measured(bright)[MEASURES.index("highlights")] > 0.2
    assert gate.reasons(measured(normal)) == []


def test_a_stop_under_is_told_from_a_darker_subject_by_its_white_point():
    """A pale wood photographed a stop under is as dark on average as a dark wood well exposed,
    whose rays still catch the light: the mean level cannot tell them apart, the white point
    (the level 99% of the pixels stay under) can."""
    pale = [texture(seed, level=150, spread=20) for seed in range(30)]
    dark = []
    for seed in range(30, 60):
        picture = texture(seed, level=65, spread=15)
        picture[::8] = (215, 195, 175)  # bright rays across the dark wood
        dark.append(picture)
    fitted = fit_quality(np.stack([measured(p) for p in pale + dark]), QualityConfig())
    gate = QualityGate(fitted["bounds"])
    under = (texture(200, level=150, spread=20) * 0.5).astype(np.uint8)
    level, white = (measured(under)[MEASURES.index(name)] for name in ("level", "white"))
    assert fitted["bounds"]["level"]["low"] < level < fitted["bounds"]["level"]["high"]
    assert white < fitted["bounds"]["white"]["low"]
    assert "too dark" in gate.reasons(measured(under))  # (halved: its contrast falls too)
    assert gate.reasons(measured(dark[0])) == gate.reasons(measured(pale[0])) == []
    washed = np.clip(pale[1].astype(np.float32) * 1.6, 0, 255).astype(np.uint8)
    assert measured(washed)[MEASURES.index("black")] > fitted["bounds"]["black"]["high"]
    assert "overexposed" in gate.reasons(measured(washed))


def test_a_smaller_photo_and_a_heavily_compressed_one_are_sent_back(gate):
    picture = texture(102)
    assert gate.reasons(measured(picture, side=30)) == ["too small"]  # under half of 96 px
    assert gate.reasons(measured(picture, jpeg_quality=5)) == []  # training photos: no JPEGs
    rows = [measured(texture(seed), jpeg_quality=90) for seed in range(40)]
    jpeg_gate = QualityGate(fit_quality(np.stack(rows), QualityConfig())["bounds"])
    assert jpeg_gate.reasons(measured(picture, jpeg_quality=5)) == ["heavily compressed"]
    assert jpeg_gate.reasons(measured(picture, jpeg_quality=88)) == []


def test_the_measures_come_from_the_one_decode_the_model_uses(tmp_path):
    path = tmp_path / "photo.jpg"
    Image.fromarray(texture(103, size=200)).save(path, "JPEG", quality=12)
    image, measures = load_preprocessed(path, SPEC)
    assert image.shape == (3, 64, 64)
    assert measures[MEASURES.index("scale")] == 200
    assert measures[MEASURES.index("jpeg_quality")] == 12
    Image.fromarray(texture(103, size=200)).save(tmp_path / "photo.png")
    assert np.isnan(load_preprocessed(tmp_path / "photo.png", SPEC)[1][-1])  # no JPEG table


def test_bounds_are_the_training_photos_quantiles_moved_out_by_the_margin():
    rng = np.random.default_rng(0)
    values = np.full((1000, len(MEASURES)), np.nan)
    values[:, MEASURES.index("level")] = rng.uniform(0.3, 0.6, 1000)
    values[:, MEASURES.index("highlights")] = 0.0
    config = QualityConfig(quantile=0.01, margin=0.5)
    fitted = fit_quality(values, config)
    level = values[:, MEASURES.index("level")]
    spread = np.quantile(level, 0.95) - np.quantile(level, 0.05)
    bounds = fitted["bounds"]
    assert bounds["level"]["low"] == pytest.approx(np.quantile(level, 0.01) - 0.5 * spread, 1e-5)
    assert bounds["level"]["high"] == pytest.approx(np.quantile(level, 0.99) + 0.5 * spread, 1e-5)
    assert bounds["highlights"] == {"high": MIN_CLIPPED}  # never clipped: a floor, not zero
    assert "sharpness" not in bounds and "jpeg_quality" not in bounds  # never measured: no bound
    few = fit_quality(values[:10], config)
    assert few["bounds"] == {} and "10 training photos" in few["note"]
    assert QualityGate.from_meta({"quality": few}) is None


# --- predict and verify ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("quality")
    generate_dataset(
        base / "data", "wood", classes=3, per_class=12, size=64, seed=6, class_names=CLASSES
    )
    config = tiny_config(
        base / "data", base / "run", "train.epochs=1", "calibration.max_wrong_rate=1",
        "quality.min_photos=10",
    )  # fmt: skip
    run = jianmu.train(config).run_dir
    return jianmu.export(settings(out=base / "model.onnx"), run).path


@pytest.fixture
def field(model, tmp_path) -> Path:
    """Specimen ``good``: two training photos; specimen ``bad``: two of them blurred and dark."""
    photos = sorted((model.parent / "data").rglob("*.jpg"))
    root = tmp_path / "field"
    for folder in ("good", "bad"):
        (root / folder).mkdir(parents=True)
    shutil.copy(photos[0], root / "good" / "g1.jpg")
    shutil.copy(photos[13], root / "good" / "g2.jpg")
    picture = np.asarray(Image.open(photos[0]).convert("RGB"))
    Image.fromarray(cv2.GaussianBlur(picture, (0, 0), 6)).save(root / "bad" / "blurred.png")
    Image.fromarray((picture * 0.2).astype(np.uint8)).save(root / "bad" / "dark.png")
    return root


def _rows(path: Path) -> list[dict]:
    with path.open(encoding="utf-8-sig", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.parametrize("suffix", [".csv", ".json", ".jsonl"])
def test_a_photo_that_fails_gets_retake_and_why_in_every_output(model, field, tmp_path, suffix):
    out = tmp_path / f"results{suffix}"
    result = jianmu.predict(settings(out=out), model, [field])
    if suffix == ".csv":
        rows = _rows(out)
        specimens = _rows(tmp_path / "results.specimens.csv")
    elif suffix == ".json":
        document = json.loads(out.read_text(encoding="utf-8"))
        rows, specimens = document["images"], document["specimens"]
    else:
        rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
        specimens = [json.loads(line) for line in (tmp_path / "results.specimens.jsonl").open()]
    by_name = {Path(row["path"]).name: row for row in rows}
    for name, reason in (("blurred.png", "blurred"), ("dark.png", "too dark")):
        row = by_name[name]
        assert row["status"] == RETAKE
        reasons = row["quality_reasons"] if suffix == ".csv" else row["quality"]["reasons"]
        assert reason in reasons
        assert not row["species"] and not row["verdict"] and not row["rank"]  # never a species
        assert not (row.get("top1_class") or row.get("top"))
    assert {by_name[name]["status"] for name in ("g1.jpg", "g2.jpg")} == {"ok"}
    verdicts = {s["specimen"]: s["verdict"] for s in specimens}
    assert verdicts["bad"] == RETAKE_PHOTOS and verdicts["good"] != RETAKE_PHOTOS
    summary = result.summary
    assert summary["retake"] == 2 and summary["failed"] == 0 and summary["ok"] == 2
    assert summary["retake_reasons"]["blurred"] >= 1 and summary["quality_gate"] == "on"


def test_the_page_names_the_reasons_and_the_gate_can_be_turned_off(model, field, tmp_path):
    runner = CliRunner()
    out, page = tmp_path / "gated.csv", tmp_path / "gated.html"
    done = runner.invoke(app, ["predict", str(model), str(field), "-o", str(out), "--html",
                               str(page)])  # fmt: skip
    assert done.exit_code == 0, done.output
    text = page.read_text(encoding="utf-8")
    assert "retake photos" in text and "blurred" in text and "too dark" in text
    assert "retake" in done.output
    off = tmp_path / "off.csv"
    done = runner.invoke(app, ["predict", str(model), str(field), "-o", str(off),
                               "--no-quality-gate"])  # fmt: skip
    assert done.exit_code == 0, done.output
    rows = {Path(row["path"]).name: row for row in _rows(off)}
    assert rows["blurred.png"]["status"] == "ok" and rows["blurred.png"]["top1_class"]
    assert (
        json.loads((tmp_path / "off.record.json").read_text())["settings"]["quality_gate"] == "off"
    )


def test_verify_sends_the_same_photos_back(model, field, tmp_path):
    config = settings(out=tmp_path / "v.csv", verify__declared="Dalbergia odorifera")
    result = jianmu.verify(config, model, [field])
    rows = {Path(row["path"]).name: row for row in _rows(tmp_path / "v.csv")}
    assert rows["dark.png"]["status"] == RETAKE
    bad = next(s for s in result.specimens if s["specimen"] == "bad")
    assert bad["verdict"] == RETAKE_PHOTOS and bad["decision"] == "cannot decide"


# --- the inspection record ------------------------------------------------------------------------


def test_the_record_holds_hashes_rules_labels_and_decisions(model, field, tmp_path):
    out = tmp_path / "case.csv"
    config = settings(out=out, predict__operator="Li Wei", predict__device="XT-07")
    result = jianmu.predict(config, model, [field])
    record_file = tmp_path / "case.record.json"
    assert record_file in result.files
    record = json.loads(record_file.read_text(encoding="utf-8"))
    assert record["operator"] == "Li Wei" and record["device"] == "XT-07"
    assert record["command"] == "predict" and record["host"] and record["created"]
    assert record["model"]["sha256"] == file_sha256(model)
    assert record["model"]["bundle_format"] == "jianmu.bundle/1"
    assert record["runtime"]["jianmu"] == jianmu.__version__ and record["runtime"]["onnxruntime"]
    inputs = {Path(entry["path"]).name: entry for entry in record["inputs"]}
    assert inputs["g1.jpg"]["sha256"] == file_sha256(field / "good" / "g1.jpg")
    assert record["settings"]["quality_bounds"]["sharpness"]["low"] > 0
    assert record["settings"]["species_threshold"] == result.summary["threshold"]
    decisions = {Path(d["path"]).name: d for d in record["images"]}
    assert (
        decisions["dark.png"]["quality_reasons"] == ["too dark"]
        or "too dark" in decisions["dark.png"]["quality_reasons"]
    )
    assert record["record_sha256"] == result.summary["record_sha256"]


def test_record_check_finds_a_changed_input_and_an_altered_record(model, field, tmp_path):
    runner = CliRunner()
    jianmu.predict(settings(out=tmp_path / "case.csv"), model, [field])
    record_file = tmp_path / "case.record.json"
    done = runner.invoke(app, ["record", "check", str(record_file)])
    assert done.exit_code == 0, done.output
    assert "record intact" in done.output and "4 inputs re-hashed, all unchanged" in done.output
    photo = field / "good" / "g2.jpg"
    photo.write_bytes(photo.read_bytes()[:-10] + b"0123456789")
    done = runner.invoke(app, ["record", "check", str(record_file)])
    assert done.exit_code == 5 and "g2.jpg" in done.output
    text = record_file.read_text(encoding="utf-8").replace('"too dark"', '"blurred"', 1)
    record_file.write_text(text, encoding="utf-8")
    done = runner.invoke(app, ["record", "check", str(record_file)])
    assert done.exit_code == 5 and "ALTERED" in done.output
    (tmp_path / "junk.json").write_text("{not json", encoding="utf-8")
    done = runner.invoke(app, ["record", "check", str(tmp_path / "junk.json")])
    assert done.exit_code == 2 and "Traceback" not in done.output


def test_the_same_bundle_on_the_same_files_decides_the_same(model, field, tmp_path):
    first = jianmu.predict(settings(out=tmp_path / "a.csv"), model, [field]).record
    second = jianmu.predict(settings(out=tmp_path / "b.csv"), model, [field]).record
    assert first["images"] == second["images"]  # decisions and probabilities as stored
    assert first["specimens"] == second["specimens"]
    assert [entry["sha256"] for entry in first["inputs"]] == [
        entry["sha256"] for entry in second["inputs"]
    ]
    assert first["record_sha256"] != second["record_sha256"]  # another time, another record
