"""Calibration stored after training, `jianmu eval` and the leave-species-out experiment, on tiny
data."""

import csv
import json
import shutil

import numpy as np
import pytest
from tiny import settings, tiny_config
from typer.testing import CliRunner

from jianmu.bundle import load_model
from jianmu.calibration.scores import RULES
from jianmu.cli import app
from jianmu.data.split import manifest_items, read_manifest
from jianmu.data.synth import generate_dataset
from jianmu.engine.evaluate import evaluate
from jianmu.engine.export import export
from jianmu.engine.leave_species_out import leave_species_out
from jianmu.engine.predict import predict
from jianmu.engine.train import train
from jianmu.errors import JianmuError
from jianmu.models import load_checkpoint
from jianmu.verdict import UNKNOWN


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    base = tmp_path_factory.mktemp("eval")
    generate_dataset(base / "data", "wood", classes=3, per_class=16, size=48, seed=2)
    result = train(tiny_config(base / "data", base / "run"))
    return base, result


def test_training_stores_calibration_and_unknown_rule(trained):
    base, result = trained
    checkpoint = load_checkpoint(result.run_dir)
    calibration, unknown = checkpoint.meta["calibration"], checkpoint.meta["unknown"]
    assert calibration["temperature"] > 0 and calibration["views"] == 1
    assert set(unknown["thresholds"]) == set(RULES) and unknown["rule"] == "relative_mahalanobis"
    assert {"openset.means", "openset.background_mean", "openset.knn"} <= set(checkpoint.extras)
    bundle = load_model(result.run_dir)
    rows = read_manifest(result.run_dir / "manifest.csv")
    val = manifest_items(rows, base / "data", checkpoint.classes)["val"]
    outputs = bundle.run(val)  # what predict computes: the thresholds hold on it
    temperature = calibration["temperature"]
    for rule in RULES:  # each threshold keeps the target share of known validation images
        scores = bundle.statistics.score(rule, outputs.logits, outputs.embeddings, temperature)
        assert np.mean(scores >= unknown["thresholds"][rule]) >= unknown["target_known_recall"]


def test_eval_writes_the_report_and_survives_bad_and_unknown_images(trained, tmp_path):
    base, result = trained
    data = tmp_path / "data"
    shutil.copytree(base / "data", data)
    first_class = result.classes[0]
    bad = data / first_class / "s01" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff not a jpeg")
    stranger = tmp_path / "stranger"
    names = ["Tectona_grandis"]
    generate_dataset(stranger, "wood", classes=1, per_class=6, size=48, seed=9, class_names=names)
    shutil.copytree(stranger / "Tectona_grandis", data / "Tectona_grandis")
    out = tmp_path / "report"
    evaluation = evaluate(settings(data__root=data, out=out, eval__tta=True), result.run_dir)

    names = {p.name for p in out.iterdir()}
    assert {"metrics.json", "report.md", "report.html", "per_class.csv", "confusion.png"} <= names
    assert {"confusion.csv", "reliability.png", "misclassified.csv"} <= names
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["count"] == 48 and evaluation.metrics["count"] == 48
    wrong = len(evaluation.misclassified)
    assert saved["top1"] == pytest.approx(1 - wrong / 48)
    assert [path for path, _ in evaluation.unreadable] == [str(bad)]
    assert "broken.jpg" in (out / "report.md").read_text()
    assert evaluation.specimen_metrics is not None  # photos grouped by specimen folders
    assert evaluation.tta["views"] == 2  # trained with left-right flips only: 2 views
    assert evaluation.open_set["unknown_count"] == 6  # Tectona is not in the model
    assert 0.0 <= evaluation.open_set["unknown_rejection"] <= 1.0
    with open(out / "predictions.csv", newline="") as stream:
        predictions = list(csv.DictReader(stream))
    assert len(predictions) == 48 and str(bad) not in {row["path"] for row in predictions}
    flagged = [row for row in predictions if row["verdict"] == UNKNOWN]
    threshold = evaluation.open_set["threshold"]
    assert all(float(row["unknown_score"]) < threshold for row in flagged)
    assert len(flagged) == round(evaluation.open_set["known_flagged_unknown"] * 48)
    assert evaluation.metrics["ece_before"] >= 0 and evaluation.metrics["temperature"] > 0


