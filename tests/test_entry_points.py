"""One shape for every entry point: ``jianmu X`` (options -> config) and ``jianmu.X(config, ...)``
give the same results; eval's specimen figures are the roll-up predict gives inspectors; and the
one eval preprocessing equals the independent reference the export parity check uses."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from tiny import settings, tiny_config
from typer.testing import CliRunner

import jianmu
from jianmu.cli import app
from jianmu.data.preprocess import preprocess
from jianmu.data.spec import TransformSpec
from jianmu.data.synth import generate_dataset
from jianmu.data.transforms import build_spec_transform
from jianmu.errors import JianmuError

CLASSES = ["Dalbergia_odorifera", "Senna_siamea", "Tectona_grandis"]
runner = CliRunner()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    base = tmp_path_factory.mktemp("entry")
    generate_dataset(
        base / "data", "wood", 3, per_class=12, size=48, specimens_per_class=3, seed=6,
        class_names=CLASSES,
    )  # fmt: skip
    run = jianmu.train(tiny_config(base / "data", base / "run", "train.epochs=2")).run_dir
    return base, run


def _invoke(*args) -> None:
    result = runner.invoke(app, [str(arg) for arg in args])
    assert result.exit_code == 0, result.output


def test_eval_command_and_library_give_the_same_report(trained, tmp_path):
    base, run = trained
    _invoke(
        "eval", run, "--data", base / "data", "--set", "eval.batch_size=5", "-o", tmp_path / "a"
    )
    config = settings("eval.batch_size=5", data__root=base / "data", out=tmp_path / "b")
    result = jianmu.evaluate(config, run)
    cli = json.loads((tmp_path / "a" / "metrics.json").read_text())
    library = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert cli == library and library["top1"] == result.metrics["top1"]
    assert (tmp_path / "a" / "predictions.csv").read_text() == (
        tmp_path / "b" / "predictions.csv"
    ).read_text()


def test_predict_set_reaches_the_predict_section(trained, tmp_path):
    base, run = trained
    photos = base / "data" / CLASSES[0]
    _invoke("predict", run, photos, "--set", "predict.top_k=2", "-o", tmp_path / "cli.csv")
    config = settings("predict.top_k=2", out=tmp_path / "lib.csv")
    jianmu.predict(config, run, [photos])
    cli, library = (_rows(tmp_path / name) for name in ("cli.csv", "lib.csv"))
    assert "top2_class" in cli[0] and "top3_class" not in cli[0]
    assert [(r["path"], r["top1_class"], r["verdict"]) for r in cli] == [
        (r["path"], r["top1_class"], r["verdict"]) for r in library
    ]
    # a named option wins over --set, as everywhere
    _invoke("predict", run, photos, "--set", "predict.top_k=2", "--top-k", "1", "-o",
            tmp_path / "one.csv")  # fmt: skip
    assert "top2_class" not in _rows(tmp_path / "one.csv")[0]


def test_eval_specimen_figures_are_the_roll_up_predict_gives(trained, tmp_path):
    base, run = trained
    result = jianmu.evaluate(settings(data__root=base / "data", out=tmp_path / "eval"), run)
    folders = [base / "data" / name for name in CLASSES]  # specimens: <class>/<specimen>
    predicted = jianmu.predict(settings(), run, folders)
    assert result.specimens is not None and len(result.specimens) == len(predicted.specimens)
    by_name = {record["specimen"]: record for record in predicted.specimens}
    for specimen in result.specimens:
        record = by_name[specimen.specimen]
        assert specimen.verdict == record["verdict"]
        assert [name for name, _ in specimen.top] == [e["class"] for e in record["top"]]
        shares = [share for _, share in specimen.top]
        assert shares == pytest.approx([e["probability"] for e in record["top"]], abs=1e-5)
    figures = result.specimen_metrics
    identified = np.mean([s["verdict"] == "identified" for s in predicted.specimens])
    assert figures["identified"] == pytest.approx(identified)
    assert figures["count"] == len(predicted.specimens) and "top3" in figures


def test_old_config_keys_name_their_new_home(trained, tmp_path):
    base, run = trained
    old = tmp_path / "old.yaml"
    old.write_text("eval:\n  unknown_score: knn\n")
    result = runner.invoke(app, ["eval", str(run), "--data", str(base / "data"), "-c", str(old)])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "use 'calibration.rule'" in lines[0], result.output
    with pytest.raises(JianmuError, match="eval.specimen_aggregation"):
        settings("eval.specimen_aggregation=mean")


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8-sig", newline="") as stream:
        return list(csv.DictReader(stream))


@pytest.mark.parametrize(
    ("size", "crop", "interpolation", "shape"),
    [
        (32, 1.0, "bicubic", (48, 48)),
        (32, 0.875, "bilinear", (61, 97)),
        (64, 0.9, "bicubic", (480, 360)),
        (50, 1.0, "area", (50, 75)),
        (40, 1.0, "nearest", (30, 20)),  # smaller than the input: upscaled
    ],
)
def test_the_one_preprocessing_equals_the_parity_reference(size, crop, interpolation, shape):
    spec = TransformSpec(size, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), interpolation, crop)
    image = np.random.default_rng(size).integers(0, 256, (*shape, 3), dtype=np.uint8)
    ours = preprocess(image, spec)
    reference = build_spec_transform(spec)(image).numpy()
    assert ours.shape == reference.shape == (3, size, size)
    np.testing.assert_allclose(ours, reference, atol=1e-5)