def test_cli_eval(trained, tmp_path):
    base, result = trained
    runner = CliRunner()
    manifest = result.run_dir / "manifest.csv"
    args = ["eval", str(result.run_dir), "--data", str(base / "data"), "--out", str(tmp_path / "e")]
    done = runner.invoke(app, [*args, "--manifest", str(manifest), "--split", "test"])
    assert done.exit_code == 0, done.output
    assert "top-1" in done.output and "report.html" in done.output
    assert json.loads((tmp_path / "e" / "metrics.json").read_text())["split"] == "test"
    missing = runner.invoke(app, ["eval", str(result.run_dir)])
    assert missing.exit_code == 2 and "--data" in missing.output


def test_open_set_protocol_table_and_reuse(tmp_path):
    generate_dataset(tmp_path / "data", "wood", classes=3, per_class=12, size=48, seed=4)
    config = tiny_config(tmp_path / "data", tmp_path / "os", "train.epochs=1")
    result = leave_species_out(config, tta=False)
    assert len(result.rows) == 3 * len(RULES)
    assert result.best_rule in RULES
    for row in result.rows:
        assert 0 <= row["auroc"] <= 1 and row["unknown_count"] > 0
        assert row["balanced_recall"] == pytest.approx(
            (row["known_recall"] + row["unknown_rejection"]) / 2
        )
    saved = json.loads((tmp_path / "os" / "openset.json").read_text())
    assert saved["best_rule"] == result.best_rule
    # the rank rule per held-out species: shares that add up, declarations judged
    assert [row["held_out"] for row in result.ranks] == sorted(
        row["held_out"] for row in result.ranks
    )
    for row in result.ranks:
        shares = sum(row[f"held_{rank}"] for rank in ("species", "genus", "family", "unknown"))
        assert shares == pytest.approx(1.0) and 0 <= row["held_wrong"] <= 1
        assert row["false_caught"] == pytest.approx(
            row["false_inconsistent"] + row["false_cannot_decide"]
        )
        assert 0 <= row["held_flagged_wrong"] <= row["held_flagged"]
        # 12 photos of 4 specimens per class: the same figures per specimen
        assert row["held_count"] == 12 and row["specimen_held_count"] == 4
        shares = [
            row[f"specimen_held_{rank}"] for rank in ("species", "genus", "family", "unknown")
        ]
        assert sum(shares) == pytest.approx(1.0)
        assert 0 < row["specimen_known_count"] < row["known_count"]
    # each model again, with rank thresholds fitted on the other models' held-out species
    assert [row["held_out"] for row in result.unseen_ranks] == [
        row["held_out"] for row in result.ranks
    ]
    for row in result.unseen_ranks:
        shares = sum(row[f"held_{rank}"] for rank in ("species", "genus", "family", "unknown"))
        assert shares == pytest.approx(1.0) and row["held_count"] == 12
    fitted = json.loads((tmp_path / "os" / "rank-thresholds.json").read_text())
    assert sorted(fitted["held_out"]) == sorted(row["held_out"] for row in result.ranks)
    assert set(fitted["thresholds_in_units"]["1"]) == {"species", "genus", "family"}
    assert fitted["validation"]["1"]["worst_wrong"] <= config.calibration.max_wrong_rate
    assert 0 <= saved["unseen_ranks_mean"]["1"]["held_wrong"] <= 1
    table = (tmp_path / "os" / "openset.md").read_text()
    assert "fitted on species never seen" in table
    assert "Answers at the deepest sure rank, per photo" in table
    assert "Declarations, per specimen" in table and "specimen_held_right" in table
    checkpoint = tmp_path / "os" / f"without-{result.rows[0]['held_out']}" / "best.safetensors"
    stamp = checkpoint.stat().st_mtime
    again = leave_species_out(config, tta=False)  # trained runs are reused, not trained again
    assert again.rows == result.rows
    assert checkpoint.stat().st_mtime == stamp
    one = leave_species_out(config, tta=False, held_out=[result.rows[0]["held_out"]])
    assert {row["held_out"] for row in one.rows} == {result.rows[0]["held_out"]}
    with pytest.raises(JianmuError, match="is no class folder"):
        leave_species_out(config, held_out=["Quercus_nowhere"])
    # a model of the same recipe on every species, calibrated with those thresholds
    full = train(
        config.updated(out=str(tmp_path / "full"), calibration__open_set=str(tmp_path / "os"))
    )
    ranks = load_checkpoint(full.run_dir).meta["ranks"]
    assert ranks["transferred"]["thresholds_in_units"] == fitted["thresholds_in_units"]
    assert ranks["transferred"]["held_out"] == fitted["held_out"]
    assert set(ranks["thresholds"]["1"]) == {"species", "genus", "family"}
    # the int8 export calibrates again, with the same thresholds in units
    int8 = export(settings(out=tmp_path / "full.int8.onnx", export__int8=True), full.run_dir)
    assert load_model(int8.path).meta["ranks"]["transferred"] == ranks["transferred"]
    # bad sources fail before anything is trained
    for source, message in ((tmp_path / "nowhere", "no rank thresholds"),
                            (tmp_path / "os" / "openset.json", "no rank thresholds")):  # fmt: skip
        with pytest.raises(JianmuError, match=message):
            train(config.updated(out=str(tmp_path / "bad"), calibration__open_set=str(source)))
    with pytest.raises(JianmuError, match="was fitted for rule relative_mahalanobis"):
        train(config.updated(out=str(tmp_path / "bad"), calibration__open_set=str(tmp_path / "os"),
                             calibration__rule="msp"))  # fmt: skip
    assert not (tmp_path / "bad").exists()


def test_tta_averages_only_the_views_training_covered(tmp_path):
    """Trained with flips but no quarter turns (as insect wings are): calibration, eval and
    predict average the 4 flips, never the quarter turns the model never saw."""
    generate_dataset(tmp_path / "data", "wood", classes=3, per_class=12, size=48, seed=5)
    config = tiny_config(
        tmp_path / "data", tmp_path / "run", "calibration.tta=true", "train.epochs=1",
        "augment.hflip=true", "augment.vflip=true", "augment.rotate90=false",
    )  # fmt: skip
    run = train(config)
    bundle = load_model(run.run_dir)
    assert bundle.tta_views == 4 and bundle.meta["calibration"]["views"] == 4
    assert bundle.meta["ranks"]["thresholds"].keys() == {"1", "4"}
    evaluation = evaluate(config.updated(out=tmp_path / "eval"), bundle)
    assert evaluation.tta["views"] == 4 and evaluation.open_set["views"] == 4
    photos = sorted((tmp_path / "data").rglob("*.jpg"))[:3]
    found = predict(settings(predict__tta=True), bundle, photos)
    assert found.summary["views"] == 4 and found.summary["tta"] is True
    assert found.images[0]["threshold"] == bundle.calibration(4).threshold


def test_cli_eval_follows_the_models_own_tta_setting(tmp_path):
    generate_dataset(tmp_path / "data", "wood", classes=3, per_class=12, size=48, seed=5)
    config = tiny_config(
        tmp_path / "data", tmp_path / "run", "calibration.tta=true", "augment.rotate90=true"
    )  # a flip and quarter turns: all 8 views
    run = train(config.updated(train__epochs=1))
    assert load_checkpoint(run.run_dir).meta["calibration"]["views"] == 8
    runner = CliRunner()
    args = ["eval", str(run.run_dir), "--data", str(tmp_path / "data")]
    done = runner.invoke(app, [*args, "--out", str(tmp_path / "a")])
    assert done.exit_code == 0, done.output
    report = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert report["tta"]["views"] == 8 and report["open_set"]["views"] == 8
    plain = runner.invoke(app, [*args, "--no-tta", "--out", str(tmp_path / "b")])
    assert plain.exit_code == 0, plain.output
    report = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert report["tta"] is None
    # one view has its own temperature and threshold, fitted at training time
    assert report["open_set"]["views"] == 1 and report["open_set"]["threshold_fitted_for_views"]
    checkpoint = load_checkpoint(run.run_dir).meta
    meta = checkpoint["calibration"]
    # the species threshold in force: the rank rule's for one view (inf, null in JSON: never)
    species = checkpoint["ranks"]["thresholds"]["1"]["species"]
    assert report["open_set"]["threshold"] == (None if species is None else pytest.approx(species))
    assert load_model(run.run_dir).calibration(1).threshold == (
        float("inf") if species is None else species
    )
    assert report["temperature"] == pytest.approx(meta["single_view"]["temperature"])
